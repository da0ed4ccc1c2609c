"""Qdrant and Milvus backends against nestemb's own FunnelIndex and brute-force search.

Engines that need no server and speak the cluster's client API: qdrant-client local mode,
Qdrant Edge (Qdrant's engine in-process) and milvus-lite (through pymilvus). Each is an optional
extra (``nestemb[backends]``): its tests skip with a message when its package is missing.
"""

from __future__ import annotations

import importlib.util
import json
import socket

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.index import FunnelIndex, exact_search, knn_intersection, synthetic_matryoshka
from nestemb.nesting import Manifest

N, D, NQ = 2000, 64, 25
DIMS, SHORTLIST = (8, 16, 64), (200, 40)
NEST = (8, 16, 32, 64)


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (optional extra: pip install 'nestemb[backends]')")


ENGINES = ["qdrant-local", "qdrant-edge", "milvus-server", "milvus-client"]
_MODULE = {"qdrant-local": "qdrant_client", "qdrant-edge": "qdrant_edge",
           "milvus-server": "milvus_lite", "milvus-client": "milvus_lite"}


class Engine:
    """One engine behind one interface: export a source, open an exported collection."""

    def __init__(self, name: str, tmp):
        _need(_MODULE[name])
        self.name, self.tmp = name, tmp
        if name == "qdrant-local":
            from qdrant_client import QdrantClient

            self.client = QdrantClient(":memory:")
        elif name.startswith("milvus"):
            _need("pymilvus")
            from pymilvus import MilvusClient

            self.client = MilvusClient(str(tmp / "milvus.db"))
        self.opened: list = []

    def export(self, source, collection="c", **kw):
        if self.name == "qdrant-local":
            from nestemb.engines.qdrant import export_qdrant

            return export_qdrant(source, self.client, collection, **kw)
        if self.name == "qdrant-edge":
            from nestemb.engines.qdrant import export_qdrant_edge

            for f in self.opened:  # an Edge shard is opened by one handle at a time
                f.close()
            f = export_qdrant_edge(source, self.tmp / collection, **kw)
            self.opened.append(f)
            return f
        from nestemb.engines.milvus import MilvusFunnel, export_milvus

        export_milvus(source, self.client, collection, **kw)
        return MilvusFunnel(self.client, collection, rerank=self.name.split("-")[1])

    def open(self, collection="c", **kw):
        if self.name == "qdrant-local":
            from nestemb.engines.qdrant import QdrantFunnel

            return QdrantFunnel(self.client, collection, **kw)
        if self.name == "qdrant-edge":
            from nestemb.engines.qdrant import QdrantFunnel

            for f in self.opened:
                f.close()
            f = QdrantFunnel.open_edge(self.tmp / collection, **kw)
            self.opened.append(f)
            return f
        from nestemb.engines.milvus import MilvusFunnel

        return MilvusFunnel(self.client, collection, rerank=self.name.split("-")[1], **kw)

    def close(self) -> None:
        for f in self.opened:
            f.close()
        if hasattr(self, "client") and self.name.startswith("milvus"):
            self.client.close()


@pytest.fixture(scope="module")
def data():
    X = synthetic_matryoshka(N + NQ, D, seed=0)
    return X[:N], X[N:]


