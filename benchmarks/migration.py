"""A served collection that changes model while it serves (issue 23): SciFact, all-MiniLM-L6-v2
-> all-mpnet-base-v2 (the client posts the new vectors) and -> the nestemb-trained MiniLM
(``runs/minilm-cpu``: the server re-encodes the stored texts itself), under 16 searching clients.

Per pair, on a real ``nestemb serve`` (started through the CLI, default settings):

1. the collection ``scifact`` (encoder ``minilm``): the 5,183 documents as MiniLM vectors, each
   payload holding its text; 16 clients (2 processes x 8 threads, one kept-alive connection
   each) search it with SciFact *train* queries (k=10) for the whole run; their p50/p99 before
   the migration is the baseline (the evaluation uses the *test* queries, so that the backfill's
   most-retrieved-first order never sees them);
2. the migration starts (``sample_size`` points: their new vectors are the sample the maps are
   fitted on), is mapped, and from then on half of the clients search with the new model;
3. nDCG@10 of the 300 test queries by the new model (``model: new``) right after the mapping
   (the encoder-mode backfill is paused for each measurement), then at each quarter of the
   backfill; the old model's nDCG@10 during the migration; the maps' gate estimate and the
   service's probe agreement;
4. at 100 %: the top-10 of every test query (exact plan) against a fresh re-index of the same
   texts by the new model in a second collection on the same server, id for id; then
   ``finish``.

Reported: nDCG@10 against the backfilled share (plot), search latency over time (plot: p50 and
p99 per 5 s, phases marked), errors, p99 before / during / after, the time from start to
finish, and the stored bytes (database + WAL files, and the vectors' logical bytes) before,
during and after. Targets: right after mapping >= 95 % of the re-index nDCG@10 (new-model
queries); old-model queries no worse than before; quality rising with the backfilled share; at
100 % the top-10 equal to the re-index's; zero errors; p99 during <= 3x p99 before.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/migration.py
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/migration.py --pairs trained

Needs the encodings cached by ``benchmarks/upgrade.py text --mpnet --trained runs/minilm-cpu``
(``runs/cache/text``; mpnet at 128 tokens) and the trained model ``runs/minilm-cpu``. Writes
``docs/results/migration/{results.json, migration.md, ndcg.png, latency.png}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the shared harnesses: tests/harness
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.crash import RestartableServer  # noqa: E402
from text_data import embed, load_encoder, scifact  # noqa: E402

from nestemb.eval.retrieval import ndcg_at_k  # noqa: E402
from nestemb.io import write_json  # noqa: E402
from nestemb.service.client import ServiceClient  # noqa: E402
from nestemb.service.store import DB_NAME  # noqa: E402

WORK = REPO / "runs" / "migration"
RESULTS = REPO / "docs" / "results" / "migration"
NAME, REINDEX = "scifact", "reindex"
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)
PAIRS = {
    "mpnet": {"model": "mpnet", "max_len": 128, "mode": "client"},
    "trained": {"model": "runs/minilm-cpu", "max_len": None, "mode": "encoder"},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- load
def _client(url: str, queries: dict, threads: int, seed: int, stop, phase, out: str) -> None:
    """One load process: ``threads`` clients searching until ``stop``; at ``phase`` 1 (mapped)
    odd threads search with the new model, at 2 (before the finish) all of them. Writes ``(t, ms, status, space)`` rows to ``out``."""
    import httpx

    rows: list = []
    lock = threading.Lock()

    def run(t: int) -> None:
        rng = np.random.default_rng(seed * 100 + t)
        mine = []
        with httpx.Client(base_url=url, timeout=60) as h:
            while not stop.is_set():
                new = phase.value == 2 or (phase.value == 1 and t % 2 == 1)
                Q = queries["new" if new else "old"]
                q = Q[int(rng.integers(len(Q)))]
                body = {"vector": q.tolist(), "k": 10, "model": "new" if new else "old"}
                t0 = time.time()
                try:
                    r = h.post(f"/collections/{NAME}/search", json=body)
                    status = r.status_code
                    space = r.json().get("migration", {}) if status == 200 else {}
                    space = (space or {}).get("space", "old")
                except httpx.HTTPError:
                    status, space = -1, "error"
                mine.append((t0, (time.time() - t0) * 1000, status, space))
        with lock:
            rows.extend(mine)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    np.save(out, np.array([(a, b, c, {"old": 0, "new": 1}.get(d, -1)) for a, b, c, d in rows],
                          dtype=np.float64))


class Load:
    """16 searching clients in 2 processes, started and stopped around the whole run."""

    def __init__(self, url: str, queries: dict, work: Path, procs: int = 2, threads: int = 8):
        ctx = mp.get_context("spawn")
        self.stop, self.phase = ctx.Event(), ctx.Value("i", 0)
        self.outs = [str(work / f"load-{i}.npy") for i in range(procs)]
        self.ps = [ctx.Process(target=_client, args=(url, queries, threads, i, self.stop,
                                                     self.phase, o))
                   for i, o in enumerate(self.outs)]
        for p in self.ps:
            p.start()

    def finish(self) -> np.ndarray:
        self.stop.set()
        for p in self.ps:
            p.join()
        return np.concatenate([np.load(o) for o in self.outs])


def _p(ms: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(ms, q)), 2) if len(ms) else None


def latency_stats(rows: np.ndarray, a: float, b: float) -> dict:
    sel = rows[(rows[:, 0] >= a) & (rows[:, 0] < b)]
    ok = sel[sel[:, 2] == 200]
    return {"requests": int(len(sel)), "errors": int((sel[:, 2] != 200).sum()),
            "p50_ms": _p(ok[:, 1], 50), "p99_ms": _p(ok[:, 1], 99),
            "per_s": round(len(sel) / max(b - a, 1e-9), 1)}


# ----------------------------------------------------------------------------- measures
def ndcg(c: ServiceClient, name: str, Q: np.ndarray, sf, model: str | None = None,
         exact: bool = False) -> tuple[float, list[list[str]]]:
    """Mean nDCG@10 of the test queries through the service, and their top-10 ids."""
    tops: list[list[str]] = []
    for a in range(0, len(Q), 100):
        searches = []
        for q in Q[a:a + 100]:
            s = {"vector": q.tolist(), "k": 10}
            if model:
                s["model"] = model
            if exact:
                s["dims"] = [len(q)]
            searches.append(s)
        res = c._call("POST", f"/collections/{name}/search/batch", {"searches": searches})
        tops += [[h["id"] for h in r["hits"]] for r in res["results"]]
    vals = [ndcg_at_k(t, sf.qrels.get(qid, {})) for t, qid in zip(tops, sf.query_ids)]
    return round(float(np.mean(vals)), 4), tops


def stored_bytes(data_dir: Path) -> dict:
    files = sum(p.stat().st_size for p in data_dir.glob(DB_NAME + "*"))
    maps = sum(p.stat().st_size for p in (data_dir / "migrations").rglob("*") if p.is_file())
    db = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT collection, COUNT(*), SUM(LENGTH(vector)) FROM points "
                          "GROUP BY collection").fetchall()
        free = db.execute("PRAGMA freelist_count").fetchone()[0] * \
            db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    return {"db_files": files, "free_pages_bytes": free, "maps": maps,
            "vectors": {r[0]: {"points": r[1], "bytes": r[2]} for r in rows}}


# ----------------------------------------------------------------------------- one pair
def run_pair(key: str, args, sf, train_q: list[str]) -> dict:
    spec = PAIRS[key]
    old_enc = load_encoder("minilm")
    new_enc = load_encoder(spec["model"], spec["max_len"])
    X = embed(old_enc, sf.docs)
    Qo, Qn = embed(old_enc, sf.queries), embed(new_enc, sf.queries)
    log(f"{key}: encoding {len(train_q)} train queries for the load (cached)")
    load_q = {"old": embed(old_enc, train_q), "new": embed(new_enc, train_q)}
    Y = embed(new_enc, sf.docs) if spec["mode"] == "client" else None
    work = WORK / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_dir = work / "data"
    extra = ("--encoders", f"trained={REPO / spec['model']}") if spec["mode"] == "encoder" \
        else ()
    server = RestartableServer(data_dir, "full", work / "server.log", extra_args=extra,
                               startup_timeout=600, log_level="info")
    server.start()
    out: dict = {"pair": f"all-MiniLM-L6-v2 -> {new_enc.manifest.model_id}",
                 "mode": spec["mode"], "n_docs": len(sf.docs), "n_queries": len(sf.queries),
                 "sample_size": args.sample, "clients": args.clients, "curve": [],
                 "bytes": {}, "events": {}}
    c = ServiceClient(server.url, timeout=600)
    try:
        c.create(NAME, encoder="minilm")
        t = time.perf_counter()
        for a in range(0, len(X), 500):
            c.upsert(NAME, [{"id": sf.doc_ids[i], "vector": X[i].tolist(),
                             "payload": {"text": sf.docs[i]}}
                            for i in range(a, min(a + 500, len(X)))])
        log(f"{key}: {len(X)} documents uploaded in {time.perf_counter() - t:.1f} s")
        out["old_ndcg_before"], before_tops = ndcg(c, NAME, Qo, sf)
        out["bytes"]["before"] = stored_bytes(data_dir)
        load = Load(server.url, load_q, work, procs=2, threads=args.clients // 2)
        ev = out["events"]
        ev["load_start"] = time.time()
        time.sleep(args.baseline)
        ev["migration_start"] = time.time()
        if spec["mode"] == "client":
            c.migrate(NAME, nesting=[32, 64, 128, 256, 512, Y.shape[1]],
                      model_id=new_enc.manifest.model_id, sample_size=args.sample)
            rng = np.random.default_rng(0)
            sample = rng.choice(len(Y), size=args.sample, replace=False)
            for a in range(0, len(sample), 500):
                c.post_vectors(NAME, [{"id": sf.doc_ids[i], "vector": Y[i].tolist()}
                                      for i in sample[a:a + 500]])
        else:
            c.migrate(NAME, encoder="trained", sample_size=args.sample, batch=args.batch)
        while (st := c.migration(NAME))["state"] != "backfilling":
            if st["state"] == "failed":
                raise RuntimeError(f"migration failed: {st['error']}")
            time.sleep(0.5)
        if spec["mode"] == "encoder":
            c.pause_migration(NAME)
        st = c.migration(NAME)
        ev["mapped"] = time.time()
        load.phase.value = 1
        log(f"{key}: mapped in {ev['mapped'] - ev['migration_start']:.1f} s; map {st['map']}")
        out["map"] = st["map"]
        out["bytes"]["during"] = stored_bytes(data_dir)
        out["old_ndcg_during"], during_tops = ndcg(c, NAME, Qo, sf, "old")
        out["old_tops_unchanged"] = during_tops == before_tops

        evals = 0.0

        def point() -> None:
            nonlocal evals
            t = time.time()
            s = c.migration(NAME)
            v, _ = ndcg(c, NAME, Qn, sf, "new")
            out["curve"].append({"backfilled": s["backfilled"], "ndcg10": v,
                                 "probe": (s["probe"] or {}).get("agreement"),
                                 "t": round(time.time() - ev["migration_start"], 1)})
            log(f"{key}: backfilled {s['backfilled']:.3f}: new-model nDCG@10 {v:.4f}, "
                f"probe {s['probe']}")
            evals += time.time() - t

        point()
        for target in CHECKPOINTS:
            if spec["mode"] == "client":
                while c.migration(NAME)["backfilled"] < target - 1e-9:
                    ids = c.migration_queue(NAME, 500)
                    if not ids:
                        break
                    pos = {d: i for i, d in enumerate(sf.doc_ids)}
                    c.post_vectors(NAME, [{"id": d, "vector": Y[pos[d]].tolist()} for d in ids])
            else:
                c.resume_migration(NAME)
                while c.migration(NAME)["backfilled"] < target - 1e-9:
                    time.sleep(0.5)
                c.pause_migration(NAME)
            point()
        ev["complete"] = time.time()
        out["eval_seconds"] = round(evals, 1)
        out["time_to_complete_s"] = round(ev["complete"] - ev["migration_start"] - evals, 1)
        c.resume_migration(NAME)
        # a fresh re-index of the same texts by the new model, beside it
        if spec["mode"] == "client":
            c.create(REINDEX, nesting=[32, 64, 128, 256, 512, Y.shape[1]])
            for a in range(0, len(Y), 500):
                c.upsert(REINDEX, [{"id": sf.doc_ids[i], "vector": Y[i].tolist()}
                                   for i in range(a, min(a + 500, len(Y)))])
        else:
            c.create(REINDEX, encoder="trained")
            for a in range(0, len(X), 64):
                c.upsert(REINDEX, [{"id": sf.doc_ids[i], "text": sf.docs[i]}
                                   for i in range(a, min(a + 64, len(X)))])
        ev["reindexed"] = time.time()
        out["reindex_ndcg"], re_tops = ndcg(c, REINDEX, Qn, sf, exact=True)
        _, mig_tops = ndcg(c, NAME, Qn, sf, "new", exact=True)
        out["top10_equal_queries"] = sum(a == b for a, b in zip(mig_tops, re_tops))
        out["bytes"]["complete"] = stored_bytes(data_dir)
        load.phase.value = 2  # every client on the new model before the old vectors go
        time.sleep(2)
        t = time.time()
        ended = c.finish_migration(NAME)
        ev["finished"] = time.time()
        out["finish_seconds"] = round(ev["finished"] - t, 3)
        out["time_to_finish_s"] = round(ev["finished"] - ev["migration_start"], 1)
        out["collection_after"] = {k: ended["collection"][k] for k in ("encoder", "model_id",
                                                                       "dim", "count")}
        _, after_tops = ndcg(c, NAME, Qn, sf, exact=True)
        out["top10_equal_after_finish"] = sum(a == b for a, b in zip(after_tops, re_tops))
        c.drop(REINDEX)
        time.sleep(args.after)
        ev["load_stop"] = time.time()
        rows = load.finish()
        out["bytes"]["after"] = stored_bytes(data_dir)
    finally:
        c.close()
        server.stop()
    e = out["events"]
    out["latency"] = {
        "before": latency_stats(rows, e["load_start"] + 3, e["migration_start"]),
        "during": latency_stats(rows, e["migration_start"], e["finished"]),
        "after": latency_stats(rows, e["finished"], e["load_stop"]),
        "all_errors": int((rows[:, 2] != 200).sum())}
    b, d = out["latency"]["before"]["p99_ms"], out["latency"]["during"]["p99_ms"]
    out["p99_ratio"] = round(d / b, 2) if b and d else None
    np.save(work / "latency.npy", rows)
    out["latency_series"] = series(rows, e)
    return out


def series(rows: np.ndarray, ev: dict, step: float = 5.0) -> list[dict]:
    t0 = ev["load_start"]
    out = []
    for a in np.arange(t0, ev["load_stop"], step):
        sel = rows[(rows[:, 0] >= a) & (rows[:, 0] < a + step) & (rows[:, 2] == 200)]
        if len(sel):
            out.append({"t": round(float(a - t0), 1), "p50": _p(sel[:, 1], 50),
                        "p99": _p(sel[:, 1], 99), "n": int(len(sel))})
    return out


# ----------------------------------------------------------------------------- report
def plot(results: dict, folder: Path) -> None:
    from nestemb.plotting import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results.values():
        xs = [p["backfilled"] for p in r["curve"]]
        ax.plot(xs, [p["ndcg10"] for p in r["curve"]], "o-", label=f"{r['pair']} (migrating)")
        ax.axhline(r["reindex_ndcg"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                   label=f"{r['pair']}: re-index")
    ax.set_xlabel("backfilled share (true new-model vectors)")
    ax.set_ylabel("nDCG@10, new-model queries (SciFact test)")
    ax.legend(fontsize=7)
    save_figure(fig, folder / "ndcg.png")
    fig, axes = plt.subplots(len(results), 1, figsize=(7, 3 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results.values()):
        s = r["latency_series"]
        ax.plot([p["t"] for p in s], [p["p99"] for p in s], label="p99")
        ax.plot([p["t"] for p in s], [p["p50"] for p in s], label="p50")
        e = r["events"]
        for name in ("migration_start", "mapped", "complete", "finished"):
            ax.axvline(e[name] - e["load_start"], ls=":", color="grey")
            ax.text(e[name] - e["load_start"], ax.get_ylim()[1] * 0.9, name, fontsize=6,
                    rotation=90)
        ax.set_title(f"{r['pair']}: search latency, {r['clients']} clients", fontsize=9)
        ax.set_xlabel("seconds")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    save_figure(fig, folder / "latency.png")


def table(results: dict) -> str:
    lines = ["| pair | mode | re-index nDCG@10 | right after mapping | 25 % | 50 % | 75 % | "
             "100 % | old model before / during | top-10 = re-index | p99 before / during "
             "(ratio) | errors start -> finish | start -> complete |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        c, re = r["curve"], r["reindex_ndcg"]
        cells = [f"{p['ndcg10']:.4f} ({p['ndcg10'] / re:.1%}, at {p['backfilled']:.0%})"
                 for p in c]
        lat = r["latency"]
        lines.append(
            f"| {r['pair']} | {r['mode']} | {re:.4f} | {' | '.join(cells)} | "
            f"{r['old_ndcg_before']:.4f} / {r['old_ndcg_during']:.4f} | "
            f"{r['top10_equal_queries']}/{r['n_queries']} | {lat['before']['p99_ms']} / "
            f"{lat['during']['p99_ms']} ms ({r['p99_ratio']}x) | {lat['during']['errors']} | "
            f"{r['time_to_complete_s']} s |")
    lines += ["", "Stored bytes (SQLite files, of which free pages SQLite reuses; the vectors' "
              "logical bytes):", "",
              "| pair | before | during (mapped) | complete | after finish |", "|---|---|---|---|---|"]
    for r in results.values():
        b = r["bytes"]

        def fmt(x: dict) -> str:
            v = sum(c["bytes"] or 0 for c in x["vectors"].values())
            return (f"{x['db_files'] / 2**20:.1f} MiB files ({x['free_pages_bytes'] / 2**20:.1f} "
                    f"free), {v / 2**20:.1f} MiB vectors")

        lines.append(f"| {r['pair']} | {fmt(b['before'])} | {fmt(b['during'])} | "
                     f"{fmt(b['complete'])} | {fmt(b['after'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--sample", type=int, default=1000, help="migration sample_size")
    ap.add_argument("--batch", type=int, default=32, help="encoder-mode backfill batch")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--baseline", type=float, default=30.0, help="seconds of load before")
    ap.add_argument("--after", type=float, default=15.0, help="seconds of load after")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    os.chdir(REPO)
    sf = scifact(Path(args.shared) / "scifact", "test")
    train = scifact(Path(args.shared) / "scifact", "train")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for key in args.pairs:
        results[key] = run_pair(key, args, sf, train.queries)
        write_json(path, results)
    results = {k: results[k] for k in PAIRS if k in results}
    plot(results, folder)
    (folder / "migration.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
