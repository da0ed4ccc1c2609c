"""CLI commands for the index area: ``nestemb index build|search|tune``.

The library (``nestemb.index``) takes typed values; this module parses the flags, checks output
paths before any long work, and turns every bad input into a one-line error (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from nestemb.cli.app import (app, check_out_dir, check_out_file, choices, given_options,
                             moved_argument, renamed, search_result, write_result)
from nestemb.cli.embed import Split
from nestemb.cli.parse import parse_floats, parse_ints
from nestemb.checks import positive_int
from nestemb.errors import NestembError
from nestemb.index.funnel import FULL_DTYPES
from nestemb.index.ivf import CODECS
from nestemb.index.quantize import FIRST_STAGES, PREFIX_DTYPES

index_app = typer.Typer(
    help="Build, search and tune indexes over Matryoshka embeddings.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


IndexType = choices("IndexType", "funnel", "ivf", "opq")
PrefixDtype = choices("PrefixDtype", *PREFIX_DTYPES)
FullDtype = choices("FullDtype", *FULL_DTYPES)
RescoreDtype = choices("RescoreDtype", "none", "int8")
FirstStage = choices("FirstStage", *FIRST_STAGES)
Codec = choices("Codec", *CODECS)


# --------------------------------------------------------------------------- index
def _load_emb(path: Path, what: str):
    """``(vectors, manifest, ids)`` of an embedding directory; ids must be unique as the
    strings they become in results (``5`` and ``"5"`` are one key)."""
    from nestemb.folders import check_unique_ids, load_embeddings

    if not path.is_dir():
        raise NestembError(f"{what} embedding directory not found: {path}")
    X, man, ids = load_embeddings(path, mmap=True, with_ids=True)
    if ids is not None:
        check_unique_ids([str(i) for i in ids], what=f"{what} ids in {path}")
    return X, man, ids


FUNNEL_OPTIONS = {"dims": "--stages", "shortlist": "--shortlist", "prefix_dtype": "--prefix-dtype",
                  "first_stage": "--first-stage", "full_dtype": "--full-dtype",
                  "rescore_dtype": "--rescore-dtype", "int8_trim": "--int8-trim",
                  "hnsw_m": "--hnsw-m", "ef_search": "--ef-search"}
IVF_OPTIONS = {"d_cluster": "--d-cluster", "d_search": "--d-search", "nlist": "--nlist",
               "nprobe": "--nprobe", "codec": "--codec", "code_bytes": "--code-bytes",
               "rerank": "--rerank"}
DEFAULT_RECALL_WARNING = 0.9
"""``index build`` warns when its configuration agrees less than this with exact search."""


def _check_build_options(ctx: typer.Context, index_type: "IndexType", codec, code_bytes) -> None:
    """Refuse options that do not apply to ``--index-type`` instead of silently ignoring them."""
    foreign = given_options(ctx, IVF_OPTIONS if index_type is IndexType.funnel else FUNNEL_OPTIONS)
    if foreign:
        raise NestembError(
            f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
            f"--index-type {index_type.value} (funnel takes {', '.join(FUNNEL_OPTIONS.values())}; "
            f"ivf and opq take {', '.join(IVF_OPTIONS.values())})"
        )
    if index_type is IndexType.ivf and code_bytes is not None and (codec is None or codec.value not in ("pq", "opq")):
        raise NestembError("--code-bytes applies only with --codec pq or opq")


def _measured_recall(index, X, k: int = 10, n_queries: int = 200) -> tuple[float, int, int]:
    """Agreement of ``index.search`` with exact search, using evenly spaced gallery vectors as
    queries: ``(recall, k, n_queries)``."""
    import numpy as np

    from nestemb.index import knn_intersection

    k = min(k, len(index))
    rows = np.linspace(0, len(X) - 1, num=min(n_queries, len(X))).astype(np.int64)
    Q = np.asarray(X[np.unique(rows)])
    found = index.search(Q, k=k)[1]
    truth = index.search_exact(Q, k=k)[1]
    return knn_intersection(found, truth), k, len(Q)


@index_app.command("build", cls=renamed({"--dims": "--stages"}))
def build(
    ctx: typer.Context,
    embeddings: Optional[Path] = typer.Option(
        None, "--embeddings", help="embedding directory (nestemb embed, or the sharded "
        "directory of nestemb embed --ray)"),
    old_embeddings: Optional[Path] = typer.Argument(None, hidden=True, metavar="EMBEDDINGS"),
    out: Path = typer.Option(..., help="index directory to write"),
    index_type: IndexType = typer.Option(IndexType.funnel, help="funnel (prefix shortlist + re-rank), ivf (AdANNS-IVF) or opq (AdANNS-OPQ)"),
    # named dims as in FunnelIndex, so that the library's errors about dims name --stages
    dims: Optional[str] = typer.Option(None, "--stages", help="funnel stage prefixes, e.g. 16,64,384 (default: shortest prefix, full)"),
    shortlist: Optional[str] = typer.Option(None, help="funnel shortlist sizes, e.g. 400,100"),
    prefix_dtype: PrefixDtype = typer.Option(PrefixDtype.float32, help="funnel first-stage storage"),
    first_stage: FirstStage = typer.Option(FirstStage.flat, help="funnel first stage: exact scan or HNSW graph"),
    full_dtype: FullDtype = typer.Option(FullDtype.float32, help="funnel: storage of the full vectors the last stage re-ranks (float16 halves their bytes)"),
    rescore_dtype: RescoreDtype = typer.Option(RescoreDtype.none, help="funnel with 3 --stages: score the middle stage from int8 codes (e.g. binary -> int8 -> float)"),
    int8_trim: float = typer.Option(0.0, help="funnel int8 stages: fraction of values clipped at each end of every dimension's range"),
    hnsw_m: int = typer.Option(32, help="funnel --first-stage hnsw: graph degree M"),
    ef_search: int = typer.Option(64, help="funnel --first-stage hnsw: search breadth (raised to the shortlist)"),
    d_cluster: Optional[int] = typer.Option(None, help="ivf/opq: clustering prefix"),
    d_search: Optional[int] = typer.Option(None, help="ivf/opq: scanned prefix"),
    nlist: int = typer.Option(256, help="ivf/opq: number of lists"),
    nprobe: Optional[int] = typer.Option(None, help="ivf/opq: lists visited per query, at most "
                                         "--nlist (default: 16, or --nlist when smaller)"),
    codec: Optional[Codec] = typer.Option(None, help="ivf: in-list storage (default flat); opq: opq"),
    code_bytes: Optional[int] = typer.Option(None, help="pq/opq: bytes per vector"),
    rerank: Optional[int] = typer.Option(None, help="ivf/opq: candidates re-ranked at full dim"),
    overwrite: bool = typer.Option(False, help="replace an existing index directory"),
) -> None:
    """Build an index from an embedding directory (keeps its model id, version and nesting).

    Options of another --index-type are refused. After the build, the index's agreement with
    exact search (recall@10 with 200 gallery vectors as queries) is printed, with a warning and
    a hint to run ``nestemb index tune`` when it is below 0.9.
    """
    from nestemb.index import AdaptiveIVFIndex, AdaptiveOPQIndex, FunnelIndex, build_on_disk

    embeddings = moved_argument(embeddings, old_embeddings, "--embeddings", "EMBEDDINGS")
    _check_build_options(ctx, index_type, codec, code_bytes)
    X, man, ids = _load_emb(embeddings, "gallery")
    check_out_dir(out, overwrite, "index")  # before the build, which may take long
    common = dict(nesting=man.nesting, model_id=man.model_id, model_version=man.model_version)
    nest = man.nesting
    if index_type is IndexType.funnel:
        stage_dims = parse_ints(dims, "--stages") or ((nest[0], man.dim) if len(nest) > 1 else (man.dim,))
        sl = parse_ints(shortlist, "--shortlist")
        if sl is None:
            sl = tuple(max(100, 400 // 4**i) for i in range(len(stage_dims) - 1))
        index = FunnelIndex(dims=stage_dims, shortlist=sl, prefix_dtype=prefix_dtype.value,
                            first_stage=first_stage.value, full_dtype=full_dtype.value,
                            rescore_dtype=None if rescore_dtype.value == "none" else rescore_dtype.value,
                            int8_trim=int8_trim, hnsw_m=hnsw_m, ef_search=ef_search, **common)
    else:
        # defaults only for options not given: a given 0 is refused by the index, never replaced
        if nprobe is not None and nlist is not None and nprobe > nlist > 0:
            raise NestembError(f"--nprobe {nprobe} is above --nlist {nlist}: a query can visit "
                               "at most every list once")
        ds = d_search if d_search is not None else (
            nest[len(nest) // 2] if index_type is IndexType.ivf else man.dim)
        kw = dict(d_search=ds, nlist=nlist, nprobe=nprobe, **common)
        if index_type is IndexType.ivf:
            index = AdaptiveIVFIndex(d_cluster=nest[0] if d_cluster is None else d_cluster,
                                     codec=codec and codec.value, code_bytes=code_bytes,
                                     rerank=rerank, **kw)
        else:
            if code_bytes is None and isinstance(ds, int) and ds > 0:  # a divisor of d_search
                code_bytes = next(c for c in range(max(1, ds // 4), 0, -1) if ds % c == 0)
            index = AdaptiveOPQIndex(d_cluster=d_cluster, codec=(codec or Codec.opq).value,
                                     code_bytes=code_bytes, rerank=100 if rerank is None else rerank,
                                     **kw)
    if isinstance(index, FunnelIndex) and index.full_dtype == "float32":
        # the full vectors go straight into the index directory: a gallery larger than memory
        index = build_on_disk(index, X, out, ids, overwrite=overwrite)
    else:
        index.add(X, ids=ids)  # a memory-mapped gallery is streamed, never read whole
        index.save(out, overwrite=overwrite)
    typer.echo(f"built {index!r} over {len(index)} vectors -> {out}")
    try:
        measured, k, n_q = _measured_recall(index, X)
    except NestembError as e:  # e.g. a shortlist shorter than 10: the index is still built
        typer.echo(f"warning: recall against exact search not measured: {e}", err=True)
        return
    typer.echo(f"recall@{k} against exact search: {measured:.3f} ({n_q} gallery vectors as queries)")
    if measured < DEFAULT_RECALL_WARNING:
        typer.echo(
            f"warning: this configuration reaches recall@{k} = {measured:.3f} < "
            f"{DEFAULT_RECALL_WARNING} against exact search; run `nestemb index tune {out} "
            "--queries ...` to pick one that meets a target (or pass larger --shortlist/--stages, "
            "--nprobe/--rerank)",
            err=True,
        )


# --------------------------------------------------------------------------- query images
MODEL_OPTIONS = {"images": "--images", "data": "--data", "split": "--split"}
"""Options that give the query images of ``--model`` (``index search`` and ``index tune``)."""
SEARCH_MODEL_OPTIONS = {**MODEL_OPTIONS, "width": "--width",
                        "widths_per_layer": "--widths-per-layer", "recall": "--recall",
                        "latency_ms": "--latency-ms"}
ADAPTER_OPTIONS = {"adapter": "--adapter", "trust_unknown": "--trust-unknown",
                   "min_quality": "--min-quality", "force": "--force"}


def _one_query_source(ctx: typer.Context, queries, model, model_options: dict[str, str],
                      query_options: dict[str, str]) -> None:
    """Exactly one of --queries (an embedding directory) and --model (an image model that
    encodes --images or --data); options of the other source are refused by name."""
    if (queries is None) == (model is None):
        raise NestembError("give exactly one of --queries (a query embedding directory) or "
                           "--model (an image model, with --images or --data)")
    foreign = given_options(ctx, model_options if model is None else query_options)
    if foreign:
        where = "--model" if model is None else "--queries"
        raise NestembError(f"{', '.join(foreign)} {'applies' if len(foreign) == 1 else 'apply'} "
                           f"only with {where}")


def _query_images(data: Optional[Path], images: Optional[Path], split):
    """The query images of --model: a uint8 .npy (--images) or an IDX split (--data, --split),
    read by the one image reader of `nestemb embed`."""
    from nestemb.cli.embed import _read_images

    given = [flag for flag, v in (("--images", images), ("--data", data)) if v is not None]
    if len(given) != 1:
        raise NestembError(f"--model encodes query images: give exactly one of --images or "
                           f"--data (got {', '.join(given) or 'none'})")
    return _read_images(data, images, split)[0]


def _image_model(path: Path, index, elastic: bool):
    """The image model of --model, checked against the index (its vectors' model, or that
    model's submodel) and, with ``elastic``, to have nested widths."""
    from nestemb.bulk import model_kind
    from nestemb.models.image import load_image_model
    from nestemb.nesting import check_compatible

    if not path.is_dir():
        raise NestembError(f"{{param}}: model directory not found: {path}", param="model")
    try:
        if model_kind(str(path)) != "image":
            raise NestembError(f"{path} is a text model: this option takes an image model")
        model = load_image_model(path)
    except NestembError as e:
        raise NestembError(str(e), param="model") from None
    if elastic and model.config.widths is None:
        raise NestembError(f"{{param}} {path} has no nested widths: an encoder width needs an "
                           "elastic model (`nestemb image train --widths ...`)", param="model")
    try:
        check_compatible(model.manifest, index.manifest, what="model and index")
    except NestembError as e:
        raise NestembError(f"{{param}} {path}: {e}: build the index from this model's "
                           "embeddings (`nestemb embed`, `nestemb index build`)",
                           param="model") from None
    return model


def _width_flag(e: NestembError, widths_per_layer) -> NestembError:
    """A library error about ``width`` named as the flag the user typed."""
    if e.param == "width" and widths_per_layer is not None:
        return NestembError(e.template, param="widths_per_layer")
    return e


def _plan_text(plan) -> str:
    from nestemb.index.plan import width_text

    text = (f"stages {','.join(map(str, plan.dims))}, shortlist "
            f"{','.join(map(str, plan.shortlist)) or 'none'}")
    if plan.width is not None:
        text = f"width {width_text(plan.width)}, {text}"
    if plan.source == "width-table":
        text += (f" (from the width table: recall {plan.expected_recall:.4f}, "
                 f"{plan.expected_ms:.3f} ms a query)")
    return text


@index_app.command("search")
def search(
    ctx: typer.Context,
    index_dir: Path = typer.Argument(..., help="index directory"),
    queries: Optional[Path] = typer.Option(
        None, help="query embedding directory (same model and version); or give --model"),
    model: Optional[Path] = typer.Option(
        None, help="image model directory that encodes the query images (--images or --data): "
        "the index's model, a submodel of it, or, for --width / --recall / --latency-ms, the "
        "elastic model itself"),
    images: Optional[Path] = typer.Option(None, help="with --model: query images, uint8 .npy (N, H, W)"),
    data: Optional[Path] = typer.Option(None, help="with --model: query images from an IDX folder"),
    split: Split = typer.Option(Split.t10k, help="IDX split of --data (default t10k, held out)"),
    width: Optional[float] = typer.Option(
        None, help="with an elastic --model: encode the queries at this trained width, e.g. 0.25 "
        "(with --recall / --latency-ms: choose among this width's plans only)"),
    widths_per_layer: Optional[str] = typer.Option(
        None, help="with an elastic --model: one trained width per layer (Mix'n'Match), e.g. "
        "0.25,0.5"),
    recall: Optional[float] = typer.Option(
        None, help="with --model: recall@k target; the plan (width, stages, shortlist) is the "
        "fastest of the index's width table (`nestemb index tune --model`) whose conservative "
        "recall meets it"),
    latency_ms: Optional[float] = typer.Option(
        None, help="with --model: latency budget per query in ms (encoding + search), from the "
        "width table; alone, the most accurate plan within it"),
    dims: Optional[str] = typer.Option(
        None, "--stages", help="search plan of a funnel index: stage prefixes, e.g. 8,64 "
        "(default: the index's own configuration)"),
    shortlist: Optional[str] = typer.Option(
        None, help="with --stages: candidates kept after each stage but the last (default "
        "max(200, 4k))"),
    k: int = typer.Option(10, "-k", "--k", help="results per query"),
    limit: Optional[int] = typer.Option(None, help="search only the first N queries"),
    out: Optional[Path] = typer.Option(None, help="write all results as JSON here"),
    overwrite: bool = typer.Option(False, help="replace an existing --out file"),
    show: int = typer.Option(5, help="print the results of the first N queries"),
    adapter: Optional[List[Path]] = typer.Option(
        None, help="adapter directory (`nestemb adapter fit`) mapping the queries' model into "
        "the index's model: search an index built by another model without re-encoding it; "
        "repeat it for a chain of adapters, in order"),
    trust_unknown: bool = typer.Option(
        False, help="with --adapter: accept queries whose model version is 'unknown' when the "
        "model id matches"),
    min_quality: Optional[float] = typer.Option(
        None, help="with --adapter: quality gate in [0, 1]; refuse an adapter whose held-out "
        "neighbour agreement (mean, from `adapter fit --holdout`) is below it, or that has none"),
    force: bool = typer.Option(
        False, help="with --adapter --min-quality: use the adapter anyway (with a warning)"),
    threads: Optional[int] = typer.Option(
        None, help="search threads (default: FAISS's); more than the machine's cores is "
        "clamped to them with a warning"),
) -> None:
    """Search an index with the queries of an embedding directory (of the index's model, or of
    another model through --adapter), or with query images encoded by --model.

    With an elastic --model, --width encodes the queries at a smaller width (its embeddings
    search the full model's index), and --recall / --latency-ms choose the width, stages and
    shortlist from the index's width table (`nestemb index tune INDEX --model ...`): the
    fastest plan whose conservative recall@k meets --recall within --latency-ms. The chosen
    plan is printed.
    """
    import numpy as np

    from nestemb.index import load_index
    from nestemb.index.plan import Plan, choose_plan, search_with_plan, width_key, width_text

    positive_int(limit, "limit", allow_none=True)
    if show < 0:
        raise NestembError(f"--show must be >= 0, got {show}")
    _one_query_source(ctx, queries, model, SEARCH_MODEL_OPTIONS, ADAPTER_OPTIONS)
    if width is not None and widths_per_layer is not None:
        raise NestembError("give --width or --widths-per-layer, not both")
    if dims is not None and (recall is not None or latency_ms is not None):
        raise NestembError("give --stages (a plan) or --recall / --latency-ms (the plan chosen "
                           "from the width table), not both")
    if shortlist is not None and dims is None:
        raise NestembError("{param} needs --stages", param="shortlist")
    if threads is not None:
        from nestemb.index import set_search_threads

        positive_int(threads, "threads", allow_none=True)
        applied = set_search_threads(threads)
        if applied != threads:
            typer.echo(f"warning: --threads {threads} is more than the {applied} cores here; "
                       f"using {applied}", err=True)
    if out is not None:
        check_out_file(out, overwrite)
    index = load_index(index_dir)
    if (dims is not None or recall is not None or latency_ms is not None) and not hasattr(
            index, "search_plan"):
        flag = "--stages" if dims is not None else "--recall / --latency-ms"
        raise NestembError(f"{flag} choose a plan of stage dims and shortlists, which a funnel "
                           f"index runs; {index_dir} holds a {type(index).__name__}")
    plan = None
    if model is not None:
        from nestemb.nesting import Manifest, lineage

        chosen = width if widths_per_layer is None else parse_floats(widths_per_layer,
                                                                     "--widths-per-layer")
        choosing = recall is not None or latency_ms is not None
        encoder = _image_model(model, index, elastic=chosen is not None or choosing)
        try:
            encoder.layer_widths(chosen)  # a width the model does not have, before any work
        except NestembError as e:
            raise _width_flag(e, widths_per_layer) from None
        if choosing:
            from nestemb.index.tune import width_table

            table = width_table(index, encoder)
            if table is None:
                raise NestembError(
                    f"{{param}}: {index_dir} has no width table to choose a plan from: measure "
                    f"one with `nestemb index tune {index_dir} --model {model} --images ...`",
                    param="recall" if recall is not None else "latency_ms")
            if k > table["k"]:
                raise NestembError(f"{{param}} {k} is above the k={table['k']} the width table "
                                   f"was measured for: measure it with `nestemb index tune "
                                   f"{index_dir} --model {model} -k {k} ...`", param="k")
            try:
                plan = choose_plan(table["rows"], recall=recall, latency_ms=latency_ms,
                                   width=chosen, k=table["k"])
            except NestembError as e:
                raise _width_flag(e, widths_per_layer) from None
            chosen = plan.width
        items = _query_images(data, images, split)
        items = items if limit is None else items[:limit]
        from nestemb.progress import counter, progress_stages

        with progress_stages() as update:
            Q = encoder.encode(items, progress=counter(update, "encoding", len(items)),
                               width=chosen)
        em = encoder.manifest
        man = Manifest(model_id=em.model_id, model_version=em.model_version, nesting=em.nesting,
                       dim=em.dim, extra=lineage(em))
        qids = list(range(len(Q)))
    else:
        Q, man, qids = _load_emb(queries, "query")
        Q = np.asarray(Q if limit is None else Q[:limit])
        if adapter:
            from nestemb.cli.compat import apply_adapter_dir

            Q, man = apply_adapter_dir(adapter, Q, man, trust_unknown, min_quality, force)
        elif trust_unknown or min_quality is not None or force:
            flag = ("--trust-unknown" if trust_unknown else
                    "--min-quality" if min_quality is not None else "--force")
            raise NestembError(f"{flag} applies only with --adapter")
        elif index.manifest_ is not None and (man.model_id, man.model_version) != (
                index.manifest_.model_id, index.manifest_.model_version):
            from nestemb.nesting import check_compatible

            try:
                check_compatible(man, index.manifest_, what="queries and index")
            except NestembError as e:
                raise NestembError(f"{e}; encode the queries with the index's model, or give "
                                   "--adapter (fit one with `nestemb adapter fit`)") from None
        qids = qids[: len(Q)] if qids is not None else list(range(len(Q)))
        chosen = None
    if dims is not None:
        plan = Plan.check(parse_ints(dims, "--stages"), parse_ints(shortlist, "--shortlist"),
                          index.manifest.nesting, k)
        plan.width = None if chosen is None else width_key(chosen)
    if plan is None:
        tuned_k = (index.tuning_ or {}).get("k")
        if isinstance(tuned_k, int) and k > tuned_k:
            typer.echo(f"warning: -k {k} is above the k={tuned_k} this index was tuned for "
                       f"(recall@{tuned_k} {index.tuning_.get('recall', float('nan')):.3f}); "
                       f"run `nestemb index tune {index_dir} -k {k} ...` for this k", err=True)
        scores, ids = index.search(Q, k=k, manifest=man)
        if chosen is not None:
            typer.echo(f"queries encoded at width {width_text(chosen)}; plan: the index's own")
    else:
        scores, ids, _ = search_with_plan(index, Q, k, plan, manifest=man)
        typer.echo(f"plan: {_plan_text(plan)}")
    for i in range(min(show, len(Q))):
        hits = ", ".join(f"{h} ({s:.3f})" for h, s in zip(ids[i].tolist(), scores[i].tolist()))
        typer.echo(f"{qids[i]}: {hits}")
    if out is not None:
        write_result(out, search_result(qids, ids, scores), f"results for {len(qids)} queries")


DEFAULT_TUNE_SECONDS = 600.0
"""``index tune`` stops measuring new configurations after this many seconds by default."""

TUNE_MODEL_OPTIONS = {**MODEL_OPTIONS, "budgets": "--budgets"}
TUNE_QUERY_OPTIONS = {"recall": "--recall"}


@index_app.command("tune")
def tune_cmd(
    ctx: typer.Context,
    index_dir: Path = typer.Argument(..., help="index directory"),
    queries: Optional[Path] = typer.Option(
        None, help="sample query embedding directory (same model and version): tune the "
        "index's configuration; or give --model"),
    model: Optional[Path] = typer.Option(
        None, help="the elastic image model whose embeddings the index holds: measure the "
        "width table (recall@k and latency of every encoder width x stages x shortlist on the "
        "query images --images / --data) that `index search --recall / --latency-ms` choose from"),
    images: Optional[Path] = typer.Option(None, help="with --model: query images, uint8 .npy (N, H, W), held out from the gallery"),
    data: Optional[Path] = typer.Option(None, help="with --model: query images from an IDX folder"),
    split: Split = typer.Option(Split.t10k, help="IDX split of --data (default t10k, held out)"),
    budgets: Optional[str] = typer.Option(
        None, help="with --model: also measure the Mix'n'Match widths per layer picked for these "
        "fractions of the full model's multiply-adds, e.g. 0.3,0.6"),
    recall: float = typer.Option(0.99, help="recall@k target (agreement with exact search)"),
    k: int = typer.Option(10, "-k", "--k", help="k of recall@k"),
    max_queries: int = typer.Option(
        1000, help="queries used at most: every configuration is timed and measured on the "
        "first --screen-queries; one whose recall there is too close to the target to tell is "
        "measured on up to this many (with --model: the query images measured, all of them)"),
    screen_queries: int = typer.Option(200, help="queries every configuration is measured on"),
    max_candidates: int = typer.Option(8192, help="largest shortlist / re-rank depth tried"),
    max_seconds: float = typer.Option(
        DEFAULT_TUNE_SECONDS, help="time budget in seconds (default 600): no new configuration "
        "is measured once it is spent, and the best one measured so far is kept"),
    out: Optional[Path] = typer.Option(None, help="write the tuned index here (default: update INDEX_DIR in place)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out index"),
) -> None:
    """Pick the fastest configuration meeting the recall target and save it with the index;
    with --model, measure the index's width table instead.

    Progress shows the configurations measured out of those the grid can still reach, and an
    estimate of the time left; --max-seconds bounds the whole walk.
    """
    import numpy as np

    from nestemb.index import load_index, tune

    _one_query_source(ctx, queries, model, TUNE_MODEL_OPTIONS, TUNE_QUERY_OPTIONS)
    positive_int(max_queries, "max_queries", allow_none=True)
    positive_int(screen_queries, "screen_queries", allow_none=True)
    positive_int(max_candidates, "max_candidates", allow_none=True)
    if out is not None:
        check_out_dir(out, overwrite, "index")
    else:
        check_out_dir(index_dir, overwrite=True, kind="index")  # rewritten in place: writable before the work
    index = load_index(index_dir)
    if model is not None:
        _tune_widths(index, index_dir, model, images, data, split, budgets, k, max_queries,
                     max_candidates, max_seconds, out, overwrite)
        return
    Q, man, _ = _load_emb(queries, "query")
    before = index.get_params()
    from nestemb.progress import progress_bar

    with progress_bar(info=True) as bar:
        task = bar.add_task("configurations measured", total=None, info="")

        def report(done: int, total: int, eta_s: float) -> None:
            bar.update(task, completed=done, total=total,
                       info=f"about {eta_s:.0f} s left (budget {max_seconds:g} s)")

        res = tune(index, np.asarray(Q[:max_queries]), k=k, recall=recall, manifest=man,
                   max_queries=max_queries, screen_queries=screen_queries,
                   max_candidates=max_candidates, max_seconds=max_seconds, progress=report)
    after = index.get_params()
    # in place: the directory is an index by construction, so replacing it is the request
    index.save(index_dir if out is None else out, overwrite=out is None or overwrite)
    outcome = "target met" if res["met"] else "target NOT met"
    n = len(res["candidates"])
    typer.echo(
        f"{outcome}: recall@{k} {res['recall']:.4f} (target {recall}) with {res['params']}, "
        f"latency {res['latency_ms']:.3f} ms ({n} of the grid's {res['grid_size']} "
        f"configurations measured in {res['seconds']:.1f} s on {res['screen_queries']} queries, "
        f"{res['n_settled']} of them too close to the target to call measured again on {res['n_queries']})"
    )
    if not res["complete"]:
        kept = ("the fastest one meeting the target is kept" if res["met"] else
                f"none met the target; the best recall@{k} measured, {res['recall']:.4f}, is kept")
        typer.echo(f"time budget of {max_seconds:g} s spent after {n} of {res['grid_size']} "
                   f"configurations: {kept} (raise --max-seconds to measure more)")
    changed = [f"{n} {before[n]} -> {after[n]}" for n in after if before[n] != after[n]]
    typer.echo(f"changed: {'; '.join(changed)}" if changed else "configuration unchanged")
    typer.echo(f"tuned for k={k}: searches with a larger k may not meet the target")


def _tune_widths(index, index_dir: Path, model: Path, images, data, split, budgets, k: int,
                 max_queries: int, max_candidates: int, max_seconds: float, out, overwrite) -> None:
    """``index tune --model``: measure the width table, save it with the index, print its
    Pareto front (the rows no faster row matches in conservative recall)."""
    from nestemb.index.plan import width_text
    from nestemb.index.tune import tune_widths
    from nestemb.plotting import pareto_front
    from nestemb.progress import progress_bar

    if not hasattr(index, "search_plan"):
        raise NestembError(f"--model measures plans of stage dims and shortlists, which a funnel "
                           f"index runs; {index_dir} holds a {type(index).__name__}")
    fractions = parse_floats(budgets, "--budgets") or ()
    encoder = _image_model(model, index, elastic=True)
    items = _query_images(data, images, split)
    with progress_bar(info=True) as bar:
        task = bar.add_task("widths and plans timed", total=None, info="")

        def report(done: int, total: int, eta_s: float) -> None:
            bar.update(task, completed=done, total=total,
                       info=f"about {eta_s:.0f} s left (budget {max_seconds:g} s)")

        try:
            table = tune_widths(index, encoder, items, k=k, budgets=fractions,
                                max_queries=max_queries, max_candidates=max_candidates,
                                max_seconds=max_seconds, progress=report)
        except NestembError as e:
            if e.param == "budget":
                raise NestembError(e.template, param="budgets") from None
            raise
    index.save(index_dir if out is None else out, overwrite=out is None or overwrite)
    rows = table["rows"]
    typer.echo(f"width table of {len(rows)} plans: recall@{k} against what the full model finds "
               f"({table['n_queries']} query images), latency = encoding + search, one query "
               f"at a time ({table['seconds']:.1f} s)")
    if not table["complete"]:
        typer.echo(f"time budget of {max_seconds:g} s spent: plans not timed were left out "
                   "(raise --max-seconds to measure them)")
    front = pareto_front([(r["recall_low"], -r["latency_ms"]) for r in rows])
    typer.echo(f"{'width':>16} {'stages':>8} {'shortlist':>9} {'recall':>7} {'conserv.':>8} "
               f"{'ms':>8} {'encode':>8} {'cost':>6}")
    for i in sorted(front, key=lambda i: rows[i]["latency_ms"]):
        r = rows[i]
        typer.echo(f"{width_text(r['width']):>16} {','.join(map(str, r['dims'])):>8} "
                   f"{','.join(map(str, r['shortlist'])) or '-':>9} {r['recall']:7.4f} "
                   f"{r['recall_low']:8.4f} {r['latency_ms']:8.3f} {r['encode_ms']:8.3f} "
                   f"{r['cost']:6.3f}")
    typer.echo(f"saved with the index ({index_dir if out is None else out}): `nestemb index "
               f"search ... --model {model} --recall R --latency-ms MS` chooses from it")
