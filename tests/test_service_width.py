"""Searches that name the encoder width (issue 25): ``text`` encoded server-side at a trained
feed-forward width of the collection's elastic encoder, answered by the collection's index as
is; the answer's plan names the width; every misuse of ``width`` is a 422 naming the field and
changes nothing."""

from __future__ import annotations


import numpy as np
import pytest
from fastapi.testclient import TestClient

from nestemb.service import Limits, create_app
from nestemb.service.client import ServiceClient, ServiceError
from nestemb.text.encoder import load_text_model
from harness.server import assert_error, db_rows, dir_listing

TEXTS = ["the cat sits on the mat", "a dog runs in the park", "protein binds the cell",
         "gene study shows cancer risk", "a man plays guitar", "the woman eats food",
         "red car drives fast", "patients risk increase"]
QUERIES = ["what cell protein", "dog runs fast", "the big red car"]
LIMITS = Limits(max_k=50, max_queries=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory, elastic_model, tiny_model):
    """A server with an elastic encoder ``el`` (collection ``txt``), a plain one ``plain``
    (collection ``flat``) and a vector collection ``vec``."""
    data_dir = tmp_path_factory.mktemp("width") / "data"
    app = create_app(data_dir, limits=LIMITS, tune_interval=3600,
                     encoders={"el": str(elastic_model), "plain": str(tiny_model)})
    with TestClient(app) as c:
        pts = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
        for name, enc in (("txt", "el"), ("flat", "plain")):
            assert c.put(f"/collections/{name}", json={"encoder": enc}).status_code == 200
            r = c.put(f"/collections/{name}/points", json={"points": pts})
            assert r.json() == {"upserted": len(TEXTS)}, r.text
        assert c.put("/collections/vec", json={"nesting": [8, 16, 32]}).status_code == 200
        vecs = [{"id": i, "vector": np.random.default_rng(i).normal(size=32).tolist()}
                for i in range(4)]
        assert c.put("/collections/vec/points", json={"points": vecs}).status_code == 200
        yield c, data_dir, load_text_model(elastic_model)


