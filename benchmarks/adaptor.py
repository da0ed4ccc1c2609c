"""Benchmark: nesting retrofits (:func:`nestemb.maps.fit_retrofit`, formerly "nesting adaptors";
the method keys keep the old name so earlier results compare) on frozen text encoders
(Matryoshka-Adaptor, Yoon et al. 2024).

For each frozen encoder (all-MiniLM-L6-v2; all-mpnet-base-v2 too when its embeddings are already
in the cache, this script never encodes with mpnet), compare at every prefix:

  truncated           the base embedding, sliced and re-normalized
  pca                 PCA fitted on the SciFact corpus embeddings (centered, as scikit-learn)
  pca-uncentered      the uncentered PCA rotation of the same embeddings (the adaptor's start)
  pca-sentences       PCA fitted on the STS-B train + SNLI sentences (centered)
  adaptor-corpus      nesting adaptor, unsupervised, fitted on the SciFact corpus embeddings
  adaptor-corpus-mlp  the same with the residual MLP
  adaptor-sentences   unsupervised on STS-B train + a sample of SNLI sentences (never labels)
  adaptor-supervised  supervised on SciFact *train* pairs (query, relevant document), with the
                      corpus as unsupervised regulariser
  finetuned (ref.)    the fully fine-tuned Matryoshka MiniLM (``nestemb text train`` on SciFact
                      train, CPU recipe), read from docs/results/text/cpu_recipe (measured there)

on SciFact test nDCG@10 (exact search) and STS-B test Spearman, plus each fit's wall time on this
machine. Every adaptor uses the library defaults (chosen on SciFact *train* queries, never the
test queries). Writes ``results.json``, ``tables.md`` and PNG plots into ``--out``.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/adaptor.py \\
        --data ../shared/data --out docs/results/adaptor
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.text_data import CACHE, embed, load_encoder, scifact, sts  # noqa: E402
from nestemb.eval.retrieval import evaluate_retrieval  # noqa: E402
from nestemb.eval.sts import evaluate_sts  # noqa: E402
from nestemb.io import write_json  # noqa: E402
from nestemb.text.cache import cache_key  # noqa: E402

DIMS = (8, 16, 32, 64, 128, 256)
REFERENCE = Path("docs/results/text/cpu_recipe")
MAX_SEQ = 256  # MiniLM's default truncation; the cached embeddings use it


def snli_sentences(folder: Path, n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` unique premise/hypothesis sentences of SNLI test + dev (texts
    only: the labels are never read)."""
    sents: set[str] = set()
    for split in ("test", "dev"):
        for side in ("s1", "s2"):
            sents.update(t.strip() for t in (folder / f"{side}.{split}").read_text().splitlines()
                         if t.strip())
    ordered = sorted(sents)
    rng = np.random.default_rng(seed)
    return [ordered[i] for i in sorted(rng.choice(len(ordered), min(n, len(ordered)),
                                                  replace=False))]


def cached_only(enc, texts: list[str]) -> np.ndarray | None:
    """The cached embeddings of ``texts`` by ``enc``, or None (never encodes)."""
    man = enc.manifest
    version = f"{man.model_version}-L{enc.model.max_seq_length}"
    path = CACHE / f"{cache_key(man.model_id, version, texts)}.npy"
    return np.load(path) if path.is_file() else None


