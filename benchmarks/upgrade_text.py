"""Text upgrade without re-encoding the gallery (``python benchmarks/upgrade.py text``).

The stored gallery is the SciFact corpus encoded by the base all-MiniLM-L6-v2 (the *old* model);
the *new* model is all-mpnet-base-v2 (``--mpnet``, the optional extra) and/or a nestemb-trained
MiniLM (``--trained``). Maps are fitted on what a user really has (never on a test query):

- **pairs**: a seeded sample of the corpus (``--fit-fraction``, 20 %) encoded by both models,
  then public text encoded by both (the SNLI, STS-B train/dev and MRPC sentences of
  ``../shared/data``, :func:`text_data.public_sentences`). A budget of ``n`` pairs takes the
  corpus sample first, then public sentences; measured at 100 / 500 / 2,000 / all.
- **routes**: ``query`` (new queries mapped into the old space, searched against the untouched
  old gallery) and ``gallery`` (the stored old vectors mapped into the new space, one matrix
  product, searched with new queries).
- **kinds**: every adapter kind (orthogonal, ridge-affine, Matryoshka-aware affine, low-rank +
  residual MLP, MLP, per-cluster Procrustes).
- **pair-free**: :func:`nestemb.maps.fit_unpaired` between the old vectors of one half of the
  corpus and the new vectors of the other half (no item in both), both routes.
- **quality gate**: the held-out estimate of the best map (``fit_adapter(holdout=0.2)``) next to
  the retention it actually reaches.
- **STS-B test**: Spearman of cosine between sentence 1 by the new model and sentence 2 by the
  old model mapped into the new space (gallery route), against new/new and old/old.
- **chain** (with both ``--trained`` and ``--mpnet``): MiniLM -> trained MiniLM -> mpnet,
  composed maps against the direct MiniLM -> mpnet map, both routes.

Retention is ``cross / max(old/old, new/new)`` (nDCG@10 at full width). Writes
``OUT/results.json``, ``OUT/tables.md`` and ``OUT/text_upgrade.png`` (retention against
pairs). Embeddings are cached under ``runs/cache/text``
(``nestemb.text.cache``); MiniLM truncates at 256 tokens, mpnet at ``--mpnet-tokens`` (128 by
default: at 256 its encoding of the corpus takes close to an hour on two CPU cores).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from nestemb.eval.retrieval import evaluate_retrieval
from nestemb.io import write_json
from nestemb.maps import AdapterChain, ModelRef, fit_adapter, fit_unpaired
from nestemb.nesting import prefix_view

from text_data import embed, load_encoder, public_sentences, scifact, sts

# (label, kind, extra parameters)
MAPS = (
    ("orthogonal", "orthogonal", {}),
    ("affine", "affine", {}),
    ("affine-matryoshka", "affine", {"matryoshka": True}),
    ("lowrank", "lowrank", {}),
    ("mlp", "mlp", {}),
    ("cluster", "cluster", {}),
)
BUDGETS = (100, 500, 2000, None)  # None: every pair available
ROUTES = ("query", "gallery")


def ndcg(q: np.ndarray, g: np.ndarray, sf, dims=None) -> list[float]:
    dims = dims or [min(q.shape[1], g.shape[1])]
    return evaluate_retrieval(q, g, sf.query_ids, sf.doc_ids, sf.qrels, dims)["ndcg10"]


def ref(enc) -> ModelRef:
    m = enc.manifest
    return ModelRef(m.model_id, m.model_version, m.dim)


def prefixes(d: int) -> list[int]:
    return [m for m in (32, 64, 128, 256, 384, 512, 768) if m <= d]


class Side:
    """One model's encodings of everything the benchmark uses."""

    def __init__(self, enc, sf, pub, sts_sents):
        self.enc, self.ref = enc, ref(enc)
        self.docs, self.queries = embed(enc, sf.docs), embed(enc, sf.queries)
        self.public, self.sts = embed(enc, pub), embed(enc, sts_sents)
        self.dim = self.docs.shape[1]


def pairs(a: Side, b: Side, corpus_rows: np.ndarray, public_rows: np.ndarray, n: int | None):
    """The first ``n`` pairs (corpus sample first, then public sentences) as (a rows, b rows)."""
    xa = np.concatenate([a.docs[corpus_rows], a.public[public_rows]])
    xb = np.concatenate([b.docs[corpus_rows], b.public[public_rows]])
    return (xa, xb) if n is None else (xa[:n], xb[:n])


def fit(src: Side, tgt: Side, x, y, kind: str, params: dict, seed: int, **kw):
    return fit_adapter(x, y, kind=kind, seed=seed, source_ref=src.ref, target_ref=tgt.ref,
                       **params, **kw)


