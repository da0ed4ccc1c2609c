"""Issue 13 benchmark: scaling out on existing engines, in three parts (``--parts``, default all).

* ``train``: the image trainer (``train_image``, Fashion-MNIST, the default CNN and nesting,
  global batch 256) for a fixed number of steps, in 1 process (2 torch threads, then 1) and in
  2 processes under ``torchrun`` (gloo, 1 thread each). Samples/s = steps x 256 / the trainer's
  own ``train_seconds`` (start-up and data loading excluded). Each run is a fresh process.
* ``embed``: ``nestemb.bulk.embed_corpus`` of the SciFact corpus with the bundled MiniLM on a
  local Ray (2 CPUs), with 1 and then 2 actors (1 torch thread each). Items/s end to end (actor
  start-up and model loading included) and steady (rows landed after the first shard / the time
  from the first shard to the last).
* ``backends``: the vector database backends against the in-process FunnelIndex on the same
  vectors and the same stage configuration: recall@10 against exact search and against
  FunnelIndex's top-10, latency per query (one query per call, one thread where the engine lets
  us say so), stored bytes per point. Engines: FunnelIndex (flat float32 first stage), Qdrant
  through qdrant-client local mode (a pure-Python scan, on the small set only: it is slow beyond
  ~20k points), Qdrant Edge (Qdrant's engine in-process: int8-quantized short prefix with an
  HNSW graph, and the same scanned exactly), milvus-lite (pymilvus; re-rank inside Milvus by a
  primary-key filtered search, and re-rank of the fetched shortlist in numpy). Data: SciFact
  corpus and queries embedded with all-MiniLM-L6-v2 (cached under runs/cache/text) and
  synthetic Matryoshka vectors (nestemb.index.synthetic_matryoshka; labelled synthetic).

Run (nothing else heavy at the same time)::

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/scale.py [--parts train embed backends]

Writes ``docs/results/scale/scale.json`` and ``scale.md`` (``--out``; a run of some parts keeps
the figures of the others); scratch outputs go to ``runs/scale/`` (``--work``). A quick check
of the script: ``--steps 4 --limit 200 --shard-size 50 --n 5000 --skip-scifact --out runs/scale-check``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RUNS = REPO / "runs" / "scale"
OUT = REPO / "docs" / "results" / "scale"
FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
TARGET = 1.6
PARTS = ("train", "embed", "backends")


# --------------------------------------------------------------------------- training
def train_worker(out: Path, steps: int, threads: int | None) -> None:
    """One training run (under torchrun or not); rank 0 writes its info to ``out``. With
    ``LOCAL_BN=1`` in the environment, batch norm stays per process (the trainer's global batch
    norm switched off by hand: not the one-process model any more; shows what the global batch
    norm costs)."""
    if os.environ.get("LOCAL_BN") == "1":
        import nestemb.distributed

        nestemb.distributed.convert_batchnorm = lambda module, env: module
    from nestemb.data.idx import load_idx
    from nestemb.models.image import make_model_config
    from nestemb.train.image import ImageTrainConfig, train_image

    x, y = load_idx(FASHION, "train")
    mcfg = make_model_config("mrl", dim=256, num_classes=10, images=x)
    cfg = ImageTrainConfig(steps=steps, batch_size=256, device="cpu", threads=threads)
    _, info = train_image(mcfg, x, y, cfg, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(info))


def run_train(steps: int) -> list[dict]:
    rows = []
    setups = [("1 process, 2 threads", 1, 2, False), ("1 process, 1 thread", 1, 1, False),
              ("2 processes (torchrun, gloo), 1 thread each", 2, 1, False),
              ("2 processes, per-process batch norm (reference only: not the 1-process model)",
               2, 1, True)]
    for name, procs, threads, local_bn in setups:
        out = RUNS / f"train-{procs}p-{threads}t{'-localbn' if local_bn else ''}.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO),
               "GLOO_SOCKET_IFNAME": "lo", "LOCAL_BN": "1" if local_bn else "0"}
        for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(v, None)
        args = [__file__, "--train-worker", str(out), str(steps), str(threads)]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}", *args] if procs > 1 else [sys.executable, *args])
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=REPO)
        wall = time.perf_counter() - t0
        info = json.loads(out.read_text())
        sps = info["steps"] * 256 / info["train_seconds"]
        rows.append({"setup": name, "processes": procs, "threads_per_process": threads,
                     "steps": info["steps"], "batch": 256, "train_seconds": info["train_seconds"],
                     "samples_per_s": round(sps, 1), "process_wall_s": round(wall, 1),
                     "world_size": info["world_size"], "final_loss": info["epoch_losses"][-1]})
        print(f"{name}: {sps:.1f} samples/s ({info['train_seconds']:.1f} s)", flush=True)
    return rows


# --------------------------------------------------------------------------- embedding
def run_embed(limit: int | None, shard_size: int) -> list[dict]:
    import ray

    from nestemb import bulk
    from nestemb.data.beir import read_corpus

    records = read_corpus(SCIFACT / "corpus.jsonl")[:limit]
    data = bulk.ArrayCorpus([r.body for r in records], [r.id for r in records],
                            source=str(SCIFACT / "corpus.jsonl"))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    startup = time.perf_counter() - t0
    rows = []
    digests = []
    for workers in (1, 2):
        out = RUNS / f"embed-{workers}w"
        landed = []
        t1 = time.perf_counter()
        s = bulk.embed_corpus(data, "minilm", out, workers=workers, shard_size=shard_size,
                              batch_size=64, overwrite=True,
                              on_shard=lambda r: landed.append((time.perf_counter(), r["rows"])))
        wall = time.perf_counter() - t1
        first = landed[0][0]
        steady = sum(n for _, n in landed[1:]) / (landed[-1][0] - first)
        digests.append(json.loads((out / "manifest.json").read_text())["sha256"])
        rows.append({"workers": workers, "rows": s["rows"], "shards": s["shards"],
                     "shard_size": shard_size, "wall_s": round(wall, 1),
                     "items_per_s_end_to_end": round(s["rows"] / s["seconds"], 1),
                     "items_per_s_steady": round(steady, 1),
                     "first_shard_after_s": round(first - t1, 1)})
        print(rows[-1], flush=True)
    ray.shutdown()
    return rows, round(startup, 2), digests[0] == digests[1]


# --------------------------------------------------------------------------- backends
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
    from nestemb.engines import disk_bytes

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
    from nestemb.engines import disk_bytes
    from nestemb.index import FunnelIndex, exact_search, knn_intersection

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
    from nestemb.engines import open_engine

    if qdrant_local:
        qdir = work / f"{name}-qdrant-local"
        shutil.rmtree(qdir, ignore_errors=True)
        engine = open_engine("qdrant", str(qdir))
        t = time.perf_counter()
        f = engine.export(index, "bench")
        b = time.perf_counter() - t
        record("Qdrant local mode (client)", f.search, n_slow, disk_bytes(qdir),
               per_point({"sqlite": disk_bytes(qdir)}, n), f.logical_bytes_per_point()["vectors"], b,
               "pure-Python exact scan; quantization and HNSW ignored by local mode; "
               "points pickled into sqlite")
        engine.close()

    # --- Qdrant Edge ---------------------------------------------------------------------
    edir = work / f"{name}-qdrant-edge"
    shutil.rmtree(edir, ignore_errors=True)
    t = time.perf_counter()
    engine = open_engine("qdrant-edge", str(edir))
    f = engine.export(index, "bench", max_search_threads=1)
    b = time.perf_counter() - t
    f.close()
    groups = {"wal": ("/wal/",), "full_and_rerank_vectors": ("matrix.dat",),
              "int8_codes": ("quantized",), "hnsw_graph": ("vector_index",),
              "payload": ("payload",), "id_tracker": ("id_tracker",)}
    eparts = parts(edir, groups)
    f = engine.funnel("bench")
    logical = f.logical_bytes_per_point()["vectors"]
    note = ("int8 scalar quantization + HNSW (m=16) on the short prefix, no graph on the full "
            "vector; 1 search thread")
    record("Qdrant Edge (HNSW + int8)", f.search, n_fast, disk_bytes(edir), per_point(eparts, n),
           logical, b, note)
    f.close()
    f = engine.funnel("bench", exact=True)
    record("Qdrant Edge (exact scan)", f.search, n_fast, disk_bytes(edir), per_point(eparts, n),
           logical, b, "same shard, first stage scanned exactly (int8 codes, rescored)")
    f.close()

    # --- milvus-lite ---------------------------------------------------------------------
    for lean in (False, True):
        mdir = work / f"{name}-milvus{'-lean' if lean else ''}.db"
        shutil.rmtree(mdir, ignore_errors=True)
        engine = open_engine("milvus", str(mdir))
        t = time.perf_counter()
        engine.export(index, "bench", index_rerank_fields=not lean)
        b = time.perf_counter() - t
        mparts = parts(mdir, {"parquet_rows": (".parquet",), "index_files": ("/indexes/",),
                              "wal": ("/wal",)})
        label = "FLAT on every field" if not lean else "FLAT on the short field only"
        for rerank in ("server", "client") if not lean else ("client",):
            f = engine.funnel("bench", rerank=rerank)
            record(f"Milvus lite ({rerank} re-rank{', lean' if lean else ''})", f.search, n_slow,
                   disk_bytes(mdir), per_point(mparts, n), f.logical_bytes_per_point()["vectors"],
                   b, f"{label}; " + ("re-rank = filtered search on the full field inside Milvus"
                                      if rerank == "server" else
                                      "re-rank of the fetched shortlist in numpy"))
        engine.close()
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


def run_backends(args) -> dict:
    """The ``backends`` part: the SciFact MiniLM set (unless ``--skip-scifact``) and ``--n``
    synthetic Matryoshka vectors."""
    from nestemb.index import synthetic_matryoshka

    one_thread()
    work = Path(args.work) / "backends"
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
    return {"sets": results, "threads": 1, "wall_s": round(time.perf_counter() - t0, 1),
            "command": "flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/scale.py "
                       "--parts backends"}


def main() -> None:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--out", default=str(OUT), help="folder of scale.json and scale.md")
    ap.add_argument("--work", default=str(RUNS), help="scratch outputs")
    ap.add_argument("--steps", type=int, default=60, help="train: optimizer steps per setup")
    ap.add_argument("--limit", type=int, default=None, help="embed: only the first N documents")
    ap.add_argument("--shard-size", type=int, default=250, help="embed: rows per shard")
    ap.add_argument("--scifact", default=str(SCIFACT), help="backends: SciFact folder")
    ap.add_argument("--n", type=int, default=1_000_000, help="backends: synthetic vectors")
    ap.add_argument("--dim", type=int, default=128, help="backends: synthetic dimension")
    ap.add_argument("--skip-scifact", action="store_true", help="backends: synthetic set only")
    args = ap.parse_args()
    RUNS = Path(args.work)
    RUNS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if "train" in args.parts:
        rows = run_train(args.steps)
        base2, base1, ddp, local = (r["samples_per_s"] for r in rows)
        results["train"] = {"rows": rows, "speedup_vs_1p_2threads": round(ddp / base2, 2),
                            "speedup_vs_1p_1thread": round(ddp / base1, 2),
                            "local_bn_speedup_vs_1p_1thread": round(local / base1, 2),
                            "local_bn_speedup_vs_1p_2threads": round(local / base2, 2),
                            "target": TARGET,
                            "command": "flock /tmp/nestemb-heavy.lock .venv/bin/python "
                                       "benchmarks/scale.py --parts train"}
    if "embed" in args.parts:
        rows, startup, same = run_embed(args.limit, args.shard_size)
        one, two = rows
        results["embed"] = {
            "rows": rows, "ray_start_s": startup, "same_checksums_1_vs_2_workers": same,
            "speedup_end_to_end": round(two["items_per_s_end_to_end"] / one["items_per_s_end_to_end"], 2),
            "speedup_steady": round(two["items_per_s_steady"] / one["items_per_s_steady"], 2),
            "target": TARGET, "model": "all-MiniLM-L6-v2 (bundled), batch 64, 1 thread per actor",
            "command": "flock /tmp/nestemb-heavy.lock .venv/bin/python "
                       "benchmarks/scale.py --parts embed"}
    if "backends" in args.parts:
        results["backends"] = run_backends(args)
    from nestemb.io import write_json

    write_json(path, results)
    (out / "scale.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    """scale.md: every part present in ``r``."""
    lines = ["# Scaling out (issue 13): training, bulk embedding, vector database backends", "",
             f"Machine: {r['machine']['cpus']} CPUs. Produced by `benchmarks/scale.py`.", ""]
    text = "\n".join(lines) + "\n" + markdown_train_embed(r)
    if "backends" in r:
        text += ("\n## Vector database backends (one query per call, one thread)\n\n"
                 + "\n".join(table(s) for s in r["backends"]["sets"]))
    return text


def markdown_train_embed(r: dict) -> str:
    lines = []
    if "train" in r:
        t = r["train"]
        lines += ["## Image trainer, samples/s (Fashion-MNIST CNN, global batch 256)", "",
                  "| setup | steps | train s | samples/s |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {x['setup']} | {x['steps']} | {x['train_seconds']:.1f} | {x['samples_per_s']:.1f} |"
                  for x in t["rows"]]
        lines += ["", f"2 processes (the trainer as shipped: batch norm over the global batch, each "
                  f"step equal to the 1-process step) vs 1 process with 2 threads: "
                  f"**{t['speedup_vs_1p_2threads']}x**; vs 1 process with 1 thread: "
                  f"**{t['speedup_vs_1p_1thread']}x** (target >= {t['target']}x). With per-process "
                  f"batch norm: {t['local_bn_speedup_vs_1p_2threads']}x and "
                  f"{t['local_bn_speedup_vs_1p_1thread']}x.", ""]
    if "embed" in r:
        e = r["embed"]
        lines += ["## Ray Data bulk embedding, items/s (SciFact corpus, MiniLM)", "",
                  f"Local Ray start-up: {e['ray_start_s']} s. {e['model']}.", "",
                  "| workers | rows | shards | wall s | first shard after s | items/s end to end | items/s steady |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {x['workers']} | {x['rows']} | {x['shards']} | {x['wall_s']} | "
                  f"{x['first_shard_after_s']} | {x['items_per_s_end_to_end']} | {x['items_per_s_steady']} |"
                  for x in e["rows"]]
        lines += ["", f"2 workers vs 1: **{e['speedup_end_to_end']}x** end to end, "
                  f"**{e['speedup_steady']}x** steady (target >= {e['target']}x). "
                  f"Same shard checksums with 1 and 2 workers: {e['same_checksums_1_vs_2_workers']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--train-worker":
        sys.path.insert(0, str(REPO))
        train_worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
