"""Model upgrades without re-indexing: the Fashion-MNIST upgrade chain (``image``) and the
SciFact text upgrade (``text``, in ``benchmarks/upgrade_text.py``).

The chain (every step sees more classes and more data; ``STEPS``): M0 on classes 0-3 (a third
of their training images, 32-d), M1 on 0-6 (two thirds, 64-d), M2 on all 10 (all images,
96-d), M3 on all 10 with a wider encoder (conv width 16, 128-d); every model at the trainer's
default schedule (15 epochs, at least 1,500 steps; 10 before 2026-12-06). The
gallery is the training set encoded once by M0; the queries are the test set, all classes (a
stratified sample of ``--queries`` images; 0 = all 10,000). 5,000 training images are kept out of
every model's training as a validation split (queries against the rest of the training set) for
the one choice made here, the adapter kind.

Methods: ``independent`` (plain Matryoshka models), ``bct`` (old classifier on the new
features), ``simplex`` (a fixed d-simplex head shared by the chain), ``prefix`` (ours: BCT
influence + cosine distillation + new vectors contrasted against the old vectors of their class,
on every old prefix, + an orthogonal layer; the extra dims are free), and post-hoc adapters between the independent models (``adapter-query``: new queries
mapped into the old space; ``adapter-stored``: the stored old vectors mapped into the new space),
fitted on 5 % of the gallery. BCT and prefix models are trained against the previous model of
their own chain (M1 against the independent M0).

Writes ``OUT/results.json``, ``OUT/tables.md``, heat maps ``OUT/heat_<method>_<metric>.png`` and
``OUT/backfill.png``; trained models and embeddings are cached under ``--cache`` so a rerun
skips training. Heavy: run it through ``flock /tmp/nestemb-heavy.lock``.

    python benchmarks/upgrade.py image --out docs/results/upgrade/image
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Step:
    """One model of the chain."""

    name: str
    classes: int  # labels 0..classes-1
    fraction: float  # share of those classes' training images
    dim: int
    nesting: tuple[int, ...]
    width: int
    steps: int | None = None  # None: the trainer's default schedule (>= 1,500 steps)


STEPS = (
    Step("M0", 4, 1 / 3, 32, (8, 16, 32), 8),
    Step("M1", 7, 2 / 3, 64, (8, 16, 32, 64), 8),
    Step("M2", 10, 1.0, 96, (8, 16, 32, 64, 96), 8),
    Step("M3", 10, 1.0, 128, (8, 16, 32, 64, 96, 128), 16),
)
DIMS = (8, 16, 32, 64, 96, 128)
TRAINED = ("independent", "bct", "simplex", "prefix")
N_VALID = 5000
ADAPTER_SHARE = 0.05
ADAPTER_KINDS = ("orthogonal", "affine", "mlp", "lowrank", "cluster")
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def step_indices(labels: np.ndarray, step: Step, exclude: np.ndarray, seed: int) -> np.ndarray:
    """Training rows of ``step``: its classes, a seeded ``fraction`` of them, never ``exclude``.

    >>> y = np.arange(20) % 4
    >>> len(step_indices(y, Step("x", 2, 0.5, 8, (8,), 4, 1), np.array([0]), 0))
    5
    """
    rows = np.setdiff1d(np.nonzero(labels < step.classes)[0], exclude)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(rows)[: int(round(step.fraction * len(rows)))])


def recipe(method: str, step: Step, old_version: str | None) -> dict:
    """What a cached model must match to be reused."""
    # through JSON, so that it compares equal to the copy read back from a manifest
    return json.loads(json.dumps({"method": method, "step": dataclasses.asdict(step),
                                  "old": old_version}))


def train_or_load(method: str, i: int, old, x, y, exclude, cache: Path, threads: int):
    """The model of ``method`` at step ``i`` (trained against ``old``), from the cache if its
    recipe matches."""
    from nestemb.train.compatible import CompatConfig
    from nestemb.models.image import load_image_model, make_model_config, save_image_model
    from nestemb.train.image import ImageTrainConfig, train_image

    step = STEPS[i]
    folder = cache / "models" / method / step.name
    simplex = method == "simplex"
    compat = None
    if simplex:
        compat = CompatConfig.simplex_classifier()
    elif method == "bct" and old is not None:
        compat = CompatConfig.bct(old)
    elif method == "prefix" and old is not None:
        compat = CompatConfig.prefix(old)
    want = recipe(method, step, old.manifest.model_version if old is not None else None)
    if (folder / "manifest.json").is_file():
        model = load_image_model(folder)
        # the setup too: a change of a method's defaults retrains its models
        setup = json.loads(json.dumps(compat.describe())) if compat is not None else None
        if model.manifest.extra.get("recipe") == want and model.manifest.extra.get("compat") == setup:
            return model
    cfg = make_model_config("mrl", dim=step.dim, dims=step.nesting, images=x, cosine=True,
                            width=step.width, num_classes=10 if simplex else step.classes)
    rows = step_indices(y, step, exclude, seed=i)
    tcfg = ImageTrainConfig(steps=step.steps, holdout=0, seed=i, threads=threads, device="cpu")
    t = time.perf_counter()
    model, info = train_image(cfg, x[rows], y[rows], tcfg, progress=False, compat=compat,
                              model_id=f"upgrade-{method}-{step.name}")
    extra = {"recipe": want, "train_seconds": info["train_seconds"], "n_train": info["n_train"]}
    if "compat" in info:
        extra["compat"] = info["compat"]
    save_image_model(model, folder, f"upgrade-{method}-{step.name}", extra, overwrite=True)
    print(f"{method} {step.name}: trained {info['steps']} steps on {len(rows)} images in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return load_image_model(folder)


def encode_cached(model, images: np.ndarray, path: Path) -> np.ndarray:
    """Embeddings of ``images`` by ``model``, cached by the model's weights version."""
    path = path.with_name(f"{path.name}-{model.manifest.model_version}.npy")
    if path.is_file():
        return np.load(path)
    z = model.encode(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, z)
    return z


