"""Figures for the notebooks. Every figure is saved as PNG under ``results/<profile>/`` and shown inline.

Every line and marker plot draws a method in the style :func:`method_style` gives it (one colour and one
marker per method, the same in every figure), with the legend outside the data.
"""
from __future__ import annotations

import hashlib
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


# ---------------------------------------------------------------- one palette for every figure

#: Methods with a fixed (colour, marker), keyed by their normalised name (see :func:`method_key`).
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "kmeans": ("tab:blue", "s"),
    "gmm": ("tab:purple", "D"),
    "agglomerative": ("tab:olive", "^"),
    "spectral": ("tab:pink", "v"),
    "chance": ("tab:gray", "x"),
    "one label": ("black", "P"),
    "ic|tc": ("tab:cyan", "p"),
    "sc on attention": ("tab:brown", "h"),
    "icc (small)": ("yellowgreen", "<"),
    "icc (medium)": ("tab:green", "*"),
    "icc (large)": ("darkgreen", ">"),
    "icc (medium:4.2)": ("teal", "d"),
    # the paper's models (its figures' lines are named by model)
    "llama-3.2-1b-instruct": ("#e6ab02", "^"),
    "llama-3.2-3b-instruct": ("#e7298a", "v"),
    "llama-3.1-8b-instruct": ("#7570b3", "D"),
    "qwen2.5-7b-instruct": ("#1b9e77", "s"),
    "gpt-4o": ("navy", "X"),
    "gpt-4.1": ("#a6761d", "P"),
}
#: LLM rows (``"<model> <method>"``) take the style of their method's family: the first family whose
#: words the name contains, in this order.
FAMILY_STYLES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("finetuned-aug", ("darkslategray", "*")),
    ("finetuned", ("tab:green", "*")),
    ("fine-tuned", ("tab:green", "*")),
    ("constrained", ("tab:orange", "o")),
    ("zero-shot", ("tab:red", "o")),
    ("gen", ("tab:red", "o")),
)
#: Names not matched above get a colour and a marker from these lists, chosen by a hash of the name
#: (stable across processes and figures), with colours no fixed method uses.
FALLBACK_COLORS = ("#d95f02", "#66a61e", "#666666", "#377eb8", "#984ea3", "#e41a1c", "#a65628", "#f781bf",
                   "#4daf4a", "#999999")
FALLBACK_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">")
_PAPER_PREFIXES = ("paper: ", "(paper) ", "paper ")
_ALIASES = {"random labels": "chance"}


#: Names that start with these are the same method as the canonical name beside them.
_PREFIXES = (("k-means", "kmeans"), ("chance", "chance"), ("one label", "one label"), ("ic|tc", "ic|tc"),
             ("sc on a^ii", "sc on attention"), ("sc(", "sc on attention"),
             ("icc (unconditional", "icc (medium:4.2)"))   # the paper's name for the unconditional model


def method_key(name: str) -> tuple[str, bool]:
    """``(key, from_paper)``: the name lower-cased, without a ``paper:`` / ``(paper)`` prefix, aliases
    merged (``k-means`` and ``kmeans``; ``chance random labels`` and ``chance``)."""
    key, from_paper = " ".join(str(name).lower().split()), False
    for prefix in _PAPER_PREFIXES:
        if key.startswith(prefix):
            key, from_paper = key[len(prefix):].strip(), True
            break
    key = _ALIASES.get(key, key)
    for prefix, canonical in _PREFIXES:   # "k-means (frozen features)", "chance (random labels)", ...
        if key.startswith(prefix):
            return canonical, from_paper
    return key, from_paper


