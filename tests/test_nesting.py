import json
import re

import numpy as np
import pytest

from nestemb.errors import NestembError
from nestemb.cli.parse import parse_dims
from nestemb.io import atomic_dir
from nestemb.nesting import Manifest, check_compatible, check_vectors, default_nesting, prefix_view, validate_nesting
from nestemb.folders import load_embeddings, save_embeddings


def test_prefix_view_slices_then_normalizes_numpy_and_torch():
    import torch

    x = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]])
    v = prefix_view(x, 2)
    np.testing.assert_allclose(v[0], [0.6, 0.8])
    np.testing.assert_allclose(v[1], [0.0, 0.0])  # zero prefix stays zero, no NaN
    # normalizing first and slicing after would give a different (wrong) answer
    assert not np.allclose(v[0], (x / np.linalg.norm(x, axis=1, keepdims=True))[0, :2])
    t = prefix_view(torch.tensor(x, requires_grad=True), 2)
    np.testing.assert_allclose(t.detach().numpy(), v, atol=1e-7)
    t.sum().backward()  # differentiable


@pytest.mark.parametrize(
    "dims, full, match",
    [
        ([8, 4], None, "strictly ascending"),
        ([4, 4, 8], None, "duplicate"),
        ([0, 8], None, "positive"),
        ([], None, "empty"),
        ([8, 512], 256, "larger than the embedding dimension 256"),
        ([8, 128], 256, "last nesting dimension must be the full dimension 256"),
    ],
)
def test_validate_nesting_errors(dims, full, match):
    with pytest.raises(NestembError, match=match):
        validate_nesting(dims, full_dim=full)


def test_parse_and_default():
    assert parse_dims("2,4, 8") == (2, 4, 8)
    with pytest.raises(NestembError, match="comma-separated integers"):
        parse_dims("2,x")
    assert default_nesting(256) == (2, 4, 8, 16, 32, 64, 128, 256)
    assert default_nesting(48, start=8) == (8, 16, 32, 48)


def test_check_vectors():
    assert check_vectors(np.ones(4)).shape == (1, 4)
    with pytest.raises(NestembError, match="dimension 4, expected 8"):
        check_vectors(np.ones((2, 4)), dim=8)
    with pytest.raises(NestembError, match="empty"):
        check_vectors(np.ones((0, 4)))
    with pytest.raises(NestembError, match="NaN or inf.*row 1"):
        check_vectors(np.array([[1.0, 2.0], [np.inf, 0.0]]))


def test_embeddings_roundtrip_and_checksum(tmp_path):
    X = np.random.default_rng(0).normal(size=(7, 16)).astype(np.float32)
    man = Manifest(model_id="m", nesting=(4, 16), dim=16)
    save_embeddings(tmp_path / "e", X, man, ids=list(range(7)))
    Y, m2, ids = load_embeddings(tmp_path / "e", with_ids=True)
    np.testing.assert_array_equal(X, Y)
    assert ids == list(range(7)) and m2.sha256
    with pytest.raises(NestembError, match="not empty"):
        save_embeddings(tmp_path / "e", X, man)
    # tamper with the data: the checksum catches it
    arr = np.load(tmp_path / "e" / "embeddings.npy")
    arr[0, 0] += 1
    np.save(tmp_path / "e" / "embeddings.npy", arr)
    with pytest.raises(NestembError, match="checksum mismatch"):
        load_embeddings(tmp_path / "e")


def test_manifest_errors(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(NestembError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"model_id": "x"}))
    with pytest.raises(NestembError, match="missing fields"):
        Manifest.load(tmp_path)
    a = Manifest(model_id="a", nesting=(4, 8), dim=8)
    with pytest.raises(NestembError, match="different nestings"):
        check_compatible(a, Manifest(model_id="a", nesting=(2, 8), dim=8))


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, kind="test") as tmp:
            (tmp / "partial.json").write_text("{}")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_version(cli):
    r = cli("version")
    assert r.code == 0 and r.out.strip()


def test_manifest_open_wrong_kind_message_is_grammatical(tmp_path):
    out = tmp_path / "emb"
    save_embeddings(out, np.ones((2, 4), dtype="float32"), Manifest(model_id="m", nesting=(2, 4), dim=4))
    with pytest.raises(NestembError, match=r"holds embeddings, not an index$"):
        Manifest.open(out, "index", "index directory")
    with pytest.raises(NestembError, match=r"holds embeddings, not a text-model$"):
        Manifest.open(out, "text-model", "model directory")


def test_save_embeddings_refuses_duplicate_ids_and_load_refuses_damaged_ids(tmp_path):
    """issue 20: duplicate ids got in through save_embeddings; index search then lost a row."""
    import json

    X = np.ones((3, 4), dtype=np.float32)
    man = Manifest(model_id="m", nesting=(2, 4), dim=4)
    with pytest.raises(NestembError, match=r"ids must be unique: 'a' appears at rows 0 and 2"):
        save_embeddings(tmp_path / "e", X, man, ids=["a", "b", "a"])
    assert not (tmp_path / "e").exists()
    save_embeddings(tmp_path / "e", X, man, ids=["a", "b", "c"])
    (tmp_path / "e" / "ids.json").write_text(json.dumps(["a", "a", "c"]))
    m = Manifest.load(tmp_path / "e")
    from nestemb.io import sha256_file

    m.sha256["ids.json"] = sha256_file(tmp_path / "e" / "ids.json")
    m.save(tmp_path / "e")
    with pytest.raises(NestembError, match=r"ids.json: ids must be unique"):
        load_embeddings(tmp_path / "e", with_ids=True)


@pytest.mark.parametrize("field,value,message", [
    ("dim", "32", "field 'dim' must be an integer, got '32'"),
    ("sha256", [1, 2], "field 'sha256' must map file names"),
    ("nesting", "4,8", "field 'nesting' must be a non-empty list of integers"),
    ("model_id", 7, "field 'model_id' must be a non-empty string"),
    ("extra", [], "field 'extra' must be a JSON object"),
    ("dim", 0, "field 'dim' must be positive"),
])
def test_manifest_fields_of_the_wrong_type_name_file_and_field(field, value, message):
    doc = Manifest(model_id="m", nesting=(2, 4), dim=4).to_dict()
    doc[field] = value
    with pytest.raises(NestembError, match="^m.json: " + re.escape(message)):
        Manifest.from_dict(doc, "m.json")
    with pytest.raises(NestembError, match="a manifest is a JSON object, got int"):
        Manifest.from_dict(5, "m.json")
