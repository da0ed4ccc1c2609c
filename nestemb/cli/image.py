"""CLI for the image area: ``nestemb image train``, ``nestemb image eval`` and ``nestemb image
extract`` (a submodel of an elastic model; the top-level ``nestemb quickstart``, which runs train
and eval, is :mod:`nestemb.cli.quickstart`).

The commands parse strings (``--nesting``, ``--weights``, ``--augment``) into typed values, build
:class:`~nestemb.train.image.ImageTrainConfig` and call the library; every input is validated
before anything is written, and output directories are built in a temporary sibling and renamed
at the end (:func:`nestemb.io.atomic_dir`), so a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from nestemb.cli.app import (Device, app, check_cpu_device, check_out_dir, check_out_file, choices,
                             device_option, renamed, threads_option, write_result)
from nestemb.checks import positive_int
from nestemb.errors import NestembError

image_app = typer.Typer(
    help="Image encoders: train nested (Matryoshka) CNNs on IDX data, evaluate every prefix.",
    no_args_is_help=True,
)
app.add_typer(image_app, name="image")

_DATA_HELP = (
    "Folder with an MNIST-style IDX pair (train-* and t10k-*). Default: $NESTEMB_DATA, "
    "../shared/data/fashion-mnist, /usr/share/datasets/fashion-mnist."
)
_AUGMENT_HELP = "Comma list of shift (random shifts of --shift pixels) and flip (horizontal), or none."
_STEPS_HELP = "Optimizer steps (default: 15 epochs, but at least 1500 steps on small data sets)."
# the Mix'n'Match family (nestemb.models.image.mix_lists), as three options' help describes it
_MIX_FAMILY_HELP = "two neighbouring widths, narrowing with depth in a cnn or mlp, widening in a vit"
CALIBRATION_IMAGES = 2000
"""Training images ``image extract`` recalibrates a mixed-width submodel's batch norms on."""


# nestemb.models.image.HEADS (importing it loads torch, too slow for `nestemb --help`; a test
# holds the two equal)
Head = choices("Head", "mrl", "mrl-e", "ff")
Arch = choices("Arch", "cnn", "mlp", "vit")  # nestemb.models.image.ARCHS (a test holds them equal)
Classifier = choices("Classifier", "linear", "cosine")
CompatMethod = choices("CompatMethod", "prefix", "bct", "simplex")


def _console():
    from rich.console import Console

    return Console()


def parse_augment(text: str) -> tuple[str, ...]:
    """``--augment`` as a tuple of augmentation names (``none`` or empty: no augmentation).

    Example:
        >>> parse_augment("shift, flip"), parse_augment("none")
        (('shift', 'flip'), ())
        >>> parse_augment("shift,rotate")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --augment takes shift, flip or none, got 'rotate'
    """
    from nestemb.errors import NestembError
    from nestemb.train.image import AUGMENTS

    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if names in ((), ("none",)):
        return ()
    for n in names:
        if n not in AUGMENTS:
            raise NestembError(f"--augment takes {', '.join(AUGMENTS)} or none, got {n!r}")
    return names


def _load_data(data: Optional[Path]):
    from nestemb.data.idx import load_idx
    from nestemb.data.paths import resolve_fashion_mnist
    from nestemb.errors import NestembError

    folder = resolve_fashion_mnist(data)
    train, test = load_idx(folder, "train"), load_idx(folder, "t10k")
    if test[0].shape[1:] != train[0].shape[1:]:
        raise NestembError(f"{folder}: train and t10k images differ in size")
    return folder, train, test


