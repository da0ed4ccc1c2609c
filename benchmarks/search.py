"""Search benchmark: nestemb's prefix-aware indexes side by side with FAISS, same run, same data.

Every method is measured on the same gallery and queries, with 1 and 2 threads (FAISS OpenMP,
torch and BLAS threads all set): recall@10 against the exact full-dimension top-10
(:func:`nestemb.exact.exact_search`, streamed over the memory-mapped gallery), single-query
latency (one query at a time: mean and median over ``--single-queries``), batch QPS, build time,
resident and memory-mapped bytes per vector; for exhaustive first stages also the bytes scanned
per query and the effective GB/s against the machine's memory bandwidth (numpy sum, 1 GiB).

FAISS peers on the full vectors: flat, HNSW (M 16 and 32, efSearch from 8), HNSW-SQ8, IVF-Flat,
IVF-PQ (alone and with a float16 refine stage), IVF-RaBitQ (4 bits) + float16 refine; with the ``bench`` extra (``make bench``) also
hnswlib, usearch (f32, i8), ScaNN (tree + AH + reorder) and rabitqlib (HNSW + RaBitQ), each at its
documented defaults over an ef / leaves sweep (:func:`peer_families`). nestemb: FunnelIndex with flat and HNSW prefix
stages for each prefix dtype (float32, int8 with trimmed ranges, binary with int8 rescoring,
float16 full vectors), AdaptiveIVF, AdANNS-OPQ (128-d only). FAISS indexes are built one at a
time (streamed in chunks from the memory map) and freed before the next; the gallery is never
held twice in RAM. nestemb indexes are built, saved and searched as ``load_index`` returns them
(full vectors memory-mapped), so resident / mapped bytes are those of a deployment.

Data sets (see ``search_data.py``): ``fmnist`` (a), ``fmnist-aug`` (b, 128-d), ``scifact`` (c),
``fmnist1024`` (d, 1M x 1,024), ``synthetic`` (development; ``--dim``), and the real text corpus
(``benchmarks/text_corpus.py``, 520k passages): ``text-minilm`` / ``text-mpnet``, the adaptor in
the loop: the peers index the raw vectors, nestemb the vectors made nested by a retrofit fitted on
50,000 passages, and every recall is against exact search on the raw vectors (what the user
wants). One command per set:

    # (d): 1M x 1024, ~40 min on 2 cores; writes docs/results/search/fmnist1024.{json,md,png}
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/search.py --datasets fmnist1024 \\
        --n 1000000 --out docs/results/search > runs/search1024/bench.log 2>&1
    # (b): 1M x 128 with the native funnel (needs the 128-d model)
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/search.py --datasets fmnist-aug \\
        --model runs/search128/model --n 1000000 --out docs/results/search/native_128
    # the text corpus through the retrofit, one thread (encode it first: text_corpus.py encode)
    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/search.py --datasets text-minilm \\
        --threads 1 --out docs/results/search/text

``--n 100000`` runs on the first rows of a cached bigger gallery (development), ``--resume``
keeps the families already in the output JSON, ``--report FILE`` re-prints tables and plots.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import shutil
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
import search_plot  # noqa: E402

from nestemb.exact import exact_search  # noqa: E402
from nestemb.index import AdaptiveIVFIndex, AdaptiveOPQIndex, FunnelIndex, knn_intersection, load_index, tune  # noqa: E402
from nestemb.index.quantize import code_bytes, hnsw_link_bytes  # noqa: E402
from nestemb.index.tune import measure  # noqa: E402
from nestemb.nesting import prefix_view  # noqa: E402

K = 10
TUNE_MAX_QUERIES = inspect.signature(tune).parameters["max_queries"].default
NESTEMB = search_plot.NESTEMB_METHODS
DEFAULT_MODEL = {"fmnist1024": "runs/search1024/model"}
# run order without --families: the families the targets compare come first, so a run cut
# short (then continued with --resume) has them
DEFAULT_ORDER = ("faiss-flat", "faiss-hnsw/", "funnel-hnsw", "hnswlib", "usearch", "rabitq", "scann",
                 "funnel-flat/binary", "funnel-flat/float32",
                 "funnel-flat/int8", "faiss-ivf-flat", "adaptive-ivf", "faiss-hnsw-sq8", "faiss-ivf-pq", "faiss-ivf-rabitq",
                 "adanns-opq")
log = search_data._log
CHUNK = 65536


# --------------------------------------------------------------------------- machinery
def set_threads(t: int) -> None:
    import faiss
    import threadpoolctl
    import torch

    faiss.omp_set_num_threads(t)
    torch.set_num_threads(t)
    threadpoolctl.threadpool_limits(t)
    THREADS[0] = t


def memory_bandwidth_gbs() -> float:
    a = np.ones(1 << 28, dtype=np.float32)  # 1 GiB
    a.sum()
    best = min(_timed(a.sum)[1] for _ in range(3))
    return a.nbytes / best / 1e9


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def single_latency(fn, Qs, passes: int = 3, budget_s: float = 2.0) -> tuple[float, float, float]:
    """(mean, median, p99) ms of ``fn`` on one query at a time over ``Qs``; the pass with the
    best mean of up to ``passes`` (stops after a pass longer than ``budget_s``)."""
    best = None
    for _ in range(max(1, passes)):
        ts = np.empty(len(Qs))
        for i in range(len(Qs)):
            t0 = time.perf_counter()
            fn(Qs[i : i + 1])
            ts[i] = time.perf_counter() - t0
        if best is None or ts.mean() < best.mean():
            best = ts
        if ts.sum() > budget_s:
            break
    return (float(best.mean() * 1e3), float(np.median(best) * 1e3),
            float(np.percentile(best, 99) * 1e3))


def near(nest, target, lo=1):
    """The nesting entry closest to ``target`` (>= lo)."""
    cands = [d for d in nest if d >= lo] or list(nest)
    return min(cands, key=lambda d: (abs(math.log(d / target)), d))


def normalized_chunks(X, chunk: int = CHUNK):
    """Full-dimension L2-normalized float32 blocks of ``X`` (a memory map is read block by block)."""
    D = X.shape[1]
    for a in range(0, len(X), chunk):
        yield np.ascontiguousarray(prefix_view(np.asarray(X[a : a + chunk], dtype=np.float32), D))


def normalized_sample(X, m: int, seed: int = 0) -> np.ndarray:
    rows = np.sort(np.random.default_rng(seed).choice(len(X), min(m, len(X)), replace=False))
    return np.ascontiguousarray(prefix_view(np.asarray(X[rows], dtype=np.float32), X.shape[1]))


def add_streamed(index, X) -> None:
    for block in normalized_chunks(X):
        index.add(block)


class Family:
    """One method: a builder and a list of (label, apply) configurations. ``memory(obj)`` returns
    resident and mapped bytes per vector; ``scanned(obj)`` the bytes an exhaustive first stage
    reads per query."""

    def __init__(self, name, build, configs, search, memory, scanned=None, peer=False):
        self.name, self.build, self.configs, self.search = name, build, configs, search
        self.memory, self.scanned = memory, scanned
        self.peer = peer  # another library: indexes the raw vectors, searched with raw queries
        self.deploy_dir: Path | None = None  # nestemb: save + load_index (mmap) after the build
        self.keep_as: str | None = None  # keep the built index for tune_eval under this name


def faiss_families(X, nlist):
    import faiss

    n, D = X.shape
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= nlist]
    efs = (8, 16, 32, 64, 128, 256, 512)
    fams = []

    def fsearch(obj, Q):
        return obj.search(np.ascontiguousarray(prefix_view(Q, D)), K)[1]

    def b_flat():
        idx = faiss.IndexFlatIP(D)
        add_streamed(idx, X)
        return idx

    fams.append(Family("faiss-flat", b_flat, [("exact", lambda o: None)], fsearch,
                       lambda o: {"resident": 4.0 * D, "mapped": 0.0}, lambda o: n * 4.0 * D))

    def ef(e):
        def apply(o):
            o.hnsw.efSearch = e
        return apply

    def hnsw_memory(per_code):
        return lambda o: {"resident": per_code + hnsw_link_bytes(o), "mapped": 0.0}

    for m in (16, 32):
        def b_hnsw(m=m):
            idx = faiss.IndexHNSWFlat(D, m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = 40
            add_streamed(idx, X)
            return idx

        fams.append(Family(f"faiss-hnsw/M{m}", b_hnsw, [(f"M={m} efC=40 ef={e}", ef(e)) for e in efs],
                           fsearch, hnsw_memory(4.0 * D)))

    def b_hnsw_sq8():
        idx = faiss.IndexHNSWSQ(D, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 40
        idx.train(normalized_sample(X, 65536))
        add_streamed(idx, X)
        return idx

    fams.append(Family("faiss-hnsw-sq8/M32", b_hnsw_sq8, [(f"SQ8 M=32 efC=40 ef={e}", ef(e)) for e in efs],
                       fsearch, hnsw_memory(1.0 * D)))

    def b_ivf():
        q = faiss.IndexFlatIP(D)
        idx = faiss.IndexIVFFlat(q, D, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.own_fields = True
        q.this.disown()
        idx.cp.seed = 1234
        idx.train(normalized_sample(X, 64 * nlist))
        add_streamed(idx, X)
        return idx

    def npr(p):
        def apply(o):
            faiss.extract_index_ivf(o).nprobe = p
        return apply

    fams.append(Family("faiss-ivf-flat", b_ivf, [(f"nlist={nlist} nprobe={p}", npr(p)) for p in probes],
                       fsearch, lambda o: {"resident": 4.0 * D + 8, "mapped": 0.0}))

    # IVF + PQ (M bytes per vector), searched alone or through an fp16 refine stage (IndexRefine:
    # the PQ shortlist of k * k_factor re-scored on float16 full vectors; an SQ8 refine caps
    # recall@10 at 0.84 on the augmented gallery, as HNSW-SQ8 does). OPQ is left
    # out: training its rotation took 220 s at 20k x 256 on this machine, far more at 1024-d.
    M = D // 8 if D >= 512 else max(4, D // 4)
    while D % M:
        M -= 1

    def ivf_refined(make_ivf):
        """An IVF index (``make_ivf(quantizer)``, owning it) under an fp16 refine stage, trained
        and filled."""
        q = faiss.IndexFlatIP(D)
        base = make_ivf(q)
        base.own_fields = True
        q.this.disown()
        base.cp.seed = 1234
        base.train(normalized_sample(X, max(64 * nlist, 32768)))
        refine = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        idx = faiss.IndexRefine(base, refine)
        idx.own_fields = True
        base.this.disown()
        refine.this.disown()
        add_streamed(idx, X)
        return idx

    def b_pq():
        return ivf_refined(lambda q: faiss.IndexIVFPQ(q, D, nlist, M, 8, faiss.METRIC_INNER_PRODUCT))

    def pq_cfg(p, kf):
        def apply(o):
            faiss.extract_index_ivf(o.base_index).nprobe = p
            o.k_factor = kf
        return apply

    def pq_search(obj, Q):
        Qn = np.ascontiguousarray(prefix_view(Q, D))
        if obj.k_factor <= 1:  # the PQ stage alone (what an IVF-PQ index without refine returns)
            return obj.base_index.search(Qn, K)[1]
        return obj.search(Qn, K)[1]

    def pq_memory(o):
        codes = M + 8.0 + (2.0 * D if o.k_factor > 1 else 0.0)
        return {"resident": codes, "mapped": 0.0}

    pq_cfgs = [(f"PQ{M} nlist={nlist} nprobe={p}", pq_cfg(p, 1)) for p in probes if p <= 64]
    pq_cfgs += [(f"PQ{M} nlist={nlist} nprobe={p} refine=fp16 k_factor={kf}", pq_cfg(p, kf))
                for p in (8, 16, 32, 64) if p <= nlist for kf in (16, 64)]
    fams.append(Family(f"faiss-ivf-pq/PQ{M}", b_pq, pq_cfgs, pq_search, pq_memory))

    # IVF + RaBitQ (1 sign bit + 3 extra bits per dimension, queries quantized to 8 bits), the
    # shortlist of k * k_factor re-scored on float16 full vectors (IndexRefine)
    rq_bits = 4

    def b_rq():
        return Setting(ivf_refined(
            lambda q: faiss.IndexIVFRaBitQ(q, D, nlist, faiss.METRIC_INNER_PRODUCT, True, rq_bits)))

    def rq_cfg(p, kf):
        def apply(o):
            inner = faiss.IVFRaBitQSearchParameters()
            inner.nprobe, inner.qb = p, 8
            outer = faiss.IndexRefineSearchParameters()
            outer.k_factor, outer.base_index_params = kf, inner
            o.value = (outer, inner)  # the inner parameters must outlive the outer's pointer
        return apply

    def rq_search(obj, Q):
        return obj.index.search(np.ascontiguousarray(prefix_view(Q, D)), K, params=obj.value[0])[1]

    fams.append(Family(f"faiss-ivf-rabitq/{rq_bits}bit", b_rq,
                       [(f"RaBitQ {rq_bits} bits nlist={nlist} nprobe={p} refine=fp16 k_factor={kf}", rq_cfg(p, kf))
                        for p in (8, 16, 32, 64, 128) if p <= nlist for kf in (2, 5, 10)],
                       rq_search,
                       # RaBitQ code + list id, fp16 refine vector
                       lambda o: {"resident": faiss.extract_index_ivf(o.index.base_index).code_size + 8.0
                                  + 2.0 * D, "mapped": 0.0}))
    for f in fams:
        f.peer = True
    return fams


THREADS = [1]
"""The thread count :func:`set_threads` set last (the peers below take it per call)."""


class Setting:
    """A peer index and the search setting a configuration chose (for indexes whose setting is
    a search argument, not a property)."""

    def __init__(self, index, value=None):
        self.index, self.value = index, value

    @staticmethod
    def to(value):
        def apply(o):
            o.value = value
        return apply


def saved_bytes_per_vector(save, n: int) -> dict:
    """Resident bytes per vector of a peer measured as its saved file's size (vectors, codes and
    graph as it holds them in memory), written to a temporary folder and removed."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="runs") as d:
        path = Path(d) / "index"
        save(str(path))
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))
                   if f.is_file())
    return {"resident": size / n, "mapped": 0.0}


