"""The learning-curve figure draws each df's k-means reference in that df's colour."""
import pandas as pd

from icc_utils import plots


def test_learning_curve_draws_each_dfs_kmeans_line_in_its_colour():
    curve = pd.DataFrame({"episodes_seen": [0, 300], "accuracy": [0.55, 0.80], "accuracy_df1": [0.51, 0.70],
                          "accuracy_df100": [0.59, 0.89], "kmeans_accuracy": [0.863, 0.863],
                          "kmeans_accuracy_df1": [0.737, 0.737], "kmeans_accuracy_df100": [0.989, 0.989]})
    ax = plots.plot_learning_curve(curve).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for df, km in [("df1", 0.737), ("df100", 0.989)]:
        ref = lines[f"k-means {df}"]
        assert list(ref.get_ydata()) == [km, km]
        assert ref.get_color() == lines[df].get_color()
    assert list(lines["k-means (same episodes)"].get_ydata()) == [0.863, 0.863]
    # without per-df k-means columns (the published c=3, d=3 run) only the overall line is drawn
    ax = plots.plot_learning_curve(curve.drop(columns=["kmeans_accuracy_df1", "kmeans_accuracy_df100"])).axes[0]
    assert not [line for line in ax.get_lines() if line.get_label().startswith("k-means df")]
