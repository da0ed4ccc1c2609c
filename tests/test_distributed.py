"""Data-parallel training under torchrun: 2 processes (gloo, loopback) against 1 process.

One ``torchrun --standalone --nproc_per_node=2`` launch runs this file as a script (see
``_worker`` at the bottom); each rank writes what it computed, and the tests compare it with the
one-process computation done here, in the pytest process:

- the image trainer's loss of one global batch (Matryoshka cross-entropy per prefix, batch norm
  over the global batch, shards of unequal size) and the gradients after DDP;
- a contrastive text loss with gathered in-batch and hard negatives on a tiny BERT, per prefix,
  and its averaged gradients;
- whole runs: ``train_image`` (weights, loss history; checkpoints written by rank 0 only) and
  ``train_text``'s projection recipe (base encoding split over the processes).

Checkpoint resume is checked in one process: an interrupted run resumed from its last
checkpoint gives exactly the weights of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IMG_NESTING = (2, 4, 8)
IMG_BATCH = 7  # odd: the two shards differ in size (4 and 3)
TEXT_DIMS = (8, 16, 32)


# --------------------------------------------------------------------------- shared inputs
def image_inputs():
    """A tiny image model (fixed seed) and one global batch, identical in every process."""
    import torch

    from nestemb.models.image import ImageModel, ImageModelConfig

    torch.manual_seed(0)
    model = ImageModel(ImageModelConfig(dim=8, nesting=IMG_NESTING, width=2, num_classes=5))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(IMG_BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 5, (IMG_BATCH,), generator=g)
    w = torch.tensor([2.0, 1.0, 1.0])
    return model, x, y, w


def text_batch() -> list[list[str]]:
    """Columns (anchor, positive, hard negative) of a global batch of 5 triplets."""
    from nestemb.text._tiny import WORDS

    import random

    rng = random.Random(3)
    rows = [[" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(3)] for _ in range(5)]
    return [list(c) for c in zip(*rows)]


def text_loss(model, cols, env=None):
    from nestemb.text.losses import MatryoshkaTextLoss, matryoshka_exits
    from nestemb.text.train import gathered_exits

    n_layers = model[0].auto_model.config.num_hidden_layers
    loss_fn = MatryoshkaTextLoss(matryoshka_exits(TEXT_DIMS, n_layers, [2.0, 1.0, 1.0]))
    embs = [gathered_exits(model, c, loss_fn.layers, env) for c in cols]
    return loss_fn.contrastive(*embs)


def image_data():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (48, 28, 28), dtype=np.uint8)
    return x, np.arange(48) % 5


def image_train_config():
    from nestemb.train.image import ImageTrainConfig

    return ImageTrainConfig(epochs=2, batch_size=10, holdout=0, augment=("shift", "flip"),
                            lr=1e-2, device="cpu")


def image_model_config():
    from nestemb.models.image import ImageModelConfig

    return ImageModelConfig(dim=8, nesting=IMG_NESTING, width=2, num_classes=5)


def text_train_config():
    from nestemb.text.train import TextTrainConfig

    return TextTrainConfig(recipe="projection", dims=(8, 32), steps=5, device="cpu")


# --------------------------------------------------------------------------- the launch
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run the 2-process worker once; returns its output folder and the tiny text model."""
    from nestemb.text._tiny import make_tiny_beir, make_tiny_model

    root = tmp_path_factory.mktemp("ddp")
    model_dir = make_tiny_model(root / "tiny")
    beir = make_tiny_beir(root / "beir")
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "GLOO_SOCKET_IFNAME": "lo"}  # gloo's connections on loopback only
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, "--worker", str(out), str(model_dir), str(beir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, model_dir, beir


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=False)


