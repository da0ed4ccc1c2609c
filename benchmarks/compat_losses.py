"""Why compatible training failed, loss by loss: one old -> new step on Fashion-MNIST at the
trainer's default schedule.

The old model knows classes 0-4 (all their training images, 32-d, nesting 8/16/32); each new
model is trained on all 10 classes (64-d, nesting 8/16/32/64) with one compatibility setup. The
stored gallery is the 60,000 training images encoded by the old model; the queries are 2,000
stratified test images. Reported: 1-NN top-1 at 8/16/32 dims for old/old, new/old (new queries,
old gallery: the criterion's first inequality) and new/new, at every new prefix.

Setups (``--methods``, comma-separated): ``independent``, ``bct`` (old classifier on the new
features), ``prefix`` (:meth:`CompatConfig.prefix` as it stands), and variants spelled
``prefix-i<influence>-d<distill>-c<contrast>-t<temperature>`` (missing parts take
:meth:`CompatConfig.prefix`'s defaults), e.g. ``prefix-c0`` for influence + distillation only.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/compat_losses.py \\
        --methods independent,bct,prefix-c0,prefix-c1-t0.1,prefix

Models are cached under ``--cache`` by setup name (delete a folder to retrain it); results go
to ``--out/results.json`` (merged with earlier runs) and ``--out/table.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist"
DIMS = (8, 16, 32)


def config(method: str, old):
    """The CompatConfig of a setup name (None for ``independent``)."""
    from nestemb.train.compatible import CompatConfig

    if method == "independent":
        return None
    if method == "bct":
        return CompatConfig.bct(old)
    if method != "prefix" and not method.startswith("prefix-"):
        raise SystemExit(f"unknown method {method!r}")
    names = {"i": "influence", "d": "distill", "c": "contrast", "t": "temperature"}
    parts = {names[p[0]]: float(p[1:]) for p in method.split("-")[1:]}
    return CompatConfig.prefix(old, **parts)


def main(argv: list[str] | None = None) -> int:
    import torch

    from nestemb.data.idx import load_idx
    from nestemb.eval.metrics import retrieval_metrics
    from nestemb.io import write_json
    from nestemb.models.image import load_image_model, make_model_config, save_image_model
    from nestemb.nesting import prefix_view
    from nestemb.train.image import ImageTrainConfig, train_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--methods", type=lambda v: v.split(","), default=["independent", "bct",
                                                                        "prefix"])
    ap.add_argument("--cache", default="runs/compat_losses")
    ap.add_argument("--out", default="docs/results/upgrade/losses")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_idx(args.data, "train")
    xt, yt = load_idx(args.data, "t10k")
    rng = np.random.default_rng(7)
    q = np.sort(np.concatenate([rng.permutation(np.nonzero(yt == c)[0])[:200] for c in range(10)]))
    cache, out = Path(args.cache), Path(args.out)

    def train(name, classes, dim, nesting, compat=None):
        folder = cache / name
        if (folder / "manifest.json").is_file():
            return load_image_model(folder)
        rows = np.nonzero(y < classes)[0]
        cfg = make_model_config("mrl", dim=dim, dims=nesting, images=x, cosine=True, width=8,
                                num_classes=classes)
        t = time.perf_counter()
        model, info = train_image(cfg, x[rows], y[rows], ImageTrainConfig(
            holdout=0, seed=classes, device="cpu"), progress=False, compat=compat,
            model_id=name)
        save_image_model(model, folder, name, {"compat": info.get("compat")}, overwrite=True)
        print(f"{name}: {info['steps']} steps in {time.perf_counter() - t:.0f} s", flush=True)
        return load_image_model(folder)

    def top1(queries, gallery, d):
        return retrieval_metrics(prefix_view(queries, d), yt[q], prefix_view(gallery, d), y,
                                 dims=(d,), k=10)["knn_top1"][0]

    old = train("old", 5, 32, DIMS)
    g_old, q_old = old.encode(x), old.encode(xt[q])
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() \
        else {}
    res["old/old"] = [top1(q_old, g_old, d) for d in DIMS]
    print("old/old", res["old/old"], flush=True)
    for method in args.methods:
        new = train(method, 10, 64, DIMS + (64,), config(method, old))
        g_new, q_new = new.encode(x), new.encode(xt[q])
        res[method] = {"new/old": [top1(q_new, g_old, d) for d in DIMS],
                       "new/new": [top1(q_new, g_new, d) for d in DIMS + (64,)],
                       "compat": new.manifest.extra.get("compat")}
        print(method, res[method]["new/old"], res[method]["new/new"], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    oo = res["old/old"]
    lines = ["| setup | new/old 8 / 16 / 32 (old/old " + " / ".join(f"{v:.3f}" for v in oo)
             + ") | passes | new/new 8 / 16 / 32 / 64 |", "|---|---|---|---|"]
    for method, r in res.items():
        if method == "old/old":
            continue
        passes = sum(a > b for a, b in zip(r["new/old"], oo))
        lines.append(f"| {method} | " + " / ".join(f"{v:.3f}" for v in r["new/old"])
                     + f" | {passes} of 3 | " + " / ".join(f"{v:.3f}" for v in r["new/new"]) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
