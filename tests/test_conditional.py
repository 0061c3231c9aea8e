"""icc_utils.vision.conditional: the probe captioner, paired episodes, Table 3 and the
target (no torch)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icc_utils.paper import paper_results
from icc_utils.vision import conditional as C
from icc_utils.vision.shapes import make_shapes_set


@pytest.fixture(scope="module")
def shapes():
    return make_shapes_set(240, seed=3)


def _onehot_features(imageset, noise: float, seed: int = 0) -> np.ndarray:
    """Features that encode each attribute (one-hot) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    cols = []
    for key in ("shape", "color", "pattern"):
        values = sorted(set(imageset.attributes[key]))
        cols.append(np.eye(len(values))[[values.index(v) for v in imageset.attributes[key]]])
    x = np.concatenate(cols, axis=1)
    return x + noise * rng.normal(size=x.shape)


def test_probes_caption_every_image_with_the_predicted_values(shapes):
    feats = _onehot_features(shapes, noise=0.05)
    probes = C.fit_attribute_probes(feats[:160], {k: v[:160] for k, v in shapes.attributes.items()},
                                    ["shape", "color", "pattern"])
    caps = C.probe_captions(probes, feats[160:])
    a = shapes.attributes
    assert caps[0] == f"a {a['color'][160]} {a['pattern'][160]} {a['shape'][160]}"
    all_caps = C.probe_captions(probes, feats)
    acc = C.caption_accuracy(all_caps, shapes, range(160, 240), ["shape", "color", "pattern"]).set_index("condition")
    assert (acc["caption_accuracy"] == 1.0).all() and (acc["n_images"] == 80).all()
    # pure noise: the probe cannot name the colour much better than chance (1/4)
    noisy = C.fit_attribute_probes(np.random.default_rng(1).normal(size=(160, 5)),
                                   {"color": a["color"][:160]}, ["color"])
    noisy_caps = C.probe_captions(noisy, np.random.default_rng(2).normal(size=(240, 5)), "a {color} thing")
    acc = C.caption_accuracy(noisy_caps, shapes, range(160, 240), ["color"])
    assert acc["caption_accuracy"].iloc[0] < 0.5


def test_caption_accuracy_matches_whole_words_in_free_text(shapes):
    a = shapes.attributes
    i = 0
    caps = {i: f"A picture of a {a['color'][i].upper()} shape, {a['pattern'][i]}.", 1: "nothing useful"}
    acc = C.caption_accuracy(caps, shapes, [0], ["color", "pattern", "shape"]).set_index("condition")
    assert acc.loc["color", "caption_accuracy"] == 1.0 and acc.loc["pattern", "caption_accuracy"] == 1.0
    assert acc.loc["shape", "caption_accuracy"] == 0.0      # the caption never names the shape
    assert C.caption_accuracy(caps, shapes, [1], ["color"])["caption_accuracy"].iloc[0] == 0.0


def test_probe_errors_name_the_problem(shapes):
    feats = _onehot_features(shapes, 0.1)
    with pytest.raises(ValueError, match="'texture'"):
        C.fit_attribute_probes(feats, shapes.attributes, ["texture"])
    probes = C.fit_attribute_probes(feats, shapes.attributes, ["color"])
    with pytest.raises(ValueError, match="shape"):
        C.probe_captions(probes, feats, "a {color} {shape}")


def test_paired_episodes_share_images_and_have_c_clusters_under_each_condition(shapes):
    objects = sorted(set(shapes.attributes["object"]))[::2]
    eps = C.paired_episodes(shapes, objects, ["color", "shape"], n_images=10, seed=5)
    assert [e.params["condition"] for e in eps] == ["color", "shape"]
    assert eps[0].indices == eps[1].indices and len(eps[0].indices) == 10
    assert all(shapes.attributes["object"][i] in objects for i in eps[0].indices)
    for e in eps:
        values = [shapes.attributes[e.params["condition"]][i] for i in e.indices]
        assert e.n_clusters == 2 and len(set(values)) == 2
        # labels follow the condition's values, numbered by first appearance
        assert e.labels[0] == 0 and all((values[i] == values[j]) == (e.labels[i] == e.labels[j])
                                        for i in range(10) for j in range(10))
        assert e.params["classes"][0] == values[0]
    assert eps[0].labels != eps[1].labels               # the two conditions partition the images differently
    assert C.paired_episodes(shapes, objects, ["color", "shape"], 10, seed=5)[0].indices == eps[0].indices


