"""Issue 11 benchmark: latent spaces that talk to each other.

Three parts, each cached under ``runs/relative/`` and written to ``docs/results/relative/``
(``results.json``, ``tables.md``, PNG plots):

* ``image``: Fashion-MNIST zero-shot stitching. Small encoders trained independently (a CNN at
  two seeds, an MLP, and a fixed-feature CNN for the comparison part); a linear ridge head is
  trained on one encoder's space (the *target*) and applied to another encoder's outputs (the
  *source*): raw (absolute), through relative projections on shared anchors, or translated by
  an adapter fitted on the anchors. Accuracy relative to end-to-end (the same head trained and
  tested on the target encoder), per prefix of the encoder output, for 16 to 1,024 anchors.
* ``text``: MiniLM <-> all-mpnet-base-v2 translation from <= 500 anchor documents of the
  SciFact corpus (no queries); nDCG@10 of translated queries against the native gallery.
* ``compare``: CKA (both estimators), mutual k-NN, Procrustes and neuron matching per prefix
  between the image encoders, and the null calibration of each measure on independent random
  features at n = 32 ... 4,096.

Run: ``flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/relative.py [--parts ...]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nestemb.maps import fit_adapter  # noqa: E402
from nestemb.io import atomic_file, write_json  # noqa: E402
from nestemb.nesting import prefix_view  # noqa: E402
from nestemb.relative import relative_projection, select_anchors  # noqa: E402
from nestemb.relative.stitching import fit_head, stitch_accuracy  # noqa: E402

RUNS = Path("runs/relative")
OUT = Path("docs/results/relative")
FASHION = Path("../shared/data/fashion-mnist")
SCIFACT = Path("../shared/data/scifact")
DIM = 128
DIMS = (8, 16, 32, 64, 128)
N_HEAD = 10000  # training rows for the heads (and the anchor pool)
ANCHORS = (16, 32, 64, 128, 256, 512, 1024)
REL_KINDS = ("cosine", "euclidean", "l1", "linf", "product")
# translation recipes: name -> fit_adapter keywords (all from paired anchors only)
TRANSLATIONS = {
    "orthogonal": {"kind": "orthogonal", "underdetermined": True},
    "orthogonal+std": {"kind": "orthogonal", "scaling": "standard", "underdetermined": True},
    "linear": {"kind": "affine", "bias": False, "underdetermined": True},
    "affine": {"kind": "affine", "underdetermined": True},
    "linear+std": {"kind": "affine", "bias": False, "scaling": "standard",
                   "underdetermined": True},
}
# name -> (arch, head, seed, width)
MODELS = {
    "cnn-mrl-s0": ("cnn", "mrl", 0, 8),
    "cnn-mrl-s1": ("cnn", "mrl", 1, 8),
    "mlp-mrl-s0": ("mlp", "mrl", 0, 8),
    "cnn-ff-s0": ("cnn", "ff", 0, 8),
}
PAIRS = (  # (source encoder, target encoder = the head's space)
    ("cnn-mrl-s1", "cnn-mrl-s0"),
    ("mlp-mrl-s0", "cnn-mrl-s0"),
    ("cnn-mrl-s0", "mlp-mrl-s0"),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------- image


def train_models(steps: int, threads: int) -> dict[str, Path]:
    from nestemb.data.idx import load_idx
    from nestemb.models.image import make_model_config, save_image_model
    from nestemb.train.image import ImageTrainConfig, train_image

    out = {}
    images = labels = None
    for name, (arch, head, seed, width) in MODELS.items():
        d = RUNS / "models" / name
        out[name] = d
        if (d / "manifest.json").exists():
            continue
        if images is None:
            images, labels = load_idx(FASHION, "train")
        cfg = make_model_config(head, dim=DIM, dims=(DIM,) if head == "ff" else DIMS,
                                images=images, arch=arch, width=width, cosine=True)
        t = time.perf_counter()
        model, info = train_image(cfg, images, labels,
                                  ImageTrainConfig(steps=steps, seed=seed, threads=threads,
                                                   device="cpu"), progress=False)
        save_image_model(model, d, model_id=f"relative-{name}",
                         extra={"train": {"steps": steps, "seed": seed}}, overwrite=True)
        log(f"trained {name} ({arch}, {head}, seed {seed}) in {time.perf_counter() - t:.0f} s")
    return out


def embeddings(models: dict[str, Path]) -> dict:
    """Train-subset and test embeddings of every model (cached), with labels and own-head
    accuracy on the test set per prefix."""
    from nestemb.data.idx import load_idx
    from nestemb.models.image import load_image_model

    cache = RUNS / "emb"
    cache.mkdir(parents=True, exist_ok=True)
    xtr, ytr = load_idx(FASHION, "train")
    xte, yte = load_idx(FASHION, "t10k")
    # the heads' training rows: the last N_HEAD training images (the trainer's hold-out is a
    # seeded random subset; overlap with it does not matter for a frozen encoder)
    sel = np.arange(len(xtr) - N_HEAD, len(xtr))
    out = {"y_train": ytr[sel], "y_test": yte, "emb": {}, "own_head": {}}
    for name, d in models.items():
        f = cache / f"{name}.npz"
        if not f.exists():
            m = load_image_model(d)
            tr, te = m.encode(xtr[sel]), m.encode(xte)
            proba = m.predict_proba(xte)
            own = (proba.argmax(-1) == yte[:, None]).mean(0)
            with atomic_file(f) as fh:
                np.savez(fh, train=tr, test=te, own=own, nesting=np.array(m.nesting))
        z = np.load(f)
        out["emb"][name] = (z["train"], z["test"])
        out["own_head"][name] = {str(k): v for k, v in zip(z["nesting"].tolist(), z["own"].tolist())}
    return out


ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def choose_alpha(E: dict, tgt: str) -> float:
    """The head's ridge penalty, chosen once per target encoder as a user would: on the
    target's own labelled training rows (80/20 split, full width), never on the source or the
    test set."""
    key = ("alpha", tgt)
    if key not in E:
        x = prefix_view(E["emb"][tgt][0], DIM)
        y = E["y_train"]
        cut = int(0.8 * len(x))
        scores = {a: stitch_accuracy(fit_head(x[:cut], y[:cut], alpha=a), x[cut:], y[cut:])
                  for a in ALPHAS}
        E[key] = max(ALPHAS, key=lambda a: (scores[a], a))  # ties: the stronger penalty
        E.setdefault("alpha_scores", {})[tgt] = {str(a): v for a, v in scores.items()}
        log(f"head alpha for {tgt}: {E[key]} (validation accuracy {scores})")
    return E[key]


def _rel(x: np.ndarray, anchors: np.ndarray, kind: str, center: bool = False) -> np.ndarray:
    return relative_projection(x, anchors, kind, center)


def stitch_pair(E: dict, src: str, tgt: str, dim: int, n_anchors: int, method: str = "uniform",
                kinds=REL_KINDS, translations=TRANSLATIONS, per_class: bool = False,
                seed: int = 0, normalize: bool = True, src_dim: int | None = None) -> dict:
    """Every input route for one (source, target, prefix, anchors) cell: accuracies.
    ``src_dim`` (default ``dim``) stitches a source prefix of another width onto the target's
    ``dim``-wide head: absolute stitching is then impossible (None)."""
    ytr, yte = E["y_train"], E["y_test"]
    src_dim = dim if src_dim is None else src_dim
    s_tr, s_te = (prefix_view(a, src_dim) for a in E["emb"][src])
    t_tr, t_te = (prefix_view(a, dim) for a in E["emb"][tgt])
    # anchors: chosen in the target's training rows (a user picks items once; both encoders
    # embed them)
    idx = select_anchors(t_tr, n_anchors, method, labels=ytr if per_class else None, seed=seed)
    res: dict = {}
    alpha = choose_alpha(E, tgt)
    head = fit_head(t_tr, ytr, alpha=alpha)
    res["end_to_end"] = stitch_accuracy(head, t_te, yte)
    if src_dim != dim:
        res["absolute"] = None
    else:
        res["absolute"] = stitch_accuracy(head, s_te, yte) if src != tgt else res["end_to_end"]
    for kind in kinds:
        for center in (False, True):
            if center and kind not in ("cosine", "product"):
                continue  # distances are translation-invariant already
            h = fit_head(_rel(t_tr, t_tr[idx], kind, center), ytr, alpha=alpha)
            name = f"rel-{kind}" + ("-c" if center else "")
            s_rel = _rel(s_te, s_tr[idx], kind, center)
            res[name] = stitch_accuracy(h, s_rel, yte)
            if normalize and kind in ("cosine", "euclidean", "product"):
                # per-encoder normalization: the source's columns standardized with the
                # statistics of its own (unlabeled) training rows, not the target's
                ref = _rel(s_tr, s_tr[idx], kind, center)
                res[name + "-n"] = stitch_accuracy(h, s_rel, yte, reference=ref)
    res["fit_seconds"] = {}
    for name, kw in translations.items():
        t = time.perf_counter()
        try:
            ad = fit_adapter(s_tr[idx], t_tr[idx], **kw)
        except Exception as e:  # noqa: BLE001 - recorded, e.g. too few anchors
            res[f"tr-{name}"] = None
            res.setdefault("errors", {})[name] = str(e)
            continue
        res["fit_seconds"][name] = round(time.perf_counter() - t, 4)
        res[f"tr-{name}"] = stitch_accuracy(head, ad.transform(s_te), yte)
    return res


def run_image(args) -> dict:
    models = train_models(args.steps, args.threads)
    E = embeddings(models)
    out: dict = {"own_head": E["own_head"], "pairs": {}, "anchors_sweep": {}, "methods": {},
                 "head": "ridge on standardized features, alpha chosen per target on its own "
                         "training rows (80/20) from " + str(ALPHAS)}
    for src, tgt in PAIRS:
        key = f"{src}->{tgt}"
        t = time.perf_counter()
        out["pairs"][key] = {str(d): stitch_pair(E, src, tgt, d, 64) for d in DIMS}
        log(f"{key}: per prefix at 64 anchors ({time.perf_counter() - t:.0f} s): " + ", ".join(
            f"{d}: e2e {r['end_to_end']:.3f} abs {r['absolute']:.3f} "
            f"prod {r['rel-product']:.3f} tr {r['tr-linear+std']:.3f}"
            for d, r in out["pairs"][key].items()))
        t = time.perf_counter()
        sweep = {}
        for n in ANCHORS:
            kinds = ("cosine", "euclidean", "l1", "product") if n <= 256 else ("cosine",
                                                                             "euclidean")
            sweep[str(n)] = stitch_pair(E, src, tgt, DIM, n, kinds=kinds, normalize=n <= 256,
                                        translations={k: TRANSLATIONS[k] for k in
                                                      ("orthogonal", "linear+std", "affine")})
        out["anchors_sweep"][key] = sweep
        log(f"{key}: anchor sweep ({time.perf_counter() - t:.0f} s)")
    # anchor choice at 64 anchors, full width, for the seed pair and the cross-arch pair
    for src, tgt in PAIRS[:2]:
        key = f"{src}->{tgt}"
        m = {}
        for method in ("uniform", "fps", "kmeans"):
            for per_class in (False, True):
                r = stitch_pair(E, src, tgt, DIM, 64, method=method, per_class=per_class,
                                kinds=("cosine", "product"),
                                translations={"linear+std": TRANSLATIONS["linear+std"]})
                m[method + ("/class" if per_class else "")] = r
        out["methods"][key] = m
    # seed variation of the anchor draw (uniform, 64, full width)
    out["anchor_seeds"] = {}
    for src, tgt in PAIRS[:2]:
        key = f"{src}->{tgt}"
        rs = [stitch_pair(E, src, tgt, DIM, 64, seed=s, kinds=("cosine", "product"),
                          translations={"linear+std": TRANSLATIONS["linear+std"]})
              for s in range(5)]
        out["anchor_seeds"][key] = {
            k: [r[k] for r in rs] for k in ("end_to_end", "rel-cosine", "rel-product",
                                            "rel-product-c", "rel-product-c-n",
                                            "tr-linear+std")}
    out["head_alpha"] = {t: E[("alpha", t)] for _, t in PAIRS}
    out["head_alpha_validation"] = E["alpha_scores"]
    return out


WIDTHS = ((16, 128), (32, 128), (128, 32), (128, 16))  # (source prefix, target prefix)


def run_widths(args) -> dict:
    """Encoders of different output widths: a source prefix of one width stitched onto a head
    trained on a target prefix of another (64 uniform anchors)."""
    E = embeddings(train_models(args.steps, args.threads))
    out = {}
    for src, tgt in PAIRS[:2]:
        for sd, td in WIDTHS:
            key = f"{src}@{sd}->{tgt}@{td}"
            out[key] = stitch_pair(E, src, tgt, td, 64, src_dim=sd,
                                   kinds=("cosine", "euclidean", "product"),
                                   translations={k: TRANSLATIONS[k] for k in
                                                 ("orthogonal", "orthogonal+std", "affine")})
            log(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[key].items()
                                      if isinstance(v, float)))
    return out


# -------------------------------------------------------------------------------------- text


def run_text(args) -> dict:
    from nestemb.eval.retrieval import evaluate_retrieval
    from text_data import embed, load_encoder, scifact

    logf = Path("/tmp/mpnet_encode.log")
    if "corpus (5183, 768)" not in (logf.read_text() if logf.exists() else ""):
        log("mpnet corpus encoding not finished: text part skipped")
        return {"skipped": "mpnet corpus embeddings not cached yet"}
    sf = scifact(SCIFACT)
    encs = {"minilm": load_encoder("minilm"), "mpnet": load_encoder("mpnet", 256)}
    G = {k: embed(e, sf.docs) for k, e in encs.items()}
    Q = {k: embed(e, sf.queries) for k, e in encs.items()}

    def ndcg(q, g):
        return evaluate_retrieval(q, g, sf.query_ids, sf.doc_ids, sf.qrels, [g.shape[1]])[
            "ndcg10"][0]

    native = {k: ndcg(Q[k], G[k]) for k in G}
    log(f"native nDCG@10: {native}")
    out = {"native": native, "directions": {}}
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sf.docs))  # anchors: corpus documents only, never queries
    recipes = {k: TRANSLATIONS[k] for k in ("orthogonal", "orthogonal+std", "affine",
                                             "linear+std")}
    recipes["orthogonal+c"] = {"kind": "orthogonal", "scaling": "center", "underdetermined": True}
    for src, tgt in (("minilm", "mpnet"), ("mpnet", "minilm")):
        rows = {}
        for n in (100, 250, 500):
            idx = order[:n]
            cell = {}
            for name, kw in recipes.items():
                t = time.perf_counter()
                ad = fit_adapter(G[src][idx], G[tgt][idx], **kw)
                fit_s = time.perf_counter() - t
                v = ndcg(ad.transform(Q[src]), G[tgt])
                cell[name] = {"ndcg10": v, "of_native_target": v / native[tgt],
                              "fit_seconds": round(fit_s, 3)}
            # relative: both sides projected on the anchors (cosine), searched in relative space
            rq = relative_projection(prefix_view(Q[src], Q[src].shape[1]),
                                     prefix_view(G[src][idx], G[src].shape[1]), "cosine")
            rg = relative_projection(prefix_view(G[tgt], G[tgt].shape[1]),
                                     prefix_view(G[tgt][idx], G[tgt].shape[1]), "cosine")
            v = ndcg(rq, rg)
            cell["relative-cosine"] = {"ndcg10": v, "of_native_target": v / native[tgt]}
            rows[str(n)] = cell
            log(f"{src}->{tgt} {n} anchors: " + ", ".join(
                f"{k} {c['ndcg10']:.4f} ({c['of_native_target']:.1%})" for k, c in cell.items()))
        out["directions"][f"{src}->{tgt}"] = rows
    return out


SNLI = Path("../shared/data/snli")
SNLI_TEST = 3000  # test pairs embedded by mpnet (a seeded sample: mpnet costs ~1 min / 1,000
                  # sentences on this 2-core machine)


def _snli(split: str) -> tuple[list[str], list[str], np.ndarray]:
    read = lambda f: (SNLI / f"{f}.{split}").read_text(encoding="utf-8").splitlines()  # noqa: E731
    return read("s1"), read("s2"), np.array(read("labels"))


def _pair_features(e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The usual sentence-pair classifier input: [u, v, |u - v|, u * v]."""
    u, v = e[a], e[b]
    return np.hstack([u, v, np.abs(u - v), u * v])


