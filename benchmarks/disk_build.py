"""A gallery larger than the memory the build may use (issue 24, part 5): ``build_on_disk`` under
a cap on the process's private memory, with its resident memory sampled during the build.

The build runs in a child process whose ``RLIMIT_DATA`` (heap and anonymous maps: what a copy
of the vectors needs; the memory-mapped gallery is file-backed and does not count) is capped at
``--fraction`` (default 1/2) of the gallery's bytes beyond what the process holds after its
imports. A thread samples ``/proc/self/status`` every 20 ms: the peak anonymous resident memory
(``RssAnon``) and the peak resident total (``VmRSS``, file pages of the gallery included, which
the kernel can drop at any time). The same build in memory (``add``, the pre-issue path) runs
under the same cap as the control, and must fail. The built index then answers held-out queries,
checked against exact search on the memory-mapped gallery.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/disk_build.py \\
        --out docs/results/search/disk_build
        # default gallery: the text corpus's MiniLM vectors through the search benchmark's
        # retrofit (520k x 384, 799 MB); HNSW on the int8 128-d prefix, M 16, efC 200

``--gallery X.npy --queries Q.npy`` takes any float32 gallery instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = textwrap.dedent("""
    import json, resource, sys, threading, time
    import faiss, numpy as np
    from nestemb.index import FunnelIndex, build_on_disk

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                    if l.startswith(key + ":"))

    gallery, out, mode, fraction, d0, m, dtype = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    X = np.load(gallery, mmap_mode="r")
    base = status("VmData")
    cap = base + int(X.nbytes * fraction)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    peak = {"RssAnon": 0, "VmRSS": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for k in peak:
                peak[k] = max(peak[k], status(k))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    anon0 = status("RssAnon")
    t = time.perf_counter()
    index = FunnelIndex(dims=(d0, X.shape[1]), shortlist=(150,), first_stage="hnsw", hnsw_m=m,
                        prefix_dtype=dtype, ef_construction=200, ef_search=150)
    ok, error = True, None
    try:
        if mode == "disk":
            index = build_on_disk(index, X, out)
        else:
            index.add(X).save(out)
    except (MemoryError, RuntimeError) as e:
        ok, error = False, f"{type(e).__name__}: {str(e)[:200]}"
    seconds = time.perf_counter() - t
    stop.set()
    time.sleep(0.05)
    print(json.dumps({"mode": mode, "ok": ok, "error": error, "seconds": seconds,
                      "gallery_bytes": int(X.nbytes), "cap_bytes_beyond_imports": cap - base,
                      "peak_rss_anon_bytes": peak["RssAnon"], "rss_anon_after_imports": anon0,
                      "peak_vm_rss_bytes": peak["VmRSS"]}))
""")


def run_child(gallery: Path, out: Path, mode: str, fraction: float, d0: int, m: int,
              dtype: str) -> dict:
    import os

    # glibc reserves 64 MB of address space per thread arena, which RLIMIT_DATA counts
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(gallery), str(out), mode, str(fraction),
                        str(d0), str(m), dtype], capture_output=True, text=True, env=env)
    if r.returncode != 0 and not r.stdout.strip():
        return {"mode": mode, "ok": False, "error": r.stderr.strip().splitlines()[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from nestemb.exact import exact_search, knn_intersection
    from nestemb.index import load_index
    from nestemb.io import write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gallery", type=Path, help="float32 .npy gallery (default: the corpus's MiniLM vectors)")
    ap.add_argument("--queries", type=Path, help="float32 .npy queries (default: the corpus's)")
    ap.add_argument("--fraction", type=float, default=0.5, help="memory cap as a fraction of the gallery")
    ap.add_argument("--d0", type=int, default=128, help="the graph's prefix (the first stage is "
                    "held in memory: graph links plus the d0-prefix codes of every vector)")
    ap.add_argument("--m", type=int, default=16, help="the graph's degree")
    ap.add_argument("--prefix-dtype", default="int8", help="the graph's prefix storage")
    ap.add_argument("--work", type=Path, default=Path("runs/disk_build"))
    ap.add_argument("--out", type=Path, default=Path("runs/disk_build/result"))
    a = ap.parse_args(argv)
    if a.gallery is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))

        import search_data

        # the corpus made nested by the search benchmark's retrofit (fitted and cached on first use)
        X, Q, *_ = search_data.text_corpus_embeddings("text-minilm", Path("runs/bench_cache"))
        a.gallery, a.queries = Path(X.filename), Path(Q.filename)
    a.work.mkdir(parents=True, exist_ok=True)
    result = {"gallery": str(a.gallery), "fraction": a.fraction, "d0": a.d0, "hnsw_m": a.m,
              "prefix_dtype": a.prefix_dtype,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for mode in ("disk", "memory"):
        out = a.work / f"index-{mode}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result[mode] = run_child(a.gallery, out, mode, a.fraction, a.d0, a.m, a.prefix_dtype)
        print(json.dumps(result[mode]), flush=True)
    if result["disk"]["ok"]:
        X = np.load(a.gallery, mmap_mode="r")
        Q = np.asarray(np.load(a.queries, mmap_mode="r")[:200], dtype=np.float32)
        index = load_index(a.work / "index-disk")
        truth = exact_search(X, Q, 10)[1]
        found = index.search(Q, 10)[1]
        result["recall_at_10_vs_exact"] = knn_intersection(found, truth)
        # the index's own exact search reads the streamed re-rank file: it must be the truth
        result["exact_through_the_index"] = knn_intersection(index.search_exact(Q, 10)[1], truth)
        result["index_bytes_per_vector"] = index.bytes_per_vector()
        print(json.dumps({"recall@10": result["recall_at_10_vs_exact"],
                          "exact through the index": result["exact_through_the_index"]}), flush=True)
    write_json(a.out / "disk_build.json", result)
    return 0 if result["disk"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
