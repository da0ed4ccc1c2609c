"""Elastic (MatFormer-style nested-width) image encoders on Fashion-MNIST: one training, many widths.

Trains, with the library's defaults except the step budget (``--steps``) and the same seed:
ONE elastic model (``--arch mlp`` by default, or ``cnn``; widths 1/8, 1/4, 1/2, 1) and, for
comparison, an independently trained ordinary model of every width whose layers have exactly the
extracted submodel's units (``ImageModelConfig.channels``; the full one is the library's default
model). Then measures:

1. the width x dims grid: linear top-1 (the model's own nested heads) and 1-NN top-1 (cosine,
   test images against the 60k training images) at every nesting prefix, for every extracted
   width, every independent model and Mix'n'Match submodels at budgets between granularities
   (their batch norms re-estimated on ``--calibration`` training images);
2. encode throughput of every model (images/s encoding ``--timing-images`` training images in
   batches of 1,024 with ``--threads`` torch threads; ``--timing-rounds`` interleaved rounds,
   each model keeps its best) and its ratio to the full width;
3. submodel-on-parent-gallery retrieval: test images encoded by a submodel searched against the
   training images encoded by the full model (accepted by ``check_compatible``), against the
   submodel's own gallery and full/full;
4. training time of the elastic model against the full model alone: time per step, interleaved
   rounds of ``--timing-steps`` steps, each model's best round.

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
3,225 steps: 15 epochs of 55k images). Measured on 2 CPU cores (MLP, batch 256): 14 ms per step
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
    from nestemb.train.image import run_signature, train_image

    folder, info_path = work / name, work / f"{name}.json"
    # what makes two trainings the same: what makes a checkpoint resumable (data, schedule, model,
    # and for an elastic one how its widths train)
    key = run_signature(mcfg, *train, tcfg)
    if not fresh and folder.is_dir() and info_path.is_file():
        info = read_json(info_path)
        if info.get("run_signature") == key:
            log(f"{name}: reusing {folder} (trained in {info['train_seconds']:.1f} s)")
            return load_image_model(folder), {**info, "reused": True}
    model, info = train_image(mcfg, *train, tcfg, progress=False, model_id=name)
    save_image_model(model, folder, name, {"split": info["split"]}, overwrite=True)
    keep = {k: info[k] for k in ("train_seconds", "steps", "epochs", "split") if k in info}
    keep["run_signature"] = key
    write_json(info_path, keep)
    log(f"{name}: trained {info['steps']} steps in {info['train_seconds']:.1f} s "
        f"({1000 * info['train_seconds'] / max(1, info['steps']):.0f} ms/step)")
    return model, keep


def evaluate(model, train: tuple, test: tuple, dims: Sequence[int], threads: int) -> dict:
    """Linear and 1-NN top-1 at every prefix (the training images are the gallery), with
    ``threads`` torch threads."""
    from nestemb.device import torch_threads

    with torch_threads(threads):
        gallery, queries = model.encode(train[0]), model.encode(test[0])
        return {"linear_top1": linear_top1(model, queries, test[1]),
                "knn_top1": knn_top1(queries, test[1], gallery, train[1], dims),
                "_gallery": gallery, "_queries": queries}  # fmt: skip


def step_seconds(configs: dict[str, Any], train: tuple, tcfg, steps: int, rounds: int) -> dict[str, float]:
    """Seconds per training step of a fresh model of every config (the library's step: augment,
    forward-backward of :func:`~nestemb.train.image.batch_loss`, which trains an elastic model's
    sandwich of widths, AdamW). ``rounds`` rounds of ``steps`` steps each, the models in turn
    within a round, each keeping its best round: a training time read off two runs made at
    different moments measures the machine's load as much as the models."""
    import torch

    from nestemb.device import torch_threads
    from nestemb.losses import check_weights
    from nestemb.models.image import ImageModel, mix_lists
    from nestemb.train.image import augment_batch, batch_loss, default_weights, sample_widths

    images, labels = torch.from_numpy(np.array(train[0])), torch.from_numpy(train[1].astype(np.int64))
    best = {name: float("inf") for name in configs}
    with torch_threads(tcfg.threads):
        nets = {name: ImageModel(cfg).train() for name, cfg in configs.items()}
        opts = {name: torch.optim.AdamW(net.parameters(), lr=tcfg.lr) for name, net in nets.items()}
        gen = torch.Generator().manual_seed(tcfg.seed)
        for r in range(rounds + 1):  # round 0 warms up
            for name, net in nets.items():
                cfg = configs[name]
                w = torch.tensor(check_weights(tcfg.weights or default_weights(cfg.nesting), cfg.nesting))
                start = time.perf_counter()
                for _ in range(steps):
                    idx = torch.randint(len(images), (tcfg.batch_size,), generator=gen)
                    x = augment_batch(net.preprocess(images[idx]), gen, tcfg.augment, tcfg.shift)
                    widths = (sample_widths(cfg.widths, gen, tcfg.widths_per_step, tcfg.always_widths,
                                            tcfg.mixed_widths, mix_lists(cfg)) if cfg.widths else None)
                    loss = batch_loss(net, x, labels[idx], w, widths=widths, distill=tcfg.width_distill)
                    opts[name].zero_grad(set_to_none=True)
                    loss.backward()
                    opts[name].step()
                if r:
                    best[name] = min(best[name], (time.perf_counter() - start) / steps)
    return best