def run_text_head(args) -> dict:
    """SNLI classifier head stitched across text encoders: a head trained on MiniLM's space
    (SNLI dev pairs) reads all-mpnet-base-v2 (768-d) test pairs, through relative projections
    on 500 anchor sentences of SNLI dev or through a translation fitted on them."""
    from text_data import embed, load_encoder

    s1, s2, ytr = _snli("dev")
    t1, t2, yte = _snli("test")
    keep = np.sort(np.random.default_rng(0).permutation(len(yte))[:SNLI_TEST])
    t1, t2, yte = [t1[i] for i in keep], [t2[i] for i in keep], yte[keep]
    dev = sorted(set(s1) | set(s2))
    test = sorted(set(t1) | set(t2))
    pos_d, pos_t = {s: i for i, s in enumerate(dev)}, {s: i for i, s in enumerate(test)}
    da, db = np.array([pos_d[s] for s in s1]), np.array([pos_d[s] for s in s2])
    ta, tb = np.array([pos_t[s] for s in t1]), np.array([pos_t[s] for s in t2])
    anchors_idx = np.random.default_rng(1).permutation(len(dev))[:500]
    anchor_texts = [dev[i] for i in anchors_idx]
    mini, mp = load_encoder("minilm"), load_encoder("mpnet", 256)
    t = time.perf_counter()
    M_dev, M_test, M_anc = embed(mini, dev), embed(mini, test), embed(mini, anchor_texts)
    P_test, P_anc = embed(mp, test), embed(mp, anchor_texts)
    log(f"SNLI embeddings ready ({time.perf_counter() - t:.0f} s): dev {M_dev.shape}, "
        f"test MiniLM {M_test.shape} mpnet {P_test.shape}")
    # ridge penalty chosen on MiniLM's own dev pairs (80/20), as in the image part
    x = _pair_features(M_dev, da, db)
    cut = int(0.8 * len(x))
    val = {a: stitch_accuracy(fit_head(x[:cut], ytr[:cut], alpha=a), x[cut:], ytr[cut:])
           for a in ALPHAS}
    alpha = max(ALPHAS, key=lambda a: (val[a], a))
    out: dict = {"alpha": alpha, "alpha_validation": {str(a): v for a, v in val.items()},
                 "test_pairs": int(len(yte)), "train_pairs": int(len(ytr)), "routes": {}}
    head = fit_head(x, ytr, alpha=alpha)
    out["routes"]["end_to_end"] = stitch_accuracy(head, _pair_features(M_test, ta, tb), yte)
    for n in (64, 128, 256, 500):
        r: dict = {}
        # the product is 4 x n wide, 16 x n as pair features: ridge on it costs too much past 128
        for kind in ("cosine", "euclidean") + (("product",) if n <= 128 else ()):
            h = fit_head(_pair_features(relative_projection(M_dev, M_anc[:n], kind), da, db),
                         ytr, alpha=alpha)
            f = _pair_features(relative_projection(P_test, P_anc[:n], kind), ta, tb)
            r[f"rel-{kind}"] = stitch_accuracy(h, f, yte)
            # per-encoder normalization with the source's own unlabelled test pairs
            r[f"rel-{kind}-n"] = stitch_accuracy(h, f, yte, reference=f)
        for name in ("orthogonal", "orthogonal+std", "affine", "linear+std"):
            ad = fit_adapter(P_anc[:n], M_anc[:n], **TRANSLATIONS[name])
            r[f"tr-{name}"] = stitch_accuracy(head, _pair_features(ad.transform(P_test), ta, tb),
                                              yte)
        out["routes"][str(n)] = r
        log(f"SNLI head MiniLM <- mpnet, {n} anchors: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r.items()) + f" (end-to-end "
            f"{out['routes']['end_to_end']:.3f})")
    return out


# ----------------------------------------------------------------------------------- compare


def run_compare(args) -> dict:
    from nestemb.compare import MEASURES, compare_per_prefix, compare_prefixes

    E = embeddings(train_models(args.steps, args.threads))
    out: dict = {"pairs": {}, "null": {}}
    pairs = (("cnn-mrl-s0", "cnn-mrl-s1"), ("cnn-mrl-s0", "cnn-ff-s0"),
             ("cnn-mrl-s0", "mlp-mrl-s0"))
    for a, b in pairs:
        X, Y = E["emb"][a][1], E["emb"][b][1]  # test set, 10,000 items
        t = time.perf_counter()
        per = compare_per_prefix(X, Y, DIMS, measure=MEASURES, knn_sample=2000, k=10)
        mat = compare_prefixes(X, Y, DIMS, DIMS, measure=("cka_debiased",))
        out["pairs"][f"{a}|{b}"] = {
            "dims": list(DIMS),
            "per_prefix": {m: v.tolist() for m, v in per.items()},
            "cka_debiased_matrix": mat["cka_debiased"].tolist(),
            "seconds": round(time.perf_counter() - t, 2),
        }
        log(f"compare {a} vs {b}: " + ", ".join(
            f"{m} {np.round(v, 3).tolist()}" for m, v in per.items()))
    # null: independent Gaussian features X, Y (n, d) at d = 8 (the regime of the issue's
    # figures) and d = 64; 20 draws per n (5 above 1,024)
    from nestemb.compare import cka, mutual_knn, neuron_matching, procrustes_distance

    for d in (8, 64):
        null = out["null"][str(d)] = {}
        for n in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            rng = np.random.default_rng(1000 * d + n)
            vals: dict[str, list] = {k: [] for k in (
                "cka", "cka_debiased", "procrustes", "mutual_knn", "neuron_one_to_one",
                "neuron_mean_corr")}
            for _ in range(20 if n <= 1024 else 5):
                X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
                nm = neuron_matching(X, Y, 0.5)
                vals["cka"].append(cka(X, Y))
                vals["cka_debiased"].append(cka(X, Y, debiased=True))
                vals["procrustes"].append(procrustes_distance(X, Y))
                vals["mutual_knn"].append(mutual_knn(X, Y, 10))
                vals["neuron_one_to_one"].append(nm.fraction_one_to_one)
                vals["neuron_mean_corr"].append(float(nm.scores_one_to_one.mean()))
            null[str(n)] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                "nan": int(np.isnan(v).sum()), "draws": len(v)}
                            for k, v in vals.items()}
            log(f"null d={d} n={n}: " + ", ".join(f"{k} {s['mean']:.4f}"
                                                 for k, s in null[str(n)].items()))
    return out


