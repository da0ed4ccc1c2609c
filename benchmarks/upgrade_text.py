"""Text upgrade without re-encoding the gallery (``python benchmarks/upgrade.py text``).

The stored gallery is the SciFact corpus encoded by the base all-MiniLM-L6-v2 (the *old* model).
Each *new* model (the nestemb-trained MiniLM given by ``--trained``; all-mpnet-base-v2 with
``--mpnet``, an optional extra) encodes the test queries. Adapters are fitted on a seeded random
sample of the corpus encoded by both models (never on a test query) and used two ways:

- ``query``: new queries mapped into the old space, searched against the untouched old gallery;
- ``gallery``: the stored old vectors mapped into the new space (no raw text touched), searched
  with new queries.

Reported at every prefix: nDCG@10 old/old, new/new (full re-index), each adapter's cross
retrieval, and the fraction of the re-index gain it recovers,
``(cross - old/old) / (new/new - old/old)``. For pairs of similar quality (MiniLM vs mpnet) the
gain is too small to be a ratio; the table also gives cross / max(old/old, new/new).

Embeddings are cached under ``runs/cache/text`` (``nestemb.text.cache``); MiniLM and mpnet are
truncated at 256 tokens (MiniLM's own limit; mpnet's is 384, which costs twice the CPU time).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nestemb.maps import ModelRef, fit_adapter
from nestemb.eval.retrieval import evaluate_retrieval
from nestemb.io import write_json

from text_data import embed, load_encoder, scifact

KINDS = ("orthogonal", "affine", "mlp")
MIN_GAIN = 0.01  # nDCG@10 points below which the re-index gain is too small to be a ratio


def ndcg(q: np.ndarray, g: np.ndarray, sf, dims) -> list[float]:
    return evaluate_retrieval(q, g, sf.query_ids, sf.doc_ids, sf.qrels, dims)["ndcg10"]


def ref(enc) -> ModelRef:
    m = enc.manifest
    return ModelRef(m.model_id, m.model_version, m.dim)


def one_upgrade(old_enc, new_enc, sf, sample: np.ndarray, seed: int, log) -> dict:
    """All figures for one old -> new upgrade."""
    g_old, q_old = embed(old_enc, sf.docs), embed(old_enc, sf.queries)
    g_new, q_new = embed(new_enc, sf.docs), embed(new_enc, sf.queries)
    d_old, d_new = g_old.shape[1], g_new.shape[1]
    dims_old = [m for m in (32, 64, 128, 256, 384, 512, 768) if m <= d_old]
    dims_new = [m for m in (32, 64, 128, 256, 384, 512, 768) if m <= d_new]
    out = {
        "old": old_enc.manifest.model_id, "new": new_enc.manifest.model_id,
        "n_fit": int(len(sample)), "n_gallery": int(len(g_old)), "n_queries": int(len(q_old)),
        "dims_old": dims_old, "dims_new": dims_new,
        "old_old": ndcg(q_old, g_old, sf, dims_old),
        "new_new": ndcg(q_new, g_new, sf, dims_new),
        "adapters": {},
    }
    if d_old == d_new:  # same width: what happens with no adapter at all
        out["new_old_raw"] = ndcg(q_new, g_old, sf, dims_old)
    for kind in KINDS:
        t = time.perf_counter()
        to_old = fit_adapter(g_new[sample], g_old[sample], kind=kind, seed=seed,
                             source_ref=ref(new_enc), target_ref=ref(old_enc))
        to_new = fit_adapter(g_old[sample], g_new[sample], kind=kind, seed=seed,
                             source_ref=ref(old_enc), target_ref=ref(new_enc))
        fit_s = time.perf_counter() - t
        out["adapters"][kind] = {
            "fit_seconds_both": round(fit_s, 1),
            "query": ndcg(to_old.transform(q_new), g_old, sf, dims_old),
            "gallery": ndcg(q_new, to_new.transform(g_old), sf, dims_new),
        }
        log(f"  {kind}: fitted in {fit_s:.1f} s; query-side {out['adapters'][kind]['query'][-1]:.4f}"
            f", gallery-side {out['adapters'][kind]['gallery'][-1]:.4f}")
    return out


def summarize(r: dict) -> dict:
    """Full-size figures: best adapter per side, gain recovered, share of the better model."""
    oo, nn = r["old_old"][-1], r["new_new"][-1]
    gain = nn - oo
    rows = {}
    for kind, a in r["adapters"].items():
        for side in ("query", "gallery"):
            v = a[side][-1]
            rows[f"{kind}/{side}"] = {
                "ndcg10": v,
                # a ratio over a gain this small is noise: report "-" (and use of_best)
                "gain_recovered": (v - oo) / gain if abs(gain) >= MIN_GAIN else None,
                "of_best": v / max(oo, nn),
            }
    return {"old_old": oo, "new_new": nn, "reindex_gain": gain, "cross": rows}


def table(r: dict) -> str:
    s = summarize(r)
    lines = [f"### {r['old']} -> {r['new']} (adapters fitted on {r['n_fit']} of "
             f"{r['n_gallery']} corpus documents; {r['n_queries']} test queries)", "",
             f"old/old {s['old_old']:.4f} · new/new (re-index) {s['new_new']:.4f} · "
             f"re-index gain {s['reindex_gain']:+.4f}", ""]
    if "new_old_raw" in r:
        lines += [f"new queries on the old gallery with no adapter: {r['new_old_raw'][-1]:.4f}", ""]
    lines += ["| adapter / side | nDCG@10 (full) | gain recovered | of max(old/old, new/new) |",
              "|---|---|---|---|"]
    for name, v in s["cross"].items():
        g = "-" if v["gain_recovered"] is None else f"{v['gain_recovered']:.1%}"
        lines.append(f"| {name} | {v['ndcg10']:.4f} | {g} | {v['of_best']:.1%} |")
    lines += ["", "nDCG@10 per prefix (query side = old dims, gallery side = new dims):", "",
              "| | " + " | ".join(map(str, r["dims_old"])) + " |",
              "|---" * (len(r["dims_old"]) + 1) + "|",
              "| old/old | " + " | ".join(f"{v:.4f}" for v in r["old_old"]) + " |"]
    for kind, a in r["adapters"].items():
        lines.append(f"| {kind} query-side | " + " | ".join(f"{v:.4f}" for v in a["query"]) + " |")
    lines += ["", "| | " + " | ".join(map(str, r["dims_new"])) + " |",
              "|---" * (len(r["dims_new"]) + 1) + "|",
              "| new/new | " + " | ".join(f"{v:.4f}" for v in r["new_new"]) + " |"]
    for kind, a in r["adapters"].items():
        lines.append(f"| {kind} gallery-side | " + " | ".join(f"{v:.4f}" for v in a["gallery"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    from nestemb.plotting import plt, save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        ax.plot(r["dims_old"], r["old_old"], "k--o", label="old/old")
        ax.plot(r["dims_new"], r["new_new"], "k-o", label="new/new (re-index)")
        for kind, a in r["adapters"].items():
            ax.plot(r["dims_old"], a["query"], ":s", label=f"{kind}: new queries -> old space")
            ax.plot(r["dims_new"], a["gallery"], "-^", label=f"{kind}: old gallery -> new space")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prefix dimensions")
        ax.set_ylabel("SciFact nDCG@10")
        ax.set_title(f"{r['old']} -> {r['new']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def run(args) -> None:
    out = Path(args.out)
    sf = scifact(args.scifact)
    rng = np.random.default_rng(args.seed)
    n_fit = max(1, int(round(args.fit_fraction * len(sf.docs))))
    sample = np.sort(rng.choice(len(sf.docs), n_fit, replace=False))
    old = load_encoder("minilm")
    news = [args.trained] if args.trained else []
    if args.mpnet:
        news.append("mpnet")
    if not news:
        raise SystemExit("give --trained MODEL_DIR and/or --mpnet")
    results = []
    for name in news:
        new = load_encoder(name, 256)
        print(f"{old.manifest.model_id} -> {new.manifest.model_id}", flush=True)
        results.append(one_upgrade(old, new, sf, sample, args.seed, lambda s: print(s, flush=True)))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"fit_fraction": args.fit_fraction, "seed": args.seed,
                                      "upgrades": results,
                                      "summary": [summarize(r) for r in results]})
    md = "\n".join(table(r) for r in results)
    (out / "tables.md").write_text(md)
    plot(results, out / "text_upgrade.png")
    print(md)