def pca_map(X: np.ndarray, center: bool):
    from nestemb.maps.nn import pca_init

    W, b = pca_init(X, center)
    return lambda Z: Z @ W + b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/adaptor"))
    ap.add_argument("--models", default="minilm,mpnet",
                    help="encoders; mpnet only if its embeddings are cached")
    ap.add_argument("--snli-sample", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from nestemb.maps import fit_retrofit

    sf = scifact(args.data / "scifact", "test")
    tr = scifact(args.data / "scifact", "train")
    test_q = [sf.data.queries[q] for q in sf.qrels]
    train_qids = list(tr.qrels)
    train_q = [tr.data.queries[q] for q in train_qids]
    sts_sents, sa, sb, gold = sts(args.data / "stsb" / "sts-test.csv")
    sts_train = sts(args.data / "stsb" / "sts-train.csv")[0]
    snli = snli_sentences(args.data / "snli", args.snli_sample, args.seed)
    sentences = sorted(set(sts_train) | set(snli))
    doc_row = {d: i for i, d in enumerate(sf.doc_ids)}
    pair_q, pair_d = zip(*[(i, doc_row[d]) for i, q in enumerate(train_qids)
                           for d, r in tr.qrels[q].items() if r > 0])

    results: dict = {"dims": None, "models": {}, "setup": {
        "scifact_test_queries": len(test_q), "corpus": len(sf.docs),
        "train_pairs": len(pair_q), "sts_test_pairs": len(gold),
        "sentences": {"stsb_train": len(sts_train), "snli_sample": len(snli),
                      "unique": len(sentences)},
        "max_seq_length": MAX_SEQ, "seed": args.seed}}
    for name in args.models.split(","):
        try:
            enc = load_encoder(name, MAX_SEQ)
        except Exception as e:  # e.g. mpnet's packages not installed: report, go on
            print(f"{name}: cannot load the encoder ({e}), skipped", file=sys.stderr)
            continue
        get = (lambda t: embed(enc, t)) if name == "minilm" else (lambda t: cached_only(enc, t))
        D, Q, S = get(sf.docs), get(test_q), get(sts_sents)
        if D is None or Q is None or S is None:
            print(f"{name}: embeddings not cached yet, skipped", file=sys.stderr)
            continue
        QT, SENT = get(train_q), get(sentences)
        d = D.shape[1]
        dims = tuple(m for m in DIMS if m < d) + (d,)
        print(f"{name}: corpus {D.shape}, queries {Q.shape}, sts {S.shape}", file=sys.stderr)

        def evaluate(f) -> dict:
            nd = evaluate_retrieval(f(Q), f(D), list(sf.qrels), sf.doc_ids, sf.qrels, dims)
            E = f(S)
            sp = evaluate_sts(E[sa], E[sb], gold, dims)
            return {"ndcg10": nd["ndcg10"], "recall100": nd["recall100"],
                    "spearman": sp["spearman"]}

        methods: dict = {}
        methods["truncated"] = evaluate(lambda Z: Z)
        methods["pca"] = evaluate(pca_map(D, True))
        methods["pca-uncentered"] = evaluate(pca_map(D, False))
        if SENT is not None:
            methods["pca-sentences"] = evaluate(pca_map(SENT, True))
        fits = {"adaptor-corpus": (D, None, "linear"), "adaptor-corpus-mlp": (D, None, "mlp")}
        if SENT is not None:
            fits["adaptor-sentences"] = (SENT, None, "linear")
        if QT is not None:
            fits["adaptor-supervised"] = (D, (QT[list(pair_q)], D[list(pair_d)]), "linear")
        for method, (X, pairs, kind) in fits.items():
            t0 = time.perf_counter()
            ad = fit_retrofit(X, pairs, kind=kind, source_ref=enc.manifest, seed=args.seed)
            wall = time.perf_counter() - t0
            methods[method] = {**evaluate(ad.transform), "fit_seconds": round(wall, 1),
                               "fit": ad.fit_info_}
            print(f"{name} {method}: fit {wall:.0f} s, nDCG@10 "
                  + " ".join(f"{v:.3f}" for v in methods[method]["ndcg10"]), file=sys.stderr)
        if name == "minilm":
            methods["finetuned (ref.)"] = reference(dims)
        results["models"][name] = {"dims": list(dims), "dim": d, "methods": methods,
                                   "model_version": enc.manifest.model_version}

    results["targets"] = targets(results["models"].get("minilm"))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", results)
    (args.out / "tables.md").write_text(tables(results))
    plots(results, args.out)
    print((args.out / "tables.md").read_text())


def reference(dims) -> dict:
    """The fine-tuned Matryoshka MiniLM, as measured in docs/results/text/cpu_recipe."""
    sci = json.loads((REFERENCE / "scifact_cpu.json").read_text())
    st = json.loads((REFERENCE / "sts_cpu.json").read_text())

    def at(src, key):
        table = dict(zip(src["dims"], src[key]))
        return [table.get(m) for m in dims]

    return {"ndcg10": at(sci, "ndcg10"), "recall100": at(sci, "recall100"),
            "spearman": at(st, "spearman"),
            "source": f"{REFERENCE}/scifact_cpu.json, sts_cpu.json (model version "
                      f"{sci['model_version']}, fine-tuned on SciFact train)"}


def targets(res: dict | None) -> list[dict]:
    """Issue 10's adaptor targets, each with the measured value and met/missed."""
    if res is None:
        return []
    dims, M = res["dims"], res["methods"]

    def v(method, metric, m):
        return M[method][metric][dims.index(m)] if method in M else None

    out = []

    def add(what, value, goal, ok):
        out.append({"target": what, "value": None if value is None else round(value, 4),
                    "goal": goal, "met": bool(ok) if value is not None else None})

    for m in (32, 64):
        pca = v("pca", "ndcg10", m)
        a = v("adaptor-corpus", "ndcg10", m)
        add(f"unsupervised (corpus) nDCG@10 at {m} >= PCA + .02", a, round(pca + 0.02, 4),
            a is not None and a >= pca + 0.02)
    full, base = v("adaptor-corpus", "ndcg10", 384), v("truncated", "ndcg10", 384)
    add("unsupervised (corpus) nDCG@10 loss at 384 <= .005", None if full is None else base - full,
        0.005, full is not None and base - full <= 0.005)
    best = max((v(k, "spearman", 32) or 0, k) for k in ("adaptor-corpus", "adaptor-sentences",
                                                         "adaptor-corpus-mlp"))
    add(f"unsupervised STS-B Spearman at 32 >= .80 (best: {best[1]})", best[0], 0.80,
        best[0] >= 0.80)
    for m, goal in ((64, 0.62), (32, 0.55)):
        s = v("adaptor-supervised", "ndcg10", m)
        add(f"supervised nDCG@10 at {m} >= {goal}", s, goal, s is not None and s >= goal)
    worst = max(M[k]["fit_seconds"] for k in M if "fit_seconds" in M[k])
    add("fit time <= 300 s (slowest adaptor)", worst, 300, worst <= 300)
    return out


def _row(values) -> str:
    return " | ".join("-" if x is None else f"{x:.3f}" for x in values)


def tables(results: dict) -> str:
    lines = ["# Nesting adaptors on frozen encoders", "",
             "Generated by `benchmarks/adaptor.py`. SciFact test nDCG@10 (300 queries, exact "
             "search) and STS-B test Spearman at every prefix; fit = wall time of the fit on this "
             "2-core CPU. `finetuned (ref.)` is the fully fine-tuned Matryoshka MiniLM, not run "
             "here: its figures are read from `docs/results/text/cpu_recipe/` (measured there).",
             ""]
    for name, res in results["models"].items():
        dims = res["dims"]
        for metric, title in (("ndcg10", "SciFact nDCG@10"), ("spearman", "STS-B Spearman")):
            lines += [f"## {name} ({res['dim']}-d): {title}", "",
                      "| method | " + " | ".join(str(m) for m in dims) + " | fit (s) |",
                      "|---|" + "---|" * (len(dims) + 1)]
            for method, r in res["methods"].items():
                fit = r.get("fit_seconds")
                lines.append(f"| {method} | {_row(r[metric])} | "
                             f"{'-' if fit is None else f'{fit:.0f}'} |")
            lines.append("")
    if results.get("targets"):
        lines += ["## Targets (issue 10, MiniLM)", "", "| target | measured | goal | met |",
                  "|---|---|---|---|"]
        for t in results["targets"]:
            met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {met} |")
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, out: Path) -> None:
    from nestemb.plotting import line_plot

    for name, res in results["models"].items():
        for metric, label in (("ndcg10", "SciFact nDCG@10"), ("spearman", "STS-B Spearman")):
            line_plot(out / f"{name}_{metric}.png", res["dims"],
                      {k: r[metric] for k, r in res["methods"].items()},
                      xlabel="prefix dimension", ylabel=label,
                      title=f"{name}: nesting adaptor vs truncation and PCA")


if __name__ == "__main__":
    main()