# ---------------------------------------------------------------------------- tables, plots


def _pct(v, ref) -> str:
    return "-" if v is None else f"{v:.4f} ({v / ref:.1%})"


def tables(res: dict) -> str:
    lines = ["# Relative representations, translation, stitching, comparison (issue 11)", ""]
    img = res.get("image")
    if img:
        lines += ["## Fashion-MNIST: own classifier head accuracy (test) per prefix", "",
                  "| model | " + " | ".join(str(d) for d in DIMS) + " |",
                  "|---|" + "---|" * len(DIMS)]
        lines.insert(-3, "Stitching heads: " + img.get("head", "") + "; chosen: " + json.dumps(
            img.get("head_alpha", {})) + "\n")
        for name, own in img["own_head"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{own[str(d)]:.4f}" if str(d) in own else "-" for d in DIMS) + " |")
        routes = ["absolute", *[f"rel-{k}" for k in REL_KINDS], "rel-cosine-c", "rel-product-c",
                  "rel-cosine-n", "rel-euclidean-n", "rel-product-n", "rel-cosine-c-n",
                  "rel-product-c-n",
                  *[f"tr-{k}" for k in TRANSLATIONS]]
        for key, per in img["pairs"].items():
            lines += ["", f"## Stitching {key} (64 uniform anchors): accuracy (share of "
                      "end-to-end)", "", "| route | " + " | ".join(str(d) for d in DIMS) + " |",
                      "|---|" + "---|" * len(DIMS),
                      "| end-to-end | " + " | ".join(f"{per[str(d)]['end_to_end']:.4f}"
                                                    for d in DIMS) + " |"]
            for r in routes:
                lines.append(f"| {r} | " + " | ".join(
                    _pct(per[str(d)].get(r), per[str(d)]["end_to_end"]) for d in DIMS) + " |")
            fs = per[str(DIM)]["fit_seconds"]
            lines.append("")
            lines.append(f"Translation fit seconds at {DIM} dims, 64 anchors: " + ", ".join(
                f"{k} {v:.4f}" for k, v in fs.items()))
        for key, sw in img["anchors_sweep"].items():
            ns = list(sw)
            rts = ["rel-cosine", "rel-cosine-c", "rel-euclidean", "rel-l1",
                   "rel-product", "rel-product-c", "rel-cosine-n", "rel-cosine-c-n",
                   "rel-euclidean-n", "rel-product-n", "rel-product-c-n", "tr-orthogonal",
                   "tr-affine", "tr-linear+std"]
            lines += ["", f"## Anchors sweep {key} at {DIM} dims: share of end-to-end", "",
                      "| route | " + " | ".join(ns) + " |", "|---|" + "---|" * len(ns)]
            for r in rts:
                lines.append(f"| {r} | " + " | ".join(
                    "-" if sw[n].get(r) is None else f"{sw[n][r] / sw[n]['end_to_end']:.1%}"
                    for n in ns) + " |")
        for key, m in img["methods"].items():
            cols = ("rel-cosine", "rel-cosine-c", "rel-product", "rel-product-c",
                    "rel-cosine-c-n", "rel-product-c-n", "tr-linear+std")
            lines += ["", f"## Anchor choice {key} (64 anchors, {DIM} dims): share of "
                      "end-to-end", "", "| method | " + " | ".join(cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for meth, r in m.items():
                e = r["end_to_end"]
                lines.append(f"| {meth} | " + " | ".join(f"{r[k] / e:.1%}" for k in cols) + " |")
        for key, s in img["anchor_seeds"].items():
            e = np.array(s["end_to_end"])
            lines += ["", f"Anchor draw variation {key} (5 seeds, 64 uniform anchors): " +
                      ", ".join(f"{k} {np.mean(np.array(v) / e):.1%} +- "
                                f"{np.std(np.array(v) / e):.1%}"
                                for k, v in s.items() if k != "end_to_end")]
    txt = res.get("text")
    if txt and "native" in txt:
        lines += ["", "## SciFact translation (anchors = corpus documents): nDCG@10 (share of "
                  "the target's native)", "",
                  "native: " + ", ".join(f"{k} {v:.4f}" for k, v in txt["native"].items())]
        for key, rows in txt["directions"].items():
            names = list(next(iter(rows.values())))
            lines += ["", f"### {key}", "", "| anchors | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for n, cell in rows.items():
                lines.append(f"| {n} | " + " | ".join(
                    f"{cell[k]['ndcg10']:.4f} ({cell[k]['of_native_target']:.1%})"
                    for k in names) + " |")
    wid = res.get("widths")
    if wid:
        names = [k for k in next(iter(wid.values())) if k not in ("fit_seconds", "errors")]
        lines += ["", "## Different widths: a source prefix onto a head on another target prefix "
                  "(64 uniform anchors), accuracy (share of end-to-end)", "",
                  "| source@dims -> target@dims | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for key, r in wid.items():
            lines.append(f"| {key} | " + " | ".join(
                "-" if r.get(k) is None else (f"{r[k]:.4f}" if k == "end_to_end"
                                              else _pct(r[k], r["end_to_end"])) for k in names)
                + " |")
    th = res.get("text-head")
    if th:
        e2e = th["routes"]["end_to_end"]
        names = list(th["routes"]["64"])
        lines += ["", f"## SNLI head stitched across text encoders: head trained on MiniLM "
                  f"({th['train_pairs']} dev pairs, ridge alpha {th['alpha']}), applied to "
                  f"all-mpnet-base-v2 on {th['test_pairs']} test pairs; accuracy (share of "
                  f"MiniLM end-to-end {e2e:.4f})", "",
                  "| anchors | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for n, r in th["routes"].items():
            if n != "end_to_end":
                lines.append(f"| {n} | " + " | ".join(_pct(r.get(k), e2e) for k in names) + " |")
    cmp_ = res.get("compare")
    if cmp_:
        for key, p in cmp_["pairs"].items():
            lines += ["", f"## Comparison {key} (test set, prefix views; mutual k-NN on 2,000 "
                      f"items, k=10; {p['seconds']} s)", "",
                      "| measure | " + " | ".join(str(d) for d in p["dims"]) + " |",
                      "|---|" + "---|" * len(p["dims"])]
            for m, v in p["per_prefix"].items():
                lines.append(f"| {m} | " + " | ".join(f"{x:.4f}" for x in v) + " |")
        for d, null in cmp_["null"].items():
            ns = list(null)
            lines += ["", f"## Null calibration: independent Gaussian features (d = {d} each), "
                      "mean (std) over draws", "", "| measure | " + " | ".join(ns) + " |",
                      "|---|" + "---|" * len(ns)]
            for m in next(iter(null.values())):
                lines.append(f"| {m} | " + " | ".join(
                    f"{null[n][m]['mean']:.4f} ({null[n][m]['std']:.4f})" for n in ns) + " |")
    return "\n".join(lines) + "\n"


def plots(res: dict) -> None:
    from nestemb.plotting import plt, save_figure

    img = res.get("image")
    if img:
        fig, axes = plt.subplots(1, len(img["pairs"]), figsize=(5 * len(img["pairs"]), 4))
        for ax, (key, per) in zip(np.atleast_1d(axes), img["pairs"].items()):
            for r in ("absolute", "rel-cosine", "rel-euclidean", "rel-euclidean-n", "rel-product",
                      "rel-product-c-n", "tr-orthogonal", "tr-affine", "tr-linear+std"):
                ax.plot(DIMS, [np.nan if per[str(d)].get(r) is None
                               else per[str(d)][r] / per[str(d)]["end_to_end"] for d in DIMS],
                        marker="o", label=r)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("prefix dims")
            ax.set_ylabel("share of end-to-end")
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=7)
        save_figure(fig, OUT / "stitching_prefix.png", dpi=110)
        fig, axes = plt.subplots(1, len(img["anchors_sweep"]),
                                 figsize=(5 * len(img["anchors_sweep"]), 4))
        for ax, (key, sw) in zip(np.atleast_1d(axes), img["anchors_sweep"].items()):
            ns = [int(n) for n in sw]
            for r in ("rel-cosine", "rel-euclidean", "rel-euclidean-n", "rel-product",
                      "rel-product-c-n", "tr-orthogonal", "tr-affine", "tr-linear+std"):
                ax.plot(ns, [np.nan if sw[str(n)].get(r) is None
                             else sw[str(n)][r] / sw[str(n)]["end_to_end"] for n in ns],
                        marker="o", label=r)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("anchors")
            ax.set_ylabel("share of end-to-end")
            ax.set_title(f"{key} @ {DIM} dims", fontsize=9)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=7)
        save_figure(fig, OUT / "stitching_anchors.png", dpi=110)
    cmp_ = res.get("compare")
    if cmp_:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for key, p in cmp_["pairs"].items():
            for ax, m in zip(axes, ("cka_debiased", "mutual_knn")):
                ax.plot(p["dims"], p["per_prefix"][m], marker="o", label=key)
                ax.set_title(m)
                ax.set_xscale("log", base=2)
                ax.set_xlabel("prefix dims")
                ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        save_figure(fig, OUT / "compare_prefix.png", dpi=110)
        fig, axes = plt.subplots(1, len(cmp_["null"]), figsize=(6 * len(cmp_["null"]), 4))
        for ax, (d, null) in zip(np.atleast_1d(axes), cmp_["null"].items()):
            ns = [int(n) for n in null]
            for m in next(iter(null.values())):
                ax.plot(ns, [null[str(n)][m]["mean"] for n in ns], marker="o", label=m)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n items")
            ax.set_title(f"null: independent Gaussian features (d = {d})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save_figure(fig, OUT / "null_calibration.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["image", "text", "compare"],
                    choices=["image", "widths", "text", "text-head", "compare"])
    ap.add_argument("--steps", type=int, default=600, help="training steps per encoder")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    for part in args.parts:
        t = time.perf_counter()
        res[part] = {"image": run_image, "widths": run_widths, "text": run_text,
                     "text-head": run_text_head, "compare": run_compare}[part](args)
        res.setdefault("seconds", {})[part] = round(time.perf_counter() - t, 1)
        write_json(path, res)
        log(f"{part} done in {time.perf_counter() - t:.0f} s")
    (OUT / "tables.md").write_text(tables(res))
    plots(res)
    print(tables(res))


if __name__ == "__main__":
    main()
