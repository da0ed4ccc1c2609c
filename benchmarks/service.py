"""Load benchmark of ``nestemb serve`` (issue 12): 16 concurrent clients on loopback, mixed
searches and upserts, against the same searches in-process.

Collections:

* ``scifact``: the SciFact corpus (5,183 documents) as MiniLM vectors (384-d, embedded
  in-process once with the bundled all-MiniLM-L6-v2, cached under ``runs/service/cache``),
  uploaded through the API as vector points; queries are the SciFact test queries' embeddings;
* ``synthetic-1m``: 1,000,000 synthetic Matryoshka vectors (128-d,
  :func:`nestemb.index.synthetic_matryoshka`; labelled synthetic), written with the server's own
  :class:`nestemb.service.store.Store` and served from that folder; queries are 1,000 more
  vectors of the same distribution.

Per collection: the server runs through the CLI (``nestemb serve``, default settings:
``--durability full``, ``--log-level info``; its log goes to a file). ``--clients`` clients (4
processes x 4 threads by default, each thread with its own kept-alive ``httpx.Client``) send
``--requests`` requests after a warm-up: ``1 - --upsert-share`` searches (k=10, the stage dims
given in the request) and upserts of ``--upsert-batch`` existing points (same vector, a new
payload: the collection keeps its size, so every search costs the same). Reported: throughput,
p50/p99 latency per operation, errors (any non-200 answer, transport error or malformed
answer), and the HTTP overhead: the same searches (same vectors, same plan) in-process with
:meth:`nestemb.service.collection.LiveCollection.search`, one at a time and with the same number
of threads; and HTTP with one client (no queueing). Target: search p99 over HTTP <= 3x the
in-process p99 + 5 ms.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service.py
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service.py \\
        --datasets synthetic-1m --requests 20000

Writes ``docs/results/service/load.json`` (one entry per collection, merged with what is
there) and ``load.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the shared harnesses: tests/harness
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.crash import RestartableServer  # noqa: E402

WORK = REPO / "runs" / "service" / "load"
RESULTS = REPO / "docs" / "results" / "service"
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
def scifact_vectors(data_root: Path) -> dict:
    """SciFact corpus and test-query MiniLM embeddings (cached)."""
    from nestemb.data.beir import load_beir
    from nestemb.text.cache import encode_cached
    from nestemb.text.encoder import load_text_model

    data = load_beir(data_root / "scifact", "test")
    ids = list(data.corpus)
    qids = list(data.queries)
    enc = load_text_model("minilm")
    t = time.perf_counter()
    X = encode_cached(enc, [data.corpus[i] for i in ids], WORK.parent / "cache")
    Q = encode_cached(enc, [data.queries[i] for i in qids], WORK.parent / "cache")
    log(f"scifact: {len(ids)} documents, {len(qids)} queries embedded/cached in "
        f"{time.perf_counter() - t:.1f} s")
    nesting = list(enc.manifest.nesting) if enc.manifest.nesting and \
        len(enc.manifest.nesting) > 1 else [48, 96, 192, 384]
    return {"name": "scifact", "ids": ids, "X": np.asarray(X, np.float32),
            "Q": np.asarray(Q, np.float32), "nesting": nesting,
            "payloads": [{"title": data.corpus[i][:80]} for i in ids],
            "source": "SciFact corpus (BEIR), all-MiniLM-L6-v2 embeddings (bundled MiniLM)",
            "upload": "http"}


def synthetic_vectors(n: int, dim: int = 128) -> dict:
    from nestemb.index import synthetic_matryoshka

    t = time.perf_counter()
    A = synthetic_matryoshka(n + 1000, dim, seed=0)
    log(f"synthetic: {n} + 1000 vectors of {dim} dims in {time.perf_counter() - t:.1f} s")
    return {"name": f"synthetic-{n // 1_000_000}m" if n >= 1_000_000 else f"synthetic-{n}",
            "ids": None, "X": A[:n], "Q": A[n:], "nesting": [16, 32, 64, 128],
            "payloads": None, "source": f"synthetic Matryoshka vectors "
            f"(nestemb.index.synthetic_matryoshka({n}, {dim}, seed=0)): SYNTHETIC",
            "upload": "store"}


def prepare(ds: dict, data_dir: Path, server_log: Path) -> RestartableServer:
    """A data folder holding the collection, and a started server on it."""
    import httpx

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    name, X, nesting = ds["name"], ds["X"], ds["nesting"]
    if ds["upload"] == "store":  # 1M points: the server's own store, no JSON round trip
        from nestemb.service.store import Store

        store = Store(data_dir, "full")
        store.create_collection(name, {"encoder": None, "model_id": None,
                                       "model_version": None, "created": time.time(),
                                       "nesting": nesting})
        t = time.perf_counter()
        for s in range(0, len(X), 50_000):
            store.upsert(name, [(i, X[i], {"n": i}) for i in range(s, min(s + 50_000, len(X)))])
        store.close()
        log(f"{name}: {len(X)} points stored in {time.perf_counter() - t:.1f} s")
    server = RestartableServer(data_dir, "full", server_log, startup_timeout=600,
                           log_level="info")  # the CLI's default
    t = server.start()
    log(f"{name}: server up in {t:.1f} s")
    if ds["upload"] == "http":
        with httpx.Client(base_url=server.url, timeout=120) as h:
            r = h.put(f"/collections/{name}", json={"nesting": nesting, "encoder": None})
            r.raise_for_status()
            t = time.perf_counter()
            for s in range(0, len(X), 500):
                pts = [{"id": ds["ids"][i], "vector": X[i].tolist(), "payload": ds["payloads"][i]}
                       for i in range(s, min(s + 500, len(X)))]
                h.put(f"/collections/{name}/points", json={"points": pts}).raise_for_status()
            log(f"{name}: {len(X)} points uploaded in {time.perf_counter() - t:.1f} s")
    wait_tuned(server.url, name)
    return server


def wait_tuned(url: str, name: str, timeout: float = 900) -> None:
    """Wait until the background tuner has measured the collection at its current size, so
    that it does not compete with the measured requests."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        info = httpx.get(f"{url}/collections/{name}", timeout=120).json()
        tuning = info["index"]["tuning"]
        if tuning is not None and tuning["count"] == info["count"]:
            log(f"{name}: tuned at {info['count']} points in {tuning['seconds']} s")
            return
        time.sleep(1.0)
    log(f"{name}: not tuned after {timeout:.0f} s; measuring anyway")


