"""Data-parallel training under ``torchrun``: process-group helpers shared by the trainers.

The trainers call :func:`init_distributed` where they used to resolve the device. Run as usual
it returns a one-process :class:`DistEnv` and changes nothing; run under ``torchrun
--nproc_per_node=N`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) it joins the process group -- gloo on the CPU, NCCL on GPUs, one GPU per
process (``cuda:LOCAL_RANK``) -- and the trainer switches to data parallelism:

- every process draws the same *global* batch (same seed) and forwards its contiguous shard of
  it (:func:`shard_sizes`, :func:`shard_slice`), so ``batch_size`` keeps its meaning and a run on
  N processes follows the one-process run step by step;
- embeddings and logits are gathered across processes *with gradients* (:func:`gather_rows`),
  so each loss -- the per-prefix Matryoshka losses, in-batch negatives of the contrastive losses
  -- is computed on the whole global batch, exactly as in one process;
- batch normalisation uses the global batch's statistics (:func:`convert_batchnorm`; torch's
  ``SyncBatchNorm`` refuses CPU tensors), so the forward pass too equals the one-process one;
- gradients are averaged over processes (by ``DistributedDataParallel``, or
  :func:`average_gradients` where a model cannot be wrapped). Every collective's backward sums
  the gradients of all processes, which the average turns back into the one-process gradient;
- only the main process (rank 0) writes artefacts (:func:`main_process_dir`).

Example:
    >>> env = DistEnv()                       # one process: every helper is the identity
    >>> env.world_size, env.is_main, shard_sizes(10, 3)
    (1, True, (4, 3, 3))
    >>> import torch
    >>> gather_rows(torch.ones(2, 3), env).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from nestemb.errors import NestembError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its
    node, and the process-group ``backend`` (``None`` for one process).

    Example:
        >>> DistEnv(rank=1, world_size=2, backend="gloo").is_main
        False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """More than one process: the collectives below communicate."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes artefacts and prints progress."""
        return self.rank == 0


