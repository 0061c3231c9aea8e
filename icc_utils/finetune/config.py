"""What determines a fine-tuning run: :class:`FinetuneConfig`, and notebook 04's ``ft_*`` parameters turned into one."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..validation import check_bool, check_choice, check_int, check_number, check_positive, check_str

LR_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")
DTYPES = ("float32", "bfloat16")
KERNELS = ("auto", "torch", "blocked")
#: Config fields that do not change the trained weights (ignored when deciding to reuse a finished run).
BOOKKEEPING_FIELDS = ("save_steps", "logging_steps", "max_train_seconds")


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (defaults: the paper's recipe, docs/protocol.md: LoRA r=64,
    alpha 16, dropout 0.05 on q/k/v/o, lr 5e-4 with a cosine schedule, effective batch 32, one epoch).

    Effective batch = ``per_device_batch_size * gradient_accumulation_steps`` (x the number of
    processes). ``bf16=True``: frozen base weights stored in bfloat16, LoRA weights and optimiser
    state in float32 (with ``kernels="torch"`` PEFT casts the LoRA branch's input to float32), no
    autocast. ``dtype`` overrides the base weights' dtype (``None``: bfloat16 when ``bf16`` else
    float32); ``bf16=True`` with ``dtype="float32"`` is plain ``torch.autocast(bfloat16)``. Use
    ``bf16=True`` on a GPU or a CPU with native bf16 matmuls (notebook 04's ``ft_bf16: auto`` decides
    by the machine); where bf16 is emulated it is much slower than float32.

    ``kernels``: ``"torch"`` trains with PyTorch's own attention (``sdpa``) and ``nn.Dropout``;
    ``"blocked"`` with :mod:`icc_utils.kernels` (causal attention in query blocks, 16-bit dropout
    masks, LoRA products in bf16 with float32 weights; faster bf16 steps on a CPU,
    ``benchmarks/finetune.py``); ``"auto"`` picks ``"blocked"`` for bf16 weights on a CPU and
    ``"torch"`` elsewhere (float32 runs, GPUs), see :meth:`resolved_kernels`.

    ``save_steps``, ``logging_steps`` and ``max_train_seconds`` are bookkeeping: they do not change
    the trained weights, so a finished run that differs only in them is reused.
    """

    model: str = "embedded"
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    n_epochs: int = 1
    max_steps: int | None = None
    n_permutations: int = 1
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 50
    logging_steps: int = 1
    max_train_seconds: float | None = None
    dtype: str | None = None
    kernels: str = "auto"

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        elif isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what it allows (:mod:`icc_utils.validation`).

        Checks only: the values are kept as given, so that a saved config reads back byte for byte."""
        check_str("model", self.model)
        check_int("lora_r", self.lora_r, 1)
        check_positive("lora_alpha", self.lora_alpha)
        check_number("lora_dropout", self.lora_dropout, 0, 0.999)
        if not isinstance(self.target_modules, tuple) or not self.target_modules:
            raise ValueError(f"target_modules={self.target_modules!r} is not allowed; it must be a non-empty list of "
                             "module names, e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj']")
        for i, name in enumerate(self.target_modules):
            check_str(f"target_modules[{i}]", name)
        check_positive("learning_rate", self.learning_rate, hi=1)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_number("warmup_ratio", self.warmup_ratio, 0, 0.999)
        check_int("per_device_batch_size", self.per_device_batch_size, 1)
        check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_int("n_epochs", self.n_epochs, 1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        check_int("n_permutations", self.n_permutations, 1)
        check_int("seed", self.seed, 0)
        check_bool("bf16", self.bf16)
        check_bool("gradient_checkpointing", self.gradient_checkpointing)
        check_int("save_steps", self.save_steps, 1)
        check_int("logging_steps", self.logging_steps, 1)
        if self.max_train_seconds is not None:
            check_positive("max_train_seconds", self.max_train_seconds)
        check_choice("dtype", self.dtype, [None, *DTYPES])
        check_choice("kernels", self.kernels, KERNELS)

    @property
    def effective_batch_size(self) -> int:
        """Episodes per optimiser step on one process."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    @property
    def weights_dtype(self) -> str:
        """dtype of the frozen base weights."""
        return self.dtype or ("bfloat16" if self.bf16 else "float32")

    @property
    def autocast(self) -> bool:
        """Whether the forward runs under ``torch.autocast(bfloat16)`` (only bf16 with fp32 weights)."""
        return self.bf16 and self.weights_dtype == "float32"

    def resolved_kernels(self, cuda: bool | None = None) -> str:
        """``kernels`` with ``"auto"`` decided: ``"blocked"`` for bf16 weights on a CPU, else ``"torch"``."""
        if self.kernels != "auto":
            return self.kernels
        if cuda is None:
            import torch
            cuda = torch.cuda.is_available()
        return "blocked" if self.weights_dtype == "bfloat16" and not cuda else "torch"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FinetuneConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def config_from_params(params: dict, model: str, seed: int) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of notebook 04's ``ft_*`` parameters (a profile or the notebook's
    own variables); ``ft_max_train_minutes`` 0 means no time limit; ``ft_bf16`` may be
    ``"auto"`` (bf16 where this machine runs it natively)."""
    p = {k[3:]: v for k, v in params.items() if k.startswith("ft_")}
    minutes = p.get("max_train_minutes") or 0
    if p["bf16"] == "auto":   # bf16 where this machine runs it natively (models.native_bf16)
        from ..model_loading import native_bf16
        p["bf16"] = native_bf16()
    return FinetuneConfig(
        model=model, lora_r=p["lora_r"], lora_alpha=p["lora_alpha"], lora_dropout=p["lora_dropout"],
        target_modules=p["target_modules"], learning_rate=p["learning_rate"], lr_schedule=p["lr_schedule"],
        warmup_ratio=p["warmup_ratio"], per_device_batch_size=p["per_device_batch_size"],
        gradient_accumulation_steps=p["gradient_accumulation_steps"], seed=seed, bf16=p["bf16"],
        save_steps=p["save_steps"], max_train_seconds=60.0 * minutes if minutes else None,
        kernels=p.get("kernels", "auto"))
