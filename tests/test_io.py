"""Crash-safe output (issue 9): unwritable locations, long names, signals, stale temporaries,
umask, and the CLI's --version / --help."""

from __future__ import annotations

import os
from functools import partial
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nestemb.cli.app import check_out_dir, check_out_file
from nestemb.errors import NestembError
from nestemb.io import atomic_dir, atomic_file, sweep_stale, write_json

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# 1. output path checks before work; library writers: NestembError, nothing left behind
@pytest.mark.parametrize("check", [check_out_file, partial(check_out_dir, kind="index")])
def test_check_out_refuses_parent_that_is_a_file(tmp_path, check):
    f = tmp_path / "plain-file"
    f.write_text("x")
    with pytest.raises(NestembError, match=r"cannot write --out .*plain-file is not a directory"):
        check(f / "sub" / "out", False)


@pytest.mark.parametrize("check", [check_out_file, partial(check_out_dir, kind="index")])
def test_check_out_refuses_read_only_parent(tmp_path, monkeypatch, check):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    with pytest.raises(NestembError, match=r"cannot write --out .*is not writable"):
        check(tmp_path / "new" / "out", False)
    check(tmp_path.parent / "elsewhere-ok", False)  # a writable parent passes


def test_check_out_accepts_missing_parents_under_writable_folder(tmp_path):
    check_out_file(tmp_path / "a" / "b" / "r.json", False)
    check_out_dir(tmp_path / "a" / "b" / "run", False, "index")


def test_cli_refuses_unwritable_out_before_work(cli, tmp_path):
    f = tmp_path / "plain-file"
    f.write_text("x")
    r = cli("text", "eval-sts", "--model", "minilm", "--sts", tmp_path / "missing.csv",
            "--out", f / "res.json")  # fmt: skip
    assert r.code == 2 and "is not a directory" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("writer", ["file", "dir"])
def test_atomic_writers_unwritable_location_is_clean_error(tmp_path, writer):
    f = tmp_path / "plain-file"
    f.write_text("x")
    with pytest.raises(NestembError, match="cannot"):
        if writer == "file":
            with atomic_file(f / "out.bin") as fh:
                fh.write(b"x")
        else:
            with atomic_dir(f / "sub" / "out", kind="test"):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-file"]


def test_atomic_dir_rename_failure_is_clean_error(tmp_path, monkeypatch):
    def fail(*a):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(NestembError, match="cannot write .*Permission denied"):
        with atomic_dir(tmp_path / "out", kind="test") as tmp:
            (tmp / "x").write_text("1")
            monkeypatch.setattr(os, "replace", fail)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# 2. a legal 250-character output name
def test_250_character_output_names(tmp_path):
    name = "n" * 250
    write_json(tmp_path / (name + ".json")[:250], {"a": 1})
    with atomic_dir(tmp_path / ("d" * 250), kind="test") as tmp:
        write_json(tmp / name, [1])
    with atomic_dir(tmp_path / ("d" * 250), kind="test", overwrite=True) as tmp:  # replacing works too
        write_json(tmp / name, [2])
    assert (tmp_path / ("d" * 250) / name).read_text().strip().startswith("[")
    assert sorted(len(p.name) for p in tmp_path.iterdir()) == [250, 250]