def _prepare(data, dims, dim, head, weights, classifier, widths=None, arch="cnn", **train_kw):
    """Validate every option, then load the data: (model config, train config, folder, train, test)."""
    from nestemb.cli.parse import parse_dims, parse_floats
    from nestemb.errors import NestembError
    from nestemb.losses import check_weights
    from nestemb.models.image import make_model_config
    from nestemb.train.image import ImageTrainConfig, check_width_settings

    if train_kw.get("epochs") is not None and train_kw.get("steps") is not None:
        raise NestembError("give --epochs or --steps, not both")
    if "always_widths" in train_kw:
        train_kw["always_widths"] = parse_floats(train_kw["always_widths"], "--always-widths")
    tcfg = ImageTrainConfig(weights=parse_floats(weights), **train_kw)
    dims_t = parse_dims(dims, "--nesting")
    kw = dict(dim=dim, dims=dims_t, cosine=classifier == Classifier.cosine,
              widths=parse_floats(widths, "--widths"), arch=arch)
    mcfg = make_model_config(head.value, **kw)
    check_width_settings(tcfg, mcfg.widths)
    if tcfg.weights is not None:
        check_weights(tcfg.weights, mcfg.nesting)
    folder, train, test = _load_data(data)
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    mcfg = make_model_config(head.value, num_classes=num_classes, images=train[0], **kw)
    return mcfg, tcfg, folder, train, test


def method_results(ev: dict) -> dict:
    """The per-prefix fields of an evaluation, as stored under a method's key in results files.

    Example:
        >>> method_results({"dims": [2], "linear_top1": [0.9], "knn_top1": [0.8], "map10": [0.7]})
        {'linear_top1': [0.9], 'knn_top1': [0.8], 'map10': [0.7]}
    """
    return {k: ev[k] for k in ("linear_top1", "knn_top1", "map10")}


def calibration_text(calib: dict) -> str:
    """One line saying which split calibrated the cascade.

    Example:
        >>> calibration_text({"source": "manifest", "n": 100, "holdout": 20, "seed": 0})
        'cascade calibrated on 20 of the 100 training images held out (seed 0; split from the manifest)'
    """
    if calib.get("source") is None:
        return f"no cascade: {calib.get('reason')}"
    where = "the manifest" if calib["source"] == "manifest" else "--holdout/--seed"
    return (f"cascade calibrated on {calib['holdout']} of the {calib['n']} training images held "
            f"out (seed {calib['seed']}; split from {where})")  # fmt: skip


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



