"""Pareto plots of ``benchmarks/search.py`` results: single-query latency vs recall@10 and resident
bytes per vector vs recall@10, one colour per method (library), the Pareto front of nestemb's and
of the peers' configurations (FAISS, hnswlib, usearch, ScaNN, rabitqlib) drawn separately (so the
plot shows where each side's best trade-off lies)."""

from __future__ import annotations

from pathlib import Path

from nestemb.plotting import pareto_front, plt, save_figure

NESTEMB_METHODS = ("funnel-flat", "funnel-hnsw", "adaptive-ivf", "adanns-opq")


def _front_min(points):
    """Pareto front for (recall up, cost down): the points no other point beats on both."""
    flipped = [(r, -c) for r, c in points]
    return sorted((points[i] for i in pareto_front(flipped)), key=lambda p: p[0])


def search_pareto(path: Path, rows: list[dict], meta: dict, xmin: float | None = None) -> None:
    """Two panels next to each other, written to ``path`` (png)."""
    t = meta["threads"][0]
    lat = f"latency_ms_{t}t"
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    methods = list(dict.fromkeys(x["method"] for x in rows))
    cmap = plt.get_cmap("tab20")
    for ax, key, ylabel in ((axes[0], lat, f"single-query latency, ms ({t} thread)"),
                            (axes[1], "resident", "resident bytes / vector")):
        sides: dict[str, list] = {"nestemb": [], "peers": []}
        for i, m in enumerate(methods):
            pts = [(x["recall"], x[key]) for x in rows if x["method"] == m
                   and (xmin is None or x["recall"] >= xmin) and x.get(key)]
            if not pts:
                continue
            ours = m in NESTEMB_METHODS
            ax.scatter(*zip(*pts), s=16, marker="o" if ours else "^", color=cmap(i % 20), label=m)
            sides["nestemb" if ours else "peers"].extend(pts)
        for side, style in (("nestemb", "-"), ("peers", "--")):
            if sides[side]:
                front = _front_min(sides[side])
                ax.plot(*zip(*front), color="black", linestyle=style, linewidth=1,
                        label=f"{side} Pareto front")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@10 (vs {meta.get('truth', 'exact search')}, full-dimension top-10)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    title = f"{meta['dataset']}: n={meta['n']:,}, D={meta['dim']}" + (f", recall >= {xmin}" if xmin else "")
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)
