"""A compute budget per request (issue 25, item 3): the width table of an index built from an
elastic image model (recall@k of every encoder width x stages x shortlist against what the full
model finds, latency = encoding + search), the planner that chooses from it, and ``nestemb index
tune|search --model`` with every bad input (exit 2, the flag named, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.data.idx import write_synthetic_idx
from nestemb.errors import NestembError
from nestemb.index import AdaptiveIVFIndex, FunnelIndex, load_index, tune
from nestemb.index.plan import Plan, choose_plan, search_with_plan, width_key, width_text
from nestemb.index.tune import RECALL_Z, tune_widths, width_table
from nestemb.models.elastic import mix_n_match
from nestemb.models.image import (ImageModel, ImageModelConfig, load_image_model,
                                  save_image_model)

K = 5
WIDTHS = (0.25, 0.5, 1.0)
NESTING = (4, 8, 16)


def _config(widths=WIDTHS) -> ImageModelConfig:
    return ImageModelConfig(dim=16, nesting=NESTING, width=4, widths=widths, arch="mlp")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny elastic MLP (random weights, saved and loaded so that it has its manifest; its
    projection's bias centres the gallery's embeddings, which spreads the scores: no near-ties
    at the cuts), the gallery and held-out query images (random pixels), another model of the
    same id (other weights), an ordinary one, and a small IDX folder."""
    import torch

    tmp = tmp_path_factory.mktemp("width-plan")
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    queries = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    torch.manual_seed(0)
    model = ImageModel(_config()).eval()
    with torch.no_grad():
        model.encoder.proj.bias -= torch.from_numpy(model.encode(gallery).mean(0))
    save_image_model(model, tmp / "model", model_id="elastic")
    model = load_image_model(tmp / "model")
    save_image_model(ImageModel(_config()).eval(), tmp / "other", model_id="elastic")
    save_image_model(ImageModel(_config(widths=None)).eval(), tmp / "plain", model_id="plain")
    write_synthetic_idx(tmp / "idx-data", n_train=20, n_test=10)
    return tmp, model, gallery, queries


def _index(model, gallery) -> FunnelIndex:
    man = model.manifest
    return FunnelIndex(dims=(4, 16), shortlist=(40,), nesting=NESTING, model_id=man.model_id,
                       model_version=man.model_version).add(model.encode(gallery))


