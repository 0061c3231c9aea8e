"""Is it the shapes tower? Notebook 05's tower objective (reconstruct) on the shapes, then object clustering.

Trains a tower with ``objective="reconstruct"`` (as notebook 05's digits tower, 60 epochs) on the fit images of the
training objects, then one c = 2 object stage (``--objects``, 4-10 images, the conditional curriculum's learning rate
and LoRA), with the learning curve on c = 2 object episodes of those objects' validation images.
Usage: python experiments/conditional-curriculum/tower_swap.py OUT --objects "a;b;c" [--episodes 900]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from icc_utils.profiles import load_profile
from icc_utils.vision import conditional as C, curriculum as IC, tower as T, vlm as V
from icc_utils.vision.episodes import make_image_episodes


def main(out: Path, objects: list[str], n_episodes: int, objective: str) -> None:
    p = load_profile("default")
    images = C.load_conditional_set("shapes", "", p["cond_image_size"], p["cond_n_images"], p["seed"])
    classes = C.object_split(images, "shapes", p["cond_test_fraction"], p["seed"])["train"]
    fit_idx, val_idx = IC.holdout_split(images, classes, p["cond_val_fraction"], p["seed"])
    fit, val = images.subset(fit_idx), images.subset(val_idx)
    rec = T.pretrain_tower(fit, classes, out / "tower", T.TowerConfig(
        image_size=p["cond_image_size"], patch_size=p["cond_tower_patch_size"], epochs=60, seed=p["seed"],
        objective=objective))
    print("tower", objective, rec.get("seconds"))
    base = V.build_embedded_llava(out / "tower", out / "base", seed=p["seed"])
    stage = IC.ImageStage.from_dict({"name": "obj-c2", "n_clusters": [2], "n_episodes": n_episodes, "kernel": 4,
                                     "images": [4, 10], "classes": objects})
    val_eps = make_image_episodes(val, objects, [2], 30, p["seed"], "val", (4, 6))
    config = IC.curriculum_config(p, "cond", base)
    _, curve = IC.train_with_curve(base, [stage], fit, classes, val, val_eps, out, config, 300,
                                   title=f"{objective} tower on the shapes: c = 2 object episodes (validation)")
    print(curve.to_string(index=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--objects", required=True, help="';'-separated training objects")
    ap.add_argument("--episodes", type=int, default=900)
    ap.add_argument("--objective", default="reconstruct")
    a = ap.parse_args()
    main(a.out, a.objects.split(";"), a.episodes, a.objective)