def cross(old: Side, new: Side, route: str, to_old=None, to_new=None, sf=None, dims=None):
    """nDCG@10 of new queries against the old gallery through one route's map."""
    if route == "query":
        return ndcg(to_old.transform(new.queries), old.docs, sf, dims)
    return ndcg(new.queries, to_new.transform(old.docs), sf, dims)


def sts_spearman(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> float:
    a, b = prefix_view(a, a.shape[1]), prefix_view(b, b.shape[1])
    return float(spearmanr(np.einsum("ij,ij->i", a, b), gold).statistic)


def one_upgrade(old: Side, new: Side, sf, sts_rows, corpus_rows, public_rows, args, log) -> dict:
    """Every figure for one old -> new upgrade."""
    oo, nn = ndcg(old.queries, old.docs, sf)[0], ndcg(new.queries, new.docs, sf)[0]
    best = max(oo, nn)
    out: dict = {"old": old.ref.model_id, "new": new.ref.model_id, "old_old": oo, "new_new": nn,
                 "n_corpus_pairs": int(len(corpus_rows)), "n_public_pairs": int(len(public_rows)),
                 "n_gallery": int(len(old.docs)), "n_queries": int(len(old.queries)),
                 "by_pairs": {}, "seconds": {}}
    log(f"{old.ref.model_id} -> {new.ref.model_id}: old/old {oo:.4f}, new/new {nn:.4f}")
    for n in BUDGETS:
        key = "all" if n is None else str(n)
        xo, xn = pairs(old, new, corpus_rows, public_rows, n)
        out["by_pairs"][key] = {"n": int(len(xo)), "maps": {}}
        for label, kind, params in MAPS:
            row = {}
            for route in ROUTES:
                t = time.perf_counter()
                try:
                    if route == "query":
                        m = fit(new, old, xn, xo, kind, params, args.seed)
                        v = cross(old, new, route, to_old=m, sf=sf)[0]
                    else:
                        m = fit(old, new, xo, xn, kind, params, args.seed)
                        v = cross(old, new, route, to_new=m, sf=sf)[0]
                except Exception as e:  # e.g. too few pairs for a kind: reported, not fatal
                    row[route] = {"error": str(e).splitlines()[0]}
                    continue
                row[route] = {"ndcg10": v, "retained": v / best,
                              "fit_seconds": round(time.perf_counter() - t, 1)}
            out["by_pairs"][key]["maps"][label] = row
            log(f"  {key:>4} pairs {label:>17}: " + ", ".join(
                f"{r} {row[r]['retained']:.1%}" if "retained" in row[r] else f"{r} -"
                for r in ROUTES))
    # the best map over every pair, per prefix, with its gate estimate
    allp = out["by_pairs"]["all"]["maps"]
    best_label, best_route = max(((lb, r) for lb in allp for r in ROUTES if "ndcg10" in allp[lb][r]),
                                 key=lambda t: allp[t[0]][t[1]]["ndcg10"])
    kind, params = next((k, p) for lb, k, p in MAPS if lb == best_label)
    xo, xn = pairs(old, new, corpus_rows, public_rows, None)
    src, tgt, xs, xt = (new, old, xn, xo) if best_route == "query" else (old, new, xo, xn)
    gated = fit(src, tgt, xs, xt, kind, params, args.seed, holdout=0.2)
    out["best"] = {
        "map": best_label, "route": best_route, "ndcg10": allp[best_label][best_route]["ndcg10"],
        "retained": allp[best_label][best_route]["retained"],
        "gate_estimate": gated.fit_info_["quality"],
        "per_prefix": {"dims": prefixes(tgt.dim),
                       "cross": cross(old, new, best_route, to_old=gated, to_new=gated, sf=sf,
                                      dims=prefixes(tgt.dim)),
                       "target_own": ndcg(tgt.queries, tgt.docs, sf, prefixes(tgt.dim))},
    }
    # STS-B test: sentence 1 by the new model, sentence 2 by the old one mapped into the new space
    a_idx, b_idx, gold = sts_rows
    to_new = gated if best_route == "gallery" else fit(old, new, xo, xn, kind, params, args.seed)
    out["sts"] = {
        "old_old": sts_spearman(old.sts[a_idx], old.sts[b_idx], gold),
        "new_new": sts_spearman(new.sts[a_idx], new.sts[b_idx], gold),
        "cross": sts_spearman(new.sts[a_idx], to_new.transform(old.sts[b_idx]), gold),
    }
    out["sts"]["retained"] = out["sts"]["cross"] / max(out["sts"]["old_old"], out["sts"]["new_new"])
    # pair-free: old vectors of one half of the corpus, new vectors of the other half
    rng = np.random.default_rng(args.seed + 1)
    perm = rng.permutation(len(old.docs))
    half_a, half_b = perm[: len(perm) // 2], perm[len(perm) // 2:]
    t = time.perf_counter()
    free_new = fit_unpaired(old.docs[half_a], new.docs[half_b], seed=args.seed,
                            source_ref=old.ref, target_ref=new.ref)
    free_old = fit_unpaired(new.docs[half_b], old.docs[half_a], seed=args.seed,
                            source_ref=new.ref, target_ref=old.ref)
    q = cross(old, new, "query", to_old=free_old, sf=sf)[0]
    g = cross(old, new, "gallery", to_new=free_new, sf=sf)[0]
    # how many of the old gallery's rows land next to their own true new vector
    mapped = prefix_view(free_new.transform(old.docs), new.dim)
    top1 = float(np.mean(np.argmax(mapped @ prefix_view(new.docs, new.dim).T, axis=1)
                         == np.arange(len(mapped))))
    out["pair_free"] = {"query": {"ndcg10": q, "retained": q / best},
                        "gallery": {"ndcg10": g, "retained": g / best},
                        "gallery_top1_own_item": top1,
                        "seconds": round(time.perf_counter() - t, 1),
                        "fit_info": free_new.fit_info_}
    log(f"  pair-free: query {q / best:.1%}, gallery {g / best:.1%}, own-item top-1 {top1:.3f}")
    return out


def chain(old: Side, mid: Side, new: Side, sf, corpus_rows, public_rows, args, log) -> dict:
    """MiniLM -> trained MiniLM -> mpnet: the composed maps against the direct one (the best
    kind of the direct upgrade, every pair)."""
    best = max(ndcg(old.queries, old.docs, sf)[0], ndcg(new.queries, new.docs, sf)[0])
    out: dict = {"models": [old.ref.model_id, mid.ref.model_id, new.ref.model_id], "kinds": {}}
    for label, kind, params in MAPS:
        if label not in ("orthogonal", "affine", "mlp"):
            continue
        xo, xm = pairs(old, mid, corpus_rows, public_rows, None)
        _, xn = pairs(mid, new, corpus_rows, public_rows, None)
        steps_new = [fit(old, mid, xo, xm, kind, params, args.seed),
                     fit(mid, new, xm, xn, kind, params, args.seed)]
        steps_old = [fit(new, mid, xn, xm, kind, params, args.seed),
                     fit(mid, old, xm, xo, kind, params, args.seed)]
        direct_new = fit(old, new, xo, xn, kind, params, args.seed)
        direct_old = fit(new, old, xn, xo, kind, params, args.seed)
        res = {
            "composed": {"gallery": cross(old, new, "gallery", to_new=AdapterChain(steps_new), sf=sf)[0],
                         "query": cross(old, new, "query", to_old=AdapterChain(steps_old), sf=sf)[0]},
            "direct": {"gallery": cross(old, new, "gallery", to_new=direct_new, sf=sf)[0],
                       "query": cross(old, new, "query", to_old=direct_old, sf=sf)[0]},
        }
        for how in res.values():
            for r in list(how):
                how[r] = {"ndcg10": how[r], "retained": how[r] / best}
        out["kinds"][label] = res
        log(f"  chain {label}: composed gallery {res['composed']['gallery']['retained']:.1%}, "
            f"direct gallery {res['direct']['gallery']['retained']:.1%}")
    return out


# ------------------------------------------------------------------------------------- report


def table(r: dict) -> str:
    keys = list(r["by_pairs"])
    lines = [f"### {r['old']} -> {r['new']}", "",
             f"old/old {r['old_old']:.4f} · new/new (re-index) {r['new_new']:.4f}; pairs: "
             f"{r['n_corpus_pairs']} corpus documents then {r['n_public_pairs']} public sentences; "
             f"{r['n_queries']} test queries, {r['n_gallery']} documents", "",
             "nDCG@10 retained (of max(old/old, new/new)), query route / gallery route:", "",
             "| map | " + " | ".join(f"{r['by_pairs'][k]['n']} pairs" for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for label in r["by_pairs"]["all"]["maps"]:
        cells = []
        for k in keys:
            row = r["by_pairs"][k]["maps"][label]
            cells.append(" / ".join(f"{row[x]['retained']:.1%}" if "retained" in row[x] else "-"
                                    for x in ROUTES))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    b, gate = r["best"], r["best"]["gate_estimate"]["agreement"]
    lines += ["", f"Best: {b['map']} ({b['route']} route) nDCG@10 {b['ndcg10']:.4f} = "
              f"{b['retained']:.1%}; its quality gate (20 % of the pairs held out): neighbour "
              f"agreement@10 {gate['mean']:.3f} ({gate['low']:.3f}-{gate['high']:.3f}).", "",
              "| prefix | " + " | ".join(map(str, b["per_prefix"]["dims"])) + " |",
              "|---" * (len(b["per_prefix"]["dims"]) + 1) + "|",
              "| cross (best map) | " + " | ".join(f"{v:.4f}" for v in b["per_prefix"]["cross"]) + " |",
              "| target model's own | " + " | ".join(f"{v:.4f}" for v in b["per_prefix"]["target_own"]) + " |"]
    s, p = r["sts"], r["pair_free"]
    lines += ["", f"STS-B test Spearman: old/old {s['old_old']:.4f}, new/new {s['new_new']:.4f}, "
              f"new vs old mapped {s['cross']:.4f} ({s['retained']:.1%}).", "",
              f"Pair-free (halves of the corpus, no shared item): query route "
              f"{p['query']['ndcg10']:.4f} ({p['query']['retained']:.1%}), gallery route "
              f"{p['gallery']['ndcg10']:.4f} ({p['gallery']['retained']:.1%}); old gallery rows "
              f"whose nearest new vector is their own: {p['gallery_top1_own_item']:.3f}.", ""]
    return "\n".join(lines)


def chain_table(c: dict) -> str:
    lines = ["### Chain " + " -> ".join(c["models"]), "",
             "| kind | composed gallery | direct gallery | composed query | direct query |",
             "|---|---|---|---|---|"]
    for kind, v in c["kinds"].items():
        lines.append(f"| {kind} | " + " | ".join(
            f"{v[how][route]['ndcg10']:.4f} ({v[how][route]['retained']:.1%})"
            for route in ("gallery", "query") for how in ("composed", "direct")) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    from nestemb.plotting import plt, save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        keys = list(r["by_pairs"])
        ns = [r["by_pairs"][k]["n"] for k in keys]
        for label in r["by_pairs"]["all"]["maps"]:
            for route, style in zip(ROUTES, (":s", "-o")):
                ys = [r["by_pairs"][k]["maps"][label][route].get("retained", np.nan) for k in keys]
                ax.plot(ns, ys, style, label=f"{label} ({route})", ms=4)
        for route, v in r["pair_free"].items():
            if isinstance(v, dict) and "retained" in v:
                ax.axhline(v["retained"], ls="--", lw=1, color="grey" if route == "query" else "k")
        ax.axhline(0.95, color="red", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("pairs encoded by both models (corpus sample first, then public text)")
        ax.set_ylabel("nDCG@10 retained (of the better model)")
        ax.set_title(f"{r['old']} -> {r['new']} (dashed: pair-free)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path, dpi=120)


def run(args) -> None:
    out = Path(args.out)
    sf = scifact(args.scifact)
    pub = public_sentences(args.shared, limit=args.public)
    sts_sents, a_idx, b_idx, gold = sts(Path(args.shared) / "stsb" / "sts-test.csv")
    rng = np.random.default_rng(args.seed)
    n_fit = max(1, int(round(args.fit_fraction * len(sf.docs))))
    corpus_rows = rng.permutation(len(sf.docs))[:n_fit]
    public_rows = rng.permutation(len(pub))
    names = [args.trained] if args.trained else []
    if args.mpnet:
        names.append("mpnet")
    if not names:
        raise SystemExit("give --trained MODEL_DIR and/or --mpnet")
    log = lambda s: print(s, flush=True)  # noqa: E731
    old = Side(load_encoder("minilm", 256), sf, pub, sts_sents)
    sides = {n: Side(load_encoder(n, args.mpnet_tokens if n == "mpnet" else 256), sf, pub,
                     sts_sents) for n in names}
    results = [one_upgrade(old, s, sf, (a_idx, b_idx, gold), corpus_rows, public_rows, args, log)
               for s in sides.values()]
    res: dict = {"fit_fraction": args.fit_fraction, "seed": args.seed, "upgrades": results}
    md = "\n".join(table(r) for r in results)
    if args.trained and args.mpnet:
        res["chain"] = chain(old, sides[args.trained], sides["mpnet"], sf, corpus_rows,
                             public_rows, args, log)
        md += "\n" + chain_table(res["chain"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    (out / "tables.md").write_text(md)
    plot(results, out / "text_upgrade.png")
    print(md)
