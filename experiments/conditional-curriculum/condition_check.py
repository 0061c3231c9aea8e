"""A conditional-curriculum adapter on conditional validation episodes, per condition: accuracy and ARI with their
standard errors, beside one label for every point.

Validation images only (held out of the training objects, as the curriculum's curve); c = 2 episodes of 6-12 images,
``--n`` per condition. Usage: python experiments/conditional-curriculum/condition_check.py MODEL_DIR ADAPTER [--n 30]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from icc_utils.metrics import ari, clustering_accuracy
from icc_utils.profiles import load_profile
from icc_utils.vision import conditional as C, curriculum as IC, vlm as V
from icc_utils.vision.episodes import make_conditional_episodes
from icc_utils.vision.publish import adapter_kernel


def main(model_dir: str, adapter: str, n: int = 30) -> None:
    p = load_profile("default")
    images = C.load_conditional_set("shapes", "", p["cond_image_size"], p["cond_n_images"], p["seed"])
    classes = C.object_split(images, "shapes", p["cond_test_fraction"], p["seed"])["train"]
    val = images.subset(IC.holdout_split(images, classes, p["cond_val_fraction"], p["seed"])[1])
    eps = make_conditional_episodes(val, None, p["cond_conditions"], [2], n, p["seed"], "val",
                                    tuple(p["cond_length_range"]))
    base = V.build_embedded_llava(Path(model_dir) / "tower", Path(tempfile.mkdtemp()) / "base", seed=p["seed"])
    preds = V.VisionICC(str(base), adapter_kernel(adapter), adapter).predict(eps, val)
    for cond in p["cond_conditions"]:
        rows = [(clustering_accuracy(e.labels, q.labels), ari(e.labels, q.labels),
                 clustering_accuracy(e.labels, [0] * e.n_points))
                for e, q in zip(eps, preds) if e.params["condition"] == cond]
        a = np.array(rows)
        se = a.std(0, ddof=1) / np.sqrt(len(a))
        print(f"{cond:8s} n={len(a)} accuracy {a[:, 0].mean():.3f} ± {se[0]:.3f}  ARI {a[:, 1].mean():.3f} ± "
              f"{se[1]:.3f}  one label {a[:, 2].mean():.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir"), ap.add_argument("adapter"), ap.add_argument("--n", type=int, default=30)
    a = ap.parse_args()
    main(a.model_dir, a.adapter, a.n)
