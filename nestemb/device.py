"""Device choice and thread scoping shared by the trainers.

:func:`resolve_device` turns ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` into a
device name torch accepts, refusing unknown or unavailable devices with a
:class:`~nestemb.errors.NestembError`. :func:`torch_threads` sets torch's CPU thread count for the
duration of a ``with`` block and restores it afterwards, so training never changes the global
setting as a side effect.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from nestemb.errors import NestembError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str, *, check_available: bool = True) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` must exist
    (``check_available=False``: only the name is checked, as config classes do so that a config
    can be written on one machine and run on another).

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: device must be one of cpu, cuda, auto; got 'tpu'
    """
    import torch

    name = str(device).strip().lower()
    base, _, index = name.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise NestembError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if base == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cuda" and check_available:
        if not torch.cuda.is_available():
            raise NestembError(
                f"device {device!r} is not available: torch sees no CUDA GPU (use cpu or auto)"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise NestembError(
                f"device {device!r} is not available: torch sees {torch.cuda.device_count()} GPU(s)"
            )
    return name


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch CPU threads inside the block (``None``: leave as is), then restore.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    if threads is None:
        yield
        return
    if int(threads) < 1:
        raise NestembError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
