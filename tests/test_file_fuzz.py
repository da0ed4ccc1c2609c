"""Fuzzing the files (issue 20): every field of every manifest kind and every data file of every
artefact, mutated, then read by the CLI command that uses it.

Contract: the command exits 0 (a harmless change) or 2 with one line and no traceback; the
artefact it read is unchanged byte for byte; an output it refused is not left half-written.
Property-based (hypothesis, derandomized, a fixed number of examples per artefact) so it runs
in CI in about a minute; the issue's own cases are pinned below as plain tests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestemb.index import FunnelIndex
from nestemb.index.synthetic import synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings

MODEL = dict(model_id="fuzz", model_version="v1")
NESTING = (4, 8, 16)


# --------------------------------------------------------------------------- artefacts
@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """One small, valid artefact of each kind, and the command (argv) that reads it; ``{A}``
    stands for the artefact, ``{OUT}`` for a fresh output path."""
    from nestemb import bulk, folders
    from nestemb.maps import fit_adapter, fit_retrofit
    from nestemb.models.image import ImageModel, make_model_config, save_image_model

    root = tmp_path_factory.mktemp("artefacts")
    X = synthetic_matryoshka(60, 16, seed=0)
    man = Manifest(nesting=NESTING, dim=16, **MODEL)
    save_embeddings(root / "emb", X, man, ids=[f"d{i}" for i in range(60)])
    save_embeddings(root / "queries", X[:5], man)
    FunnelIndex(dims=(4, 16), shortlist=(20,), nesting=NESTING, **MODEL).add(X).save(root / "idx")

    other = Manifest(model_id="other", model_version="v2", nesting=(8, 16), dim=16)
    save_embeddings(root / "other", synthetic_matryoshka(60, 16, seed=1), other)
    fit_adapter(X, synthetic_matryoshka(60, 16, seed=1), source_ref=man,
                target_ref=other).save(root / "adapter")
    fit_retrofit(X, source_ref=man, steps=5, progress=False).save(root / "retrofit")

    images = np.random.default_rng(0).integers(0, 255, size=(6, 28, 28), dtype=np.uint8)
    np.save(root / "images.npy", images)
    cfg = make_model_config("mrl", dim=8, width=4, images=images)
    save_image_model(ImageModel(cfg), root / "image-model", "fuzz-cnn")

    from nestemb.text.encoder import load_text_model, save_text_model
    from nestemb.text._tiny import make_tiny_model

    save_text_model(load_text_model(make_tiny_model(root / "tiny")), root / "text-model",
                    Manifest(model_id="fuzz-text", nesting=(16, 32), dim=32))
    (root / "texts.txt").write_text("a cat sits on the mat\nthe dog runs in the park\n")

    shards = root / "shards"
    (shards / folders.SHARDS_DIR).mkdir(parents=True)
    recs = [folders.write_shard(shards / folders.SHARDS_DIR, i, X[a:b], [f"s{j}" for j in range(a, b)], a)
            for i, (a, b) in enumerate(bulk.shard_ranges(60, 25))]
    sha = {f"{folders.SHARDS_DIR}/{n}": d for r in recs for n, d in r["sha256"].items()}
    Manifest(nesting=NESTING, dim=16, kind=folders.SHARDS_KIND, sha256=sha, **MODEL,
             extra={"shards": [{k: r[k] for k in ("shard", "start", "stop", "rows")}
                               for r in recs]}).save(shards)

    build = ["index", "build", "--embeddings", "{A}", "--out", "{OUT}", "--stages", "4,16", "--shortlist", "20"]
    return root, {
        "embeddings": ("emb", build),
        "embedding-shards": ("shards", build),
        "index": ("idx", ["index", "search", "{A}", "--queries", str(root / "queries"),
                          "--out", "{OUT}.json", "--show", "0"]),
        "adapter": ("adapter", ["adapter", "apply", "--adapter", "{A}", "--embeddings",
                                str(root / "emb"), "--out", "{OUT}"]),
        "nesting-retrofit": ("retrofit", ["retrofit", "apply", "--retrofit", "{A}", "--embeddings",
                                          str(root / "emb"), "--out", "{OUT}"]),
        "image-model": ("image-model", ["embed", "--model", "{A}", "--images",
                                        str(root / "images.npy"), "--out", "{OUT}"]),
        "text-model": ("text-model", ["embed", "--model", "{A}", "--texts",
                                      str(root / "texts.txt"), "--out", "{OUT}",
                                      "--device", "cpu"]),
    }


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_on_copy(cli, artefacts, kind, tmp_path, mutate):
    """Copy the artefact of ``kind``, apply ``mutate(folder)``, run its command; check the
    contract and return the result."""
    root, table = artefacts
    name, argv = table[kind]
    work = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    art = work / name
    shutil.copytree(root / name, art)
    mutate(art)
    before = _tree_digest(art)
    out = work / "out"
    r = cli(*[a.replace("{A}", str(art)).replace("{OUT}", str(out)) for a in argv])
    assert r.code in (0, 2), r
    assert "Traceback" not in r.err, r
    if r.code == 2:
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines) == 1, r.err
        assert not out.exists() and not Path(f"{out}.json").exists(), "partial output left"
        assert not [p for p in work.iterdir() if p.name.startswith(".nestemb-tmp-")]
    assert _tree_digest(art) == before, "the command changed the artefact it read"
    return r


# --------------------------------------------------------------------------- mutations
_ODD_VALUES = [None, True, -1, 0, 2**70, 1.5, float("inf"), "", "32", "x" * 3, [], [1, 2],
               {}, {"a": 1}]


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document, inner nodes included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _leaves(v, path + (i,))


def _set(doc, path, value, delete=False):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        if isinstance(node, dict):
            node.pop(path[-1])
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = value
    return doc


@st.composite
def manifest_mutations(draw, doc):
    paths = [p for p, _ in _leaves(doc)]
    path = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["value", "delete", "extra-key"] if path else ["value"]))
    if how == "delete":
        return _set(doc, path, None, delete=True)
    if how == "extra-key":
        parent = path[:-1]
        node = doc
        for key in parent:
            node = node[key]
        if isinstance(node, dict):
            return _set(doc, parent + ("unexpected",), draw(st.sampled_from(_ODD_VALUES)))
    return _set(doc, path, draw(st.sampled_from(_ODD_VALUES)))


KINDS = ["embeddings", "embedding-shards", "index", "adapter", "nesting-retrofit", "image-model",
         "text-model"]


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_manifests_are_refused_cleanly(cli, artefacts, kind, tmp_path):
    root, table = artefacts
    doc = json.loads((root / table[kind][0] / "manifest.json").read_text())

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(manifest_mutations(doc))
    def check(mutated):
        def mutate(art):
            (art / "manifest.json").write_text(json.dumps(mutated))

        _run_on_copy(cli, artefacts, kind, tmp_path, mutate)

    check()


def _data_mutations(path: Path) -> list:
    """Ways to damage one data file: truncated, emptied, random bytes, and for ``.npy`` a
    valid array of the wrong dtype or the wrong shape."""
    out = [("truncated", lambda p: p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])),
           ("empty", lambda p: p.write_bytes(b"")),
           ("garbage", lambda p: p.write_bytes(np.random.default_rng(0).bytes(200)))]
    if path.suffix == ".npy":
        def dtype(p):
            a = np.load(p, allow_pickle=False)
            np.save(p, np.zeros(a.shape, np.int64) if a.dtype.kind == "f" else a.astype("<U3"))

        def shape(p):
            a = np.load(p, allow_pickle=False)
            np.save(p, a.reshape(-1)[: max(1, a.size - 1)] if a.ndim else np.zeros((2, 2)))

        out += [("wrong dtype", dtype), ("wrong shape", shape)]
    if path.suffix == ".json":
        out += [("wrong json", lambda p: p.write_text('{"unexpected": [1, 2]}'))]
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fix_checksum", [False, True], ids=["stale-checksum", "checksum-updated"])
def test_damaged_data_files_are_refused_cleanly(cli, artefacts, kind, fix_checksum, tmp_path):
    """Each data file of the artefact damaged in each way; with ``checksum-updated`` the
    manifest's sha256 is rewritten to match, so the reader's own checks are what must hold."""
    from nestemb.io import sha256_file

    root, table = artefacts
    src = root / table[kind][0]
    files = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*"))
             if p.is_file() and p.name not in ("manifest.json", ".nestemb-output")]
    assert files
    for rel in files:
        for label, damage in _data_mutations(src / rel):
            def mutate(art, rel=rel, damage=damage):
                damage(art / rel)
                if fix_checksum:
                    doc = json.loads((art / "manifest.json").read_text())
                    if rel in doc.get("sha256", {}):
                        doc["sha256"][rel] = sha256_file(art / rel)
                        (art / "manifest.json").write_text(json.dumps(doc))

            try:
                r = _run_on_copy(cli, artefacts, kind, tmp_path, mutate)
            except AssertionError as e:
                raise AssertionError(f"{rel} {label}: {e}") from None
            if not fix_checksum and rel in json.loads((src / "manifest.json").read_text()).get(
                    "sha256", {}):
                assert r.code == 2, (rel, label, r)  # a listed file is checked by its checksum


# --------------------------------------------------------------------------- the issue's cases
@pytest.mark.parametrize("kind,path,value", [
    ("embeddings", ("dim",), "32"),
    ("embeddings", ("sha256",), [1, 2]),
    ("embeddings", (), 5),
    ("index", ("extra",), []),
    ("image-model", ("nesting",), "2,4,8"),
    ("adapter", ("extra",), None),
])
def test_issue_cases_exit_2_with_one_line(cli, artefacts, kind, path, value, tmp_path):
    root, table = artefacts
    doc = json.loads((root / table[kind][0] / "manifest.json").read_text())

    def mutate(art):
        (art / "manifest.json").write_text(json.dumps(_set(doc, path, value)))

    r = _run_on_copy(cli, artefacts, kind, tmp_path, mutate)
    assert r.code == 2 and "manifest" in r.err, r


def test_index_tuning_of_the_wrong_type_is_refused(cli, artefacts, tmp_path):
    root, table = artefacts
    doc = json.loads((root / "idx" / "manifest.json").read_text())
    doc["extra"]["tuning"] = {"recall": "high"}

    def mutate(art):
        (art / "manifest.json").write_text(json.dumps(doc))

    r = _run_on_copy(cli, artefacts, "index", tmp_path, mutate)
    assert r.code == 2 and "tuning" in r.err, r
