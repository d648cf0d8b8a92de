"""Errors, grouped by who must act (see python-chi's chi/exception.py for the idea).

Every error raised by replab derives from :class:`ReplabError`, so a notebook or the CLI can
catch one type and show its message, which names ids, fields and what to do.
"""

from __future__ import annotations


class ReplabError(Exception):
    """Root of every error replab raises on purpose."""


class ConfigError(ReplabError):
    """The input is wrong: fix the config, a parameter or a file.

    ``problems`` holds every problem found, each a ``(field, message)`` pair, so a form or a
    notebook can show all of them at once, not only the first.
    """

    def __init__(self, problems: list[tuple[str, str]] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = list(problems)
        self.source = source
        lines = [f"{field}: {msg}" if field else msg for field, msg in self.problems]
        where = f" in {source}" if source else ""
        if len(lines) == 1 and not self.problems[0][0] and not source:
            text = lines[0]  # a whole-input problem ("no config at …") says it all
        elif len(lines) == 1:
            text = f"invalid configuration{where}: {lines[0]}"
        else:
            text = f"{len(lines)} problems in the configuration{where}:\n" + "\n".join(
                f"  - {line}" for line in lines
            )
        super().__init__(text)

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


class CloudError(ReplabError):
    """The testbed (or a local OpenStack) refused or failed a request.

    ``request`` names the call (``"POST /v3/users/…/credentials/OS-EC2"``) when it is known.
    """

    def __init__(self, message: str, request: str | None = None):
        self.request = request
        super().__init__(f"{message} (request: {request})" if request else message)


class ResourceTimeout(ReplabError):
    """A resource did not reach the state we waited for in time."""


class ReplayError(ReplabError):
    """A run cannot be replayed: something in its record is missing or corrupt."""


class NotebookFailed(ReplabError):
    """A notebook in a series failed; ``notebook``, ``cell`` and ``output`` locate it.

    ``cell`` counts from 1 in the executed notebook kept at ``output`` (the one to open).
    """

    def __init__(self, notebook: str, cell: int | None, output: str, reason: str):
        self.notebook = notebook
        self.cell = cell
        self.output = output
        self.reason = reason
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        super().__init__(
            f"{notebook} failed at {where}: {reason}\n  executed notebook kept at {output}"
        )
