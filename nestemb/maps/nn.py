"""The torch side of the maps, one of each: the PCA start, the module (linear map plus an
optional residual MLP), the learning-rate schedule and the training loop. The MLP adapter, the
nesting retrofit and the text projection recipe all train through these; their losses go
through :class:`nestemb.losses.PrefixLoss`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def pca_init(X: Any, center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The PCA rotation ``W`` of ``X`` (columns: components by decreasing variance, so
    ``X @ W`` has PCA prefixes) and the offset ``b = -mean @ W`` (zero when not ``center``:
    the *uncentered* rotation keeps every full-width cosine). Signs fixed (largest loading
    positive) so a fit is reproducible. float32.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(200, 3)) * [1.0, 5.0, 0.1]
        >>> W, b = pca_init(x, center=True)
        >>> np.allclose(W.T @ W, np.eye(3), atol=1e-5), int(np.argmax(abs(W[:, 0])))
        (True, 1)
    """
    X64 = np.asarray(X, dtype=np.float64)
    mu = X64.mean(axis=0) if center else np.zeros(X64.shape[1])
    vals, vecs = np.linalg.eigh((X64 - mu).T @ (X64 - mu))
    W = vecs[:, np.argsort(vals)[::-1]]
    signs = np.sign(W[np.abs(W).argmax(axis=0), np.arange(W.shape[1])])
    W = W * np.where(signs == 0, 1.0, signs)
    return W.astype(np.float32), (-mu @ W).astype(np.float32)


def make_module(W0: np.ndarray, b0: np.ndarray | None = None, hidden: int | None = None,
                rank: int | None = None):
    """The one trainable map: ``x @ W + b`` (no ``b`` when ``b0`` is None) plus, with
    ``hidden`` units, a residual MLP ``gelu(x @ W1 + b1) @ W2 + b2`` (tanh GELU) whose output
    layer starts at zero, so training starts exactly at ``(W0, b0)``. With ``rank``, the matrix
    is trained in factored form ``x @ U @ V`` (``U`` is ``(d_in, rank)``), started at the
    truncated SVD of ``W0`` split evenly between the factors (the best rank-``rank`` start).
    ``export()`` returns the arrays by the names :func:`nestemb.maps.base.forward` reads (the
    product ``U @ V`` as ``W``).

    Example:
        >>> import torch
        >>> from nestemb.maps.base import forward
        >>> m = make_module(np.eye(3, 2, dtype=np.float32), np.zeros(2, np.float32), hidden=4)
        >>> x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
        >>> np.allclose(m(torch.from_numpy(x)).detach().numpy(), x[:, :2])   # starts linear
        True
        >>> torch.nn.init.normal_(m.up.weight); torch.nn.init.normal_(m.down.weight)  # doctest: +ELLIPSIS
        Parameter...
        >>> np.allclose(m(torch.from_numpy(x)).detach().numpy(), forward(m.export(), x), atol=1e-5)
        True
        >>> low = make_module(np.outer([1.0, 2.0, 0.0], [1.0, -1.0]), rank=1)  # a rank-1 start
        >>> low.U.shape, np.allclose(low.export()["W"], [[1, -1], [2, -2], [0, 0]], atol=1e-6)
        (torch.Size([3, 1]), True)
    """
    import torch

    class MapModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W: torch.nn.Parameter | None = None
            self.U: torch.nn.Parameter | None = None
            self.V: torch.nn.Parameter | None = None
            if rank:
                u, s, vt = np.linalg.svd(np.asarray(W0, dtype=np.float64), full_matrices=False)
                r = int(rank)
                root = np.sqrt(s[:r])  # balanced factors: equal gradient scale on both
                self.U = torch.nn.Parameter(torch.from_numpy((u[:, :r] * root).astype(np.float32)))
                self.V = torch.nn.Parameter(
                    torch.from_numpy((root[:, None] * vt[:r]).astype(np.float32)))
            else:
                self.W = torch.nn.Parameter(torch.from_numpy(np.array(W0, dtype=np.float32)))
            self.b = (None if b0 is None
                      else torch.nn.Parameter(torch.from_numpy(np.array(b0, dtype=np.float32))))
            self.up: torch.nn.Linear | None = None
            self.down: torch.nn.Linear | None = None
            if hidden:
                d_in, d_out = np.shape(W0)
                self.up = torch.nn.Linear(d_in, int(hidden))
                self.down = torch.nn.Linear(int(hidden), d_out)
                torch.nn.init.zeros_(self.down.weight)
                torch.nn.init.zeros_(self.down.bias)
            self.act = torch.nn.GELU(approximate="tanh")

        def matrix(self):
            return self.W if self.U is None or self.V is None else self.U @ self.V

        def forward(self, x):
            y = x @ self.W if self.U is None or self.V is None else (x @ self.U) @ self.V
            if self.b is not None:
                y = y + self.b
            if self.up is not None:
                y = y + self.down(self.act(self.up(x)))
            return y

        def export(self) -> dict[str, np.ndarray]:
            out: dict[str, torch.Tensor] = {"W": self.matrix()}
            if self.b is not None:
                out["b"] = self.b
            if self.up is not None and self.down is not None:  # set together (hidden)
                out.update(W1=self.up.weight.T, b1=self.up.bias, W2=self.down.weight.T,
                           b2=self.down.bias)
            return {k: v.detach().contiguous().numpy().astype(np.float32).copy()
                    for k, v in out.items()}

    return MapModule()


def warmup_schedule(steps: int, warmup: float, shape: str = "linear") -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up over ``max(1, warmup * steps)`` steps,
    then decay to 0, ``"linear"`` or ``"cosine"``; ``warmup=0, shape="constant"``: always 1.

    Example:
        >>> f = warmup_schedule(10, 0.2)
        >>> [round(f(s), 2) for s in (0, 1, 2, 9)]
        [0.5, 1.0, 1.0, 0.12]
    """
    if shape == "constant":
        return lambda step: 1.0
    warm = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if shape == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        return max(0.0, (steps - step) / max(1, steps - warm))

    return factor


def train_module(
    params: Any,
    step_loss: Callable[[int], tuple[Any, dict[str, Any]]],
    *,
    steps: int,
    lr: float,
    warmup: float = 0.0,
    shape: str = "constant",
    progress: Any = None,
    label: str = "fitting",
) -> tuple[list[float], dict[str, float]]:
    """Adam on ``params`` for ``steps`` steps of ``step_loss(step) -> (loss, terms)``, under
    :func:`warmup_schedule`. ``progress``: ``True`` for a progress bar, or a callback
    ``progress(label, step, steps)``. Returns the per-step losses and the last ``terms``
    (floats).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(()))
        >>> losses, _ = train_module([w], lambda s: ((w - 3) ** 2, {}), steps=300, lr=0.1)
        >>> round(float(w.detach()), 2), losses[-1] < losses[0]
        (3.0, True)
    """
    import torch

    from nestemb.progress import progress_bar

    opt = torch.optim.Adam(list(params), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(steps, warmup, shape))
    losses: list[float] = []
    last: dict[str, float] = {}
    with progress_bar(progress is True, info=True) as bar:
        task = bar.add_task(label, total=steps, info="")
        for step in range(steps):
            loss, terms = step_loss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 20 == 0 or step == steps - 1:
                last = {k: round(float(v.detach()), 5) for k, v in terms.items()}
                bar.update(task, completed=step + 1, info=f"loss {losses[-1]:.4f}")
            if callable(progress):
                progress("train", step + 1, steps)
    return losses, last
