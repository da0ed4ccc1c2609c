"""``nestemb embed``: encode images or texts into an embedding directory, in this process or
with ``--ray`` over a Ray actor pool (sharded, resumable). Bad input is one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import (Device, app, check_cpu_device, check_out_dir, choices, device_option,
                             given_options, threads_option)
from nestemb.checks import positive_int
from nestemb.errors import NestembError

Split = choices("Split", "train", "t10k")


def _read_texts(path: Path) -> tuple[list[str], list[str]]:
    """Texts and ids from a BEIR-style ``.jsonl`` (``_id``, ``title``, ``text``: the one corpus
    reader) or a ``.txt`` file (one text per line, ids = line numbers)."""
    from nestemb.data.beir import read_corpus
    from nestemb.data.textfile import read_lines

    if not path.is_file():
        raise NestembError(f"--texts file not found: {path}")
    if path.suffix == ".jsonl":
        records = read_corpus(path, "--texts")
        return [r.body for r in records], [r.id for r in records]
    texts = [t for t in read_lines(path, "--texts") if t.strip()]
    if not texts:
        raise NestembError(f"no texts in {path}")
    return texts, [str(i) for i in range(len(texts))]


def _read_images(data: Optional[Path], images: Optional[Path], split: Split):
    import numpy as np

    if data is not None:
        from nestemb.data.idx import IMAGES_MAGIC, _find, read_idx

        if not data.is_dir():
            raise NestembError(f"--data must be an IDX folder, not found: {data}")
        path = _find(data, split.value, "images-idx3-ubyte")  # embedding needs no labels file
        arr = read_idx(path, IMAGES_MAGIC)
        what = str(path)
    else:
        if not images.is_file() or images.suffix != ".npy":
            raise NestembError(f"--images must be a uint8 .npy file, not found: {images}")
        try:
            arr = np.load(images, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NestembError(f"cannot read {images}: {str(e).splitlines()[0]}") from None
        what = f"--images {images}"
    if arr.ndim != 3 or arr.dtype != np.uint8 or len(arr) == 0:
        raise NestembError(
            f"{what} must hold uint8 images (N, H, W) with N >= 1, got dtype {arr.dtype} and "
            f"shape {arr.shape}"
        )
    return arr, list(range(len(arr)))


RAY_OPTIONS = {"address": "--address", "workers": "--workers", "shard_size": "--shard-size"}


@app.command()
def embed(
    ctx: typer.Context,
    model: str = typer.Option(..., help="saved image/text model folder, or 'minilm'"),
    out: Path = typer.Option(..., help="output embedding directory"),
    data: Optional[Path] = typer.Option(None, help="image IDX folder (e.g. fashion-mnist), for an image model"),
    split: Split = typer.Option(Split.train, help="IDX split of --data"),
    images: Optional[Path] = typer.Option(None, help="uint8 .npy images (N, H, W), for an image model"),
    texts: Optional[Path] = typer.Option(
        None, help=".jsonl (BEIR-style _id, title, text), a BEIR folder (its corpus.jsonl), "
        ".txt (one text per line) or .parquet (columns text [, title, _id]), for a text model"
    ),
    limit: Optional[int] = typer.Option(None, help="embed only the first N items"),
    batch_size: int = typer.Option(256, help="encoder batch size"),
    device: Device = device_option("cpu, cuda or auto (image models run on the cpu)"),
    threads: Optional[int] = threads_option("torch CPU threads while encoding (default: torch's; "
                                            "not with --ray, whose actors take one CPU each)"),
    overwrite: bool = typer.Option(False, help="replace an existing output directory"),
    ray: bool = typer.Option(False, "--ray", help="embed with a Ray Data actor pool (one model per "
                             "actor) into a sharded, resumable directory: run the same command "
                             "again to resume an interrupted job"),
    address: Optional[str] = typer.Option(None, help="with --ray: Ray cluster address (auto, "
                                          "ray://HOST:10001); default: start a local Ray"),
    workers: int = typer.Option(2, help="with --ray: actors, one model and one CPU each"),
    shard_size: int = typer.Option(10000, help="with --ray: rows per output shard"),
) -> None:
    """Encode images or texts into an embedding directory (manifest: the model's id and version).

    With --ray the work is spread over a Ray actor pool and written as shards
    (OUT/shards/shard-NNNNN.npy + ids, each with its checksums; OUT/manifest.json when all are
    done; `nestemb index build` reads it, as does nestemb.folders.load_shards); an interrupted job
    resumes where it stopped.
    """
    from nestemb.nesting import Manifest, lineage
    from nestemb.folders import save_embeddings

    positive_int(limit, "limit", allow_none=True)
    positive_int(batch_size, "batch_size", allow_none=True)
    positive_int(threads, "threads", allow_none=True)
    given = [flag for flag, v in (("--data", data), ("--images", images), ("--texts", texts)) if v is not None]
    if len(given) != 1:
        raise NestembError(f"give exactly one of --data, --images or --texts (got {given or 'none'})")
    if not ray:
        foreign = given_options(ctx, RAY_OPTIONS)
        if foreign:
            raise NestembError(f"{', '.join(foreign)} {'applies' if len(foreign) == 1 else 'apply'} "
                               "only with --ray")
    elif threads is not None:
        raise NestembError("--threads applies only without --ray (each Ray actor takes one CPU)")
    else:
        positive_int(workers, "workers", allow_none=True)
        positive_int(shard_size, "shard_size", allow_none=True)
    if texts is not None and texts.is_dir() and (texts / "corpus.jsonl").is_file():
        texts = texts / "corpus.jsonl"  # a BEIR folder: its corpus
    if ray:
        _embed_ray(model, out, data, split, images, texts, limit, batch_size, device, overwrite,
                   address, workers, shard_size)
        return
    check_out_dir(out, overwrite, "embeddings")
    from nestemb.bulk import load_encoder, model_kind

    kind = model_kind(model)  # before any input is read or any weight loaded
    if kind == "image":
        if texts is not None:
            raise NestembError(
                f"{model} is an image model: it embeds images (--data IDX folder or --images "
                ".npy of uint8 (N, H, W)), not texts (--texts)"
            )
        check_cpu_device(device, "embed")
        items, ids = _read_images(data, images, split)
    else:
        if texts is None:
            raise NestembError(
                f"{model} is a text model: it embeds texts (--texts .jsonl or .txt), not images "
                f"({given[0]})"
            )
        items, ids = _read_texts_any(texts, limit)
    encoder = load_encoder(model, device="cpu" if kind == "image" else device.value)
    from nestemb.bulk import ArrayCorpus, origin

    # the rows to embed and where they come from (ids checked unique, whatever the format)
    corpus = ArrayCorpus(items[:limit], ids[:limit], source=str(data or images or texts),
                         split=split.value if data is not None else None, limit=limit)
    items, ids = corpus.items, corpus.ids
    from nestemb.device import torch_threads
    from nestemb.progress import counter, progress_stages

    with torch_threads(threads), progress_stages() as update:
        X = encoder.encode(items, batch_size=batch_size,
                           progress=counter(update, "encoding", len(items)))
    man = encoder.manifest  # identity of the embeddings = identity of the model's weights
    manifest = Manifest(  # ... and of its parent, for a submodel of an elastic model
        model_id=man.model_id, model_version=man.model_version, nesting=man.nesting, dim=man.dim,
        extra={**origin(corpus), "model_path": str(model), **lineage(man)},
    )
    save_embeddings(out, X, manifest, ids=ids, overwrite=overwrite)
    typer.echo(f"wrote {len(X)} embeddings of dim {X.shape[1]} ({man.model_id} "
               f"{man.model_version}) to {out}")


def _read_texts_any(path: Path, limit: Optional[int] = None) -> tuple[list[str], list[str]]:
    """:func:`_read_texts`, plus Parquet files (columns text [, title, _id]; only the first
    ``limit`` rows are read)."""
    if path.suffix == ".parquet":
        from nestemb.bulk import ParquetCorpus

        corpus = ParquetCorpus(path, limit=limit)
        return corpus.read(0, len(corpus))
    return _read_texts(path)


def _embed_ray(model, out, data, split, images, texts, limit, batch_size, device, overwrite,
               address, workers, shard_size) -> None:  # fmt: skip
    """``embed --ray``: the corpus as :mod:`nestemb.bulk` takes it, then the Ray job."""
    try:
        from nestemb import bulk
        import ray  # noqa: F401
    except ImportError:
        raise NestembError("--ray needs Ray Data: pip install 'nestemb[ray]'") from None
    if texts is None:
        check_cpu_device(device, "embed")
    dev = "cuda" if device is Device.cuda else "cpu"
    if texts is not None:
        if texts.suffix == ".parquet":
            corpus = bulk.ParquetCorpus(texts, limit=limit)
        else:
            items, ids = _read_texts(texts)
            corpus = bulk.ArrayCorpus(items[:limit], ids[:limit], source=str(texts), limit=limit)
    else:
        arr, ids = _read_images(data, images, split)
        corpus = bulk.ArrayCorpus(arr[:limit], ids[:limit], source=str(data or images),
                                  split=split.value if data is not None else None, limit=limit)
    from nestemb.progress import counter, progress_stages

    with progress_stages() as update:
        tick = counter(update, "shards", -(-len(corpus) // shard_size))
        summary = bulk.embed_corpus(corpus, model, out, workers=workers, shard_size=shard_size,
                                    batch_size=batch_size, address=address, overwrite=overwrite,
                                    device=dev, on_shard=(lambda row: tick(1)) if tick else None)  # fmt: skip
    resumed = f" ({summary['skipped']} done before, resumed)" if summary["skipped"] else ""
    typer.echo(f"wrote {summary['rows']} embeddings in {summary['shards']} shards to {out}"
               f"{resumed}; {summary['embedded']} shards embedded by {workers} Ray workers at "
               f"{summary['items_per_s']:.1f} items/s")
