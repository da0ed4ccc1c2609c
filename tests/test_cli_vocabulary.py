"""One CLI vocabulary: each idea has one option name on every command, and the old spellings
still work for one release, with a note on stderr saying what replaced them."""

from __future__ import annotations


import pytest

from nestemb.index import synthetic_matryoshka
from nestemb.nesting import Manifest
from nestemb.folders import save_embeddings


def _commands():
    """``{"index build": click command}`` of every visible command."""
    import typer.main

    from nestemb.cli import app

    out = {}

    def walk(cmd, words):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                if not getattr(sub, "hidden", False):
                    walk(sub, [*words, name])
        else:
            out[" ".join(words)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def _flags(cmd) -> dict[str, str]:
    """Visible flag -> Python parameter name of one command."""
    return {o: p.name for p in cmd.params if not getattr(p, "hidden", False)
            for o in getattr(p, "opts", ()) if o.startswith("-")}


# idea -> (its one flag, the commands that have it)
VOCABULARY = {
    "nesting trained, fitted or declared": ("--nesting", {"image train", "text train", "retrofit fit",
                                                          "migrate start"}),
    "funnel stage prefixes": ("--stages", {"index build", "index search", "backend export",
                                           "backend search"}),
    "evaluated prefixes": ("--dims", {"compat", "text eval-retrieval", "text eval-sts"}),
    "engine kind": ("--engine", {"serve", "backend export", "backend search"}),
    "engine address": ("--engine-url", {"serve", "backend export", "backend search"}),
    "engine key variable": ("--engine-key-env", {"serve", "backend export", "backend search"}),
    "neighbours of a loss or measure": ("--neighbours", {"retrofit fit", "compare"}),
    "results per query": ("--k", {"index search", "index tune", "backend search", "compat"}),
    "adapter model folders": ("--target", {"adapter fit"}),
    "nested encoder widths trained together": ("--widths", {"image train", "text train"}),
    "the encoder width of a submodel": ("--width", {"image extract", "text extract", "index search"}),
    "the encoder width of each layer (Mix'n'Match)": ("--widths-per-layer", {"image extract",
                                                                               "index search"}),
    "in-place distillation of the smaller widths": ("--width-distill", {"image train"}),
    "image encoder architecture": ("--arch", {"image train"}),
    "batch-norm recalibration images": ("--calibrate", {"image extract"}),
    "a query's latency budget": ("--latency-ms", {"index search"}),
    "encoder compute as a fraction of the full model's": ("--budget", {"image extract"}),
}
RETIRED = {"--backend", "--backend-url", "--backend-key-env", "--key-env", "--encoder",
           "--encoders", "--batch", "--adaptor", "--base-model"}
MODEL_COMMANDS = {"embed", "quickstart", "image train", "image eval", "text train",
                  "text eval-retrieval", "text eval-sts"}


def test_each_idea_has_one_spelling():
    commands = _commands()
    flags = {name: _flags(cmd) for name, cmd in commands.items()}
    for idea, (flag, where) in VOCABULARY.items():
        have = {name for name, f in flags.items() if flag in f}
        assert have == where, f"{idea}: {flag} on {sorted(have)}, expected {sorted(where)}"
    for name, f in flags.items():
        assert not RETIRED & set(f), (name, RETIRED & set(f))
        # a batch size is --batch-size everywhere (--max-batch is a request limit of serve)
        assert {o for o in f if "batch" in o} <= {"--batch-size", "--max-batch"}, name
        # embedding folders are options, never positional (index folders stay positional)
        positional = {p.name for p in commands[name].params
                      if p.param_type_name == "argument" and not p.hidden}
        assert positional <= {"index_dir", "source"}, (name, positional)
    for name in MODEL_COMMANDS:
        assert {"--threads", "--device"} <= set(flags[name]), name
    # no command left holding a single verb
    import typer.main

    from nestemb.cli import app

    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands") and not cmd.hidden:
            assert len(cmd.commands) > 1, f"nestemb {name} is a group of one verb"


def test_choices_are_the_library_constants():
    from nestemb.cli import compat, image, index, retrofit
    from nestemb.compat.matrix import METRICS
    from nestemb.device import DEVICES
    from nestemb.index.ivf import CODECS
    from nestemb.maps.adapter import KINDS
    from nestemb.maps.retrofit import RETROFIT_KINDS
    from nestemb.models.image import HEADS
    from nestemb.cli.app import Device

    assert [h.value for h in image.Head] == list(HEADS)
    assert [d.value for d in Device] == list(DEVICES)
    assert [m.value for m in compat.Metric] == list(METRICS)
    assert [k.value for k in compat.AdapterKind] == list(KINDS)
    assert [k.value for k in retrofit.Kind] == list(RETROFIT_KINDS)
    assert [c.value for c in index.Codec] == list(CODECS)


def test_errors_name_the_new_flag(cli, tmp_path):
    """A library error about a renamed parameter (``NestembError.param``) names its new flag,
    whether the old spelling or the new one was typed."""
    for flag in ("--nesting", "--dims"):
        r = cli("image", "train", "--out", tmp_path / "m", "--head", "ff", flag, "2,4")
        assert r.code == 2, r
        assert "give one dimension in --nesting" in r.err.splitlines()[-1], r.err
    X = synthetic_matryoshka(50, 16, seed=0)
    g = save_embeddings(tmp_path / "g", X, Manifest(model_id="m", model_version="v",
                                                    nesting=(4, 16), dim=16))
    for flag in ("--neighbours", "--k"):
        r = cli("retrofit", "fit", "--embeddings", g, "--out", tmp_path / "r", flag, "0")
        assert r.code == 2 and "--neighbours must be" in r.err.splitlines()[-1], r.err


@pytest.fixture
def folders(tmp_path):
    man = Manifest(model_id="m", model_version="v", nesting=(4, 16), dim=16)
    g = save_embeddings(tmp_path / "g", synthetic_matryoshka(200, 16, seed=0), man,
                        ids=[f"d{i}" for i in range(200)])
    q = save_embeddings(tmp_path / "q", synthetic_matryoshka(10, 16, seed=1), man,
                        ids=[f"q{i}" for i in range(10)])
    return tmp_path, g, q


def test_old_spellings_still_work_with_a_note(cli, folders):
    tmp, g, q = folders
    # index build: the positional EMBEDDINGS and --dims
    r = cli("index", "build", g, "--out", tmp / "idx", "--dims", "4,16", "--shortlist", "50")
    assert r.code == 0, r
    assert "note: the positional EMBEDDINGS is now --embeddings" in r.err
    assert "note: --dims is now --stages" in r.err
    from nestemb.index import load_index

    assert tuple(load_index(tmp / "idx").dims) == (4, 16)
    # the same result spelled the new way, without a note
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx2", "--stages", "4,16",
            "--shortlist", "50")
    assert r.code == 0 and "note:" not in r.err, r
    # --dims=VALUE form too
    r = cli("index", "build", "--embeddings", g, "--out", tmp / "idx3", "--dims=4,16",
            "--shortlist", "50")
    assert r.code == 0 and "note: --dims is now --stages" in r.err, r
    assert tuple(load_index(tmp / "idx3").dims) == (4, 16)
    # compare: positional A B and -k
    r = cli("compare", g, g, "--measures", "mutual-knn", "-k", "3", "--permutations", "0")
    assert r.code == 0, r
    assert "note: the positional A is now --embeddings-a" in r.err
    assert "note: -k is now --neighbours" in r.err
    new = cli("compare", "--embeddings-a", g, "--embeddings-b", g, "--measures", "mutual-knn",
              "--neighbours", "3", "--permutations", "0")
    assert new.code == 0 and "note:" not in new.err
    table = [line for line in r.out.splitlines() if line.strip().startswith(("4 ", "16 "))]
    assert table and table == [line for line in new.out.splitlines()
                               if line.strip().startswith(("4 ", "16 "))]
    # compat matrix: the old group verb
    labels = tmp / "gl.txt"
    labels.write_text("\n".join(str(i % 3) for i in range(200)))
    r = cli("compat", "matrix", "--queries", g, "--gallery", g, "--query-labels", labels,
            "--gallery-labels", labels, "--out", tmp / "cm")
    assert r.code == 0, r
    assert "note: `nestemb compat matrix` is now `nestemb compat`" in r.err
    assert (tmp / "cm" / "matrix.json").is_file()
    # retrofit fit: --k (neighbours of the loss)
    r = cli("retrofit", "fit", "--embeddings", g, "--out", tmp / "rf", "--k", "5", "--steps", "2")
    assert r.code == 0, r
    assert "note: --k is now --neighbours" in r.err
    assert '"k": 5' in (tmp / "rf" / "manifest.json").read_text()


