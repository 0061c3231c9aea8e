"""The attention block figures (Figure 3, 8-11, 13) name each block by its true cluster along both axes,
keep the cluster strips outside the matrix and put the Figure 3 legend outside the data."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from icc_utils import plots
from icc_utils.data import generate_episode

LABELS = np.array([1, 0, 2, 0, 1, 1, 0, 2, 0, 0])  # sorted: c0 at 0..4, c1 at 5..7, c2 at 8..9


def _matrix(n: int, seed: int = 0) -> np.ndarray:
    return np.tril(np.random.default_rng(seed).uniform(0.01, 1.0, (n, n)))


def _ticks(axis):
    return [t.get_text() for t in axis.get_ticklabels()], list(axis.get_ticklocs())


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_a_ii_blocks_are_named_by_cluster_on_both_axes():
    m = len(LABELS)
    ax = plots.plot_attention_matrix(_matrix(m), LABELS).axes[0]
    colors = plots.cluster_colors(3)
    for axis in (ax.xaxis, ax.yaxis):
        names, locs = _ticks(axis)
        assert names == ["c0", "c1", "c2"]
        assert locs == [2.0, 6.0, 8.5]  # the centre of each cluster's block
        assert [to_rgba(t.get_color()) for t in axis.get_ticklabels()] == [to_rgba(c) for c in colors]
    # the coloured strips sit outside the matrix: the axes show exactly the m x m image
    assert ax.get_xlim() == (-0.5, m - 0.5) and ax.get_ylim() == (m - 0.5, -0.5)


def test_block_matrix_with_answer_names_point_and_label_blocks():
    m = len(LABELS)
    ax = plots.plot_attention_matrix(_matrix(2 * m), LABELS).axes[0]
    for axis in (ax.xaxis, ax.yaxis):
        names, locs = _ticks(axis)
        assert names == ["pt c0", "pt c1", "pt c2", "lbl c0", "lbl c1", "lbl c2"]
        assert locs == [2.0, 6.0, 8.5, 12.0, 16.0, 18.5]


def test_grid_panels_are_labelled_too():
    fig = plots.plot_attention_grid([_matrix(10), _matrix(10, 1)], LABELS, ["layer 0", "layer 1"], ncols=2)
    for ax in fig.axes:
        assert _ticks(ax.xaxis)[0] == ["c0", "c1", "c2"] and _ticks(ax.yaxis)[0] == ["c0", "c1", "c2"]


def test_figure3_legend_names_the_clusters_outside_the_data():
    ep = generate_episode(3, "gaussian", 3, 2, None, n_points=12)
    fig = plots.plot_attention_figure3(_matrix(2 * ep.n_points), ep, title="layer 14")
    data_ax = fig.axes[1]
    legend = data_ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [f"c{c} (cluster {c})" for c in range(3)]
    fig.canvas.draw()
    box, frame = legend.get_window_extent(), data_ax.get_window_extent()
    assert box.x0 >= frame.x1  # to the right of the scatter, covering none of it
    assert _ticks(fig.axes[0].yaxis)[0][:3] == ["pt c0", "pt c1", "pt c2"]


def test_figure3_long_title_is_wrapped_clear_of_the_data_panel():
    ep = generate_episode(3, "gaussian", 2, 2, None, n_points=8)
    title = "SmolLM2-135M-Instruct, layer 14 (answer: constrained decoding (the free reply was not a list of n labels))"
    fig = plots.plot_attention_figure3(_matrix(2 * ep.n_points), ep, title=title)
    fig.canvas.draw()
    matrix_title, data_title = fig.axes[0].title, fig.axes[1].title
    assert matrix_title.get_text().replace("\n", " ") == title
    assert matrix_title.get_window_extent().x1 < data_title.get_window_extent().x0