def test_image_batch_loss_and_gradients_match_one_process(launched):
    import torch

    from nestemb.train.image import batch_loss

    out, _, _ = launched
    model, x, y, w = image_inputs()
    loss = batch_loss(model, x, y, w, 0.1)
    loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    ranks = [_load(out / f"image-{r}.pt") for r in range(2)]
    for got in ranks:
        assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        assert set(got["grads"]) == set(ref)
        for k, g in ref.items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)
        for k, b in buffers.items():  # running statistics from the global batch
            torch.testing.assert_close(got["buffers"][k].to(b.dtype), b, rtol=1e-4, atol=1e-6,
                                       msg=k)
        # the check can fail: a rank's loss on its own shard alone is not the global loss
        assert abs(got["local_loss"] - float(loss.detach())) > 1e-3
    assert ranks[0]["shard"] == 4 and ranks[1]["shard"] == 3
    for k in ref:  # DDP leaves the same averaged gradient on both ranks
        assert torch.equal(ranks[0]["grads"][k], ranks[1]["grads"][k]), k


def test_contrastive_text_loss_with_gathered_negatives_matches_one_process(launched):
    import torch

    from nestemb.text.encoder import load_text_model

    out, model_dir, _ = launched
    model = load_text_model(model_dir).model
    model.eval()  # no dropout: the processes' random streams differ
    loss = text_loss(model, text_batch())
    loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert len(ref) > 10
    ranks = [_load(out / f"text-{r}.pt") for r in range(2)]
    for got in ranks:
        assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        for k, g in ref.items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)
        # the check can fail: negatives from one shard only give another loss
        assert abs(got["local_loss"] - float(loss.detach())) > 1e-3


def test_train_image_two_processes_follow_the_one_process_run(launched, tmp_path):
    import torch

    from nestemb.train.image import train_image

    out, _, _ = launched
    x, y = image_data()
    model, info = train_image(image_model_config(), x, y, image_train_config(), progress=False)
    ranks = [_load(out / f"train-image-{r}.pt") for r in range(2)]
    for got in ranks:
        assert got["info"]["world_size"] == 2 and got["info"]["steps"] == info["steps"] == 10
        np.testing.assert_allclose(got["info"]["epoch_losses"], info["epoch_losses"], rtol=1e-4)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-3, atol=1e-4, msg=k)
    for k in ranks[0]["state"]:  # every process ends with the same weights
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
    # only rank 0 wrote checkpoints
    assert sorted(p.name for p in (out / "ckpt-0").iterdir()) == ["epoch-1", "epoch-2"]
    assert not (out / "ckpt-1").exists()