@image_app.command("train", cls=renamed({"--dims": "--nesting"}))
def train_cmd(
    out: Path = typer.Option(..., help="Output model directory (weights + manifest.json)."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    steps: Optional[int] = typer.Option(None, help=_STEPS_HELP),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (instead of --steps)."),
    # named dims as in make_model_config, so that the library's errors about dims name --nesting
    dims: Optional[str] = typer.Option(
        None, "--nesting",
        help="Nesting, e.g. 2,4,8,...,256 (last = --dim). For --head ff: one size m (FF-m)."
    ),
    dim: int = typer.Option(256, help="Embedding (encoder output) dimension."),
    head: Head = typer.Option(Head.mrl, help="mrl (a head per prefix), mrl-e (weight-tied) or ff."),
    arch: Arch = typer.Option(
        Arch.cnn, help="Encoder: cnn (5 conv layers), mlp (2 hidden layers of 512) or vit (a small "
        "vision transformer: 4x4 patches, 4 blocks of 64-d tokens, 4 heads; with --widths its "
        "feed-forward layers nest, MatFormer-style)."),
    weights: Optional[str] = typer.Option(
        None, help="Per-prefix loss weights, one per nesting entry (default 2,1,1,...)."
    ),
    widths: Optional[str] = typer.Option(
        None, help="Nested encoder widths trained together (MatFormer-style), ascending fractions "
        "ending at 1, e.g. 0.125,0.25,0.5,1: each step trains the full width, the smallest and "
        "one other; cut a submodel out with `nestemb image extract`. Default: an ordinary model."),
    width_distill: float = typer.Option(
        0.0, help="With --widths: weight of the smaller widths' in-place distillation to the full "
        "width (prefix cosine). Helps a submodel's queries search the full model's gallery "
        "(10 measured best on the MLP); 0 = off."),
    widths_per_step: int = typer.Option(
        3, help="With --widths: granularities trained per step: the full width, the smallest and "
        "N-2 others at random (3, the default, is the sandwich rule; the number of --widths "
        "trains every one, MatFormer's joint loss, at a higher step cost)."),
    unbiased_widths: bool = typer.Option(
        False, "--unbiased-widths/--no-unbiased-widths", help="With --widths: weight each sampled "
        "middle width's loss so that a step's expected loss is the loss at every width (at the "
        "sampled step's cost)."),
    always_widths: Optional[str] = typer.Option(
        None, help="With --widths: the widths besides the full one that every step trains, e.g. "
        "0.5 (default: the smallest, the sandwich rule); the others are sampled. Naming the widest "
        "ones trains them every step at less than the cost of training all."),
    mixed_widths: float = typer.Option(
        0.0, help="With --widths: the probability that a sampled width is replaced by a random "
        f"Mix'n'Match list (one width per layer, {_MIX_FAMILY_HELP}), so that Mix'n'Match "
        "submodels of a CNN or MLP work; 0 = off."),
    seed: int = typer.Option(0, help="Random seed (weights, split, shuffling, augmentation)."),
    classifier: Classifier = typer.Option(Classifier.linear, help="Heads: linear, or cosine on prefix views."),
    batch_size: int = typer.Option(256, help="Batch size."),
    lr: float = typer.Option(4e-3, help="Peak learning rate of the one-cycle schedule."),
    holdout: Optional[int] = typer.Option(
        None, help="Training images held out for cascade calibration (default: 10%, 200..5000)."
    ),
    augment: str = typer.Option("shift", help=_AUGMENT_HELP),
    shift: int = typer.Option(2, help="Largest random shift in pixels (with --augment shift)."),
    model_id: str = typer.Option("nestemb-cnn", help="Readable model name for the manifest (the version is the weights' hash)."),
    device: Device = device_option(),
    threads: Optional[int] = threads_option(),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    checkpoints: bool = typer.Option(True, help="Keep about ten model checkpoints along the way."),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, help="Write the checkpoints (epoch-E/: model + trainer-state.pt) here instead of "
        "OUT/checkpoints: a folder outside the output survives an interrupted run, and running "
        "the same command again continues it."),
    resume: Optional[bool] = typer.Option(
        None, "--resume/--no-resume", help="Continue from the latest checkpoint of "
        "--checkpoint-dir (or of OUT/checkpoints, with --overwrite). Default: continue when "
        "--checkpoint-dir holds one; --resume fails without one; --no-resume starts over."),
    compatible_with: Optional[Path] = typer.Option(
        None, help="Old model directory: train the new model so that its queries search the "
        "old model's stored gallery (no re-encoding)."),
    compat: Optional[CompatMethod] = typer.Option(
        None, help="prefix (default with --compatible-with): the old classifier on every old "
        "prefix + distillation + new queries contrasted against the old vectors of their class "
        "+ an orthogonal layer; bct: the old classifier on the new "
        "features; simplex: a fixed d-simplex classifier (no old model; use it for every model "
        "of a chain)."),
) -> None:
    """Train an image encoder with Matryoshka heads on an IDX data set; save it to --out.
    With --compatible-with / --compat the new model stays compatible with an older one.
    Under ``torchrun --nproc_per_node N`` it trains data-parallel; only rank 0 writes and prints."""
    from nestemb.distributed import env_from_torchrun, main_process_dir
    from nestemb.io import write_json
    from nestemb.models.image import write_model_files
    from nestemb.train.image import train_image

    env = env_from_torchrun()  # rank 0 writes the output and prints; the others only train
    positive_int(threads, "threads", allow_none=True)
    if widths is not None and (compatible_with is not None or compat is not None):
        raise NestembError("--widths and --compatible-with/--compat do not combine: train the "
                           "elastic model without them")
    if widths is not None and env.is_distributed:
        raise NestembError(f"--widths trains in one process: start it without torchrun "
                           f"(WORLD_SIZE={env.world_size})")
    if width_distill and widths is None:
        raise NestembError("--width-distill applies only with --widths")
    if widths_per_step != 3 and widths is None:
        raise NestembError("--widths-per-step applies only with --widths")
    if unbiased_widths and widths is None:
        raise NestembError("--unbiased-widths applies only with --widths")
    if always_widths is not None and widths is None:
        raise NestembError("--always-widths applies only with --widths")
    if mixed_widths and widths is None:
        raise NestembError("--mixed-widths applies only with --widths")
    check_out_dir(out, overwrite, "image-model")  # before the data set is loaded
    resume_from = _resume_point(out, checkpoints, checkpoint_dir, resume, overwrite)
    mcfg, tcfg, folder, train, _test = _prepare(
        data, dims, dim, head, weights, classifier, widths, arch.value, steps=steps, epochs=epochs, seed=seed,
        batch_size=batch_size, lr=lr, holdout=holdout, augment=parse_augment(augment),
        shift=shift, threads=threads, device=device.value, width_distill=width_distill,
        widths_per_step=widths_per_step, unbiased_widths=unbiased_widths,
        always_widths=always_widths, mixed_widths=mixed_widths,
    )  # fmt: skip
    compat_cfg = _compat_config(compatible_with, compat, mcfg)
    console = _console()
    if env.is_main:
        console.print(f"training {head.value} {arch.value} on {folder}: nesting {mcfg.nesting}"
                      + (f"; widths {mcfg.widths}" if mcfg.widths else "")
                      + (f"; compatible ({compat_cfg.method})" if compat_cfg else "")
                      + (f"; {env.world_size} processes" if env.is_distributed else "")
                      + (f"; resuming from {resume_from}" if resume_from else ""))
    with main_process_dir(out, env, kind="image-model", overwrite=overwrite) as tmp:
        ckpt = None
        if checkpoints:
            ckpt = checkpoint_dir if checkpoint_dir is not None else tmp / "checkpoints"
            if env.is_main and checkpoint_dir is None and resume_from is not None:
                # resuming from OUT/checkpoints: the new output keeps the earlier epochs
                shutil.copytree(resume_from.parent, ckpt, dirs_exist_ok=True)
            if env.is_main and checkpoint_dir is not None and resume_from is None:
                _clear_checkpoints(checkpoint_dir)  # --no-resume --overwrite: start over
        try:
            model, info = train_image(mcfg, *train, tcfg, model_id=model_id, compat=compat_cfg,
                                      checkpoint_dir=ckpt, resume_from=resume_from)  # fmt: skip
        except NestembError as e:
            if e.param == "resume_from":  # a folder the CLI found from --resume, not a flag
                raise NestembError(f"--resume: {e.template} (give the options of that run, or "
                                   "--no-resume --overwrite to start over)") from None
            raise
        if checkpoint_dir is not None:
            info["checkpoint_dir"] = str(checkpoint_dir)
        extra = {"split": info["split"], "data": str(folder), "training": info}
        if compat_cfg is not None:
            extra["compat"] = info["compat"]
        man = write_model_files(model, tmp, model_id, extra)
        write_json(tmp / "train.json", info)
    if env.is_main:
        console.print(f"saved {out} ({model_id} version {man.model_version}; {info['steps']} "
                      f"steps, {info['train_seconds']:.1f} s training)")  # fmt: skip


