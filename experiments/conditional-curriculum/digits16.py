"""Is it the image size? Notebook 05's digits recipe on the digits upscaled to 16x16 (the shapes' size), read by a
tower with patch size 4 (the shapes tower's 4x4 grid), trained with notebook 05's objective.

The default profile's first image stage (c = 2, 4-10 images, one token per image) for ``--episodes`` episodes on the
fit images of the digits 0-4, its curve on 10 episodes per c = 2, 3, 4 of their held-out images (as make train-images).
Usage: python experiments/conditional-curriculum/digits16.py OUT [--episodes 900]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from icc_utils.profiles import load_profile
from icc_utils.vision import curriculum as IC, images as I, tower as T, vlm as V
from icc_utils.vision.episodes import make_image_episodes


def main(out: Path, n_episodes: int) -> None:
    p = load_profile("default")
    digits = I.load_digits_set()
    images = replace(digits, images=digits.images.repeat(2, axis=1).repeat(2, axis=2))   # 8x8 -> 16x16
    classes = [str(c) for c in p["img_train_classes"]]
    fit_idx, val_idx = IC.holdout_split(images, classes, p["img_val_fraction"], p["seed"])
    fit, val = images.subset(fit_idx), images.subset(val_idx)
    T.pretrain_tower(fit, classes, out / "tower", T.TowerConfig(image_size=16, patch_size=4, seed=p["seed"],
                                                               epochs=p["img_tower_epochs"],
                                                               objective=p["img_tower_objective"]))
    base = V.build_embedded_llava(out / "tower", out / "base", seed=p["seed"])
    stage = replace(IC.image_curriculum_from_params(p["img_curriculum"])[0], n_episodes=n_episodes)
    val_eps = make_image_episodes(val, classes, [2, 3, 4], p["img_curve_n_per_c"], p["seed"], "val",
                                  tuple(p["img_length_range"]))
    config = IC.curriculum_config(p, "img", base)
    _, curve = IC.train_with_curve(base, [stage], fit, classes, val, val_eps, out, config, 300,
                                   title="digits at 16x16, patch size 4: validation episodes")
    print(curve.to_string(index=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--episodes", type=int, default=900)
    a = ap.parse_args()
    main(a.out, a.episodes)