def test_train_text_projection_two_processes_match_one_process(launched):
    from nestemb.text.train import load_train_data, train_text

    out, model_dir, beir = launched
    data = load_train_data(beir=[beir])
    enc, info = train_text(data, text_train_config(), base=model_dir)
    W = enc.model[-1].linear.weight.detach().numpy()
    for r in range(2):
        got = _load(out / f"train-text-{r}.pt")
        assert got["world_size"] == 2
        np.testing.assert_allclose(got["W"], W, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- one process
def test_resume_from_checkpoint_equals_the_uninterrupted_run(tmp_path):
    import torch

    from nestemb.errors import NestembError
    from nestemb.train.image import ImageTrainConfig, train_image

    x, y = image_data()
    cfg = ImageTrainConfig(epochs=3, batch_size=16, holdout=0, lr=1e-2, device="cpu")
    full, info = train_image(image_model_config(), x, y, cfg, progress=False,
                             checkpoint_dir=tmp_path / "a")

    def stop(msg: str) -> None:
        if msg.startswith("epoch 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_image(image_model_config(), x, y, cfg, progress=False, log=stop,
                    checkpoint_dir=tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch-1"]
    resumed, info2 = train_image(image_model_config(), x, y, cfg, progress=False,
                                 checkpoint_dir=tmp_path / "b", resume_from=tmp_path / "b" / "epoch-1")
    assert info2["steps"] == info["steps"] and info2["epoch_losses"] == info["epoch_losses"]
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    other = ImageTrainConfig(epochs=3, batch_size=8, holdout=0, device="cpu")
    with pytest.raises(NestembError, match="different run: batch_size 16 there, 8 now"):
        train_image(image_model_config(), x, y, other, progress=False,
                    resume_from=tmp_path / "b" / "epoch-1")
    with pytest.raises(NestembError, match="holds no trainer-state.pt"):
        train_image(image_model_config(), x, y, cfg, progress=False, resume_from=tmp_path)


def test_bad_torchrun_environment_is_named(monkeypatch):
    from nestemb.distributed import env_from_torchrun, init_distributed
    from nestemb.errors import NestembError

    with pytest.raises(NestembError, match="WORLD_SIZE must be an integer"):
        env_from_torchrun({"WORLD_SIZE": "two"})
    with pytest.raises(NestembError, match=r"RANK must lie in 0\.\.1 \(WORLD_SIZE=2\), got None"):
        env_from_torchrun({"WORLD_SIZE": "2"})
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(NestembError, match="MASTER_ADDR, MASTER_PORT unset: start the processes with torchrun"):
        init_distributed("cpu")


def test_shards_cover_the_batch_once():
    from nestemb.distributed import DistEnv, shard_sizes, shard_slice

    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            rows = [i for r in range(world)
                    for i in range(n)[shard_slice(n, DistEnv(rank=r, world_size=world))]]
            assert rows == list(range(n)) and sum(shard_sizes(n, world)) == n


# --------------------------------------------------------------------------- the worker
def _worker(out: Path, model_dir: Path, beir: Path) -> None:
    import torch

    from nestemb import distributed as dist
    from nestemb.text.encoder import load_text_model
    from nestemb.text.train import load_train_data, train_text
    from nestemb.train.image import batch_loss, train_image

    env, device = dist.init_distributed("cpu")
    assert env.world_size == 2 and env.backend == "gloo", env
    r = env.rank

    # one global batch through the image trainer's loss
    model, x, y, w = image_inputs()
    net = dist.wrap_ddp(model, env, device)
    loss = batch_loss(net, x, y, w, 0.1, env)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    dist.revert_batchnorm(model)
    with torch.no_grad():  # what this rank alone would compute on its shard
        from nestemb.losses import matryoshka_cross_entropy

        part = dist.shard_slice(len(x), env)
        local = matryoshka_cross_entropy(model(x[part])[1], y[part], w, 0.1)[0]
    torch.save({"loss": float(loss.detach()), "local_loss": float(local), "shard": part.stop - part.start,
                "grads": grads, "buffers": buffers}, out / f"image-{r}.pt")

    # a contrastive text loss with gathered in-batch and hard negatives
    tmodel = load_text_model(model_dir).model
    tmodel.eval()
    cols = text_batch()
    loss = text_loss(tmodel, cols, env)
    loss.backward()
    dist.average_gradients(tmodel.parameters(), env)
    with torch.no_grad():
        part = dist.shard_slice(len(cols[0]), env)
        local = text_loss(tmodel, [c[part] for c in cols])
    torch.save({"loss": float(loss.detach()), "local_loss": float(local),
                "grads": {k: p.grad for k, p in tmodel.named_parameters() if p.grad is not None}},
               out / f"text-{r}.pt")

    # whole runs
    xi, yi = image_data()
    m, info = train_image(image_model_config(), xi, yi, image_train_config(), progress=False,
                          checkpoint_dir=out / f"ckpt-{r}")
    torch.save({"info": info, "state": m.state_dict()}, out / f"train-image-{r}.pt")
    enc, tinfo = train_text(load_train_data(beir=[beir]), text_train_config(), base=model_dir)
    torch.save({"W": enc.model[-1].linear.weight.detach().numpy(), "world_size": tinfo["world_size"]},
               out / f"train-text-{r}.pt")
    (out / f"done-{r}.json").write_text(json.dumps({"rank": r}))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    sys.path.insert(0, str(REPO))
    _worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
