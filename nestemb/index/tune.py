"""Auto-tuning: the cheapest configuration of an index that meets a recall target.

:func:`tune` measures the configurations an index proposes through its public
:meth:`~nestemb.index.PrefixIndex.candidate_grid` (stage dims, shortlist sizes, prefix dtype,
``ef_search`` for an HNSW first stage, ``nprobe`` and re-rank depth for IVF) on sample queries:
agreement with the exact full-dimension top-k (:func:`~nestemb.exact.knn_intersection` against
:meth:`~nestemb.index.PrefixIndex.search_exact`) and mean single-query latency of the public
:meth:`~nestemb.index.PrefixIndex.search`. Candidates come in *groups* ordered by one cost knob
(a shortlist, nprobe, ef); recall grows along a group, so the walk of a group stops at the first
candidate that meets the target (``exhaustive=True`` measures every candidate instead, which is
what the benchmark compares against). The fastest few candidates that meet the target are timed
again (each keeps its best pass, so one noisy pass cannot crown a slower configuration); the
fastest is applied and recorded with :meth:`~nestemb.index.PrefixIndex.set_tuning` (saved in the
manifest by ``index.save``).

:func:`tune_widths` measures the other table a request's plan is chosen from: for the queries of
an elastic image model, recall@k and latency (encoding at each width plus the search) of every
(width, stage dims, shortlist) of :func:`~nestemb.index.plan.plan_grid`, against what the full
model would have found; :func:`~nestemb.index.plan.choose_plan` picks from it. The table is kept
in the same tuning record (``tuning_["width_plans"]``, read back by :func:`width_table`), and
survives a later :func:`tune` that leaves the index's search structures as they were.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import numpy as np

from nestemb.checks import positive_float, positive_int
from nestemb.errors import NestembError
from nestemb.exact import knn_intersection
from nestemb.index.base import PrefixIndex
from nestemb.index.plan import check_recall, plan_grid, width_key, width_text
from nestemb.nesting import Manifest, check_compatible, check_vectors


RECALL_Z = 2.0
"""``recall_low`` of a measured configuration is its mean recall minus ``RECALL_Z`` standard
errors over the queries: the estimate from a few hundred queries is noisy, and a configuration
picked on its mean alone falls short on new queries about half the time it is close. :func:`tune`
measures a configuration whose mean lies within ``RECALL_Z`` standard errors of the target on
more queries before it decides."""


def best_pass_ms(run_one: Callable[[int], Any], n: int, passes: int = 1,
                 budget_s: float = math.inf) -> float:
    """Mean milliseconds per call of ``run_one(i)`` for ``i`` in ``0..n-1`` (one query at a
    time), the best of up to ``passes`` passes (which damps bursts from other processes); stops
    after a pass that takes over ``budget_s`` seconds.

    Example:
        >>> calls = []
        >>> ms = best_pass_ms(calls.append, n=10, passes=2)
        >>> len(calls), ms > 0
        (20, True)
    """
    best = math.inf
    for _ in range(max(1, passes)):
        t0 = time.perf_counter()
        for i in range(n):
            run_one(i)
        took = time.perf_counter() - t0
        best = min(best, took / n * 1e3)
        if took > budget_s:
            break
    return best


def measure(
    index: PrefixIndex, Q: np.ndarray, truth: np.ndarray, k: int, repeat: int = 1
) -> dict[str, float]:
    """Agreement of ``index.search`` with ``truth`` (exact top-``k`` ids per query, e.g. from
    ``index.search_exact``) as ``recall``, and mean single-query latency in ms on ``Q`` (the
    best of ``repeat`` passes, see :func:`best_pass_ms`).

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> X = synthetic_matryoshka(300, 16)
        >>> idx = FunnelIndex(dims=(4, 16), shortlist=(3,)).add(X)
        >>> truth = idx.search_exact(X[:20], k=3)[1]
        >>> measure(idx, X[:20], truth, 3)["recall"] < 1.0   # 3 candidates from 4 dims miss some
        True
        >>> measure(idx.set_params(shortlist=(300,)), X[:20], truth, 3)["recall"]
        1.0
    """
    found: list[Any] = [None] * len(Q)  # one (1, k) id array per query

    def search_one(i: int) -> None:
        found[i] = index.search(Q[i], k)[1]

    latency = best_pass_ms(search_one, len(Q), repeat)
    recall, recall_low, recall_high = recall_stats(np.concatenate(found), truth)
    return {"recall": recall, "latency_ms": latency, "recall_low": recall_low,
            "recall_high": recall_high, "n_queries": len(Q)}


def recall_stats(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """``(recall, recall_low, recall_high)`` of the ids ``found`` against ``truth`` (both
    ``(queries, k)``): recall@k (:func:`~nestemb.exact.knn_intersection`) and the mean over
    queries less and plus :data:`RECALL_Z` standard errors (within [0, 1]; a single query
    counts one whole standard error).

    Example:
        >>> recall_stats(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 5]]))
        (0.75, 0.25, 1.0)
    """
    per_query = np.array([len(set(f.tolist()) & set(t.tolist())) / max(1, len(t))
                          for f, t in zip(found, truth)])
    se = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 1.0
    mean = per_query.mean()
    return (knn_intersection(found, truth), float(max(0.0, mean - RECALL_Z * se)),
            float(min(1.0, mean + RECALL_Z * se)))


def _confirm_fastest(index, Q, truth, k, feasible: list[dict], repeat: int, finalists: int = 4,
                     deadline: float = math.inf):
    """Re-time the fastest feasible candidates (each keeps its best pass): a single timing pass
    on a busy machine can make a slower configuration look fastest. Stops at ``deadline``
    (a ``time.perf_counter`` value)."""
    for cand in sorted(feasible, key=lambda r: r["latency_ms"])[:finalists]:
        if time.perf_counter() >= deadline:
            break
        index.set_params(**cand["params"])
        cand["latency_ms"] = min(cand["latency_ms"], measure(index, Q, truth, k, repeat)["latency_ms"])


def _check_budget(max_seconds: Any) -> float:
    seconds = positive_float(max_seconds, "max_seconds", allow_none=True)
    return math.inf if seconds is None else seconds


def tune(
    index: PrefixIndex,
    queries: Any,
    k: int = 10,
    recall: float = 0.99,
    *,
    groups: Iterable[list[dict]] | None = None,
    exhaustive: bool = False,
    max_queries: int = 1000,
    screen_queries: int = 200,
    max_candidates: int = 8192,
    repeat: int = 1,
    manifest: Manifest | None = None,
    max_seconds: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Pick and apply the lowest-latency configuration whose recall@k meets ``recall``.

    Recall is agreement with the exact full-dimension top-``k`` of ``queries`` (raw query
    vectors, e.g. a held-out sample of the gallery's distribution); latency is the mean time of
    one query at a time (best of ``repeat`` passes) over the first ``screen_queries``
    queries. Recall is measured on those first too; a configuration whose recall there lies
    within :data:`RECALL_Z` standard errors of the target (:func:`recall_stats`), where the
    sample cannot tell whether it meets the target, is measured again on all the queries (up to
    ``max_queries``), so the queries that decide are many where they matter and few elsewhere.
    Candidates are ``groups`` (default:
    ``index.candidate_grid(k, max_candidates=max_candidates)``). If no candidate meets the
    target, the one with the highest recall is applied and ``met`` is False. Pass the queries'
    ``manifest`` to have them checked against the index's (model id, version, nesting).

    ``max_seconds`` (default: no limit) is a time budget: once it is spent no new configuration
    is measured (the first always is) and the best one measured so far is kept; ``complete`` is
    then False. ``progress(done, total, eta_s)`` is called after each measured configuration:
    ``total`` is how many the walk can still reach (the grid's size at first; it shrinks as
    groups stop early at the target), ``eta_s`` an estimate of the seconds left (mean time per
    configuration so far times those left, at most what is left of the budget).

    The result is applied and recorded through ``index.set_tuning`` and returned: a dict with
    ``params``, ``recall``, ``latency_ms``, ``target``, ``met``, ``k``, ``n_queries`` (the
    queries used, at most ``max_queries``), ``screen_queries``, ``n_settled`` (configurations
    measured again on all of them), ``candidates`` (every measured configuration, with the
    ``n_queries`` its recall was measured on), ``grid_size``
    (configurations in the grid),
    ``complete`` (whether the walk ended before the budget), ``seconds`` and ``max_seconds``;
    and ``width_plans``, the width table of :func:`tune_widths` recorded before, when the chosen
    configuration keeps the index's search structures (:func:`search_structure`) it was
    measured on (otherwise it no longer describes the index and is dropped).

    Example:
        >>> from nestemb.index import FunnelIndex, knn_intersection, synthetic_matryoshka, tune
        >>> X = synthetic_matryoshka(2000, 32, seed=0); Q = synthetic_matryoshka(20, 32, seed=9)
        >>> idx = FunnelIndex(dims=(8, 32), shortlist=(100,)).add(X)
        >>> res = tune(idx, Q, k=5, recall=0.95)
        >>> res["met"], res["complete"], idx.tuning_ == res
        (True, True, True)
        >>> idx.get_params()["shortlist"] == res["params"]["shortlist"]
        True
        >>> knn_intersection(idx.search(Q, k=5)[1], idx.search_exact(Q, k=5)[1]) >= 0.95
        True
        >>> res = tune(idx, Q, k=5, recall=1.0, exhaustive=True, max_seconds=1e-9)
        >>> len(res["candidates"]), res["grid_size"] > 1, res["complete"]
        (1, True, False)
    """
    t0 = time.perf_counter()
    budget = _check_budget(max_seconds)
    deadline = t0 + budget
    if len(index) == 0:
        raise NestembError(f"{type(index).__name__} is empty: add vectors before tuning")
    check_recall(recall)
    if manifest is not None:
        check_compatible(manifest, index.manifest, what="queries and index")
    positive_int(max_queries, "max_queries")
    positive_int(screen_queries, "screen_queries")
    Q = check_vectors(queries, dim=index.dim, what="tuning queries")[:max_queries]
    Q_screen = Q[:screen_queries]
    truth = index.search_exact(Q_screen, k)[1]  # also validates k
    truth_all: np.ndarray | None = None  # of every query, computed when first needed

    def settle(m: dict[str, Any]) -> None:
        """Measure the recall of the configuration set on ``index`` on all of ``Q`` when the
        screening queries leave it in doubt."""
        nonlocal truth_all
        if len(Q) == len(Q_screen) or not m["recall_low"] < recall <= m["recall_high"]:
            return
        if truth_all is None:
            truth_all = np.concatenate([truth, index.search_exact(Q[len(Q_screen):], k)[1]])
        stats = recall_stats(index.search(Q, k)[1], truth_all)
        m.update(zip(("recall", "recall_low", "recall_high"), stats), n_queries=len(Q))
    if groups is None:
        groups = index.candidate_grid(k, max_candidates=max_candidates)
    groups = [list(g) for g in groups]
    grid_size = sum(map(len, groups))
    reachable = grid_size  # configurations the walk may still measure, those done included
    before = index.get_params()
    width_plans = (getattr(index, "tuning_", None) or {}).get(WIDTH_PLANS)
    results: list[dict[str, Any]] = []
    complete = True
    try:
        for group in groups:
            for i, params in enumerate(group):
                if results and time.perf_counter() >= deadline:
                    complete = False
                    break
                index.set_params(**params)
                m = measure(index, Q_screen, truth, k, repeat)
                settle(m)
                plain = {n: list(v) if isinstance(v, tuple) else v for n, v in params.items()}
                results.append({"params": plain, **m})
                met = not exhaustive and m["recall"] >= recall
                if met:
                    reachable -= len(group) - i - 1  # the rest of this group is skipped
                if progress is not None:
                    now = time.perf_counter()
                    left = reachable - len(results)
                    eta = min((now - t0) / len(results) * left, max(0.0, deadline - now))
                    progress(len(results), reachable, eta)
                if met:
                    break
            if not complete:
                break
        if not results:
            raise NestembError("tune: no candidate configurations")
        feasible = [r for r in results if r["recall"] >= recall]
        _confirm_fastest(index, Q_screen, truth, k, feasible, max(2, repeat), deadline=deadline)
    except BaseException:
        index.set_params(**before)  # leave the index as it was given
        raise
    best = (min(feasible, key=lambda r: r["latency_ms"]) if feasible
            else max(results, key=lambda r: (r["recall"], -r["latency_ms"])))
    result = {
        "params": best["params"],
        "recall": best["recall"],
        "latency_ms": best["latency_ms"],
        "target": float(recall),
        "met": bool(feasible),
        "k": int(k),
        "n_queries": int(len(Q)),
        "screen_queries": int(len(Q_screen)),
        "n_settled": sum(r["n_queries"] > len(Q_screen) for r in results),
        "candidates": results,
        "grid_size": int(grid_size),
        "complete": complete,
        "seconds": time.perf_counter() - t0,
        "max_seconds": None if math.isinf(budget) else budget,
    }
    if width_plans is not None:  # still true of the index when its search structures are
        index.set_params(**best["params"])
        if width_plans.get("structure") == search_structure(index):
            result[WIDTH_PLANS] = width_plans
    index.set_tuning(result)
    return result