def _resume_point(out: Path, checkpoints: bool, checkpoint_dir: Optional[Path],
                  resume: Optional[bool], overwrite: bool) -> Optional[Path]:
    """The checkpoint ``image train`` continues from (``None``: a fresh run), checked before
    any data is read: ``--resume`` without a checkpoint, ``--no-resume`` over the checkpoints
    of an earlier run without ``--overwrite``, and contradicting flags are refused.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _resume_point(d / "out", True, d / "ck", None, False) is None   # nothing to resume
        True
        >>> _resume_point(d / "out", True, d / "ck", True, False)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: --resume: no checkpoint (epoch-E/trainer-state.pt) in .../ck
    """
    from nestemb.train.image import STATE_NAME, latest_checkpoint

    if not checkpoints and (resume or checkpoint_dir is not None):
        raise NestembError(f"{'--resume' if resume else '--checkpoint-dir'} needs checkpoints: "
                           "drop --no-checkpoints")
    if checkpoint_dir is not None and checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise NestembError(f"--checkpoint-dir exists and is not a directory: {checkpoint_dir}")
    if checkpoint_dir is not None and checkpoint_dir.resolve() == out.resolve():
        raise NestembError("--checkpoint-dir must not be --out (the output is replaced as a whole)")
    source = checkpoint_dir if checkpoint_dir is not None else out / "checkpoints"
    found = latest_checkpoint(source) if checkpoints else None
    if resume is False or (resume is None and checkpoint_dir is None):
        if found is not None and checkpoint_dir is not None and not overwrite:
            raise NestembError(f"--checkpoint-dir {checkpoint_dir} holds checkpoints of an earlier "
                               f"run ({found.name}): continue it with --resume, or add "
                               "--overwrite to start over")  # fmt: skip
        return None
    if found is None and resume:
        raise NestembError(f"--resume: no checkpoint (epoch-E/{STATE_NAME}) in {source}")
    return found