def env_from_torchrun(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them (without
    joining any process group). No ``WORLD_SIZE`` (or 1) means one process.

    Example:
        >>> env_from_torchrun({})
        DistEnv(rank=0, world_size=1, local_rank=0, backend=None)
        >>> env_from_torchrun({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
        1
        >>> env_from_torchrun({"RANK": "2", "WORLD_SIZE": "2"})
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: RANK must lie in 0..1 (WORLD_SIZE=2), got 2
    """
    environ = os.environ if environ is None else environ

    def read(name: str, default: int) -> int:
        raw = environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise NestembError(f"{name} must be an integer (as torchrun sets it), got {raw!r}") from None

    world = read("WORLD_SIZE", 1)
    if world < 1:
        raise NestembError(f"WORLD_SIZE must be at least 1, got {world}")
    if world == 1:
        return DistEnv()
    rank, local = read("RANK", -1), read("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise NestembError(f"RANK must lie in 0..{world - 1} (WORLD_SIZE={world}), got "
                           f"{environ.get('RANK')}")  # fmt: skip
    if local < 0:
        raise NestembError(f"LOCAL_RANK must be >= 0, got {local}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def init_distributed(device: str = "auto") -> tuple[DistEnv, str]:
    """Resolve ``device`` and, under ``torchrun`` (``WORLD_SIZE`` > 1), join the default process
    group: gloo for ``cpu``, NCCL for ``cuda`` (this process then uses ``cuda:LOCAL_RANK``).
    Returns ``(env, device)``. Joining twice is harmless; a group of another size is refused.

    Example:
        >>> init_distributed("cpu")               # not under torchrun: one process
        (DistEnv(rank=0, world_size=1, local_rank=0, backend=None), 'cpu')
    """
    from nestemb.device import resolve_device

    env = env_from_torchrun()
    name = resolve_device(device)
    if not env.is_distributed:
        return env, name
    import torch
    import torch.distributed as dist

    cuda = name.startswith("cuda")
    if cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise NestembError(
                f"LOCAL_RANK {env.local_rank} has no GPU: torch sees {torch.cuda.device_count()} "
                "(start at most one process per GPU, or use --device cpu)"
            )
        name = f"cuda:{env.local_rank}"
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_available():
        raise NestembError("this torch build has no torch.distributed: cannot run under torchrun")
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise NestembError(f"WORLD_SIZE={env.world_size} but {', '.join(missing)} unset: "
                               "start the processes with torchrun")  # fmt: skip
        try:
            dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NestembError(
                f"cannot join the process group at {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']} ({backend}): {first}"
            ) from None
        import atexit

        atexit.register(_destroy)
    elif dist.get_world_size() != env.world_size:
        raise NestembError(f"the process group has {dist.get_world_size()} processes, "
                           f"WORLD_SIZE says {env.world_size}")  # fmt: skip
    else:
        backend = str(dist.get_backend())
    return dataclasses.replace(env, backend=backend), name


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# --------------------------------------------------------------------------- sharding
def shard_sizes(n: int, world_size: int) -> tuple[int, ...]:
    """Rows of a global batch of ``n`` per process: contiguous, the first ``n % world_size``
    processes take one more (``numpy.array_split``'s rule).

    Example:
        >>> shard_sizes(7, 2), shard_sizes(1, 3)
        ((4, 3), (1, 0, 0))
    """
    if n < 0 or world_size < 1:
        raise NestembError(f"cannot split {n} rows over {world_size} processes")
    q, r = divmod(int(n), int(world_size))
    return tuple(q + (1 if i < r else 0) for i in range(world_size))


def shard_slice(n: int, env: DistEnv) -> slice:
    """This process's rows of a global batch of ``n`` (see :func:`shard_sizes`).

    Example:
        >>> shard_slice(7, DistEnv(rank=1, world_size=2))
        slice(4, 7, None)
    """
    sizes = shard_sizes(n, env.world_size)
    start = sum(sizes[: env.rank])
    return slice(start, start + sizes[env.rank])


# --------------------------------------------------------------------------- collectives
def _sum_over_ranks(t):
    """The sum of ``t`` over processes (no gradient). On gloo an all-gather followed by a local
    sum in rank order: one exchange instead of the ring all-reduce's two, which halves the
    latency of the small tensors summed here (on the 2-core test machine: 0.7 ms instead of
    1.2 ms per call); the result is the same on every process."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() != "gloo":
        t = t.contiguous().clone()
        dist.all_reduce(t)
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.stack(parts).sum(0)


def _gather_function():
    """The differentiable gather, built on first use (keeps ``import torch`` lazy)."""
    global _GatherRows
    if _GatherRows is not None:
        return _GatherRows
    import torch
    import torch.distributed as dist

    class GatherRows(torch.autograd.Function):
        """Concatenate every process's rows; backward: each process gets the *sum* over
        processes of the gradient of its own rows (the gradient of the sum of all processes'
        losses)."""

        @staticmethod
        def forward(ctx, x, sizes):
            rank = dist.get_rank()
            ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            width = max(sizes)
            pad = x.new_zeros((width,) + tuple(x.shape[1:]))
            pad[: len(x)] = x
            parts = [torch.empty_like(pad) for _ in sizes]
            dist.all_gather(parts, pad.contiguous())
            return torch.cat([p[:s] for p, s in zip(parts, sizes)], 0)

        @staticmethod
        def backward(ctx, grad):
            return _sum_over_ranks(grad)[ctx.start : ctx.stop], None

    _GatherRows = GatherRows
    return GatherRows


_GatherRows = None


def gather_rows(x, env: DistEnv, sizes: Iterable[int] | None = None):
    """Every process's rows of ``x`` concatenated in rank order (the whole global batch),
    differentiable: gradients reach each process's own rows. ``sizes`` (rows per rank; from
    :func:`shard_sizes` when known) saves a collective; shards may differ in size. One process:
    ``x`` itself.

    Example:
        >>> import torch
        >>> gather_rows(torch.zeros(3, 2), DistEnv(), sizes=[3]).shape
        torch.Size([3, 2])
    """
    if not env.is_distributed:
        return x
    import torch
    import torch.distributed as dist

    if sizes is None:
        n = torch.tensor([len(x)], device=x.device)
        counts = [torch.zeros_like(n) for _ in range(env.world_size)]
        dist.all_gather(counts, n)
        sizes = [int(c) for c in counts]
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != env.world_size or sizes[env.rank] != len(x):
        raise NestembError(f"gather_rows: rank {env.rank} holds {len(x)} rows, sizes say {sizes}")
    return _gather_function().apply(x, sizes)


def average_gradients(params: Iterable, env: DistEnv) -> None:
    """Average the ``.grad`` of ``params`` over processes in one collective (what
    ``DistributedDataParallel`` does, for models whose forward cannot go through its wrapper).
    A parameter without a gradient counts as zero. One process: nothing happens.

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 3.0)
        >>> average_gradients([p], DistEnv()); p.grad.tolist()
        [3.0, 3.0]
    """
    if not env.is_distributed:
        return
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])  # fmt: skip
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_float(value: float, env: DistEnv) -> float:
    """The sum of a Python number over processes (for logging; no gradient).

    Example:
        >>> all_reduce_float(2.5, DistEnv())
        2.5
    """
    if not env.is_distributed:
        return float(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if env.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def barrier(env: DistEnv) -> None:
    """Wait for every process (one process: return at once)."""
    if env.is_distributed:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- batch norm
def _global_batchnorm_class():
    global _GlobalBatchNorm
    if _GlobalBatchNorm is not None:
        return _GlobalBatchNorm
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.modules.batchnorm import _BatchNorm

    class GlobalBatchNormFn(torch.autograd.Function):
        """Batch norm with the statistics of the global batch: one collective forward (every
        process's mean, variance and count, merged exactly), one backward (the global sums of
        ``dy`` and ``dy * xhat``). Weight and bias gradients stay local: DDP averages them.
        The per-channel reductions and the normalisation use torch's own batch-norm kernels."""

        @staticmethod
        def forward(ctx, x, weight, bias, eps, world):
            mean_l, var_l = torch.batch_norm_update_stats(x, None, None, 0.0)  # biased variance
            count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
            mine = torch.cat([mean_l.double(), var_l.double(), count])
            parts = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(parts, mine)
            c = x.shape[1]
            stats = torch.stack(parts)  # (world, 2C + 1), float64: an exact merge of the parts
            n_r = stats[:, -1:]
            n = n_r.sum()
            mean = (stats[:, :c] * n_r).sum(0) / n
            var = ((stats[:, c:2 * c] + (stats[:, :c] - mean) ** 2) * n_r).sum(0) / n
            mean, var = mean.to(x.dtype), var.to(x.dtype)
            y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
            invstd = torch.rsqrt(var + eps)
            ctx.save_for_backward(x, weight, mean, invstd)
            ctx.n, ctx.eps = float(n), eps
            n = n.to(x.dtype)
            ctx.mark_non_differentiable(mean, var, n)
            return y, mean, var, n

        @staticmethod
        def backward(ctx, dy, _dmean, _dvar, _dn):
            x, weight, mean, invstd = ctx.saved_tensors
            w = weight if weight is not None else torch.ones_like(mean)
            # local sums of dy * xhat and dy (torch's kernel), then their global sums
            _, s_dy_xhat, s_dy = torch.ops.aten.native_batch_norm_backward(
                dy, x, w, None, None, mean, invstd, True, ctx.eps, [False, True, True])
            g_dy, g_dy_xhat = _sum_over_ranks(torch.cat([s_dy, s_dy_xhat])).split(x.shape[1])
            # dx = w * invstd * (dy - g_dy / n - xhat * g_dy_xhat / n), as dy * a + x * b + c
            shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
            a = w * invstd
            b = -a * invstd * g_dy_xhat / ctx.n
            c = -a * g_dy / ctx.n - b * mean
            dx = dy * a.view(shape)
            dx.addcmul_(x, b.view(shape)).add_(c.view(shape))
            dw = s_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
            db = s_dy if weight is not None and ctx.needs_input_grad[2] else None
            return dx, dw, db, None, None

    class GlobalBatchNorm(_BatchNorm):
        """Batch normalisation over the global batch in training mode (see
        ``GlobalBatchNormFn``), the module's running statistics updated from the global
        statistics; in eval mode or in one process, plain batch norm. Shares its parameters and
        buffers with the module it replaces (same ``state_dict`` names)."""

        def _check_input_dim(self, input):  # noqa: A002 - torch's name
            if input.dim() < 2:
                raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

        def forward(self, x):
            env = self.nestemb_env
            if not (self.training and env.is_distributed):
                return super().forward(x)
            y, mean, var, n = GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps,
                                                      env.world_size)  # fmt: skip
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                         else self.momentum)  # fmt: skip
                    self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                    self.running_var.mul_(1 - m).add_(var * (n / (n - 1).clamp(min=1)), alpha=m)
            return y

    _GlobalBatchNorm = GlobalBatchNorm
    return GlobalBatchNorm


_GlobalBatchNorm = None


def convert_batchnorm(module, env: DistEnv):
    """Replace every ``BatchNorm1d/2d/3d`` inside ``module`` (in place) by a global-batch
    version sharing its parameters and buffers; undo with :func:`revert_batchnorm`. One process:
    nothing changes. Returns ``module``.

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
        >>> type(convert_batchnorm(m, DistEnv(rank=0, world_size=2))[0]).__name__
        'GlobalBatchNorm'
        >>> type(revert_batchnorm(m)[0]).__name__
        'BatchNorm1d'
    """
    if not env.is_distributed:
        return module
    import torch

    cls = _global_batchnorm_class()
    for name, child in list(module.named_children()):
        if isinstance(child, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            new = cls(child.num_features, child.eps, child.momentum, child.affine,
                      child.track_running_stats)  # fmt: skip
            for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(new, attr, getattr(child, attr))
            new.train(child.training)
            new.nestemb_env = env
            new.nestemb_original = type(child)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, env)
    return module


def revert_batchnorm(module):
    """Undo :func:`convert_batchnorm` (in place); returns ``module``."""
    cls = _GlobalBatchNorm
    if cls is None:
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, cls):
            old = child.nestemb_original(child.num_features, child.eps, child.momentum,
                                         child.affine, child.track_running_stats)  # fmt: skip
            for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(old, attr, getattr(child, attr))
            old.train(child.training)
            setattr(module, name, old)
        else:
            revert_batchnorm(child)
    return module


