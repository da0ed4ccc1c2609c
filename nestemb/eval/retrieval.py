"""Retrieval quality per prefix: nDCG@10 and recall@100 (BEIR / pytrec_eval definitions).

nDCG@k uses linear gain (``rel / log2(rank + 1)``) like pytrec_eval; the ideal ranking is the
judged documents sorted by relevance. recall@k counts relevant (``rel > 0``) documents retrieved
in the top ``k`` over all relevant ones. Both are averaged over the queries of the qrels.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from nestemb.errors import NestembError
from nestemb.exact import exact_search
from nestemb.nesting import check_vectors


def ndcg_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranked list of doc ids against one query's judgments.

    Example:
        >>> round(ndcg_at_k(["d2", "d1"], {"d1": 1}, k=10), 4)   # 1/log2(3)
        0.6309
    """
    dcg = sum(qrel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in qrel.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrel: Mapping[str, int], k: int = 100) -> float:
    """Fraction of the relevant documents found in the top ``k``.

    Example:
        >>> recall_at_k(["d1", "d3"], {"d1": 1, "d2": 1}, k=100)
        0.5
    """
    rel = {d for d, r in qrel.items() if r > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def evaluate_retrieval(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    dims: Sequence[int],
) -> dict[str, list]:
    """nDCG@10 and recall@100 at every prefix in ``dims`` (each view through
    :func:`~nestemb.nesting.prefix_view`). Returns ``{"dims", "ndcg10", "recall100"}``.

    Example:
        >>> import numpy as np
        >>> q = np.array([[1.0, 0.0]]); d = np.array([[0.0, 1.0], [1.0, 0.1]])
        >>> evaluate_retrieval(q, d, ["q"], ["a", "b"], {"q": {"b": 1}}, [1, 2])["ndcg10"]
        [1.0, 1.0]
    """
    query_emb = check_vectors(query_emb, what="query embeddings")
    doc_emb = check_vectors(doc_emb, dim=query_emb.shape[1], what="document embeddings")
    if len(query_ids) != len(query_emb) or len(doc_ids) != len(doc_emb):
        raise NestembError("ids and embeddings differ in length")
    from nestemb.folders import check_unique_ids

    check_unique_ids(query_ids, "query_ids")  # rows are looked up by id
    check_unique_ids(doc_ids, "doc_ids")
    qpos = {q: i for i, q in enumerate(query_ids)}
    judged = [q for q in qrels if q in qpos]
    if not judged:
        raise NestembError("no judged query has an embedding")
    doc_ids = list(doc_ids)
    res: dict[str, list] = {"dims": [int(m) for m in dims], "ndcg10": [], "recall100": []}
    qi = np.array([qpos[q] for q in judged])
    for m in dims:
        top = exact_search(doc_emb, query_emb[qi], 100, dim=m)[1]
        nd, rc = [], []
        for row, q in zip(top, judged):
            ranked = [doc_ids[j] for j in row]
            nd.append(ndcg_at_k(ranked, qrels[q], 10))
            rc.append(recall_at_k(ranked, qrels[q], 100))
        res["ndcg10"].append(float(np.mean(nd)))
        res["recall100"].append(float(np.mean(rc)))
    return res
