"""The image trainer's config, schedule, augmentation, device and thread handling, hold-out."""

import numpy as np
import pytest
import torch

from nestemb.data.split import holdout_size, split_holdout
from nestemb.errors import NestembError
from nestemb.models.image import make_model_config
from nestemb.device import resolve_device
from nestemb.train.image import DEFAULT_MIN_STEPS, ImageTrainConfig, augment_batch, train_image


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("n", [500, 5400])
def test_small_sets_get_the_minimum_number_of_steps(n):
    epochs, per_epoch, total = ImageTrainConfig().schedule(n)
    assert total >= DEFAULT_MIN_STEPS and total == epochs * per_epoch
    assert (epochs - 1) * per_epoch < DEFAULT_MIN_STEPS  # no more whole epochs than needed
    assert per_epoch == -(-n // 256)


def test_large_sets_train_for_whole_epochs_and_overrides_win():
    assert ImageTrainConfig().schedule(55000) == (15, 215, 3225)
    assert ImageTrainConfig(min_steps=5000).schedule(55000) == (24, 215, 5160)
    assert ImageTrainConfig(epochs=3).schedule(500) == (3, 2, 6)
    assert ImageTrainConfig(steps=5).schedule(500) == (3, 2, 5)  # last epoch partial


def test_trainer_runs_exactly_the_planned_steps():
    x, y = _data(100)
    cfg = make_model_config("mrl", dim=8, width=4)
    _, info = train_image(cfg, x, y, ImageTrainConfig(steps=3, batch_size=40, device="cpu"), progress=False)
    assert info["steps"] == 3 and info["epochs"] == 2 and len(info["epoch_losses"]) == 2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"epochs": 0}, "^epochs must be a positive integer, got 0"),
        ({"steps": 0}, "^steps must be a positive integer"),
        ({"epochs": 2, "steps": 5}, "give epochs or steps, not both"),
        ({"batch_size": 0}, "^batch_size must be a positive integer"),
        ({"lr": 0}, "^lr must be a positive number"),
        ({"holdout": -1}, "^holdout must be >= 0"),
        ({"threads": 0}, "^threads must be a positive integer"),
        ({"augment": ("shift", "rotate")}, r"augment values must be among \('shift', 'flip'\), got 'rotate'"),
        ({"shift": -1}, "^shift must be >= 0"),
        ({"device": "tpu"}, "device must be one of cpu, cuda, auto; got 'tpu'"),
    ],
)
def test_config_validates_itself_naming_the_parameter(kw, match):
    with pytest.raises(NestembError, match=match):
        ImageTrainConfig(**kw)


def test_augment_defaults_and_string_form():
    assert ImageTrainConfig().augment == ("shift",)  # flips off unless asked
    assert ImageTrainConfig(augment="flip").augment == ("flip",)
    assert ImageTrainConfig(augment=()).augment == ()


def test_augment_batch_shifts_and_flips():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3:5, 2:4] = 1.0  # a 2x2 blob away from the border survives any 2-pixel shift
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, ("shift",), 2)
    assert torch.all(y.sum(dim=(1, 2, 3)) == 4)
    assert len({tuple(v.nonzero()[0].tolist()) for v in y}) > 5  # the blob moved, differently
    z = augment_batch(x, g, ("flip",), 2)
    flipped = (z == x.flip(3)).all(dim=(1, 2, 3))
    kept = (z == x).all(dim=(1, 2, 3))
    assert torch.all(flipped | kept) and 10 < int(flipped.sum()) < 54
    assert augment_batch(x, g, (), 2).equal(x)


def test_device_validation():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NestembError, match="device must be one of"):
        resolve_device("cpu:1")
    if not torch.cuda.is_available():
        cfg = ImageTrainConfig(device="cuda")  # a config may be written for another machine
        x, y = _data()
        with pytest.raises(NestembError, match="device 'cuda' is not available"):
            train_image(make_model_config("mrl", dim=8, width=4), x, y, cfg, progress=False)


def test_training_restores_torch_threads():
    x, y = _data()
    before = torch.get_num_threads()
    cfg = make_model_config("mrl", dim=8, width=4)
    train_image(cfg, x, y, ImageTrainConfig(steps=1, threads=1, device="cpu"), progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n, expected", [(60000, 5000), (6000, 600), (2000, 200), (500, 100), (10, 2)])
def test_holdout_scales_with_the_data_set(n, expected):
    assert holdout_size(n) == expected


def test_trainer_records_the_scaled_holdout():
    x, y = _data(500)
    cfg = make_model_config("mrl", dim=8, width=4)
    _, info = train_image(cfg, x, y, ImageTrainConfig(steps=1, device="cpu", seed=4), progress=False)
    assert info["split"] == {"n": 500, "holdout": 100, "seed": 4}
    assert info["n_train"] == 400 and info["n_holdout"] == 100
    tr, ho = split_holdout(500, 100, 4)
    assert len(set(tr) & set(ho)) == 0 and len(tr) + len(ho) == 500


def test_trainer_rejects_bad_data():
    x, y = _data()
    cfg = make_model_config("mrl", dim=8, width=4)
    with pytest.raises(NestembError, match="labels must lie in 0..9"):
        train_image(cfg, x, y + 5, ImageTrainConfig(steps=1, device="cpu"), progress=False)
    with pytest.raises(NestembError, match="images must be uint8"):
        train_image(cfg, x.astype(np.float32), y, ImageTrainConfig(steps=1, device="cpu"), progress=False)
    with pytest.raises(NestembError, match="holdout of 64 images leaves none"):
        train_image(cfg, x, y, ImageTrainConfig(steps=1, holdout=64, device="cpu"), progress=False)


def test_cli_help_states_the_library_defaults():
    from nestemb.cli.image import _STEPS_HELP
    from nestemb.train.image import DEFAULT_EPOCHS

    assert f"{DEFAULT_EPOCHS} epochs" in _STEPS_HELP and f"{DEFAULT_MIN_STEPS} steps" in _STEPS_HELP
