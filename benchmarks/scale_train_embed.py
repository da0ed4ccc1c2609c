"""Issue 13 benchmark, parts 1 and 2: data-parallel training and Ray bulk embedding throughput.

* ``train``: the image trainer (``train_image``, Fashion-MNIST, the default CNN and nesting,
  global batch 256) for a fixed number of steps, in 1 process (2 torch threads, then 1) and in
  2 processes under ``torchrun`` (gloo, 1 thread each). Samples/s = steps x 256 / the trainer's
  own ``train_seconds`` (start-up and data loading excluded). Each run is a fresh process.
* ``embed``: ``nestemb.bulk.embed_corpus`` of the SciFact corpus with the bundled MiniLM on a
  local Ray (2 CPUs), with 1 and then 2 actors (1 torch thread each). Items/s end to end (actor
  start-up and model loading included) and steady (rows landed after the first shard / the time
  from the first shard to the last).

Run (nothing else heavy at the same time):
``flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/scale_train_embed.py [--parts train embed]``.
Writes ``docs/results/scale/train_embed.json`` and ``.md``; scratch outputs go to ``runs/scale/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "scale"
OUT = REPO / "docs" / "results" / "scale"
FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
TARGET = 1.6


# --------------------------------------------------------------------------- training
def train_worker(out: Path, steps: int, threads: int | None) -> None:
    """One training run (under torchrun or not); rank 0 writes its info to ``out``. With
    ``LOCAL_BN=1`` in the environment, batch norm stays per process (the trainer's global batch
    norm switched off by hand: not the one-process model any more; shows what the global batch
    norm costs)."""
    if os.environ.get("LOCAL_BN") == "1":
        import nestemb.distributed

        nestemb.distributed.convert_batchnorm = lambda module, env: module
    from nestemb.data.idx import load_idx
    from nestemb.models.image import make_model_config
    from nestemb.train.image import ImageTrainConfig, train_image

    x, y = load_idx(FASHION, "train")
    mcfg = make_model_config("mrl", dim=256, num_classes=10, images=x)
    cfg = ImageTrainConfig(steps=steps, batch_size=256, device="cpu", threads=threads)
    _, info = train_image(mcfg, x, y, cfg, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(info))


def run_train(steps: int) -> list[dict]:
    rows = []
    setups = [("1 process, 2 threads", 1, 2, False), ("1 process, 1 thread", 1, 1, False),
              ("2 processes (torchrun, gloo), 1 thread each", 2, 1, False),
              ("2 processes, per-process batch norm (reference only: not the 1-process model)",
               2, 1, True)]
    for name, procs, threads, local_bn in setups:
        out = RUNS / f"train-{procs}p-{threads}t{'-localbn' if local_bn else ''}.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO),
               "GLOO_SOCKET_IFNAME": "lo", "LOCAL_BN": "1" if local_bn else "0"}
        for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(v, None)
        args = [__file__, "--train-worker", str(out), str(steps), str(threads)]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}", *args] if procs > 1 else [sys.executable, *args])
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=REPO)
        wall = time.perf_counter() - t0
        info = json.loads(out.read_text())
        sps = info["steps"] * 256 / info["train_seconds"]
        rows.append({"setup": name, "processes": procs, "threads_per_process": threads,
                     "steps": info["steps"], "batch": 256, "train_seconds": info["train_seconds"],
                     "samples_per_s": round(sps, 1), "process_wall_s": round(wall, 1),
                     "world_size": info["world_size"], "final_loss": info["epoch_losses"][-1]})
        print(f"{name}: {sps:.1f} samples/s ({info['train_seconds']:.1f} s)", flush=True)
    return rows


# --------------------------------------------------------------------------- embedding
def run_embed(limit: int | None, shard_size: int) -> list[dict]:
    import ray

    from nestemb import bulk
    from nestemb.data.beir import _read_jsonl

    corpus = _read_jsonl(SCIFACT / "corpus.jsonl", "corpus", with_title=True)
    ids = list(corpus)[:limit]
    data = bulk.ArrayCorpus([corpus[i] for i in ids], ids, source=str(SCIFACT / "corpus.jsonl"))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    startup = time.perf_counter() - t0
    rows = []
    digests = []
    for workers in (1, 2):
        out = RUNS / f"embed-{workers}w"
        landed = []
        t1 = time.perf_counter()
        s = bulk.embed_corpus(data, "minilm", out, workers=workers, shard_size=shard_size,
                              batch_size=64, overwrite=True,
                              on_shard=lambda r: landed.append((time.perf_counter(), r["rows"])))
        wall = time.perf_counter() - t1
        first = landed[0][0]
        steady = sum(n for _, n in landed[1:]) / (landed[-1][0] - first)
        digests.append(json.loads((out / "manifest.json").read_text())["sha256"])
        rows.append({"workers": workers, "rows": s["rows"], "shards": s["shards"],
                     "shard_size": shard_size, "wall_s": round(wall, 1),
                     "items_per_s_end_to_end": round(s["rows"] / s["seconds"], 1),
                     "items_per_s_steady": round(steady, 1),
                     "first_shard_after_s": round(first - t1, 1)})
        print(rows[-1], flush=True)
    ray.shutdown()
    return rows, round(startup, 2), digests[0] == digests[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["train", "embed"], choices=["train", "embed"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N documents")
    ap.add_argument("--shard-size", type=int, default=250)
    args = ap.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "train_embed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if "train" in args.parts:
        rows = run_train(args.steps)
        base2, base1, ddp, local = (r["samples_per_s"] for r in rows)
        results["train"] = {"rows": rows, "speedup_vs_1p_2threads": round(ddp / base2, 2),
                            "speedup_vs_1p_1thread": round(ddp / base1, 2),
                            "local_bn_speedup_vs_1p_1thread": round(local / base1, 2),
                            "local_bn_speedup_vs_1p_2threads": round(local / base2, 2),
                            "target": TARGET,
                            "command": "flock /tmp/nestemb-heavy.lock .venv/bin/python "
                                       "benchmarks/scale_train_embed.py --parts train"}
    if "embed" in args.parts:
        rows, startup, same = run_embed(args.limit, args.shard_size)
        one, two = rows
        results["embed"] = {
            "rows": rows, "ray_start_s": startup, "same_checksums_1_vs_2_workers": same,
            "speedup_end_to_end": round(two["items_per_s_end_to_end"] / one["items_per_s_end_to_end"], 2),
            "speedup_steady": round(two["items_per_s_steady"] / one["items_per_s_steady"], 2),
            "target": TARGET, "model": "all-MiniLM-L6-v2 (bundled), batch 64, 1 thread per actor",
            "command": "flock /tmp/nestemb-heavy.lock .venv/bin/python "
                       "benchmarks/scale_train_embed.py --parts embed"}
    from nestemb.io import write_json

    write_json(path, results)
    (OUT / "train_embed.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = ["# Scaling out: training and bulk embedding (issue 13, parts 1-2)", "",
             f"Machine: {r['machine']['cpus']} CPUs. Produced by `benchmarks/scale_train_embed.py`.", ""]
    if "train" in r:
        t = r["train"]
        lines += ["## Image trainer, samples/s (Fashion-MNIST CNN, global batch 256)", "",
                  "| setup | steps | train s | samples/s |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {x['setup']} | {x['steps']} | {x['train_seconds']:.1f} | {x['samples_per_s']:.1f} |"
                  for x in t["rows"]]
        lines += ["", f"2 processes (the trainer as shipped: batch norm over the global batch, each "
                  f"step equal to the 1-process step) vs 1 process with 2 threads: "
                  f"**{t['speedup_vs_1p_2threads']}x**; vs 1 process with 1 thread: "
                  f"**{t['speedup_vs_1p_1thread']}x** (target >= {t['target']}x). With per-process "
                  f"batch norm: {t['local_bn_speedup_vs_1p_2threads']}x and "
                  f"{t['local_bn_speedup_vs_1p_1thread']}x.", ""]
    if "embed" in r:
        e = r["embed"]
        lines += ["## Ray Data bulk embedding, items/s (SciFact corpus, MiniLM)", "",
                  f"Local Ray start-up: {e['ray_start_s']} s. {e['model']}.", "",
                  "| workers | rows | shards | wall s | first shard after s | items/s end to end | items/s steady |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {x['workers']} | {x['rows']} | {x['shards']} | {x['wall_s']} | "
                  f"{x['first_shard_after_s']} | {x['items_per_s_end_to_end']} | {x['items_per_s_steady']} |"
                  for x in e["rows"]]
        lines += ["", f"2 workers vs 1: **{e['speedup_end_to_end']}x** end to end, "
                  f"**{e['speedup_steady']}x** steady (target >= {e['target']}x). "
                  f"Same shard checksums with 1 and 2 workers: {e['same_checksums_1_vs_2_workers']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--train-worker":
        sys.path.insert(0, str(REPO))
        train_worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
