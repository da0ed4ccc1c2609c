"""The service's compute-budget planner (issue 25): ``POST /collections/{name}/widths`` measures
a collection's width table on held-out query texts (each row checked here against an
independent numpy funnel), and a search naming ``latency_ms`` (or ``recall``) with text is
planned from it: width, dims and shortlist; the text is encoded at the planned width. Every
misuse is a 4xx naming the field, and changes nothing stored."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from nestemb.service import Limits, create_app
from nestemb.service.client import ServiceClient, ServiceError
from nestemb.text._tiny import WORDS
from nestemb.text.encoder import load_text_model
from harness.server import assert_error, db_rows, dir_listing

K = 5
LIMITS = Limits(max_k=50, max_queries=4)


def unique_texts(n: int, seed: int, avoid: set[str] = frozenset()) -> list[str]:
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        t = " ".join(rng.choice(WORDS, 5))
        if t not in out and t not in avoid:
            out.append(t)
    return out


GALLERY = unique_texts(300, 0)
QUERIES = unique_texts(30, 1, set(GALLERY))


@pytest.fixture(scope="module")
def served(tmp_path_factory, elastic_model, tiny_model):
    """Collection ``txt`` (elastic encoder) with a measured width table, ``flat`` (a plain
    encoder), ``empty`` (elastic, no points) and ``vec`` (vectors only)."""
    data_dir = tmp_path_factory.mktemp("plan") / "data"
    app = create_app(data_dir, limits=LIMITS, tune_interval=3600,
                     encoders={"el": str(elastic_model), "plain": str(tiny_model)})
    with TestClient(app) as c:
        pts = [{"id": i, "text": t} for i, t in enumerate(GALLERY)]
        for name, enc in (("txt", "el"), ("flat", "plain")):
            r = c.put(f"/collections/{name}", json={"encoder": enc, "nesting": [8, 16, 32]})
            assert r.status_code == 200, r.text
            assert c.put(f"/collections/{name}/points", json={"points": pts}).status_code == 200
        assert c.put("/collections/empty", json={"encoder": "el"}).status_code == 200
        assert c.put("/collections/vec", json={"nesting": [8, 16, 32]}).status_code == 200
        r = c.post("/collections/txt/widths", json={"queries": QUERIES, "k": K,
                                                     "timing_queries": 5, "repeat": 1})
        assert r.status_code == 200, r.text
        yield c, data_dir, load_text_model(elastic_model), r.json()


def unit(A: np.ndarray) -> np.ndarray:
    A = A.astype(np.float64)
    return A / np.linalg.norm(A, axis=-1, keepdims=True)


def funnel(X: np.ndarray, q: np.ndarray, dims: list[int], shortlist: list[int], k: int) -> list:
    """An independent two-stage funnel: top-``shortlist`` by cosine on the first ``dims[0]``
    dims, re-ranked by cosine on all of ``dims[-1]``; or exact cosine for one stage."""
    rows = np.arange(len(X))
    if shortlist:
        s0 = unit(X[:, : dims[0]]) @ unit(q[: dims[0]])
        rows = np.argsort(-s0, kind="stable")[: shortlist[0]]
    s = unit(X[rows]) @ unit(q)
    return rows[np.argsort(-s, kind="stable")[:k]].tolist()


def test_every_row_of_the_table_is_what_an_independent_funnel_finds(served):
    _, _, enc, table = served
    X, full = enc.encode(GALLERY), enc.encode(QUERIES)
    truth = [set(funnel(X, q, [32], [], K)) for q in full]
    assert table["k"] == K and table["n_queries"] == len(QUERIES)
    assert table["widths"] == [0.25, 0.5, 1.0] and table["count"] == len(GALLERY)
    seen = set()
    for row in table["rows"]:
        Qw = enc.encode(QUERIES, width=row["width"])
        hits = [funnel(X, q, row["dims"], row["shortlist"], K) for q in Qw]
        recall = np.mean([len(set(h) & t) / K for h, t in zip(hits, truth)])
        assert row["recall"] == pytest.approx(recall, abs=1e-9), row
        assert row["latency_ms"] == pytest.approx(row["encode_ms"] + row["search_ms"])
        assert 0 < row["cost"] <= 1 and (row["cost"] == 1) == (row["width"] == 1.0)
        seen.add((row["width"], tuple(row["dims"])))
    assert {w for w, _ in seen} == {0.25, 0.5, 1.0}
    assert (1.0, (32,)) in seen and (0.25, (8, 32)) in seen
    exact = [r for r in table["rows"] if r["width"] == 1.0 and r["dims"] == [32]]
    assert exact[0]["recall"] == 1.0
    # the tiny model's slices are untrained: a narrower width really finds other neighbours
    assert min(r["recall"] for r in table["rows"] if r["width"] == 0.25) < 1.0
    info = served[0].get("/collections/txt").json()["index"]
    assert info["width_table"]["rows"] == table["rows"]


def planned(c: TestClient, **req) -> dict:
    r = c.post("/collections/txt/search", json=req)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_latency_budget_is_planned_and_the_text_encoded_at_the_planned_width(served):
    c, _, enc, table = served
    X = enc.encode(GALLERY)
    rows = table["rows"]
    budgets = sorted({r["latency_ms"] for r in rows})
    for budget in (budgets[0], budgets[len(budgets) // 2], budgets[-1] * 2):
        for text in QUERIES[:3]:
            out = planned(c, text=text, k=K, latency_ms=budget)
            plan = out["plan"]
            assert plan["source"] == "width-table" and plan["expected_ms"] <= budget
            within = [r for r in rows if r["latency_ms"] <= budget]
            assert plan["expected_recall"] == max(r["recall"] for r in within
                                                  if r["recall_low"] == max(
                                                      x["recall_low"] for x in within))
            q = enc.encode([text], width=plan["width"])[0]  # the server encoded at that width
            ids = funnel(X, q, plan["dims"], plan["shortlist"], K)
            assert [h["id"] for h in out["hits"]] == ids
            np.testing.assert_allclose([h["score"] for h in out["hits"]],
                                       unit(X[ids]) @ unit(q), atol=2e-5)


def test_a_recall_target_takes_the_fastest_plan_that_meets_it(served):
    c, _, enc, table = served
    X = enc.encode(GALLERY)
    for text in QUERIES[:4]:  # tuning queries: a plan with recall 1 found their exact top-k
        out = planned(c, text=text, k=K, recall=1.0)
        plan = out["plan"]
        meets = [r for r in table["rows"] if r["recall_low"] >= 1.0]
        assert plan["expected_ms"] == min(r["latency_ms"] for r in meets)
        truth = funnel(X, enc.encode([text])[0], [32], [], K)
        assert {h["id"] for h in out["hits"]} == set(truth)
    out = planned(c, text=QUERIES[0], k=K, recall=0.2, width=0.5, latency_ms=1e6)
    assert out["plan"]["width"] == 0.5  # the request's width narrows the choice
    # a vector query with a recall target is still planned from the tuned recall table
    vec = planned(c, vector=enc.encode([QUERIES[0]])[0].tolist(), k=K, recall=0.5)
    assert vec["plan"]["source"] in ("tuned", "exact") and "width" not in vec["plan"]


def test_the_client_measures_and_plans(served):
    c, _, _, table = served
    client = ServiceClient(http=c)
    out = client.search("txt", text=QUERIES[2], k=K, latency_ms=1e6)
    assert out["plan"]["source"] == "width-table"
    with pytest.raises(ServiceError) as e:
        client.search("txt", text=QUERIES[2], k=K, latency_ms=1e-9)
    assert (e.value.status, e.value.field) == (422, "latency_ms")
    with pytest.raises(ServiceError) as e:
        client.tune_widths("flat", QUERIES[:3])
    assert (e.value.status, e.value.field) == (409, "encoder")


def test_the_table_survives_a_restart(tmp_path, elastic_model):
    data_dir = tmp_path / "data"
    encoders = {"el": str(elastic_model)}
    with TestClient(create_app(data_dir, limits=LIMITS, tune_interval=3600,
                               encoders=encoders)) as c:
        assert c.put("/collections/t", json={"encoder": "el"}).status_code == 200
        r = c.put("/collections/t/points",
                  json={"points": [{"id": i, "text": t} for i, t in enumerate(GALLERY[:80])]})
        assert r.status_code == 200
        r = c.post("/collections/t/widths", json={"queries": QUERIES[:8], "k": K,
                                                   "timing_queries": 2, "repeat": 1})
        assert r.status_code == 200, r.text
        table = r.json()
    with TestClient(create_app(data_dir, limits=LIMITS, tune_interval=3600,
                               encoders=encoders)) as c:
        assert c.get("/collections/t").json()["index"]["width_table"] == table
        r = c.post("/collections/t/search", json={"text": QUERIES[0], "k": K, "latency_ms": 1e6})
        assert r.status_code == 200 and r.json()["plan"]["source"] == "width-table"


SEARCH_BAD = [
    ("txt", {"text": "the cat", "latency_ms": 1e-9}, 422, "latency_ms", "no measured plan runs within"),
    ("txt", {"text": "the cat", "latency_ms": 1e6, "width": 0.75}, 422, "width",
     "was not measured"),
    ("txt", {"vector": [0.1] * 32, "latency_ms": 5}, 422, "latency_ms", "needs text"),
    ("txt", {"text": "the cat", "latency_ms": 5, "dims": [32]}, 422, "latency_ms",
     "not both"),
    ("txt", {"text": "the cat", "latency_ms": 0}, 422, "latency_ms", ""),
    ("txt", {"text": "the cat", "latency_ms": "fast"}, 422, "latency_ms", ""),
    ("flat", {"text": "the cat", "latency_ms": 5}, 409, "latency_ms", "no width table"),
    ("empty", {"text": "the cat", "latency_ms": 5}, 409, "latency_ms", "no width table"),
]


@pytest.mark.parametrize("name,body,status,field,message", SEARCH_BAD)
def test_bad_budgets_name_the_field(served, name, body, status, field, message):
    c, data_dir, _, _ = served
    before = db_rows(data_dir), dir_listing(data_dir)
    assert_error(c.post(f"/collections/{name}/search", json=body), status, field, message)
    r = c.post(f"/collections/{name}/search/batch",
               json={"searches": [{"text": "the cat"}, body]})
    assert_error(r, status, "searches.1." + field, message)
    assert (db_rows(data_dir), dir_listing(data_dir)) == before


def test_an_unreachable_recall_at_a_width_names_recall(served):
    c, _, _, table = served
    best = max(r["recall_low"] for r in table["rows"] if r["width"] == 0.25)
    assert best < 1.0
    assert_error(c.post("/collections/txt/search",
                        json={"text": "the cat", "recall": 1.0, "width": 0.25}),
                 422, "recall", "reaches recall@5 1")


TUNE_BAD = [
    ("flat", {"queries": ["a cat"]}, 409, "encoder", "without nested widths"),
    ("vec", {"queries": ["a cat"]}, 422, "queries", "has no encoder"),
    ("empty", {"queries": ["a cat"]}, 409, "name", "empty"),
    ("txt", {"queries": ["a cat", "  "]}, 422, "queries.1", "must not be empty"),
    ("txt", {"queries": []}, 422, "queries", ""),
    ("txt", {"queries": ["a cat"], "k": 301}, 422, "k", ""),
    ("txt", {"queries": ["a cat"], "repeat": 0}, 422, "repeat", ""),
    ("nope", {"queries": ["a cat"]}, 404, "name", "does not exist"),
]


@pytest.mark.parametrize("name,body,status,field,message", TUNE_BAD)
def test_bad_width_tunings_name_the_field(served, name, body, status, field, message):
    c, data_dir, _, table = served
    before = db_rows(data_dir), dir_listing(data_dir)
    assert_error(c.post(f"/collections/{name}/widths", json=body), status, field, message)
    assert (db_rows(data_dir), dir_listing(data_dir)) == before
    assert c.get("/collections/txt").json()["index"]["width_table"] == table  # kept