def train_chains(args) -> dict:
    """Train (or load) every model of every method; returns ``{method: [model, ...]}``."""
    import torch

    from nestemb.data.idx import load_idx

    x, y = load_idx(args.data, "train")
    valid = np.sort(np.random.default_rng(123).permutation(len(x))[:N_VALID])
    cache = Path(args.cache)
    chains: dict[str, list] = {}
    torch.set_num_threads(args.threads)
    for method in args.methods:
        models = []
        for i in range(len(STEPS)):
            if method in ("bct", "prefix") and i == 0:
                models.append(chains["independent"][0])  # M0 is the plain model
                continue
            old = models[-1] if models else None
            models.append(train_or_load(method, i, old, x, y, valid, cache, args.threads))
        chains[method] = models
    return chains


# ----------------------------------------------------------------------------------------------
# evaluation


def cell(q: np.ndarray, g: np.ndarray, ql, gl, dim: int) -> tuple[float, float]:
    """(1-NN top-1, mAP@100) of one query set against one gallery at prefix ``dim`` (one
    search for both, through the shared evaluator)."""
    from nestemb.eval.metrics import retrieval_metrics
    from nestemb.nesting import prefix_view

    q, g = prefix_view(q, dim), prefix_view(g, dim)  # the two models may differ in width
    r = retrieval_metrics(q, ql, g, gl, dims=(dim,), k=100)
    return r["knn_top1"][0], r["map100"][0]


def matrices(qs, gs, ql, gl, names, dims=DIMS, lower_only=False):
    """Two :class:`CompatibilityMatrix` (top1, map) over the models; NaN where a model is
    narrower than the prefix (or above the diagonal with ``lower_only``)."""
    from nestemb.compat.matrix import CompatibilityMatrix

    t = len(qs)
    top, mp = np.full((t, t, len(dims)), np.nan), np.full((t, t, len(dims)), np.nan)
    for p, d in enumerate(dims):
        for i in range(t):
            for j in range(t):
                if qs[i] is None or gs[j] is None or (lower_only and j > i):
                    continue
                if d <= qs[i].shape[1] and d <= gs[j].shape[1]:
                    top[i, j, p], mp[i, j, p] = cell(qs[i], gs[j], ql, gl, d)
    return (CompatibilityMatrix(names, dims, "top1", top),
            CompatibilityMatrix(names, dims, "map", mp))


