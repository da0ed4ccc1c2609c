"""Compatible training for the image trainer: a new model whose embeddings can be searched
against a gallery that an older model encoded, at every prefix of the nesting.

A :class:`CompatConfig` is passed to :func:`nestemb.train.image.train_image` as ``compat=``; it
composes with the per-prefix (Matryoshka) heads and adds, on top of the new model's own
per-prefix cross-entropy:

- **BCT influence loss** (Shen et al., 2020), weight ``influence``: the *old* model's frozen
  per-prefix classifier applied to the new model's embedding (its first ``old.dim``
  coordinates, at every prefix the old model has), so new features land where the old classifier
  expects old features of the same class. Labels the old classifier does not know (classes
  ``>= old_classes``) follow BCT's synthesised classifier: their weights are the class means of
  the **old** model's prefix views of the new training images of that class (``unseen=
  "synthesise"``, the default: new classes are then pulled towards where the old gallery holds
  them, which is what a search against that gallery needs); ``unseen="drop"`` instead applies the
  influence loss only to samples of old classes.
- **Fixed d-simplex classifier** (stationary representations, CoReS; ``simplex=True``): the head
  weights are frozen to the vertices of a regular simplex sized for the *final* number of classes
  (the model's ``num_classes``) from the first model of a chain on, so every model of the chain
  maps a class to the same direction. Prefix heads use the simplex in the full dimension, masked
  per prefix: prefix ``m`` sees the first ``m`` coordinates of each vertex (with a cosine head,
  exactly :func:`~nestemb.nesting.prefix_view` of the vertex), so a class's direction at a prefix
  is the prefix of its full direction. The simplex lives in the first ``num_classes - 1``
  coordinates, turned by a fixed seeded rotation (:func:`simplex_vertices`) so that shorter
  prefixes still separate every class; all models built with the same ``num_classes`` and
  ``simplex_seed`` share it.
- **Prefix-compatible Matryoshka training** (:meth:`CompatConfig.prefix`): BCT influence plus a
  distillation term, weight ``distill``: ``1 - cos(prefix_view(new(x), m), prefix_view(old(x),
  m))`` averaged over every old prefix ``m`` on the (augmented) training images; a cross-model
  contrastive term, weight ``contrast`` (default 3 in :meth:`~CompatConfig.prefix`): at every
  old prefix, a supervised InfoNCE (``temperature`` 0.05) of each new vector against the old
  vectors of the batch, whose positives are the old vectors of its class. That is the search
  the criterion measures (new queries, old gallery), and it reaches classes the old classifier
  never knew. Why it is there (Fashion-MNIST, old model on 5 classes at 32-d, new on 10 at 64-d,
  the trainer's default schedule, 1-NN top-1 of 2,000 test queries against the 60,000 training
  images encoded by the old model, at 8/16/32 dims): old/old .703/.771/.789; BCT alone
  .564/.604/.654 (aligning to the old *classifier* does not place new queries next to old
  *vectors*, least of all for classes the old model never saw); influence + distillation
  .687/.723/.751; adding the contrastive term at weight 3 and temperature 0.05 .788/.805/.821,
  above the old model at every prefix, with new/new .874 at 64-d against .876 for an
  independently trained model; and
  ``orthogonal=True`` puts a trainable orthogonal layer ``Q`` after the encoder (BT2/OCA style):
  ``z = h Q``. ``Q`` keeps every distance of the encoder's space, so the constrained first
  ``old.dim`` coordinates of ``z`` are a rotation of the encoder's space, not a loss of it, and the
  extra dimensions of a wider new model carry what the old space cannot. ``Q`` is folded into the
  encoder's last linear layer when training ends, so the saved model is an ordinary
  :class:`~nestemb.models.image.ImageModel` (same files, loads with ``load_image_model``).

The new model may be wider than the old; it must be at least as wide, hold every old prefix in
its nesting, take images of the same size, and know at least the old model's classes. The old
model needs a manifest (model id and weights version): ``train_image`` records the setup
(:meth:`CompatConfig.describe`) in ``info["compat"]`` and in checkpoint manifests; pass it as
``extra={"compat": info["compat"]}`` when saving.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nestemb.errors import NestembError
from nestemb.losses import PrefixLoss, cosine_distance
from nestemb.heads import NestedHead
from nestemb.models.image import ImageModel, ImageModelConfig
from nestemb.nesting import Manifest, prefix_view

UNSEEN = ("synthesise", "drop")


def simplex_vertices(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """``(num_classes, dim)`` unit vectors: the vertices of a regular simplex centred at the
    origin (pairwise cosine ``-1 / (num_classes - 1)``), in the first ``num_classes - 1``
    coordinates, turned by a seeded rotation, zero beyond. A ``dim`` below ``num_classes - 1``
    keeps the first ``dim`` coordinates (rows re-normalised): not a simplex, but distinct
    directions.

    Example:
        >>> v = simplex_vertices(4, 5)
        >>> v.shape, np.allclose(v @ v.T, np.where(np.eye(4), 1, -1 / 3)), float(np.abs(v[:, 3:]).max())
        ((4, 5), True, 0.0)
        >>> simplex_vertices(1, 4)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: simplex num_classes must be at least 2, got 1
    """
    if num_classes < 2:
        raise NestembError(f"simplex num_classes must be at least 2, got {num_classes}")
    if dim < 1:
        raise NestembError(f"simplex dim must be at least 1, got {dim}")
    k = num_classes
    centred = np.eye(k) - 1.0 / k  # the vertices, in the (k-1)-dim subspace orthogonal to ones
    u, _, _ = np.linalg.svd(centred)
    v = centred @ u[:, : k - 1]  # coordinates in an orthonormal basis of that subspace
    rot, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k - 1, k - 1)))
    v = v @ rot  # generic orientation: every prefix of a vertex carries some of it
    out = np.zeros((k, dim))
    w = min(dim, k - 1)
    out[:, :w] = v[:, :w]
    return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


@dataclasses.dataclass
class CompatConfig:
    """What makes a training run compatible (see the module docstring). Use the constructors
    :meth:`bct`, :meth:`simplex_classifier` and :meth:`prefix`, or set the fields: ``old_model``
    (frozen; needed by ``influence`` and ``distill``), ``influence`` (BCT loss weight),
    ``distill`` (cosine distillation weight at the old prefixes), ``contrast`` (cross-model
    contrastive weight at the old prefixes) and its ``temperature``, ``orthogonal`` (orthogonal layer
    after the encoder), ``simplex`` (fixed d-simplex head), ``simplex_seed``, ``unseen`` (how
    labels the old classifier does not know enter the influence loss: ``"synthesise"`` or
    ``"drop"``), ``old_classes`` (how many classes the old classifier knows, labels ``0..n-1``;
    default its ``num_classes``, or all of them for a simplex old model).

    Example:
        >>> CompatConfig.simplex_classifier().describe()["method"]
        'simplex'
        >>> CompatConfig(influence=1.0)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: influence, distill and contrast need an old_model
        >>> CompatConfig(unseen="ignore")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: unseen must be one of ('synthesise', 'drop'), got 'ignore'
    """

    old_model: ImageModel | None = None
    influence: float = 0.0
    distill: float = 0.0
    orthogonal: bool = False
    simplex: bool = False
    simplex_seed: int = 0
    unseen: str = "synthesise"
    old_classes: int | None = None
    contrast: float = 0.0
    temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("influence", "distill", "contrast"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise NestembError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.unseen not in UNSEEN:
            raise NestembError(f"unseen must be one of {UNSEEN}, got {self.unseen!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise NestembError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if (self.influence or self.distill or self.contrast) and self.old_model is None:
            raise NestembError("influence, distill and contrast need an old_model")
        if self.old_model is not None:
            if not isinstance(self.old_model, ImageModel):
                raise NestembError(
                    f"old_model must be an ImageModel, got {type(self.old_model).__name__}")
            if self.old_model.manifest is None:
                raise NestembError("old_model has no manifest (model id and weights version): "
                                   "load it with load_image_model or set one with build_manifest")
        if self.old_classes is not None and self.old_classes < 1:
            raise NestembError(f"old_classes must be at least 1, got {self.old_classes}")
        if not (self.influence or self.distill or self.contrast or self.orthogonal
                or self.simplex):
            raise NestembError("a CompatConfig must ask for something: influence, distill, "
                               "contrast, orthogonal or simplex")

    @classmethod
    def bct(cls, old_model: ImageModel, influence: float = 1.0, **kw: Any) -> "CompatConfig":
        """BCT: the old model's classifier on the new features."""
        return cls(old_model=old_model, influence=influence, **kw)

    @classmethod
    def simplex_classifier(cls, seed: int = 0, **kw: Any) -> "CompatConfig":
        """Stationary representations: a fixed d-simplex head (no old model needed)."""
        return cls(simplex=True, simplex_seed=seed, **kw)

    @classmethod
    def prefix(cls, old_model: ImageModel, influence: float = 1.0, distill: float = 1.0,
               contrast: float = 3.0, orthogonal: bool = True,
               **kw: Any) -> "CompatConfig":  # fmt: skip
        """Prefix-compatible Matryoshka training: influence, distillation and the cross-model
        contrastive term on the old prefixes, and an orthogonal layer. The contrastive weight
        is what makes the criterion pass (see the module docstring for the measurements)."""
        return cls(old_model=old_model, influence=influence, distill=distill,
                   contrast=contrast, orthogonal=orthogonal, **kw)  # fmt: skip

    @property
    def method(self) -> str:
        """A short name: ``prefix``, ``bct``, ``simplex``, or ``+``-joined parts."""
        if self.distill or self.contrast:
            parts = ["prefix"]
        elif self.influence:
            parts = ["bct"]
        else:
            parts = ["orthogonal"] if self.orthogonal else []
        return "+".join((["simplex"] if self.simplex else []) + parts)

    def _old_manifest(self) -> Manifest:
        """The old model's manifest (``__post_init__`` refuses an old model without one)."""
        assert self.old_model is not None and self.old_model.manifest is not None
        return self.old_model.manifest

    def describe(self) -> dict[str, Any]:
        """The setup as JSON-able data, for ``info["compat"]`` and manifests' ``extra``."""
        d: dict[str, Any] = {"method": self.method}
        if self.old_model is not None:
            man = self._old_manifest()
            d["old_model"] = {"model_id": man.model_id, "model_version": man.model_version,
                              "dim": man.dim, "nesting": list(man.nesting)}  # fmt: skip
            d.update(influence=float(self.influence), distill=float(self.distill),
                     contrast=float(self.contrast), temperature=float(self.temperature),
                     unseen=self.unseen, old_classes=self.known_classes())  # fmt: skip
        d["orthogonal"] = bool(self.orthogonal)
        if self.simplex:
            d["simplex"] = {"seed": int(self.simplex_seed)}
        return d

    def known_classes(self) -> int:
        """How many classes (labels ``0..n-1``) the old classifier knows."""
        old = self.old_model
        if self.old_classes is not None:
            return int(self.old_classes)
        return int(old.config.num_classes) if old is not None else 0

    def check_against(self, config: ImageModelConfig) -> None:
        """Refuse a new model that cannot be compatible with the old one (one line naming what
        differs)."""
        if self.simplex and len(config.nesting) and config.num_classes < 2:
            raise NestembError("the simplex classifier needs at least 2 classes")
        old = self.old_model
        if old is None:
            return
        oc, name = old.config, self._old_manifest().model_id
        if config.dim < oc.dim:
            raise NestembError(
                f"cannot be compatible with old model {name!r}: the new model is {config.dim}-d, "
                f"narrower than the old {oc.dim}-d; the new model must be at least as wide")
        missing = [m for m in oc.nesting if m not in config.nesting]
        if missing:
            raise NestembError(
                f"cannot be compatible with old model {name!r} at every prefix: its nesting "
                f"{oc.nesting} has {missing[0]}, which the new nesting {config.nesting} lacks")
        if tuple(oc.in_hw) != tuple(config.in_hw):
            raise NestembError(f"old model {name!r} takes {tuple(oc.in_hw)} images, the new "
                               f"model {tuple(config.in_hw)}")  # fmt: skip
        if self.known_classes() > config.num_classes:
            raise NestembError(
                f"old model {name!r} knows {self.known_classes()} classes, the new model only "
                f"{config.num_classes}; the new model must know every old class")


