"""Benchmark: Matryoshka text fine-tuning, nestemb vs sentence-transformers, one run.

From the same base (all-MiniLM-L6-v2), data (SciFact train pairs + one base-mined hard negative
each), steps, batch size, learning rate and seed, train:

  nestemb_1d   nestemb per-prefix contrastive + base-similarity distillation (the CLI recipe)
  st_mrl       sentence-transformers MatryoshkaLoss(MultipleNegativesRankingLoss)
  nestemb_2d   nestemb layer x dimension (Starbucks pairs) + self-distillation
  st_2d        sentence-transformers Matryoshka2dLoss(MultipleNegativesRankingLoss)
  plain        contrastive fine-tuning at full dimension only

and evaluate them and the untouched base on SciFact test (nDCG@10, recall@100) and STS-B test
(Spearman) at every prefix (and at layers ``--layers`` for the 2D methods). All methods run in the same
training loop (``nestemb.text.train.train_text``, finetune recipe); the sentence-transformers
methods swap in their loss modules through its public ``contrastive_loss`` extension point, and
every method reuses one ``BaseEmbeddings`` cache of the base (mining is then a search on cached
vectors), so wall times compare losses, not loops. Writes ``results.json``, PNG plots
and ``tables.md`` into ``--out``.

    python benchmarks/text_mrl.py --model minilm --scifact ../shared/data/scifact \\
        --stsb ../shared/data/stsb --device cuda --out runs/bench_text
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestemb.text.train import TextTrainConfig  # noqa: E402

def recipe(args) -> TextTrainConfig:
    """The shared settings; each method changes only its loss."""
    return TextTrainConfig(
        recipe="finetune", device=args.device, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        max_seq_length=args.max_seq_length, distill_weight=args.distill_weight, dims=args.dims,
        distill_source=args.distill_source,
    )


def methods(args) -> dict:
    """name -> (config changes, sentence-transformers loss factory or None)."""
    dims = list(args.dims)

    def st_mrl(model):
        from sentence_transformers.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

        return MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), dims)

    def st_2d(model):
        from sentence_transformers.losses import Matryoshka2dLoss, MultipleNegativesRankingLoss

        return Matryoshka2dLoss(model, MultipleNegativesRankingLoss(model), dims)

    def st_mnrl(model):
        from sentence_transformers.losses import MultipleNegativesRankingLoss

        return MultipleNegativesRankingLoss(model)

    out = {
        "nestemb_1d": ({}, None),
        "st_mrl": ({"distill_weight": 0.0}, st_mrl),
        "nestemb_2d": ({"layers": args.layers, "self_distill_weight": args.self_distill}, None),
        "st_2d": ({"distill_weight": 0.0}, st_2d),
        "plain": ({"nested": False, "distill_weight": 0.0}, None),
        "st_plain": ({"distill_weight": 0.0}, st_mnrl),
    }
    out.update({
        "nestemb_1d_pool": ({"distill_source": "both"}, None),
        "nestemb_1d_pool100": ({"distill_source": "both", "distill_weight": 100.0}, None),
        "nestemb_1d_pool100_w": ({"distill_source": "both", "distill_weight": 100.0,
                                  "weights": (2.0, 1.5) + (1.0,) * (len(dims) - 2)}, None),
    })
    if args.ablation:
        out.update({
            "abl_contrastive_only": ({"distill_weight": 0.0, "hard_negatives": False}, None),
            "abl_hardneg": ({"distill_weight": 0.0}, None),
            "abl_distill_no_hardneg": ({"hard_negatives": False}, None),
            "abl_distill_pool": ({"distill_source": "both"}, None),
            "abl_distill_w5": ({"distill_weight": 5.0}, None),
            "abl_distill_w50": ({"distill_weight": 50.0}, None),
            "abl_weights_small": ({"weights": (2.0, 1.5) + (1.0,) * (len(dims) - 2)}, None),
        })
    return out


def load_data(args):
    from nestemb.data.pairs import read_sts
    from nestemb.text.train import load_train_data

    data = load_train_data(beir=[args.scifact], beir_split="train")
    sts_train = read_sts(args.sts_train or Path(args.stsb) / "sts-train.csv")
    data.unlabeled.extend(sorted({s for r in sts_train for s in r[:2]}))  # text only, no scores
    return data


def evaluate(enc, args, layers=None) -> dict:
    from nestemb.text.evaluate import run_eval_retrieval, run_eval_sts

    bs = 256 if args.device == "cuda" else 64
    r = run_eval_retrieval(args.scifact, dims=args.dims, layers=layers, batch_size=bs, encoder=enc)
    s = run_eval_sts(Path(args.stsb) / "sts-test.csv", dims=args.dims, layers=layers,
                     batch_size=bs, encoder=enc)
    return {"ndcg10": r["ndcg10"], "recall100": r["recall100"], "spearman": s["spearman"]}


def step_overhead(args, base_state, data) -> dict:
    """Per-step time of per-prefix losses vs the plain loss on identical batches (no mining, no
    distillation), alternating runs to share noise."""
    import torch

    from nestemb.text.encoder import load_text_model
    from nestemb.text.train import train_text

    n = args.overhead_steps
    times = {"plain": [], "per_prefix": [], "per_prefix_distill": []}
    for _ in range(3):
        for name in times:
            enc = load_text_model(args.model, device=args.device)
            cfg = dataclasses.replace(recipe(args), steps=n, hard_negatives=False,
                                      distill_weight=20.0 if name.endswith("distill") else 0.0,
                                      nested=name != "plain")
            if args.device == "cuda":
                torch.cuda.synchronize()
            _, st = train_text(data, cfg, encoder=enc)
            times[name].append(st["train_loop_s"] / n)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"step_s": med, "all": times,
            "overhead_per_prefix": med["per_prefix"] / med["plain"] - 1,
            "overhead_per_prefix_distill": med["per_prefix_distill"] / med["plain"] - 1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--scifact", required=True)
    p.add_argument("--stsb", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=TextTrainConfig.steps)
    p.add_argument("--dims", default="32,64,128,256,384")
    p.add_argument("--layers", default="2,4,6", help="exit layers of the 2D methods")
    p.add_argument("--sts-train", default=None, help="STS TSV whose sentences (no scores) join "
                   "the unlabeled pool (default: STSB/sts-train.csv)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=TextTrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--distill-weight", type=float, default=TextTrainConfig.distill_weight)
    p.add_argument("--distill-source", default=TextTrainConfig.distill_source)
    p.add_argument("--self-distill", type=float, default=1.0)
    p.add_argument("--methods", default="base,nestemb_1d,st_mrl,nestemb_2d,st_2d,plain")
    p.add_argument("--ablation", action="store_true")
    p.add_argument("--overhead-steps", type=int, default=0)
    p.add_argument("--out", default="runs/bench_text")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    args.dims = tuple(int(x) for x in args.dims.split(","))
    args.layers = tuple(int(x) for x in args.layers.split(","))

    import torch

    from nestemb.text.encoder import load_text_model
    from nestemb.text.train import train_text

    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    table = methods(args)
    if args.ablation:
        names += [k for k in table if k.startswith("abl_") and k not in names]
    results = {"config": {**vars(args), "recipe": dataclasses.asdict(recipe(args))},
               "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "dims": list(args.dims), "methods": {}}
    # encode every training text once with the base (shared by every method; its time is
    # reported separately as mining_s)
    from nestemb.text.train import BaseEmbeddings

    t = time.perf_counter()
    base_enc = load_text_model(args.model, device=args.device)
    if args.max_seq_length:
        base_enc.model.max_seq_length = args.max_seq_length
    cache = BaseEmbeddings(base_enc)
    cache(data.texts())
    results["mining_s"] = time.perf_counter() - t
    print(f"encoded the training texts with the base in {results['mining_s']:.1f}s", flush=True)
    for name in names:
        t = time.perf_counter()
        enc = load_text_model(args.model, device=args.device)
        entry: dict = {}
        if name != "base":
            changes, st_factory = table[name]
            cfg = dataclasses.replace(recipe(args), **changes)
            override = None
            if st_factory is not None:
                st_loss = st_factory(enc.model)
                override = lambda model, feats, _l=st_loss: _l(feats, None)  # noqa: E731
            _, stats = train_text(data, cfg, encoder=enc, base_embeddings=cache,
                                  contrastive_loss=override)
            entry["train"] = stats
            entry["config"] = {k: v for k, v in changes.items()}
        entry.update(evaluate(enc, args))
        if name in ("base", "nestemb_2d", "st_2d"):
            entry["layers"] = list(args.layers)
            entry["by_layer"] = evaluate(enc, args, args.layers)
        results["methods"][name] = entry
        print(f"{name}: ndcg10 {_f(entry['ndcg10'])} | sts {_f(entry['spearman'])} | "
              f"train {entry.get('train', {}).get('wall_s', 0):.1f}s | total "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    if args.overhead_steps:
        results["overhead"] = step_overhead(args, None, data)
        print("overhead", json.dumps(results["overhead"]["step_s"]),
              results["overhead"]["overhead_per_prefix"], flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, out)
    return 0


def _f(xs) -> str:
    return " ".join(f"{x:.3f}" for x in xs)


def write_report(results: dict, out: Path) -> None:
    """Markdown tables + PNG plots from a results dict."""
    from nestemb.plotting import line_plot

    dims = results["dims"]
    meth = results["methods"]
    lines = []
    for key, title in (("ndcg10", "SciFact test nDCG@10"), ("recall100", "SciFact test recall@100"),
                       ("spearman", "STS-B test Spearman")):
        lines += [f"**{title}**", "", "| method | " + " | ".join(map(str, dims)) + " | train s |",
                  "|---" * (len(dims) + 2) + "|"]
        for name, e in meth.items():
            tr = e.get("train", {}).get("wall_s")
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in e[key])
                         + f" | {tr:.1f} |" if tr is not None else f"| {name} | "
                         + " | ".join(f"{v:.3f}" for v in e[key]) + " | - |")
        lines.append("")
        line_plot(out / f"{key}.png", dims, {n: e[key] for n, e in meth.items()},
                  xlabel="dimensions (prefix)", ylabel=title, title=title)
    for name, e in meth.items():
        if "by_layer" not in e:
            continue
        for key, title in (("ndcg10", "SciFact nDCG@10"), ("spearman", "STS-B Spearman")):
            lines += [f"**{name}: {title} by layer x dim**", "",
                      "| layer | " + " | ".join(map(str, dims)) + " |", "|---" * (len(dims) + 1) + "|"]
            for la, row in zip(e["layers"], e["by_layer"][key]):
                lines.append(f"| {la} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
            lines.append("")
    if "overhead" in results:
        o = results["overhead"]
        lines += ["**Step time (s), identical batches, median of 3**", "",
                  "| plain | per-prefix | per-prefix + distill | overhead per-prefix |",
                  "|---|---|---|---|",
                  f"| {o['step_s']['plain']:.4f} | {o['step_s']['per_prefix']:.4f} | "
                  f"{o['step_s']['per_prefix_distill']:.4f} | {100 * o['overhead_per_prefix']:+.1f}% |",
                  ""]
    (out / "tables.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
