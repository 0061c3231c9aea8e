"""One palette for every figure (issue 37, item 8): each method has one colour and one marker wherever it is
drawn, the paper's numbers take their method's colour, and legends sit outside the data."""
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from icc_utils import plots


def _summary(names, dfs=(1.0, 100.0)):
    rows = [{"name": n, "model": n.split()[0], "df": df, "accuracy": 0.5 + 0.01 * i, "accuracy_se": 0.02}
            for i, n in enumerate(names) for df in dfs]
    return pd.DataFrame(rows)


def _lines(ax) -> dict:
    """Legend label -> (rgba colour, marker, line style) of every line on the axes (errorbar lines included)."""
    out = {}
    for line in ax.get_lines():
        label = line.get_label()
        if not label.startswith("_"):
            out[label] = (to_rgba(line.get_color()), line.get_marker(), line.get_linestyle())
    for container in ax.containers:                # errorbar: the data line is the container's first artist
        line = container.lines[0] if hasattr(container, "lines") else None
        if line is not None and container.get_label() and not container.get_label().startswith("_"):
            out[container.get_label()] = (to_rgba(line.get_color()), line.get_marker(), line.get_linestyle())
    return out


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_method_style_is_one_colour_and_marker_per_method_and_stable():
    assert plots.method_style("kmeans") == plots.method_style("k-means") == plots.method_style("k-means (frozen features)")
    # the names the notebooks give one method
    for a, b in [("chance random labels", "chance"), ("chance (random labels)", "chance"),
                 ("one label one label for every point", "one label for every point"),
                 ("SC on A^II, dim=1", "SC(l8)"), ("ICC (unconditional, k=2)", "ICC (Medium:4.2)")]:
        assert plots.method_style(a) == plots.method_style(b), (a, b)
    # the study's LLM rows take their method family's style: free, constrained and fine-tuned differ
    free = plots.method_style("SmolLM2-135M-Instruct zero-shot")
    constrained = plots.method_style("SmolLM2-135M-Instruct zero-shot+constrained")
    finetuned = plots.method_style("SmolLM2-135M-Instruct+adapter finetuned")
    assert len({free["color"], constrained["color"], finetuned["color"]}) == 3
    assert plots.method_style("Gen")["color"] == free["color"]              # notebook 03's name for free replies
    assert plots.method_style("Gen+constrained")["color"] == constrained["color"]
    # the study's fixed methods never share a colour
    fixed = [c for c, _ in plots.METHOD_STYLES.values()]
    assert len(set(fixed)) == len(fixed)
    # the paper's models (Figure 2's right panel) are told apart
    paper_models = ["Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct", "gpt-4o"]
    assert len({plots.method_style(f"paper: {m}")["color"] for m in paper_models}) == len(paper_models)
    # unknown names: the same style every call, never a fixed method's colour
    other = plots.method_style("paper: Mistral-7B-Instruct")
    assert other == plots.method_style("paper: Mistral-7B-Instruct")
    assert other["color"] not in fixed and other["linestyle"] == "--"
    # the paper's k-means: k-means' colour and marker, dashed, open marker
    paper_km, km = plots.method_style("paper: kmeans"), plots.method_style("kmeans")
    assert (paper_km["color"], paper_km["marker"]) == (km["color"], km["marker"])
    assert paper_km["linestyle"] == "--" and paper_km["markerfacecolor"] == "none" and km["linestyle"] == "-"