def test_table3_from_a_summary():
    summary = pd.DataFrame([
        {"method": C.KMEANS_METHOD, "condition": "color", "n_clusters": 2, "accuracy": 0.70, "accuracy_se": 0.02},
        {"method": "ICC (Small)", "condition": "color", "n_clusters": 2, "accuracy": 0.90, "accuracy_se": 0.02},
        {"method": C.KMEANS_METHOD, "condition": "shape", "n_clusters": 2, "accuracy": 0.75, "accuracy_se": 0.02},
        {"method": "ICC (Small)", "condition": "shape", "n_clusters": 2, "accuracy": 0.80, "accuracy_se": 0.02},
    ])
    t3 = C.table3(summary, paper_results("T3"))
    assert list(t3.columns) == ["method", "color, c=2", "shape, c=2"]
    paper_km = t3.set_index("method").loc["(paper) " + C.KMEANS_METHOD, "color, c=2"]
    assert paper_km.startswith("0.66")                  # the paper's ImageNet colour k-means, 66.40
    assert "(paper) ICC (Large)" in set(t3["method"])
    assert not any("mood" in c for c in t3.columns)     # conditions our data lacks are left out


def test_conditional_prompts_name_the_condition(shapes):
    from icc_utils.vision.episodes import make_conditional_episodes
    from icc_utils.prompts import image_messages

    objects = sorted(set(shapes.attributes["object"]))
    for ep in make_conditional_episodes(shapes, objects, ["color", "pattern"], [2], 1, 0, "test", (4, 6)):
        user = image_messages(ep.n_points, ep.n_clusters, ep.params["condition"])[1]["content"]
        assert f"into 2 clusters based on the {ep.params['condition']}." in user
        assert user.count("<image>") == ep.n_points


def test_caption_template_is_checked():
    assert C.check_caption_template("a {color} {shape}", ["shape", "color"]) == "a {color} {shape}"
    with pytest.raises(ValueError, match="cond_caption_template.*unknown: \\['size'\\]"):
        C.check_caption_template("a {size} {shape}", ["shape", "color"])
    with pytest.raises(ValueError, match="cond_caption_template"):
        C.check_caption_template("no fields", ["shape"])


def test_condition_specificity_is_high_for_a_reply_that_follows_the_condition_and_low_for_one_partition(shapes):
    from icc_utils.vision.episodes import make_conditional_episodes

    conds = ["shape", "color", "pattern"]
    eps = make_conditional_episodes(shapes, None, conds, [2, 3], 6, 0, "test", (8, 12))
    follows = C.condition_specificity(eps, [e.labels for e in eps], shapes, conds, "oracle")
    assert (follows["ari_asked"] == 1).all() and (follows["specificity"] > 0).mean() > 0.9
    # one clustering whatever the prompt asks (here: always the shape partition) is specific only to shape
    by_shape = [C.relabel(e, shapes, "shape").labels for e in eps]
    fixed = C.condition_specificity(eps, by_shape, shapes, conds, "shape always")
    assert (fixed.loc[fixed["condition"] == "shape", "ari_asked"] == 1).all()
    assert (fixed.loc[fixed["condition"] != "shape", "specificity"] < 0).all()
    assert (follows["accuracy_asked"] == 1).all() and (follows["accuracy_gain"] >= 0).all()
    assert list(follows.columns) == ["method", "episode_id", "condition", "n_clusters", "ari_asked", "ari_other",
                                     "specificity", "accuracy_asked", "accuracy_other", "accuracy_gain"]
    with pytest.raises(ValueError, match="needs a condition among"):
        C.condition_specificity(eps[:1], [eps[0].labels], shapes, [eps[0].params["condition"]], "x")


def test_model_names_are_distinct_per_method_even_when_adapter_folders_share_a_name():
    names = [C.model_name(m) for m in ("ICC (Curriculum)", "ICC (unconditional curriculum)", "ICC (Small)")]
    assert names == ["cond-icc-curriculum", "cond-icc-unconditional-curriculum", "cond-icc-small"]
