"""Building a FunnelIndex straight into its directory (``build_on_disk``): the same index as
``add`` + ``save`` (the re-rank file byte for byte, the same answers), every first stage; and a
gallery larger than the memory the process may allocate builds and searches correctly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import FunnelIndex, build_on_disk, load_index, synthetic_matryoshka
from nestemb.io import sha256_file

PARAMS = [
    dict(dims=(8, 64), shortlist=(60,)),
    dict(dims=(16, 64), shortlist=(60,), first_stage="hnsw", ef_construction=40),
    dict(dims=(16, 64), shortlist=(80,), prefix_dtype="int8"),
    dict(dims=(32, 64, 64), shortlist=(200, 40), prefix_dtype="binary", rescore_dtype="int8"),
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p.get('prefix_dtype', 'float32')}-{p.get('first_stage', 'flat')}")
def test_an_on_disk_build_is_the_in_memory_build(tmp_path, params):
    X = synthetic_matryoshka(3000, 64, seed=1)
    np.save(tmp_path / "gallery.npy", X)
    gallery = np.load(tmp_path / "gallery.npy", mmap_mode="r")
    ids = [f"doc-{i}" for i in range(len(X))]
    ref = FunnelIndex(**params).add(X, ids).save(tmp_path / "ref")
    got = build_on_disk(FunnelIndex(**params), gallery, tmp_path / "disk", ids)
    for name in ("full.faiss", "first_stage.faiss", "ids.npy", "deleted.npy"):
        assert sha256_file(ref / name) == sha256_file(tmp_path / "disk" / name), name
    assert isinstance(got.vectors_, np.memmap)  # the re-rank store is the file, mapped
    back = load_index(ref)
    Q = synthetic_matryoshka(40, 64, seed=2)
    s1, i1 = back.search(Q, 10)
    s2, i2 = got.search(Q, 10)
    assert (i1 == i2).all()
    np.testing.assert_array_equal(s1, s2)
    # and both against brute force on the normalized vectors, for the exact stage alone
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact = np.argsort(-(Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ Xn.T, axis=1)[:, :10]
    assert (got.search_exact(Q, 10)[1] == np.asarray(ids)[exact]).all()
    # more vectors later: the index copies its mapped vectors back in and goes on
    more = synthetic_matryoshka(50, 64, seed=3)
    got.add(more, [f"new-{i}" for i in range(50)])
    assert got.search(more[:1], 1)[1][0, 0] == "new-0"


def test_bad_input_leaves_nothing(tmp_path):
    X = synthetic_matryoshka(200, 32)
    with pytest.raises(NestembError, match="full_dtype='float16' keeps float16 codes") as e:
        build_on_disk(FunnelIndex(dims=(8, 32), shortlist=(40,), full_dtype="float16"), X,
                      tmp_path / "a")
    assert e.value.param == "full_dtype"
    trained = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(X)
    with pytest.raises(NestembError, match="takes a new FunnelIndex") as e:
        build_on_disk(trained, X, tmp_path / "b")
    assert e.value.param == "index"
    bad = X.copy()
    bad[150, 3] = np.nan
    with pytest.raises(NestembError, match=r"NaN or inf values \(row 150\)"):
        build_on_disk(FunnelIndex(dims=(8, 32), shortlist=(40,)), bad, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial folder, no temporary


def test_a_gallery_larger_than_the_allowed_memory_builds_and_searches(tmp_path):
    """The build runs in a process whose private memory (RLIMIT_DATA: heap and anonymous
    maps, what a copy of the vectors would need; the memory-mapped gallery is file-backed and
    does not count) is capped at half the gallery's size beyond what its imports hold. An
    in-memory build under the same cap fails, so the cap binds."""
    n, d = 60_000, 1024  # 246 MB of float32
    gallery = np.lib.format.open_memmap(tmp_path / "gallery.npy", mode="w+", dtype=np.float32,
                                        shape=(n, d))
    for a in range(0, n, 10_000):
        gallery[a:a + 10_000] = synthetic_matryoshka(10_000, d, seed=a)
    gallery.flush()
    cap = n * d * 4 // 2
    script = textwrap.dedent(f"""
        import resource, sys
        import faiss, numpy as np
        from nestemb.index import FunnelIndex, build_on_disk
        data = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData"))
        limit = data * 1024 + {cap}
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        X = np.load(sys.argv[1], mmap_mode="r")
        if sys.argv[3] == "memory":
            FunnelIndex(dims=(32, {d}), shortlist=(100,)).add(X)
        else:
            idx = build_on_disk(FunnelIndex(dims=(32, {d}), shortlist=(100,)), X, sys.argv[2])
            print(idx.search(np.asarray(X[[7, 30000, 59999]]), 1)[1][:, 0].tolist())
    """)
    run = [sys.executable, "-c", script, str(tmp_path / "gallery.npy"), str(tmp_path / "idx")]
    ok = subprocess.run(run + ["disk"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == "[7, 30000, 59999]"
    refused = subprocess.run(run + ["memory"], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and ("MemoryError" in refused.stderr
                                        or "bad_alloc" in refused.stderr), refused.stderr[-2000:]
    idx = load_index(tmp_path / "idx")
    Q = np.asarray(gallery[[11, 222, 45_000]]) + 0.01
    assert idx.search(Q, 1)[1][:, 0].tolist() == [11, 222, 45_000]
