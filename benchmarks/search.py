"""Search benchmark: nestemb's prefix-aware indexes side by side with FAISS, same run, same data.

Every method is measured on the same gallery and queries, with 1 and 2 threads (FAISS OpenMP,
torch and BLAS threads all set): recall@10 against the exact full-dimension top-10, mean
single-query latency (one query at a time), batch QPS, resident bytes per vector, build time;
for flat (exhaustive) first stages also the bytes scanned per query and the effective GB/s
against the machine's memory bandwidth (numpy sum over a 1 GiB array).

Data sets (see ``search_data.py``): ``fmnist`` (a), ``fmnist-aug`` (b, >= 1M vectors),
``scifact`` (c), ``synthetic`` (development).

    python benchmarks/search.py --datasets scifact fmnist --model runs/quickstart/model
    nohup python benchmarks/search.py --datasets fmnist-aug --n 1000000 \
        --model runs/quickstart/model > runs/bench_search.log 2>&1 &

Writes ``runs/bench_search/<dataset>.json`` and ``<dataset>.png`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# idle OpenMP workers sleep instead of spinning: on a shared, oversubscribed machine spinning
# threads turn a 1 ms multi-threaded scan into 15 ms
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import search_data  # noqa: E402

from nestemb.index import AdaptiveIVFIndex, AdaptiveOPQIndex, FunnelIndex, knn_intersection, tune  # noqa: E402
from nestemb.index.quantize import code_bytes, hnsw_link_bytes  # noqa: E402
from nestemb.index.tune import best_pass_ms, measure  # noqa: E402
from nestemb.nesting import prefix_view  # noqa: E402

K = 10
NESTEMB = ("funnel-flat", "funnel-hnsw", "adaptive-ivf", "adanns-opq")
log = search_data._log


# --------------------------------------------------------------------------- machinery
def set_threads(t: int) -> None:
    import faiss
    import threadpoolctl
    import torch

    faiss.omp_set_num_threads(t)
    torch.set_num_threads(t)
    threadpoolctl.threadpool_limits(t)


def memory_bandwidth_gbs() -> float:
    a = np.ones(1 << 28, dtype=np.float32)  # 1 GiB
    a.sum()
    best = min(_timed(a.sum)[1] for _ in range(3))
    return a.nbytes / best / 1e9


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def near(nest, target, lo=1):
    """The nesting entry closest to ``target`` (>= lo)."""
    cands = [d for d in nest if d >= lo] or list(nest)
    return min(cands, key=lambda d: (abs(math.log(d / target)), d))


class Family:
    """One method: a builder and a list of (label, apply) configurations."""

    def __init__(self, name, build, configs, search, memory, scanned=None):
        self.name, self.build, self.configs, self.search = name, build, configs, search
        self.memory, self.scanned = memory, scanned


def families(X, Xn, nest, nlist, model_id):
    import faiss

    n, D = X.shape
    common = dict(nesting=nest, model_id=model_id)
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if p <= nlist]
    fams = []

    def fsearch(obj, Q):
        return obj.search(np.ascontiguousarray(prefix_view(Q, D)), K)[1]

    def nsearch(obj, Q):
        return obj.search(Q, K)[1]

    # ---- FAISS peers at full dimension
    def b_flat():
        idx = faiss.IndexFlatIP(D)
        idx.add(Xn)
        return idx

    fams.append(Family("faiss-flat", b_flat, [("exact", lambda o: None)], fsearch,
                       lambda o: {"resident": 4.0 * D, "mapped": 0.0}, lambda o: n * 4.0 * D))

    def b_hnsw():
        idx = faiss.IndexHNSWFlat(D, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 40
        idx.add(Xn)
        return idx

    def ef(e):
        def apply(o):
            o.hnsw.efSearch = e
        return apply

    fams.append(Family("faiss-hnsw", b_hnsw, [(f"M=32 ef={e}", ef(e)) for e in (16, 32, 64, 128, 256, 512)],
                       fsearch, lambda o: {"resident": 4.0 * D + hnsw_link_bytes(o), "mapped": 0.0}))

    def b_ivf():
        q = faiss.IndexFlatIP(D)
        idx = faiss.IndexIVFFlat(q, D, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.own_fields = True
        q.this.disown()
        idx.cp.seed = 1234
        idx.train(Xn[np.random.default_rng(0).choice(n, min(n, 256 * nlist), replace=False)])
        idx.add(Xn)
        return idx

    def npr(p):
        def apply(o):
            o.nprobe = p
        return apply

    fams.append(Family("faiss-ivf-flat", b_ivf, [(f"nlist={nlist} nprobe={p}", npr(p)) for p in probes],
                       fsearch, lambda o: {"resident": 4.0 * D + 8, "mapped": 0.0}))
    M = max(4, D // 4)
    while D % M:
        M -= 1

    def b_opq():
        idx = faiss.index_factory(D, f"OPQ{M},IVF{nlist},PQ{M}", faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_VectorTransform(idx.chain.at(0)).niter = 20  # as nestemb's OPQ
        sample = Xn[np.random.default_rng(0).choice(n, min(n, 32768), replace=False)]
        idx.train(sample)
        idx.add(Xn)
        return idx

    def npr_opq(p):
        def apply(o):
            faiss.extract_index_ivf(o).nprobe = p
        return apply

    fams.append(Family("faiss-ivf-opq", b_opq, [(f"OPQ{M} nlist={nlist} nprobe={p}", npr_opq(p)) for p in probes],
                       fsearch, lambda o: {"resident": M + 8.0, "mapped": 0.0}))

    # ---- nestemb: one memory scheme for every index (resident RAM; float32 vectors mmapped)
    def memory(o):
        m = o.bytes_per_vector()
        return {"resident": m["resident"], "mapped": m["mmap"]}

    lists = [s for s in (20, 50, 100, 200, 400, 800, 1600, 3200) if s <= n]
    flat_specs = []
    for dtype in ("float32", "float16", "int8"):
        for d0 in sorted({near(nest, D / 16, 8), near(nest, D / 8, 8), near(nest, D / 4, 8)}):
            if d0 < D:
                flat_specs.append((dtype, d0))
    for d0 in sorted({near(nest, D / 2, 32), D}):
        flat_specs.append(("binary", d0))
    for dtype, d0 in flat_specs:
        def b_funnel(dtype=dtype, d0=d0):
            return FunnelIndex(dims=(d0, D), shortlist=(lists[0],), prefix_dtype=dtype, **common).add(X)

        def sl(dims, shortlist):
            def apply(o):
                o.set_params(dims=dims, shortlist=shortlist)
            return apply

        cfgs = [(f"{dtype} d0={d0} shortlist={s}", sl((d0, D), (s,))) for s in lists]
        # three stages: re-rank the shortlist on a mid prefix (>= 4 d0) before the full vectors,
        # which reads fewer bytes per candidate than a full-dimension re-rank
        mid = next((m for m in nest if 4 * d0 <= m < D), None)
        if mid:
            cfgs += [(f"{dtype} dims={d0},{mid},{D} shortlist={s},{s // 4}", sl((d0, mid, D), (s, s // 4)))
                     for s in lists if s >= 4 * K]

        def scanned(o):
            widths = [code_bytes(o.dims[0], o.prefix_dtype)] + [4.0 * d for d in o.dims[1:]]
            return n * widths[0] + sum(s * w for s, w in zip(o.shortlist, widths[1:]))

        fams.append(Family(f"funnel-flat/{dtype}/{d0}", b_funnel, cfgs, nsearch, memory, scanned))

    def slef(s, e):
        def apply(o):
            o.set_params(shortlist=(s,), ef_search=e)
        return apply

    hcfg = [(s, e) for s in (10, 20, 30, 50, 100, 200) for e in sorted({max(16, s), 2 * s})]
    for dtype, dh in (("float32", near(nest, D / 4, 16)), ("float32", near(nest, D / 2, 16)),
                      ("int8", near(nest, D / 4, 16))):
        def b_fhnsw(dtype=dtype, dh=dh):
            return FunnelIndex(dims=(dh, D), shortlist=(20,), first_stage="hnsw", prefix_dtype=dtype,
                               hnsw_m=32, ef_construction=40, **common).add(X)

        fams.append(Family(f"funnel-hnsw/{dtype}/{dh}", b_fhnsw,
                           [(f"hnsw {dtype} d0={dh} shortlist={s} ef={e}", slef(s, e)) for s, e in hcfg],
                           nsearch, memory))

    dc = near(nest, D / 8, 8)
    # fp16 lists on a D/4 prefix clustered on the same prefix; float32 lists on D/2 clustered on
    # D/8 (AdANNS' decoupling). sq8 lists cap recall at ~0.84 on the 1M augmented gallery.
    for codec, dcl, dsearch, rr in (("fp16", near(nest, D / 4, 8), near(nest, D / 4, 16), 100),
                                    ("flat", dc, near(nest, D / 2, 16), 50)):
        def b_aivf(codec=codec, dcl=dcl, dsearch=dsearch, rr=rr):
            return AdaptiveIVFIndex(d_cluster=dcl, d_search=dsearch, nlist=nlist, nprobe=1,
                                    codec=codec, rerank=rr, **common).add(X)

        def npr2(p):
            def apply(o):
                o.set_params(nprobe=p)
            return apply

        fams.append(Family(f"adaptive-ivf/{codec}/{dcl}-{dsearch}", b_aivf,
                           [(f"dc={dcl} ds={dsearch} {codec} rerank={rr} nprobe={p}", npr2(p)) for p in probes],
                           nsearch, memory))
    Mh = max(2, M // 2)
    do = near(nest, D / 2, 16)
    while do % Mh:
        Mh -= 1

    def b_aopq():
        return AdaptiveOPQIndex(d_search=do, code_bytes=Mh, nlist=nlist, nprobe=1, d_cluster=dc,
                                rerank=100, train_size=32768, **common).add(X)

    fams.append(Family(f"adanns-opq/{do}/{Mh}B", b_aopq,
                       [(f"OPQ{Mh} d={do} nlist={nlist} rerank=100 nprobe={p}", npr2(p)) for p in probes],
                       nsearch, memory))
    return fams


def run_family(fam, Qe, Qs, truth, threads, bw, out_rows, flush):
    set_threads(max(threads))
    log(f"building {fam.name}")
    obj, build_s = _timed(fam.build)
    log(f"built {fam.name} in {build_s:.1f} s")
    for label, apply in fam.configs:
        apply(obj)
        set_threads(max(threads))
        ids = fam.search(obj, Qe)
        row = {"method": fam.name.split("/")[0], "family": fam.name, "config": label,
               "recall": knn_intersection(ids, truth), "build_s": build_s, **fam.memory(obj)}
        for t in threads:
            set_threads(t)
            fam.search(obj, Qs[:5])  # warm
            lat = best_pass_ms(lambda i: fam.search(obj, Qs[i : i + 1]), len(Qs), passes=3,
                               budget_s=2.0) / 1e3
            _, bt = _timed(fam.search, obj, Qe)
            row[f"latency_ms_{t}t"] = lat * 1e3
            row[f"single_qps_{t}t"] = 1.0 / lat
            row[f"batch_qps_{t}t"] = len(Qe) / bt
            if fam.scanned is not None:
                row["scanned_mb"] = fam.scanned(obj) / 1e6
                row[f"gbs_{t}t"] = fam.scanned(obj) / lat / 1e9
                row["bandwidth_gbs"] = bw
        out_rows.append(row)
        log(f"{label:<48} recall={row['recall']:.4f} lat1={row[f'latency_ms_{threads[0]}t']:.3f} ms")
        flush()


def tune_eval(X, Q_tune, Q_hold, nest, model_id, targets, max_shortlist, nlist, repeat=2):
    """tune() on tuning queries vs an exhaustive sweep on held-out queries, for a flat funnel and
    an AdaptiveIVF index. The configuration tune picks and the sweep's best are timed side by
    side on the held-out queries (alternating, best pass each), so machine noise hits both."""
    n, D = X.shape
    common = dict(nesting=nest, model_id=model_id)

    def funnel():
        return FunnelIndex(dims=(near(nest, D / 8, 8), D), shortlist=(100,), **common).add(X)

    def funnel_groups(idx):
        # float32/int8 first stages up to D/4 dims, binary up to D/2 (larger prefixes only cost
        # more at the same recall on MRL embeddings), 2 and 3 stages, shortlists 10 ... max
        return [g for g in idx.candidate_grid(K, max_candidates=max_shortlist)
                if g[0]["dims"][0] <= (D // 2 if g[0]["prefix_dtype"] == "binary" else D // 4)]

    def ivf():
        return AdaptiveIVFIndex(d_cluster=near(nest, D / 4, 8), d_search=near(nest, D / 4, 16),
                                nlist=nlist, codec="fp16", rerank=100, **common).add(X)

    out = []
    set_threads(1)
    for name, build, groups_of in (("funnel-flat", funnel, funnel_groups),
                                   ("adaptive-ivf", ivf, lambda idx: idx.candidate_grid(K))):
        idx = build()
        truth_hold = idx.search_exact(Q_hold, K)[1]
        groups = groups_of(idx)
        log(f"tune {name}: exhaustive sweep of {sum(map(len, groups))} configurations on held-out queries")
        sweep = tune(idx, Q_hold, k=K, recall=min(targets), groups=groups, exhaustive=True,
                     repeat=repeat)["candidates"]
        for target in targets:
            t0 = time.perf_counter()
            res = tune(idx, Q_tune, k=K, recall=target, groups=groups, repeat=repeat)
            tune_s = time.perf_counter() - t0
            ok = [c for c in sweep if c["recall"] >= target]
            best = min(ok, key=lambda c: c["latency_ms"]) if ok else None
            # the sweep says which configuration is best; its latency is re-measured here like the
            # chosen one's (the minimum over a sweep of noisy timings is biased low)
            same = best is not None and best["params"] == res["params"]
            held = {"latency_ms": np.inf}
            best_ms = np.inf if best else None
            for _ in range(2):
                idx.set_params(**res["params"])
                m = measure(idx, Q_hold, truth_hold, K, repeat=repeat)
                held = {"recall": m["recall"], "latency_ms": min(held["latency_ms"], m["latency_ms"])}
                if best and not same:
                    idx.set_params(**best["params"])
                    best_ms = min(best_ms, measure(idx, Q_hold, truth_hold, K, repeat=repeat)["latency_ms"])
            if same:
                best_ms = held["latency_ms"]
            out.append({
                "index": name, "target": target, "chosen": res["params"], "tune_recall": res["recall"],
                "heldout_recall": held["recall"], "heldout_latency_ms": held["latency_ms"],
                "sweep_best": best and {**best, "latency_ms": best_ms},
                "n_tried": len(res["candidates"]), "n_sweep": len(sweep), "tune_s": tune_s,
                "tried": res["candidates"],
                "recall_ok": held["recall"] >= target - 0.005,
                "latency_ratio": held["latency_ms"] / best_ms if best else None,
            })
            log(f"tune {name} {target}: {out[-1]}")
        del idx
    return out


# --------------------------------------------------------------------------- report
def fastest(rows, r, key, keep=lambda x: True):
    """The row with the lowest ``key`` among those ``keep`` accepts with recall >= ``r``."""
    ok = [x for x in rows if keep(x) and x["recall"] >= r]
    return min(ok, key=lambda x: x[key]) if ok else None


def targets_report(rows, tuning, threads):
    t1 = threads[0]
    lat = f"latency_ms_{t1}t"
    rep = {}
    exact = next(x for x in rows if x["method"] == "faiss-flat")

    def quantized(x):
        return "int8" in x["family"] or "binary" in x["family"]

    for label, methods, pred in (
        ("funnel, exact first stage, any dtype", ("funnel-flat",), lambda x: True),
        ("funnel, exact int8/binary first stage", ("funnel-flat",), quantized),
        ("funnel, HNSW int8/binary first stage", ("funnel-hnsw",), quantized),
    ):
        b = fastest(rows, 0.99, lat, lambda x: x["method"] in methods and pred(x))
        rep[f"T1 {label} @0.99"] = {
            "speedup_vs_exact": exact[lat] / b[lat] if b else None, "config": b and b["config"],
            "latency_ms": b and b[lat], "exact_ms": exact[lat], "recall": b and b["recall"]}
    faiss_m = ("faiss-flat", "faiss-hnsw", "faiss-ivf-flat", "faiss-ivf-opq")
    for r in (0.90, 0.95, 0.99):
        for t in threads:
            key = f"latency_ms_{t}t"
            a = fastest(rows, r, key, lambda x: x["method"] in NESTEMB)
            b = fastest(rows, r, key, lambda x: x["method"] in faiss_m)
            rep[f"T2 @{r} {t}t"] = {
                "nestemb": a and (a["family"], a["config"], a["recall"], a[key], a["resident"], a["mapped"]),
                "faiss": b and (b["family"], b["config"], b["recall"], b[key], b["resident"]),
                "speed_ratio": (b[key] / a[key]) if a and b else None,
                "less_resident_memory": (a["resident"] < b["resident"]) if a and b else None,
            }
    rigid = [x for x in rows if x["method"] == "faiss-ivf-flat"]
    for fam in sorted({x["family"] for x in rows if x["method"] == "adaptive-ivf"}):
        ada = [x for x in rows if x["family"] == fam]
        ratios, gains = [], []
        for rg in rigid:
            ok = [x for x in ada if x["recall"] >= rg["recall"]]
            if ok:
                ratios.append(max(x[f"single_qps_{t1}t"] for x in ok) / rg[f"single_qps_{t1}t"])
            fast = [x for x in ada if x[f"single_qps_{t1}t"] >= rg[f"single_qps_{t1}t"]]
            if fast:
                gains.append(100 * (max(x["recall"] for x in fast) - rg["recall"]))
        rep[f"T3 {fam} vs faiss-ivf-flat"] = {
            "qps_ratio_at_equal_recall": ratios, "recall_gain_pts_at_equal_qps": gains}
    for t in tuning or []:
        rep[f"T4 tune {t.get('index', 'funnel-flat')} @{t['target']}"] = {k: t[k] for k in ("chosen", "heldout_recall", "recall_ok",
                                                             "latency_ratio", "n_tried", "n_sweep")}
    return rep


def markdown(name, rows, threads, meta):
    t = threads
    head = ["method", "config", "recall@10"] + [f"lat ms {x}t" for x in t] + \
           [f"batch QPS {x}t" for x in t] + ["B/vec resident", "B/vec mmap", "build s", "scan MB/q", f"GB/s {t[0]}t"]
    lines = [f"### {name}: n={meta['n']} D={meta['dim']} queries={meta['n_eval']} "
             f"(single-query: {meta['n_single']}), bandwidth {meta['bandwidth_gbs']:.1f} GB/s",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in rows:
        vals = [x["family"], x["config"], f"{x['recall']:.4f}"]
        vals += [f"{x[f'latency_ms_{y}t']:.3f}" for y in t]
        vals += [f"{x[f'batch_qps_{y}t']:.0f}" for y in t]
        vals += [f"{x['resident']:.0f}", f"{x['mapped']:.0f}", f"{x['build_s']:.1f}",
                 f"{x['scanned_mb']:.1f}" if "scanned_mb" in x else "",
                 f"{x[f'gbs_{t[0]}t']:.2f}" if f"gbs_{t[0]}t" in x else ""]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def summary(rows, threads):
    """Best configuration of each method family at recall >= 0.90 / 0.95 / 0.99 (1 thread)."""
    key = f"latency_ms_{threads[0]}t"
    lines = ["| recall >= | method | config | recall@10 | " +
             " | ".join(f"lat ms {t}t" for t in threads) + f" | speed-up vs exact ({threads[0]}t) | "
             "B/vec resident | B/vec mmap |", "|" + "---|" * (7 + len(threads))]
    exact = next((x for x in rows if x["method"] == "faiss-flat"), None)
    for r in (0.90, 0.95, 0.99):
        for fam in dict.fromkeys(x["family"] for x in rows):
            b = fastest(rows, r, key, lambda x: x["family"] == fam)
            if b is None:
                lines.append(f"| {r} | {fam} | (not reached) |" + " |" * (5 + len(threads)))
                continue
            sp = f"{exact[key] / b[key]:.1f}x" if exact else ""
            lines.append(f"| {r} | {fam} | {b['config']} | {b['recall']:.4f} | " +
                         " | ".join(f"{b[f'latency_ms_{t}t']:.3f}" for t in threads) +
                         f" | {sp} | {b['resident']:.0f} | {b['mapped']:.0f} |")
    return "\n".join(lines)


def pareto_plot(path, rows, meta):
    """Recall@10 vs single-query QPS per method, Pareto front marked, next to the JSON."""
    from nestemb.plotting import scatter_pareto

    t = meta["threads"][0]
    groups: dict = {}
    for x in rows:
        groups.setdefault(x["method"], []).append((x["recall"], x[f"single_qps_{t}t"]))
    title = f"{meta['dataset']}: n={meta['n']}, D={meta['dim']}"
    scatter_pareto(Path(path).with_suffix(".png"), groups, ylabel=f"single-query QPS ({t} thread)",
                   title=title)
    scatter_pareto(Path(path).with_name(Path(path).stem + "-high.png"), groups,
                   ylabel=f"single-query QPS ({t} thread)", title=title + ", recall@10 >= 0.9",
                   xmin=0.9)


def report(path):
    """Re-print the tables of a finished (or partial) run from its JSON, and redraw its plot."""
    result = json.loads(Path(path).read_text())
    meta, rows = result["meta"], result["rows"]
    pareto_plot(path, rows, meta)
    print(markdown(meta["dataset"], rows, meta["threads"], meta))
    print("\n#### best configuration per method\n")
    print(summary(rows, meta["threads"]))
    if not result.get("targets") and any(x["method"] == "faiss-flat" for x in rows):
        result["targets"] = targets_report(rows, result.get("tuning"), meta["threads"])
    if result.get("targets"):
        print("\n#### targets\n\n```\n" + json.dumps(result["targets"], indent=1, default=str) + "\n```")
    if result.get("tuning"):
        brief = [{k: v for k, v in t.items() if k != "tried"} for t in result["tuning"]]
        print("\n#### tune\n\n```\n" + json.dumps(brief, indent=1, default=str) + "\n```")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact"],
                    choices=["fmnist", "fmnist-aug", "scifact", "synthetic"])
    ap.add_argument("--model", default="runs/quickstart/model", help="saved MRL image model")
    ap.add_argument("--data", default=os.environ.get("NESTEMB_SHARED_DATA", "../shared/data"))
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery size of fmnist-aug/synthetic")
    ap.add_argument("--eval-queries", type=int, default=2000)
    ap.add_argument("--single-queries", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--families", default="", help="comma-separated family name prefixes to run, in this order (default: all)")
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--tune-repeat", type=int, default=2, help="timing passes per tuning candidate")
    ap.add_argument("--cache", default="runs/bench_cache")
    ap.add_argument("--out", default="runs/bench_search")
    ap.add_argument("--report", help="only re-print the tables of this result JSON")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)
    threads = [int(t) for t in args.threads.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(max(threads))
    bw = memory_bandwidth_gbs()
    log(f"memory bandwidth (numpy sum, 1 thread): {bw:.1f} GB/s")
    for ds in args.datasets:
        if ds == "scifact":
            X, Q, nest, model_id = search_data.scifact_embeddings(Path(args.data), Path(args.cache))
        elif ds == "synthetic":
            X, Q, nest, model_id = search_data.synthetic_embeddings(args.n)
        else:
            n = 60000 if ds == "fmnist" else args.n
            X, Q, nest, model_id = search_data.image_embeddings(Path(args.model), Path(args.data), n,
                                                                Path(args.cache), max(threads))
        X = np.ascontiguousarray(X) if not isinstance(X, np.memmap) else X
        n, D = X.shape
        n_eval = min(len(Q), args.eval_queries)
        Qe = np.ascontiguousarray(Q[:n_eval], dtype=np.float32)
        Qs = Qe[: args.single_queries]
        log(f"{ds}: gallery {X.shape}, {n_eval} eval queries, nesting {nest}")
        import faiss

        Xn = np.ascontiguousarray(prefix_view(np.asarray(X), D))
        exact = faiss.IndexFlatIP(D)
        exact.add(Xn)
        truth = exact.search(np.ascontiguousarray(prefix_view(Qe, D)), K)[1]
        del exact
        nlist = 2 ** round(math.log2(math.sqrt(n)))
        rows: list[dict] = []
        meta = {"dataset": ds, "n": n, "dim": D, "nesting": list(nest), "model_id": model_id,
                "n_eval": n_eval, "n_single": len(Qs), "threads": threads, "bandwidth_gbs": bw,
                "nlist": nlist, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        result = {"meta": meta, "rows": rows, "tuning": None, "targets": None}

        def flush():
            (out / f"{ds}.json").write_text(json.dumps(result, indent=1, default=str))

        wanted = [w for w in args.families.split(",") if w]
        fams = families(X, Xn, nest, nlist, model_id)
        if wanted:  # only these, in this order (so the most important ones finish first)
            fams = [f for w in wanted for f in fams if f.name.startswith(w)]
        for fam in fams:
            run_family(fam, Qe, Qs, truth, threads, bw, rows, flush)
        del Xn
        if not args.no_tune and len(Q) >= 2 * args.single_queries:
            hold = np.ascontiguousarray(Q[: args.single_queries], dtype=np.float32)
            tq = np.ascontiguousarray(Q[-args.single_queries :], dtype=np.float32)
            result["tuning"] = tune_eval(X, tq, hold, nest, model_id, (0.99, 0.95, 0.90),
                                         min(4096, n), nlist, repeat=args.tune_repeat)
        if any(x["method"] == "faiss-flat" for x in rows):
            result["targets"] = targets_report(rows, result["tuning"], threads)
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        flush()
        report(out / f"{ds}.json")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