def _clear_checkpoints(folder: Path) -> None:
    """Remove the ``epoch-E`` checkpoint folders of an earlier run from ``folder``."""
    from nestemb.train.image import STATE_NAME

    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith("epoch-") and (p / STATE_NAME).is_file():
                shutil.rmtree(p)


def _compat_config(old_dir: Optional[Path], method: Optional[CompatMethod], mcfg):
    """The compatible-training setup of ``image train`` (None without the flags), checked
    against the new model's config before any training."""
    from nestemb.train.compatible import CompatConfig
    from nestemb.errors import NestembError
    from nestemb.models.image import load_image_model

    if old_dir is None and method is None:
        return None
    method = method or CompatMethod.prefix
    if method is CompatMethod.simplex:
        if old_dir is not None:
            raise NestembError("--compat simplex uses no old model: drop --compatible-with (train "
                               "every model of the chain with --compat simplex)")
        return CompatConfig.simplex_classifier()
    if old_dir is None:
        raise NestembError(f"--compat {method.value} needs --compatible-with OLD_MODEL_DIR")
    if not old_dir.is_dir():
        raise NestembError(f"--compatible-with: model directory not found: {old_dir}")
    old = load_image_model(old_dir)
    cfg = CompatConfig.prefix(old) if method is CompatMethod.prefix else CompatConfig.bct(old)
    try:
        cfg.check_against(mcfg)
    except NestembError as e:
        raise NestembError(f"--compatible-with {old_dir}: {e}") from None
    return cfg


