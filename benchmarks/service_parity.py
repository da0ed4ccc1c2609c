"""Issue 12 check: text search over HTTP on a SciFact collection returns the same hits as the
in-process index search.

Starts ``nestemb serve`` on a loopback port over ``--data-dir`` (filled by ``nestemb upload``
if the ``scifact`` collection is missing), sends every SciFact test query as text (exact plan:
``dims=[384]``) and compares the top-10 ids and scores with
:meth:`nestemb.index.FunnelIndex.search_exact` over the same MiniLM embeddings computed in
process (``runs/cache/text``). Writes ``docs/results/service/parity.json``.

Run: ``flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service_parity.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nestemb.index import FunnelIndex  # noqa: E402
from nestemb.io import write_json  # noqa: E402
from nestemb.service.client import ServiceClient, ServiceError  # noqa: E402


def main() -> None:
    from text_data import embed, load_encoder, scifact

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--data-dir", type=Path, default=Path("runs/service/demo-data"))
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--out", type=Path, default=Path("docs/results/service/parity.json"))
    args = ap.parse_args()
    sf = scifact(args.data)
    enc = load_encoder("minilm")
    G, Q = embed(enc, sf.docs), embed(enc, sf.queries)
    index = FunnelIndex(dims=(G.shape[1],), shortlist=()).add(G, ids=sf.doc_ids)
    ref_scores, ref_ids = index.search_exact(Q, k=10)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "nestemb", "serve", "--data-dir",
                               str(args.data_dir), "--port", str(args.port), "--log-level",
                               "warning"], env=env, start_new_session=True)
    try:
        with ServiceClient(url) as c:
            for _ in range(240):
                try:
                    c.collections()
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.5)
            try:
                count = c.describe("scifact")["count"]
            except ServiceError:
                subprocess.run([sys.executable, "-m", "nestemb", "upload", "--url", url,
                                "--collection", "scifact", "--beir", str(args.data)],
                               env=env, check=True)
                count = c.describe("scifact")["count"]
            same_ids = same_set = 0
            max_score_diff = 0.0
            t = time.perf_counter()
            for qi, text in enumerate(sf.queries):
                r = c.search("scifact", text=text, k=10, dims=[G.shape[1]])
                ids = [h["id"] for h in r["hits"]]
                scores = np.array([h["score"] for h in r["hits"]])
                same_ids += ids == ref_ids[qi].tolist()
                same_set += set(ids) == set(ref_ids[qi].tolist())
                max_score_diff = max(max_score_diff, float(np.abs(scores - ref_scores[qi]).max()))
            secs = time.perf_counter() - t
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    res = {"queries": len(sf.queries), "collection_count": count,
           "identical_top10_order": same_ids, "identical_top10_set": same_set,
           "max_abs_score_diff": max_score_diff, "http_seconds": round(secs, 2)}
    write_json(args.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
