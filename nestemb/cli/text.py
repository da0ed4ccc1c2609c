"""CLI commands for the text area (registered on the shared app): ``train-text``,
``eval-retrieval``, ``eval-sts``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from nestemb.cli.app import app
from nestemb.errors import NestembError
from nestemb.text.train import TextTrainConfig
from nestemb.text.evaluate import _device, _progress, run_eval_retrieval, run_eval_sts


def _check_out_file(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise NestembError(f"--out {out} is a directory; give a JSON file path")


@app.command("eval-retrieval")
def eval_retrieval(
    beir: str = typer.Option(..., help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)"),
    split: str = typer.Option("test", help="qrels split"),
    model: str = typer.Option("minilm", help="'minilm' or a sentence-transformers folder"),
    dims: str = typer.Option("32,64,128,256,384", help="prefix sizes"),
    layers: Optional[str] = typer.Option(None, help="exit layers, e.g. 2,4,6 (per-layer results)"),
    out: Path = typer.Option(..., help="result JSON file"),
    batch_size: int = typer.Option(64, help="encoding batch size"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda if available)"),
) -> None:
    """nDCG@10 and recall@100 on a BEIR split at every prefix (and layer)."""
    from nestemb.io import write_json

    _check_out_file(out)
    res = run_eval_retrieval(beir, split, model, dims, layers, batch_size, device, True)
    write_json(out, res)
    typer.echo(f"dims {res['dims']}\nndcg@10 {_fmt(res['ndcg10'])}\nrecall@100 "
               f"{_fmt(res['recall100'])}\nwrote {out}")


@app.command("eval-sts")
def eval_sts(
    data: str = typer.Option(..., help="STS-B format TSV"),
    model: str = typer.Option("minilm", help="'minilm' or a sentence-transformers folder"),
    dims: str = typer.Option("32,64,128,256,384", help="prefix sizes"),
    layers: Optional[str] = typer.Option(None, help="exit layers, e.g. 2,4,6"),
    out: Path = typer.Option(..., help="result JSON file"),
    batch_size: int = typer.Option(64, help="encoding batch size"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda"),
) -> None:
    """Spearman correlation on an STS-B TSV at every prefix (and layer)."""
    from nestemb.io import write_json

    _check_out_file(out)
    res = run_eval_sts(data, model, dims, layers, batch_size, device, True)
    write_json(out, res)
    typer.echo(f"dims {res['dims']}\nspearman {_fmt(res['spearman'])}\nwrote {out}")


def _fmt(xs) -> str:
    if xs and isinstance(xs[0], list):
        return " | ".join(_fmt(x) for x in xs)
    return " ".join(f"{x:.4f}" for x in xs)


@app.command("train-text")
def train_text_cmd(
    base: str = typer.Option("minilm", help="'minilm' or a sentence-transformers folder"),
    train: List[str] = typer.Option(..., help="beir:DIR[:split] | sts:FILE | nli:DIR | pairs:FILE"),
    out: Path = typer.Option(..., help="output model folder (must not exist)"),
    dims: Optional[str] = typer.Option(None, help="nesting, default 32,64,128,256,WIDTH"),
    dim_weights: Optional[str] = typer.Option(None, help="weight per prefix"),
    layers: Optional[str] = typer.Option(None, help="exit layers: layer x dimension mode"),
    steps: int = typer.Option(TextTrainConfig.steps, help="optimizer steps"),
    batch_size: int = typer.Option(TextTrainConfig.batch_size, help="pairs per batch"),
    lr: float = typer.Option(TextTrainConfig.lr, help="learning rate"),
    seed: int = typer.Option(0, help="random seed"),
    distill_weight: float = typer.Option(TextTrainConfig.distill_weight, help="keep the base model's similarities on unlabeled text (0: off)"),
    self_distill: float = typer.Option(0.0, help="KL of earlier exits toward the last (layer mode)"),
    hard_negatives: bool = typer.Option(True, help="mine one hard negative per BEIR pair with the base"),
    max_seq_length: Optional[int] = typer.Option(None, help="truncate texts to this many tokens"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda"),
) -> None:
    """Fine-tune a sentence encoder so that every prefix (and exit layer) is a good embedding."""
    from nestemb.nesting import Manifest, parse_dims, parse_floats, parse_ints
    from nestemb.text.encoder import TEXT_MODEL_KIND, check_dims, check_layers, load_text_model
    from nestemb.text.train import TextTrainConfig, load_train_specs, train_text

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NestembError(f"output folder already exists: {out} (choose a new --out)")
    dims_t = parse_dims(dims)
    weights = parse_floats(dim_weights, "dim weights")
    layer_t = parse_ints(layers, "layers")
    data = load_train_specs(train)
    enc = load_text_model(base, device=_device(device))
    dims_t = check_dims(dims_t or _default_dims(enc.dim), enc.dim)
    if dims_t[-1] != enc.dim:
        raise NestembError(f"the last of --dims must be the model width {enc.dim}, got {dims_t[-1]}")
    check_layers(layer_t, enc.n_layers)
    cfg = TextTrainConfig(
        dims=dims_t, dim_weights=weights, layers=layer_t, steps=steps, batch_size=batch_size,
        lr=lr, seed=seed, distill_weight=distill_weight, self_distill_weight=self_distill,
        hard_negatives=hard_negatives, max_seq_length=max_seq_length,
    )
    with _progress() as upd:
        stats = train_text(enc, data, cfg, progress=upd)
    man = Manifest(
        model_id=f"nestemb-{Path(out).name}", nesting=dims_t, dim=enc.dim, kind=TEXT_MODEL_KIND,
        extra={"base": enc.manifest.model_id, "train": list(train),
               "config": _jsonable(dataclasses.asdict(cfg)), "stats": stats,
               "layers": list(layer_t) if layer_t else None},
    )
    from nestemb.text.encoder import save_text_model

    save_text_model(enc, out, man)
    typer.echo(f"trained {stats['steps']} steps in {stats['wall_s']:.1f}s; saved {out}")


def _default_dims(width: int) -> tuple[int, ...]:
    from nestemb.nesting import default_nesting

    return default_nesting(width, start=min(32, width))


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