def evaluate(args, chains: dict) -> dict:
    from nestemb.data.idx import load_idx

    x, y = load_idx(args.data, "train")
    xt, yt = load_idx(args.data, "t10k")
    rng = np.random.default_rng(7)
    if args.queries:
        per = args.queries // 10
        q_rows = np.sort(np.concatenate([rng.permutation(np.nonzero(yt == c)[0])[:per]
                                         for c in range(10)]))
    else:
        q_rows = np.arange(len(yt))
    yq = yt[q_rows]
    valid = np.sort(np.random.default_rng(123).permutation(len(x))[:N_VALID])
    rest = np.setdiff1d(np.arange(len(x)), valid)
    cache = Path(args.cache) / "emb"
    names = tuple(s.name for s in STEPS)
    emb = {}
    for method, models in chains.items():
        emb[method] = [(encode_cached(m, x, cache / "gallery"),
                        encode_cached(m, xt, cache / "test")[q_rows])
                       for m, s in zip(models, STEPS)]
    print("encoded", flush=True)
    res: dict = {"steps": [dataclasses.asdict(s) for s in STEPS], "n_queries": int(len(q_rows)),
                 "n_gallery": int(len(x)), "dims": list(DIMS), "methods": {}}
    ind_top = None
    for method in args.methods:
        gs = [e[0] for e in emb[method]]
        qs = [e[1] for e in emb[method]]
        t0 = time.perf_counter()
        top, mp = matrices(qs, gs, yq, y, names)
        if method == "independent":
            ind_top, ind_map = top, mp
        res["methods"][method] = summarise(top, mp, ind_top, ind_map)
        print(f"{method}: matrices in {time.perf_counter() - t0:.0f} s", flush=True)
    res["adapters"] = adapters(args, emb["independent"], x, y, yq, valid, rest, ind_top, ind_map)
    res["backfill"] = backfill(emb, res["adapters"].pop("_stored_m3"), yq, y)
    return res


def summarise(top, mp, ind_top, ind_map) -> dict:
    """Per metric: the matrix, per-prefix criterion / AC / AM, G of every new model against
    M0 (the gallery model) and new/new against the independent models."""
    from nestemb.compat.matrix import ac, am, criterion_matrix, update_gain

    out = {}
    for cm, ind in ((top, ind_top), (mp, ind_map)):
        per_dim = {}
        for d in cm.dims:
            c = cm.at(d)
            entry = {"criterion": criterion_matrix(c).astype(int).tolist(), "ac": ac(c),
                     "am": am(c), "gain_vs_m0": {}, "new_new_minus_independent": {}}
            for i in range(1, len(c)):
                if np.isfinite([c[i, 0], c[0, 0]]).all():
                    star = ind.at(d)[i, i]
                    entry["gain_vs_m0"][cm.models[i]] = update_gain(c[i, 0], c[0, 0], star)
                if np.isfinite(c[i, i]):
                    entry["new_new_minus_independent"][cm.models[i]] = float(c[i, i] - ind.at(d)[i, i])
            per_dim[str(d)] = entry
        out[cm.metric] = {"matrix": cm.to_dict(), "per_dim": per_dim}
    return out


def adapters(args, ind, x, y, yq, valid, rest, ind_top, ind_map) -> dict:
    """Post-hoc adapters between the independent models, fitted on 5 % of the gallery: new
    queries into the old space, and stored old vectors into the new space (pairs i > j, at the
    full width of the target space). The kind is chosen on the validation split."""
    from nestemb.maps import fit_adapter
    from nestemb.compat.matrix import CompatibilityMatrix, update_gain

    rng = np.random.default_rng(11)
    fit_rows = np.sort(rng.permutation(rest)[: int(ADAPTER_SHARE * len(x))])
    v_rest = np.setdiff1d(rest, fit_rows)[::4]  # validation gallery (a quarter, for speed)
    names = tuple(s.name for s in STEPS)
    t = len(STEPS)
    out: dict = {"fit_rows": int(len(fit_rows)), "kinds": {}}
    # choice of kind on the validation split: the M3 -> M0 pair, both directions
    g0, g3 = ind[0][0], ind[-1][0]
    for kind in ADAPTER_KINDS:
        aq = fit_adapter(g3[fit_rows], g0[fit_rows], kind)
        ast = fit_adapter(g0[fit_rows], g3[fit_rows], kind)
        out["kinds"][kind] = {
            "valid_query_top1": cell(aq.transform(g3[valid]), g0[v_rest], y[valid], y[v_rest], g0.shape[1])[0],
            "valid_stored_top1": cell(g3[valid], ast.transform(g0[v_rest]), y[valid], y[v_rest], g3.shape[1])[0],
        }
    best_q = max(ADAPTER_KINDS, key=lambda k: out["kinds"][k]["valid_query_top1"])
    best_s = max(ADAPTER_KINDS, key=lambda k: out["kinds"][k]["valid_stored_top1"])
    out["chosen"] = {"query": best_q, "stored": best_s}
    for direction, kind in (("query", best_q), ("stored", best_s)):
        top = np.full((t, t, 1), np.nan)
        mp = np.full((t, t, 1), np.nan)
        gains = {}
        for i in range(t):
            top[i, i, 0], mp[i, i, 0] = ind_top.at(STEPS[i].dim)[i, i], ind_map.at(STEPS[i].dim)[i, i]
            for j in range(i):
                gi, qi, gj = ind[i][0], ind[i][1], ind[j][0]
                if direction == "query":  # new queries into the old space, old gallery as is
                    a = fit_adapter(gi[fit_rows], gj[fit_rows], kind)
                    q, g, d = a.transform(qi), gj, gj.shape[1]
                else:  # stored old vectors into the new space
                    a = fit_adapter(gj[fit_rows], gi[fit_rows], kind)
                    q, g, d = qi, a.transform(gj), gi.shape[1]
                    if i == t - 1 and j == 0:
                        out["_stored_m3"] = g
                top[i, j, 0], mp[i, j, 0] = cell(q, g, yq, y, d)
                if j == 0:
                    old = ind_top.at(STEPS[0].dim)[0, 0]
                    star = ind_top.at(STEPS[i].dim)[i, i]
                    gains[names[i]] = update_gain(top[i, 0, 0], old, star)
        # one "full width" column: entry [i, j] is at the target's full width
        cm_t = CompatibilityMatrix(names, (1,), "top1", top)
        cm_m = CompatibilityMatrix(names, (1,), "map", mp)
        out[direction] = {"kind": kind, "top1": cm_t.to_dict(), "map": cm_m.to_dict(),
                          "gain_vs_m0_top1": gains}
    return out


