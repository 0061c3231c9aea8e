"""Text-conditioned image clustering (Section 5, notebook 06): data, captions, paired episodes, Table 3.

The episodes themselves come from :func:`icc_utils.vision.episodes.make_conditional_episodes`,
the models from :mod:`icc_utils.vision.vlm` and IC|TC from :mod:`icc_utils.vision.ictc`. This
module holds what only notebook 06 needs:

* :func:`load_conditional_set`, :func:`object_split`, :func:`objects_subset`: its data;
* :func:`fit_attribute_probes` / :func:`probe_captions`: a captioner without a language model
  (``cond_captioner="probes"``): one linear probe per attribute on the frozen tower's features,
  fitted on the *training* images only, its predictions filled into a template
  (``"a red striped circle"``). The default instead lets the stand-in caption the images itself
  after its projector was aligned (:func:`icc_utils.vision.train.align_projector`), as IC|TC does
  with LLaVA; :func:`caption_accuracy` measures either.
* :func:`paired_episodes`: the same images under two conditions (Figures 5 and 14);
  :func:`condition_specificity`: how much more a reply agrees with the asked condition than with another.
* :func:`add_condition`, :func:`table3`: Table 3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import canonical_labels
from .baselines import KMEANS_METHOD
from .datasets import (IMAGENET_ATTRIBUTE_CONDITIONS, STANFORD40_CONDITIONS, load_imagenet_attributes,
                       load_stanford40_actions)
from .episodes import ImageEpisode
from .images import ImageSet, class_disjoint_split, is_missing_value
from .shapes import SHAPES_CONDITIONS, combination_split, make_shapes_set


#: The paper's names for Table 3's methods, keyed by ours.
PAPER_METHOD_NAMES = {"kmeans": KMEANS_METHOD}


#: Data sets notebook 06 reads: (the attribute that names an image's object/class, its conditions).
CONDITIONAL_DATASETS = {"shapes": ("object", SHAPES_CONDITIONS),
                        "imagenet-attributes": ("object", IMAGENET_ATTRIBUTE_CONDITIONS),
                        "stanford40": ("action", STANFORD40_CONDITIONS)}


# ---------------------------------------------------------------- data

def load_conditional_set(dataset: str, root: str | Path = "", image_size: int = 16, n_images: int = 1440,
                         seed: int = 0) -> ImageSet:
    """The image set of notebook 06: the offline shapes (``n_images``, rendered from ``seed``) or the paper's data.

    ``imagenet-attributes`` and ``stanford40`` read ``root`` (see
    :func:`~icc_utils.vision.datasets.load_imagenet_attributes` / ``load_stanford40_actions`` for the layout).
    """
    if dataset not in CONDITIONAL_DATASETS:
        raise ValueError(f"cond_dataset={dataset!r} is not allowed; choose one of {list(CONDITIONAL_DATASETS)}")
    if dataset == "shapes":
        return make_shapes_set(n_images, seed=seed, image_size=image_size)
    if not str(root):
        raise ValueError(f"cond_dataset={dataset!r} needs cond_data_root: the folder holding the paper's data "
                         "(README, 'Data for the paper profile')")
    loader = load_imagenet_attributes if dataset == "imagenet-attributes" else load_stanford40_actions
    return loader(root, image_size=image_size)


def object_split(imageset: ImageSet, dataset: str, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """Train/test objects: for the shapes, attribute COMBINATIONS never seen in training
    (:func:`~icc_utils.vision.shapes.combination_split`); for the paper's data, disjoint classes."""
    object_key, conditions = CONDITIONAL_DATASETS[dataset]
    if dataset == "shapes":
        return combination_split(imageset, test_fraction, seed, conditions=conditions, object_key=object_key)
    objects = sorted({str(v) for v in imageset.attributes[object_key] if not is_missing_value(v)})
    return class_disjoint_split(objects, test_fraction=test_fraction, seed=seed)


