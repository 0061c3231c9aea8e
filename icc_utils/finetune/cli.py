"""``python -m icc_utils.finetune --profile X [--seed N] [--out DIR] [--augmented] [--from-stage K --init-adapter DIR]``:
train notebook 04's adapter (``make train`` runs it, then :mod:`icc_utils.publish`)."""
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
    ap.add_argument("--from-stage", type=int, default=1,
                    help="curriculum: train stages K.. only, starting from --init-adapter (a published stage)")
    ap.add_argument("--init-adapter", default=None, help="the adapter stage K starts from (K > 1)")
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
    if not 1 <= args.from_stage <= max(len(stages), 1):
        ap.error(f"--from-stage={args.from_stage} is out of range; the profile's curriculum has {len(stages)} stages")
    if (args.from_stage > 1) != (args.init_adapter is not None):
        ap.error("--from-stage K > 1 needs --init-adapter (the adapter of stage K-1, e.g. "
                 "models/icc-numeric/stages/4-c3d3-separated), and --init-adapter needs --from-stage")
    if stages:   # the curriculum replaces notebook 00's training split
        result = train_curriculum(config, stages[args.from_stage - 1:], out, init_adapter=args.init_adapter,
                                  first_stage=args.from_stage)
    else:
        result = train(config, training_episodes(args.profile, params["ft_n_train_episodes"]), out)
    print(result)
