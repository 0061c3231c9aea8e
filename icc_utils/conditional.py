"""Text-conditioned image clustering (Section 5, notebook 06): captions, paired episodes, Table 3.

The episodes themselves come from :func:`icc_utils.image_data.make_conditional_episodes`, the
models from :mod:`icc_utils.vision` and IC|TC from :mod:`icc_utils.ictc`. This module holds what
only notebook 06 needs:

* :func:`fit_attribute_probes` / :func:`probe_captions`: a captioner without a language model
  (``cond_captioner="probes"``): one linear probe per attribute on the frozen tower's features,
  fitted on the *training* images only, its predictions filled into a template
  (``"a red striped circle"``). The default instead lets the stand-in caption the images itself
  after its projector was aligned (:func:`icc_utils.vision.align_projector`), as IC|TC does
  with LLaVA; :func:`caption_accuracy` measures either.
* :func:`paired_episodes`: the same images under two conditions (Figures 5 and 14).
* :func:`table3`, :func:`target_check`, :func:`findings`: Table 3 and the issue's target.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .data import canonical_labels
from .image_data import (IMAGENET_ATTRIBUTE_CONDITIONS, SHAPES_CONDITIONS, STANFORD40_CONDITIONS, ImageEpisode,
                         ImageSet, is_missing_value)

#: The k-means row's method name (shared with notebook 05's Table 2).
KMEANS_METHOD = "k-means (frozen features)"
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
    :func:`~icc_utils.image_data.load_imagenet_attributes` / ``load_stanford40_actions`` for the layout).
    """
    from . import image_data as I

    if dataset not in CONDITIONAL_DATASETS:
        raise ValueError(f"cond_dataset={dataset!r} is not allowed; choose one of {list(CONDITIONAL_DATASETS)}")
    if dataset == "shapes":
        return I.make_shapes_set(n_images, seed=seed, image_size=image_size)
    if not str(root):
        raise ValueError(f"cond_dataset={dataset!r} needs cond_data_root: the folder holding the paper's data "
                         "(README, 'Data for the paper profile')")
    loader = I.load_imagenet_attributes if dataset == "imagenet-attributes" else I.load_stanford40_actions
    return loader(root, image_size=image_size)


def object_split(imageset: ImageSet, dataset: str, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """Train/test objects: for the shapes, attribute COMBINATIONS never seen in training
    (:func:`~icc_utils.image_data.combination_split`); for the paper's data, disjoint classes."""
    from . import image_data as I

    object_key, conditions = CONDITIONAL_DATASETS[dataset]
    if dataset == "shapes":
        return I.combination_split(imageset, test_fraction, seed, conditions=conditions, object_key=object_key)
    objects = sorted({str(v) for v in imageset.attributes[object_key] if not is_missing_value(v)})
    return I.class_disjoint_split(objects, test_fraction=test_fraction, seed=seed)


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

    Images whose value of a condition is missing (:func:`~icc_utils.image_data.is_missing_value`)
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


# ---------------------------------------------------------------- Table 3 and the target

def add_condition(rows: pd.DataFrame, episodes: Sequence) -> pd.DataFrame:
    """Per-episode rows (``vision.score_image_rows``) with the episode's condition as a column."""
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
    from .metrics import fmt_mean_se

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


def target_check(summary: pd.DataFrame, methods: Sequence[str], margin: float = 0.15,
                 baseline: str = KMEANS_METHOD) -> pd.DataFrame:
    """Issue 6's target: each conditional method beats k-means by at least ``margin`` under each condition.

    One row per (method, condition, c): both means, the difference, its standard error (the
    two methods' errors combined; same episodes, so this is conservative) and ``meets``.
    """
    rows = []
    for (cond, c), cell in summary.groupby(["condition", "n_clusters"], sort=True):
        base = cell[cell["method"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        for _, r in cell[cell["method"].isin(list(methods))].iterrows():
            diff = float(r["accuracy"] - b["accuracy"])
            rows.append({"method": r["method"], "condition": cond, "n_clusters": int(c), "icc": float(r["accuracy"]),
                         "kmeans": float(b["accuracy"]), "difference": diff,
                         "difference_se": float(np.hypot(r["accuracy_se"], b["accuracy_se"])),
                         "meets": diff >= margin})
    return pd.DataFrame(rows, columns=["method", "condition", "n_clusters", "icc", "kmeans", "difference",
                                       "difference_se", "meets"])


def target_verdict(check: pd.DataFrame, margin: float = 0.15) -> str:
    """One line: met if, for every (condition, c), some conditional method clears k-means by ``margin``."""
    if check.empty:
        return "NOT met: nothing to compare"
    best = check.groupby(["condition", "n_clusters"])["difference"].max()
    cells = ", ".join(f"{cond} c={c}: {d:+.3f}" for (cond, c), d in best.items())
    if (best >= margin).all():
        return f"met: under every condition a conditional model beats k-means by >= {margin:.2f} ({cells})"
    return f"NOT met: best difference over k-means per condition ({cells}); needed >= {margin:.2f}"


def findings(summary: pd.DataFrame, check: pd.DataFrame, verdict: str, captions: pd.DataFrame | None,
             seconds: float, stand_in: bool = True) -> str:
    """The notebook's closing paragraph, computed from the numbers (never typed in)."""
    from .metrics import fmt_mean_se

    lines = []
    for (cond, c), cell in summary.groupby(["condition", "n_clusters"], sort=True):
        cell = cell.sort_values("accuracy", ascending=False)
        parts = [f"{r['method']} {fmt_mean_se(r['accuracy'], r['accuracy_se'])}" for _, r in cell.iterrows()]
        lines.append(f"- {cond}, c={int(c)}: " + "; ".join(parts))
    if "nmi" in summary:
        nmi = summary.groupby("method", sort=False)["nmi"].mean().sort_values()
        lines += ["", "Mean NMI over the cells (0: the labels carry nothing about the true clusters, as when a model "
                  "gives every image the same label; accuracy is then the largest cluster's share, about chance): "
                  + "; ".join(f"{m} {v:.2f}" for m, v in nmi.items())]
    lines += ["", f"Target (conditional ICC >= k-means + 0.15 under every condition): {verdict}."]
    lines.append("The paper (Table 3, ImageNet-with-Attributes, 7B model) has ICC (Large) above k-means by 18, 32 and "
                 "8 points on color, pattern and shape, and above IC|TC on all three.")
    if stand_in:
        cap = ""
        if captions is not None and len(captions):
            cap = (" Our IC|TC captions name the test images' true value this often: " + ", ".join(
                f"{r['condition']} {r['caption_accuracy']:.2f}" for _, r in captions.iterrows()) + ".")
        lines.append(f"Ours: the offline stand-in (SmolLM2-135M + a small tower trained on the training objects only) "
                     f"on procedurally drawn shapes; the notebook ran {seconds / 60:.1f} minutes.{cap} Where our "
                     "numbers differ from the paper's, the gap is between this stand-in and the paper's model, data "
                     "and budget, not a measurement of the paper's claim.")
    else:
        lines.append(f"The notebook ran {seconds / 60:.1f} minutes.")
    return "\n".join(lines)