class OrthogonalLayer(nn.Module):
    """``z = h Q`` with ``Q`` a ``(dim, dim)`` orthogonal matrix (a torch orthogonal
    parametrization, identity at the start): every step keeps it orthogonal.

    Example:
        >>> layer = OrthogonalLayer(4)
        >>> q = layer.matrix()
        >>> bool(torch.allclose(q.T @ q, torch.eye(4), atol=1e-6))
        True
    """

    def __init__(self, dim: int):
        super().__init__()
        lin = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(dim))
        nn.utils.parametrizations.orthogonal(lin)  # parametrizes lin in place (returns it)
        self.linear = lin

    def matrix(self) -> torch.Tensor:
        """``Q`` such that ``forward(h) == h @ Q``."""
        return self.linear.weight.t()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)


def fold_orthogonal(model: ImageModel, q: torch.Tensor) -> None:
    """Fold ``z = proj(f) @ q`` into ``model.encoder.proj`` in place (exact: the weight
    becomes ``q.T @ W`` and the bias ``b @ q``).

    Example:
        >>> m = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=2))
        >>> x = torch.randn(3, 1, 28, 28); q = OrthogonalLayer(4).matrix().detach()
        >>> _ = m.eval(); before = m.encoder(x) @ q
        >>> fold_orthogonal(m, q)
        >>> bool(torch.allclose(m.encoder(x), before, atol=1e-5))
        True
    """
    proj = model.encoder.proj
    with torch.no_grad():
        q = q.to(proj.weight)
        proj.weight.copy_(q.t() @ proj.weight)
        proj.bias.copy_(proj.bias @ q)


