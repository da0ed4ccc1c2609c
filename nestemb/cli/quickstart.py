"""``nestemb quickstart``: train an MRL image model on Fashion-MNIST with the default recipe,
evaluate every prefix and run the cascade, in one command (the ``image train`` and ``image eval``
steps of :mod:`nestemb.cli.image`, with their defaults). Its own module: it is a top-level
command, not a verb of the ``image`` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nestemb.checks import positive_int
from nestemb.cli.app import Device, app, check_out_dir, device_option, threads_option
from nestemb.cli.image import (_DATA_HELP, _STEPS_HELP, Classifier, Head, _console, _prepare,
                               calibration_text, method_results, print_results)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Output directory."),
    data: Optional[Path] = typer.Option(None, help=_DATA_HELP),
    steps: Optional[int] = typer.Option(None, help=_STEPS_HELP),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (instead of --steps)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: Device = device_option(),
    threads: Optional[int] = threads_option(),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Train an MRL model on Fashion-MNIST (nesting 2, 4, ... 256) with the default recipe,
    evaluate every prefix, run the cascade; writes OUT/model/, OUT/results.json and
    OUT/accuracy_vs_dim.png."""
    from nestemb.device import torch_threads
    from nestemb.eval.image import evaluate_image_model
    from nestemb.io import atomic_dir, write_json
    from nestemb.models.image import write_model_files
    from nestemb.plotting import line_plot
    from nestemb.progress import plural
    from nestemb.train.image import train_image

    positive_int(threads, "threads", allow_none=True)
    check_out_dir(out, overwrite, "quickstart")
    mcfg, tcfg, folder, train, test = _prepare(
        data, None, 256, Head.mrl, None, Classifier.linear, steps=steps, epochs=epochs, seed=seed,
        device=device.value, threads=threads,
    )  # fmt: skip
    console = _console()
    console.print(f"quickstart: MRL on {folder}, nesting {mcfg.nesting}")
    with atomic_dir(out, kind="quickstart", overwrite=overwrite) as tmp:
        model, info = train_image(mcfg, *train, tcfg, model_id="nestemb-cnn-mrl")
        (tmp / "model").mkdir()
        man = write_model_files(model, tmp / "model", "nestemb-cnn-mrl",
                                {"split": info["split"], "data": str(folder), "training": info})  # fmt: skip
        console.print(f"evaluating every prefix (1-NN over the {len(train[0]):,} training images) ...")
        model.manifest = man  # evaluate with the split just recorded in model/manifest.json
        from nestemb.progress import progress_stages

        with torch_threads(threads), progress_stages() as upd:
            ev = evaluate_image_model(model, train, test, progress=upd)
        dims = ev["dims"]
        results = {
            "dims": dims, "mrl": method_results(ev), "cascade": ev["cascade"],
            "calibration": ev["calibration"], "train_seconds": info["train_seconds"],
            "eval_seconds": ev["eval_seconds"], "epochs": info["epochs"], "steps": info["steps"],
            "seed": seed, "data": str(folder), "model": "model", "model_id": man.model_id,
            "model_version": man.model_version, "training": info,
        }  # fmt: skip
        write_json(tmp / "results.json", results)
        line_plot(tmp / "accuracy_vs_dim.png", dims,
                  {"linear top-1": ev["linear_top1"], "1-NN top-1": ev["knn_top1"], "mAP@10": ev["map10"]},
                  xlabel="embedding dimension (prefix)", ylabel="test",
                  title=f"MRL, {info['steps']} steps")  # fmt: skip
    title = (f"MRL on {folder.name} ({plural(info['epochs'], 'epoch')}, "
             f"{plural(info['steps'], 'step')})")
    print_results(console, dims, results["mrl"], ev["cascade"], title)
    console.print(calibration_text(ev["calibration"]), soft_wrap=True)
    console.print(f"train {info['train_seconds']:.0f} s, eval {ev['eval_seconds']:.0f} s; wrote {out}/")