def _ids(kind: str) -> list:
    rng = np.random.default_rng(7)
    ints = rng.choice(10**9, size=N, replace=False)
    return [int(i) for i in ints] if kind == "int" else [f"doc-{i}\"x" for i in ints]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tmp_path_factory):
    eng = Engine(request.param, tmp_path_factory.mktemp(request.param))
    yield eng
    eng.close()


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_top10_equals_funnel_index(engine, data, id_kind):
    """Same stage configuration, same top-10 ids and scores as FunnelIndex (3 stages)."""
    X, Q = data
    index = FunnelIndex(dims=DIMS, shortlist=SHORTLIST, nesting=NEST, model_id="synthetic",
                        model_version="v1").add(X, _ids(id_kind))
    funnel = engine.export(index, f"top10{id_kind}", **(
        {"quantize": "none"} if engine.name.startswith("qdrant") else {}))
    if engine.name == "qdrant-edge":  # HNSW first stage by default: scan exactly to compare
        funnel = engine.open(f"top10{id_kind}", exact=True)
    want_s, want_i = index.search(Q, 10)
    got_s, got_i = funnel.search(Q, 10)
    assert got_i.shape == (NQ, 10) and got_i.dtype.kind == want_i.dtype.kind
    assert knn_intersection(got_i, want_i) >= 0.99
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert funnel.dims == DIMS and funnel.shortlist == SHORTLIST
    assert funnel.manifest_.nesting == NEST and funnel.manifest_.model_version == "v1"


def test_exact_scan_equals_brute_force(engine, data):
    """A one-stage configuration on the full vector is brute force: identical ids."""
    X, Q = data
    ids = np.asarray(_ids("int"))
    funnel = engine.export(X, "exact", ids=ids.tolist(), dims=(8, 64), shortlist=(N,),
                           model_id="synthetic")
    scan = engine.open("exact", dims=(64,), shortlist=(),
                       **({"exact": True} if engine.name.startswith("qdrant") else {}))
    s_ref, rows = exact_search(X, Q, 10)
    s, got = scan.search(Q, 10)
    assert (got == ids[rows]).all()
    np.testing.assert_allclose(s, s_ref, atol=1e-5)
    # the full shortlist (every point) through the first prefix gives the same ids again
    if engine.name == "qdrant-edge":
        funnel = engine.open("exact", exact=True)
    assert (funnel.search(Q[:5], 10)[1] == ids[rows[:5]]).all()


def test_int8_first_stage_recall(data, tmp_path):
    """Qdrant Edge with the short prefix int8-quantized and an HNSW graph on it (the default
    export) still returns FunnelIndex's top-10."""
    _need("qdrant_edge")
    from nestemb.engines.qdrant import export_qdrant_edge

    X, Q = data
    index = FunnelIndex(dims=DIMS, shortlist=SHORTLIST, model_id="synthetic").add(X)
    f = export_qdrant_edge(index, tmp_path / "q8")
    try:
        assert f.manifest_.extra["quantize"] == "int8"
        assert knn_intersection(f.search(Q, 10)[1], index.search(Q, 10)[1]) >= 0.99
        assert f.logical_bytes_per_point() == {
            "vectors": 4.0 * (8 + 16 + 64) + 8 + 4, "reference": 4.0 * (64 + 8),
            "ratio": (4.0 * 88 + 12) / (4.0 * 72)}
    finally:
        f.close()


def test_mismatched_model_or_nesting_refused(engine, data):
    X, Q = data
    engine.export(X[:300], "ident", dims=(8, 64), shortlist=(50,), nesting=NEST,
                  model_id="minilm", model_version="aa")
    funnel = engine.open("ident")
    other_model = Manifest(model_id="mpnet", model_version="aa", nesting=NEST, dim=D)
    other_version = Manifest(model_id="minilm", model_version="bb", nesting=NEST, dim=D)
    other_nesting = Manifest(model_id="minilm", model_version="aa", nesting=(16, 64), dim=D)
    with pytest.raises(NestembError, match="queries and .* come from different models: 'mpnet'"):
        funnel.search(Q, 10, manifest=other_model)
    with pytest.raises(NestembError, match="different weights of model 'minilm': version 'bb' vs 'aa'"):
        funnel.search(Q, 10, manifest=other_version)
    with pytest.raises(NestembError, match=r"different nestings: \(16, 64\) vs \(8, 16, 32, 64\)"):
        funnel.search(Q, 10, manifest=other_nesting)
    with pytest.raises(NestembError, match="expected manifest and .* different nestings"):
        engine.open("ident", manifest=other_nesting)
    funnel = engine.open("ident")
    same = Manifest(model_id="minilm", model_version="aa", nesting=NEST, dim=D)
    assert funnel.search(Q, 3, manifest=same)[1].shape == (NQ, 3)
    with pytest.raises(NestembError, match=r"stage dims \[16\] are not stored in .*\(8, 64\)"):
        engine.open("ident", dims=(8, 16, 64), shortlist=(50, 20))
    funnel = engine.open("ident")
    with pytest.raises(NestembError, match="queries have dimension 32, expected 64"):
        funnel.search(Q[:, :32], 10)
    with pytest.raises(NestembError, match=r"shortlist \(50,\) has a size smaller than k=60"):
        funnel.search(Q, 60)
    with pytest.raises(NestembError, match="k must be a positive integer, got 0"):
        funnel.search(Q, 0)


