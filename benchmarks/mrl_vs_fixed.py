"""MRL vs MRL-E vs fixed-feature (FF-m) models on Fashion-MNIST.

Trains, with the same encoder, schedule, seed and data: one MRL model (a head per prefix), one
MRL-E model (weight-tied heads) and one FF-m model for every m in the nesting; evaluates them
with the same code (linear top-1, 1-NN top-1, mAP@10; the cascade for MRL), and writes
``OUT/results.json``, ``OUT/top1_vs_dim.png``, ``OUT/knn_vs_dim.png`` and a markdown table
(``OUT/table.md``, also printed). Every finished model's figures are kept in ``OUT/parts/`` so a
killed run resumes where it stopped.

    python benchmarks/mrl_vs_fixed.py --out runs/bench_mrl            # ~10 models, the default recipe
    python benchmarks/mrl_vs_fixed.py --out runs/bench_mrl --jobs 4   # 4 models at a time
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nestemb.data.idx import load_idx
from nestemb.data.paths import resolve_fashion_mnist
from nestemb.io import read_json, write_json
from nestemb.models.image import build_manifest
from nestemb.nesting import default_nesting, validate_nesting


def _csv(kind):
    """An argparse type: a comma-separated list of ``kind`` as a tuple."""
    def parse(text: str) -> tuple:
        return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
    return parse


def method_list(methods: list[str], dims: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, head, nesting) of every model to train; FF-full first so that the timing
    comparison with MRL is not biased by warm-up.

    >>> method_list(["mrl", "ff"], (2, 8))
    [('FF-8', 'ff', (8,)), ('MRL', 'mrl', (2, 8)), ('FF-2', 'ff', (2,))]
    >>> method_list(["mrl", "ff-full"], (2, 8))   # FF at the full size only
    [('FF-8', 'ff', (8,)), ('MRL', 'mrl', (2, 8))]
    """
    runs = []
    if "ff" in methods or "ff-full" in methods:
        runs.append((f"FF-{dims[-1]}", "ff", (dims[-1],)))
    runs += [(h.upper(), h, dims) for h in ("mrl", "mrl-e") if h in methods]
    if "ff" in methods:
        runs += [(f"FF-{m}", "ff", (m,)) for m in dims[:-1]]
    return runs


def run_one(name: str, head: str, nesting: tuple, args: dict, eval_threads: int) -> dict:
    """Train and evaluate one model; returns its figures (and saves them under parts/)."""
    import torch

    from nestemb.eval.image import evaluate_image_model
    from nestemb.models.image import make_model_config
    from nestemb.train.image import ImageTrainConfig, train_image

    folder = Path(args["data"])
    train, test = load_idx(folder, "train"), load_idx(folder, "t10k")
    dims = nesting if head != "ff" else None
    shape = {k: args[k] for k in ("width", "channels") if args.get(k)}
    mcfg = make_model_config(head, dim=nesting[-1], dims=dims, images=train[0],
                             cosine=args["classifier"] == "cosine", **shape)  # fmt: skip
    weights = args["weights"] if head != "ff" else None
    tcfg = ImageTrainConfig(epochs=args["epochs"], steps=args["steps"], seed=args["seed"],
                            weights=weights, threads=args["threads"], device=args["device"],
                            augment=args["augment"], shift=args["shift"], lr=args["lr"],
                            label_smoothing=args["label_smoothing"])  # fmt: skip
    model, info = train_image(mcfg, *train, tcfg, progress=False)
    model.manifest = build_manifest(model, name, {"split": info["split"]})
    torch.set_num_threads(eval_threads)
    ev = evaluate_image_model(model, train, test)
    part = {"name": name, "head": head, "dims": list(nesting), "train_seconds": info["train_seconds"],
            **{k: ev[k] for k in ("linear_top1", "knn_top1", "map10", "cascade", "eval_seconds")}}  # fmt: skip
    write_json(Path(args["out"]) / "parts" / f"{name}.json", part)
    print(f"{name}: train {info['train_seconds']:.0f} s, linear {ev['linear_top1'][-1]:.4f}, "
          f"1-NN {ev['knn_top1'][-1]:.4f}", flush=True)  # fmt: skip
    return part


def aggregate(parts: dict[str, dict], dims: tuple[int, ...]) -> dict:
    """Per-method lists aligned with ``dims`` (FF-m fills position m of the "FF" row).

    >>> p = {"MRL": {"dims": [2, 4], "linear_top1": [.8, .9], "knn_top1": [.7, .8], "map10": [.6, .7]},
    ...      "FF-2": {"dims": [2], "linear_top1": [.85], "knn_top1": [.75], "map10": [.65]}}
    >>> aggregate(p, (2, 4))["methods"]["FF"]["linear_top1"]
    [0.85, None]
    """
    out: dict = {"dims": list(dims), "methods": {}}
    for name in ("MRL", "MRL-E"):
        if name in parts:
            out["methods"][name] = {k: parts[name][k] for k in ("linear_top1", "knn_top1", "map10")}
    ff = {k: [None] * len(dims) for k in ("linear_top1", "knn_top1", "map10")}
    for i, m in enumerate(dims):
        p = parts.get(f"FF-{m}")
        if p:
            for k in ff:
                ff[k][i] = p[k][0]
    if any(v is not None for v in ff["linear_top1"]):
        out["methods"]["FF"] = ff
    return out