# 3. signals: SIGTERM / SIGINT during a write
_SCRIPT = """
import os, signal, sys
from nestemb.cli import app, main
from nestemb.io import atomic_dir, atomic_file

@app.command("slow-write")
def slow_write(out: str, kind: str = "dir") -> None:
    if kind == "dir":
        with atomic_dir(out, kind="test") as tmp:
            (tmp / "part").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.{sig})
            raise SystemExit("signal not delivered")
    else:
        with atomic_file(out) as f:
            f.write(b"x" * 1000)
            os.kill(os.getpid(), signal.{sig})
            raise SystemExit("signal not delivered")

sys.argv = ["nestemb", "slow-write", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_signal_during_write_cleans_up_and_says_interrupted(tmp_path, sig, code, kind):
    out = tmp_path / "work" / "out"
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT).replace("{sig}", sig), str(out),
         "--kind", kind],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert p.returncode == code, p.stderr
    assert p.stderr.strip() == "interrupted"
    assert list((tmp_path / "work").iterdir()) == []


def test_stale_temporaries_swept_on_next_write(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".nestemb-tmp-{dead}-0123456789ab"
    stale_dir.mkdir()
    (stale_dir / "embeddings.npy").write_bytes(b"x")
    stale_file = tmp_path / f".nestemb-tmp-{dead}-abcdef012345"
    stale_file.write_bytes(b"x")
    live = tmp_path / f".nestemb-tmp-{os.getpid()}-0123456789ab"  # a live writer's: kept
    live.mkdir()
    other = tmp_path / ".other.tmp"  # not nestemb's naming: kept
    other.mkdir()
    write_json(tmp_path / "r.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "r.json"])
    assert sweep_stale(tmp_path) == []


# 4. umask
@pytest.mark.parametrize("mask, fmode, dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_umask(tmp_path, mask, fmode, dmode):
    old = os.umask(mask)
    try:
        write_json(tmp_path / "r.json", {})
        with atomic_dir(tmp_path / "run", kind="test") as tmp:
            write_json(tmp / "manifest.json", {})
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == fmode
    assert (tmp_path / "run").stat().st_mode & 0o777 == dmode
    assert (tmp_path / "run" / "manifest.json").stat().st_mode & 0o777 == fmode


# 5. --version
def test_cli_dash_dash_version(cli):
    from nestemb import __version__

    r = cli("--version")
    assert r.code == 0 and r.out.strip() == __version__
    r = cli("version")
    assert r.code == 0 and r.out.strip() == __version__


# 6. --help at 80 columns keeps option names whole
def test_help_at_80_columns_does_not_truncate_options():
    env = {**os.environ, "COLUMNS": "80"}
    p = subprocess.run([sys.executable, "-m", "nestemb", "text", "train", "--help"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "--no-hard-negatives" in p.stdout and "…" not in p.stdout
    assert max(map(len, p.stdout.splitlines())) <= 80


def test_overwrite_never_deletes_a_folder_nestemb_did_not_write(tmp_path):
    """issue 9: --overwrite used to delete unrelated files sitting in the target folder."""
    from nestemb.io import OUTPUT_MARKER, atomic_dir

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(NestembError, match="refusing to replace .*nestemb did not write it"):
        with atomic_dir(notes, overwrite=True, kind="test") as tmp:
            (tmp / "results.json").write_text("{}")
    assert (notes / "todo.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no temporary left
    out = tmp_path / "run"
    for value in ("1", "2"):  # nestemb's own output is replaced
        with atomic_dir(out, overwrite=True, kind="test") as tmp:
            (tmp / "v.txt").write_text(value)
    assert (out / "v.txt").read_text() == "2" and (out / OUTPUT_MARKER).is_file()


def test_cli_overwrite_refuses_a_users_folder(cli, tmp_path):
    from nestemb.index.synthetic import synthetic_matryoshka
    from nestemb.nesting import Manifest
    from nestemb.folders import save_embeddings

    emb = tmp_path / "emb"
    save_embeddings(emb, synthetic_matryoshka(50, 8),
                    Manifest(model_id="m", model_version="v", nesting=(4, 8), dim=8))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("draft")
    r = cli("index", "build", "--embeddings", emb, "--out", mine, "--overwrite", "--stages", "4,8",
            "--shortlist", "50")
    assert r.code == 2 and "Traceback" not in r.err, r
    assert (mine / "paper.tex").read_text() == "draft"


def test_progress_prints_plain_lines_with_totals_when_stderr_is_not_a_terminal(capsys):
    """issue 9: when stderr is not a terminal a long run printed nothing until the end."""
    from nestemb.progress import counter, progress_stages

    with progress_stages() as update:
        cb = counter(update, "encoding", 200)
        for _ in range(20):
            cb(10)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("encoding: 0/200") and lines[-1].startswith("encoding: 200/200")
    assert 5 <= len(lines) <= 12  # about every 10 %, not every batch