def _hashed(key: str, options: tuple, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def method_style(name: str) -> dict:
    """Keyword arguments (``color``, ``marker``, ``linestyle``, ``markerfacecolor``) that draw method
    ``name`` the same way in every figure. The paper's numbers (``paper: kmeans``) take their method's
    colour and marker, dashed with open markers."""
    key, from_paper = method_key(name)
    style = METHOD_STYLES.get(key)
    if style is None:
        words = key.replace("+", " ").split()
        style = next((s for family, s in FAMILY_STYLES if family in words), None)
    if style is None:
        style = (_hashed(key, FALLBACK_COLORS, "color"), _hashed(key, FALLBACK_MARKERS, "marker"))
    color, marker = style
    return {"color": color, "marker": marker, "linestyle": "--" if from_paper else "-",
            "markerfacecolor": "none" if from_paper else color}


def legend_outside(ax, where: str = "below", fontsize: int = 8, ncol: int | None = None) -> None:
    """The axes' legend outside its data: below the axes (``where="below"``) or to their right."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if where == "below":
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=fontsize,
                  ncol=ncol or min(2, len(labels)), frameon=False)
    else:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize,
                  ncol=ncol or 1, frameon=False)


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
    fig = plot_accuracy_by(summary, "df", group=group, ax=ax, title=title, paper=paper,
                           xlabel="degrees of freedom (df)")
    return fig


def plot_accuracy_by(summary: pd.DataFrame, x: str, group: str = "method", ax=None, title: str | None = None,
                     paper: pd.DataFrame | None = None, xlabel: str | None = None, categorical: bool | None = None):
    """Mean accuracy (± 1 s.e.) against column ``x`` (df, number of clusters, ...), one line per ``group``
    in its :func:`method_style`; optional ``paper`` rows (columns ``model``, ``x``, ``accuracy``) dashed.
    ``categorical`` (default: ``x == "df"``) spaces the values evenly."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    categorical = (x == "df") if categorical is None else categorical
    values = sorted(summary[x].unique())
    pos = {v: (i if categorical else v) for i, v in enumerate(values)}
    for name, g in summary.groupby(group, sort=False):
        g = g.sort_values(x)
        ax.errorbar([pos[v] for v in g[x]], g["accuracy"], yerr=g["accuracy_se"], capsize=3, label=str(name),
                    **method_style(str(name)))
    if paper is not None and len(paper):
        for name, g in paper.groupby("model", sort=False):
            g = g[g[x].isin(values)].sort_values(x)
            ax.plot([pos[v] for v in g[x]], g["accuracy"], alpha=0.8, label=f"paper: {name}",
                    **method_style(f"paper: {name}"))
    if categorical:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v) for v in values])
    else:
        ax.set_xticks(values)
    _finish_accuracy_axes(ax, xlabel or x, "accuracy", title, legend_size=7, title_size=None)
    return fig


def _finish_accuracy_axes(ax, xlabel: str, ylabel: str, title: str | None, legend_size: int = 8,
                          title_size: int | None = 10) -> None:
    """Labels, a 0-1 accuracy range, a light grid, the legend (below the axes) and the title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=legend_size)
    if title:
        ax.set_title(title, fontsize=title_size)


def plot_grid_accuracy(summary: pd.DataFrame, group: str = "name", size: float = 3.0):
    """Figure 6 style: one panel per (df, dim), accuracy against the number of clusters, one line per ``group``."""
    dfs = sorted(summary["df"].unique())
    dims = sorted(summary["dim"].unique())
    fig, axes = plt.subplots(len(dfs), len(dims), figsize=(size * len(dims) + 1, size * len(dfs)), squeeze=False,
                             sharey=True)
    legend: dict = {}
    for i, df in enumerate(dfs):
        for j, d in enumerate(dims):
            ax = axes[i, j]
            sub = summary[(summary["df"] == df) & (summary["dim"] == d)]
            for name, g in sub.groupby(group, sort=False):
                g = g.sort_values("n_clusters")
                ax.errorbar(g["n_clusters"], g["accuracy"], yerr=g["accuracy_se"], capsize=2, label=str(name),
                            ms=4, **method_style(str(name)))
            ax.set_title(f"df={df:g}, dim={d}", fontsize=9)
            ax.set_xlabel("number of clusters")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)   # every method of every panel, once
    axes[0, 0].set_ylabel("accuracy")
    fig.tight_layout()
    fig.legend(list(legend.values()), list(legend.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    return fig


def plot_accuracy_bars(summary: pd.DataFrame, x: str, group: str = "method", order=None, ax=None,
                       title: str | None = None):
    """Mean accuracy (± 1 s.e.) as grouped bars: one group per value of ``x`` (in ``order``), one bar per
    ``group`` in its :func:`method_style` colour (Table 3: conditions by method)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    else:
        fig = ax.figure
    order = list(order) if order is not None else list(dict.fromkeys(summary[x]))
    methods = list(dict.fromkeys(summary[group]))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        g = summary[summary[group] == m].set_index(x).reindex(order)
        ax.bar(np.arange(len(order)) + j * width, g["accuracy"], width, yerr=g["accuracy_se"], label=str(m),
               color=method_style(str(m))["color"])
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2, [str(v) for v in order])
    _finish_accuracy_axes(ax, x, "accuracy", title, legend_size=7)
    return fig