def throughput(models: dict[str, Any], images: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """Encode images/s of every model on ``images`` (batches of 1,024, ``threads`` torch
    threads): ``rounds`` rounds, each timing every model once in turn, and each model keeps its
    best round. Interleaving spreads a burst of load from other processes over all models
    instead of one, and the best round is the one least disturbed."""
    from nestemb.device import torch_threads

    best = {name: float("inf") for name in models}
    with torch_threads(threads):
        for model in models.values():
            model.encode(images[:1024])  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model.encode(images)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(len(images) / s, 1) for name, s in best.items()}


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
    ap.add_argument("--arch", default="mlp", choices=["mlp", "cnn", "vit"])
    ap.add_argument("--widths", type=_csv(float), default=(0.125, 0.25, 0.5, 1.0))
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps of every model "
                    f"(default {DEFAULT_STEPS}; 0: the library's schedule)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (training and encoding)")
    ap.add_argument("--mnm", type=_csv(float), default=None,
                    help="Mix'n'Match budgets (fractions of the full model's multiply-adds; default: "
                         "every mixed list of the model's family, mix_lists, at its own cost)")
    ap.add_argument("--quarter", type=float, default=0.25, help="the submodel whose queries search "
                    "the full model's gallery (its own targets)")
    ap.add_argument("--limit-train", type=int, default=None, help="use the first N training images (checks)")
    ap.add_argument("--limit-test", type=int, default=None, help="use the first N test images (checks)")
    ap.add_argument("--fresh", action="store_true", help="retrain even when --work holds the models")
    ap.add_argument("--width-distill", type=float, default=10.0,
                    help="the elastic model's in-place distillation weight (the library's default is 0: "
                         "off; 10 measured best for submodel queries on the full gallery, MLP)")
    ap.add_argument("--widths-per-step", type=int, default=3,
                    help="granularities the elastic model trains per step (3: the sandwich; 4: all)")
    ap.add_argument("--unbiased-widths", action="store_true",
                    help="weight each sampled middle width's loss so a step's expected loss is every width's")
    ap.add_argument("--always-widths", type=_csv(float), default=None,
                    help="widths besides the full one that every step trains (default: the smallest)")
    ap.add_argument("--mixed-widths", type=float, default=0.0,
                    help="probability that a sampled width is a random Mix'n'Match list instead (0: off)")
    ap.add_argument("--timing-images", type=int, default=20000, help="images encoded per timing round")
    ap.add_argument("--timing-rounds", type=int, default=5, help="timing rounds (each model keeps its best)")
    ap.add_argument("--calibration", type=int, default=2000,
                    help="training images that re-estimate a Mix'n'Match submodel's batch norms")
    ap.add_argument("--timing-steps", type=int, default=30, help="training steps per timing round")
    ap.add_argument("--seeds", type=_csv(int), default=None,
                    help="several seeds: one run per seed under OUT/seedS/, then OUT/summary.md and "
                         "OUT/summary.json with the mean and spread of every target's figure")
    ap.add_argument("--combine", nargs="+", type=Path, default=None, metavar="DIR",
                    help="train nothing: summarize earlier runs (DIR/results.json, one seed each, the same "
                         "settings) into OUT/summary.md and OUT/summary.json")
    a = ap.parse_args(argv)
    command = "python benchmarks/elastic.py" + ("" if not argv else " " + shlex.join(argv))
    if a.combine:
        try:
            runs = same_setting_runs(a.combine)
        except ValueError as e:
            ap.error(f"--combine: {e}")
        Path(a.out).mkdir(parents=True, exist_ok=True)
        summarize(runs, Path(a.out), command)
        return 0
    if not a.seeds:
        run_seed(a, Path(a.out), command)
        return 0
    runs = [run_seed(argparse.Namespace(**{**vars(a), "seed": s}), Path(a.out) / f"seed{s}", command)
            for s in a.seeds]
    summarize(runs, Path(a.out), command)
    return 0