def _views(X: np.ndarray, d: int) -> np.ndarray:
    V = X[:, :d].astype(np.float64)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def _ranked(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n`` columns of each row by score (float64), and each row's margin at that cut:
    its ``n``-th score less the next (``inf`` when nothing is cut off)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    margin = s[:, n - 1] - s[:, n] if n < scores.shape[1] else np.full(len(s), np.inf)
    return order[:, :n], margin


TIE = 1e-6
"""Scores closer than this at a cut (the k-th result, a shortlist's last candidate) may be
ordered either way in float32 (the index) and float64 (this reference): a query with such a
near-tie may count differently, every other query must count exactly the same."""


# ------------------------------------------------------------------ the table against brute force
def test_width_table_recall_is_what_brute_force_gives(setup):
    _, model, gallery, queries = setup
    index = _index(model, gallery)
    budget = 0.6
    table = tune_widths(index, model, queries, k=K, budgets=(budget,), timing_queries=5,
                        repeat=1)
    mix = width_key(mix_n_match(model.config, budget))
    assert table["widths"][:3] == list(WIDTHS) and table["k"] == K
    assert len(table["widths"]) == 3 + (mix not in WIDTHS)
    rows = table["rows"]
    assert rows == sorted(rows, key=lambda r: (r["latency_ms"], -r["recall_low"]))
    exact = [r for r in rows if r["width"] == 1.0 and r["dims"] == [16]]
    assert len(exact) == 1 and exact[0]["recall"] == 1.0 and exact[0]["recall_low"] == 1.0
    # the truth: the full model's exact full-dimension top-k over the gallery (numpy, float64)
    G = model.encode(gallery).astype(np.float64)
    truth, truth_margin = _ranked(_views(model.encode(queries), 16) @ _views(G, 16).T, K)
    seen_widths, exact_rows = set(), 0
    for r in rows:
        w = width_key(r["width"])
        seen_widths.add(w)
        Qw = model.encode(queries, width=w)
        if len(r["dims"]) == 1:
            found, margin = _ranked(_views(Qw, 16) @ _views(G, 16).T, K)
        else:
            (d0, D), (s,) = r["dims"], r["shortlist"]
            cand, m1 = _ranked(_views(Qw, d0) @ _views(G, d0).T, s)
            full = np.einsum("qd,qsd->qs", _views(Qw, D), _views(G, D)[cand])
            top, m2 = _ranked(full, K)
            found, margin = np.take_along_axis(cand, top, axis=1), np.minimum(m1, m2)
        per_query = np.array([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
        low = max(0.0, per_query.mean() - RECALL_Z * per_query.std(ddof=1) / np.sqrt(len(per_query)))
        near_ties = int((np.minimum(margin, truth_margin) < TIE).sum())
        if near_ties == 0:
            exact_rows += 1
            assert r["recall"] == pytest.approx(per_query.mean(), abs=1e-12), r
            assert r["recall_low"] == pytest.approx(low, abs=1e-12), r
        else:  # each query with a near-tie may count up to one whole query differently
            assert abs(r["recall"] - per_query.mean()) <= near_ties / len(queries) + 1e-12, r
        assert r["latency_ms"] == pytest.approx(r["encode_ms"] + r["search_ms"])
        assert 0 < r["cost"] <= 1 and (r["cost"] == 1.0) == (w == 1.0)
    assert exact_rows >= 0.8 * len(rows), (exact_rows, len(rows))  # the check has its power
    assert seen_widths == {width_key(w) for w in table["widths"]}
    # smaller widths lose something against the full model's truth on this model
    best = {w: max(r["recall"] for r in rows if width_key(r["width"]) == w) for w in seen_widths}
    assert best[0.25] < 1.0
    # recorded with the index, saved and read back
    assert width_table(index, model) is table
    loaded = load_index(index.save(setup[0] / "saved-index"))
    assert width_table(loaded, model) == json.loads(json.dumps(table))


def test_a_walk_stops_where_a_shortlist_finds_what_the_exact_plan_does(setup):
    _, model, gallery, queries = setup
    index = _index(model, gallery)
    table = tune_widths(index, model, queries, k=K, timing_queries=2, repeat=1)
    grid = [K * 2**i for i in range(7) if K * 2**i < len(gallery)] + [len(gallery)]
    for w in WIDTHS:
        Qw = model.encode(queries, width=w)

        def found(dims, shortlist):
            return [set(r) for r in index.search_plan(Qw, K, dims, shortlist)[1].tolist()]

        exact = found((16,), ())
        for d0 in (4, 8):  # every prefix shorter than the full dimension is a group
            sizes = sorted(r["shortlist"][0] for r in table["rows"]
                           if r["width"] == w and r["dims"] == [d0, 16])
            assert sizes == grid[: len(sizes)], (w, d0, sizes)
            assert all(found((d0, 16), (s,)) != exact for s in sizes[:-1])
            assert sizes[-1] == grid[-1] or found((d0, 16), (sizes[-1],)) == exact


# ------------------------------------------------------------------ the planner
ROWS = [
    {"width": 0.25, "dims": [4, 16], "shortlist": [20], "recall": 0.80, "recall_low": 0.75, "latency_ms": 0.2},
    {"width": 0.25, "dims": [4, 16], "shortlist": [40], "recall": 0.86, "recall_low": 0.82, "latency_ms": 0.3},
    {"width": 0.5, "dims": [4, 16], "shortlist": [40], "recall": 0.93, "recall_low": 0.90, "latency_ms": 0.5},
    {"width": [0.25, 1.0], "dims": [8, 16], "shortlist": [20], "recall": 0.92, "recall_low": 0.90, "latency_ms": 0.45},
    {"width": 1.0, "dims": [4, 16], "shortlist": [20], "recall": 0.97, "recall_low": 0.95, "latency_ms": 0.9},
    {"width": 1.0, "dims": [8, 16], "shortlist": [80], "recall": 0.995, "recall_low": 0.99, "latency_ms": 1.2},
    {"width": 1.0, "dims": [16], "shortlist": [], "recall": 1.0, "recall_low": 1.0, "latency_ms": 2.0},
]


@pytest.mark.parametrize("kw, want", [
    ({"recall": 0.7}, (0.25, (4, 16), (20,))),
    ({"recall": 0.8}, (0.25, (4, 16), (40,))),          # 0.80 mean, but 0.75 conservative
    ({"recall": 0.9}, ((0.25, 1.0), (8, 16), (20,))),   # Mix'n'Match ties 0.5 and is faster
    ({"recall": 0.9, "width": 0.5}, (0.5, (4, 16), (40,))),
    ({"recall": 0.9, "width": [0.5, 0.5]}, (0.5, (4, 16), (40,))),
    ({"recall": 0.95, "latency_ms": 1.0}, (1.0, (4, 16), (20,))),
    ({"recall": 1.0}, (1.0, (16,), ())),
    ({"latency_ms": 0.6}, ((0.25, 1.0), (8, 16), (20,))),  # most accurate within, then fastest
    ({"latency_ms": 0.35}, (0.25, (4, 16), (40,))),
    ({"latency_ms": 100}, (1.0, (16,), ())),
    ({"recall": 0.5, "width": 1}, (1.0, (4, 16), (20,))),
])
def test_choose_plan_picks_the_fastest_row_that_qualifies(kw, want):
    plan = choose_plan(ROWS, k=10, **kw)
    assert (plan.width, plan.dims, plan.shortlist) == want
    row = next(r for r in ROWS if (width_key(r["width"]), tuple(r["dims"]), tuple(r["shortlist"])) == want)
    assert plan.source == "width-table" and plan.expected_recall == row["recall"]
    assert plan.expected_ms == row["latency_ms"]
    feasible = [r for r in ROWS if r["recall_low"] >= kw.get("recall", 0)
                and r["latency_ms"] <= kw.get("latency_ms", np.inf)
                and ("width" not in kw or width_key(r["width"]) == width_key(kw["width"]))]
    if "recall" in kw:  # the fastest feasible row, by brute force over the table
        assert row["latency_ms"] == min(r["latency_ms"] for r in feasible)
    assert plan.as_dict()["width"] == (list(want[0]) if isinstance(want[0], tuple) else want[0])


@pytest.mark.parametrize("kw, param, match", [
    ({"recall": 0.99, "latency_ms": 1.0}, "latency_ms",
     r"reaching recall@10 0.99 runs within latency_ms 1 ms: the fastest that does takes 1.200 ms"),
    ({"latency_ms": 0.1}, "latency_ms", r"no measured plan runs within latency_ms 0.1 ms: the fastest takes 0.200 ms"),
    ({"recall": 0.95, "width": 0.5}, "recall",
     r"no measured plan of width 0.5 reaches recall@10 0.95 \(the recall target\) at any latency: the best is width 0.5"),
    ({"recall": 0.9, "width": 0.125}, "width", r"width 0.125 was not measured: the table holds widths 0.25, 0.5, 0.25,1, 1"),
    ({"recall": 1.5}, "recall", r"recall target must be in \(0, 1\]"),
    ({"recall": 0.9, "latency_ms": -1}, "latency_ms", "latency_ms must be a positive number"),
    ({}, "recall", "give a recall target, a latency_ms budget or both"),
    ({"recall": 0.9, "width": "half"}, "width", "width must be a fraction"),
])
def test_choose_plan_names_the_parameter_no_row_meets(kw, param, match):
    with pytest.raises(NestembError, match=match) as e:
        choose_plan(ROWS, k=10, **kw)
    assert e.value.param == param


def test_a_later_tune_keeps_the_width_table_only_while_the_structures_stay(setup):
    _, model, gallery, queries = setup
    index = _index(model, gallery)
    table = tune_widths(index, model, queries, k=K, timing_queries=2, repeat=1)
    Q = model.encode(queries)
    res = tune(index, Q, k=K, recall=0.5, groups=[[{"shortlist": (s,)} for s in (10, 20)]])
    assert res["width_plans"] is table and width_table(index, model) is table
    res = tune(index, Q, k=K, recall=0.5, groups=[[{"dims": (8, 16), "shortlist": (20,)}]])
    assert "width_plans" not in res and width_table(index) is None


# ------------------------------------------------------------------ bad input (library)
def test_tune_widths_names_what_is_wrong(setup):
    tmp, model, gallery, queries = setup
    index = _index(model, gallery)
    cases = [
        (lambda: tune_widths(index, load_image_model(tmp / "plain"), queries), "model", "no nested widths"),
        (lambda: tune_widths(index, load_image_model(tmp / "other"), queries), "model",
         "different weights of model 'elastic'"),
        (lambda: tune_widths(index, model, queries[:0]), "queries", "no queries"),
        (lambda: tune_widths(index, model, queries, budgets=(0.001,)), "budget", "below the smallest"),
        (lambda: tune_widths(index, model, queries, max_queries=0), "max_queries", "positive integer"),
    ]
    ivf = AdaptiveIVFIndex(d_cluster=4, d_search=16, nlist=2, model_id="elastic", nesting=NESTING,
                           model_version=model.manifest.model_version).add(model.encode(gallery))
    cases.append((lambda: tune_widths(ivf, model, queries), "index", "on a FunnelIndex"))
    for call, param, match in cases:
        with pytest.raises(NestembError, match=match) as e:
            call()
        assert e.value.param == param
    assert index.tuning_ is None  # nothing recorded by a refused call
    tune_widths(index, model, queries, k=K, timing_queries=2, repeat=1)
    with pytest.raises(NestembError, match="measured with model 'elastic'") as e:
        width_table(index, load_image_model(tmp / "other"))
    assert e.value.param == "model"
    with pytest.raises(NestembError, match="shortlist: every size must be >= k=60"):
        search_with_plan(index, model.encode(queries), 60, Plan((4, 16), (40,)))


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
    """The gallery embedded and indexed through the CLI, query images as .npy."""
    from nestemb.folders import save_embeddings
    from nestemb.nesting import Manifest

    tmp, model, gallery, queries = setup
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "q.npy", queries)
    man = model.manifest
    save_embeddings(d / "g", model.encode(gallery), Manifest(
        model_id=man.model_id, model_version=man.model_version, nesting=man.nesting, dim=man.dim))
    FunnelIndex(dims=(4, 16), shortlist=(40,), nesting=NESTING, model_id=man.model_id,
                model_version=man.model_version).add(model.encode(gallery)).save(d / "plain-idx")
    return d


def test_cli_tune_then_search_by_recall_and_latency(cli, setup, built):
    tmp, model, gallery, queries = setup
    d = built
    r = cli("index", "build", "--embeddings", d / "g", "--out", d / "idx", "--stages", "4,16")
    assert r.code == 0, r
    r = cli("index", "tune", d / "idx", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), "--budgets", "0.6")
    assert r.code == 0, r
    assert "width table of" in r.out and "conserv." in r.out, r.out
    saved = json.loads((d / "idx" / "manifest.json").read_text())["extra"]["tuning"]["width_plans"]
    assert saved["k"] == K and saved["model_version"] == model.manifest.model_version
    rows = saved["rows"]
    reachable = sorted(r["recall_low"] for r in rows if r["recall_low"] > 0)  # a random model: many 0
    target = reachable[len(reachable) // 2]
    r = cli("index", "search", d / "idx", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), "--recall", str(target), "--out", d / "res.json")
    assert r.code == 0, r
    plan = choose_plan(rows, recall=target, k=K)
    assert r.out.startswith(f"plan: width {width_text(plan.width)}, stages "
                            f"{','.join(map(str, plan.dims))}, shortlist "), r.out
    res = json.loads((d / "res.json").read_text())
    index = load_index(d / "idx")
    Q = model.encode(queries, width=plan.width)
    _, ids, _ = search_with_plan(index, Q, K, plan)
    assert [res[str(i)]["ids"] for i in range(len(queries))] == ids.tolist()
    # a latency budget the fastest row meets, and a width restriction
    fastest = rows[0]
    r = cli("index", "search", d / "idx", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), "--latency-ms", str(fastest["latency_ms"] * 1.0001), "--show", "0")
    assert r.code == 0 and "plan: width" in r.out and "from the width table" in r.out, r
    r = cli("index", "search", d / "idx", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), "--latency-ms", "1000", "--width", "0.5", "--show", "0")
    assert r.code == 0 and r.out.startswith("plan: width 0.5, "), r
    # an explicit width and plan, no table needed; then the index's own plan
    r = cli("index", "search", d / "plain-idx", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), "--width", "0.25", "--stages", "8,16", "--shortlist", "20", "--show", "1")
    assert r.code == 0 and r.out.startswith("plan: width 0.25, stages 8,16, shortlist 20\n0: "), r
    r = cli("index", "search", d / "plain-idx", "--model", tmp / "model", "--data",
            tmp / "idx-data", "--limit", "3", "--width", "0.5", "--show", "0")
    assert r.code == 0 and "queries encoded at width 0.5" in r.out, r