WIDTH_PLANS = "width_plans"
"""The key of the width table (:func:`tune_widths`) in an index's tuning record."""


def search_structure(index: Any) -> list:
    """What a plan's results and latency depend on besides its stage dims and shortlist: the
    index's search structures (first-stage prefix and storage, graph, int8 rescoring, storage of
    the full vectors) and ``ef_search``, as a JSON list (a width table records it, and holds
    only while the index keeps it).

    Example:
        >>> from nestemb.index import FunnelIndex
        >>> search_structure(FunnelIndex(dims=(8, 32), shortlist=(40,)))
        [8, 'float32', 'flat', 32, 40, 0.0, None, None, 'float32', 64]
    """
    import json

    return json.loads(json.dumps([*index._structure(), getattr(index, "ef_search", None)]))


def _check_width_model(index: Any, model: Any, check_model: bool = True) -> None:
    """Refuse a model that cannot give a width table for ``index``, naming ``model``: it must
    be an elastic image model or text encoder (``widths`` trained, a manifest), of the index's
    vectors (unless ``check_model`` is False: the caller checked that itself)."""
    from nestemb.models.image import ImageModel
    from nestemb.text.encoder import TextEncoder

    if not isinstance(model, (ImageModel, TextEncoder)):
        raise NestembError(f"{{param}} must be an image model or a text encoder, got "
                           f"{type(model).__name__}", param="model")
    if model.widths is None:
        raise NestembError("{param} has no nested widths (an elastic model is trained with "
                           "widths=..., `nestemb image train --widths`, `nestemb text train "
                           "--widths`): there is no encoder width to choose", param="model")
    if model.manifest is None:
        raise NestembError("{param} has no manifest (model id and weights version): load it "
                           "with load_image_model", param="model")
    if not check_model:
        return
    try:
        check_compatible(model.manifest, index.manifest, what="model and index")
    except NestembError as e:
        raise NestembError(f"{{param}}: {e}: the index holds the vectors of another model",
                           param="model") from None


