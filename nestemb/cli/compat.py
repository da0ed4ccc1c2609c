"""CLI commands for model upgrades: ``nestemb compat`` and ``nestemb adapter fit|apply``.

``compat`` is a top-level command, as ``compare`` is: the ``compat`` group held one verb
(``matrix``), and a group of one verb is a word to type for nothing. ``nestemb compat matrix``
still works for one release, with a note on stderr.

Inputs are embedding directories as written by ``nestemb embed`` (or
:func:`nestemb.folders.save_embeddings`): ``embeddings.npy``, ``manifest.json`` and, where
the items have ids, ``ids.json``. Embeddings of several models are compared only when they hold
the same items: the same ids in the same order (or, without ids, the same number of rows).

Relevance for ``compat``:

* ``--metric top1|map`` (class labels): ``--query-labels FILE`` and ``--gallery-labels FILE``,
  one label per row in the row order of the embeddings (``.npy`` 1-D array, or ``.txt`` one
  label per line; labels are compared as text, so ``3`` in either file is the same class); or
  ``--data DIR`` (an IDX folder such as fashion-mnist) with ``--query-split`` and
  ``--gallery-split``, whose labels are looked up by the embeddings' ids (``nestemb embed
  --data`` writes the IDX row numbers as ids, and the split in the manifest): a file embedded
  from another split than the flag names is refused, and so is a file that does not record its
  split unless it holds exactly the split's rows.
* ``--metric ndcg``: ``--beir DIR --split test``: the qrels ``DIR/qrels/<split>.tsv`` matched
  against the ids of the query and gallery embeddings (``nestemb embed --texts queries.jsonl``
  and ``corpus.jsonl`` keep the BEIR ``_id``); queries without judgments are skipped, a judged
  document missing from the gallery is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from nestemb.cli.app import app, check_out_dir, choices, renamed, threads_option
from nestemb.checks import positive_int
from nestemb.cli.parse import parse_dims
from nestemb.compat.matrix import METRICS
from nestemb.errors import NestembError
from nestemb.io import article
from nestemb.maps.adapter import KINDS

adapter_app = typer.Typer(help="Post-hoc adapters between two models' spaces.", no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")

Metric = choices("Metric", *METRICS)
AdapterKind = choices("AdapterKind", *KINDS)
IdxSplit = choices("IdxSplit", "train", "t10k")

# --------------------------------------------------------------------------- shared readers


def apply_adapter_dir(adapters: List[Path], vectors, manifest, trust_unknown: bool,
                      min_quality: Optional[float] = None, force: bool = False):
    """Load the adapters in ``adapters`` (one, or a chain v1 -> v2 -> v3 in order) and map
    ``vectors`` (with their ``manifest``) through them, each behind the quality gate
    (``--min-quality``, ``--force``); shared by ``adapter apply`` and ``index search
    --adapter``. A forced pass below the threshold is said on stderr. Returns ``(vectors,
    manifest)``."""
    import numpy as np

    from nestemb.maps import chain_embeddings, load_adapter

    if force and min_quality is None:
        raise NestembError("--force applies only with --min-quality")
    loaded = [load_adapter(a) for a in adapters]
    out, man = chain_embeddings(np.asarray(vectors), manifest, loaded,
                                trust_unknown=trust_unknown, min_quality=min_quality,
                                force=force)
    for path, hop in zip(adapters, man.extra["adapted"]["chain"]):
        gate = hop.get("gate")
        if gate is not None and not gate["passed"]:
            figure = ("no held-out estimate" if gate["mean"] is None else
                      f"held-out neighbour agreement {gate['mean']:.3f} (95% interval "
                      f"{gate['low']:.3f}-{gate['high']:.3f})")
            typer.echo(f"warning: --force: using adapter {path} with {figure} below "
                       f"--min-quality {gate['min_quality']:g}", err=True)
    return out, man


def _load(path: Path, what: str, mmap: bool = True):
    """``(vectors, manifest, ids)`` of an embedding directory; a missing one names ``what``."""
    from nestemb.folders import load_embeddings

    if not path.is_dir():
        raise NestembError(f"{what} embedding directory not found: {path}")
    return load_embeddings(path, mmap=mmap, with_ids=True)


def _same_items(paths: List[Path], loaded: list, what: str) -> None:
    """Refuse embedding files that do not hold the same items (ids, or row counts without ids),
    naming the two files that differ."""
    first, (x0, _, ids0) = paths[0], loaded[0]
    for path, (x, _, ids) in zip(paths[1:], loaded[1:]):
        if len(x) != len(x0):
            raise NestembError(
                f"{what} files do not hold the same items: {path} has {len(x)} rows, {first} "
                f"{len(x0)}"
            )
        if ids is not None and ids0 is not None and list(ids) != list(ids0):
            row = next(i for i, (a, b) in enumerate(zip(ids, ids0)) if a != b)
            raise NestembError(
                f"{what} files do not hold the same items: the ids of {path} and {first} differ "
                f"(row {row}: {ids[row]!r} vs {ids0[row]!r})"
            )
        if (ids is None) != (ids0 is None):
            with_ids = path if ids is not None else first
            without = first if ids is not None else path
            raise NestembError(
                f"{what} files cannot be matched: {with_ids} has ids, {without} has none "
                "(re-embed both with ids, or neither)"
            )


def _read_labels(path: Path, n: int, flag: str):
    """One label per row from a ``.npy`` (1-D) or ``.txt`` (one per line) file."""
    import numpy as np

    if not path.is_file():
        raise NestembError(f"{flag} file not found: {path}")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NestembError(f"cannot read {flag} {path}: {str(e).splitlines()[0]}") from None
        if labels.ndim != 1:
            raise NestembError(f"{flag} {path} must hold a 1-D array, got shape {labels.shape}")
    elif path.suffix == ".txt":
        from nestemb.data.textfile import read_text

        labels = np.array([line.strip() for line in read_text(path, flag).splitlines()
                           if line.strip()])
    else:
        raise NestembError(f"{flag} must be a .npy or .txt file, got {path}")
    if len(labels) != n:
        raise NestembError(f"{flag} {path} holds {len(labels)} labels for {n} embeddings")
    # compared as text, so that a .npy of ints and a .txt of the same classes agree
    return labels.astype(str)


def _check_split(paths: List[Path], manifests: list, split: str, flag: str, what: str) -> None:
    """Refuse embeddings whose manifest records another IDX split than the one their labels are
    taken from (``nestemb embed --data`` records ``extra["split"]``), naming the file and both
    splits: the ids are row numbers, valid in either split, so nothing else would notice."""
    for path, man in zip(paths, manifests):
        recorded = man.extra.get("split")
        if recorded is not None and recorded != split:
            raise NestembError(
                f"{what} {path} were embedded from the {recorded!r} split, but {flag} is "
                f"{split!r}: their labels would be looked up in the wrong split (use {flag} "
                f"{recorded})"
            )


def _idx_labels(data: Path, split: str, paths: List[Path], loaded: list, what: str, flag: str):
    """IDX labels of ``split`` for the rows of the embedding files ``paths`` (the same items,
    ``loaded`` by :func:`_load`), looked up by their ids. Every file must come from ``split``
    (its recorded split); a file without one must hold as many rows as the split has labels."""
    import numpy as np

    from nestemb.data.idx import LABELS_MAGIC, _find, read_idx

    if not data.is_dir():
        raise NestembError(f"--data must be an IDX folder, not found: {data}")
    manifests = [m for _, m, _ in loaded]
    _check_split(paths, manifests, split, flag, what)
    labels = read_idx(_find(data, split, "labels-idx1-ubyte"), LABELS_MAGIC).astype(np.int64)
    x, _, ids = loaded[0]
    n = len(x)
    if ids is None and n != len(labels):
        raise NestembError(
            f"{what} {paths[0]} has no ids and {n} rows, the {split!r} split of {data} "
            f"({flag}) {len(labels)} labels: cannot match them"
        )
    unrecorded = [p for p, m in zip(paths, manifests) if m.extra.get("split") is None]
    if unrecorded and n != len(labels):
        raise NestembError(
            f"{what} {unrecorded[0]} has {n} rows, the {split!r} split of {data} ({flag}) "
            f"{len(labels)} labels, and its manifest does not record which split it was "
            "embedded from: cannot tell that its ids are rows of this split (embed the whole "
            "split with `nestemb embed --data`)"
        )
    if ids is None:
        return labels
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(labels)
               for i in ids):
        raise NestembError(
            f"the ids of the {what} embeddings are not row numbers of the {split} split of "
            f"{data} ({len(labels)} rows): embed them with `nestemb embed --data`"
        )
    return labels[np.asarray(ids, dtype=np.int64)]


def _beir_qrels(beir: Path, split: str, qids: Optional[list], gids: Optional[list]) -> list:
    """Per query row, ``{gallery_row: relevance}`` from BEIR qrels matched by ids."""
    from nestemb.data.beir import read_qrels

    if not beir.is_dir():
        raise NestembError(f"--beir folder not found: {beir}")
    if qids is None or gids is None:
        raise NestembError("--metric ndcg needs ids in the query and gallery embedding files "
                           "(embed BEIR queries.jsonl and corpus.jsonl with nestemb embed)")
    path = beir / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in (beir / "qrels").glob("*.tsv"))
        raise NestembError(f"BEIR qrels file not found: {path} (splits present: {have})")
    qrels = read_qrels(path)
    grow = {str(g): i for i, g in enumerate(gids)}
    out: list = []
    for q in qids:
        judged = qrels.get(str(q))
        if not judged:
            out.append(None)
            continue
        missing = [d for d in judged if d not in grow]
        if missing:
            raise NestembError(
                f"{path} judges corpus id {missing[0]!r} for query {q!r}, which is not in the "
                "gallery embeddings: embed the whole corpus"
            )
        out.append({grow[d]: r for d, r in judged.items()})
    if not any(out):
        raise NestembError(f"no query of the query embeddings is judged in {path}")
    return out


def _names(manifests: list) -> list[str]:
    """Model names for the table: model ids, with a version where ids repeat."""
    ids = [m.model_id for m in manifests]
    names = [i if ids.count(i) == 1 else f"{i}@{m.model_version[:8]}" for i, m in zip(ids, manifests)]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


# --------------------------------------------------------------------------- compat


@app.command("compat", cls=renamed(verb="matrix"))
def matrix_cmd(
    queries: List[Path] = typer.Option(..., "--queries", metavar="<path>", help="query embedding directory of one model; repeat per model, oldest first"),
    gallery: List[Path] = typer.Option(..., "--gallery", metavar="<path>", help="gallery embedding directory of one model; repeat per model, in the --queries order"),
    out: Path = typer.Option(..., help="output folder: matrix.json, heatmap.png and heatmap-<dim>.png"),
    metric: Metric = typer.Option(Metric.top1, help="top1 (1-NN), map (mAP@k) or ndcg (nDCG@10)"),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="cut-off of map (default 100) or ndcg (default 10)"),
    dims: Optional[str] = typer.Option(None, help="prefixes, e.g. 8,16,32 (default: every prefix of every model's nesting)"),
    models: Optional[str] = typer.Option(None, "--names", help="model names, comma-separated (default: model ids)"),
    query_labels: Optional[Path] = typer.Option(None, help="top1/map: query labels, .npy or .txt (one per row)"),
    gallery_labels: Optional[Path] = typer.Option(None, help="top1/map: gallery labels, .npy or .txt (one per row)"),
    data: Optional[Path] = typer.Option(None, help="top1/map: IDX folder whose labels match the embeddings' ids"),
    query_split: IdxSplit = typer.Option(IdxSplit.t10k, help="--data split of the queries"),
    gallery_split: IdxSplit = typer.Option(IdxSplit.train, help="--data split of the gallery"),
    beir: Optional[Path] = typer.Option(None, help="ndcg: BEIR folder whose qrels match the embeddings' ids"),
    split: str = typer.Option("test", help="ndcg: qrels split of --beir"),
    overwrite: bool = typer.Option(False, help="replace an existing --out folder"),
) -> None:
    """Compatibility matrix C[i][j] = metric(queries by model i, gallery by model j) at every
    prefix: a table per prefix (x marks a pair i > j failing C[i][j] > C[j][j] and
    C[i][i] >= C[i][j]), AC and AM, written as JSON and heat maps."""
    import numpy as np

    from nestemb.compat import compatibility_matrix, plot_compatibility
    from nestemb.io import atomic_dir, write_json
    from nestemb.nesting import check_compatible

    if len(queries) != len(gallery):
        raise NestembError(
            f"give one --gallery per --queries (one pair per model): got {len(queries)} and "
            f"{len(gallery)}"
        )
    if k is not None and k < 1:
        raise NestembError(f"--k must be positive, got {k}")
    labelled = metric is not Metric.ndcg
    label_flags = [f for f, v in (("--query-labels", query_labels), ("--gallery-labels", gallery_labels),
                                  ("--data", data)) if v is not None]
    if labelled:
        if beir is not None:
            raise NestembError(f"--beir applies to --metric ndcg, not {metric.value}")
        if data is not None and (query_labels or gallery_labels):
            raise NestembError("give --data or --query-labels/--gallery-labels, not both")
        if data is None and not (query_labels and gallery_labels):
            raise NestembError(f"--metric {metric.value} needs labels: --query-labels and "
                               "--gallery-labels, or --data")
    else:
        if label_flags:
            raise NestembError(f"{', '.join(label_flags)} apply to --metric top1/map; ndcg "
                               "takes --beir")
        if beir is None:
            raise NestembError("--metric ndcg needs --beir (a BEIR folder with qrels)")
    dim_list = parse_dims(dims, "--dims")
    check_out_dir(out, overwrite, "compat-matrix")

    q_loaded = [_load(p, "--queries") for p in queries]
    g_loaded = [_load(p, "--gallery") for p in gallery]
    _same_items(list(queries), q_loaded, "--queries")
    _same_items(list(gallery), g_loaded, "--gallery")
    for qp, gp, (_, qm, _), (_, gm, _) in zip(queries, gallery, q_loaded, g_loaded):
        try:
            check_compatible(qm, gm, what=f"--queries {qp} and --gallery {gp}")
        except NestembError as e:
            raise NestembError(f"{e}: each --queries/--gallery pair must come from one model") from None
    manifests = [m for _, m, _ in q_loaded]
    model_names = (_names(manifests) if models is None
                   else [n.strip() for n in models.split(",") if n.strip()])
    if len(model_names) != len(queries):
        raise NestembError(f"--names gives {len(model_names)} names for {len(queries)} models")
    if dim_list is None:
        dim_list = tuple(sorted({d for m in manifests for d in m.nesting}))
    qids, gids = q_loaded[0][2], g_loaded[0][2]
    n_q, n_g = len(q_loaded[0][0]), len(g_loaded[0][0])
    kw: dict[str, Any] = {}
    if labelled and data is not None:
        kw["query_labels"] = _idx_labels(data, query_split.value, list(queries), q_loaded,
                                         "--queries", "--query-split")
        kw["gallery_labels"] = _idx_labels(data, gallery_split.value, list(gallery), g_loaded,
                                           "--gallery", "--gallery-split")
    elif labelled:
        kw["query_labels"] = _read_labels(query_labels, n_q, "--query-labels")
        kw["gallery_labels"] = _read_labels(gallery_labels, n_g, "--gallery-labels")
    else:
        kw["qrels"] = _beir_qrels(beir, split, qids, gids)
    cm = compatibility_matrix(
        [np.asarray(x) for x, _, _ in q_loaded], [np.asarray(x) for x, _, _ in g_loaded],
        models=model_names, dims=dim_list, metric=metric.value, k=k, **kw,
    )

    summary = cm.summary()
    for d in cm.dims:
        c = cm.at(d)
        crit = summary[d]["criterion"]
        ac_text = f"AC {summary[d]['ac']:.2f}, " if summary[d]["ac"] is not None else ""
        typer.echo(f"\n{cm.metric} at {d} dims (rows: queries by, columns: gallery by); "
                   f"{ac_text}AM {summary[d]['am']:.4f}")
        width = max(8, *(len(n) for n in cm.models))
        typer.echo(" " * width + "".join(f"{n:>{width + 2}}" for n in cm.models))
        for i, n in enumerate(cm.models):
            cells = []
            for j in range(len(cm.models)):
                v = "-" if np.isnan(c[i, j]) else f"{c[i, j]:.4f}"
                mark = ("" if crit[i][j] else " x") if i > j else ""
                cells.append(f"{v + mark:>{width + 2}}")
            typer.echo(f"{n:<{width}}" + "".join(cells))
    if np.isnan(cm.values).any():
        typer.echo("\n- : no value, the model is narrower than the prefix")
    with atomic_dir(out, kind="compat-matrix", overwrite=overwrite) as tmp:
        res = cm.to_dict()
        res["inputs"] = {"queries": [str(p) for p in queries], "gallery": [str(p) for p in gallery],
                         "model_versions": [m.model_version for m in manifests]}
        write_json(tmp / "matrix.json", res)
        plot_compatibility(cm, tmp / "heatmap.png", title=f"compatibility ({cm.metric})")
        for d in cm.dims:
            plot_compatibility(cm, tmp / f"heatmap-{d}.png", dims=(d,))
    typer.echo(f"\nwrote matrix.json and heat maps to {out}")


# --------------------------------------------------------------------------- adapter


@adapter_app.command("fit")
def adapter_fit(
    source: Path = typer.Option(..., help="embedding directory of the source model (the vectors to be mapped)"),
    target: Path = typer.Option(..., help="embedding directory of the target model, same items (ids must match)"),
    out: Path = typer.Option(..., help="adapter directory to write"),
    kind: AdapterKind = typer.Option(AdapterKind.orthogonal, help="orthogonal (Procrustes), affine (ridge least squares), mlp (affine + residual MLP), lowrank (low-rank + residual MLP, the Drift-Adapter shape) or cluster (one Procrustes per k-means cluster)"),
    sample: Optional[int] = typer.Option(None, help="fit on a random sample of N paired rows (default: all)"),
    ridge: Optional[float] = typer.Option(None, help="affine/mlp: ridge penalty (default 1e-4)"),
    slerp: Optional[float] = typer.Option(None, help="orthogonal, equal widths: 0 = rotated vector, 1 = raw vector"),
    hidden: Optional[int] = typer.Option(None, help="mlp/lowrank: hidden width (default 512)"),
    epochs: Optional[int] = typer.Option(None, help="mlp/lowrank/--matryoshka: epochs (default 30)"),
    lr: Optional[float] = typer.Option(None, help="mlp/lowrank/--matryoshka: learning rate (default 1e-3)"),
    batch_size: Optional[int] = typer.Option(None, help="mlp/lowrank/--matryoshka: batch size (default 256)"),
    threads: Optional[int] = threads_option("mlp/lowrank/--matryoshka: torch CPU threads (default: torch's)"),
    rank: Optional[int] = typer.Option(None, help="lowrank: rank of the linear part (default 64, at most the narrower width)"),
    clusters: Optional[int] = typer.Option(None, help="cluster: k-means clusters (default min(8, pairs / (2 x the narrower width)))"),
    matryoshka: bool = typer.Option(False, help="affine: fine-tune on the cosine of every prefix of the target's nesting (from the ridge solution)"),
    unpaired: bool = typer.Option(False, help="pair-free: --source and --target embed DIFFERENT items (e.g. the old gallery and new-model vectors of other texts); an orthogonal map from matched k-means clusters refined on mutual nearest neighbours (--clusters: one k instead of a ladder)"),
    seed: int = typer.Option(0, help="seed of --sample and of the mlp"),
    trust_unknown: bool = typer.Option(False, help="accept models whose weights version is 'unknown' (matched by model id alone)"),
    underdetermined: bool = typer.Option(False, help="orthogonal/affine: fit from fewer paired rows than dims (e.g. anchors of a translation; the directions they do not span are mapped arbitrarily)"),
    holdout: Optional[float] = typer.Option(None, help="first estimate the quality kept on this share of the pairs held out (e.g. 0.2): neighbour agreement@10 with a 95% interval, recorded for --min-quality of apply and index search; the adapter is then fitted on all pairs"),
    labels: Optional[Path] = typer.Option(None, help="with --holdout: one label per pair (.npy or .txt), to estimate the 1-NN label accuracy retained too"),
    overwrite: bool = typer.Option(False, help="replace an existing adapter directory"),
) -> None:
    """Fit an adapter mapping --source vectors into the --target model's space, from paired
    embeddings of the same items. Both directions: new -> old maps new queries onto a stored
    old gallery; old -> new moves stored old vectors into the new space."""
    import numpy as np

    from nestemb.maps import fit_adapter
    from nestemb.maps.gate import format_estimate

    positive_int(sample, "sample", allow_none=True)
    check_out_dir(out, overwrite, "adapter")
    s_loaded = _load(source, "--source")
    t_loaded = _load(target, "--target")
    X, s_man, _ = s_loaded
    Y, t_man, _ = t_loaded
    if unpaired:
        _fit_unpaired(X, Y, s_man, t_man, out, kind=kind, clusters=clusters, seed=seed,
                      trust_unknown=trust_unknown, overwrite=overwrite,
                      others={"--sample": sample, "--holdout": holdout, "--labels": labels,
                              "--rank": rank, "--ridge": ridge, "--hidden": hidden})
        return
    _same_items([source, target], [s_loaded, t_loaded], "--source and --target")
    rows = np.arange(len(X))
    if sample is not None:
        if sample > len(X):
            raise NestembError(f"--sample {sample} is larger than the {len(X)} paired rows")
        rows = np.sort(np.random.default_rng(seed).choice(len(X), sample, replace=False))
    pair_labels = None if labels is None else _read_labels(labels, len(X), "--labels")[rows]
    adapter = fit_adapter(
        np.asarray(X[rows]), np.asarray(Y[rows]), kind.value, source_ref=s_man,
        target_ref=t_man, ridge=ridge, slerp=slerp, hidden=hidden, epochs=epochs, lr=lr,
        batch_size=batch_size, threads=threads, seed=seed, trust_unknown=trust_unknown,
        underdetermined=underdetermined, rank=rank, clusters=clusters, matryoshka=matryoshka,
        progress=kind in (AdapterKind.mlp, AdapterKind.lowrank) or matryoshka,
        holdout=holdout, labels=pair_labels,
    )
    adapter.save(out, overwrite=overwrite)
    cos = adapter.fit_info_["fit_cosine"]
    typer.echo(
        f"fitted {article(kind.value)} adapter {s_man.model_id} ({X.shape[1]} dims) -> "
        f"{t_man.model_id} ({Y.shape[1]} dims) on {len(rows)} pairs in "
        f"{adapter.fit_info_['seconds']:.1f} s; mean cosine on the fit pairs: "
        + ", ".join(f"{d}: {v:.4f}" for d, v in cos.items())
    )
    quality = adapter.fit_info_.get("quality")
    if quality is not None:
        typer.echo(f"held-out estimate (fitted on {quality['n_fit']} pairs, measured on "
                   f"{quality['n_holdout']}): {format_estimate(quality)}")
        if "labels" in quality:
            typer.echo(f"held-out estimate: {format_estimate(quality, 'labels')}")
    typer.echo(f"wrote {out}")


def _fit_unpaired(X, Y, s_man, t_man, out: Path, *, kind, clusters, seed, trust_unknown,
                  overwrite, others: dict) -> None:
    """``adapter fit --unpaired``: the pair-free orthogonal map (no pairs, so no --holdout)."""
    import numpy as np

    from nestemb.maps import fit_unpaired

    if kind is not AdapterKind.orthogonal:
        raise NestembError(f"--unpaired fits an orthogonal map, not --kind {kind.value}")
    for flag, value in others.items():
        if value is not None:
            raise NestembError(f"{flag} needs pairs: it does not apply with --unpaired")
    adapter = fit_unpaired(np.asarray(X), np.asarray(Y), clusters=clusters, seed=seed,
                           source_ref=s_man, target_ref=t_man, trust_unknown=trust_unknown,
                           progress=True)
    adapter.save(out, overwrite=overwrite)
    info = adapter.fit_info_
    typer.echo(
        f"fitted a pair-free orthogonal adapter {s_man.model_id} ({X.shape[1]} dims, "
        f"{len(X)} rows) -> {t_man.model_id} ({Y.shape[1]} dims, {len(Y)} rows) in "
        f"{info['seconds']:.1f} s; mean cosine of the final mutual nearest neighbours: "
        + ", ".join(f"{d}: {v:.4f}" for d, v in info["mnn_cosine"].items()))
    typer.echo(f"wrote {out}")


@adapter_app.command("apply")
def adapter_apply(
    adapter: List[Path] = typer.Option(..., help="adapter directory (nestemb adapter fit); repeat it for a chain v1 -> v2 -> v3, in order"),
    embeddings: Path = typer.Option(..., help="embedding directory of the (first) adapter's source model"),
    out: Path = typer.Option(..., help="embedding directory to write (in the target model's space)"),
    trust_unknown: bool = typer.Option(False, help="accept embeddings whose weights version is 'unknown' (matched by model id alone)"),
    min_quality: Optional[float] = typer.Option(None, help="quality gate in [0, 1]: refuse an adapter whose held-out neighbour agreement (mean, from `adapter fit --holdout`) is below it, or that has no estimate"),
    force: bool = typer.Option(False, help="with --min-quality: use the adapter anyway (with a warning)"),
    overwrite: bool = typer.Option(False, help="replace an existing output directory"),
) -> None:
    """Map an embedding directory through an adapter; the output's manifest names the target
    model, so that its indexes accept it. Vectors of the target model (wrong direction) or of
    any other model are refused, and so is an adapter below --min-quality unless --force."""
    from nestemb.folders import save_embeddings

    check_out_dir(out, overwrite, "embeddings")
    X, man, ids = _load(embeddings, "--embeddings")
    Y, out_man = apply_adapter_dir(adapter, X, man, trust_unknown, min_quality, force)
    out_man.extra["adapted"]["adapter_path"] = [str(a) for a in adapter] if len(adapter) > 1 \
        else str(adapter[0])
    save_embeddings(out, Y, out_man, ids=ids, overwrite=overwrite)
    typer.echo(f"wrote {len(Y)} embeddings of {man.model_id} mapped into {out_man.model_id} "
               f"({out_man.dim} dims, version {out_man.model_version}) to {out}")
