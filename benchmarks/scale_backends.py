"""Vector database backends against the in-process FunnelIndex on the same vectors and the same
stage configuration: recall@10 against exact search and against FunnelIndex's top-10, latency
per query (one query per call, one thread where the engine lets us say so), stored bytes per
point.

Engines: FunnelIndex (flat float32 first stage), Qdrant through qdrant-client local mode (a
pure-Python scan, on the small set only: it is slow beyond ~20k points), Qdrant Edge (Qdrant's
engine in-process: int8-quantized short prefix with an HNSW graph, and the same scanned
exactly), milvus-lite (pymilvus; re-rank inside Milvus by a primary-key filtered search, and
re-rank of the fetched shortlist in numpy).

Data: SciFact corpus and queries embedded with all-MiniLM-L6-v2 (cached under runs/cache/text)
and synthetic Matryoshka vectors (nestemb.index.synthetic_matryoshka; labelled synthetic).

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/scale_backends.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nestemb.backends import disk_bytes  # noqa: E402
from nestemb.index import FunnelIndex, exact_search, knn_intersection, synthetic_matryoshka  # noqa: E402
from nestemb.io import write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def one_thread() -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


def latency(search, Q: np.ndarray, n: int) -> tuple[np.ndarray, dict]:
    """Top-10 ids of the first ``n`` queries, one query per call, and p50/p99 latency (ms)."""
    for q in Q[:3]:
        search(q[None], 10)  # warm-up
    times, ids = [], []
    for q in Q[:n]:
        t = time.perf_counter()
        ids.append(search(q[None], 10)[1][0])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return np.array(ids), {"p50_ms": float(np.percentile(ms, 50)),
                           "p99_ms": float(np.percentile(ms, 99)),
                           "mean_ms": float(ms.mean()), "queries": int(n)}


def parts(path: Path, groups: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Allocated bytes under ``path`` grouped by the first matching path fragment."""
    out = {g: 0 for g in groups} | {"other": 0}
    for f in path.rglob("*"):
        if not f.is_file():
            continue
        g = next((g for g, frags in groups.items() if any(s in str(f) for s in frags)), "other")
        out[g] += disk_bytes(f)
    return out


def per_point(d: dict[str, int], n: int) -> dict[str, float]:
    return {k: round(v / n, 1) for k, v in d.items()}


def run_set(name: str, X: np.ndarray, Q: np.ndarray, ids, manifest_kw: dict, dims, shortlist,
            work: Path, n_fast: int, n_slow: int, qdrant_local: bool) -> dict:
    n, D = X.shape
    ids = np.arange(n) if ids is None else ids
    print(f"== {name}: {n} x {D}, dims {dims}, shortlist {shortlist}", flush=True)
    ref = 4.0 * (D + dims[0])
    exact_ids = np.asarray(ids)[exact_search(X, Q, 10)[1]]
    t = time.perf_counter()
    index = FunnelIndex(dims=dims, shortlist=shortlist, **manifest_kw).add(X, ids)
    build = time.perf_counter() - t
    fun_ids = index.search(Q, 10)[1]
    rows = []

    def record(engine, search, nq, bytes_disk, bytes_parts, logical, build_s, note=""):
        got, lat = latency(search, Q, nq)
        row = {"engine": engine, "recall_vs_exact": knn_intersection(got, exact_ids[:nq]),
               "recall_vs_funnel": knn_intersection(got, fun_ids[:nq]), **lat,
               "disk_bytes_per_point": None if bytes_disk is None else round(bytes_disk / n, 1),
               "disk_ratio": None if bytes_disk is None else round(bytes_disk / n / ref, 3),
               "disk_parts_per_point": bytes_parts,
               "logical_vector_bytes_per_point": logical,
               "logical_ratio": round(logical / ref, 3), "build_s": round(build_s, 2),
               "note": note}
        rows.append(row)
        print(f"  {engine:28s} R@10/exact {row['recall_vs_exact']:.4f} R@10/funnel "
              f"{row['recall_vs_funnel']:.4f} p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms "
              f"disk {row['disk_bytes_per_point']} B/pt ({row['disk_ratio']}x) logical "
              f"{logical} B/pt ({row['logical_ratio']}x) build {build_s:.1f}s", flush=True)

    # --- FunnelIndex (in-process) -------------------------------------------------------
    fdir = work / f"{name}-funnel"
    index.save(fdir, overwrite=True)
    mem = index.bytes_per_vector()
    record("FunnelIndex (flat float32)", index.search, n_fast, disk_bytes(fdir),
           per_point({"index_dir": disk_bytes(fdir)}, n), mem["total"], build,
           "resident + memory-mapped full vectors")

    # --- Qdrant through qdrant-client local mode (persistent path) -------------------------
    from nestemb.backends.qdrant import QdrantFunnel, export_qdrant, export_qdrant_edge

    if qdrant_local:
        from qdrant_client import QdrantClient

        qdir = work / f"{name}-qdrant-local"
        shutil.rmtree(qdir, ignore_errors=True)
        client = QdrantClient(path=str(qdir))
        t = time.perf_counter()
        f = export_qdrant(index, client, "bench")
        b = time.perf_counter() - t
        record("Qdrant local mode (client)", f.search, n_slow, disk_bytes(qdir),
               per_point({"sqlite": disk_bytes(qdir)}, n), f.logical_bytes_per_point()["vectors"], b,
               "pure-Python exact scan; quantization and HNSW ignored by local mode; "
               "points pickled into sqlite")
        client.close()

    # --- Qdrant Edge ---------------------------------------------------------------------
    edir = work / f"{name}-qdrant-edge"
    shutil.rmtree(edir, ignore_errors=True)
    t = time.perf_counter()
    f = export_qdrant_edge(index, edir, max_search_threads=1)
    b = time.perf_counter() - t
    f.close()
    groups = {"wal": ("/wal/",), "full_and_rerank_vectors": ("matrix.dat",),
              "int8_codes": ("quantized",), "hnsw_graph": ("vector_index",),
              "payload": ("payload",), "id_tracker": ("id_tracker",)}
    eparts = parts(edir, groups)
    f = QdrantFunnel.open_edge(edir)
    logical = f.logical_bytes_per_point()["vectors"]
    note = ("int8 scalar quantization + HNSW (m=16) on the short prefix, no graph on the full "
            "vector; 1 search thread")
    record("Qdrant Edge (HNSW + int8)", f.search, n_fast, disk_bytes(edir), per_point(eparts, n),
           logical, b, note)
    f.close()
    f = QdrantFunnel.open_edge(edir, exact=True)
    record("Qdrant Edge (exact scan)", f.search, n_fast, disk_bytes(edir), per_point(eparts, n),
           logical, b, "same shard, first stage scanned exactly (int8 codes, rescored)")
    f.close()

    # --- milvus-lite ---------------------------------------------------------------------
    from pymilvus import MilvusClient

    from nestemb.backends.milvus import MilvusFunnel, export_milvus

    for lean in (False, True):
        mdir = work / f"{name}-milvus{'-lean' if lean else ''}.db"
        shutil.rmtree(mdir, ignore_errors=True)
        client = MilvusClient(str(mdir))
        t = time.perf_counter()
        export_milvus(index, client, "bench", index_rerank_fields=not lean)
        b = time.perf_counter() - t
        mparts = parts(mdir, {"parquet_rows": (".parquet",), "index_files": ("/indexes/",),
                              "wal": ("/wal",)})
        label = "FLAT on every field" if not lean else "FLAT on the short field only"
        for rerank in ("server", "client") if not lean else ("client",):
            f = MilvusFunnel(client, "bench", rerank=rerank)
            record(f"Milvus lite ({rerank} re-rank{', lean' if lean else ''})", f.search, n_slow,
                   disk_bytes(mdir), per_point(mparts, n), f.logical_bytes_per_point()["vectors"],
                   b, f"{label}; " + ("re-rank = filtered search on the full field inside Milvus"
                                      if rerank == "server" else
                                      "re-rank of the fetched shortlist in numpy"))
        client.close()
    return {"name": name, "n": n, "dim": D, "dims": list(dims), "shortlist": list(shortlist),
            "queries": len(Q), "reference_bytes_per_point": ref,
            "reference": "one float32 full vector + the float32 short prefix, 4 (D + d0)",
            "rows": rows}


