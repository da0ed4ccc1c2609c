"""``nestemb index build`` (and every reader of embedding directories, through
``nestemb.folders.load_embeddings``) accepts the sharded directory of ``nestemb embed --ray``:
rows in corpus order, checksums verified; an unfinished job or a shard changed after the job is
refused with a message naming the shard.

The shard directory is written by the real :func:`nestemb.bulk.embed_corpus` and its Ray actor
class; only the Ray scheduling is replaced by an in-process loop (the Ray path has its own tests
in ``tests/test_ray_embed.py``) and the encoder's arithmetic by ``fake_encode``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nestemb import bulk, folders
from nestemb.errors import NestembError

N, SHARD = 130, 50  # 3 shards, the last one short


def fake_encode(images: np.ndarray) -> np.ndarray:
    """Well-spread 16-d rows with decaying energy, one per image (a random untrained CNN maps
    every image to nearly the same direction: its top-10 would be float-rounding ties)."""
    x = images.reshape(len(images), -1)[:, :16].astype(np.float32) - 127.5
    return x / np.arange(1, 17, dtype=np.float32)


def _in_process(corpus, model, out, pending, spec, workers, shard_size, batch_size, address,
                threads, device, on_shard) -> int:  # fmt: skip
    """``bulk._run_ray`` without Ray: one writer (the actor class itself) embeds every shard."""
    writer = bulk._ShardWriter(model, [corpus], str(out), shard_size, batch_size,
                               spec["model"]["model_version"], threads, device)  # fmt: skip
    writer.encoder.encode = lambda items, batch_size: fake_encode(items)
    for i in pending:
        writer({"shard": np.array([i])})
    return len(pending)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    import torch

    from nestemb.models.image import ImageModel, ImageModelConfig, save_image_model

    root = tmp_path_factory.mktemp("shards")
    torch.manual_seed(0)
    save_image_model(ImageModel(ImageModelConfig(dim=16, nesting=(4, 8, 16), width=4,
                                                 num_classes=10)), root / "model", "shard-cnn")  # fmt: skip
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (N, 28, 28), dtype=np.uint8)
    mp = pytest.MonkeyPatch()
    mp.setattr(bulk, "_run_ray", _in_process)
    try:
        bulk.embed_corpus(bulk.ArrayCorpus(images), root / "model", root / "emb", workers=1,
                          shard_size=SHARD, batch_size=32)  # fmt: skip
    finally:
        mp.undo()
    expected = fake_encode(images)  # the reference rows, independent of the shard files
    return root, expected


def test_load_embeddings_reads_shards_in_corpus_order(job):
    from nestemb.folders import load_embeddings

    root, expected = job
    X, man, ids = load_embeddings(root / "emb", mmap=True, with_ids=True)
    assert man.kind == "embedding-shards" and man.nesting == (4, 8, 16) and man.dim == 16
    assert len(json.loads((root / "emb" / "manifest.json").read_text())["extra"]["shards"]) == 3
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    assert ids == [str(i) for i in range(N)]


def test_index_build_from_shards_searches_like_exact_search(job, cli, tmp_path):
    from nestemb.exact import exact_search
    from nestemb.index import load_index

    root, expected = job
    r = cli("index", "build", "--embeddings", root / "emb", "--out", tmp_path / "idx", "--stages", "4,16",
            "--shortlist", str(N))  # fmt: skip
    assert r.code == 0, r
    assert f"over {N} vectors" in r.out and "recall@10 against exact search" in r.out
    index = load_index(tmp_path / "idx")
    assert index.manifest_.model_id == "shard-cnn" and len(index) == N
    Q = expected[::7]
    _, found = index.search(Q, k=10)
    _, rows = exact_search(expected, Q, 10)
    truth = np.array([[str(j) for j in r] for r in rows])
    hits = np.mean([len(set(map(str, f)) & set(t)) / 10 for f, t in zip(found.tolist(), truth)])
    # every row re-ranked at full dimension: the exact top-10 under the shards' ids (a row
    # order or id mix-up between shards would show here; the random CNN's short prefix has no
    # Matryoshka structure, so a real shortlist would test the funnel, not the loader)
    assert hits == 1.0, hits


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "emb"
    shutil.copytree(root / "emb", out)
    return out


def test_a_shard_changed_after_the_job_is_refused(job, cli, tmp_path):
    root, _ = job
    emb = _copy(root, tmp_path)
    npy = emb / "shards" / "shard-00001.npy"
    npy.write_bytes(npy.read_bytes()[:-40])  # truncated
    r = cli("index", "build", "--embeddings", emb, "--out", tmp_path / "idx")
    assert r.code == 2 and "checksum mismatch for" in r.err and "shard-00001.npy" in r.err, r
    assert "Traceback" not in r.err and not (tmp_path / "idx").exists()


def test_an_unfinished_job_names_its_partial_shard(job, cli, tmp_path):
    root, _ = job
    emb = _copy(root, tmp_path)
    (emb / "manifest.json").unlink()  # the job stopped before its manifest ...
    r = cli("index", "build", "--embeddings", emb, "--out", tmp_path / "idx")
    assert r.code == 2 and "all 3 shards are complete but the manifest was not written" in r.err, r
    npy = emb / "shards" / "shard-00002.npy"  # ... while shard 2 was being written
    npy.write_bytes(npy.read_bytes()[:100])
    r = cli("index", "build", "--embeddings", emb, "--out", tmp_path / "idx")
    assert r.code == 2, r
    assert ("unfinished sharded embedding job: 2 of 3 shards complete (shard-00002 missing or "
            "partially written); run the same `nestemb embed --ray` command again") in r.err, r
    with pytest.raises(NestembError, match="unfinished sharded embedding job"):
        folders.load_shards(emb)
    assert not (tmp_path / "idx").exists()