def backfill(emb, stored_m3, yq, y) -> dict:
    """Partial backfill M0 -> M3 (top-1): per trained method at M0's full width (32), and the
    stored-vector adapter (old vectors mapped into M3's space) at M3's full width."""
    from nestemb.compat.matrix import partial_backfill

    out = {}
    for method, e in emb.items():
        c = partial_backfill(e[-1][1], e[0][0], e[-1][0], fractions=FRACTIONS, dim=STEPS[0].dim,
                             metric="top1", query_labels=yq, gallery_labels=y)
        out[method] = c.to_dict()
    e = emb["independent"]
    c = partial_backfill(e[-1][1], stored_m3, e[-1][0], fractions=FRACTIONS, dim=STEPS[-1].dim,
                         metric="top1", query_labels=yq, gallery_labels=y)
    out["adapter-stored"] = c.to_dict()
    return out


# ----------------------------------------------------------------------------------------------
# report


def fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def tables(res: dict) -> str:
    names = [s["name"] for s in res["steps"]]
    lines = ["# Fashion-MNIST upgrade chain\n",
             f"Gallery: the {res['n_gallery']} training images encoded by each gallery model "
             f"(M0 for the stored gallery); queries: {res['n_queries']} test images, all classes. "
             "Rows: query model; columns: gallery model. 1-NN top-1 / mAP@100.\n"]
    lines.append("## Summary per method and prefix (top-1)\n")
    lines.append("| method | dim | AC | AM | G (M1, M2, M3 vs M0) | new/new − independent (M1, M2, M3) |")
    lines.append("|---|---|---|---|---|---|")
    for method, r in res["methods"].items():
        for d, e in r["top1"]["per_dim"].items():
            g = ", ".join(fmt(e["gain_vs_m0"].get(n)) for n in names[1:])
            nn = ", ".join(fmt(e["new_new_minus_independent"].get(n)) for n in names[1:])
            lines.append(f"| {method} | {d} | {fmt(e['ac'])} | {fmt(e['am'])} | {g} | {nn} |")
    for method, r in res["methods"].items():
        for metric in ("top1", "map"):
            m = r[metric]["matrix"]
            lines.append(f"\n## {method}: {metric} matrices\n")
            for p, d in enumerate(m["dims"]):
                lines.append(f"**{d} dims** (✓/✗: criterion below the diagonal)\n")
                lines.append("| query \\ gallery | " + " | ".join(m["models"]) + " |")
                lines.append("|---" * (len(m["models"]) + 1) + "|")
                crit = r[metric]["per_dim"][str(d)]["criterion"]
                for i, row in enumerate(m["values"]):
                    cells = []
                    for j, cellv in enumerate(row):
                        s = fmt(cellv[p])
                        if j < i and cellv[p] is not None and row[i][p] is not None and m["values"][j][j][p] is not None:
                            s += " ✓" if crit[i][j] else " ✗"
                        cells.append(s)
                    lines.append(f"| {m['models'][i]} | " + " | ".join(cells) + " |")
                lines.append("")
    a = res["adapters"]
    lines.append("\n## Post-hoc adapters (independent models, fitted on "
                 f"{a['fit_rows']} gallery images)\n")
    lines.append("| kind | valid top-1, M3 queries → M0 space | valid top-1, M3 queries vs M0 gallery mapped into M3 |")
    lines.append("|---|---|---|")
    for k, v in a["kinds"].items():
        lines.append(f"| {k} | {fmt(v['valid_query_top1'])} | {fmt(v['valid_stored_top1'])} |")
    for direction in ("query", "stored"):
        d = a[direction]
        lines.append(f"\n**{direction} adapter ({d['kind']})**, full width of the target space; "
                     "G vs M0 (top-1): " + ", ".join(f"{n} {fmt(v)}" for n, v in d["gain_vs_m0_top1"].items()) + "\n")
        for metric in ("top1", "map"):
            m = d[metric]
            lines.append(f"{metric}:\n")
            lines.append("| query \\ gallery | " + " | ".join(m["models"]) + " |")
            lines.append("|---" * (len(m["models"]) + 1) + "|")
            for i, row in enumerate(m["values"]):
                lines.append(f"| {m['models'][i]} | " + " | ".join(fmt(c[0]) for c in row) + " |")
            lines.append("")
    lines.append("\n## Partial backfill M0 → M3 (top-1)\n")
    lines.append("| method | " + " | ".join(f"{f:g}" for f in FRACTIONS) + " | AUC |")
    lines.append("|---" * (len(FRACTIONS) + 2) + "|")
    for method, c in res["backfill"].items():
        lines.append(f"| {method} | " + " | ".join(fmt(v) for v in c["values"]) + f" | {fmt(c['auc'])} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path) -> None:
    from nestemb.plotting import plt, save_figure

    from nestemb.compat.matrix import CompatibilityMatrix, plot_compatibility

    for method, r in res["methods"].items():
        for metric in ("top1", "map"):
            cm = CompatibilityMatrix.from_dict(r[metric]["matrix"])
            plot_compatibility(cm, out / f"heat_{method}_{metric}.png", title=f"{method} ({metric})")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, c in res["backfill"].items():
        ax.plot(c["fractions"], c["values"], marker="o", label=f"{method} (AUC {c['auc']:.3f})")
    ax.set_xlabel("share of the gallery re-encoded by M3")
    ax.set_ylabel("1-NN top-1, M3 queries")
    ax.set_title("Partial backfill M0 → M3")
    ax.legend(fontsize=8)
    save_figure(fig, out / "backfill.png", dpi=110)


def image_main(args) -> int:
    from nestemb.io import write_json

    t0 = time.perf_counter()
    chains = train_chains(args)
    print(f"models ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.train_only:
        return 0
    res = evaluate(args, chains)
    res["train_seconds"] = {m: [float(x.manifest.extra.get("train_seconds", 0)) for x in ms]
                            for m, ms in chains.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    text = tables(res)
    (out / "tables.md").write_text(text)
    plots(res, out)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


def text_main(args) -> int:
    from upgrade_text import run

    run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    im = sub.add_parser("image", help="the Fashion-MNIST upgrade chain")
    im.add_argument("--data", default=str(DATA))
    im.add_argument("--out", default="docs/results/upgrade/image")
    im.add_argument("--cache", default="runs/upgrade/image")
    im.add_argument("--queries", type=int, default=2000, help="stratified test queries (0 = all)")
    im.add_argument("--threads", type=int, default=2)
    im.add_argument("--train-only", action="store_true")
    im.add_argument("--methods", type=lambda v: v.split(","), default=list(TRAINED),
                    help="comma-separated trained methods (independent is always needed)")
    im.set_defaults(func=image_main)
    tx = sub.add_parser("text", help="SciFact: upgrade the base MiniLM without re-encoding its "
                        "gallery (see benchmarks/upgrade_text.py)")
    tx.add_argument("--scifact", default="../shared/data/scifact")
    tx.add_argument("--trained", default=None, help="a nestemb-trained text model folder")
    tx.add_argument("--mpnet", action="store_true", help="also all-mpnet-base-v2 (make mpnet)")
    tx.add_argument("--fit-fraction", type=float, default=0.2,
                    help="share of the corpus, encoded by both models, the adapters are fitted on")
    tx.add_argument("--shared", default="../shared/data", help="the shared data folder (public "
                    "sentences, STS-B)")
    tx.add_argument("--public", type=int, default=4000,
                    help="public sentences (a seeded sample of SNLI/STS-B/MRPC) encoded by both")
    tx.add_argument("--mpnet-tokens", type=int, default=128, help="mpnet's truncation length")
    tx.add_argument("--seed", type=int, default=0)
    tx.add_argument("--out", default="docs/results/upgrade/text")
    tx.set_defaults(func=text_main)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