def seed_figures(results: dict) -> dict[str, float]:
    """The figures behind every target of one seed's ``results.json`` (percent points, ratios).

    >>> r = {"widths": [0.5, 1.0], "dims": [2, 64], "cross_gallery": {"queries_width": 0.5,
    ...      "sub_on_full": {"1/2": [.5, .8]}, "sub_on_own": {"1/2": [.5, .79]},
    ...      "full_on_full": [.6, .82]}, "train_ratio": 1.5,
    ...      "models": {"1/2": {"linear_top1": [.8, .9], "throughput_ratio": 3.5},
    ...                 "1": {"linear_top1": [.8, .92]}, "indep 1/2": {"linear_top1": [.8, .905]},
    ...                 "indep 1": {"linear_top1": [.8, .921]},
    ...                 "mnm(x)": {"kind": "mix-n-match", "linear_top1": [.8, .91], "line": .908}}}
    >>> {k: round(v, 2) for k, v in seed_figures(r).items()}   # doctest: +NORMALIZE_WHITESPACE
    {'gap 1/2 (pt)': -0.5, 'gap 1 (pt)': -0.1, 'mnm(x) - line (pt)': 0.2,
     '1/2 on full - own (pt)': 1.0, '1/2 on full - full/full (pt)': -2.0,
     '1/2 throughput (x full)': 3.5, 'training (x full)': 1.5}
    """
    rows, out = results["models"], {}
    for g in results["widths"]:
        n = wname(g)
        out[f"gap {n} (pt)"] = 100 * (rows[n]["linear_top1"][-1] - rows[f"indep {n}"]["linear_top1"][-1])
    for n, r in rows.items():
        if r.get("kind") == "mix-n-match":
            out[f"{n} - line (pt)"] = 100 * (r["linear_top1"][-1] - r["line"])
    cg = results["cross_gallery"]
    q = wname(cg["queries_width"])
    ci = cg.get("dims", results["dims"])
    i = ci.index(TARGETS["cross_dim"]) if TARGETS["cross_dim"] in ci else len(ci) - 1
    out[f"{q} on full - own (pt)"] = 100 * (cg["sub_on_full"][q][i] - cg["sub_on_own"][q][i])
    out[f"{q} on full - full/full (pt)"] = 100 * (cg["sub_on_full"][q][i] - cg["full_on_full"][i])
    if "affine_aligned_on_full" in cg:  # runs since 2026-12-06 (fifth session)
        out[f"{q} affine-aligned on full - full/full (reference, pt)"] = 100 * (
            cg["affine_aligned_on_full"][i] - cg["full_on_full"][i])
    out[f"{q} throughput (x full)"] = rows[q]["throughput_ratio"]
    out["training (x full)"] = results["train_ratio"]
    return out