def markdown(agg: dict, metric: str, title: str) -> str:
    """A markdown table of ``metric`` (rows: dims; columns: methods).

    >>> print(markdown({"dims": [2], "methods": {"MRL": {"linear_top1": [0.81234]}}},
    ...                "linear_top1", "top-1"))
    | top-1 | MRL |
    |---:|---:|
    | 2 | 81.23 |
    """
    names = list(agg["methods"])
    lines = [f"| {title} | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, d in enumerate(agg["dims"]):
        cells = []
        for n in names:
            v = agg["methods"][n].get(metric, [None] * len(agg["dims"]))[i]
            cells.append("-" if v is None else f"{100 * v:.2f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="runs/bench_mrl")
    ap.add_argument("--epochs", type=int, default=None, help="default: the library's schedule")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--dims", type=_csv(int), default=None, help="nesting (default 2, 4, ... dim)")
    ap.add_argument("--methods", default="mrl,mrl-e,ff",
                    help="any of mrl, mrl-e, ff (FF-m for every m), ff-full (FF at the full size only)")
    ap.add_argument("--classifier", default="linear", choices=["cosine", "linear"])
    ap.add_argument("--weights", type=_csv(float), default=None,
                    help="MRL/MRL-E prefix loss weights (default 2,1,1,...)")
    ap.add_argument("--width", type=int, default=None, help="encoder width (default: the library's)")
    ap.add_argument("--channels", type=_csv(int), default=None,
                    help="the CNN's channels per layer, e.g. 16,32,32,64,256 (default: from --width)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--augment", type=_csv(str), default=("shift",),
                    help="comma list of shift, flip, or none")
    ap.add_argument("--shift", type=int, default=2)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per model")
    ap.add_argument("--eval-threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="models trained at the same time")
    ap.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    a = ap.parse_args(argv)
    dims = validate_nesting(a.dims) if a.dims else default_nesting(a.dim)
    out = Path(a.out)
    args = {**vars(a), "data": str(resolve_fashion_mnist(a.data)), "weights": a.weights,
            "augment": tuple(x for x in a.augment if x != "none")}
    (out / "parts").mkdir(parents=True, exist_ok=True)
    runs = method_list([m.strip() for m in a.methods.split(",")], dims)
    todo = [r for r in runs if not (out / "parts" / f"{r[0]}.json").is_file()]
    print(f"{len(runs)} models ({len(todo)} to train): {[r[0] for r in runs]}", flush=True)
    start = time.perf_counter()
    eval_threads = a.eval_threads or a.threads
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            for f in [pool.submit(run_one, *r, args, eval_threads) for r in todo]:
                f.result()
    else:
        for r in todo:
            run_one(*r, args, eval_threads)
    parts = {r[0]: read_json(out / "parts" / f"{r[0]}.json") for r in runs}
    agg = aggregate(parts, dims)
    mrl, ff_full = parts.get("MRL"), parts.get(f"FF-{dims[-1]}")
    timing = {n: p["train_seconds"] for n, p in parts.items()}
    results = {**agg, "config": {k: v for k, v in args.items() if k != "out"},
               "train_seconds": timing, "cascade": mrl["cascade"] if mrl else [],
               "wall_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if mrl and ff_full:
        results["mrl_over_ff_full_time"] = round(mrl["train_seconds"] / ff_full["train_seconds"], 3)
    write_json(out / "results.json", results)
    from nestemb.plotting import line_plot

    for metric, fname, label in (("linear_top1", "top1_vs_dim.png", "linear top-1"),
                                 ("knn_top1", "knn_vs_dim.png", "1-NN top-1")):  # fmt: skip
        line_plot(out / fname, dims, {n: v[metric] for n, v in agg["methods"].items()},
                  xlabel="embedding dimension", ylabel=f"Fashion-MNIST test {label}",
                  title=f"seed {a.seed}")  # fmt: skip
    tables = [markdown(agg, "linear_top1", "dim (linear top-1 %)"),
              markdown(agg, "knn_top1", "dim (1-NN top-1 %)"),
              markdown(agg, "map10", "dim (mAP@10 %)")]  # fmt: skip
    casc = ["| cascade drop | test top-1 % | expected dim |", "|---:|---:|---:|"] + [
        f"| {100 * c['drop']:.2f} pt | {100 * c['accuracy']:.2f} | {c['expected_dim']:.2f} |"
        for c in results["cascade"]
    ]
    times = ["| model | train s |", "|---|---:|"] + [f"| {n} | {s:.0f} |" for n, s in timing.items()]
    text = "\n\n".join(tables + ["\n".join(casc), "\n".join(times)])
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
