"""Elastic (MatFormer-style nested-width) image encoders on Fashion-MNIST: one training, many widths.

Trains, with the library's defaults except the step budget (``--steps``) and the same seed:
ONE elastic model (``--arch mlp`` by default, or ``cnn``; widths 1/8, 1/4, 1/2, 1) and, for
comparison, an independently trained ordinary model of every width whose layers have exactly the
extracted submodel's units (``ImageModelConfig.channels``; the full one is the library's default
model). Then measures:

1. the width x dims grid: linear top-1 (the model's own nested heads) and 1-NN top-1 (cosine,
   test images against the 60k training images) at every nesting prefix, for every extracted
   width, every independent model and Mix'n'Match submodels at budgets between granularities;
2. encode throughput of every model (images/s encoding the 60k training images, one timed run
   after a warm-up batch, ``--threads`` torch threads, batches of 1,024) and its ratio to the
   full width;
3. submodel-on-parent-gallery retrieval: test images encoded by a submodel searched against the
   training images encoded by the full model (accepted by ``check_compatible``), against the
   submodel's own gallery and full/full;
4. training time of the elastic model against the full model alone.

Writes ``OUT/results.json``, ``OUT/heatmap.png`` (width x dims linear top-1, and the gap to the
independent models), ``OUT/pareto.png`` (accuracy vs measured encode throughput),
``OUT/cross_gallery.png`` and ``OUT/elastic.md`` (tables; also printed) and prints every target of
issue 25 with met/missed. Trained models are kept under ``--work`` and reused by a rerun with the
same settings (``--fresh`` retrains).

    python benchmarks/elastic.py                          # MLP, 6,000 steps per model, ~9 min
    python benchmarks/elastic.py --steps 20 --out runs/elastic_smoke   # smoke run
    python benchmarks/elastic.py --arch cnn --out runs/elastic_cnn
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nestemb.data.idx import load_idx
from nestemb.data.paths import resolve_fashion_mnist
from nestemb.io import read_json, write_json

DEFAULT_STEPS = 6000
"""Step budget of every model in the default run (the library's schedule, ``--steps 0``, is
2,150 steps: 10 epochs of 55k images). Measured on 2 CPU cores (MLP, batch 256): 14 ms per step
for the full model, 21 for the elastic one, 5 / 6 / 8 for the 1/8, 1/4, 1/2 models, and about
160 s of evaluation, so the whole default run takes about 8-9 minutes."""
TARGETS = {"width_gap_pt": 0.5, "cross_vs_full_pt": 1.0, "cross_dim": 64,
           "throughput_ratio": 3.0, "train_ratio": 1.6, "mnm_slack_pt": 0.0}  # fmt: skip


def _csv(kind):
    """An argparse type: a comma-separated list of ``kind`` as a tuple."""
    def parse(text: str) -> tuple:
        return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
    return parse


def wname(g: float) -> str:
    """A width's name: ``1/4`` for 0.25, ``1`` for 1.

    >>> wname(0.125), wname(0.5), wname(1.0), wname(0.3)
    ('1/8', '1/2', '1', '0.3')
    """
    if g == 1:
        return "1"
    inv = 1 / g
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{g:g}"


def knn_top1(queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray,
             g_labels: np.ndarray, dims: Sequence[int], chunk: int = 1024) -> list[float]:
    """1-NN top-1 of cosine search on the prefix views of raw embeddings, for every ``m`` in
    ``dims`` (what :func:`nestemb.eval.metrics.retrieval_metrics` computes as ``knn_top1``, with
    torch's threaded matmul and arg-max instead of a top-k).

    >>> g = np.array([[1.0, 0.0], [1.0, 0.2], [-1.0, 0.0], [-0.1, -1.0]], np.float32)
    >>> knn_top1(np.array([[2.0, 0.1], [0.1, -2.0]], np.float32), np.array([0, 0]), g,
    ...          np.array([0, 0, 1, 1]), (1, 2))
    [1.0, 0.5]
    """
    import torch

    from nestemb.nesting import prefix_view

    q_all, g_all = torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(np.ascontiguousarray(gallery))
    gl, ql = torch.from_numpy(np.asarray(g_labels)), torch.from_numpy(np.asarray(q_labels))
    out = []
    with torch.inference_mode():
        for m in dims:
            gv = prefix_view(g_all, m).t().contiguous()
            qv = prefix_view(q_all, m)
            hits = 0
            for a in range(0, len(qv), chunk):
                idx = (qv[a : a + chunk] @ gv).argmax(dim=1)
                hits += int((gl[idx] == ql[a : a + chunk]).sum())
            out.append(hits / len(qv))
    return out


def linear_top1(model, z: np.ndarray, labels: np.ndarray) -> list[float]:
    """Top-1 of the model's own nested heads at every prefix, from its embeddings ``z`` (the same
    as ``predict_proba``'s arg-max, without encoding again)."""
    import torch

    with torch.inference_mode():
        logits = model.head(torch.from_numpy(z))  # (N, K, classes)
    pred = logits.argmax(dim=-1).numpy()
    return [float((pred[:, i] == labels).mean()) for i in range(pred.shape[1])]


def line_at(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    """The value at ``x`` of the line through ``(x0, y0)`` and ``(x1, y1)``.

    >>> line_at(0.5, 0.0, 1.0, 1.0, 3.0)
    2.0
    """
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def train_or_load(name: str, mcfg, train: tuple, tcfg, work: Path, fresh: bool, log) -> tuple[Any, dict]:
    """Train one model (or reuse the one a previous run with the same settings saved under
    ``work``); returns the model (with a manifest) and its training info."""
    from nestemb.models.image import load_image_model, save_image_model
    from nestemb.train.image import train_image

    folder, info_path = work / name, work / f"{name}.json"
    if not fresh and folder.is_dir() and info_path.is_file():
        info = read_json(info_path)
        if info.get("model_config") == repr(mcfg):
            log(f"{name}: reusing {folder} (trained in {info['train_seconds']:.1f} s)")
            return load_image_model(folder), {**info, "reused": True}
    model, info = train_image(mcfg, *train, tcfg, progress=False, model_id=name)
    save_image_model(model, folder, name, {"split": info["split"]}, overwrite=True)
    keep = {k: info[k] for k in ("train_seconds", "steps", "epochs", "split") if k in info}
    keep["model_config"] = repr(mcfg)
    write_json(info_path, keep)
    log(f"{name}: trained {info['steps']} steps in {info['train_seconds']:.1f} s "
        f"({1000 * info['train_seconds'] / max(1, info['steps']):.0f} ms/step)")
    return model, keep


def evaluate(model, train: tuple, test: tuple, dims: Sequence[int], threads: int) -> dict:
    """Linear and 1-NN top-1 at every prefix, and encode throughput (one timed run encoding the
    training images, the gallery, after a warm-up batch), with ``threads`` torch threads."""
    from nestemb.device import torch_threads

    with torch_threads(threads):
        model.encode(test[0][:1024])  # warm-up
        start = time.perf_counter()
        gallery = model.encode(train[0])
        seconds = time.perf_counter() - start
        queries = model.encode(test[0])
        return {"linear_top1": linear_top1(model, queries, test[1]),
                "knn_top1": knn_top1(queries, test[1], gallery, train[1], dims),
                "images_per_s": round(len(train[0]) / seconds, 1),
                "_gallery": gallery, "_queries": queries}  # fmt: skip


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (first column left-aligned, the rest right-aligned).

    >>> print(table(["a", "b"], [["x", 1]]))
    | a | b |
    |---|---:|
    | x | 1 |
    """
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def heatmap(path: Path, widths: Sequence[float], dims: Sequence[int], grid: np.ndarray,
            diff: np.ndarray, title: str) -> None:
    """Two panels: linear top-1 (%) of every extracted width x prefix, and its difference to the
    independent model of that width (pt)."""
    from nestemb.plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    rows = [wname(g) for g in widths]
    for ax, data, label, cmap in ((axes[0], 100 * grid, "elastic: linear top-1 %", "viridis"),
                                  (axes[1], 100 * diff, "elastic - independent (pt)", "RdBu")):  # fmt: skip
        if cmap == "RdBu":
            lim = max(0.5, float(np.nanmax(np.abs(data))))
            im = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        else:
            im = ax.imshow(data, cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(dims)), [str(d) for d in dims])
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("embedding dimension (prefix)")
        ax.set_ylabel("encoder width")
        ax.set_title(label)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                ax.text(j, i, f"{data[i, j]:.1f}" if cmap != "RdBu" else f"{data[i, j]:+.1f}",
                        ha="center", va="center", fontsize=7, color="white" if cmap != "RdBu" else "black")
        fig.colorbar(im, ax=ax)
    fig.suptitle(title)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the shared data)")
    ap.add_argument("--out", default="docs/results/elastic")
    ap.add_argument("--work", default="runs/bench_elastic", help="trained models (reused by a rerun)")
    ap.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--widths", type=_csv(float), default=(0.125, 0.25, 0.5, 1.0))
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps of every model "
                    f"(default {DEFAULT_STEPS}; 0: the library's schedule)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (training and encoding)")
    ap.add_argument("--mnm", type=_csv(float), default=None,
                    help="Mix'n'Match budgets (fractions of the full model's multiply-adds; default: "
                         "half-way between neighbouring widths above the smallest)")
    ap.add_argument("--quarter", type=float, default=0.25, help="the submodel whose queries search "
                    "the full model's gallery (its own targets)")
    ap.add_argument("--limit-train", type=int, default=None, help="use the first N training images (checks)")
    ap.add_argument("--limit-test", type=int, default=None, help="use the first N test images (checks)")
    ap.add_argument("--fresh", action="store_true", help="retrain even when --work holds the models")
    a = ap.parse_args(argv)

    import torch

    from nestemb.errors import NestembError
    from nestemb.models.elastic import extract, layer_units, mix_n_match, multiply_adds
    from nestemb.models.image import LAYERS, check_widths, make_model_config
    from nestemb.nesting import check_compatible
    from nestemb.plotting import line_plot, scatter_pareto
    from nestemb.train.image import ImageTrainConfig

    wall = time.perf_counter()
    command = "python benchmarks/elastic.py" + ("" if not argv else " " + shlex.join(argv))
    widths = check_widths(a.widths)
    out, data = Path(a.out), resolve_fashion_mnist(a.data)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_idx(data, "train"), load_idx(data, "t10k")
    if a.limit_train:
        train = (train[0][: a.limit_train], train[1][: a.limit_train])
    if a.limit_test:
        test = (test[0][: a.limit_test], test[1][: a.limit_test])
    steps = a.steps or None
    tag = f"{a.arch}-d{a.dim}-s{steps or 'lib'}-seed{a.seed}-n{len(train[0])}"
    work = Path(a.work) / tag
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall:6.1f} s] {msg}", flush=True)

    ecfg = make_model_config("mrl", dim=a.dim, images=train[0], arch=a.arch, widths=widths)
    dims = list(ecfg.nesting)
    L = LAYERS[a.arch]
    tcfg = ImageTrainConfig(steps=steps, seed=a.seed, threads=a.threads)
    full_macs = multiply_adds(ecfg)
    log(f"{a.arch}, widths {widths}, dims {dims}, {len(train[0])} train / {len(test[0])} test images, "
        f"steps {steps or 'library schedule'}, seed {a.seed}, {a.threads} threads")

    # -- training: the full model alone first (no warm-up bias against the elastic run), then the
    #    elastic model, then the independent smaller ones
    indep_cfg = {}
    for k, g in enumerate(widths):
        ch = layer_units(ecfg, (k,) * L)
        indep_cfg[g] = (make_model_config("mrl", dim=a.dim, images=train[0], arch=a.arch) if g == 1
                        else make_model_config("mrl", dim=a.dim, images=train[0], arch=a.arch, channels=ch))
    models, infos = {}, {}
    for name, cfg in [("indep-w1", indep_cfg[1.0]), ("elastic", ecfg)] + [
            (f"indep-w{g:g}", indep_cfg[g]) for g in widths if g != 1]:  # fmt: skip
        models[name], infos[name] = train_or_load(name, cfg, train, tcfg, work, a.fresh, log)
    reused = [k for k, v in infos.items() if v.get("reused")]
    parent = models["elastic"]  # saved, so its manifest names its weights (what submodels cite)

    # -- submodels: every trained width, and Mix'n'Match between them
    subs: dict[str, Any] = {}
    rows: dict[str, dict] = {}
    x_check = torch.from_numpy(test[0][:256].copy())
    for g in widths:
        sub = extract(parent, g)
        assert sub.config.channels == indep_cfg[g].layer_channels, (sub.config.channels, indep_cfg[g])
        with torch.inference_mode():
            xs = parent.preprocess(x_check)
            diff = float((sub(xs)[0] - parent(xs, width=g)[0]).abs().max())
        subs[wname(g)] = sub
        rows[wname(g)] = {"kind": "elastic", "width": g, "layer_widths": [g] * L,
                          "channels": list(sub.config.channels), "max_abs_diff_vs_parent": diff}
    log("extracted submodels: forward equals the parent's at that width (max abs diff "
        f"{max(r['max_abs_diff_vs_parent'] for r in rows.values()):.2g})")
    uniform_cost = {g: multiply_adds(ecfg, layer_units(ecfg, (k,) * L)) / full_macs
                    for k, g in enumerate(widths)}  # fmt: skip
    budgets = a.mnm if a.mnm is not None else tuple(
        round((uniform_cost[lo] + uniform_cost[hi]) / 2, 4) for lo, hi in zip(widths[1:], widths[2:]))
    mnm_rows = []
    for b in budgets:
        try:
            lw = mix_n_match(ecfg, b)
        except NestembError as e:
            log(f"Mix'n'Match budget {b}: {e}")
            continue
        if len(set(lw)) == 1:
            log(f"Mix'n'Match budget {b}: picks the uniform width {lw[0]}; skipped")
            continue
        name = "mnm(" + ",".join(wname(g) for g in lw) + ")"
        if name in subs:
            continue
        subs[name] = extract(parent, list(lw))
        rows[name] = {"kind": "mix-n-match", "budget": b, "layer_widths": list(lw),
                      "channels": list(subs[name].config.channels)}
        mnm_rows.append(name)
    for g in widths:
        rows[f"indep {wname(g)}"] = {"kind": "independent", "width": g, "layer_widths": [g] * L,
                                     "channels": list(indep_cfg[g].layer_channels)}
        subs[f"indep {wname(g)}"] = models[f"indep-w{g:g}"]

    # -- evaluation: grid, throughput (same threads; one timed run each)
    embeds = {}
    for name, model in subs.items():
        ev = evaluate(model, train, test, dims, a.threads)
        embeds[name] = (ev.pop("_gallery"), ev.pop("_queries"))
        macs = multiply_adds(ecfg, model.config.layer_channels)
        rows[name].update(ev, multiply_adds=macs, cost=round(macs / full_macs, 4))
        log(f"{name:>18}: linear {pct(ev['linear_top1'][-1])}, 1-NN {pct(ev['knn_top1'][-1])}, "
            f"{ev['images_per_s']:.0f} images/s")
    full_ips = rows["1"]["images_per_s"]
    for r in rows.values():
        r["throughput_ratio"] = round(r["images_per_s"] / full_ips, 3)

    # -- submodel queries on the full model's gallery
    cross = {}
    full_gallery = embeds["1"][0]
    for g in widths[:-1]:
        sub = subs[wname(g)]
        check_compatible(sub.manifest, parent.manifest)  # raises if the index would refuse them
        cross[wname(g)] = knn_top1(embeds[wname(g)][1], test[1], full_gallery, train[1], dims)
    try:  # an independent model of the same width is refused by the full model's index
        check_compatible(models[f"indep-w{a.quarter:g}"].manifest, parent.manifest)
        refusal = None
    except NestembError as e:
        refusal = str(e)
    q = wname(a.quarter)
    ci = dims.index(TARGETS["cross_dim"]) if TARGETS["cross_dim"] in dims else len(dims) - 1

    # -- targets
    targets = []

    def target(what: str, figure: str, met: bool) -> None:
        targets.append({"target": what, "figure": figure, "met": bool(met)})

    for g in widths:
        e, i = rows[wname(g)]["linear_top1"][-1], rows[f"indep {wname(g)}"]["linear_top1"][-1]
        target(f"width {wname(g)} within {TARGETS['width_gap_pt']} pt linear top-1 of independent "
               f"({dims[-1]}-d)", f"{pct(e)} vs {pct(i)} ({100 * (e - i):+.2f} pt)",
               e >= i - TARGETS["width_gap_pt"] / 100)
    costs = sorted(uniform_cost.items(), key=lambda t: t[1])
    for name in mnm_rows:
        c, acc = rows[name]["cost"], rows[name]["linear_top1"][-1]
        lo = max((t for t in costs if t[1] <= c), key=lambda t: t[1])
        hi = min((t for t in costs if t[1] >= c), key=lambda t: t[1])
        if lo[1] == hi[1]:
            line = rows[wname(lo[0])]["linear_top1"][-1]
        else:
            line = line_at(c, lo[1], rows[wname(lo[0])]["linear_top1"][-1],
                           hi[1], rows[wname(hi[0])]["linear_top1"][-1])
        rows[name]["line"] = line
        target(f"{name} (cost {c:.3f}) on/above the line {wname(lo[0])}-{wname(hi[0])}",
               f"{pct(acc)} vs line {pct(line)} ({100 * (acc - line):+.2f} pt)",
               acc >= line - TARGETS["mnm_slack_pt"] / 100)
    m = dims[ci]
    own, cq, ff = rows[q]["knn_top1"][ci], cross[q][ci], rows["1"]["knn_top1"][ci]
    target(f"{q}-width queries on full gallery >= {q} own gallery, 1-NN at {m}-d",
           f"{pct(cq)} vs {pct(own)} ({100 * (cq - own):+.2f} pt)", cq >= own)
    target(f"{q}-width queries on full gallery within {TARGETS['cross_vs_full_pt']} pt of full/full "
           f"at {m}-d", f"{pct(cq)} vs {pct(ff)} ({100 * (cq - ff):+.2f} pt)",
           cq >= ff - TARGETS["cross_vs_full_pt"] / 100)
    tr = rows[q]["throughput_ratio"]
    target(f"{q}-width encode throughput >= {TARGETS['throughput_ratio']:g}x full",
           f"{tr:.2f}x ({rows[q]['images_per_s']:.0f} vs {full_ips:.0f} images/s)",
           tr >= TARGETS["throughput_ratio"])
    t_el, t_full = infos["elastic"]["train_seconds"], infos["indep-w1"]["train_seconds"]
    target(f"elastic training <= {TARGETS['train_ratio']:g}x the full model alone",
           f"{t_el / t_full:.2f}x ({t_el:.0f} s vs {t_full:.0f} s)", t_el / t_full <= TARGETS["train_ratio"])

    # -- outputs
    results = {
        "command": command, "arch": a.arch, "widths": list(widths), "dims": dims, "seed": a.seed,
        "steps": infos["elastic"]["steps"], "threads": a.threads,
        "n_train": len(train[0]), "n_test": len(test[0]), "full_multiply_adds": full_macs,
        "models": rows,
        "cross_gallery": {"queries_width": a.quarter, "dims": dims,
                          "sub_on_full": {k: v for k, v in cross.items()},
                          "sub_on_own": {k: rows[k]["knn_top1"] for k in cross},
                          "full_on_full": rows["1"]["knn_top1"],
                          "independent_refused": refusal},
        "train_seconds": {k: v["train_seconds"] for k, v in infos.items()},
        "train_ratio": round(t_el / t_full, 3),
        "targets": targets,
        "torch": torch.__version__, "wall_seconds": None,
    }
    grid = np.array([rows[wname(g)]["linear_top1"] for g in widths])
    ind = np.array([rows[f"indep {wname(g)}"]["linear_top1"] for g in widths])
    heatmap(out / "heatmap.png", widths, dims, grid, grid - ind,
            f"{a.arch.upper()} on Fashion-MNIST, {results['steps']} steps, seed {a.seed}")
    groups = {"elastic (extracted)": [(100 * rows[wname(g)]["linear_top1"][-1], rows[wname(g)]["images_per_s"])
                                      for g in widths],
              "independent": [(100 * rows[f"indep {wname(g)}"]["linear_top1"][-1],
                               rows[f"indep {wname(g)}"]["images_per_s"]) for g in widths],
              "Mix'n'Match": [(100 * rows[n]["linear_top1"][-1], rows[n]["images_per_s"]) for n in mnm_rows]}
    scatter_pareto(out / "pareto.png", groups, xlabel=f"linear top-1 % ({dims[-1]}-d)",
                   ylabel=f"encode images/s ({a.threads} threads)",
                   title=f"{a.arch.upper()}: accuracy vs encode cost")  # fmt: skip
    series = {f"{q} queries / full gallery": cross[q], f"{q} / {q}": rows[q]["knn_top1"],
              "full / full": rows["1"]["knn_top1"]}
    line_plot(out / "cross_gallery.png", dims, {k: [100 * v for v in s] for k, s in series.items()},
              xlabel="embedding dimension", ylabel="1-NN top-1 %",
              title=f"{a.arch.upper()}: submodel queries on the full model's gallery")  # fmt: skip

    names = [wname(g) for g in widths] + mnm_rows + [f"indep {wname(g)}" for g in widths]
    md = [f"# Elastic encoders ({a.arch.upper()}, Fashion-MNIST)", "",
          f"Command: `{command}` ({results['steps']} steps per model, seed {a.seed}, {a.threads} threads, "
          f"one run)", ""]  # fmt: skip
    md += ["## Linear top-1 % (rows: encoder; columns: prefix dims)", "",
           table(["model"] + [str(d) for d in dims], [[n] + [pct(v) for v in rows[n]["linear_top1"]]
                                                       for n in names]), ""]  # fmt: skip
    md += [f"## 1-NN top-1 % ({len(test[0])} test queries, {len(train[0])} training images as the "
           "gallery, both encoded by the same model)", "",
           table(["model"] + [str(d) for d in dims], [[n] + [pct(v) for v in rows[n]["knn_top1"]]
                                                       for n in names]), ""]  # fmt: skip
    md += ["## Encode cost", "",
           table(["model", "layer widths", "units per layer", "multiply-adds", "cost", "images/s", "x full"],
                 [[n, ",".join(wname(g) for g in rows[n]["layer_widths"]),
                   ",".join(map(str, rows[n]["channels"])), f"{rows[n]['multiply_adds']:,}",
                   f"{rows[n]['cost']:.3f}", f"{rows[n]['images_per_s']:.0f}",
                   f"{rows[n]['throughput_ratio']:.2f}"] for n in names]), ""]  # fmt: skip
    md += ["## Submodel queries on the full model's gallery (1-NN top-1 %)", "",
           table(["queries / gallery"] + [str(d) for d in dims],
                 [[f"{k} / full"] + [pct(v) for v in cross[k]] for k in cross]
                 + [[f"{q} / {q}"] + [pct(v) for v in rows[q]["knn_top1"]],
                    ["full / full"] + [pct(v) for v in rows["1"]["knn_top1"]]]), "",
           "An independently trained model of the same width is refused by the full model's index: "
           f"{refusal or 'NOT REFUSED'}", ""]  # fmt: skip
    md += ["## Training time", "",
           table(["model", "train s"], [[k, f"{v['train_seconds']:.1f}"] for k, v in infos.items()]),
           "", f"Elastic / full alone: {t_el / t_full:.2f}x", ""]
    md += ["## Targets (issue 25; one seed)", "",
           table(["target", "figure", "met?"], [[t["target"], t["figure"], "met" if t["met"] else "MISSED"]
                                            for t in targets]), ""]  # fmt: skip
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    md += [f"Wall time of the run: {results['wall_seconds']:.0f} s (models reused from --work: "
           f"{', '.join(reused) or 'none'})", ""]
    text = "\n".join(md)
    (out / "elastic.md").write_text(text)
    write_json(out / "results.json", results)
    print(text)
    print(f"wall {results['wall_seconds']:.0f} s; wrote {out}/results.json, elastic.md, heatmap.png, "
          "pareto.png, cross_gallery.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