def objects_subset(imageset: ImageSet, objects: Sequence[str], object_key: str = "object") -> ImageSet:
    """The images whose ``object_key`` attribute is one of ``objects`` (e.g. to train the tower on training objects)."""
    keep = np.flatnonzero(np.isin(np.asarray(imageset.attributes[object_key]).astype(str), [str(o) for o in objects]))
    return imageset.subset(keep)


# ---------------------------------------------------------------- captioner (offline default)

def check_caption_template(template: str, conditions: Sequence[str]) -> str:
    """``template`` must name only conditions as fields (``"a {color} {pattern} {shape}"``)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(str(template)) if f is not None]
    except ValueError as exc:
        raise ValueError(f"cond_caption_template={template!r} is not a format string: {exc}") from exc
    bad = sorted(set(fields) - set(conditions))
    if not fields or bad:
        raise ValueError(f"cond_caption_template={template!r} must name conditions as {{fields}}; "
                         f"allowed fields: {list(conditions)}" + (f"; unknown: {bad}" if bad else ""))
    return str(template)


def fit_attribute_probes(features: np.ndarray, attributes: Mapping[str, Sequence[str]], conditions: Sequence[str],
                         seed: int = 0) -> dict:
    """One multinomial logistic regression per condition on frozen image features (training images only).

    Images whose value of a condition is missing (:func:`~icc_utils.vision.images.is_missing_value`)
    are left out of that condition's probe. Returns ``{condition: fitted estimator}``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    probes = {}
    for cond in conditions:
        if cond not in attributes:
            raise ValueError(f"condition {cond!r} has no attribute values; choose from {sorted(attributes)}")
        values = np.asarray([str(v).strip() for v in attributes[cond]], dtype=object)
        if len(values) != len(features):
            raise ValueError(f"attributes[{cond!r}] has {len(values)} values for {len(features)} feature rows")
        keep = np.array([not is_missing_value(v) for v in values])
        if len(set(values[keep])) < 2:
            raise ValueError(f"condition {cond!r} has fewer than 2 distinct values among the training images; "
                             "a probe needs at least 2")
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        probes[cond] = clf.fit(features[keep], values[keep])
    return probes


def probe_predictions(probes: Mapping, features: np.ndarray) -> dict[str, np.ndarray]:
    """Each probe's predicted value for every image: ``{condition: array of strings}``."""
    features = np.asarray(features, dtype=np.float64)
    return {cond: np.asarray(p.predict(features)).astype(str) for cond, p in probes.items()}


def probe_captions(probes: Mapping, features: np.ndarray, template: str = "a {color} {pattern} {shape}") -> list[str]:
    """Template captions from the probes' predictions, one per image: ``"a red striped circle"``.

    ``template`` names conditions as fields; every field must have a probe.
    """
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = sorted(set(fields) - set(probes))
    if missing:
        raise ValueError(f"template={template!r} names {missing}, which have no probe; probes: {sorted(probes)}")
    pred = probe_predictions(probes, features)
    return [template.format(**{f: pred[f][i] for f in fields}) for i in range(len(features))]