@pytest.mark.parametrize("argv, old, new, error", [
    (["image", "train", "--out", "{tmp}/o", "--dims", "8,4"], "--dims", "--nesting",
     "strictly ascending"),
    (["text", "train", "--out", "{tmp}/o", "--dims", "8,x", "--beir", "{tmp}/b"], "--dims",
     "--nesting", "--nesting must be comma-separated integers"),
    (["backend", "export", "{tmp}/g", "--engine", "qdrant-edge", "--target", "{tmp}/e",
      "--key-env", "X", "--collection", "c", "--dims", "8,x"], "--target", "--engine-url",
     "--stages must be comma-separated integers"),
    (["backend", "search", "--engine", "qdrant-edge", "--target", "{tmp}/e", "--key-env", "X",
      "--collection", "c", "--queries", "{tmp}/missing"], "--key-env", "--engine-key-env",
     "query embedding directory not found"),
    (["upload", "--collection", "c", "--beir", "{tmp}/b", "--encoder", "x", "--batch", "0"],
     "--batch", "--batch-size", "--batch-size must be a positive integer, got 0"),
    (["upload", "--collection", "c", "--beir", "{tmp}/b", "--encoder", "x", "--batch", "0"],
     "--encoder", "--model", "--batch-size must be a positive integer"),
    (["serve", "--data-dir", "{tmp}/d", "--backend", "nosuch"], "--backend", "--engine",
     "'--engine'"),
    (["serve", "--data-dir", "{tmp}/d", "--encoders", "nopair"], "--encoders", "--models",
     "--models: give NAME=PATH pairs"),
])
def test_old_flags_are_read_as_the_new_ones(cli, tmp_path, argv, old, new, error):
    """The old flag reaches the command as the new one: the command's own error about that
    value names the new flag, after the note."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    r = cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert f"note: {old} is now {new}" in r.err, r
    assert r.code == 2 and error in r.err, r
    assert "No such option" not in r.err, r