def plot_loss_curves(curves: dict, ax=None, title: str | None = "ICC fine-tuning loss"):
    """Training loss against episodes seen, one line per method (``curves``: name -> table with
    ``episodes_seen`` and ``loss``), each in its :func:`method_style` colour."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    for name, curve in curves.items():
        style = method_style(str(name))
        ax.plot(curve["episodes_seen"], curve["loss"], color=style["color"], label=str(name))
    ax.set_xlabel("training episodes seen")
    ax.set_ylabel("answer-token loss")
    ax.grid(alpha=0.3)
    legend_outside(ax, where="right")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ================================================================ attention (notebooks 02, 03) — section owned by
# the attention notebooks; appended, keep other sections above/below untouched.

def _attention_image(M: np.ndarray, log: bool = True, floor: float = 1e-6) -> np.ndarray:
    """``log10`` of a matrix for display; exact zeros (masked blocks, causal zeros) become NaN (blank)."""
    M = np.asarray(M, dtype=float)
    out = np.where(M > 0, M, np.nan)
    return np.log10(np.maximum(out, floor)) if log else out


def _cluster_strip(ax, labels, n: int, offset: int = 0, axis: str = "both", size: float = 6):
    """Coloured squares just outside the axes (2.5% of its size away) marking each row/column's true cluster."""
    cols = cluster_colors(int(max(labels)) + 1)
    c = [cols[int(l)] for l in labels]
    idx = np.arange(len(labels)) + offset
    if axis in ("both", "y"):
        ax.scatter(np.full(len(idx), -0.025), idx, c=c, marker="s", s=size, clip_on=False,
                   transform=ax.get_yaxis_transform())
    if axis in ("both", "x"):
        ax.scatter(idx, np.full(len(idx), -0.025), c=c, marker="s", s=size, clip_on=False,
                   transform=ax.get_xaxis_transform())


def _cluster_blocks(sorted_labels) -> list[tuple[int, int, int]]:
    """``(cluster, first, last)`` of each run of equal labels in cluster-sorted order."""
    lab = np.asarray(sorted_labels)
    if not len(lab):
        return []
    starts = np.r_[0, np.flatnonzero(np.diff(lab)) + 1]
    ends = np.r_[starts[1:], len(lab)]
    return [(int(lab[a]), int(a), int(b) - 1) for a, b in zip(starts, ends)]


def _cluster_ticks(ax, sorted_labels, with_answer: bool, fontsize: float = 7) -> None:
    """Name each block by its true cluster along both axes (ticks at the block centres, in the cluster's
    colour; ``pt``/``lbl`` for the point and answer-label halves of a ``2m x 2m`` matrix) and draw thin
    lines between blocks."""
    blocks = _cluster_blocks(sorted_labels)
    m = len(sorted_labels)
    cols = cluster_colors(max((c for c, _, _ in blocks), default=0) + 1)
    halves = [(0, "pt "), (m, "lbl ")] if with_answer else [(0, "")]
    pos, names, colors = [], [], []
    for offset, prefix in halves:
        for c, a, b in blocks:
            pos.append(offset + (a + b) / 2)
            names.append(f"{prefix}c{c}")
            colors.append(cols[c])
            if a > 0:
                ax.axhline(offset + a - 0.5, color="white", lw=0.5, alpha=0.8)
                ax.axvline(offset + a - 0.5, color="white", lw=0.5, alpha=0.8)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(pos)
        axis.set_ticklabels(names, fontsize=fontsize)
        for t, col in zip(axis.get_ticklabels(), colors):
            t.set_color(col)
    ax.tick_params(length=0, pad=10)  # clear of the coloured strips
    ax.tick_params(axis="x", labelrotation=90 if with_answer else 0)