def peer_families(X):
    """The other libraries of the issue on the raw vectors (the ``bench`` extra), each at its
    documented defaults with an ef / leaves sweep: hnswlib (M 16, efC 200), usearch (f32 and
    i8, connectivity 16, expansion_add 128), ScaNN (tree + AH, 2 dims per 4-bit code,
    anisotropic threshold 0.2, exact reordering; leaves about sqrt(n)), rabitqlib HNSW + RaBitQ
    (M 16, efC 200, 1 + 8 bits, 16 k-means clusters as its examples)."""
    n, D = X.shape
    fams = []
    efs = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

    def rows(Q):
        return np.ascontiguousarray(prefix_view(np.asarray(Q, dtype=np.float32), D))

    try:
        import hnswlib

        def b_hnswlib():
            idx = hnswlib.Index(space="ip", dim=D)
            idx.init_index(max_elements=n, ef_construction=200, M=16, random_seed=100)
            start = 0
            for block in normalized_chunks(X):
                idx.add_items(block, np.arange(start, start + len(block)), num_threads=THREADS[0])
                start += len(block)
            return idx

        def hl_ef(e):
            return lambda o: o.set_ef(max(e, K))

        fams.append(Family("hnswlib/M16", b_hnswlib, [(f"M=16 efC=200 ef={e}", hl_ef(e)) for e in efs],
                           lambda o, Q: o.knn_query(rows(Q), k=K, num_threads=THREADS[0])[0],
                           lambda o: saved_bytes_per_vector(o.save_index, n), peer=True))
    except ImportError:
        log("hnswlib is not installed (pip install '.[bench]'): left out")
    try:
        from usearch.index import Index as UIndex

        for dtype in ("f32", "i8"):
            def b_usearch(dtype=dtype):
                idx = UIndex(ndim=D, metric="ip", dtype=dtype, connectivity=16, expansion_add=128)
                start = 0
                for block in normalized_chunks(X):
                    idx.add(np.arange(start, start + len(block)), block, threads=THREADS[0])
                    start += len(block)
                return idx

            def u_ef(e):
                def apply(o):
                    o.expansion_search = max(e, K)
                return apply

            def u_search(o, Q):
                return np.asarray(o.search(rows(Q), K, threads=THREADS[0]).keys).reshape(-1, K)

            fams.append(Family(f"usearch/{dtype}", b_usearch,
                               [(f"{dtype} M=16 efC=128 ef={e}", u_ef(e)) for e in efs], u_search,
                               lambda o: saved_bytes_per_vector(o.save, n), peer=True))
    except ImportError:
        log("usearch is not installed (pip install '.[bench]'): left out")
    try:
        import scann

        leaves = 2 ** round(math.log2(math.sqrt(n)))

        def b_scann():
            Xn = np.concatenate(list(normalized_chunks(X)))
            return Setting(scann.scann_ops_pybind.builder(Xn, K, "dot_product").tree(
                num_leaves=leaves, num_leaves_to_search=leaves // 16,
                training_sample_size=min(n, 250_000)).score_ah(
                2, anisotropic_quantization_threshold=0.2).reorder(100).set_n_training_threads(
                THREADS[0]).build())

        def sc_search(o, Q):
            L, R = o.value
            fn = o.index.search_batched if THREADS[0] == 1 else o.index.search_batched_parallel
            return fn(rows(Q), leaves_to_search=L, pre_reorder_num_neighbors=R)[0]

        def sc_memory(o):
            import tempfile

            with tempfile.TemporaryDirectory(dir="runs") as d:
                o.index.serialize(d)
                size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
            return {"resident": size / n, "mapped": 0.0}

        cfgs = [(f"AH2 leaves={leaves} search={L} reorder={R}", Setting.to((L, R)))
                for L in (4, 8, 16, 32, 64, 128) if L <= leaves for R in (40, 100, 250)]
        fams.append(Family("scann/ah", b_scann, cfgs, sc_search, sc_memory, peer=True))
    except ImportError:
        log("scann is not installed (pip install '.[bench]'): left out")
    try:
        import faiss
        import rabitqlib

        def b_rabitq():
            km = faiss.Kmeans(D, 16, niter=20, seed=1234)
            km.train(normalized_sample(X, 65536))
            Xn = np.concatenate(list(normalized_chunks(X)))
            cid = km.index.search(Xn, 1)[1][:, 0].astype(np.uint32)
            idx = rabitqlib.HnswIndex(D, n, M=16, ef_construction=200, nbits=9, metric="l2")
            idx.build(Xn, np.ascontiguousarray(km.centroids, dtype=np.float32), cid,
                      num_threads=THREADS[0])
            return Setting(idx)  # (a pybind object takes no attributes: the ef lives beside it)

        fams.append(Family("rabitq-hnsw/M16/9bit", b_rabitq,
                           [(f"RaBitQ 1+8 bits M=16 efC=200 ef={e}", Setting.to(max(e, K)))
                            for e in efs],
                           lambda o, Q: np.asarray(o.index.search(rows(Q), K, o.value, THREADS[0])[0]),
                           lambda o: saved_bytes_per_vector(o.index.save, n), peer=True))
    except ImportError:
        log("rabitqlib is not installed (pip install '.[bench]'): left out")
    return fams


