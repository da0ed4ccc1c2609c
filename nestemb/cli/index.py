"""CLI commands for the index area: ``nestemb embed`` and ``nestemb index build|search|tune``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app
from nestemb.errors import NestembError
from nestemb.nesting import parse_ints

index_app = typer.Typer(
    help="Build, search and tune indexes over Matryoshka embeddings.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


# --------------------------------------------------------------------------- embed
def _read_texts(path: Path) -> tuple[list[str], list[str]]:
    """Texts and ids from a BEIR-style ``.jsonl`` (``_id``, ``title``, ``text``) or a ``.txt``
    file (one text per line, ids = line numbers)."""
    if not path.is_file():
        raise NestembError(f"input file not found: {path}")
    texts, ids = [], []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                title, text = row.get("title") or "", row["text"]
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise NestembError(f"{path}:{n}: expected a JSON object with a 'text' field") from None
            texts.append(f"{title} {text}".strip())
            ids.append(str(row.get("_id", len(ids))))
    else:
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        ids = [str(i) for i in range(len(texts))]
    if not texts:
        raise NestembError(f"no texts in {path}")
    return texts, ids


def _read_images(path: Path, split: str):
    import numpy as np

    if path.is_file() and path.suffix == ".npy":
        arr = np.load(path)
    elif path.is_dir():
        from nestemb.data.idx import load_idx

        arr = load_idx(path, split=split)[0]
    else:
        raise NestembError(f"images not found: {path} (give an IDX folder or a uint8 .npy)")
    return arr, list(range(len(arr)))


@app.command()
def embed(
    model: str = typer.Option(..., help="saved image/text model folder, or 'minilm'"),
    input: Path = typer.Option(..., "--input", help="IDX folder / .npy images, or .jsonl / .txt texts"),
    out: Path = typer.Option(..., help="output embedding directory"),
    split: str = typer.Option("train", help="IDX split for an image folder: train or t10k"),
    limit: Optional[int] = typer.Option(None, help="embed only the first N items"),
    batch_size: int = typer.Option(256, help="encoder batch size"),
    overwrite: bool = typer.Option(False, help="replace an existing output directory"),
) -> None:
    """Encode images or texts through a saved model into an embedding file with manifest."""
    import dataclasses

    from nestemb.nesting import Manifest, save_embeddings

    if limit is not None and limit <= 0:
        raise NestembError(f"--limit must be positive, got {limit}")
    model_dir = Path(model)
    kind = "text-model" if model.lower() == "minilm" else None
    if kind is None:
        if not model_dir.is_dir():
            raise NestembError(f"model not found: {model} (give a saved model folder or 'minilm')")
        if (model_dir / "manifest.json").is_file():
            kind = Manifest.load(model_dir).kind
        else:  # a plain sentence-transformers folder
            kind = "text-model"
    if kind == "image-model":
        try:
            from nestemb.models.image import load_image_model
        except ImportError:
            raise NestembError("image models are not available in this installation") from None
        encoder = load_image_model(model_dir)
        items, ids = _read_images(input, split)
    elif kind == "text-model":
        try:
            from nestemb.text.encoder import load_text_model
        except ImportError:
            raise NestembError("text models are not available in this installation") from None
        encoder = load_text_model(model)
        items, ids = _read_texts(input)
    else:
        raise NestembError(f"{model} holds a {kind!r}; embed needs an image-model or text-model")
    if limit is not None:
        items, ids = items[:limit], ids[:limit]
    X = encoder.encode(items, batch_size=batch_size)
    man = encoder.manifest
    manifest = Manifest(
        model_id=man.model_id, model_version=man.model_version, nesting=man.nesting, dim=man.dim,
        extra={"source": str(input), "model_path": str(model)},
    )
    save_embeddings(out, X, dataclasses.replace(manifest), ids=ids, overwrite=overwrite)
    typer.echo(f"wrote {len(X)} embeddings of dim {X.shape[1]} to {out}")


# --------------------------------------------------------------------------- index
def _load_emb(path: Path, what: str):
    from nestemb.nesting import load_embeddings

    if not path.is_dir():
        raise NestembError(f"{what} embedding directory not found: {path}")
    return load_embeddings(path, mmap=True, with_ids=True)


@index_app.command("build")
def build(
    embeddings: Path = typer.Argument(..., help="embedding directory (nestemb embed)"),
    out: Path = typer.Option(..., help="index directory to write"),
    type: str = typer.Option("funnel", help="funnel, ivf or opq"),
    dims: Optional[str] = typer.Option(None, help="funnel stage dims, e.g. 16,64,384"),
    shortlist: Optional[str] = typer.Option(None, help="funnel shortlist sizes, e.g. 400,100"),
    prefix_dtype: str = typer.Option("float32", help="float32, float16, int8 or binary"),
    first_stage: str = typer.Option("flat", help="funnel first stage: flat or hnsw"),
    d_cluster: Optional[int] = typer.Option(None, help="ivf: clustering prefix"),
    d_search: Optional[int] = typer.Option(None, help="ivf/opq: scanned prefix"),
    nlist: int = typer.Option(256, help="ivf/opq: number of lists"),
    nprobe: int = typer.Option(16, help="ivf/opq: lists visited per query"),
    codec: Optional[str] = typer.Option(None, help="ivf: flat, fp16, sq8, pq or opq"),
    code_bytes: Optional[int] = typer.Option(None, help="pq/opq: bytes per vector"),
    rerank: Optional[int] = typer.Option(None, help="ivf/opq: candidates re-ranked at full dim"),
    overwrite: bool = typer.Option(False, help="replace an existing index directory"),
) -> None:
    """Build an index from an embedding directory."""
    import numpy as np

    from nestemb.index import AdaptiveIVFIndex, AdaptiveOPQIndex, FunnelIndex

    X, man, ids = _load_emb(embeddings, "gallery")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NestembError(f"index directory already exists: {out} (use --overwrite)")
    common = dict(nesting=man.nesting, model_id=man.model_id, model_version=man.model_version)
    nest = man.nesting
    if type == "funnel":
        stage_dims = parse_ints(dims, "--dims") or ((nest[0], man.dim) if len(nest) > 1 else (man.dim,))
        sl = parse_ints(shortlist, "--shortlist")
        if sl is None:
            sl = tuple(max(100, 400 // 4**i) for i in range(len(stage_dims) - 1))
        index = FunnelIndex(dims=stage_dims, shortlist=sl, prefix_dtype=prefix_dtype,
                            first_stage=first_stage, **common)
    elif type in ("ivf", "opq"):
        ds = d_search or (nest[len(nest) // 2] if type == "ivf" else man.dim)
        kw = dict(d_search=ds, nlist=nlist, nprobe=nprobe, code_bytes=code_bytes, rerank=rerank, **common)
        if type == "ivf":
            index = AdaptiveIVFIndex(d_cluster=d_cluster or nest[0], codec=codec, **kw)
        else:
            kw["code_bytes"] = code_bytes or max(1, ds // 4)
            kw["rerank"] = rerank or 100
            index = AdaptiveOPQIndex(d_cluster=d_cluster, **kw)
    else:
        raise NestembError(f"--type must be funnel, ivf or opq, got {type!r}")
    index.add(np.asarray(X), ids=ids)
    index.save(out, overwrite=overwrite)
    typer.echo(f"built {index!r} over {len(index)} vectors -> {out}")


@index_app.command("search")
def search(
    index_dir: Path = typer.Argument(..., help="index directory"),
    queries: Path = typer.Option(..., help="query embedding directory (same model)"),
    k: int = typer.Option(10, "-k", "--k", help="results per query"),
    limit: Optional[int] = typer.Option(None, help="search only the first N queries"),
    out: Optional[Path] = typer.Option(None, help="write all results as JSON here"),
    show: int = typer.Option(5, help="print the results of the first N queries"),
) -> None:
    """Search an index with the queries of an embedding directory."""
    import numpy as np

    from nestemb.index import load_index
    from nestemb.io import write_json

    index = load_index(index_dir)
    Q, man, qids = _load_emb(queries, "query")
    Q = np.asarray(Q if limit is None else Q[:limit])
    if limit is not None and limit <= 0:
        raise NestembError(f"--limit must be positive, got {limit}")
    scores, ids = index.search(Q, k=k, manifest=man)
    qids = qids[: len(Q)] if qids is not None else list(range(len(Q)))
    for i in range(min(show, len(Q))):
        hits = ", ".join(f"{h} ({s:.3f})" for h, s in zip(ids[i].tolist(), scores[i].tolist()))
        typer.echo(f"{qids[i]}: {hits}")
    if out is not None:
        write_json(out, {str(q): {"ids": r.tolist(), "scores": s.tolist()}
                         for q, r, s in zip(qids, ids, scores)})
        typer.echo(f"wrote results for {len(Q)} queries to {out}")


@index_app.command("tune")
def tune_cmd(
    index_dir: Path = typer.Argument(..., help="index directory (updated in place)"),
    queries: Path = typer.Option(..., help="sample query embedding directory (same model)"),
    recall: float = typer.Option(0.99, help="recall@k target"),
    k: int = typer.Option(10, "-k", "--k", help="k of recall@k"),
    max_queries: int = typer.Option(200, help="queries used for measuring"),
) -> None:
    """Pick the fastest configuration meeting the recall target; save it in the index."""
    import numpy as np

    from nestemb.index import load_index, tune
    from nestemb.nesting import check_compatible

    if max_queries <= 0:
        raise NestembError(f"--max-queries must be positive, got {max_queries}")
    index = load_index(index_dir)
    Q, man, _ = _load_emb(queries, "query")
    check_compatible(man, index.manifest, what="queries and index")
    res = tune(index, np.asarray(Q[:max_queries]), k=k, recall=recall)
    index.save(index_dir)
    flag = "met" if res["met"] else "NOT met"
    typer.echo(
        f"target recall@{k} {recall} {flag}: {res['params']} recall={res['recall']:.4f} "
        f"latency={res['latency_ms']:.3f} ms ({len(res['candidates'])} configurations measured)"
    )