def _width_cost(model: Any, width: float | tuple[float, ...]) -> float:
    """Multiply-adds of ``model`` at ``width`` as a fraction of the full model's: an image
    model's every layer (:func:`nestemb.models.elastic.multiply_adds`), a text encoder's
    linear layers per token (:func:`nestemb.text.ffn.multiply_adds`)."""
    from nestemb.models.image import ImageModel

    if isinstance(model, ImageModel):
        from nestemb.models.elastic import layer_units, multiply_adds

        cfg = model.config
        return multiply_adds(cfg, layer_units(cfg, model.layer_widths(width))) / multiply_adds(cfg)
    from nestemb.text import ffn

    assert isinstance(width, float)  # a text encoder has no per-layer widths
    return ffn.multiply_adds(model.model, width) / ffn.multiply_adds(model.model)


def tune_widths(
    index: Any,
    model: Any,
    queries: Any,
    k: int = 10,
    *,
    budgets: Iterable[float] = (),
    max_queries: int = 200,
    timing_queries: int = 50,
    repeat: int = 3,
    max_candidates: int = 8192,
    max_seconds: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    check_model: bool = True,
) -> dict[str, Any]:
    """Measure the width table of a :class:`~nestemb.index.FunnelIndex` built from an elastic
    ``model``'s embeddings (an image model or a text encoder trained with nested widths), record
    it in the index's tuning record (``tuning_``, under ``"width_plans"``; saved by
    ``index.save``) and return it.

    The truth is what the full model would have found: the exact full-dimension top-``k`` of
    the full model's embeddings of the ``queries`` (uint8 images ``(N, H, W)`` or texts, held
    out from the gallery; the first ``max_queries``). For every trained width of ``model`` (and,
    for an image model, the per-layer widths :func:`~nestemb.models.elastic.mix_n_match` picks
    for each of ``budgets``, fractions of the full model's multiply-adds) the queries are
    encoded at that width and
    every plan of :func:`~nestemb.index.plan.plan_grid` is run
    (:meth:`~nestemb.index.FunnelIndex.search_plan`, the index unchanged): a row holds its
    ``recall`` (recall@k against the truth) and ``recall_low`` (less :data:`RECALL_Z` standard
    errors over the queries, the figure :func:`~nestemb.index.plan.choose_plan` holds to a
    target). Along a group's growing shortlists the walk of a width stops at the first that
    finds, for every query, what the exact plan finds at that width (larger ones find the
    same, slower).

    Latency is ``encode_ms`` (one query at a time at that width, the best of ``repeat``
    passes over ``timing_queries`` queries, :func:`best_pass_ms`) plus ``search_ms`` (one query
    at a time under the plan, timed the same way, once per plan: the search does not depend on
    the encoder width): ``latency_ms``. Once ``max_seconds`` is spent no further plan is timed
    and the rows of untimed plans are left out (``complete`` is then False).

    Returns a dict: ``k``, ``model_id`` / ``model_version`` (the full model's), ``n_queries``,
    ``timing_queries``, ``widths`` (measured, a per-layer list for a Mix'n'Match budget),
    ``budgets``, ``structure`` (:func:`search_structure`), ``rows`` (by latency; each with
    ``width``, ``cost`` (fraction of the full model's multiply-adds), ``dims``, ``shortlist``,
    ``recall``, ``recall_low``, ``encode_ms``, ``search_ms``, ``latency_ms``), ``complete``,
    ``seconds``. Bad input names its parameter: ``index`` (not a funnel, empty), ``model``
    (not elastic, no manifest, or not the index's model: ``check_model=False`` skips that last
    check for a caller that made it itself, e.g. the service, whose indexes hold no model id),
    ``queries``, ``k``, ``budgets``.

    Example:
        >>> import numpy as np, torch
        >>> from nestemb.index import FunnelIndex
        >>> from nestemb.index.plan import choose_plan
        >>> from nestemb.models.image import ImageModel, ImageModelConfig, build_manifest
        >>> _ = torch.manual_seed(0)
        >>> model = ImageModel(ImageModelConfig(dim=8, nesting=(4, 8), width=1, arch="mlp",
        ...                                     widths=(0.5, 1))).eval()
        >>> model.manifest = build_manifest(model, "demo")
        >>> rng = np.random.default_rng(0)
        >>> gallery = rng.integers(0, 255, (200, 28, 28), dtype=np.uint8)
        >>> index = FunnelIndex(dims=(4, 8), shortlist=(50,), nesting=(4, 8), model_id="demo",
        ...                     model_version=model.manifest.model_version)
        >>> _ = index.add(model.encode(gallery))
        >>> queries = rng.integers(0, 255, (20, 28, 28), dtype=np.uint8)
        >>> table = tune_widths(index, model, queries, k=5, timing_queries=5, repeat=1)
        >>> exact = [r for r in table["rows"] if r["width"] == 1.0 and r["dims"] == [8]]
        >>> exact[0]["recall"], table["widths"], index.tuning_["width_plans"] is table
        (1.0, [0.5, 1.0], True)
        >>> choose_plan(table["rows"], recall=1.0).width
        1.0
    """
    t0 = time.perf_counter()
    deadline = t0 + _check_budget(max_seconds)
    from nestemb.models.image import ImageModel

    if not hasattr(index, "search_plan"):
        raise NestembError(f"{{param}}: a width table is measured on a FunnelIndex (stage dims "
                           f"and shortlists), not on {type(index).__name__}", param="index")
    if len(index) == 0:
        raise NestembError(f"{{param}}: {type(index).__name__} is empty: add vectors before "
                           "tuning", param="index")
    _check_width_model(index, model, check_model)
    for name, value in (("max_queries", max_queries), ("timing_queries", timing_queries),
                        ("repeat", repeat), ("max_candidates", max_candidates)):
        positive_int(value, name)
    items = queries if isinstance(queries, list) else np.asarray(queries)
    if getattr(items, "ndim", 1) == 0 or len(items) == 0:
        raise NestembError("{param}: no queries", param="queries")
    items = items[:max_queries]
    widths: list[float | tuple[float, ...]] = [float(g) for g in model.widths]
    budgets = list(budgets)
    if budgets and not isinstance(model, ImageModel):
        raise NestembError("{param}: Mix'n'Match budgets (a width per layer) are for image "
                           "models; a text encoder is measured at its trained widths",
                           param="budgets")
    from nestemb.models.elastic import mix_n_match

    for budget in budgets:
        w = width_key(mix_n_match(model.config, budget))
        if w not in widths:
            widths.append(w)
    Q = model.encode(items)  # the full model: the truth is what it would have found
    truth = index.search_exact(Q, k)[1]  # also validates k
    k = int(k)
    grid = plan_grid(index, k, max_candidates=max_candidates)
    rows: list[dict[str, Any]] = []
    for w in widths:
        Qw = Q if w == 1.0 else model.encode(items, width=w)
        cost = _width_cost(model, w)
        exact: list[set] | None = None
        for group in grid:
            for plan in group:
                rows_found = index.search_plan(Qw, k, plan["dims"], plan["shortlist"])[1]
                found = index._rows_to_ids(rows_found)
                recall, recall_low, _ = recall_stats(found, truth)
                rows.append({"width": list(w) if isinstance(w, tuple) else w,
                             "cost": round(cost, 6), "dims": list(plan["dims"]),
                             "shortlist": list(plan["shortlist"]), "recall": recall,
                             "recall_low": recall_low})
                sets = [set(f.tolist()) for f in found]
                if exact is None:
                    exact = sets  # the first group is the exact plan
                elif sets == exact:
                    break
    plans = list(dict.fromkeys((tuple(r["dims"]), tuple(r["shortlist"])) for r in rows))
    total, done = len(widths) + len(plans), 0
    n_t = min(timing_queries, len(items))

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            now = time.perf_counter()
            progress(done, total, min((now - t0) / done * (total - done), max(0.0, deadline - now)))

    def encode_one(w: Any) -> Callable[[int], Any]:
        return lambda i: model.encode(items[i : i + 1], width=w)

    def search_one(dims: tuple, shortlist: tuple) -> Callable[[int], Any]:
        return lambda i: index.search_plan(Q[i : i + 1], k, dims, shortlist)

    encode_ms: dict[str, float] = {}
    for w in widths:
        encode_ms[width_text(w)] = best_pass_ms(encode_one(w), n_t, repeat)
        step()
    search_ms: dict[tuple, float] = {}
    complete = True
    for dims, shortlist in plans:
        if search_ms and time.perf_counter() >= deadline:
            complete = False
            break
        search_ms[(dims, shortlist)] = best_pass_ms(search_one(dims, shortlist), n_t, repeat)
        step()
    timed = []
    for r in rows:
        ms = search_ms.get((tuple(r["dims"]), tuple(r["shortlist"])))
        if ms is not None:
            enc = encode_ms[width_text(r["width"])]
            timed.append({**r, "encode_ms": enc, "search_ms": ms, "latency_ms": enc + ms})
    timed.sort(key=lambda r: (r["latency_ms"], -r["recall_low"]))
    man = model.manifest
    table = {
        "k": k, "model_id": man.model_id, "model_version": man.model_version,
        "n_queries": int(len(items)), "timing_queries": int(n_t),
        "widths": [list(w) if isinstance(w, tuple) else w for w in widths],
        "budgets": [float(b) for b in budgets], "structure": search_structure(index),
        "rows": timed, "complete": complete, "seconds": time.perf_counter() - t0,
    }
    record = dict(index.tuning_) if index.tuning_ else {"params": index.get_params()}
    record[WIDTH_PLANS] = table
    index.set_tuning(record)
    return table