SETTINGS = ("arch", "widths", "dims", "steps", "threads", "width_distill", "widths_per_step", "unbiased_widths",
            "always_widths", "mixed_widths", "n_train", "n_test")
"""What makes seed runs comparable: ``--combine`` refuses runs that differ in any of these."""
OLDER_DEFAULTS = {"widths_per_step": 3, "unbiased_widths": False, "always_widths": None, "mixed_widths": 0.0}
"""Settings that runs from before their option existed do not record: they ran the default."""


def same_setting_runs(dirs: Sequence[Path]) -> list[dict]:
    """The ``results.json`` of every folder in ``dirs``, checked to be one seed each of the same
    settings (:data:`SETTINGS`); ``ValueError`` names the folder and the setting otherwise.

    >>> import tempfile, json
    >>> d = Path(tempfile.mkdtemp())
    >>> for s, k in ((0, 3), (1, 4)):
    ...     (d / f"s{s}").mkdir(); _ = (d / f"s{s}" / "results.json").write_text(
    ...         json.dumps({"arch": "cnn", "seed": s, "widths_per_step": k}))
    >>> same_setting_runs([d / "s0", d / "s1"])
    Traceback (most recent call last):
    ValueError: ...s1 has widths_per_step 4, ...s0 has 3
    """
    runs: list[dict] = []
    first: tuple[Path, dict] | None = None
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise ValueError(f"{d} holds no results.json")
        r = {**OLDER_DEFAULTS, **read_json(path)}
        if first is None:
            first = (d, r)
        for k in SETTINGS:
            if r.get(k) != first[1].get(k):
                raise ValueError(f"{d} has {k} {r.get(k)}, {first[0]} has {first[1].get(k)}")
        if r["seed"] in [x["seed"] for x in runs]:
            raise ValueError(f"{d} repeats seed {r['seed']}")
        runs.append(r)
    return runs


def summarize(runs: Sequence[dict], out: Path, command: str) -> dict:
    """Mean and standard deviation over seeds of every target's figure; writes
    ``out/summary.json`` and ``out/summary.md`` (also printed)."""
    per = [seed_figures(r) for r in runs]
    names = [k for k in per[0] if all(k in p for p in per)]
    stats = {k: {"mean": float(np.mean([p[k] for p in per])), "sd": float(np.std([p[k] for p in per], ddof=1))
                 if len(per) > 1 else 0.0, "values": [round(p[k], 3) for p in per]} for k in names}

    def met(k: str, v: float) -> bool | None:
        if "(reference" in k:  # a diagnostic, not a target
            return None
        if k.startswith("gap "):
            return v >= -TARGETS["width_gap_pt"]
        if k.endswith("- line (pt)"):
            return v >= -TARGETS["mnm_slack_pt"]
        if k.endswith("- own (pt)"):
            return v >= 0
        if k.endswith("full/full (pt)"):
            return v >= -TARGETS["cross_vs_full_pt"]
        if k.endswith("throughput (x full)"):
            return v >= TARGETS["throughput_ratio"]
        return v <= TARGETS["train_ratio"]

    for k, st in stats.items():
        st["met"] = met(k, st["mean"])
    seeds = [r["seed"] for r in runs]
    runs_by = sorted({r["command"] for r in runs})  # several when earlier runs were combined
    summary = {"command": command, "arch": runs[0]["arch"], "seeds": seeds, "steps": runs[0]["steps"],
               **{k: runs[0].get(k) for k in ("width_distill", "widths_per_step", "unbiased_widths", "always_widths",
                                   "mixed_widths")},
               "run_commands": runs_by, "figures": stats}
    md = [f"# Elastic encoders ({runs[0]['arch'].upper()}), {len(seeds)} seeds", "",
          f"Command: `{command}` (seeds {', '.join(map(str, seeds))}"
          + (")" if "--combine" in command else "; one run each under `seedS/`)"), "",
          *([f"Runs combined: {', '.join(f'`{c}`' for c in runs_by)}", ""] if len(runs_by) > 1 else []),
          table(["figure", "mean", "sd", "per seed", "target met (mean)?"],
                [[k, f"{st['mean']:+.2f}" if "pt" in k else f"{st['mean']:.2f}", f"{st['sd']:.2f}",
                  " / ".join(f"{v:g}" for v in st["values"]),
                  "-" if st["met"] is None else "met" if st["met"] else "MISSED"]
                 for k, st in stats.items()]), ""]  # fmt: skip
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text("\n".join(md))
    print("\n".join(md))
    return summary


