"""CLI commands for the text area: ``nestemb text train | extract | eval-retrieval | eval-sts``.

The commands only translate flags (comma lists, enums) into the typed library calls of
:mod:`nestemb.text.train` and :mod:`nestemb.text.evaluate`; every check lives there.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from nestemb.cli.app import (Device, app, check_out_dir, check_out_file, device_option, renamed,
                             threads_option, write_result)
from nestemb.checks import positive_int
from nestemb.errors import NestembError
from nestemb.text.train import RECIPE_DEFAULTS, DistillSource, TextRecipe as Recipe

text_app = typer.Typer(help="Text encoders: train nested (Matryoshka) models, evaluate them.",
                       no_args_is_help=True)
app.add_typer(text_app, name="text")


_MODEL_HELP = "'minilm' (bundled all-MiniLM-L6-v2) or a sentence-transformers folder"



def _ints(text: Optional[str], flag: str):
    from nestemb.cli.parse import parse_ints

    return parse_ints(text, flag)


def _dims(text: Optional[str], flag: str = "--dims"):
    from nestemb.cli.parse import parse_dims

    return parse_dims(text, flag)


def _recipe_default(name: str) -> str:
    """The recipes' defaults of one setting for ``--help``: ``20`` when they agree, else
    ``finetune 300, projection 600``."""
    vals = {r: d[name] for r, d in RECIPE_DEFAULTS.items()}
    if len(set(vals.values())) == 1:
        return f"{next(iter(vals.values())):g}"
    return ", ".join(f"{r} {v:g}" for r, v in vals.items())


def _fmt(xs) -> str:
    if xs and isinstance(xs[0], list):
        return " | ".join(_fmt(x) for x in xs)
    return " ".join(f"{x:.4f}" for x in xs)


# Options shared by the evaluation commands (one definition, the same flag everywhere).
_OUT_JSON = typer.Option(..., help="result JSON file")
_MODEL = typer.Option("minilm", help=_MODEL_HELP)
_DIMS = typer.Option(None, help="prefix sizes, e.g. 32,64,384 (default: the model's nesting)")
_LAYERS = typer.Option(None, help="exit layers, e.g. 2,4,6 (per-layer results)")
_BATCH = typer.Option(64, help="encoding batch size")
_DEVICE = device_option()
_THREADS = threads_option()
_OVERWRITE_OUT = typer.Option(False, help="replace an existing --out file")


@text_app.command("eval-retrieval")
def eval_retrieval(
    beir: Path = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"),
    out: Path = _OUT_JSON,
    split: str = typer.Option("test", help="qrels split"),
    model: str = _MODEL,
    dims: Optional[str] = _DIMS,
    layers: Optional[str] = _LAYERS,
    batch_size: int = _BATCH,
    device: Device = _DEVICE,
    threads: Optional[int] = _THREADS,
    overwrite: bool = _OVERWRITE_OUT,
) -> None:
    """nDCG@10 and recall@100 on a BEIR split at every prefix (and layer)."""
    from nestemb.text.evaluate import run_eval_retrieval

    _evaluate(run_eval_retrieval, beir, model, dims, layers, batch_size, device, threads, out,
              overwrite, ("ndcg10", "ndcg@10"), ("recall100", "recall@100"), split=split)


@text_app.command("eval-sts")
def eval_sts(
    sts: Path = typer.Option(..., help="STS-B format TSV (score in column 5, sentences in 6 and 7)"),
    out: Path = _OUT_JSON,
    model: str = _MODEL,
    dims: Optional[str] = _DIMS,
    layers: Optional[str] = _LAYERS,
    batch_size: int = _BATCH,
    device: Device = _DEVICE,
    threads: Optional[int] = _THREADS,
    overwrite: bool = _OVERWRITE_OUT,
) -> None:
    """Spearman correlation on an STS-B TSV at every prefix (and layer)."""
    from nestemb.text.evaluate import run_eval_sts

    _evaluate(run_eval_sts, sts, model, dims, layers, batch_size, device, threads, out,
              overwrite, ("spearman", "spearman"))


def _evaluate(run, data: Path, model: str, dims, layers, batch_size: int, device, threads,
              out: Path, overwrite: bool, *shown: tuple[str, str], **kw) -> None:
    """Run one evaluation (``run(data, model, dims, layers, ...)``) under ``--threads``, print
    the ``shown`` (key, label) rows and write the result file."""
    from nestemb.device import torch_threads

    positive_int(threads, "threads", allow_none=True)
    check_out_file(out, overwrite)
    with torch_threads(threads):
        res = run(data, model, _dims(dims), _ints(layers, "--layers"), batch_size=batch_size,
                  device=device.value, show_progress=True, **kw)
    typer.echo("\n".join([f"dims {res['dims']}"] + [f"{label} {_fmt(res[key])}"
                                                     for key, label in shown]))
    write_result(out, res)


@text_app.command("train", cls=renamed({"--dims": "--nesting"}))
def train(
    out: Path = typer.Option(..., help="output model folder (must not exist unless --overwrite)"),
    beir: List[Path] = typer.Option([], help="BEIR folder: query/document pairs of --split (repeatable)"),
    split: str = typer.Option("train", help="qrels split of every --beir folder"),
    sts: List[Path] = typer.Option([], help="STS-B TSV: graded pairs (repeatable)"),
    nli: List[Path] = typer.Option([], help="SNLI folder: triplets (repeatable)"),
    pairs: List[Path] = typer.Option([], help="TSV of anchor<TAB>positive[<TAB>negative] (repeatable)"),
    base: str = typer.Option("minilm", help="the model training starts from (its weights are "
                             "the starting point, not the model a command runs): " + _MODEL_HELP),
    model_id: Optional[str] = typer.Option(None, help="name stored in the manifest (default: the --out folder name)"),
    recipe: Recipe = typer.Option(Recipe.auto, help="projection: frozen encoder + learned projection (CPU minutes); finetune: all weights (GPU); auto: by device"),
    # named dims as in TextTrainConfig, so that the library's errors about dims name --nesting
    dims: Optional[str] = typer.Option(None, "--nesting", help="nesting, default 32,64,128,256,WIDTH"),
    weights: Optional[str] = typer.Option(None, help="loss weight per prefix, e.g. 2,1,1,1,1"),
    layers: Optional[str] = typer.Option(None, help="exit layers: layer x dimension mode (finetune)"),
    steps: Optional[int] = typer.Option(None, help=f"optimizer steps (default by recipe: {_recipe_default('steps')})"),
    batch_size: Optional[int] = typer.Option(None, help=f"pairs per batch (default by recipe: {_recipe_default('batch_size')})"),
    lr: Optional[float] = typer.Option(None, help=f"learning rate (default by recipe: {_recipe_default('lr')})"),
    seed: int = typer.Option(0, help="random seed"),
    distill_weight: Optional[float] = typer.Option(None, help=f"weight of keeping the base model's similarities at every prefix; on by default (default {_recipe_default('distill_weight')}; 0 turns it off)"),
    distill_source: DistillSource = typer.Option(DistillSource.batch, help="finetune: distill on the pair batch, an unlabeled pool, or both"),
    self_distill_weight: float = typer.Option(0.0, help="KL of earlier exits toward the last (layer mode)"),
    hard_negatives: bool = typer.Option(True, help="mine one hard negative per BEIR pair with the base"),
    max_seq_length: Optional[int] = typer.Option(None, help="truncate texts to this many tokens"),
    widths: Optional[str] = typer.Option(
        None, help="nested feed-forward widths trained together (MatFormer-style), ascending "
        "fractions ending at 1, e.g. 0.125,0.25,0.5,1: each step trains the full width, the "
        "smallest and one other; needs the finetune recipe (auto picks it); cut a submodel out "
        "with `nestemb text extract`. Default: the full width only"),
    device: Device = _DEVICE,
    threads: Optional[int] = _THREADS,
    overwrite: bool = typer.Option(False, help="replace an existing --out folder"),
) -> None:
    """Train a nested text encoder: every prefix (and exit layer) a good embedding.
    Under ``torchrun --nproc_per_node N`` it trains data-parallel; only rank 0 saves and prints."""
    from nestemb.cli.parse import parse_floats
    from nestemb.device import resolve_device, torch_threads
    from nestemb.distributed import env_from_torchrun
    from nestemb.text.encoder import save_text_model
    from nestemb.progress import progress_stages
    from nestemb.text.encoder import check_model_inputs
    from nestemb.text.train import TextTrainConfig, load_train_data, train_text

    positive_int(threads, "threads", allow_none=True)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise NestembError(f"output folder already exists: {out} (choose a new --out or add --overwrite)")
    cfg = TextTrainConfig(
        recipe=recipe.value, dims=_dims(dims, "--nesting"), weights=parse_floats(weights, "--weights"),
        layers=_ints(layers, "--layers"), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        distill_weight=distill_weight, distill_source=distill_source.value,
        self_distill_weight=self_distill_weight, hard_negatives=hard_negatives,
        max_seq_length=max_seq_length, device=device.value,
        widths=parse_floats(widths, "--widths"),
    )
    resolve_device(cfg.device)  # an unavailable device fails before any data is read
    if not (beir or sts or nli or pairs):
        raise NestembError("no training data: give at least one of --beir, --sts, --nli, --pairs")
    # the dims and layers against the base model's shape, before reading data or loading it
    check_model_inputs(base, cfg.dims, cfg.layers, full_width=True)
    data = load_train_data(beir=beir, beir_split=split, sts=sts, nli=nli, pairs=pairs)
    env = env_from_torchrun()
    if not env.is_main:  # the other processes train alongside rank 0, which saves and prints
        with torch_threads(threads):
            train_text(data, cfg, base=base, model_id=model_id or out.name)
        return
    with torch_threads(threads), progress_stages() as upd:
        enc, info = train_text(data, cfg, base=base, model_id=model_id or out.name, progress=upd)
    enc.manifest.extra.update(
        train={"beir": [str(p) for p in beir], "split": split, "sts": [str(p) for p in sts],
               "nli": [str(p) for p in nli], "pairs": [str(p) for p in pairs]},
        config=info["config"], stats={k: v for k, v in info.items() if k != "config"})
    man = save_text_model(enc, out, enc.manifest, overwrite=overwrite)
    typer.echo(f"{info['recipe']} recipe on {info['device']}: {info['steps']} steps"
               + (f" at widths {', '.join(f'{g:g}' for g in info['widths'])}" if "widths" in info else "")
               + f", {info['prep_s']:.1f}s encoding + {info['train_loop_s']:.1f}s training; "
               f"saved {out} (model {man.model_id} version {man.model_version})")


@text_app.command("extract")
def extract_cmd(
    model: str = typer.Option(..., help="Elastic text model folder (trained with `nestemb text train --widths`)."),
    out: Path = typer.Option(..., help="Output model folder: an ordinary, smaller sentence-transformers model (manifest.json naming the parent)."),
    width: float = typer.Option(..., help="One trained width of the model, e.g. 0.25."),
    model_id: Optional[str] = typer.Option(
        None, help="Readable name for the submodel's manifest (default: the parent's, with the "
        "width appended)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Cut a submodel out of an elastic text encoder: an ordinary sentence-transformers model
    with narrower feed-forward blocks whose embeddings equal the parent's at that width and
    search the parent's galleries and indexes without an adapter (their manifests name the
    parent)."""
    from nestemb.text.elastic import extract
    from nestemb.text.encoder import load_text_model, save_text_model
    from nestemb.text.ffn import multiply_adds

    check_out_dir(out, overwrite, "text-model")
    parent = load_text_model(model)
    if parent.widths is None:
        raise NestembError(f"--model {model} has no nested widths: train it with "
                           "`nestemb text train --widths ...` to extract submodels")
    try:
        sub = extract(parent, width, model_id=model_id)
    except NestembError as e:
        if e.param == "encoder":  # the library's parameter is the model the user named
            raise NestembError(e.template, param="model") from None
        raise
    man = save_text_model(sub, out, sub.manifest, overwrite=overwrite)
    sl = man.extra["slice"]
    typer.echo(f"saved {out} ({man.model_id} version {man.model_version}; width {sl['width']:g}, "
               f"feed-forward {sl['intermediate_size']} of {sl['parent_intermediate_size']} units, "
               f"{sl['multiply_adds'] / multiply_adds(parent.model):.3f} of the full model's "
               f"multiply-adds per token; parent {parent.manifest.model_id} "
               f"{parent.manifest.model_version})")
