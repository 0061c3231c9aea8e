"""``python -m icc_utils.finetune``: see :mod:`icc_utils.finetune.cli`."""
from .cli import main

main()
