"""Progress bars for transfers: :data:`~replab.transfers.Progress` callbacks that draw with
tqdm (imported when a bar is first drawn, so headless code pays nothing for it)."""

from __future__ import annotations


class ProgressBar:
    """A :data:`Progress` callback drawing a tqdm bar; a new total starts a new bar."""

    def __init__(self, desc: str = "transfer", notebook: bool = False, **tqdm_kwargs):
        self.desc = desc
        self.notebook = notebook
        self.tqdm_kwargs = tqdm_kwargs
        self._bar = None
        self._ended: tuple[int, int] | None = None  # (done, total) of the bar last completed

    def _new_bar(self, total: int):
        if self.notebook:
            from tqdm.auto import tqdm  # widgets in Jupyter (when ipywidgets is there)
        else:
            from tqdm import tqdm
        return tqdm(total=total, desc=self.desc, unit="B", unit_scale=True,
                    unit_divisor=1024, **self.tqdm_kwargs)

    def __call__(self, done: int, total: int, name: str) -> None:
        if self._bar is None and self._ended == (done, total):
            return  # a repeat of the last call of a finished transfer
        if self._bar is not None and (self._bar.total != total or done < self._bar.n):
            self.close()
        if self._bar is None:
            self._bar = self._new_bar(total)
        self._bar.set_postfix_str(name, refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()
            self._ended = (done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def notebook_progress(desc: str = "transfer", **tqdm_kwargs) -> ProgressBar:
    """A progress display for a notebook (tqdm.auto: a widget bar in Jupyter, text
    elsewhere or without ipywidgets)."""
    return ProgressBar(desc, notebook=True, **tqdm_kwargs)


def terminal_progress(desc: str = "transfer", **tqdm_kwargs) -> ProgressBar:
    """A text progress bar (tqdm) for a terminal or a headless log."""
    return ProgressBar(desc, notebook=False, **tqdm_kwargs)


__all__ = ["ProgressBar", "notebook_progress", "terminal_progress"]