def test_figure2_panels_draw_each_method_in_the_same_colour_and_marker():
    """Notebook 01's Figure 2: the left panel has every method, the right one k-means and chance with the
    paper's numbers; k-means and chance must look the same in both, and the paper's k-means share its colour."""
    names = ["SmolLM2-135M-Instruct zero-shot", "SmolLM2-135M-Instruct zero-shot+constrained", "agglomerative",
             "chance random labels", "gmm", "kmeans", "spectral"]
    summary = _summary(names)
    paper = pd.DataFrame({"model": ["kmeans", "kmeans", "gpt-4o", "gpt-4o"], "df": [1.0, 100.0, 1.0, 100.0],
                          "accuracy": [0.68, 0.97, 0.78, 0.96]})
    fig, axes = plt.subplots(1, 2)
    plots.plot_accuracy_vs_df(summary, group="name", ax=axes[0])
    plots.plot_accuracy_vs_df(summary[summary["name"].isin(["kmeans", "chance random labels"])], group="name",
                              ax=axes[1], paper=paper)
    left, right = _lines(axes[0]), _lines(axes[1])
    for name in ("kmeans", "chance random labels"):
        assert left[name] == right[name]
    assert left["kmeans"][0] == right["paper: kmeans"][0] and left["kmeans"][1] == right["paper: kmeans"][1]
    assert len({left[n][:2] for n in names}) == len(names)      # seven methods, seven styles
    # the same method in another figure (notebook 04's Table 1 plot) keeps its style
    fig2 = plots.plot_accuracy_vs_df(_summary(["kmeans", "SmolLM2-135M-Instruct+adapter finetuned"]), group="name")
    assert _lines(fig2.axes[0])["kmeans"] == left["kmeans"]
    plt.close("all")


@pytest.mark.parametrize("make", ["accuracy_vs_df", "learning_curve", "sc_per_layer", "bars", "loss"])
def test_legends_sit_outside_the_data(make):
    if make == "accuracy_vs_df":
        fig = plots.plot_accuracy_vs_df(_summary(["kmeans", "gmm", "chance", "spectral"]), group="name")
    elif make == "learning_curve":
        curve = pd.DataFrame({"episodes_seen": [0, 300, 600], "accuracy": [0.5, 0.8, 0.9], "accuracy_df1": [0.5, 0.7, 0.8],
                              "kmeans_accuracy": [0.86] * 3, "one_label_accuracy": [0.57] * 3})
        fig = plots.plot_learning_curve(curve)
    elif make == "sc_per_layer":
        per_layer = pd.DataFrame({"dim": [1, 1, 2, 2], "layer": [0, 1, 0, 1], "accuracy": [0.6, 0.62, 0.6, 0.61],
                                  "accuracy_se": [0.01] * 4})
        gen = pd.DataFrame({"dim": [1, 1, 2, 2], "method": ["Gen", "kmeans"] * 2, "accuracy": [0.0, 0.85, 0.0, 0.9]})
        fig = plots.plot_sc_per_layer(per_layer, gen, fixed_layer=1)
    elif make == "bars":
        summary = pd.DataFrame({"condition": ["color", "shape"] * 2, "method": ["ICC (Medium)"] * 2 + ["kmeans"] * 2,
                                "accuracy": [0.7, 0.6, 0.8, 0.5], "accuracy_se": [0.02] * 4})
        fig = plots.plot_accuracy_bars(summary, "condition")
    else:
        fig = plots.plot_loss_curves({"ICC (Small)": pd.DataFrame({"episodes_seen": [0, 10], "loss": [2.0, 1.0]}),
                                      "ICC (Large)": pd.DataFrame({"episodes_seen": [0, 10], "loss": [2.1, 0.9]})})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    assert not _overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    plt.close("all")


def test_grid_legend_lists_every_panels_methods_in_their_styles():
    summary = pd.DataFrame([
        {"name": "kmeans", "df": 2.0, "dim": 1, "n_clusters": 2, "accuracy": 0.9, "accuracy_se": 0.01},
        {"name": "kmeans", "df": 2.0, "dim": 2, "n_clusters": 2, "accuracy": 0.9, "accuracy_se": 0.01},
        # only in the second panel: the legend must still name it
        {"name": "SmolLM2-135M-Instruct+adapter finetuned", "df": 2.0, "dim": 2, "n_clusters": 2,
         "accuracy": 0.7, "accuracy_se": 0.02}])
    fig = plots.plot_grid_accuracy(summary)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["kmeans", "SmolLM2-135M-Instruct+adapter finetuned"]
    km = to_rgba(plots.method_style("kmeans")["color"])
    assert all(_lines(ax)["kmeans"][0] == km for ax in fig.axes[:2])
    plt.close("all")