# ----------------------------------------------------------------------------- the clients
def _worker(url: str, name: str, proc: int, threads: int, n_requests: int, warmup: int,
            search_bodies: list[bytes], upsert_parts: list[tuple[str, str]], upsert_share: float,
            upsert_batch: int, start: "mp.synchronize.Event", ready: "mp.Queue",
            out: "mp.Queue") -> None:
    """One client process: ``threads`` threads, each with its own kept-alive client; returns
    (op, latency s, ok) per measured request and the first few errors."""
    import httpx

    headers = {"content-type": "application/json"}

    def run(tid: int, count: int, record: list, errors: list) -> None:
        rng = np.random.default_rng(1000 * proc + tid)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as h:
            for phase, n in (("warmup", warmup), ("measure", count)):
                if phase == "measure":
                    ready.put(1)
                    start.wait()
                for _ in range(n):
                    up = rng.random() < upsert_share
                    if up:
                        pick = rng.choice(len(upsert_parts), size=upsert_batch, replace=False)
                        rev = int(rng.integers(1 << 30))
                        body = ('{"points":[' + ",".join(
                            '{"id":%s,"vector":%s,"payload":{"rev":%d}}'
                            % (upsert_parts[j][0], upsert_parts[j][1], rev) for j in pick)
                            + "]}").encode()
                        path = f"/collections/{name}/points"
                    else:
                        body = search_bodies[int(rng.integers(len(search_bodies)))]
                        path = f"/collections/{name}/search"
                    t = time.perf_counter()
                    try:
                        r = h.request("PUT" if up else "POST", path, content=body)
                        dt = time.perf_counter() - t
                        ok = r.status_code == 200
                        if ok:
                            got = r.json()
                            ok = got.get("upserted") == upsert_batch if up else \
                                len(got.get("hits", ())) == K
                        err = None if ok else f"{r.status_code} {r.text[:200]}"
                    except httpx.HTTPError as e:
                        dt, ok, err = time.perf_counter() - t, False, repr(e)
                    if phase == "measure":
                        record.append((1 if up else 0, dt, ok))
                        if err and len(errors) < 5:
                            errors.append(err)

    per = [n_requests // threads + (i < n_requests % threads) for i in range(threads)]
    records: list[list] = [[] for _ in range(threads)]
    errors: list[str] = []
    ts = [threading.Thread(target=run, args=(i, per[i], records[i], errors))
          for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rec = np.array([r for rs in records for r in rs], dtype=np.float64).reshape(-1, 3)
    out.put((rec, errors))


def http_load(url: str, name: str, ds: dict, dims: list[int], n_requests: int, procs: int,
              threads: int, upsert_share: float, upsert_batch: int, warmup: int) -> dict:
    X, Q = ds["X"], ds["Q"]
    search_bodies = [json.dumps({"vector": q.tolist(), "k": K, "dims": dims}).encode()
                     for q in Q]
    rng = np.random.default_rng(7)
    pool = rng.choice(len(X), size=min(len(X), 2_000), replace=False)
    ids = ds["ids"]
    upsert_parts = [(json.dumps(ids[i] if ids is not None else int(i)),
                     json.dumps(X[i].tolist())) for i in pool]
    ctx = mp.get_context("spawn")
    start, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    per = [n_requests // procs + (i < n_requests % procs) for i in range(procs)]
    ps = [ctx.Process(target=_worker, args=(url, name, i, threads, per[i], warmup,
                                            search_bodies, upsert_parts, upsert_share,
                                            upsert_batch, start, ready, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    def get(q: "mp.Queue", deadline: float):
        """The next item, failing fast if a client process died (instead of waiting)."""
        import queue

        while True:
            try:
                return q.get(timeout=2)
            except queue.Empty:
                dead = [p.exitcode for p in ps if p.exitcode not in (None, 0)]
                if dead or time.perf_counter() > deadline:
                    for p in ps:
                        p.kill()
                    raise RuntimeError(f"client processes failed (exit codes {dead}) or "
                                       f"timed out")

    for _ in range(procs * threads):
        get(ready, time.perf_counter() + 1800)
    t0 = time.perf_counter()
    start.set()
    results = [get(out, t0 + 7200) for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    rec = np.concatenate([r for r, _ in results])
    errors = [e for _, es in results for e in es]
    res = {"clients": procs * threads, "processes": procs, "threads_per_process": threads,
           "requests": int(len(rec)), "seconds": round(wall, 2),
           "throughput_rps": round(len(rec) / wall, 1),
           "errors": int((rec[:, 2] == 0).sum()), "error_samples": errors}
    for op, code in (("search", 0), ("upsert", 1)):
        lat = rec[rec[:, 0] == code, 1] * 1000
        res[op] = _lat(lat)
    return res


def _lat(ms: np.ndarray) -> dict:
    if len(ms) == 0:
        return {"n": 0}
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "mean_ms": round(float(ms.mean()), 3)}


def http_single(url: str, name: str, ds: dict, dims: list[int], n: int) -> dict:
    """One client, one search at a time: the HTTP path's own latency, no queueing."""
    import httpx

    Q = ds["Q"]
    bodies = [json.dumps({"vector": q.tolist(), "k": K, "dims": dims}).encode() for q in Q]
    lat, server_ms = [], []
    with httpx.Client(base_url=url, timeout=120,
                      headers={"content-type": "application/json"}) as h:
        for i in range(n + 50):
            t = time.perf_counter()
            r = h.post(f"/collections/{name}/search", content=bodies[i % len(bodies)])
            dt = time.perf_counter() - t
            r.raise_for_status()
            if i >= 50:
                lat.append(dt * 1000)
                server_ms.append(r.json()["timing"]["total_ms"])
    out = _lat(np.asarray(lat))
    out["server_timing_total"] = _lat(np.asarray(server_ms))
    return out


def in_process(ds: dict, dims: list[int], n: int, threads: int) -> dict:
    """The same searches on a LiveCollection in this process: one at a time, and ``threads``
    at once (the HTTP load's concurrency)."""
    from nestemb.service.collection import LiveCollection, check_plan

    X, Q = ds["X"], ds["Q"]
    live = LiveCollection(ds["name"], ds["nesting"])
    ids = ds["ids"] if ds["ids"] is not None else list(range(len(X)))
    payloads = ds["payloads"] if ds["payloads"] is not None else [{"n": i}
                                                                  for i in range(len(X))]
    live.upsert(ids, X, payloads)
    plan = check_plan(dims, None, live.nesting, K)
    for i in range(20):
        live.search(Q[i % len(Q)][None], K, plan)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        live.search(Q[i % len(Q)][None], K, plan)
        lat.append((time.perf_counter() - t) * 1000)
    single = _lat(np.asarray(lat))
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def run(tid: int) -> None:
        for i in range(tid, n, threads):
            t = time.perf_counter()
            live.search(Q[i % len(Q)][None], K, plan)
            per_thread[tid].append((time.perf_counter() - t) * 1000)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    conc = _lat(np.asarray([x for xs in per_thread for x in xs]))
    conc["throughput_qps"] = round(n / wall, 1)
    return {"plan": plan.as_dict(), "one_at_a_time": single, f"{threads}_threads": conc}


# ----------------------------------------------------------------------------- main
def bench(ds: dict, args) -> dict:
    name = ds["name"]
    dims = [ds["nesting"][1], ds["nesting"][-1]]
    data_dir = WORK / name / "data"
    server = prepare(ds, data_dir, WORK / name / "server.log")
    try:
        requests = args.requests_1m if name.startswith("synthetic") else args.requests
        log(f"{name}: HTTP, 1 client, {args.single} searches")
        single = http_single(server.url, name, ds, dims, args.single)
        log(f"{name}: HTTP, {args.procs * args.threads} clients, {requests} requests "
            f"({args.upsert_share:.0%} upserts of {args.upsert_batch})")
        load = http_load(server.url, name, ds, dims, requests, args.procs, args.threads,
                         args.upsert_share, args.upsert_batch, args.warmup)
        sweep = []
        if not name.startswith("synthetic"):
            for c in args.sweep:
                procs = min(c, args.procs)
                log(f"{name}: sweep, {c} clients, {args.sweep_requests} requests")
                r = http_load(server.url, name, ds, dims, args.sweep_requests, procs,
                              c // procs, args.upsert_share, args.upsert_batch, args.warmup)
                r.pop("error_samples")
                sweep.append(r)
        with __import__("httpx").Client(base_url=server.url, timeout=120) as h:
            count = h.get(f"/collections/{name}").json()["count"]
    finally:
        server.kill()
    log(f"{name}: in-process searches")
    inproc = in_process(ds, dims, args.single, args.procs * args.threads)
    p99_http = load["search"]["p99_ms"]
    p99_in = inproc["one_at_a_time"]["p99_ms"]
    limit = 3 * p99_in + 5
    return {
        "collection": name, "source": ds["source"], "points": int(len(ds["X"])),
        "dim": int(ds["X"].shape[1]), "nesting": ds["nesting"], "count_after": count,
        "search": {"k": K, "dims": dims, "shortlist": inproc["plan"]["shortlist"],
                   "queries": int(len(ds["Q"]))},
        "http_load": load, "http_one_client": single, "in_process": inproc,
        "http_concurrency_sweep": sweep,
        "target": {"rule": "search p99 over HTTP (under load) <= 3 x in-process p99 + 5 ms",
                   "http_p99_ms": p99_http, "in_process_p99_ms": p99_in,
                   "limit_ms": round(limit, 3), "met": bool(p99_http <= limit),
                   "zero_errors": load["errors"] == 0,
                   "requests_target_met": load["requests"] >= 100_000},
        "server": {"durability": "full", "log_level": "info", "command": "nestemb serve"},
    }


def write_md(results: dict, path: Path) -> None:
    lines = ["# Service load benchmark", "",
             f"Machine: {os.cpu_count()} CPUs (shared); server and clients on the same machine "
             "(loopback). Command: `python benchmarks/service.py` (see its docstring).", ""]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        L, S, I = r["http_load"], r["http_one_client"], r["in_process"]
        conc = next(v for k, v in I.items() if k.endswith("_threads"))
        t = r["target"]
        lines += [
            f"## {name}", "",
            f"{r['source']}; {r['points']:,} points of {r['dim']} dims, nesting {r['nesting']}; "
            f"searches k={r['search']['k']}, dims {r['search']['dims']}, shortlist "
            f"{r['search']['shortlist']}.", "",
            f"{L['clients']} clients ({L['processes']} processes x {L['threads_per_process']} "
            f"threads), {L['requests']:,} requests in {L['seconds']} s: "
            f"**{L['throughput_rps']} requests/s, {L['errors']} errors**.", "",
            "| | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|",
            f"| search over HTTP, {L['clients']} clients | {L['search']['n']:,} | "
            f"{L['search']['p50_ms']} | {L['search']['p99_ms']} | {L['search']['max_ms']} |",
            f"| upsert over HTTP, {L['clients']} clients | {L['upsert']['n']:,} | "
            f"{L['upsert'].get('p50_ms')} | {L['upsert'].get('p99_ms')} | "
            f"{L['upsert'].get('max_ms')} |",
            f"| search over HTTP, 1 client | {S['n']:,} | {S['p50_ms']} | {S['p99_ms']} | "
            f"{S['max_ms']} |",
            f"| (server's own timing of those) | {S['server_timing_total']['n']:,} | "
            f"{S['server_timing_total']['p50_ms']} | {S['server_timing_total']['p99_ms']} | "
            f"{S['server_timing_total']['max_ms']} |",
            f"| search in-process, one at a time | {I['one_at_a_time']['n']:,} | "
            f"{I['one_at_a_time']['p50_ms']} | {I['one_at_a_time']['p99_ms']} | "
            f"{I['one_at_a_time']['max_ms']} |",
            f"| search in-process, {L['clients']} threads | {conc['n']:,} | {conc['p50_ms']} | "
            f"{conc['p99_ms']} | {conc['max_ms']} |", "",
            f"Target (search p99 over HTTP under load <= 3 x in-process p99 + 5 ms = "
            f"{t['limit_ms']} ms): **{'met' if t['met'] else 'missed'}** "
            f"({t['http_p99_ms']} ms). Zero errors: **{'met' if t['zero_errors'] else 'missed'}**."
            f" 100,000 requests: **{'met' if t['requests_target_met'] else 'not run'}**.", ""]
        if r.get("http_concurrency_sweep"):
            lines += ["Same mix with fewer clients (limit: "
                      f"{t['limit_ms']} ms):", "",
                      "| clients | requests | requests/s | errors | search p50 ms | search p99 ms "
                      "| upsert p50 ms | upsert p99 ms | search p99 within the limit |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
            for w in r["http_concurrency_sweep"] + [L]:
                lines.append(
                    f"| {w['clients']} | {w['requests']:,} | {w['throughput_rps']} | "
                    f"{w['errors']} | {w['search']['p50_ms']} | {w['search']['p99_ms']} | "
                    f"{w['upsert'].get('p50_ms')} | {w['upsert'].get('p99_ms')} | "
                    f"{'yes' if w['search']['p99_ms'] <= t['limit_ms'] else 'no'} |")
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["scifact", "synthetic-1m"],
                    choices=["scifact", "synthetic-1m", "synthetic-100k"])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--requests-1m", type=int, default=20_000,
                    help="requests on the synthetic collections (each search scans 1M rows)")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--upsert-share", type=float, default=0.10)
    ap.add_argument("--upsert-batch", type=int, default=10)
    ap.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 4, 8],
                    help="also run these client counts (SciFact only) to see where the "
                         "latency target holds")
    ap.add_argument("--sweep-requests", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=50, help="requests per client thread "
                    "before the measured ones")
    ap.add_argument("--single", type=int, default=2000, help="searches of the one-client "
                    "and in-process measurements")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "NESTEMB_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.datasets:
        if name == "scifact":
            ds = scifact_vectors(args.data)
        else:
            ds = synthetic_vectors(1_000_000 if name == "synthetic-1m" else 100_000)
        r = bench(ds, args)
        r["command"] = "python benchmarks/service.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        results[name] = r
        del ds
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        write_md(results, args.out.with_suffix(".md"))
        L = r["http_load"]
        log(f"{name}: {L['requests']} requests, {L['throughput_rps']} req/s, {L['errors']} "
            f"errors; search p50/p99 {L['search']['p50_ms']}/{L['search']['p99_ms']} ms over "
            f"HTTP vs {r['in_process']['one_at_a_time']['p50_ms']}/"
            f"{r['in_process']['one_at_a_time']['p99_ms']} ms in-process; target "
            f"{'met' if r['target']['met'] else 'missed'}")
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