def test_existing_collection_refused_unless_overwrite(engine, data):
    X, Q = data
    engine.export(X[:100], "ow", dims=(8, 64), shortlist=(20,), model_id="a")
    with pytest.raises(NestembError, match=r"already exists \(set overwrite to replace it\)"):
        engine.export(X[100:300], "ow", dims=(8, 64), shortlist=(20,), model_id="a")
    with pytest.raises(NestembError, match="payload has 1 entries for 200 vectors"):
        engine.export(X[100:300], "ow", dims=(8, 64), shortlist=(20,), payload=[{}],
                      overwrite=True)
    assert len(engine.open("ow")) == 100  # untouched
    f = engine.export(X[100:300], "ow", dims=(8, 64), shortlist=(20,), model_id="b",
                      overwrite=True)
    assert len(f) == 200 and f.manifest_.model_id == "b"
    assert f.search(X[150], k=1)[1].item() == 50


def test_foreign_collection_not_opened_nor_overwritten(engine, data):
    """A collection nestemb did not write: refused by search and by overwrite."""
    X, _ = data
    if engine.name == "qdrant-local":
        from qdrant_client import models

        engine.client.create_collection("foreign", vectors_config=models.VectorParams(
            size=4, distance=models.Distance.COSINE))
    elif engine.name == "qdrant-edge":  # a shard whose export never finished (no manifest)
        import qdrant_edge as qe

        (engine.tmp / "foreign").mkdir()
        qe.EdgeShard.create(str(engine.tmp / "foreign" / "shard"), qe.EdgeConfig(
            vectors={"d8": qe.EdgeVectorParams(size=8, distance=qe.Distance.Cosine)})).close()
    else:
        if engine.client.has_collection("foreign"):
            engine.client.drop_collection("foreign")
        engine.client.create_collection("foreign", dimension=4)
    with pytest.raises(NestembError, match="foreign'.* has no nestemb manifest"):
        engine.open("foreign")
    with pytest.raises(NestembError, match="refusing to overwrite .*foreign'.* no nestemb manifest"):
        engine.export(X[:10], "foreign", dims=(8, 64), shortlist=(5,), overwrite=True)
    with pytest.raises(NestembError, match="does not exist"):
        engine.open("missing")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_qdrant_url():
    _need("qdrant_client")
    from qdrant_client import QdrantClient

    from nestemb.engines.qdrant import QdrantFunnel, connect_qdrant

    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(NestembError, match=f"cannot reach Qdrant at '{url}'"):
        connect_qdrant(url, timeout=1)
    client = QdrantClient(url=url, timeout=1, check_compatibility=False)
    with pytest.raises(NestembError, match="qdrant collection 'c'.*(refused|Connect)"):
        QdrantFunnel(client, "c")


def test_unreachable_milvus_url():
    _need("pymilvus")
    from nestemb.engines.milvus import connect_milvus

    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(NestembError, match=f"cannot reach Milvus at '{url}'"):
        connect_milvus(url, timeout=1)


