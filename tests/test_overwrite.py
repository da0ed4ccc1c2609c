"""--overwrite replaces only what nestemb wrote, of the same kind (issue 20).

Before the fix, any folder holding a file named ``manifest.json`` counted as nestemb's output:
``--overwrite`` deleted a web app's folder, a user's notes inside an index, and a trained model
replaced by embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest

from nestemb.index.synthetic import synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from nestemb.models.image import ImageModel, make_model_config, save_image_model

    root = tmp_path_factory.mktemp("inputs")
    man = Manifest(model_id="m", model_version="v", nesting=(4, 8, 16), dim=16)
    save_embeddings(root / "a", synthetic_matryoshka(80, 16, seed=0), man)
    save_embeddings(root / "b", synthetic_matryoshka(80, 16, seed=1),
                    Manifest(model_id="n", model_version="w", nesting=(8, 16), dim=16))
    images = np.random.default_rng(0).integers(0, 255, size=(6, 28, 28), dtype=np.uint8)
    np.save(root / "images.npy", images)
    save_image_model(ImageModel(make_model_config("mrl", dim=8, width=4, images=images)),
                     root / "model", "tiny-cnn")
    return root


def _commands(root, out):
    return {
        "compare": ["compare", "--embeddings-a", root / "a", "--embeddings-b", root / "b", "--out", out, "--measures", "cka"],
        "embed": ["embed", "--model", root / "model", "--images", root / "images.npy",
                  "--out", out],
        "adapter fit": ["adapter", "fit", "--source", root / "a", "--target", root / "b",
                        "--out", out],
        "retrofit fit": ["retrofit", "fit", "--embeddings", root / "a", "--out", out,
                        "--steps", "5"],
        "index build": ["index", "build", "--embeddings", root / "a", "--out", out, "--stages", "4,16",
                        "--shortlist", "20"],
        "image train": ["image", "train", "--data", root, "--out", out, "--steps", "1"],
    }


@pytest.mark.parametrize("command", ["compare", "embed", "adapter fit", "retrofit fit",
                                     "index build", "image train"])
def test_overwrite_keeps_a_web_app_folder_with_a_manifest_json(cli, inputs, tmp_path, command):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "My PWA"}')
    (web / "index.html").write_text("<html>")
    r = cli(*_commands(inputs, web)[command], "--overwrite")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert "nestemb did not write it" in r.err, r
    assert (web / "manifest.json").read_text() == '{"name": "My PWA"}'
    assert (web / "index.html").read_text() == "<html>"


def test_a_users_file_inside_a_nestemb_output_is_named_and_kept(cli, inputs, tmp_path):
    idx = tmp_path / "idx"
    build = _commands(inputs, idx)["index build"]
    assert cli(*build).code == 0
    (idx / "notes.txt").write_text("my notes")
    r = cli(*build, "--overwrite")
    assert r.code == 2 and "notes.txt" in r.err, r
    assert (idx / "notes.txt").read_text() == "my notes"
    (idx / "notes.txt").unlink()
    assert cli(*build, "--overwrite").code == 0  # nestemb's own index is still replaced


@pytest.mark.parametrize("command", ["embed", "adapter fit", "retrofit fit", "compare"])
def test_a_writer_never_replaces_an_artefact_of_another_kind(cli, inputs, tmp_path, command):
    """``embed --out TRAINED_MODEL --overwrite`` replaced the weights with embeddings."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(inputs / "model", model)
    before = sorted(p.name for p in model.iterdir())
    r = cli(*_commands(inputs, model)[command], "--overwrite")
    assert r.code == 2 and "holds an image-model" in r.err, r
    assert sorted(p.name for p in model.iterdir()) == before


def test_library_writers_follow_the_same_rule(tmp_path):
    from nestemb.errors import NestembError
    from nestemb.index import FunnelIndex

    X = synthetic_matryoshka(50, 16, seed=0)
    man = Manifest(model_id="m", model_version="v", nesting=(4, 8, 16), dim=16)
    idx = tmp_path / "idx"
    FunnelIndex(dims=(4, 16), shortlist=(20,), nesting=(4, 8, 16), model_id="m",
                model_version="v").add(X).save(idx)
    with pytest.raises(NestembError, match="holds an index, not embeddings"):
        save_embeddings(idx, X, man, overwrite=True)
    with pytest.raises(NestembError, match="set overwrite to replace it"):
        save_embeddings(idx, X, man)
    assert (idx / "manifest.json").is_file()
