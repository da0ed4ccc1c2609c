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

With ``--default-plan`` the searches give no stage dims: the collection's default plan (tuned
for recall@10 0.99 against exact search) answers them, and the run also reports that plan's
recall@10 on 500 held-out queries (against :func:`nestemb.exact.exact_search`), the restart
times (after a graceful stop, which writes a snapshot, and after SIGKILL, which replays the
writes since the snapshot from SQLite) and, for two datasets, the throughput of the larger
collection over the smaller (``_ratio``; target >= 2/3: a served collection's first stage is an
HNSW graph from 50k points on, so 1M points cost about what 10k do).

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service.py
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service.py \\
        --datasets synthetic-1m --requests 20000
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service.py --default-plan \\
        --datasets synthetic-10k synthetic-1m --requests-1m 5000 --single 500 \\
        --out docs/results/service/funnel-1m.json

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
    search_bodies = [json.dumps(_body(q, dims)).encode()
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
                                       f"timed out") from None

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


def _body(q: np.ndarray, dims: list[int] | None) -> dict:
    """A search request: k=10, the stage dims when given, else the collection's default plan."""
    return {"vector": q.tolist(), "k": K, **({"dims": dims} if dims else {})}


def served_recall(url: str, name: str, ds: dict, n: int = 500) -> dict:
    """recall@10 of the default plan over HTTP on ``n`` held-out queries, against the one exact
    search (:func:`nestemb.exact.exact_search`) over the collection's vectors."""
    import httpx

    from nestemb.exact import exact_search, knn_intersection

    Q = ds["Q"][:n]
    ids = np.asarray(ds["ids"] if ds["ids"] is not None else np.arange(len(ds["X"])))
    truth = ids[exact_search(ds["X"], Q, K)[1]]
    found, plan = [], None
    with httpx.Client(base_url=url, timeout=120) as h:
        for a in range(0, len(Q), 100):
            res = h.post(f"/collections/{name}/search/batch", json={"searches": [
                _body(q, None) for q in Q[a:a + 100]]}).json()["results"]
            plan = res[0]["plan"]
            found += [[x["id"] for x in r["hits"]] + [None] * (K - len(r["hits"])) for r in res]
    found = np.array(found, dtype=object)
    return {"recall10": knn_intersection(found, truth.astype(object)), "queries": len(Q),
            "plan": plan}


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
    bodies = [json.dumps(_body(q, dims)).encode() for q in Q]
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
    from nestemb.index.plan import Plan
    from nestemb.service.collection import LiveCollection

    X, Q = ds["X"], ds["Q"]
    live = LiveCollection(ds["name"], ds["nesting"])
    ids = ds["ids"] if ds["ids"] is not None else list(range(len(X)))
    payloads = ds["payloads"] if ds["payloads"] is not None else [{"n": i}
                                                                  for i in range(len(X))]
    live.upsert(ids, X, payloads)
    if dims:
        plan = Plan.check(dims, None, live.nesting, K)
    else:  # the default plan, after the tuning the server runs
        live.tune()
        plan = live.default_plan()
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
    dims = None if args.default_plan else [ds["nesting"][1], ds["nesting"][-1]]
    data_dir = WORK / name / "data"
    server = prepare(ds, data_dir, WORK / name / "server.log")
    restart: dict = {}
    try:
        recall = served_recall(server.url, name, ds)
        log(f"{name}: default plan {recall['plan']}: recall@10 {recall['recall10']:.4f} on "
            f"{recall['queries']} held-out queries")
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
        # restarts: after a graceful stop (a snapshot is written) and after SIGKILL (the
        # snapshot plus the writes since it, replayed from SQLite)
        status, stop_s = server.stop(timeout=600)
        restart["graceful_stop_s"] = round(stop_s, 3)
        restart["start_after_graceful_stop_s"] = round(server.start(), 3)
        http_load(server.url, name, ds, dims, 500, 1, 2, 1.0, args.upsert_batch, 0)
        server.kill()
        restart["start_after_sigkill_s"] = round(server.start(), 3)
        log(f"{name}: restart {restart}")
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
        "search": {"k": K, "dims": dims or inproc["plan"]["dims"],
                   "shortlist": inproc["plan"]["shortlist"], "plan": inproc["plan"],
                   "queries": int(len(ds["Q"]))},
        "default_plan_recall": recall, "restart": restart,
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
        L, S, inproc = r["http_load"], r["http_one_client"], r["in_process"]
        conc = next(v for k, v in inproc.items() if k.endswith("_threads"))
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
            f"| search in-process, one at a time | {inproc['one_at_a_time']['n']:,} | "
            f"{inproc['one_at_a_time']['p50_ms']} | {inproc['one_at_a_time']['p99_ms']} | "
            f"{inproc['one_at_a_time']['max_ms']} |",
            f"| search in-process, {L['clients']} threads | {conc['n']:,} | {conc['p50_ms']} | "
            f"{conc['p99_ms']} | {conc['max_ms']} |", "",
            f"Target (search p99 over HTTP under load <= 3 x in-process p99 + 5 ms = "
            f"{t['limit_ms']} ms): **{'met' if t['met'] else 'missed'}** "
            f"({t['http_p99_ms']} ms). Zero errors: **{'met' if t['zero_errors'] else 'missed'}**."
            f" 100,000 requests: **{'met' if t['requests_target_met'] else 'not run'}**.", ""]
        if r.get("default_plan_recall"):
            rc, rs = r["default_plan_recall"], r["restart"]
            lines += [f"Default plan {rc['plan']['dims']} / {rc['plan']['shortlist']} "
                      f"(source {rc['plan']['source']}): recall@10 **{rc['recall10']:.4f}** on "
                      f"{rc['queries']} held-out queries against exact search. Restart: "
                      f"{rs.get('start_after_graceful_stop_s')} s after a graceful stop "
                      f"(snapshot written in {rs.get('graceful_stop_s')} s), "
                      f"{rs.get('start_after_sigkill_s')} s after SIGKILL (snapshot + the "
                      "writes since, from SQLite).", ""]
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
    if "_ratio" in results:
        q = results["_ratio"]
        lines += [f"Throughput {q['large']} / {q['small']} (same run): **{q['throughput_ratio']}"
                  f"** (target {q['target']}: {'met' if q['met'] else 'missed'}).", ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["scifact", "synthetic-1m"],
                    help="scifact, or synthetic-N (N points, e.g. synthetic-10k, "
                         "synthetic-200k, synthetic-1m)")
    ap.add_argument("--default-plan", action="store_true", help="search with the "
                    "collection's default plan (tuned for recall@10 0.99) instead of stage dims")
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
            size = name.split("-", 1)[1].lower()
            ds = synthetic_vectors(int(float(size.rstrip("km")) * {"k": 1000, "m": 1_000_000}.get(
                size[-1], 1)))
            ds["name"] = name
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
    names = [n for n in args.datasets if n in results]
    if len(names) == 2:  # throughput of the larger collection against the smaller, one run
        small, big = sorted(names, key=lambda n: results[n]["points"])
        ratio = (results[big]["http_load"]["throughput_rps"]
                 / results[small]["http_load"]["throughput_rps"])
        results["_ratio"] = {"small": small, "large": big, "throughput_ratio": round(ratio, 3),
                             "target": ">= 2/3", "met": ratio >= 2 / 3}
        log(f"throughput {big} / {small}: {ratio:.3f}")
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        write_md(results, args.out.with_suffix(".md"))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