def test_export_input_checks(data, tmp_path):
    _need("qdrant_client")
    from qdrant_client import QdrantClient

    from nestemb.engines.base import export_source
    from nestemb.engines.qdrant import export_qdrant

    X, _ = data
    c = QdrantClient(":memory:")
    with pytest.raises(NestembError, match="dims is required when exporting raw vectors"):
        export_qdrant(X, c, "x", shortlist=(5,))
    with pytest.raises(NestembError, match=r"stage dim 12 is not in the nesting \(8, 16, 32, 64\)"):
        export_qdrant(X, c, "x", dims=(12, 64), shortlist=(5,), nesting=NEST)
    with pytest.raises(NestembError, match="duplicate ids: \\[1\\]"):
        export_qdrant(X[:3], c, "x", ids=[1, 1, 2], dims=(8, 64), shortlist=(2,))
    with pytest.raises(NestembError, match="payload has 2 entries for 3 vectors"):
        export_qdrant(X[:3], c, "x", dims=(8, 64), shortlist=(2,), payload=[{}, {}])
    with pytest.raises(NestembError, match="reserved key 'nestemb_id'"):
        export_qdrant(X[:1], c, "x", ids=["a"], dims=(8, 64), shortlist=(1,),
                      payload=[{"nestemb_id": 1}])
    with pytest.raises(NestembError, match="quantize must be one of"):
        export_qdrant(X, c, "x", dims=(8, 64), shortlist=(5,), quantize="int4")
    with pytest.raises(NestembError, match="ids: an index carries its own ids"):
        export_source(FunnelIndex(dims=(8, 64), shortlist=(5,)).add(X[:10]), ids=list(range(10)))
    with pytest.raises(NestembError, match="manifest says dim 32, the vectors have dimension 64"):
        export_source(X, dims=(8, 64), shortlist=(5,),
                      manifest=Manifest(model_id="m", nesting=(8, 32), dim=32))
    assert not c.collection_exists("x")  # nothing half-written


def test_payload_travels_and_deleted_rows_are_not_exported(data):
    _need("qdrant_client")
    from qdrant_client import QdrantClient

    from nestemb.engines.qdrant import export_qdrant

    X, Q = data
    index = FunnelIndex(dims=(8, 64), shortlist=(100,)).add(X[:500]).delete([3, 4])
    c = QdrantClient(":memory:")
    f = export_qdrant(index, c, "p", payload=[{"n": i} for i in range(498)])
    assert len(f) == 498 and c.count("p").count == 498
    assert f.search(X[3], k=1)[1].item() != 3
    rec = c.retrieve("p", [10], with_payload=True)[0]
    assert rec.payload == {"n": 8}  # row 8 of the live rows is id 10
    assert json.dumps(f.manifest_.to_dict())  # the manifest is plain JSON


def test_interrupted_export_is_refused_then_overwritten(engine, data, monkeypatch):
    """An export that dies mid-way leaves a collection marked partial: never searched, and
    replaced by an export with overwrite=True."""
    X, _ = data
    if engine.name.startswith("qdrant"):
        from nestemb.engines import qdrant

        target = qdrant.EdgeCollection if engine.name == "qdrant-edge" else qdrant.QdrantCollection
        monkeypatch.setattr(target, "write", lambda *a, **k: (_ for _ in ()).throw(
            OSError("disk full")))
    else:
        monkeypatch.setattr(engine.client, "insert", lambda *a, **k: (_ for _ in ()).throw(
            OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        engine.export(X[:50], "partial", dims=(8, 64), shortlist=(10,))
    monkeypatch.undo()
    with pytest.raises(NestembError, match="partially written .*export it again with overwrite"):
        engine.open("partial")
    with pytest.raises(NestembError, match="already exists"):
        engine.export(X[:50], "partial", dims=(8, 64), shortlist=(10,))
    f = engine.export(X[:50], "partial", dims=(8, 64), shortlist=(10,), overwrite=True)
    assert len(f) == 50 and f.search(X[7], k=1)[1].item() == 7
