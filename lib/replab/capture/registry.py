"""The capture registry: :func:`capture` registers a named function, :class:`Context` is what
it receives, :class:`Skip` says its layer does not apply here. The capture modules import
this (not the package), and the package imports them to register them: no import circle.
Only the standard library."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping

from replab.errors import ReplabError

# typing's TYPE_CHECKING, without importing typing (a cost to `replab capture` start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CaptureFn = Callable[..., "Any"]
_REGISTRY: dict[str, CaptureFn] = {}


class Skip(Exception):
    """Raised by a capture function when its layer does not apply here; the message says why."""


class DuplicateCaptureError(ReplabError, ValueError):
    """A capture name was registered twice."""


class Context:
    """What a capture function receives: the options given to :func:`collect`, a cache shared
    between captures of one manifest, and a place to put big attachments."""

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options: dict[str, Any] = dict(options or {})
        self.cache: dict[str, Any] = {}
        self.attachments: dict[str, dict[str, Any]] = {}
        self._local = threading.local()

    @property
    def current(self) -> str | None:
        """The capture running in this thread (it owns the attachments it makes)."""
        return getattr(self._local, "current", None)

    @current.setter
    def current(self, name: str | None) -> None:
        self._local.current = name

    def option(self, name: str, default: Any = None) -> Any:
        """The option ``name``, or ``default`` when it is absent or None."""
        value = self.options.get(name)
        return default if value is None else value

    @property
    def repo(self) -> str:
        """The directory the run belongs to (option ``repo``, else the working directory)."""
        return os.path.abspath(os.fspath(self.options.get("repo") or os.getcwd()))

    def attach(self, filename: str, data: str | bytes) -> str | None:
        """Write ``data`` as ``filename`` under the ``artifacts_dir`` option and record it.

        Returns the file name, or None when no ``artifacts_dir`` was given. Raises OSError
        when the file cannot be written (the calling capture records it).
        """
        directory = self.options.get("artifacts_dir")
        if not directory:
            return None
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, filename), "wb") as fh:
            fh.write(raw)
        self.attachments[filename] = {
            "capture": self.current,
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        return filename


def capture(name: str, *, replace: bool = False) -> Callable[[CaptureFn], CaptureFn]:
    """Decorator registering a capture function under ``name``.

    The function takes the :class:`Context` (or nothing) and returns JSON-able data or raises
    :class:`Skip`. Raises DuplicateCaptureError when ``name`` is taken and ``replace`` is false.
    """

    def register(fn: CaptureFn) -> CaptureFn:
        if name in _REGISTRY and not replace:
            raise DuplicateCaptureError(f"a capture named {name!r} is already registered "
                                        f"({_qualname(_REGISTRY[name])})")
        _REGISTRY[name] = fn
        return fn

    return register


def unregister(name: str) -> bool:
    """Remove the capture ``name``; returns whether it was registered."""
    return _REGISTRY.pop(name, None) is not None


def names() -> list[str]:
    """The registered capture names, in the order :func:`collect` runs them."""
    return list(_REGISTRY)


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _wants_context(fn: CaptureFn) -> bool:
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: give it the context
        return True
    args = code.co_argcount - (1 if hasattr(fn, "__self__") else 0)
    return args > 0 or bool(code.co_flags & 0x04)  # 0x04: *args
