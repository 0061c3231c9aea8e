"""Does a conditional-curriculum adapter cluster validation images by *object* (attribute combination)?

Validation images only (held out of the training objects, as the curriculum's curve); c = 2 object episodes of
4-6 images (objects with at least 6 validation images), 30 episodes; ICC against k-means on the same frozen features, random labels and one label.
Usage: python experiments/conditional-curriculum/objects_check.py MODEL_DIR ADAPTER [--n 30] [--objects "a;b;c"]
(MODEL_DIR holds tower/; ADAPTER a stage folder of adapter_stages/ or models/<name>/stages/; --objects: only these).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from icc_utils.metrics import ari, clustering_accuracy
from icc_utils.profiles import load_profile
from icc_utils.vision import conditional as C, curriculum as IC, vlm as V
from icc_utils.vision.baselines import mean_pooled_features
from icc_utils.vision.episodes import make_image_episodes
from icc_utils.vision.publish import adapter_kernel


def main(model_dir: str, adapter: str, n: int = 30, objects: str = "") -> None:
    p = load_profile("default")
    images = C.load_conditional_set("shapes", "", p["cond_image_size"], p["cond_n_images"], p["seed"])
    classes = C.object_split(images, "shapes", p["cond_test_fraction"], p["seed"])["train"]
    val = images.subset(IC.holdout_split(images, classes, p["cond_val_fraction"], p["seed"])[1])
    names = np.asarray(val.class_names)[val.labels]
    have = sorted(o for o in set(names) if (names == o).sum() >= 6     # 20% of ~30 images per object
                  and (not objects or o in objects.split(";")))
    eps = make_image_episodes(val, have, [2], n, p["seed"], "val", (4, 6))
    base = V.build_embedded_llava(Path(model_dir) / "tower", Path(tempfile.mkdtemp()) / "base", seed=p["seed"])
    icc = V.VisionICC(str(base), adapter_kernel(adapter), adapter)
    preds = icc.predict(eps, val)
    km = IC.kmeans_reference(mean_pooled_features(icc.model, icc.processor, val.images), eps, p["seed"])
    rng = np.random.default_rng(0)
    rows = {"ICC": [(clustering_accuracy(e.labels, q.labels), ari(e.labels, q.labels)) for e, q in zip(eps, preds)],
            "one label": [(clustering_accuracy(e.labels, [0] * e.n_points), 0.0) for e in eps],
            "random": [(clustering_accuracy(e.labels, r), ari(e.labels, r)) for e in eps
                       for r in [rng.integers(0, 2, e.n_points)]]}
    for name, v in rows.items():
        a = np.array(v)
        print(f"{name:10s} n={len(a)} accuracy {a[:, 0].mean():.3f} ± {a[:, 0].std(ddof=1) / np.sqrt(len(a)):.3f}  "
              f"ARI {a[:, 1].mean():.3f} ± {a[:, 1].std(ddof=1) / np.sqrt(len(a)):.3f}")
    print("k-means (frozen features)", {k: round(v, 3) for k, v in km.items()})
    print("well-formed", np.mean([bool(q.well_formed) for q in preds]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir"), ap.add_argument("adapter")
    ap.add_argument("--n", type=int, default=30), ap.add_argument("--objects", default="")
    a = ap.parse_args()
    main(a.model_dir, a.adapter, a.n, a.objects)