def wrap_ddp(model, env: DistEnv, device: str):
    """``model`` wrapped in ``DistributedDataParallel`` (batch norm made global first, see
    :func:`convert_batchnorm`); one process: ``model`` itself.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2); wrap_ddp(m, DistEnv(), "cpu") is m
        True
    """
    if not env.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    convert_batchnorm(model, env)
    ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
    # running statistics are computed from the global batch on every process: identical, so
    # no buffer broadcast is needed
    import warnings

    with warnings.catch_warnings():  # torch 2.13 renames the flag; the old one still works
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


# --------------------------------------------------------------------------- outputs
@contextlib.contextmanager
def main_process_dir(
    path: str | os.PathLike, env: DistEnv, kind: str, overwrite: bool = False
) -> Iterator[Path]:
    """:func:`nestemb.io.atomic_dir` on the main process; on the others a scratch directory
    that is deleted afterwards, so code that writes its outputs in the block runs unchanged
    under ``torchrun`` and only rank 0's output appears.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with main_process_dir(out, DistEnv(rank=1, world_size=2), "image-model") as tmp:
        ...     _ = (tmp / "x").write_text("1")
        >>> out.exists()
        False
    """
    from nestemb.io import atomic_dir

    if env.is_main:
        with atomic_dir(path, kind=kind, overwrite=overwrite) as tmp:
            yield tmp
        return
    tmp = Path(tempfile.mkdtemp(prefix="nestemb-rank%d-" % env.rank))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
