"""Figures for the notebooks. Every figure is saved as PNG under ``results/<profile>/`` and shown inline."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "inline")) else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Fixed metadata so reruns write byte-identical PNGs.
_PNG_META = {"Software": None}


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG (parent folders created, no timestamp metadata) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=_PNG_META)
    return path


def cluster_colors(n: int):
    """``n`` distinct colours (tab10), one per cluster."""
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


# ---------------------------------------------------------------- numeric episodes (notebook 00)

def plot_episodes(episodes, titles=None, ncols: int = 4, size: float = 3.0):
    """Scatter plots of 1-d or 2-d episodes coloured by true cluster (d>2: first two coordinates)."""
    n = len(episodes)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, ep, title in zip(axes.flat, episodes, titles or [e.id for e in episodes]):
        x = np.asarray(ep.points, dtype=float)
        cols = cluster_colors(ep.n_clusters)
        c = [cols[l] for l in ep.labels]
        y = x[:, 1] if x.shape[1] > 1 else np.random.default_rng(0).uniform(-1, 1, len(x))
        ax.scatter(x[:, 0], y, c=c, s=14)
        ax.set_title(title, fontsize=9)
        if x.shape[1] == 1:
            ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- accuracy curves (notebooks 01, 04)

def plot_accuracy_vs_df(summary: pd.DataFrame, group: str = "model", ax=None, title: str | None = None,
                        paper: pd.DataFrame | None = None):
    """Mean accuracy (± 1 s.e.) against df, one line per ``group``; optional paper points (dashed)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    dfs = sorted(summary["df"].unique())
    pos = {d: i for i, d in enumerate(dfs)}
    for name, g in summary.groupby(group, sort=False):
        g = g.sort_values("df")
        xs = [pos[d] for d in g["df"]]
        ax.errorbar(xs, g["accuracy"], yerr=g["accuracy_se"], marker="o", capsize=3, label=str(name))
    if paper is not None and len(paper):
        for name, g in paper.groupby("model", sort=False):
            g = g[g["df"].isin(dfs)].sort_values("df")
            ax.plot([pos[d] for d in g["df"]], g["accuracy"], ls="--", marker="x", alpha=0.7, label=f"paper: {name}")
    ax.set_xticks(range(len(dfs)))
    ax.set_xticklabels([f"{d:g}" for d in dfs])
    ax.set_xlabel("degrees of freedom (df)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return fig


def plot_grid_accuracy(summary: pd.DataFrame, group: str = "name", size: float = 3.0):
    """Figure 6 style: one panel per (df, dim), accuracy against the number of clusters, one line per ``group``."""
    dfs = sorted(summary["df"].unique())
    dims = sorted(summary["dim"].unique())
    fig, axes = plt.subplots(len(dfs), len(dims), figsize=(size * len(dims) + 1, size * len(dfs)), squeeze=False,
                             sharey=True)
    for i, df in enumerate(dfs):
        for j, d in enumerate(dims):
            ax = axes[i, j]
            sub = summary[(summary["df"] == df) & (summary["dim"] == d)]
            for name, g in sub.groupby(group, sort=False):
                g = g.sort_values("n_clusters")
                ax.errorbar(g["n_clusters"], g["accuracy"], yerr=g["accuracy_se"], marker="o", capsize=2, label=str(name))
            ax.set_title(f"df={df:g}, dim={d}", fontsize=9)
            ax.set_xlabel("number of clusters")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return fig
