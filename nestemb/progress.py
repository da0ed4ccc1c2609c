"""The one progress display for long work (training epochs, encoding, evaluation).

On a terminal it is a rich display on stderr (description, bar, done/total, elapsed); when
stderr is not a terminal (CI logs, ``nohup``, pipes) it prints a plain line per task every 10 %
of its total or every 30 seconds, so a long run in a log file is never silent.

Example:
    >>> with progress_bar(enabled=False) as bar:
    ...     task = bar.add_task("epoch 1/1", total=3, info="")
    ...     bar.update(task, completed=3, info="loss 0.1")
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterator


class _NoProgress:
    """Stands in for :class:`rich.progress.Progress` when the display is switched off."""

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


class _PlainProgress(_NoProgress):
    """Plain periodic lines on a stream, for when stderr is not a terminal.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with _PlainProgress(out) as p:
        ...     t = p.add_task("encoding", total=4)
        ...     for _ in range(4):
        ...         p.advance(t, 1)
        >>> out.getvalue().splitlines()[-1].split(" (")[0]
        'encoding: 4/4'
    """

    def __init__(self, stream: Any, every_s: float = 30.0):
        self.stream, self.every_s = stream, every_s
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        tid = len(self.tasks)
        done = float(fields.pop("completed", 0.0))  # a resumed job starts part-way (rich's name)
        self.tasks[tid] = {"description": description, "total": total, "done": done,
                           "start": time.monotonic(), "shown_at": -1.0, "shown_pct": -1, **fields}
        return tid

    def update(self, task: int, completed: float | None = None, total: float | None = None,
               **fields: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["done"] = completed
        t.update(fields)
        self._maybe_show(t)

    def advance(self, task: int, n: float = 1) -> None:
        self.update(task, completed=self.tasks[task]["done"] + n)

    def _maybe_show(self, t: dict[str, Any]) -> None:
        now = time.monotonic()
        total = t["total"]
        pct = int(10 * t["done"] / total) * 10 if total else -1
        finished = bool(total) and t["done"] >= total
        if pct > t["shown_pct"] or finished or now - t["shown_at"] >= self.every_s:
            if finished and t["shown_pct"] >= 100:
                return
            t["shown_pct"], t["shown_at"] = max(pct, t["shown_pct"]), now
            of = f"/{total:g}" if total else ""
            info = f" {t['info']}" if t.get("info") else ""
            print(f"{t['description']}: {t['done']:g}{of} ({now - t['start']:.0f} s){info}",
                  file=self.stream, flush=True)


def progress_bar(enabled: bool = True, info: bool = False):
    """A progress display on stderr; ``info=True`` adds a column for each task's ``info`` field
    (e.g. the running loss). Plain periodic lines when stderr is not a terminal; disabled: a
    no-op stand-in with the same methods (``add_task``, ``update``, ``advance``).

    Example:
        >>> type(progress_bar(enabled=False)).__name__
        '_NoProgress'
    """
    if not enabled:
        return _NoProgress()
    if not sys.stderr.isatty():
        return _PlainProgress(sys.stderr)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, TimeElapsedColumn(), transient=False, console=Console(stderr=True))


@contextlib.contextmanager
def progress_stages(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A progress display with one bar per stage; yields ``update(stage, done, total)``
    (``done`` items of ``total`` so far; ``total=-1``, for callers that cannot know it: add
    ``done`` items to an open-ended count).

    Example:
        >>> with progress_stages(enabled=False) as update:
        ...     update("encoding", 5, 10)
        >>> callable(update)
        True
    """
    if not enabled:
        yield lambda *a: None
        return
    with progress_bar() as prog:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int = -1) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=None if total < 0 else total)
            if total < 0:
                prog.advance(tasks[stage], done)
            else:
                prog.update(tasks[stage], completed=done, total=total)

        yield update


def counter(update: Callable[[str, int, int], None] | None, stage: str,
            total: int) -> Callable[[int], None] | None:
    """A per-batch callback ``cb(n)`` (``n`` items just done) that reports the running count of
    ``total`` to ``update(stage, done, total)`` and shows the stage at 0 right away (``None``
    when ``update`` is ``None``).

    Example:
        >>> seen = []
        >>> cb = counter(lambda *a: seen.append(a), "encoding", 5)
        >>> cb(2); cb(3)
        >>> seen
        [('encoding', 0, 5), ('encoding', 2, 5), ('encoding', 5, 5)]
    """
    if update is None:
        return None
    done = 0
    update(stage, 0, total)

    def cb(n: int) -> None:
        nonlocal done
        done += n
        update(stage, done, total)

    return cb


def plural(n: int, noun: str) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1 (English ``-s`` plurals).

    Example:
        >>> plural(1, "epoch"), plural(2, "step"), plural(0, "query")
        ('1 epoch', '2 steps', '0 queries')
    """
    if n == 1:
        return f"{n} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}s"