@pytest.mark.parametrize("args, flag, match", [
    (["--width", "0.3"], "--width", "not a trained granularity"),
    (["--widths-per-layer", "0.3,1"], "--widths-per-layer", "not a trained granularity"),
    (["--widths-per-layer", "0.25,0.5,1"], "--widths-per-layer", "lists 3 per-layer widths"),
    (["--recall", "0.999", "--latency-ms", "0.000001"], "--latency-ms", "runs within --latency-ms"),
    (["--recall", "1.0", "--width", "0.25"], "--recall", "of width 0.25 reaches recall@5 1"),
    (["--recall", "0.9", "-k", "6"], "--k", "above the k=5 the width table was measured for"),
    (["--recall", "0.9", "--stages", "4,16"], "--stages", "not both"),
    (["--recall", "2"], "--recall", r"target must be in (0, 1]"),
])
def test_cli_search_errors_name_the_flag(cli, setup, built, args, flag, match):
    tmp, *_ = setup
    d = built
    if not (d / "tuned").exists():
        assert cli("index", "tune", d / "plain-idx", "--model", tmp / "model", "--images",
                   d / "q.npy", "-k", str(K), "--out", d / "tuned").code == 0
    r = cli("index", "search", d / "tuned", "--model", tmp / "model", "--images", d / "q.npy",
            "-k", str(K), *args)
    assert r.code == 2 and flag in r.err and match in r.err and "Traceback" not in r.err, r


