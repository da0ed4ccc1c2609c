"""CLI commands for the image area: ``train-image``, ``eval-image`` and ``quickstart``.

Every input is validated before anything is written; output directories are built in a
temporary sibling and renamed at the end (:func:`nestemb.io.atomic_dir`), so a failure leaves
nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import app

_DATA_HELP = (
    "Folder with an MNIST-style IDX pair (train-* and t10k-*). Default: $NESTEMB_DATA, "
    "../shared/data/fashion-mnist, /usr/share/datasets/fashion-mnist."
)


def _console():
    from rich.console import Console

    return Console()


def _prepare(data, epochs, dims, dim, head, weights, seed, classifier, **train_kw):
    """Validate every option, then load the data: returns (model config, train config, data)."""
    from nestemb.data.idx import load_idx
    from nestemb.data.paths import resolve_fashion_mnist
    from nestemb.errors import NestembError
    from nestemb.losses import check_weights
    from nestemb.nesting import parse_dims, parse_floats
    from nestemb.train.image import TrainConfig, make_model_config

    if classifier not in ("cosine", "linear"):
        raise NestembError(f"--classifier must be cosine or linear, got {classifier!r}")
    tcfg = TrainConfig(epochs=epochs, seed=seed, weights=parse_floats(weights), **train_kw)
    mcfg = make_model_config(head, dim=dim, dims=parse_dims(dims), cosine=classifier == "cosine")
    if tcfg.weights is not None:
        check_weights(tcfg.weights, mcfg.nesting)
    folder = resolve_fashion_mnist(data)
    train = load_idx(folder, "train")
    test = load_idx(folder, "t10k")
    if test[0].shape[1:] != train[0].shape[1:]:
        raise NestembError(f"{folder}: train and t10k images differ in size")
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    if tcfg.holdout > len(train[0]) // 5:  # small data sets: keep 80 % for training
        tcfg.holdout = len(train[0]) // 5
    mcfg = make_model_config(
        head, dim=dim, dims=parse_dims(dims), cosine=classifier == "cosine",
        num_classes=num_classes, images=train[0], width=mcfg.width,
    )  # fmt: skip
    return mcfg, tcfg, folder, train, test


def _train(mcfg, tcfg, train, progress=True, checkpoint_dir=None):
    from nestemb.train.image import train_image_model

    model, info = train_image_model(
        mcfg, tcfg, train[0], train[1], progress=progress, checkpoint_dir=checkpoint_dir
    )
    return model, info


def _split_extra(tcfg, folder, info) -> dict:
    return {
        "split": {"holdout": tcfg.holdout, "seed": tcfg.seed},
        "data": str(folder),
        "training": info,
    }


def method_results(ev: dict) -> dict:
    """The per-prefix fields of an evaluation, as stored under a method's key in results files.

    Example:
        >>> method_results({"dims": [2], "linear_top1": [0.9], "knn_top1": [0.8], "map10": [0.7]})
        {'linear_top1': [0.9], 'knn_top1': [0.8], 'map10': [0.7]}
    """
    return {k: ev[k] for k in ("linear_top1", "knn_top1", "map10")}


def print_results(console, dims, per: dict, cascade: list, title: str) -> None:
    """Rich tables of per-prefix metrics and of the cascade.

    Example:
        >>> import os; from rich.console import Console
        >>> c = Console(width=60, record=True, file=open(os.devnull, "w"))
        >>> print_results(c, [2], {"linear_top1": [0.9], "knn_top1": [0.8], "map10": [0.7]}, [], "t")
        >>> "0.9000" in c.export_text()
        True
    """
    from rich.table import Table

    t = Table(title=title)
    for col in ("dim", "linear top-1", "1-NN top-1", "mAP@10"):
        t.add_column(col, justify="right")
    for i, d in enumerate(dims):
        t.add_row(str(d), *(f"{per[k][i]:.4f}" for k in ("linear_top1", "knn_top1", "map10")))
    console.print(t)
    if cascade:
        c = Table(title="adaptive cascade (calibrated on the held-out training images)")
        for col in ("target drop", "calib. target", "test top-1", "expected dim"):
            c.add_column(col, justify="right")
        for row in cascade:
            c.add_row(
                f"{100 * row['drop']:.2f} pt", f"{row['target']:.4f}",
                f"{row['accuracy']:.4f}", f"{row['expected_dim']:.2f}",
            )  # fmt: skip
        console.print(c)


@app.command("train-image")
def train_image(
    out: Path = typer.Option(..., help="Output model directory (weights + manifest.json)."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    epochs: int = typer.Option(4, help="Training epochs (>= 1)."),
    dims: Optional[str] = typer.Option(
        None, help="Nesting, e.g. 2,4,8,...,256 (last = --dim). For --head ff: one size m (FF-m)."
    ),
    dim: int = typer.Option(256, help="Embedding (encoder output) dimension."),
    head: str = typer.Option("mrl", help="mrl (a head per prefix), mrl-e (weight-tied) or ff."),
    weights: Optional[str] = typer.Option(
        None, help="Per-prefix loss weights, one per nesting entry (default 2,1,1,...)."
    ),
    seed: int = typer.Option(0, help="Random seed (weights, split, shuffling, augmentation)."),
    classifier: str = typer.Option("linear", help="linear or cosine (on prefix views) heads."),
    batch_size: int = typer.Option(256, help="Batch size."),
    lr: float = typer.Option(4e-3, help="Peak learning rate of the one-cycle schedule."),
    holdout: int = typer.Option(5000, help="Training images held out for cascade calibration."),
    crop: int = typer.Option(0, help="Random-shift augmentation in pixels (0 = off)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    checkpoints: bool = typer.Option(True, help="Keep a model checkpoint after every epoch."),
) -> None:
    """Train an image encoder with Matryoshka heads on an IDX data set; save it to --out."""
    from nestemb.io import atomic_dir, write_json
    from nestemb.models.image import build_manifest, write_model_files

    mcfg, tcfg, folder, train, _test = _prepare(
        data, epochs, dims, dim, head, weights, seed, classifier,
        batch_size=batch_size, lr=lr, holdout=holdout, crop=crop, threads=threads,
    )  # fmt: skip
    console = _console()
    console.print(f"training {head} on {folder}: nesting {mcfg.nesting}, {epochs} epochs")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model, info = _train(mcfg, tcfg, train, checkpoint_dir=tmp / "checkpoints" if checkpoints else None)
        extra = _split_extra(tcfg, folder, info)
        write_model_files(model, tmp, build_manifest(model, f"nestemb-cnn-{head}", extra))
        write_json(tmp / "train.json", info)
    console.print(f"saved {out} ({info['train_seconds']:.1f} s training)")


@app.command("eval-image")
def eval_image(
    model: Path = typer.Option(..., help="Model directory written by train-image."),
    out: Path = typer.Option(..., help="Results JSON file."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Evaluate every prefix of a saved image model (linear and 1-NN top-1, mAP@10, cascade)."""
    from nestemb.data.idx import load_idx
    from nestemb.data.paths import resolve_fashion_mnist
    from nestemb.errors import NestembError
    from nestemb.eval.image import evaluate_image_model
    from nestemb.io import write_json
    from nestemb.models.image import load_image_model

    if out.exists() and out.is_dir():
        raise NestembError(f"--out must be a file path, {out} is a directory")
    m = load_image_model(model, threads=threads)
    folder = resolve_fashion_mnist(data)
    train, test = load_idx(folder, "train"), load_idx(folder, "t10k")
    if tuple(train[0].shape[1:]) != m.config.in_hw:
        raise NestembError(f"{folder} holds {train[0].shape[1:]} images, the model takes {m.config.in_hw}")
    ev = evaluate_image_model(m, train, test)
    head = m.config.head
    res = {"dims": ev["dims"], head: method_results(ev), "cascade": ev["cascade"],
           "model": str(model), "data": str(folder), "eval_seconds": ev["eval_seconds"]}  # fmt: skip
    write_json(out, res)
    print_results(_console(), ev["dims"], res[head], ev["cascade"], f"{head} on {folder}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Output directory."),
    epochs: int = typer.Option(4, help="Training epochs."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Train an MRL model on Fashion-MNIST (nesting 2, 4, ... 256), evaluate every prefix, run the
    cascade; writes OUT/model/, OUT/results.json and OUT/accuracy_vs_dim.png."""
    from nestemb.errors import NestembError
    from nestemb.eval.image import evaluate_image_model
    from nestemb.io import atomic_dir, write_json
    from nestemb.models.image import build_manifest, write_model_files
    from nestemb.plotting import line_plot

    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NestembError(f"output directory already exists and is not empty: {out} (use --overwrite)")
    mcfg, tcfg, folder, train, test = _prepare(data, epochs, None, 256, "mrl", None, seed, "linear")
    console = _console()
    console.print(f"quickstart: MRL on {folder}, nesting {mcfg.nesting}, {epochs} epochs, 2 threads")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model, info = _train(mcfg, tcfg, train)
        (tmp / "model").mkdir()
        write_model_files(model, tmp / "model", build_manifest(model, "nestemb-cnn-mrl", _split_extra(tcfg, folder, info)))
        console.print("evaluating every prefix (1-NN over the 60,000 training images) ...")
        ev = evaluate_image_model(model, train, test, holdout=tcfg.holdout, seed=tcfg.seed)
        dims = ev["dims"]
        results = {
            "dims": dims, "mrl": method_results(ev), "cascade": ev["cascade"],
            "train_seconds": info["train_seconds"], "eval_seconds": ev["eval_seconds"],
            "epochs": epochs, "seed": seed, "data": str(folder), "model": "model",
            "training": info,
        }  # fmt: skip
        write_json(tmp / "results.json", results)
        line_plot(tmp / "accuracy_vs_dim.png", dims,
                  {"linear top-1": ev["linear_top1"], "1-NN top-1": ev["knn_top1"], "mAP@10": ev["map10"]},
                  xlabel="embedding dimension (prefix)", ylabel="Fashion-MNIST test",
                  title=f"MRL, {epochs} epochs")  # fmt: skip
    print_results(console, dims, results["mrl"], ev["cascade"], f"MRL on Fashion-MNIST ({epochs} epochs)")
    console.print(f"train {info['train_seconds']:.0f} s, eval {ev['eval_seconds']:.0f} s; wrote {out}/")