class CompatTrainer(nn.Module):
    """The compatibility parts of one training run, built by :func:`nestemb.train.image
    .train_image` from a :class:`CompatConfig`: the frozen old model, its influence head
    (old classes from the old classifier, the others synthesised or dropped), the orthogonal
    layer. :meth:`forward` replaces ``model(x)``, :meth:`loss` adds to the cross-entropy,
    :meth:`finish` folds the orthogonal layer into the model.

    Example:
        >>> from nestemb.models.image import build_manifest
        >>> old = ImageModel(ImageModelConfig(dim=4, nesting=(2, 4), width=2, num_classes=3))
        >>> old.manifest = build_manifest(old, "m0")
        >>> new = ImageModel(ImageModelConfig(dim=8, nesting=(2, 4, 8), width=2))
        >>> x = torch.zeros(20, 1, 28, 28, dtype=torch.uint8); y = torch.arange(20) % 10
        >>> t = CompatTrainer(CompatConfig.prefix(old), new, x, y)
        >>> z, logits = t(new, new.preprocess(x[:4]))
        >>> z.shape, logits.shape, t.loss(new, new.preprocess(x[:4]), z, y[:4]).ndim
        (torch.Size([4, 8]), torch.Size([4, 3, 10]), 0)
    """

    def __init__(self, config: CompatConfig, model: ImageModel, images: torch.Tensor,
                 labels: torch.Tensor, batch_size: int = 1024):  # fmt: skip
        super().__init__()
        config.check_against(model.config)
        self.config = config
        self.orth = OrthogonalLayer(model.config.dim) if config.orthogonal else None
        if config.simplex:
            self._fix_simplex(model)
        self.old: ImageModel | None = None
        if config.old_model is not None:
            # a private frozen copy: the caller's model is left as it was (train mode, grads)
            self.old = copy.deepcopy(config.old_model).cpu().eval().requires_grad_(False)
            self.influence_head = self._influence_head(model.config.num_classes, images, labels,
                                                       batch_size)  # fmt: skip

    def _fix_simplex(self, model: ImageModel) -> None:
        head = model.head
        v = torch.from_numpy(simplex_vertices(head.num_classes, head.dim, self.config.simplex_seed))
        with torch.no_grad():
            head.weight.copy_(v.repeat(head.weight.shape[0] // head.num_classes, 1))
            if head.bias is not None:
                head.bias.zero_()
        head.weight.requires_grad_(False)
        if head.bias is not None:
            head.bias.requires_grad_(False)

    def _old_input(self, model: ImageModel, x: torch.Tensor) -> torch.Tensor:
        """A batch standardized for ``model`` re-standardized for the old model."""
        assert self.old is not None, "only with an old model"
        a, b = model.config, self.old.config
        return (x * a.std + a.mean - b.mean) / b.std

    def _influence_head(self, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int) -> NestedHead:  # fmt: skip
        old = self.old
        assert old is not None, "only with an old model"
        src = old.head
        known = self.config.known_classes()
        head = NestedHead(old.nesting, num_classes, kind="mrl", cosine=src.cosine)
        k, c_old = len(old.nesting), src.num_classes
        w_old = src.block_weight().detach().view(k, c_old, -1)
        w = torch.zeros(k, num_classes, old.config.dim)
        w[:, :known] = w_old[:, :known]
        unseen = [c for c in range(known, num_classes) if bool((labels == c).any())]
        if unseen and self.config.unseen == "synthesise":
            # BCT's synthesised classifier: old features' class means, per prefix
            means = self._old_class_means(images, labels, unseen, batch_size)  # (k, len, dim)
            if not src.cosine:  # match the scale of the learned weights of each prefix
                scale = w_old[:, :known].norm(dim=2).mean(dim=1)  # (k,)
                means = means * scale[:, None, None]
            w[:, unseen] = means
        with torch.no_grad():
            head.weight.copy_(w.view(k * num_classes, -1))
            if src.cosine:
                head.log_scale.copy_(src.log_scale.detach())
            else:
                bias = torch.zeros(k, num_classes)
                bias[:, :known] = src.bias.detach()[:, :known]
                bias[:, known:] = src.bias.detach()[:, :known].mean(dim=1, keepdim=True)
                head.bias.copy_(bias)
        self.known = known
        return head.requires_grad_(False)

    @torch.no_grad()
    def _old_class_means(self, images: torch.Tensor, labels: torch.Tensor, classes: list[int],
                         batch_size: int) -> torch.Tensor:  # fmt: skip
        """Per old prefix, the normalised mean of the old model's prefix views of each class."""
        old = self.old
        assert old is not None, "only with an old model"
        out = torch.zeros(len(old.nesting), len(classes), old.config.dim)
        for j, c in enumerate(classes):
            idx = torch.nonzero(labels == c).flatten()[:5000]
            z = torch.cat([old.encoder(old.preprocess(images[idx[i : i + batch_size]]))
                           for i in range(0, len(idx), batch_size)])  # fmt: skip
            for p, m in enumerate(old.nesting):
                mean = prefix_view(z, m).mean(dim=0)
                out[p, j, :m] = F.normalize(mean, dim=0)
        return out

    def forward(self, model: ImageModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logits)`` of the new model, through the orthogonal layer if any."""
        z = model.encoder(x)
        if self.orth is not None:
            z = self.orth(z)
        return z, model.head(z)

    def loss(self, model: ImageModel, x: torch.Tensor, z: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The compatibility terms for a batch (``x`` standardized for the new model, ``z`` its
        embedding from :meth:`forward`)."""
        total = z.new_zeros(())
        if self.old is None:
            return total
        cfg, d_old = self.config, self.old.config.dim
        if cfg.influence:
            logits = self.influence_head(z[:, :d_old])  # (B, K_old, classes)
            keep = y < self.known if cfg.unseen == "drop" else torch.ones_like(y, dtype=torch.bool)
            if bool(keep.any()):
                b, k, c = logits[keep].shape
                ce = F.cross_entropy(logits[keep].reshape(b * k, c), y[keep].repeat_interleave(k))
                total = total + cfg.influence * ce
        if cfg.distill or cfg.contrast:
            with torch.no_grad():
                z_old = self.old.encoder(self._old_input(model, x))
        if cfg.distill:
            total = total + cfg.distill * PrefixLoss(cosine_distance, self.old.nesting)(z, z_old)
        if cfg.contrast:
            total = total + cfg.contrast * self._cross_contrast(z, z_old, y)
        return total

    def _cross_contrast(self, z: torch.Tensor, z_old: torch.Tensor,
                        y: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Supervised contrastive loss of new queries against the batch's *old* embeddings, at
        every old prefix: each new vector must rank the old vectors of its own class (its own
        image included) above the others. This is the cross-model search itself (new queries,
        old gallery), so it teaches what the compatibility criterion measures, for classes the
        old model never saw as well (their old vectors are the only reference there is)."""
        assert self.old is not None, "only with an old model"
        pos = (y[:, None] == y[None, :]).float()
        losses = []
        for m in self.old.nesting:
            logits = prefix_view(z, m) @ prefix_view(z_old, m).T / self.config.temperature
            logp = F.log_softmax(logits, dim=1)
            losses.append(-((logp * pos).sum(dim=1) / pos.sum(dim=1)).mean())
        return torch.stack(losses).mean()

    def export(self, model: ImageModel) -> ImageModel:
        """A copy of ``model`` with the orthogonal layer folded in (for checkpoints)."""
        if self.orth is None:
            return model
        out = copy.deepcopy(model)
        fold_orthogonal(out, self.orth.matrix().detach())
        return out

    def finish(self, model: ImageModel) -> None:
        """Fold the orthogonal layer into ``model`` (in place) and unfreeze nothing: the saved
        model is a plain :class:`ImageModel`."""
        if self.orth is not None:
            fold_orthogonal(model, self.orth.matrix().detach())