@image_app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., help="Model directory written by `nestemb image train`."),
    out: Path = typer.Option(..., help="Results JSON file."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    holdout: Optional[int] = typer.Option(None, help="Calibrate the cascade on this many training images instead of the model's recorded hold-out."),
    seed: int = typer.Option(0, help="Seed of the --holdout split (only with --holdout)."),
    device: Device = device_option("cpu or auto: image models are evaluated on the cpu"),
    threads: Optional[int] = threads_option(),
    overwrite: bool = typer.Option(False, help="Replace an existing results file."),
) -> None:
    """Evaluate every prefix of a saved image model (linear and 1-NN top-1, mAP@10, cascade)."""
    from nestemb.errors import NestembError
    from nestemb.eval.image import evaluate_image_model
    from nestemb.models.image import load_image_model
    from nestemb.device import torch_threads

    positive_int(threads, "threads", allow_none=True)
    check_cpu_device(device, "image eval")
    check_out_file(out, overwrite)
    m = load_image_model(model)
    folder, train, test = _load_data(data)
    if tuple(train[0].shape[1:]) != m.config.in_hw:
        raise NestembError(f"{folder} holds {train[0].shape[1:]} images, the model takes {m.config.in_hw}")
    from nestemb.progress import progress_stages

    with torch_threads(threads), progress_stages() as upd:
        ev = evaluate_image_model(m, train, test, holdout=holdout,
                                  seed=seed if holdout is not None else None, progress=upd)  # fmt: skip
    head = m.config.head
    res = {"dims": ev["dims"], head: method_results(ev), "cascade": ev["cascade"],
           "calibration": ev["calibration"], "model": str(model), "model_id": m.manifest.model_id,
           "model_version": m.manifest.model_version, "data": str(folder),
           "eval_seconds": ev["eval_seconds"]}  # fmt: skip
    write_result(out, res)
    console = _console()
    print_results(console, ev["dims"], res[head], ev["cascade"], f"{head} on {folder}")
    console.print(calibration_text(ev["calibration"]), soft_wrap=True)