def table(res: dict) -> str:
    lines = [f"### {res['name']} ({res['n']:,} x {res['dim']}, dims {tuple(res['dims'])}, "
             f"shortlist {tuple(res['shortlist'])}; reference {res['reference_bytes_per_point']:.0f}"
             " B/point)", "",
             "| engine | recall@10 vs exact | recall@10 vs FunnelIndex | p50 ms | p99 ms | "
             "queries | disk B/point (x ref) | logical vector B/point (x ref) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(
            f"| {r['engine']} | {r['recall_vs_exact']:.4f} | {r['recall_vs_funnel']:.4f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['queries']} | "
            f"{r['disk_bytes_per_point']:.0f} ({r['disk_ratio']:.2f}x) | "
            f"{r['logical_vector_bytes_per_point']:.0f} ({r['logical_ratio']:.2f}x) |")
    lines.append("")
    lines.append("Disk bytes per point by part:")
    lines.append("")
    seen = set()
    for r in res["rows"]:
        key = json.dumps(r["disk_parts_per_point"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"- {r['engine']}: " + ", ".join(
            f"{k} {v:g}" for k, v in r["disk_parts_per_point"].items() if v))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scifact", default=str(REPO.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "scale"))
    ap.add_argument("--work", default=str(REPO / "runs" / "scale_backends"))
    ap.add_argument("--skip-scifact", action="store_true")
    args = ap.parse_args()
    one_thread()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    if not args.skip_scifact:
        from text_data import embed, load_encoder, scifact

        sf = scifact(args.scifact)
        enc = load_encoder("minilm")
        G, Qs = embed(enc, sf.docs), embed(enc, sf.queries)
        m = enc.manifest
        results.append(run_set(
            "SciFact MiniLM", np.asarray(G, np.float32), np.asarray(Qs, np.float32), sf.doc_ids,
            {"nesting": m.nesting, "model_id": m.model_id, "model_version": m.model_version},
            (128, 384), (200,), work, n_fast=len(Qs), n_slow=100, qdrant_local=True))
    n, D = args.n, args.dim
    X = synthetic_matryoshka(n + 200, D, seed=0)
    nesting = tuple(d for d in (8, 16, 32, 64, 128, 256, 512, 1024) if d < D) + (D,)
    results.append(run_set(
        f"synthetic Matryoshka {n // 1000}k", X[:n], X[n:], None,
        {"nesting": nesting, "model_id": "synthetic"}, (16, D), (400,), work,
        n_fast=200, n_slow=30, qdrant_local=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "backends.json", {"sets": results, "threads": 1,
                                       "wall_s": round(time.perf_counter() - t0, 1)})
    md = ("## Vector database backends (benchmarks/scale_backends.py)\n\n"
          + "\n".join(table(r) for r in results))
    (out / "backends.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