def brute(X: np.ndarray, q: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Top-``k`` rows of ``X`` by float64 cosine with ``q``."""
    A = X.astype(np.float64)
    s = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = np.argsort(-s, kind="stable")[:k]
    return order.tolist(), s[order]


def search(c: TestClient, name: str = "txt", **req) -> dict:
    r = c.post(f"/collections/{name}/search", json=req)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_width_encodes_the_query_at_that_width(served):
    c, _, enc = served
    X = enc.encode(TEXTS)  # what the collection stored (full width)
    for text in QUERIES:
        for g in (0.25, 0.5):
            q = enc.encode([text], width=g)[0]
            assert not np.allclose(q, enc.encode([text])[0], atol=1e-4)  # a real other width
            out = search(c, text=text, k=5, width=g)
            ids, scores = brute(X, q, 5)
            assert [h["id"] for h in out["hits"]] == ids
            np.testing.assert_allclose([h["score"] for h in out["hits"]], scores, atol=2e-5)
            assert out["plan"]["width"] == g
            assert out["plan"]["source"] == "default:exact"


def test_width_one_equals_no_width_and_no_width_is_unchanged(served):
    c, _, enc = served
    for text in QUERIES:
        full, plain = search(c, text=text, k=8, width=1.0), search(c, text=text, k=8)
        assert [h["id"] for h in full["hits"]] == [h["id"] for h in plain["hits"]]
        np.testing.assert_allclose([h["score"] for h in full["hits"]],
                                   [h["score"] for h in plain["hits"]], atol=1e-6)
        assert full["plan"]["width"] == 1.0
        assert "width" not in plain["plan"]  # responses without a width are as before
        assert search(c, text=text, k=8, width=1)["plan"]["width"] == 1.0  # JSON 1 is 1.0
        ids, _ = brute(enc.encode(TEXTS), enc.encode([text])[0], 8)
        assert [h["id"] for h in plain["hits"]] == ids


def test_width_in_batches_and_with_dims(served):
    c, _, enc = served
    single = search(c, text=QUERIES[0], k=3, width=0.5, dims=[32])
    assert single["plan"] == {"dims": [32], "shortlist": [], "source": "request",
                              "expected_recall": None, "width": 0.5}
    r = c.post("/collections/txt/search/batch", json={"searches": [
        {"text": QUERIES[0], "k": 3, "width": 0.5, "dims": [32]}, {"text": QUERIES[0], "k": 3}]})
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert a["hits"] == single["hits"] and a["plan"] == single["plan"]
    assert "width" not in b["plan"]


def test_the_client_passes_width(served):
    c, _, _ = served
    client = ServiceClient(http=c)  # not closed: that would close the shared TestClient
    out = client.search("txt", text=QUERIES[1], k=4, width=0.25)
    assert out["hits"] == search(c, text=QUERIES[1], k=4, width=0.25)["hits"]
    assert out["plan"]["width"] == 0.25
    assert "width" not in client.search("txt", text=QUERIES[1], k=4, width=None)["plan"]
    with pytest.raises(ServiceError) as e:
        client.search("txt", text=QUERIES[1], width=0.3)
    assert (e.value.status, e.value.field) == (422, "width")


BAD = [
    ("txt", {"vector": [0.1] * 32, "width": 0.5}, "width", "nothing to encode"),
    ("vec", {"vector": [0.1] * 32, "width": 0.5}, "width", "nothing to encode"),
    ("flat", {"text": "the cat", "width": 0.5}, "width", "without nested widths"),
    ("txt", {"text": "the cat", "width": 0.3}, "width", "not a trained granularity"),
    ("txt", {"text": "the cat", "width": "0.5"}, "width", ""),
    ("txt", {"text": "the cat", "width": True}, "width", ""),
    ("txt", {"text": "the cat", "width": [0.5]}, "width", ""),
    ("txt", {"text": "the cat", "width": 0}, "width", ""),
    ("txt", {"text": "the cat", "width": 1.5}, "width", ""),
]


@pytest.mark.parametrize("name,body,field,message", BAD)
def test_bad_widths_are_422_naming_the_field(served, name, body, field, message):
    c, data_dir, _ = served
    before = db_rows(data_dir), dir_listing(data_dir)
    assert_error(c.post(f"/collections/{name}/search", json=body), 422, field, message)
    ok = {"text": "the cat"} if "text" in body else {"vector": [0.1] * 32}
    r = c.post(f"/collections/{name}/search/batch", json={"searches": [ok, body]})
    assert_error(r, 422, "searches.1." + field, message)
    assert (db_rows(data_dir), dir_listing(data_dir)) == before


def test_a_width_for_the_new_model_of_a_migration(tmp_path, elastic_model):
    """During a migration to the elastic encoder, ``model: "new"`` text queries run on the new
    model at the width asked for; the old (plain) model refuses a width."""
    from nestemb.service.migration import wait_for
    from nestemb.text._tiny import WORDS, make_tiny_model

    old = make_tiny_model(tmp_path / "old", seed=1)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in range(120)]
    data_dir = tmp_path / "data"
    with TestClient(create_app(data_dir, limits=LIMITS, tune_interval=3600,
                               encoders={"old": str(old), "el": str(elastic_model)})) as c:
        assert c.put("/collections/m", json={"encoder": "old"}).status_code == 200
        r = c.put("/collections/m/points",
                  json={"points": [{"id": i, "text": t, "payload": {"text": t}}
                                   for i, t in enumerate(texts)]})
        assert r.status_code == 200, r.text
        r = c.put("/collections/m/migration", json={"encoder": "el", "sample_size": 60,
                                                    "min_quality": 0.0, "batch": 32})
        assert r.status_code == 200, r.text
        wait_for(lambda: c.get("/collections/m/migration").json()["complete"], timeout=120)
        assert c.get("/collections/m/migration").json()["state"] == "backfilling"
        enc = load_text_model(elastic_model)
        X = enc.encode(texts)
        for text in QUERIES:
            out = search(c, "m", text=text, k=5, model="new", width=0.25)
            ids, scores = brute(X, enc.encode([text], width=0.25)[0], 5)
            assert [h["id"] for h in out["hits"]] == ids
            np.testing.assert_allclose([h["score"] for h in out["hits"]], scores, atol=2e-5)
            assert out["plan"]["width"] == 0.25 and out["migration"]["space"] == "new"
        assert_error(c.post("/collections/m/search",
                            json={"text": "the cat", "model": "new", "width": 0.3}),
                     422, "width", "not a trained granularity")
        assert_error(c.post("/collections/m/search", json={"text": "the cat", "width": 0.5}),
                     422, "width", "without nested widths")