@pytest.mark.parametrize("command, model, args, flag, match", [
    ("search", "plain", ["--width", "0.5"], "--model", "has no nested widths"),
    ("search", "other", [], "--model", "different weights of model 'elastic'"),
    ("search", "model", ["--recall", "0.9"], "--recall", "has no width table"),
    ("search", "model", ["--latency-ms", "5"], "--latency-ms", "has no width table"),
    ("search", "nowhere", [], "--model", "model directory not found"),
    ("tune", "plain", [], "--model", "has no nested widths"),
    ("tune", "other", [], "--model", "different weights"),
    ("tune", "model", ["--budgets", "0.001"], "--budgets", "below the smallest width's cost"),
    ("tune", "model", ["--recall", "0.9"], "--recall", "applies only with --queries"),
])
def test_cli_model_errors_name_the_flag(cli, setup, built, command, model, args, flag, match):
    tmp, *_ = setup
    d = built
    before = (d / "plain-idx" / "manifest.json").read_text()
    r = cli("index", command, d / "plain-idx", "--model", tmp / model, "--images", d / "q.npy",
            *args)
    assert r.code == 2 and flag in r.err and match in r.err and "Traceback" not in r.err, r
    assert (d / "plain-idx" / "manifest.json").read_text() == before  # nothing written


def test_cli_query_source_errors(cli, setup, built):
    tmp, *_ = setup
    d = built
    for args, match in [
        ([], "give exactly one of --queries"),
        (["--queries", d / "g", "--model", tmp / "model"], "give exactly one of --queries"),
        (["--queries", d / "g", "--width", "0.5"], "--width applies only with --model"),
        (["--model", tmp / "model"], "give exactly one of --images or --data"),
        (["--model", tmp / "model", "--images", d / "q.npy", "--adapter", d],
         "--adapter applies only with --queries"),
        (["--model", tmp / "model", "--images", d / "missing.npy"], "--images must be a uint8 .npy"),
        (["--model", tmp / "model", "--images", d / "q.npy", "--shortlist", "20"], "--shortlist needs --stages"),
    ]:
        r = cli("index", "search", d / "plain-idx", *args)
        assert r.code == 2 and match in r.err and "Traceback" not in r.err, (args, r)
