"""``nestemb image train`` under a real ``torchrun --nproc_per_node 2`` (gloo, CPU, loopback):
one output written by rank 0 only, loadable; an interrupted run (checkpoints kept in
``--checkpoint-dir``) resumed by the same command ends with the uninterrupted run's weights and
no duplicate files. Bad resume requests exit 2 with a message naming the problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
STEPS_PER_EPOCH = 5  # 200 images - 40 held out = 160, batch 32
TRAIN_FLAGS = ("--epochs", str(EPOCHS), "--batch-size", "32", "--dim", "16", "--nesting", "4,8,16",
               "--device", "cpu", "--threads", "1", "--model-id", "ddp-cli")  # fmt: skip


def _torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp),
           "GLOO_SOCKET_IFNAME": "lo"}  # fmt: skip
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nestemb", "image", "train", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One full 2-process run, then the same run 'interrupted' after epoch 1 and resumed."""
    from nestemb.data.idx import write_synthetic_idx

    root = tmp_path_factory.mktemp("ddpcli")
    scratch = root / "scratch"  # TMPDIR of the processes: the ranks' scratch dirs land here
    scratch.mkdir()
    data = write_synthetic_idx(root / "data", n_train=200, n_test=20)
    first = _torchrun(scratch, "--data", str(data), "--out", str(root / "full"),
                      "--checkpoint-dir", str(root / "ck"), *TRAIN_FLAGS)  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ck_files = _files(root / "ck")
    # an interruption during epoch 2: only epoch-1's checkpoint was written
    for e in range(2, EPOCHS + 1):
        shutil.rmtree(root / "ck" / f"epoch-{e}")
    second = _torchrun(scratch, "--data", str(data), "--out", str(root / "resumed"),
                       "--checkpoint-dir", str(root / "ck"), *TRAIN_FLAGS)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return root, data, first, second, ck_files


def test_two_process_cli_run_writes_one_loadable_model_from_rank_0(runs):
    from nestemb.models.image import load_image_model

    root, _data, first, _second, ck_files = runs
    model = load_image_model(root / "full")  # checksums verified
    info = json.loads((root / "full" / "train.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert model.manifest.model_id == "ddp-cli" and model.manifest.nesting == (4, 8, 16)
    # rank 0 alone prints and writes: one "saved" line, no temporaries, no rank scratch left
    assert first.stdout.count("saved ") == 1, first.stdout
    assert sorted(p.name for p in root.iterdir()) == ["ck", "data", "full", "resumed", "scratch"]
    assert [p.name for p in (root / "scratch").iterdir() if p.name.startswith("nestemb-")] == []
    assert not (root / "full" / "checkpoints").exists()  # they went to --checkpoint-dir
    assert ck_files == sorted(f"epoch-{e}/{n}" for e in range(1, EPOCHS + 1)
                              for n in ("manifest.json", "trainer-state.pt", "weights"))


def test_resumed_two_process_run_continues_to_the_uninterrupted_weights(runs):
    from nestemb.models.image import load_image_model

    root, _data, _first, second, ck_files = runs
    info = json.loads((root / "resumed" / "train.json").read_text())
    assert info["resumed_from"].endswith("epoch-1")
    assert "resuming from" in second.stdout and second.stdout.count("saved ") == 1
    assert info["steps"] == EPOCHS * STEPS_PER_EPOCH  # epoch 1 ended at step 5: it went on
    full = json.loads((root / "full" / "train.json").read_text())
    assert info["epoch_losses"][0] == full["epoch_losses"][0]  # epoch 1 comes from the checkpoint
    assert info["epoch_losses"] == pytest.approx(full["epoch_losses"], rel=1e-5)
    a, b = load_image_model(root / "full"), load_image_model(root / "resumed")
    assert a.manifest.model_version == b.manifest.model_version  # identical weights
    assert _files(root / "ck") == ck_files  # each epoch written once, nothing duplicated
    assert _files(root / "resumed") == _files(root / "full")


def test_bad_resume_requests_exit_2(runs, cli, tmp_path):
    root, data, *_ = runs
    base = ("image", "train", "--data", str(data), *TRAIN_FLAGS)
    r = cli(*base, "--out", tmp_path / "a", "--checkpoint-dir", tmp_path / "empty", "--resume")
    assert r.code == 2 and "--resume: no checkpoint (epoch-E/trainer-state.pt) in" in r.err, r
    # the checkpoints of root/ck belong to a run with another learning rate
    r = cli(*base, "--out", tmp_path / "b", "--checkpoint-dir", root / "ck", "--lr", "0.001")
    assert r.code == 2 and "was written by a different run: lr 0.004 there, 0.001 now" in r.err, r
    assert "Traceback" not in r.err
    r = cli(*base, "--out", tmp_path / "c", "--checkpoint-dir", root / "ck", "--no-resume")
    assert r.code == 2 and "holds checkpoints of an earlier run (epoch-3)" in r.err, r
    r = cli(*base, "--out", tmp_path / "d", "--no-checkpoints", "--resume")
    assert r.code == 2 and "--resume needs checkpoints" in r.err, r
    assert not any((tmp_path / n).exists() for n in "abcd")
