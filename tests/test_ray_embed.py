"""``nestemb embed --ray``: a Ray Data actor pool on a local 2-CPU Ray cluster, a tiny text model.

The rows written must equal the model's own ``encode`` of each shard, byte for byte; a job whose
worker is killed mid-way and whose driver is interrupted, and one of whose finished shards is then
truncated, resumes to exactly the files (same sha256) of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from nestemb import bulk, folders  # noqa: E402
from nestemb.errors import NestembError  # noqa: E402

N_DOCS, SHARD = 61, 8  # 8 shards, the last one short


@pytest.fixture(scope="module")
def cluster():
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")  # the local cluster on loopback only
    startup = time.perf_counter() - t0
    yield startup
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from nestemb.text._tiny import WORDS, make_tiny_model

    root = tmp_path_factory.mktemp("ray")
    rng = random.Random(0)
    docs = [(f"d{i}", " ".join(rng.choices(WORDS, k=rng.randint(3, 14)))) for i in range(N_DOCS)]
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    return root, make_tiny_model(root / "tiny"), path, docs


def _sha(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["sha256"]


def test_cli_job_writes_the_model_rows_and_a_killed_job_resumes_to_the_same_files(
        cluster, corpus, cli, tmp_path):
    import torch

    from nestemb.device import torch_threads
    from nestemb.text.encoder import load_text_model

    root, model, path, docs = corpus
    # an uninterrupted job, from the CLI
    r = cli("embed", "--ray", "--model", model, "--texts", path, "--out", tmp_path / "a",
            "--workers", 2, "--shard-size", SHARD, "--batch-size", 4)
    assert r.code == 0, r
    X, man, ids = folders.load_shards(tmp_path / "a")
    assert ids == [d for d, _ in docs] and X.shape == (N_DOCS, 32)
    assert len(man.extra["shards"]) == 8 and man.kind == "embedding-shards"
    enc = load_text_model(model)
    with torch_threads(1):  # what each worker runs: the shard's rows in one encode call
        ref = np.concatenate([enc.encode([t for _, t in docs[a:b]], batch_size=4)
                              for a, b in bulk.shard_ranges(N_DOCS, SHARD)])
    assert np.array_equal(X, ref)
    assert torch.get_num_threads() >= 1

    # the same job: a worker killed after the first shard, the driver stopped after the third
    data = bulk.ArrayCorpus([t for _, t in docs], [d for d, _ in docs], source=str(path))
    seen = []

    def chaos(row: dict) -> None:
        seen.append(row)
        if len(seen) == 1:
            os.kill(int(row["pid"]), signal.SIGKILL)
        if len(seen) == 3:
            raise KeyboardInterrupt

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        bulk.embed_corpus(data, model, out, workers=2, shard_size=SHARD, batch_size=4,
                          on_shard=chaos)
    assert not (out / "manifest.json").exists()
    done = [i for i in range(8) if folders.read_done(out / "shards", i) is not None]
    assert len(done) >= 3
    # a finished shard truncated afterwards counts as not done
    npy = out / "shards" / f"{folders.shard_name(done[0])}.npy"
    npy.write_bytes(npy.read_bytes()[:100])
    assert folders.read_done(out / "shards", done[0]) is None
    # another model (the tiny BERT with another seed) cannot resume this job
    from nestemb.text._tiny import make_tiny_model

    other_model = make_tiny_model(root / "tiny-other", seed=1)
    with pytest.raises(NestembError, match="unfinished job for other input: model.model_id 'tiny' "
                                           "there, 'tiny-other' now; model.model_version '"):
        bulk.embed_corpus(data, other_model, out, workers=2, shard_size=SHARD, batch_size=4)
    with pytest.raises(NestembError, match="unfinished job for other input: batch_size 4 there, 8 now"):
        bulk.embed_corpus(data, model, out, workers=2, shard_size=SHARD, batch_size=8)
    summary = bulk.embed_corpus(data, model, out, workers=2, shard_size=SHARD, batch_size=4)
    assert summary["skipped"] == len(done) - 1 and summary["embedded"] == 8 - summary["skipped"]
    assert _sha(out) == _sha(tmp_path / "a")  # exactly the rows of the uninterrupted run
    Y, _, ids_b = folders.load_shards(out)
    assert np.array_equal(Y, X) and ids_b == ids
    with pytest.raises(NestembError, match="already holds a finished job"):
        bulk.embed_corpus(data, model, out, workers=2, shard_size=SHARD, batch_size=4)
    # a corrupted shard of a finished job is refused on reading
    (out / "shards" / "shard-00003.ids.json").write_text("[]")
    with pytest.raises(NestembError, match="checksum mismatch for .*shard-00003.ids.json"):
        folders.load_shards(out)


def test_bad_input_is_refused_before_any_work(cluster, corpus, cli, tmp_path):
    root, model, path, docs = corpus
    r = cli("embed", "--model", model, "--texts", path, "--out", tmp_path / "e", "--workers", 3)
    assert r.code == 2 and "--workers applies only with --ray" in r.err
    data = bulk.ArrayCorpus([t for _, t in docs])
    with pytest.raises(NestembError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        bulk.embed_corpus(data, model, tmp_path / "x", address="127.0.0.1:1")
    assert not (tmp_path / "x").exists()
    with pytest.raises(NestembError, match="the Ray cluster has 2 CPUs; 3 workers x 1 threads need 3"):
        bulk.embed_corpus(data, model, tmp_path / "y", workers=3)
    images = bulk.ArrayCorpus(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(NestembError, match="is a text model: it embeds texts, the corpus holds images"):
        bulk.embed_corpus(images, model, tmp_path / "z")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(NestembError, match="not a nestemb embedding job"):
        bulk.embed_corpus(data, model, tmp_path / "mine")
    with pytest.raises(NestembError, match="refusing to replace"):
        bulk.embed_corpus(data, model, tmp_path / "mine", overwrite=True)


def test_parquet_corpus_reads_shards_by_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"text {i}" for i in range(25)]
    table = pa.table({"_id": [f"p{i}" for i in range(25)], "title": ["T"] * 25, "text": texts})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=4)
    c = bulk.ParquetCorpus(tmp_path / "c.parquet")
    got = [c.read(a, b) for a, b in bulk.shard_ranges(len(c), 7)]
    assert [t for items, _ in got for t in items] == [f"T {t}" for t in texts]
    assert [i for _, ids in got for i in ids] == [f"p{i}" for i in range(25)]
    assert len(bulk.ParquetCorpus(tmp_path / "c.parquet", limit=10)) == 10
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "n.parquet")
    with pytest.raises(NestembError, match="row 1 has no text"):
        bulk.ParquetCorpus(tmp_path / "n.parquet").read(0, 2)


def test_parquet_corpus_refuses_duplicate_ids_before_any_work(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"_id": ["a", "b", "c", "a"], "text": ["1", "2", "3", "4"]}),
                   tmp_path / "d.parquet")
    with pytest.raises(NestembError, match=r"d.parquet: ids must be unique: 'a' appears more than once"):
        bulk.ParquetCorpus(tmp_path / "d.parquet")
    assert len(bulk.ParquetCorpus(tmp_path / "d.parquet", limit=3)) == 3  # the first 3 are unique


def test_ray_job_records_the_split_of_its_rows(cluster, cli, tmp_path):
    from nestemb.data.idx import write_synthetic_idx
    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    save_image_model(ImageModel(ImageModelConfig(dim=8, nesting=(2, 8), width=4)), tmp_path / "m")
    write_synthetic_idx(tmp_path / "idx", n_train=12, n_test=6)
    r = cli("embed", "--ray", "--model", tmp_path / "m", "--data", tmp_path / "idx", "--split",
            "t10k", "--limit", "5", "--out", tmp_path / "e", "--workers", 1, "--shard-size", 4)
    assert r.code == 0, r
    X, man, ids = folders.load_shards(tmp_path / "e")
    assert len(X) == 5 and man.extra["split"] == "t10k" and man.extra["rows"] == 5
    assert man.extra["limit"] == 5 and man.extra["source"] == str(tmp_path / "idx")
    # the library records the same for a corpus it is given
    c = bulk.ArrayCorpus(np.zeros((3, 28, 28), np.uint8), source="x", split="train")
    assert bulk.origin(c) == {"source": "x", "rows": 3, "split": "train"}
