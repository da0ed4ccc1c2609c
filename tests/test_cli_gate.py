"""The adapters' quality gate on the command line: ``adapter fit --holdout [--labels]`` prints
the held-out estimate; ``adapter apply`` and ``index search --adapter`` refuse an adapter below
``--min-quality`` (exit 2, one line, nothing written) unless ``--force``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nestemb.folders import load_embeddings, save_embeddings
from nestemb.nesting import Manifest

N = 150
OLD = Manifest(model_id="old-net", model_version="aaaa", nesting=(4, 8), dim=8)
NEW = Manifest(model_id="new-net", model_version="bbbb", nesting=(4, 8), dim=8)


def _one_line_error(r, *matches):
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert r.err.strip().count("\n") == 0, r.err
    for match in matches:
        assert match in r.err, r.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Old-model embeddings, new-model embeddings of the same items (a rotation: a good map)
    and of unrelated vectors (a bad map), labels, and a good and a bad adapter fitted with a
    held-out estimate."""
    from nestemb.maps import fit_adapter

    d = tmp_path_factory.mktemp("gate")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, N)
    X = 3 * rng.normal(size=(4, 8))[labels] + rng.normal(size=(N, 8))
    R = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    ids = list(range(N))
    save_embeddings(d / "old", X, OLD, ids=ids)
    save_embeddings(d / "new", X @ R, NEW, ids=ids)
    save_embeddings(d / "unrelated", rng.normal(size=(N, 8)), NEW, ids=ids)
    (d / "labels.txt").write_text("\n".join(str(v) for v in labels) + "\n")
    for name, Y in (("good", X @ R), ("bad", rng.normal(size=(N, 8)))):
        fit_adapter(X, Y, holdout=0.2, source_ref=OLD, target_ref=NEW).save(d / name)
    fit_adapter(X, X @ R, source_ref=OLD, target_ref=NEW).save(d / "plain")
    return d


def test_fit_with_holdout_prints_the_estimate(cli, world, tmp_path):
    r = cli("adapter", "fit", "--source", world / "old", "--target", world / "new",
            "--holdout", "0.2", "--labels", world / "labels.txt", "--out", tmp_path / "ad")
    assert r.code == 0, r
    assert ("held-out estimate (fitted on 120 pairs, measured on 30): neighbour agreement@10 "
            "1.000 (95% interval 1.000-1.000, 30 held-out pairs)") in r.out
    assert "1-NN label accuracy retained 1.000" in r.out
    quality = json.loads((tmp_path / "ad" / "manifest.json").read_text())[
        "extra"]["adapter"]["fit"]["quality"]
    assert quality["n_holdout"] == 30 and quality["agreement"]["mean"] == 1.0
    r = cli("adapter", "fit", "--source", world / "old", "--target", world / "unrelated",
            "--holdout", "0.2", "--out", tmp_path / "bad")
    assert r.code == 0, r
    line = next(x for x in r.out.splitlines() if x.startswith("held-out estimate"))
    assert float(line.split("agreement@10 ")[1].split()[0]) < 0.6


@pytest.mark.parametrize("extra, match", [
    (["--holdout", "1"], "--holdout must be a number strictly between 0 and 1"),
    (["--holdout", "0.05"], "--holdout 0.05 holds out 8 of the 150 pairs"),
    (["--labels", "LABELS"], "--labels serve the held-out estimate only"),
])
def test_fit_refuses_a_bad_holdout(cli, world, tmp_path, extra, match):
    extra = [str(world / "labels.txt") if x == "LABELS" else x for x in extra]
    r = cli("adapter", "fit", "--source", world / "old", "--target", world / "new", *extra,
            "--out", tmp_path / "ad")
    _one_line_error(r, match)
    assert not (tmp_path / "ad").exists()


def test_apply_refuses_below_min_quality_unless_forced(cli, world, tmp_path):
    apply = ["adapter", "apply", "--embeddings", world / "old", "--out", tmp_path / "mapped"]
    r = cli(*apply, "--adapter", world / "bad", "--min-quality", "0.9")
    _one_line_error(r, "neighbour agreement@10", "95% interval", "is below --min-quality 0.9")
    assert not (tmp_path / "mapped").exists()
    r = cli(*apply, "--adapter", world / "bad", "--min-quality", "0.9", "--force")
    assert r.code == 0, r
    assert "warning: --force" in r.err and "below --min-quality 0.9" in r.err
    gate = load_embeddings(tmp_path / "mapped")[1].extra["adapted"]["gate"]
    assert gate["forced"] and not gate["passed"] and gate["min_quality"] == 0.9
    # a good adapter passes the same threshold, silently
    r = cli(*apply, "--adapter", world / "good", "--min-quality", "0.9", "--overwrite")
    assert r.code == 0, r
    assert "warning" not in r.err


def test_apply_gate_errors(cli, world, tmp_path):
    apply = ["adapter", "apply", "--embeddings", world / "old", "--out", tmp_path / "mapped"]
    for value in ("1.5", "-0.1"):
        _one_line_error(cli(*apply, "--adapter", world / "good", "--min-quality", value),
                        f"--min-quality must be a number in [0, 1], got {float(value)}")
    _one_line_error(cli(*apply, "--adapter", world / "plain", "--min-quality", "0.5"),
                    "fitted without a held-out estimate", "set --force")
    _one_line_error(cli(*apply, "--adapter", world / "good", "--force"),
                    "--force applies only with --min-quality")
    assert not (tmp_path / "mapped").exists()


def test_index_search_through_a_gated_adapter(cli, world, tmp_path):
    assert cli("index", "build", "--embeddings", world / "new", "--out", tmp_path / "idx",
               "--stages", "4,8", "--shortlist", str(N)).code == 0
    search = ["index", "search", tmp_path / "idx", "--queries", world / "old", "-k", "3",
              "--out", tmp_path / "res.json"]
    r = cli(*search, "--adapter", world / "bad", "--min-quality", "0.9")
    _one_line_error(r, "is below --min-quality 0.9")
    assert not (tmp_path / "res.json").exists()
    r = cli(*search, "--adapter", world / "bad", "--min-quality", "0.9", "--force")
    assert r.code == 0, r
    assert "warning: --force" in r.err and (tmp_path / "res.json").exists()
    r = cli(*search, "--adapter", world / "good", "--min-quality", "0.9", "--overwrite")
    assert r.code == 0, r
    _one_line_error(cli(*search, "--min-quality", "0.9", "--overwrite"),
                    "--min-quality applies only with --adapter")