def nestemb_families(X, nest, nlist, model_id, kept, deploy_dir: Path):
    """nestemb's indexes. Each is built (timed), saved to ``deploy_dir`` and searched as
    ``load_index`` returns it (full vectors memory-mapped), so resident / mapped bytes are what a
    deployment holds. ``kept`` (a dict) receives the HNSW funnel ``tune`` reuses."""
    n, D = X.shape
    common = dict(nesting=nest, model_id=model_id)
    fams = []
    params = set(FunnelIndex._param_names)
    if "rescore_dtype" not in params:
        log("FunnelIndex has no rescore_dtype / full_dtype / int8_trim yet: those families are left out")

    def nsearch(obj, Q):
        return obj.search(Q, K)[1]

    def memory(o):
        m = o.bytes_per_vector()
        return {"resident": m["resident"], "mapped": m["mmap"]}

    def setp(**kw):
        def apply(o):
            o.set_params(**kw)
        return apply

    # exhaustive first stages: each configuration scans the whole gallery (about 15 s per
    # configuration at 1M x 1024 for the timings), so few shortlists; latency barely depends on them
    lists = [s for s in (20, 50, 100, 200, 500, 1000) if s <= n]
    d16, d8, d4, d2 = near(nest, D / 16, 8), near(nest, D / 8, 8), near(nest, D / 4, 8), near(nest, D / 2, 32)
    trim = {"int8_trim": 0.001} if "int8_trim" in params else {}
    # (prefix dtype, d0, extra constructor parameters) of the exhaustive 2-stage first stages
    flat_specs = [("float32", d16, {}), ("int8", d16, {}), ("int8", d8, {}), ("int8", d8, trim)]
    if "full_dtype" in params:  # fp16 full vectors on the float32 D/16 stage
        flat_specs.append(("float32", d16, {"full_dtype": "float16"}))
    for dtype, d0, extra in flat_specs:
        tag = "".join(f"/{k}={v}" for k, v in extra.items())

        def b_funnel(dtype=dtype, d0=d0, extra=extra):
            return FunnelIndex(dims=(d0, D), shortlist=(lists[0],), prefix_dtype=dtype, **extra, **common).add(X)

        cfgs = [(f"{dtype} d0={d0}{tag} shortlist={s}", setp(dims=(d0, D), shortlist=(s,))) for s in lists]

        def scanned(o):
            full = 2.0 if getattr(o, "full_dtype", "float32") == "float16" else 4.0
            return n * code_bytes(o.dims[0], o.prefix_dtype) + o.shortlist[-1] * full * D

        fams.append(Family(f"funnel-flat/{dtype}/{d0}{tag}", b_funnel, cfgs, nsearch, memory, scanned))

    # binary first stage (sign bits of the d0 prefix), int8 rescoring of the full vector, float re-rank
    bin_lists = [(s0, s1) for s0 in (500, 1000, 2000, 5000) for s1 in (100, 300) if s0 <= n]
    for d0 in sorted({near(nest, D / 4, 32), d2, D}):
        if "rescore_dtype" in params:
            def b_bin(d0=d0):
                return FunnelIndex(dims=(d0, D, D), shortlist=(bin_lists[0]), prefix_dtype="binary",
                                   rescore_dtype="int8", **common).add(X)

            cfgs = [(f"binary d0={d0} +int8 rescoring shortlist={s0},{s1}",
                     setp(dims=(d0, D, D), shortlist=(s0, s1))) for s0, s1 in bin_lists]

            def bscanned(o):
                return n * code_bytes(o.dims[0], "binary") + o.shortlist[0] * D + o.shortlist[1] * 4.0 * D

            fams.append(Family(f"funnel-flat/binary/{d0}/rescore=int8", b_bin, cfgs, nsearch, memory, bscanned))
        else:
            def b_bin(d0=d0):
                return FunnelIndex(dims=(d0, D), shortlist=(lists[0],), prefix_dtype="binary", **common).add(X)

            fams.append(Family(f"funnel-flat/binary/{d0}", b_bin,
                               [(f"binary d0={d0} shortlist={s}", setp(dims=(d0, D), shortlist=(s,))) for s in lists],
                               nsearch, memory))

    # recall saturates at ef_search = 2 x shortlist on fmnist1024 (100k): no larger ef
    hcfg = [(s, e) for s in (10, 20, 30, 40, 50, 70, 100, 150, 200, 300) for e in sorted({max(16, s), 2 * s})]
    hcfg += [(s, s) for s in (500, 800) if s < n]  # real text needs long shortlists for .99
    h8, h4 = near(nest, D / 8, 16), near(nest, D / 4, 16)
    h16 = near(nest, D / 16, 16)
    hnsw_specs = [("float32", h8, {}), ("float32", h4, {}), ("int8", h8, {}), ("float32", h8, {"hnsw_m": 16})]
    if h16 != h8:
        hnsw_specs.append(("float32", h16, {}))
    h2 = near(nest, D / 2, 16)
    if D <= 256 and h2 not in (h8, h4):  # narrow sets: a graph on half the dims is still small
        hnsw_specs.append(("float32", h2, {}))
    if "full_dtype" in params:
        hnsw_specs.append(("float32", h8, {"full_dtype": "float16"}))
    # the construction breadth hnswlib and rabitqlib default to (FAISS's is 40): a better graph
    # on the longer prefix, in float32 and int8
    hnsw_specs += [("float32", h4, {"ef_construction": 200}), ("int8", h4, {"ef_construction": 200})]
    for dtype, dh, extra in hnsw_specs:
        tag = "".join(f"/{k}={v}" for k, v in extra.items())
        name = f"funnel-hnsw/{dtype}/{dh}{tag}"

        def b_fhnsw(dtype=dtype, dh=dh, extra=extra, name=name):
            idx = FunnelIndex(dims=(dh, D), shortlist=(20,), first_stage="hnsw", prefix_dtype=dtype,
                              **({"hnsw_m": 32, "ef_construction": 40} | extra), **common).add(X)
            return idx

        fams.append(Family(name, b_fhnsw,
                           [(f"hnsw {dtype} d0={dh}{tag} shortlist={s} ef={e}", setp(shortlist=(s,), ef_search=e))
                            for s, e in hcfg], nsearch, memory))
        if name == f"funnel-hnsw/int8/{h4}/ef_construction=200":
            fams[-1].keep_as = "funnel-hnsw"  # tune_eval reuses it (the fastest family on real text)

    probes = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= nlist]
    for codec, dcl, dsearch, rr in (("fp16", d4, near(nest, D / 4, 16), 100),
                                    ("flat", d8, near(nest, D / 2, 16), 50)):
        def b_aivf(codec=codec, dcl=dcl, dsearch=dsearch, rr=rr):
            return AdaptiveIVFIndex(d_cluster=dcl, d_search=dsearch, nlist=nlist, nprobe=1,
                                    codec=codec, rerank=rr, **common).add(X)

        fams.append(Family(f"adaptive-ivf/{codec}/{dcl}-{dsearch}", b_aivf,
                           [(f"dc={dcl} ds={dsearch} {codec} rerank={rr} nprobe={p}", setp(nprobe=p))
                            for p in probes], nsearch, memory))
    if D < 512:  # AdANNS-OPQ: its OPQ training alone would exceed the time budget at 1024-d
        do = near(nest, D / 2, 16)
        Mh = max(2, min(128, do // 4))
        while do % Mh:
            Mh -= 1

        def b_aopq():
            return AdaptiveOPQIndex(d_search=do, code_bytes=Mh, nlist=nlist, nprobe=1, d_cluster=d8,
                                    rerank=100, train_size=32768, **common).add(X)

        fams.append(Family(f"adanns-opq/{do}/{Mh}B", b_aopq,
                           [(f"OPQ{Mh} d={do} nlist={nlist} rerank=100 nprobe={p}", setp(nprobe=p))
                            for p in probes], nsearch, memory))
    for f in fams:
        f.deploy_dir = deploy_dir
    return fams


def run_family(fam, Qe, Qs, truth, threads, bw, out_rows, flush, kept):
    set_threads(max(threads))
    log(f"building {fam.name}")
    obj, build_s = _timed(fam.build)
    log(f"built {fam.name} in {build_s:.1f} s ({max(threads)} threads)")
    saved = None
    if fam.deploy_dir is not None:  # deployment state: saved, reloaded with vectors memory-mapped
        saved = fam.deploy_dir / fam.name.replace("/", "_")
        if saved.exists():
            shutil.rmtree(saved)
        _, save_s = _timed(obj.save, saved)
        del obj
        gc.collect()
        obj, load_s = _timed(load_index, saved)
        log(f"saved in {save_s:.1f} s, loaded (mmap) in {load_s:.1f} s: {obj.bytes_per_vector()}")
    for label, apply in fam.configs:
        apply(obj)
        set_threads(max(threads))
        ids, t_eval = _timed(fam.search, obj, Qe)
        row = {"method": fam.name.split("/")[0], "family": fam.name, "config": label,
               "recall": knn_intersection(ids, truth), "build_s": build_s, "build_threads": max(threads),
               **fam.memory(obj)}
        for t in threads:
            set_threads(t)
            fam.search(obj, Qs[:5])  # warm
            mean, p50, p99 = single_latency(lambda q, o=obj: fam.search(o, q), Qs)
            if t == max(threads):
                nb, bt = len(Qe), t_eval
            else:  # the whole evaluation set when it takes little time, else the single-query set
                est = t_eval * max(threads) / t
                Qb = Qe if est < 5.0 else Qs
                nb, bt = len(Qb), _timed(fam.search, obj, Qb)[1]
            row[f"latency_ms_{t}t"] = mean
            row[f"p50_ms_{t}t"] = p50
            row[f"p99_ms_{t}t"] = p99
            row[f"single_qps_{t}t"] = 1e3 / mean
            row[f"batch_qps_{t}t"] = nb / bt
            if fam.scanned is not None:
                row["scanned_mb"] = fam.scanned(obj) / 1e6
                row[f"gbs_{t}t"] = fam.scanned(obj) / (mean / 1e3) / 1e9
                row["bandwidth_gbs"] = bw
        out_rows.append(row)
        log(f"{label:<56} recall={row['recall']:.4f} lat1={row[f'latency_ms_{threads[0]}t']:.3f} ms "
            f"batch{max(threads)}t={row[f'batch_qps_{max(threads)}t']:.0f} q/s")
        flush()
    if fam.keep_as:
        kept[fam.keep_as] = obj
    del obj
    gc.collect()
    if saved is not None and not fam.keep_as:
        shutil.rmtree(saved, ignore_errors=True)


def tune_eval(X, Q_tune, Q_hold, nest, model_id, targets, nlist, kept, which, repeat=2):
    """tune() on tuning queries vs an exhaustive sweep of the same grid on held-out queries. The
    configuration tune picks and the sweep's best are re-timed side by side on the held-out
    queries (alternating, best pass each), so machine noise hits both."""
    n, D = X.shape
    common = dict(nesting=nest, model_id=model_id)

    def hnsw():
        if "funnel-hnsw" in kept:
            return kept["funnel-hnsw"]
        return FunnelIndex(dims=(near(nest, D / 4, 16), D), shortlist=(20,), first_stage="hnsw",
                           prefix_dtype="int8", hnsw_m=32, ef_construction=200, **common).add(X)

    def hnsw_groups(idx):
        return idx.candidate_grid(K, max_candidates=512)

    def funnel():
        return FunnelIndex(dims=(near(nest, D / 16, 8), D), shortlist=(100,), **common).add(X)

    def funnel_groups(idx):
        # exhaustive first stages, kept small for 1M-scale scans: float32 on D/16 dims, int8 on
        # D/16 .. D/8 dims (2 stages) and binary on D/4 .. D/2 dims with int8 rescoring,
        # shortlists 10 ... 2048
        lo, hi = near(nest, D / 16, 8), near(nest, D / 8, 8)
        blo, bhi = near(nest, D / 4, 32), near(nest, D / 2, 32)

        def wanted(g):
            d, t = g["dims"], g.get("prefix_dtype")
            if t == "float32":
                return len(d) == 2 and d[0] == lo
            if t == "int8":
                return len(d) == 2 and lo <= d[0] <= hi
            if t == "binary":
                return blo <= d[0] <= bhi and (len(d) == 2 or (d[1] == D and g.get("rescore_dtype") == "int8"))
            return False

        return [g for g in idx.candidate_grid(K, max_candidates=2048) if wanted(g[0])]

    def ivf():
        return AdaptiveIVFIndex(d_cluster=near(nest, D / 4, 8), d_search=near(nest, D / 4, 16),
                                nlist=nlist, codec="fp16", rerank=100, **common).add(X)

    builders = {"funnel-hnsw": (hnsw, hnsw_groups), "funnel-flat": (funnel, funnel_groups),
                "adaptive-ivf": (ivf, lambda idx: idx.candidate_grid(K))}
    out = []
    set_threads(1)
    for name in which:
        build, groups_of = builders[name]
        idx = build()
        truth_hold = exact_search(X, Q_hold, K)[1]
        groups = groups_of(idx)
        log(f"tune {name}: exhaustive sweep of {sum(map(len, groups))} configurations on held-out queries")
        sweep = tune(idx, Q_hold, k=K, recall=min(targets), groups=groups, exhaustive=True,
                     repeat=repeat, max_queries=len(Q_hold), screen_queries=len(Q_hold))["candidates"]
        for target in targets:
            t0 = time.perf_counter()
            # the library's defaults: every candidate screened on 200 queries, close calls on
            # up to 1,000 (all of Q_tune when it holds fewer)
            res = tune(idx, Q_tune, k=K, recall=target, groups=groups, repeat=repeat)
            tune_s = time.perf_counter() - t0
            ok = [c for c in sweep if c["recall"] >= target]
            best = min(ok, key=lambda c: c["latency_ms"]) if ok else None
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
                "tune_queries": res["n_queries"], "screen_queries": res["screen_queries"],
                "n_settled": res["n_settled"],
                "tried": res["candidates"],
                "recall_ok": held["recall"] >= target - 0.005,
                "latency_ratio": held["latency_ms"] / best_ms if best else None,
            })
            log(f"tune {name} {target}: " + json.dumps({k: v for k, v in out[-1].items() if k != "tried"},
                                                      default=str))
        del idx
        kept.pop(name, None)
        gc.collect()
    return out