@image_app.command("extract")
def extract_cmd(
    model: Path = typer.Option(..., help="Elastic model directory (trained with `nestemb image train --widths`)."),
    out: Path = typer.Option(..., help="Output model directory: an ordinary, smaller model (weights + manifest.json naming the parent)."),
    width: Optional[float] = typer.Option(None, help="One trained width for every layer, e.g. 0.25."),
    widths_per_layer: Optional[str] = typer.Option(
        None, help="One trained width per layer (Mix'n'Match; 5 for a cnn, 2 for an mlp, 4 for a "
        "vit: one per block), e.g. 0.5,0.5,0.5,0.25,0.25 (--budget picks and --mixed-widths trains "
        f"lists of {_MIX_FAMILY_HELP})."),
    budget: Optional[float] = typer.Option(
        None, help="Pick the widths per layer for this fraction of the full model's "
        f"multiply-adds, e.g. 0.3: the costliest list within it of {_MIX_FAMILY_HELP}."),
    model_id: Optional[str] = typer.Option(
        None, help="Readable name for the submodel's manifest (default: the parent's, with the "
        "width appended)."),
    calibrate: Optional[int] = typer.Option(
        None, help="Re-estimate the submodel's batch-norm statistics on this many of the parent's "
        f"training images (0: none). Default: {CALIBRATION_IMAGES} for mixed widths per layer "
        "(their batch norms were trained inside uniform widths), none for one width (trained "
        "as such) and for a vit (no batch norm)."),
    data: Optional[Path] = typer.Option(
        None, help="With --calibrate: the parent's IDX training data (default: the folder its "
        "manifest records, else as for `image train`)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Cut a submodel out of an elastic image model: an ordinary model whose embeddings equal
    the parent's at that width (unless recalibrated, see --calibrate) and search the parent's
    galleries and indexes without an adapter (their manifests name the parent)."""
    from nestemb.cli.parse import parse_floats
    from nestemb.models.elastic import batch_norms, extract, mix_n_match, multiply_adds
    from nestemb.models.image import check_model_id, load_image_model, save_image_model

    given = [flag for flag, v in (("--width", width), ("--widths-per-layer", widths_per_layer),
                                  ("--budget", budget)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise NestembError(f"give exactly one of --width, --widths-per-layer or --budget (got "
                           f"{', '.join(given) or 'none'})")
    if calibrate is not None and calibrate < 0:
        raise NestembError(f"{{param}} must be a number of images (0: none), got {calibrate}",
                           param="calibrate")
    if model_id is not None:
        check_model_id(model_id)  # before the data is read
    check_out_dir(out, overwrite, "image-model")
    if not model.is_dir():
        raise NestembError(f"--model: model directory not found: {model}")
    parent = load_image_model(model)
    if parent.config.widths is None:
        raise NestembError(f"--model {model} has no nested widths: train it with "
                           "`nestemb image train --widths ...` to extract submodels")
    chosen: object = width
    if widths_per_layer is not None:
        chosen = parse_floats(widths_per_layer, "--widths-per-layer")
    elif budget is not None:
        chosen = mix_n_match(parent.config, budget)
    try:
        ks = parent.layer_widths(chosen)
    except NestembError as e:
        if e.param == "width" and widths_per_layer is not None:  # the flag the user typed
            raise NestembError(e.template, param="widths_per_layer") from None
        raise
    has_bn = bool(batch_norms(parent))
    if calibrate and not has_bn:
        raise NestembError(f"{{param}}: the {parent.config.arch} has no batch norm (its layer norms "
                           "keep no statistics): there is nothing to recalibrate", param="calibrate")
    mixed = ks is not None and len(set(ks)) > 1
    n_calib = calibrate if calibrate is not None else (CALIBRATION_IMAGES if mixed and has_bn else 0)
    images, source = _calibration_images(parent, data, n_calib) if n_calib else (None, {})
    sub = extract(parent, chosen, model_id=model_id, calibration=images)
    assert sub.manifest is not None
    sl = sub.manifest.extra["slice"]
    if "calibration" in sl:
        sl["calibration"].update(source)
    save_image_model(sub, out, sub.manifest.model_id, sub.manifest.extra, overwrite=overwrite)
    full = multiply_adds(parent.config)
    calibrated = (f"; batch norms recalibrated on {sl['calibration']['images']} training images"
                  if "calibration" in sl else "")  # fmt: skip
    _console().print(f"saved {out} ({sub.manifest.model_id} version {sub.manifest.model_version}; "
                     f"widths {', '.join(f'{g:g}' for g in sl['layer_widths'])}, channels "
                     f"{tuple(sl['channels'])}, {sl['multiply_adds'] / full:.3f} of the full "
                     f"model's multiply-adds{calibrated}; parent {parent.manifest.model_id} "
                     f"{parent.manifest.model_version})", soft_wrap=True, highlight=False)


def _calibration_images(parent, data: Optional[Path], n: int):
    """``n`` of the images ``parent`` trained on, for :func:`nestemb.models.elastic.recalibrate`:
    a seeded draw (the split's seed) from its recorded training split, hold-out left out (it
    calibrates the cascade), from ``data`` or the folder its manifest records; and where they
    came from (recorded in the submodel's manifest)."""
    import numpy as np

    from nestemb.data.split import split_holdout

    extra = parent.manifest.extra
    recorded = extra.get("data")
    if data is None and recorded is not None and not Path(recorded).is_dir():
        raise NestembError(f"--calibrate needs the parent's training images and the folder it "
                           f"trained on is gone ({recorded}): give --data, or --calibrate 0 to "
                           "extract without recalibration")
    folder, train, _test = _load_data(data if data is not None else recorded)
    images = train[0]
    if tuple(images.shape[1:]) != parent.config.in_hw:
        raise NestembError(f"{{param}} {folder} holds {images.shape[1:]} images, the model takes "
                           f"{parent.config.in_hw}", param="data")
    split = extra.get("split") or {}
    seed, idx = int(split.get("seed", 0)), np.arange(len(images))
    if split:
        if int(split.get("n", len(images))) != len(images):
            raise NestembError(f"{{param}} {folder} holds {len(images)} training images; the "
                               f"model's split was drawn from {split['n']}: give the data it "
                               "trained on", param="data")
        idx = split_holdout(len(images), int(split["holdout"]), seed)[0]
    pick = np.sort(np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False))
    source = {"data": str(folder), "seed": seed,
              "from": "the training split (hold-out left out)" if split else "the training images"}
    return images[pick], source