def test_sc_inset_colours_by_method_and_tells_dims_by_line_style():
    per_layer = pd.DataFrame({"dim": [1, 1, 2, 2], "layer": [0, 1, 0, 1], "accuracy": [0.6, 0.62, 0.6, 0.61],
                              "accuracy_se": [0.01] * 4})
    gen = pd.DataFrame({"dim": [1, 2, 1, 2], "method": ["Gen", "Gen", "kmeans", "kmeans"],
                        "accuracy": [0.0, 0.0, 0.85, 0.9]})
    lines = _lines(plots.plot_sc_per_layer(per_layer, gen).axes[0])
    sc = to_rgba(plots.method_style("SC on A^II")["color"])
    assert lines["SC on A^II, dim=1"][0] == lines["SC on A^II, dim=2"][0] == sc
    assert lines["SC on A^II, dim=1"][2] != lines["SC on A^II, dim=2"][2]
    assert lines["kmeans, dim=1"][0] == lines["kmeans, dim=2"][0] == to_rgba(plots.method_style("kmeans")["color"])
    assert lines["Gen, dim=1"][0] == to_rgba(plots.method_style("SmolLM2-135M-Instruct zero-shot")["color"])
    assert lines["kmeans, dim=1"][2] == lines["SC on A^II, dim=1"][2]    # a dim's lines share its line style
    plt.close("all")


def test_learning_curve_draws_each_dfs_kmeans_line_in_its_line_style():
    curve = pd.DataFrame({"episodes_seen": [0, 300], "accuracy": [0.55, 0.80], "accuracy_df1": [0.51, 0.70],
                          "accuracy_df100": [0.59, 0.89], "kmeans_accuracy": [0.863, 0.863],
                          "kmeans_accuracy_df1": [0.737, 0.737], "kmeans_accuracy_df100": [0.989, 0.989]})
    ax = plots.plot_learning_curve(curve).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    km = to_rgba(plots.method_style("kmeans")["color"])
    for df, value in [("df1", 0.737), ("df100", 0.989)]:
        ref = lines[f"k-means {df}"]
        assert list(ref.get_ydata()) == [value, value]
        assert to_rgba(ref.get_color()) == km
        assert ref.get_linestyle() == lines[df].get_linestyle()
    assert lines["df1"].get_linestyle() != lines["df100"].get_linestyle()
    ft = to_rgba(plots.method_style("finetuned")["color"])
    assert to_rgba(lines["all validation episodes"].get_color()) == ft
    assert list(lines["k-means (same episodes)"].get_ydata()) == [0.863, 0.863]
    # without per-df k-means columns (the published c=3, d=3 run) only the overall line is drawn
    ax = plots.plot_learning_curve(curve.drop(columns=["kmeans_accuracy_df1", "kmeans_accuracy_df100"])).axes[0]
    assert not [line for line in ax.get_lines() if line.get_label().startswith("k-means df")]
    plt.close("all")


def test_bars_and_loss_curves_use_the_method_colours():
    summary = pd.DataFrame({"condition": ["color", "shape"] * 2, "method": ["ICC (Medium)"] * 2 + ["kmeans"] * 2,
                            "accuracy": [0.7, 0.6, 0.8, 0.5], "accuracy_se": [0.02] * 4})
    ax = plots.plot_accuracy_bars(summary, "condition", order=["shape", "color"]).axes[0]
    colours = {c.get_label(): to_rgba(c.patches[0].get_facecolor()) for c in ax.containers if hasattr(c, "patches")}
    assert colours["kmeans"] == to_rgba(plots.method_style("kmeans")["color"])
    assert colours["ICC (Medium)"] == to_rgba(plots.method_style("ICC (Medium)")["color"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shape", "color"]
    ax = plots.plot_loss_curves({"ICC (Medium)": pd.DataFrame({"episodes_seen": [0, 8], "loss": [2.0, 1.0]})}).axes[0]
    assert to_rgba(ax.get_lines()[0].get_color()) == colours["ICC (Medium)"]
    plt.close("all")