def caption_accuracy(captions: Mapping[int, str] | Sequence[str], imageset: ImageSet, indices: Sequence[int],
                     conditions: Sequence[str]) -> pd.DataFrame:
    """How often an image's caption names its true value of each condition (as a whole word, any case).

    ``captions[i]`` is the caption of image ``i``; images without a usable value are skipped.
    Works for any captioner (probe templates or a model's free text): the captions' error rate.
    """
    import re

    rows = []
    for cond in conditions:
        hits = []
        for i in indices:
            value = str(imageset.attributes[cond][int(i)]).strip()
            if is_missing_value(value):
                continue
            hits.append(re.search(rf"\b{re.escape(value.lower())}\b", str(captions[int(i)]).lower()) is not None)
        rows.append({"condition": cond, "n_images": len(hits),
                     "caption_accuracy": float(np.mean(hits)) if hits else float("nan")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the same images, two conditions

def relabel(episode: ImageEpisode, imageset: ImageSet, condition: str, episode_id: str | None = None) -> ImageEpisode:
    """The same images clustered by another attribute: labels by first appearance, c = distinct values."""
    attrs = imageset.attributes or {}
    if condition not in attrs:
        raise ValueError(f"condition {condition!r} is not an attribute of {imageset.name!r}; choose from {sorted(attrs)}")
    values = [str(attrs[condition][i]).strip() for i in episode.indices]
    if any(is_missing_value(v) for v in values):
        raise ValueError(f"episode {episode.id} has images without a usable {condition!r} value")
    labels = canonical_labels([sorted(set(values)).index(v) for v in values])
    first: dict[int, str] = {}
    for l, v in zip(labels, values):
        first.setdefault(l, v)
    params = dict(episode.params, condition=condition, n_clusters=len(first),
                  classes=[first[k] for k in range(len(first))])
    return ImageEpisode(id=episode_id or f"{episode.id}-{condition}", seed=episode.seed, params=params,
                        indices=list(episode.indices), labels=labels)


def paired_episodes(imageset: ImageSet, objects: Sequence[str] | None, conditions: Sequence[str], n_images: int,
                    seed: int, n_clusters: int = 2, object_key: str = "object") -> list[ImageEpisode]:
    """``n_images`` images that form ``n_clusters`` clusters under EVERY condition in ``conditions``.

    Draws (seeded) ``n_clusters`` values per condition, keeps the images of ``objects`` (all when
    None) whose values are among them, and samples ``n_images`` until every condition shows all
    its chosen values and no two conditions give the same partition (so the figure can show
    the condition changing the answer). Returns one episode per condition, same images in the
    same order.
    """
    attrs = imageset.attributes or {}
    for cond in conditions:
        if cond not in attrs:
            raise ValueError(f"condition {cond!r} is not an attribute of {imageset.name!r}; choose from {sorted(attrs)}")
    if n_images < n_clusters:
        raise ValueError(f"n_images={n_images} is out of range; it must be >= n_clusters={n_clusters}")
    allowed = np.ones(imageset.n_images, bool) if objects is None else \
        np.isin(np.asarray(attrs[object_key]).astype(str), [str(o) for o in objects])
    rng = np.random.default_rng(seed)
    cols = {c: np.asarray([str(v).strip() for v in attrs[c]], dtype=object) for c in conditions}
    values = {}
    for cond, col in cols.items():
        values[cond] = sorted({v for v in col[allowed] if not is_missing_value(v)})
        if len(values[cond]) < n_clusters:
            raise ValueError(f"condition {cond!r} has {len(values[cond])} values among the allowed images; "
                             f"n_clusters={n_clusters} needs at least that many")
    most = 0
    for _ in range(200):  # seeded draws of the values, then of the images, until every value shows
        keep = allowed.copy()
        for cond, col in cols.items():
            chosen = [values[cond][i] for i in rng.choice(len(values[cond]), n_clusters, replace=False)]
            keep &= np.isin(col, chosen)
        pool = np.flatnonzero(keep)
        most = max(most, len(pool))
        if len(pool) < n_images:
            continue
        for _ in range(20):
            idx = rng.choice(pool, n_images, replace=False)
            parts = [tuple(canonical_labels([values[c].index(cols[c][i]) for i in idx])) for c in conditions]
            if all(len(set(p)) == n_clusters for p in parts) and len(set(parts)) == len(parts):
                base = ImageEpisode(id=f"paired-{seed}", seed=int(seed), params={
                    "dataset": imageset.name, "split": "test", "n_points": int(n_images), "n_clusters": n_clusters},
                    indices=[int(i) for i in idx], labels=[0] * n_images)
                return [relabel(base, imageset, c, f"paired-{seed}-{c}") for c in conditions]
    raise ValueError(f"no draw of {n_images} images showed {n_clusters} values of every condition in {list(conditions)} "
                     f"(at most {most} images had the drawn values); lower n_images")


# ---------------------------------------------------------------- does the condition change the clustering?

def condition_specificity(episodes: Sequence[ImageEpisode], predicted: Sequence, imageset: ImageSet,
                          conditions: Sequence[str], method: str) -> pd.DataFrame:
    """Per episode: the reply scored against the asked condition's labels and against each other condition's
    labels of the same images, keeping the other condition it agrees with most: ``ari_asked``, ``ari_other`` and
    their difference ``specificity``; ``accuracy_asked``, ``accuracy_other`` and ``accuracy_gain`` likewise (the
    other labels may have another c, which caps their accuracy lower: ARI is the fairer of the two). A model that
    follows the condition scores above 0; one clustering whatever the prompt asks (k-means) about 0 on average.
    ``predicted``: label lists or Predictions, in the order of ``episodes``."""
    from ..metrics import ari, clustering_accuracy

    rows = []
    for ep, p in zip(episodes, predicted):
        labels, asked = getattr(p, "labels", p), (ep.params or {}).get("condition")
        others = [relabel(ep, imageset, o).labels for o in conditions if o != asked]
        if asked is None or not others:
            raise ValueError(f"episode {ep.id} needs a condition among {list(conditions)} and another condition to "
                             "compare with")
        a, o = ari(ep.labels, labels), max(ari(t, labels) for t in others)
        acc, acc_o = clustering_accuracy(ep.labels, labels), max(clustering_accuracy(t, labels) for t in others)
        rows.append({"method": method, "episode_id": ep.id, "condition": asked, "n_clusters": ep.n_clusters,
                     "ari_asked": a, "ari_other": o, "specificity": a - o,
                     "accuracy_asked": acc, "accuracy_other": acc_o, "accuracy_gain": acc - acc_o})
    return pd.DataFrame(rows)


def model_name(method: str) -> str:
    """The name a method's replies are cached and scored under: ``"ICC (Curriculum)"`` -> ``"cond-icc-curriculum"``
    (distinct for distinct methods, whatever their adapter folders are called)."""
    return "cond-" + "-".join("".join(ch if ch.isalnum() else " " for ch in method.lower()).split())


# ---------------------------------------------------------------- Table 3

def add_condition(rows: pd.DataFrame, episodes: Sequence) -> pd.DataFrame:
    """Per-episode rows (:func:`~icc_utils.vision.baselines.score_image_rows`) with the
    episode's condition as a column."""
    cond = {ep.id: (ep.params or {}).get("condition") for ep in episodes}
    out = rows.copy()
    out["condition"] = out["episode_id"].map(cond)
    return out


def table3(summary: pd.DataFrame, paper: pd.DataFrame | None = None, paper_dataset: str = "ImageNet-Attributes"
           ) -> pd.DataFrame:
    """Table 3 layout: one row per method, one column per (condition, c), "mean ± se".

    The paper's rows (``paper_dataset``, c=2) follow, prefixed ``(paper)``, in the columns of the
    conditions our data shares with it (other paper conditions are left out: different data).
    """
    from ..metrics import fmt_mean_se

    s = summary.copy()
    s["column"] = s["condition"].astype(str) + ", c=" + s["n_clusters"].astype(int).astype(str)
    s["value"] = [fmt_mean_se(m, e) for m, e in zip(s["accuracy"], s["accuracy_se"])]
    wide = s.pivot_table(index="method", columns="column", values="value", aggfunc="first", sort=False)
    if paper is not None and len(paper):
        p = paper[(paper["dataset"] == paper_dataset) & paper["condition"].isin(set(s["condition"]))].copy()
        if len(p):
            p["column"] = p["condition"] + ", c=" + p["n_clusters"].astype(int).astype(str)
            p["value"] = [fmt_mean_se(m, e) for m, e in zip(p["accuracy"], p["stderr"])]
            p["method"] = "(paper) " + p["method"].replace(PAPER_METHOD_NAMES)
            wide = pd.concat([wide, p.pivot_table(index="method", columns="column", values="value",
                                                  aggfunc="first", sort=False)])
    wide = wide.reindex(columns=sorted(wide.columns))
    return wide.reset_index().rename(columns={"index": "method"}).fillna("")