def width_table(index: Any, model: Any = None) -> dict[str, Any] | None:
    """The width table recorded on ``index`` by :func:`tune_widths` (checked field by field, as
    a saved manifest may have been edited), or ``None`` when it has none. With ``model``, a
    table measured with another model (or weights) is refused naming ``model``; a table whose
    index has changed its search structures since is refused too.

    Example:
        >>> from nestemb.index import FunnelIndex, synthetic_matryoshka
        >>> idx = FunnelIndex(dims=(8, 32), shortlist=(40,)).add(synthetic_matryoshka(100, 32))
        >>> width_table(idx) is None
        True
        >>> bad = {"model_id": "m", "model_version": "v1", "k": 0}
        >>> _ = idx.set_tuning({"params": {}, "width_plans": bad})
        >>> width_table(idx)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: index tuning record: width_plans.k must be a positive integer, got 0
    """
    table = (index.tuning_ or {}).get(WIDTH_PLANS)
    if table is None:
        return None
    check_width_table(table)
    if table["structure"] != search_structure(index):
        raise NestembError("the index's width table was measured on other search structures "
                           "(first stage, storage): measure it again (tune_widths, `nestemb index "
                           "tune --model`)")
    if model is not None and model.manifest is not None and (
            model.manifest.model_id, model.manifest.model_version) != (
            table["model_id"], table["model_version"]):
        raise NestembError(
            f"{{param}}: the index's width table was measured with model {table['model_id']!r} "
            f"(version {table['model_version']!r}), not {model.manifest.model_id!r} (version "
            f"{model.manifest.model_version!r}): measure it with this model", param="model")
    return table


