"""The conditional image curriculum: notebook 06's stand-in trained easy to hard (issue 38), as notebook 05's is
(:mod:`icc_utils.vision.curriculum`).

* the **conditional** model (``cond_curriculum``): episodes that cluster by shape, colour or pattern in turn, the
  condition named in the prompt;
* the **unconditional** baseline (``cond_uncond_curriculum``): the same budget of episodes clustered by object
  (attribute combination), no condition in its prompts; at test time it is prompted with the condition, the
  paper's unconditional row.

Both read the same tower (trained on the training objects' images, validation images held out, to name each
attribute) and are validated on the same conditional episodes of held-out images of the training objects; the
test objects (attribute combinations never seen in training) are never used.
``python -m icc_utils.vision.cond_curriculum --model conditional`` (and ``--model unconditional``) trains one into
``runs/icc-<model>`` (``make train-conditional``).
"""
from __future__ import annotations

from pathlib import Path

#: The two models of notebook 06's curriculum: their profile key.
COND_MODELS = {"conditional": "cond_curriculum", "unconditional": "cond_uncond_curriculum"}


def main(argv=None) -> None:
    """``python -m icc_utils.vision.cond_curriculum --model conditional``: train notebook 06's stand-in (or with
    ``--model unconditional`` its baseline) with the profile's curriculum into ``--out`` (``runs/icc-<model>``)."""
    from .. import PROJECT_ROOT
    from ..params import check_values
    from ..profiles import load_profile
    from . import conditional as C, tower as T, vlm as V
    from .curriculum import (check_stage_arguments, curriculum_arguments, curriculum_config, holdout_split,
                             image_curriculum_from_params, override_params, prepare_tower, train_with_curve)
    from .episodes import make_conditional_episodes

    ap = curriculum_arguments(main.__doc__.splitlines()[0], "")
    ap.add_argument("--model", choices=list(COND_MODELS), default="conditional")
    args = ap.parse_args(argv)
    p = check_values("06", override_params(load_profile(args.profile), args.set))
    if p["vlm"] != V.EMBEDDED_VLM:
        ap.error(f"vlm={p['vlm']!r}: the conditional curriculum trains the embedded stand-in ('{V.EMBEDDED_VLM}') only")
    key = COND_MODELS[args.model]
    stages = image_curriculum_from_params(p[key], key)
    check_stage_arguments(ap, args, stages)
    out, seed = Path(args.out or PROJECT_ROOT / "runs" / f"icc-{args.model}"), p["seed"]
    images = C.load_conditional_set(p["cond_dataset"], PROJECT_ROOT / p["cond_data_root"] if p["cond_data_root"] else "",
                                    p["cond_image_size"], p["cond_n_images"], seed)
    classes = C.object_split(images, p["cond_dataset"], p["cond_test_fraction"], seed)["train"]
    fit_idx, val_idx = holdout_split(images, classes, p["cond_val_fraction"], seed, "cond_val_fraction")
    fit, val = images.subset(fit_idx), images.subset(val_idx)
    prepare_tower(args.tower, out, lambda: T.pretrain_tower(
        fit, classes, out / "tower", T.TowerConfig(image_size=p["cond_image_size"], patch_size=p["cond_tower_patch_size"],
                                                   epochs=p["cond_tower_epochs"], seed=seed),
        attribute_keys=p["cond_conditions"]))
    base = V.build_embedded_llava(out / "tower", out / "base", seed=seed)
    if p["cond_curriculum_align_epochs"]:   # LLaVA's stage 1 first: the projector learns to caption the fit images
        from .train import align_projector

        captions = [p["cond_caption_template"].format(**{k: fit.attributes[k][i] for k in p["cond_conditions"]})
                    for i in range(fit.n_images)]
        rec = align_projector(base, fit, captions, out / "base-aligned", kernels=sorted({s.kernel for s in stages}),
                              epochs=p["cond_curriculum_align_epochs"], seed=seed)
        print(f"projector alignment: {len(rec['history'])} steps, caption loss {rec['history'][0]['loss']:.2f} -> "
              f"{rec['final_loss']:.2f}, {rec['seconds']} s")
        base = out / "base-aligned"
    val_cs = sorted({c for s in stages for c in s.n_clusters})
    val_eps = make_conditional_episodes(val, None, p["cond_conditions"], val_cs, p["cond_curve_n_per_c"], seed, "val",
                                        tuple(p["cond_length_range"]))
    config = curriculum_config(p, "cond", base)
    result, curve = train_with_curve(base, stages, fit, classes, val, val_eps, out, config, p["cond_curve_every_steps"],
                                     args.from_stage, args.init_adapter,
                                     f"{args.model.capitalize()} curriculum: conditional validation episodes "
                                     "(held-out images of the training objects)")
    print(result)
    print(curve.to_string(index=False))


if __name__ == "__main__":
    main()
