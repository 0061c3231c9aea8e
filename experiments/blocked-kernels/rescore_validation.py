"""Re-score adapters on a training run's validation episodes, the way that run's own learning curve scored them.

``experiments/finetune-budget/finetune_budget.py`` evaluates the model being trained (bf16 base weights, the LoRA branch in
float32, greedy free decoding on the ``val`` seed split). This script loads the same model for each
``--adapter`` (``PeftModel.from_pretrained`` on the bf16 base: the LoRA weights stay float32, unmerged) and runs
the same evaluator, so two adapters trained with different kernels
(``FinetuneConfig.kernels``) are compared on equal terms. The pretrained model is not scored (step 0 of any
run's curve). One row per adapter in ``--out`` (written as each is scored; a rerun skips those already there).

    .venv/bin/python experiments/blocked-kernels/rescore_validation.py --clusters 3 --dims 3 --eval-dfs 1 100 \\
        --adapter s3-torch=experiments/curriculum/c3d3-curriculum-s3/adapter \\
        --adapter s3-blocked=experiments/blocked-kernels/c3d3-curriculum-s3-blocked/adapter \\
        --out experiments/blocked-kernels/c3d3-curriculum-s3-blocked/rescore.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune-probes"))

from probes import add_probe_args, probe_setup  # noqa: E402  (puts the repository on sys.path)

from icc_utils import finetune as F  # noqa: E402
from icc_utils.io import write_csv  # noqa: E402
from icc_utils.models import load_model_and_tokenizer  # noqa: E402


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(ap)
    ap.add_argument("--dtype", default="bfloat16", choices=list(F.DTYPES), help="base weights (the run's)")
    args = ap.parse_args(argv)
    models, params, val, out = probe_setup(args)
    evaluate = F.curve_evaluator(val, params["batch_size"])
    table = pd.read_csv(out) if out.exists() else pd.DataFrame(columns=["model"])
    for name, adapter in models[1:]:
        if name in set(table["model"].astype(str)):
            continue
        model, tok = load_model_and_tokenizer("embedded", adapter=adapter, dtype=args.dtype)
        with torch.no_grad():
            row = {"model": name, "adapter": adapter, **evaluate(model, tok, 0, 0)}
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
        write_csv(out, table)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