def run_seed(a: argparse.Namespace, out: Path, command: str) -> dict:
    """One run of the benchmark at seed ``a.seed``, written under ``out``; returns its results."""
    import torch

    from nestemb.errors import NestembError
    from nestemb.maps.adapter import fit_adapter
    from nestemb.models.elastic import extract, layer_units, mix_n_match, multiply_adds
    from nestemb.models.image import LAYERS, check_widths, make_model_config, mix_lists
    from nestemb.nesting import check_compatible
    from nestemb.plotting import line_plot, scatter_pareto
    from nestemb.train.image import ImageTrainConfig

    wall = time.perf_counter()
    widths = check_widths(a.widths)
    data = resolve_fashion_mnist(a.data)
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
    tcfg = ImageTrainConfig(steps=steps, seed=a.seed, threads=a.threads, width_distill=a.width_distill,
                           widths_per_step=a.widths_per_step, unbiased_widths=a.unbiased_widths,
                           always_widths=a.always_widths, mixed_widths=a.mixed_widths)
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
    # default: every mixed list of the model's Mix'n'Match family, each at its own cost
    picks: list[tuple[float, Any]] = (
        [(b, b) for b in a.mnm] if a.mnm is not None else
        [(round(multiply_adds(ecfg, layer_units(ecfg, ks)) / full_macs, 4), tuple(widths[k] for k in ks))
         for ks in mix_lists(ecfg) if len(set(ks)) > 1])
    calib = train[0][np.random.default_rng(a.seed).choice(len(train[0]), min(a.calibration, len(train[0])),
                                                          replace=False)]
    mnm_rows = []
    for b, lw in picks:
        try:
            lw = mix_n_match(ecfg, b) if a.mnm is not None else lw
        except NestembError as e:
            log(f"Mix'n'Match budget {b}: {e}")
            continue
        if len(set(lw)) == 1:
            log(f"Mix'n'Match budget {b}: picks the uniform width {lw[0]}; skipped")
            continue
        name = "mnm(" + ",".join(wname(g) for g in lw) + ")"
        if name in subs:
            continue
        # a mixed list needs its batch norms re-estimated (see nestemb.models.elastic.recalibrate)
        subs[name] = extract(parent, list(lw), calibration=calib)
        rows[name] = {"kind": "mix-n-match", "budget": b, "layer_widths": list(lw),
                      "channels": list(subs[name].config.channels)}
        mnm_rows.append(name)
    for g in widths:
        rows[f"indep {wname(g)}"] = {"kind": "independent", "width": g, "layer_widths": [g] * L,
                                     "channels": list(indep_cfg[g].layer_channels)}
        subs[f"indep {wname(g)}"] = models[f"indep-w{g:g}"]

    # -- evaluation: grid, then throughput (same threads, interleaved rounds, best of each)
    embeds = {}
    for name, model in subs.items():
        ev = evaluate(model, train, test, dims, a.threads)
        embeds[name] = (ev.pop("_gallery"), ev.pop("_queries"))
        macs = multiply_adds(ecfg, model.config.layer_channels)
        rows[name].update(ev, multiply_adds=macs, cost=round(macs / full_macs, 4))
        log(f"{name:>18}: linear {pct(ev['linear_top1'][-1])}, 1-NN {pct(ev['knn_top1'][-1])}")
    for name, ips in throughput(subs, train[0][: a.timing_images], a.threads, a.timing_rounds).items():
        rows[name]["images_per_s"] = ips
        log(f"{name:>18}: {ips:.0f} images/s (best of {a.timing_rounds} rounds)")
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
    # a reference for how much of the gap is misalignment: the quarter width's queries mapped onto
    # the full space by an affine least-squares map fitted on the training images encoded by both
    # (not part of the design: the index takes the submodel's own vectors)
    q = wname(a.quarter)
    mapped = fit_adapter(embeds[q][0], full_gallery, "affine").transform(embeds[q][1])
    aligned = knn_top1(mapped, test[1], full_gallery, train[1], dims)
    try:  # an independent model of the same width is refused by the full model's index
        check_compatible(models[f"indep-w{a.quarter:g}"].manifest, parent.manifest)
        refusal = None
    except NestembError as e:
        refusal = str(e)
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
    per_step = step_seconds({"full": indep_cfg[1.0], "elastic": ecfg}, train, tcfg, a.timing_steps,
                            a.timing_rounds)
    t_el, t_full = per_step["elastic"], per_step["full"]
    log(f"training step: elastic {1000 * t_el:.1f} ms, full {1000 * t_full:.1f} ms "
        f"(best of {a.timing_rounds} interleaved rounds of {a.timing_steps} steps)")
    target(f"elastic training <= {TARGETS['train_ratio']:g}x the full model alone (time per step)",
           f"{t_el / t_full:.2f}x ({1000 * t_el:.1f} vs {1000 * t_full:.1f} ms)",
           t_el / t_full <= TARGETS["train_ratio"])

    # -- outputs
    results = {
        "command": command, "arch": a.arch, "widths": list(widths), "dims": dims, "seed": a.seed,
        "steps": infos["elastic"]["steps"], "threads": a.threads, "width_distill": tcfg.width_distill,
        "widths_per_step": tcfg.widths_per_step, "unbiased_widths": tcfg.unbiased_widths,
        "always_widths": list(tcfg.always_widths) if tcfg.always_widths is not None else None,
        "mixed_widths": tcfg.mixed_widths, "n_train": len(train[0]), "n_test": len(test[0]), "full_multiply_adds": full_macs,
        "models": rows,
        "cross_gallery": {"queries_width": a.quarter, "dims": dims,
                          "sub_on_full": {k: v for k, v in cross.items()},
                          "sub_on_own": {k: rows[k]["knn_top1"] for k in cross},
                          "full_on_full": rows["1"]["knn_top1"],
                          "affine_aligned_on_full": aligned,
                          "independent_refused": refusal},
        "train_seconds": {k: v["train_seconds"] for k, v in infos.items()},
        "step_ms": {"elastic": round(1000 * t_el, 2), "full": round(1000 * t_full, 2)},
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
    series = {f"{q} queries / full gallery": cross[q], f"{q} affine-aligned / full (reference)": aligned,
              f"{q} / {q}": rows[q]["knn_top1"],
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
                 + [[f"{q}, affine-aligned / full (reference)"] + [pct(v) for v in aligned],
                    [f"{q} / {q}"] + [pct(v) for v in rows[q]["knn_top1"]],
                    ["full / full"] + [pct(v) for v in rows["1"]["knn_top1"]]]), "",
           f"The affine-aligned row maps the {q} queries onto the full space by least squares fitted on "
           "the training images encoded by both models (`fit_adapter(..., \"affine\")`): how much of the "
           "gap to full/full an alignment of the spaces closes. A reference, not a setting of the library.", "",
           "An independently trained model of the same width is refused by the full model's index: "
           f"{refusal or 'NOT REFUSED'}", ""]  # fmt: skip
    md += ["## Training time", "",
           table(["model", "train s"], [[k, f"{v['train_seconds']:.1f}"] for k, v in infos.items()]),
           "", f"(whole runs, at different moments: load moves them). Time per step, best of "
           f"{a.timing_rounds} interleaved rounds of {a.timing_steps} steps: elastic {1000 * t_el:.1f} ms, "
           f"full {1000 * t_full:.1f} ms, {t_el / t_full:.2f}x", ""]
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
    return results


if __name__ == "__main__":
    sys.exit(main())