# --------------------------------------------------------------------------- report
def fastest(rows, r, key, keep=lambda x: True):
    """The row with the lowest ``key`` among those ``keep`` accepts with recall >= ``r``."""
    ok = [x for x in rows if keep(x) and x["recall"] >= r and x.get(key) is not None]
    return min(ok, key=lambda x: x[key]) if ok else None


def _brief(x, keys):
    return x and {"family": x["family"], "config": x["config"], "recall": round(x["recall"], 4),
                  **{k: x.get(k) for k in keys}}


def targets_report(rows, tuning, threads, dim):
    """Issue 14's targets, each with its measured figures and ``met``."""
    t1, t2 = threads[0], max(threads)
    lat, bq = f"latency_ms_{t1}t", f"batch_qps_{t2}t"
    keys = [lat, f"p50_ms_{t1}t", bq, "resident", "mapped", "build_s"]
    rep = {}
    is_n = lambda x: x["method"] in NESTEMB  # noqa: E731
    is_p = lambda x: x["method"] not in NESTEMB  # noqa: E731  (FAISS and the other libraries)
    if dim >= 256:
        for r in (0.95, 0.99):
            a, b = fastest(rows, r, lat, is_n), fastest(rows, r, lat, is_p)
            # resident bytes and build time are held against FAISS HNSW M=16 on float vectors
            f16 = fastest(rows, r, lat, lambda x: x["family"] == "faiss-hnsw/M16")
            h = max((x for x in rows if x["method"] == "faiss-hnsw" and x["recall"] >= r),
                    key=lambda x: x[bq], default=None)
            ab = max((x for x in rows if is_n(x) and x["recall"] >= r), key=lambda x: x[bq], default=None)
            ok = a is not None and b is not None and f16 is not None
            rep[f"best nestemb vs best peer @{r}"] = {
                "nestemb": _brief(a, keys), "best_peer": _brief(b, keys),
                "faiss_hnsw_m16": _brief(f16, keys),
                "latency_speedup": ok and b[lat] / a[lat], "latency_target": ">= 2",
                "resident_ratio_vs_faiss_hnsw16": ok and a["resident"] / f16["resident"],
                "resident_target": "<= 0.25",
                "build_speedup_vs_faiss_hnsw16": ok and f16["build_s"] / a["build_s"],
                "build_target": ">= 3",
                "met": ok and b[lat] / a[lat] >= 2 and a["resident"] / f16["resident"] <= 0.25
                and f16["build_s"] / a["build_s"] >= 3,
                "best_per_library": {m: _brief(fastest(rows, r, lat, lambda x, m=m: x["method"] == m), keys)
                                     for m in sorted({x["method"] for x in rows if is_p(x)})},
            }
            rep[f"batch QPS {t2}t @{r}: best nestemb vs best FAISS HNSW"] = {
                "nestemb_same_config": a and a[bq], "nestemb_best": _brief(ab, [bq]),
                "faiss_hnsw_best": _brief(h, [bq]),
                "ratio_same_config": a and h and a[bq] / h[bq],
                "ratio_best": ab and h and ab[bq] / h[bq], "target": ">= 1",
                "met": bool(a and h and a[bq] >= h[bq]),
            }
        exact = next((x for x in rows if x["method"] == "faiss-flat"), None)
        q = fastest(rows, 0.99, lat, lambda x: x["method"] == "funnel-flat"
                    and x["family"].split("/")[1] in ("int8", "binary"))
        rep["exact-scan funnel int8/binary vs FAISS flat @0.99"] = {
            "funnel": _brief(q, keys), "faiss_flat_ms": exact and exact[lat],
            "speedup": q and exact and exact[lat] / q[lat], "target": ">= 30",
            "met": bool(q and exact and exact[lat] / q[lat] >= 30)}
    else:
        for r in (0.95, 0.99):
            a = fastest(rows, r, lat, lambda x: x["method"] == "funnel-hnsw")
            af = fastest(rows, r, lat, lambda x: x["method"] in ("funnel-hnsw", "funnel-flat"))
            h = fastest(rows, r, lat, lambda x: x["method"] == "faiss-hnsw")
            rep[f"128-d: native funnel vs FAISS HNSW single-query @{r}"] = {
                "funnel": _brief(af, keys), "funnel_hnsw": _brief(a, keys), "faiss_hnsw": _brief(h, keys),
                "gap": af and h and af[lat] / h[lat], "target": "<= 1.2",
                "met": bool(af and h and af[lat] / h[lat] <= 1.2)}
    for t in tuning or []:
        rep[f"tune {t['index']} @{t['target']}"] = {
            "chosen": t["chosen"], "heldout_recall": t["heldout_recall"],
            "recall_target": f">= {t['target'] - 0.005:.3f}", "heldout_latency_ms": t["heldout_latency_ms"],
            "sweep_best_ms": t["sweep_best"] and t["sweep_best"]["latency_ms"],
            "latency_ratio": t["latency_ratio"], "latency_target": "<= 1.2",
            "met": bool(t["recall_ok"] and t["latency_ratio"] is not None and t["latency_ratio"] <= 1.2)}
    return rep