def plot_attention_matrix(M: np.ndarray, labels, ax=None, log: bool = True, title: str | None = None,
                          with_answer: bool | None = None, colorbar: bool = True, strip_size: float = 6,
                          tick_fontsize: float = 7, axis_labels: bool = True):
    """One attention matrix with rows/columns ordered by true cluster, each block named by its cluster
    (``c0``, ``c1``, ... along both axes; ``pt c0``/``lbl c0`` for points and answer labels) and coloured
    strips marking each row's and column's cluster.

    ``M``: ``m x m`` (``A^II``) or ``2m x 2m`` (``[[A^II, 0], [A^OI, A^OO]]``; detected from the shape, or
    ``with_answer``). Log scale by default (log10; zeros blank). The colour bar sits outside the matrix.
    """
    M = np.asarray(M, dtype=float)
    labels = np.asarray(labels)
    m = len(labels)
    with_answer = M.shape[0] == 2 * m if with_answer is None else with_answer
    order = np.argsort(labels, kind="stable")
    idx = np.concatenate([order, order + m]) if with_answer else order
    img = _attention_image(M[np.ix_(idx, idx)], log)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
    im = ax.imshow(img, cmap="viridis", interpolation="nearest")
    n = img.shape[0]
    strip = np.concatenate([labels[order], labels[order]]) if with_answer else labels[order]
    _cluster_strip(ax, strip, n, size=strip_size)
    ax.set_xlim(-0.5, n - 0.5)  # the strips lie outside the matrix; keep them from widening the axes
    ax.set_ylim(n - 0.5, -0.5)
    if with_answer:
        for v in (m - 0.5,):
            ax.axhline(v, color="white", lw=1.2)
            ax.axvline(v, color="white", lw=1.2)
    _cluster_ticks(ax, labels[order], with_answer, tick_fontsize)
    if axis_labels:
        ax.set_xlabel("attended to (key), by true cluster", fontsize=tick_fontsize)
        ax.set_ylabel("attending (query), by true cluster", fontsize=tick_fontsize)
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="log10 attention" if log else "attention")
    return ax.figure


def plot_attention_figure3(M: np.ndarray, episode, title: str, log: bool = True):
    """Figure 3: the block matrix of one episode (ordered and named by true cluster) beside its data, whose
    cluster legend sits outside the scatter."""
    import textwrap

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
    plot_attention_matrix(M, episode.labels, ax=axes[0], log=log, title="\n".join(textwrap.wrap(title, 60)))
    x = np.asarray(episode.points, dtype=float)
    cols = cluster_colors(episode.n_clusters)
    y = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
    labels = np.asarray(episode.labels)
    for c in range(episode.n_clusters):
        sel = labels == c
        axes[1].scatter(x[sel, 0], y[sel], color=cols[c], s=18, label=f"c{c} (cluster {c})")
    for i, (a, b) in enumerate(zip(x[:, 0], y)):
        axes[1].annotate(str(i), (a, b), fontsize=6, alpha=0.6)
    axes[1].legend(title="true cluster", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                   borderaxespad=0.0)
    axes[1].set_title(f"the episode (points numbered in prompt order), d={episode.dim}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_grid(mats, labels, titles, ncols: int = 6, log: bool = True, size: float = 2.3,
                        suptitle: str | None = None, label_list=None):
    """A grid of attention matrices (Figure 8: layers; Figure 10: heads; Figure 9: df), each ordered and
    coloured by true cluster. ``label_list`` gives one label vector per matrix (else ``labels`` for all)."""
    n = len(mats)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        lab = label_list[k] if label_list is not None else labels
        plot_attention_matrix(mats[k], lab, ax=ax, log=log, title=titles[k], colorbar=False, strip_size=2,
                              tick_fontsize=6, axis_labels=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def plot_preprocessing_steps(steps: dict, labels, size: float = 3.0):
    """Figure 11: each stage of the Appendix B.2 preprocessing (linear colour scale), ordered by true cluster."""
    n = len(steps)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.5, size + 0.3), squeeze=False)
    for ax, (name, M) in zip(axes[0], steps.items()):
        plot_attention_matrix(M, labels, ax=ax, log=False, title=name, colorbar=True, strip_size=3,
                              tick_fontsize=6, axis_labels=False)
    fig.tight_layout()
    return fig


#: Line styles that tell the settings (``dim``, df) of one method apart; colour stays the method's.
SETTING_LINESTYLES = ("-", "--", ":", "-.")


