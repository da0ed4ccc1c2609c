"""The one progress display for long work (training epochs, encoding, evaluation).

Example:
    >>> with progress_bar(enabled=False) as bar:
    ...     task = bar.add_task("epoch 1/1", total=3, info="")
    ...     bar.update(task, completed=3, info="loss 0.1")
"""

from __future__ import annotations

from typing import Any


class _NoProgress:
    """Stands in for :class:`rich.progress.Progress` when the display is switched off."""

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def progress_bar(enabled: bool = True, info: bool = False):
    """A rich progress display (description, bar, done/total, elapsed); ``info=True`` adds a
    column for each task's ``info`` field (e.g. the running loss). Disabled: a no-op stand-in
    with the same methods.

    Example:
        >>> type(progress_bar(enabled=False)).__name__
        '_NoProgress'
    """
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, TimeElapsedColumn(), transient=False)
