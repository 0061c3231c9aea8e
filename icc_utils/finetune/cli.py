"""``python -m icc_utils.finetune --profile X [--seed N] [--out DIR] [--augmented]``: train notebook 04's adapter."""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import FinetuneConfig, config_from_params
from .curriculum import curriculum_from_params, train_curriculum
from .data import training_episodes
from .training import train


def main(argv=None) -> None:
    """``python -m icc_utils.finetune --profile paper`` (or under ``accelerate launch``): train notebook
    04's adapter (without the learning curve) into ``results/<profile>/04/adapter``; the notebook then
    reuses it."""
    from .. import results_dir
    from ..profiles import load_profile

    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--augmented", action="store_true", help="train the finetuned-aug adapter (Table 5)")
    ap.add_argument("--seed", type=int, default=None,
                    help="root seed of the training data and LoRA (default: the profile's)")
    ap.add_argument("--out", default=None, help="adapter folder (default: results/<profile>/04/adapter)")
    args = ap.parse_args(argv)
    params = load_profile(args.profile)
    seed = params["seed"] if args.seed is None else args.seed
    config = config_from_params(params, params["model"], seed)
    stages = curriculum_from_params(params.get("ft_curriculum", []))
    name = "adapter"
    if args.augmented:
        config = FinetuneConfig(**{**config.to_dict(), "n_permutations": params["ft_aug_permutations"]})
        name = "adapter_aug"
    out = Path(args.out) if args.out else results_dir(args.profile, "04") / name
    if stages:   # the curriculum replaces notebook 00's training split
        result = train_curriculum(config, stages, out)
    else:
        result = train(config, training_episodes(args.profile, params["ft_n_train_episodes"]), out)
    print(result)