def check_width_table(table: Any) -> None:
    """Refuse a width table (:func:`tune_widths`) with a missing or mistyped field, naming it
    (a saved one may have been edited).

    Example:
        >>> check_width_table({"model_id": "m", "model_version": "v", "k": 10, "structure": [],
        ...                    "rows": [{"width": 0.5, "dims": [8], "shortlist": [1]}]})
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: index tuning record: width_plans.rows.0.shortlist must be one size per stage but the last, got [1]
    """
    where = "index tuning record: width_plans"

    def bad(field: str, want: str, got: Any) -> NestembError:
        return NestembError(f"{where}{field} must be {want}, got {got!r}"[:300])

    def number(v: Any, lo: float, hi: float = math.inf) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and lo <= v <= hi)

    if not isinstance(table, dict):
        raise bad("", "a JSON object", table)
    for name in ("model_id", "model_version"):
        if not isinstance(table.get(name), str):
            raise bad(f".{name}", "a string", table.get(name))
    k = table.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise bad(".k", "a positive integer", k)
    if not isinstance(table.get("structure"), list):
        raise bad(".structure", "a list", table.get("structure"))
    if not isinstance(table.get("rows"), list):
        raise bad(".rows", "a list", table.get("rows"))
    for i, r in enumerate(table["rows"]):
        at = f".rows.{i}"
        if not isinstance(r, dict):
            raise bad(at, "a JSON object", r)
        try:
            width_key(r.get("width"))
        except NestembError:
            raise bad(f"{at}.width", "a fraction or one per layer", r.get("width")) from None
        for name in ("dims", "shortlist"):
            v = r.get(name)
            if not isinstance(v, list) or not all(type(d) is int and d > 0 for d in v):
                raise bad(f"{at}.{name}", "a list of positive integers", v)
        if not r["dims"] or len(r["shortlist"]) != len(r["dims"]) - 1:
            raise bad(f"{at}.shortlist", "one size per stage but the last", r["shortlist"])
        for name, hi in (("recall", 1.0), ("recall_low", 1.0), ("latency_ms", math.inf)):
            if not number(r.get(name), 0.0, hi):
                raise bad(f"{at}.{name}", "a number in [0, 1]" if hi == 1.0 else
                          "a non-negative number", r.get(name))