def _f(v, fmt):
    return "" if v is None else format(v, fmt)


def markdown(name, rows, threads, meta):
    t = threads
    head = ["family", "config", "recall@10"] + [f"lat ms {x}t" for x in t] + [f"p50 ms {x}t" for x in t] + \
           [f"batch QPS {x}t" for x in t] + ["B/vec resident", "B/vec mmap", "build s", "scan MB/q", f"GB/s {t[0]}t"]
    lines = [f"### {name}: n={meta['n']} D={meta['dim']} queries={meta['n_eval']} "
             f"(single-query: {meta['n_single']}), bandwidth {meta['bandwidth_gbs']:.1f} GB/s",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in rows:
        vals = [x["family"], x["config"], f"{x['recall']:.4f}"]
        vals += [f"{x[f'latency_ms_{y}t']:.3f}" for y in t]
        vals += [_f(x.get(f"p50_ms_{y}t"), ".3f") for y in t]
        vals += [f"{x[f'batch_qps_{y}t']:.0f}" for y in t]
        vals += [f"{x['resident']:.0f}", f"{x['mapped']:.0f}", f"{x['build_s']:.1f}",
                 _f(x.get("scanned_mb"), ".1f"), _f(x.get(f"gbs_{t[0]}t"), ".2f")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def summary(rows, threads):
    """Best configuration of each method family at recall >= 0.90 / 0.95 / 0.99 (1 thread)."""
    key = f"latency_ms_{threads[0]}t"
    t2 = max(threads)
    lines = ["| recall >= | family | config | recall@10 | " +
             " | ".join(f"lat ms {t}t" for t in threads) + f" | batch QPS {t2}t | speed-up vs exact ({threads[0]}t) | "
             "B/vec resident | B/vec mmap | build s |", "|" + "---|" * (9 + len(threads))]
    exact = next((x for x in rows if x["method"] == "faiss-flat"), None)
    for r in (0.90, 0.95, 0.99):
        for fam in dict.fromkeys(x["family"] for x in rows):
            b = fastest(rows, r, key, lambda x: x["family"] == fam)
            if b is None:
                lines.append(f"| {r} | {fam} | (not reached) |" + " |" * (6 + len(threads)))
                continue
            sp = f"{exact[key] / b[key]:.1f}x" if exact else ""
            lines.append(f"| {r} | {fam} | {b['config']} | {b['recall']:.4f} | " +
                         " | ".join(f"{b[f'latency_ms_{t}t']:.3f}" for t in threads) +
                         f" | {b[f'batch_qps_{t2}t']:.0f} | {sp} | {b['resident']:.0f} | {b['mapped']:.0f} | "
                         f"{b['build_s']:.1f} |")
    return "\n".join(lines)


def pareto_plot(path, rows, meta):
    path = Path(path)
    search_plot.search_pareto(path.with_suffix(".png"), rows, meta)
    search_plot.search_pareto(path.with_name(path.stem + "-high.png"), rows, meta, xmin=0.9)


def add_gap_statistics(jpath: Path, X, Q, nest) -> None:
    """Why a quantized first stage holds or fails: for each (prefix, dtype) first stage, the
    median gap between the 10th and the 50th / 100th exact neighbour on that prefix, the
    stage's ranking-relevant score error, the share of queries whose gap exceeds twice the error,
    and the share of the true top-10 (on the prefix) surviving shortlists of 10-400."""
    from nestemb.index.diagnostics import gap_statistics

    D = X.shape[1]
    X = np.ascontiguousarray(X, dtype=np.float32)
    stages = [(near(nest, D / 16, 16), "int8"), (near(nest, D / 8, 16), "int8"),
              (near(nest, D / 8, 16), "float16"), (near(nest, D / 4, 32), "binary"),
              (near(nest, D / 2, 32), "binary"), (D, "binary"), (D, "int8"), (D, "float16")]
    out = []
    for d0, dtype in dict.fromkeys(stages):
        t0 = time.perf_counter()
        g = gap_statistics(X, Q, d0, dtype, k=K, ranks=(50, 100), shortlists=(10, 50, 100, 200, 400))
        out.append({"rows": len(X), "queries": len(Q), **g.summary()})
        log(f"gaps {dtype} d0={d0}: {out[-1]} ({time.perf_counter() - t0:.1f} s)")
    result = json.loads(jpath.read_text())
    result["diagnostics"] = out
    jpath.write_text(json.dumps(result, indent=1, default=str))
    report(jpath)


def report(path, write_md: bool = True):
    """Re-print the tables of a finished (or partial) run from its JSON, redraw its plots and
    write them as ``<name>.md`` next to it."""
    path = Path(path)
    result = json.loads(path.read_text())
    meta, rows = result["meta"], result["rows"]
    if not rows:
        return
    pareto_plot(path, rows, meta)
    parts = [markdown(meta["dataset"], rows, meta["threads"], meta),
             "\n#### best configuration per family\n", summary(rows, meta["threads"])]
    if result.get("targets"):
        parts.append("\n#### targets\n\n```\n" + json.dumps(result["targets"], indent=1, default=str) + "\n```")
    if result.get("tuning"):
        brief = [{k: v for k, v in t.items() if k != "tried"} for t in result["tuning"]]
        parts.append("\n#### tune\n\n```\n" + json.dumps(brief, indent=1, default=str) + "\n```")
    if result.get("diagnostics"):
        parts.append("\n#### first-stage distance gaps\n\n```\n" +
                     json.dumps(result["diagnostics"], indent=1, default=str) + "\n```")
    text = "\n".join(parts)
    print(text)
    if write_md and meta.get("command"):
        text = f"Command: `{meta['command']}`\n\n" + text
    if write_md:
        path.with_suffix(".md").write_text(text + "\n")


def load_dataset(ds, args, threads):
    """``(X, Q, nesting, model_id, raw, info)``: the gallery and queries nestemb indexes, and,
    for the text corpus, the raw vectors ``(X, Q)`` the peers index and the truth is computed on
    (nestemb gets them through the nesting retrofit); ``raw`` is None for the other sets."""
    if ds in search_data.TEXT_MODELS:
        return search_data.text_corpus_embeddings(ds, Path(args.cache), Path(args.corpus),
                                                  kind=args.retrofit)
    if ds == "scifact":
        return (*search_data.scifact_embeddings(Path(args.data), Path(args.cache)), None, None)
    if ds == "synthetic":
        return (*search_data.synthetic_embeddings(args.n, args.dim), None, None)
    n = 60000 if ds == "fmnist" else args.n
    model = Path(args.model or DEFAULT_MODEL.get(ds, "runs/quickstart/model"))
    if not (model / "manifest.json").is_file():
        raise SystemExit(f"{ds}: no model at {model} (give --model)")
    return (*search_data.image_embeddings(model, Path(args.data), n, Path(args.cache), max(threads)),
            None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["scifact"],
                    choices=["fmnist", "fmnist-aug", "fmnist1024", "scifact", "synthetic",
                             *search_data.TEXT_MODELS])
    ap.add_argument("--corpus", default="runs/text_corpus",
                    help="the text corpus folder (text-minilm / text-mpnet; benchmarks/text_corpus.py)")
    ap.add_argument("--retrofit", default="rotation", choices=["rotation", "linear", "mlp"],
                    help="the nesting retrofit's kind for the text corpus (rotation: full-width "
                         "cosines kept, so a full re-rank is exact on the raw vectors)")
    ap.add_argument("--model", default=None,
                    help="saved MRL image model (default: runs/search1024/model for fmnist1024, "
                         "runs/quickstart/model otherwise)")
    ap.add_argument("--data", default=os.environ.get("NESTEMB_SHARED_DATA", "../shared/data"))
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery size of fmnist-aug/fmnist1024/synthetic")
    ap.add_argument("--dim", type=int, default=128, help="synthetic only")
    ap.add_argument("--eval-queries", type=int, default=1000)
    ap.add_argument("--single-queries", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--families", default="", help="comma-separated family name prefixes to run, in this order (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated family name prefixes not to run")
    ap.add_argument("--resume", action="store_true", help="keep the families already in the output JSON")
    ap.add_argument("--tune", default="funnel-hnsw",
                    help="indexes tune() is evaluated on: funnel-hnsw, funnel-flat, adaptive-ivf ('' = none)")
    ap.add_argument("--tune-queries", type=int, default=None,
                    help="tuning queries and (other) held-out queries of the tune evaluation "
                    "(default: tune's max_queries, 1,000, or half the queries where there are fewer)")
    ap.add_argument("--tune-repeat", type=int, default=2, help="timing passes per tuning candidate")
    ap.add_argument("--cache", default="runs/bench_cache")
    ap.add_argument("--deploy-dir", default="runs/bench_cache/deploy",
                    help="where nestemb indexes are saved and reloaded memory-mapped (removed after each)")
    ap.add_argument("--out", default="runs/bench_search")
    ap.add_argument("--report", help="only re-print the tables of this result JSON")
    ap.add_argument("--gaps", type=int, default=0, metavar="N",
                    help="only add first-stage distance-gap statistics (on the first N gallery rows, "
                         "100 queries) to the existing result JSON, then re-print it")
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)
    threads = [int(t) for t in args.threads.split(",")]
    if max(threads) > (os.cpu_count() or 1):
        raise SystemExit(f"--threads {args.threads}: this machine has {os.cpu_count()} cores")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(max(threads))
    bw = memory_bandwidth_gbs()
    log(f"memory bandwidth (numpy sum, 1 thread): {bw:.1f} GB/s")
    for ds in args.datasets:
        X, Q, nest, model_id, raw, data_info = load_dataset(ds, args, threads)
        if not isinstance(X, np.memmap) and not isinstance(getattr(X, "base", None), np.memmap):
            X = np.ascontiguousarray(X, dtype=np.float32)
        n, D = X.shape
        n_eval = min(len(Q), args.eval_queries)
        Qe = np.ascontiguousarray(Q[:n_eval], dtype=np.float32)
        Qs = Qe[: args.single_queries]
        # the peers index the raw vectors; the truth is exact search on them (what the user
        # wants), also for nestemb, which searches the retrofitted ones
        Xp, Qp = (X, Q) if raw is None else raw
        Qpe = np.ascontiguousarray(Qp[:n_eval], dtype=np.float32)
        Qps = Qpe[: args.single_queries]
        log(f"{ds}: gallery {X.shape} ({type(X).__name__}), {n_eval} eval queries, nesting {nest}")
        if args.gaps:
            add_gap_statistics(Path(args.out) / f"{ds}.json", X[: args.gaps], Qe[:100], nest)
            continue
        tpath = Path(args.cache) / f"truth-{ds}-{model_id}-{n}-{n_eval}.npy"
        if ds != "synthetic" and tpath.is_file():
            truth = np.load(tpath)
        else:
            set_threads(max(threads))
            truth, t_exact = _timed(lambda: exact_search(Xp, Qpe, K)[1])
            log(f"exact top-{K} of {n_eval} queries: {t_exact:.1f} s")
            if ds != "synthetic":
                np.save(tpath, truth)
        nlist = 2 ** round(math.log2(math.sqrt(n)))
        jpath = out / f"{ds}.json"
        rows: list[dict] = []
        kept_tuning = None
        if args.resume and jpath.is_file():
            old = json.loads(jpath.read_text())
            if old["meta"]["n"] == n and old["meta"]["n_eval"] == n_eval:
                rows = old["rows"]
                kept_tuning = old.get("tuning")  # unless tune is run again below
                log(f"resuming: {len({x['family'] for x in rows})} families already in {jpath}")
        meta = {"dataset": ds, "n": n, "dim": D, "nesting": list(nest), "model_id": model_id,
                "n_eval": n_eval, "n_single": len(Qs), "threads": threads, "bandwidth_gbs": bw,
                "nlist": nlist, "cores": os.cpu_count(), "command": "python " + " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "truth": "exact search on the raw vectors" if raw is not None else "exact search",
                "data": data_info}
        fname = getattr(X, "filename", None)
        mpath = Path(fname).with_name(Path(fname).stem + ".manifest.json") if fname else None
        if mpath is not None and mpath.is_file():
            man = json.loads(mpath.read_text())
            meta["data_manifest"] = {"path": str(mpath), "gallery_sha256": man["gallery"]["sha256"],
                                     "queries_sha256": man["queries"]["sha256"],
                                     "model_version": man["model_version"], "rows_used": n}
        result = {"meta": meta, "rows": rows, "tuning": kept_tuning, "targets": None}

        def flush():
            jpath.write_text(json.dumps(result, indent=1, default=str))

        kept: dict = {}
        deploy = Path(args.deploy_dir)
        deploy.mkdir(parents=True, exist_ok=True)
        fams = (faiss_families(Xp, nlist) + peer_families(Xp)
                + nestemb_families(X, nest, nlist, model_id, kept, deploy))
        wanted = [w for w in args.families.split(",") if w] or list(DEFAULT_ORDER)
        skip = [w for w in args.skip.split(",") if w]
        # only these, in this order (so the most important ones finish first)
        fams = list({f.name: f for w in wanted for f in fams if f.name.startswith(w)}.values())
        done = {x["family"] for x in rows}
        fams = [f for f in fams if f.name not in done and not any(f.name.startswith(s) for s in skip)]
        t_all = time.perf_counter()
        for fam in fams:
            run_family(fam, Qpe if fam.peer else Qe, Qps if fam.peer else Qs, truth, threads, bw,
                       rows, flush, kept)
            log(f"elapsed {time.perf_counter() - t_all:.0f} s")
        which = [w for w in args.tune.split(",") if w]
        n_tune = args.tune_queries or min(TUNE_MAX_QUERIES, len(Q) // 2)
        if which and len(Q) >= 2 * n_tune:
            hold = np.ascontiguousarray(Q[:n_tune], dtype=np.float32)
            tq = np.ascontiguousarray(Q[-n_tune:], dtype=np.float32)
            result["tuning"] = tune_eval(X, tq, hold, nest, model_id, (0.99, 0.95), nlist, kept, which,
                                         repeat=args.tune_repeat)
        kept.clear()
        shutil.rmtree(deploy, ignore_errors=True)
        result["targets"] = targets_report(rows, result["tuning"], threads, D)
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        meta["elapsed_s"] = time.perf_counter() - t_all
        flush()
        report(jpath)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