def plot_sc_per_layer(per_layer: pd.DataFrame, gen: pd.DataFrame | None = None, fixed_layer: int | None = None,
                      group: str = "dim", ax=None, title: str | None = None):
    """Figure 3's inset: mean spectral-clustering accuracy (± 1 s.e.) per layer, one line per ``group``,
    with generation accuracy as horizontal lines (``gen``: columns ``group``, ``method``, ``accuracy``).
    Colour and marker name the method (:func:`method_style`), the line style the ``group`` value."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    else:
        fig = ax.figure
    sc = method_style("SC on A^II")
    for i, (key, g) in enumerate(per_layer.groupby(group, sort=True)):
        ls = SETTING_LINESTYLES[i % len(SETTING_LINESTYLES)]
        g = g.sort_values("layer")
        ax.errorbar(g["layer"], g["accuracy"], yerr=g["accuracy_se"], ms=3, capsize=2, label=f"SC on A^II, {group}={key}",
                    **{**sc, "linestyle": ls})
        if gen is not None and len(gen):
            for method, h in gen[gen[group] == key].groupby("method", sort=True):
                ax.axhline(float(h["accuracy"].mean()), color=method_style(str(method))["color"], ls=ls, lw=1.2,
                           label=f"{method}, {group}={key}")
    if fixed_layer is not None:
        ax.axvline(fixed_layer, color="grey", lw=0.8, ls=":")
        ax.annotate(f"l{fixed_layer}", (fixed_layer, ax.get_ylim()[0]), fontsize=7, color="grey")
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    legend_outside(ax, where="right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_learning_curve(curve: pd.DataFrame, title: str | None = None, ax=None, method: str = "finetuned"):
    """Accuracy on held-out episodes against training episodes seen, in ``method``'s style: a thick line for
    the ``accuracy`` column, one thinner line per ``accuracy_<df>`` column, each in its own line style. The
    k-means accuracy on the same episodes is a horizontal line in k-means' colour (column
    ``kmeans_accuracy``; per df, where given as ``kmeans_accuracy_<df>``, in that df's line style) and,
    where given (column ``one_label_accuracy``), what answering one label for every point scores."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    else:
        fig = ax.figure
    style = method_style(method)
    kmeans_color = method_style("kmeans")["color"]
    cols = [c for c in curve.columns if c.startswith("accuracy")]
    per_df = [c for c in cols if c != "accuracy"]
    for c in cols:
        label = "all validation episodes" if c == "accuracy" else c.replace("accuracy_", "")
        ls = "-" if c == "accuracy" else SETTING_LINESTYLES[1 + per_df.index(c) % (len(SETTING_LINESTYLES) - 1)]
        ax.plot(curve["episodes_seen"], curve[c], ms=3 if c == "accuracy" else 2, lw=2 if c == "accuracy" else 1,
                label=label, **{**style, "linestyle": ls})
        if c != "accuracy" and f"kmeans_{c}" in curve and len(curve):
            ax.axhline(float(curve[f"kmeans_{c}"].iloc[0]), color=kmeans_color, ls=ls, lw=0.8,
                       label=f"k-means {label}")
    if "kmeans_accuracy" in curve and len(curve):
        ax.axhline(float(curve["kmeans_accuracy"].iloc[0]), color=kmeans_color, ls="-", lw=1,
                   label="k-means (same episodes)")
    if "one_label_accuracy" in curve and len(curve):
        ax.axhline(float(curve["one_label_accuracy"].iloc[0]), color=method_style("one label")["color"], ls="-",
                   lw=0.8, alpha=0.7, label="one label for every point")
    _finish_accuracy_axes(ax, "training episodes seen", "accuracy (greedy, free decoding)", title)
    return fig


def plot_image_clusters(images: np.ndarray, predicted, captions=None, ncols: int = 10, size: float = 1.1,
                        title: str | None = None):
    """Figure 12: each image framed in the colour of its predicted cluster (grey: no valid label)."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    colors = cluster_colors(max([int(l) for l in predicted if int(l) >= 0], default=0) + 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.ravel(), images)):
        ax.axis("on")
        ax.imshow(img, cmap="gray" if np.asarray(img).ndim == 2 else None, vmin=0, vmax=255)
        ax.set_xticks([]); ax.set_yticks([])
        lab = int(predicted[i]) if i < len(predicted) else -1
        color = colors[lab] if lab >= 0 else (0.6, 0.6, 0.6)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(4)
        if captions is not None:
            ax.set_title(str(captions[i]), fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
