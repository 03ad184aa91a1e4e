"""The formats inference engines load, and :func:`export` to write a pruned model in them.

- ``hf``: stock transformers Llama, every layer padded to the widest (exact).
- ``decilm``: the ``nemotron-nas`` (DeciLM) format of vLLM, SGLang and TensorRT-LLM,
  with per-layer KV heads and FFN widths (FFN padded to multiples of 256).
- ``gguf``: llama.cpp's ``deci`` arch with exact per-layer widths.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from torch import nn

from ..plan import umask
from . import decilm, gguf, hf
from .layout import DTYPES, ExportError, LlamaLayout, read_layout

FORMATS = {"hf": hf.write, "decilm": decilm.write, "gguf": gguf.write}

__all__ = ["export", "FORMATS", "ExportError", "LlamaLayout", "read_layout"]


def export(model, path, format: str = "hf", dtype: str = "f32", tokenizer=None) -> Path:
    """Write ``model`` in an inference engine's format.

    Parameters
    ----------
    model : nn.Module or str or Path
        A Llama causal LM (pruned with per-layer widths or not), or the folder of
        one (:func:`shear_graph.save_pruned` output or a plain model folder; its
        tokenizer is exported with it).
    path : str or Path
        The output: a folder for ``hf`` and ``decilm``, a ``.gguf`` file for
        ``gguf``. It must not exist; it appears complete or not at all.
    format : {"hf", "decilm", "gguf"}
    dtype : {"f32", "f16", "bf16"}
        Weight dtype of the export (GGUF keeps 1-D tensors in f32, as llama.cpp does).
    tokenizer : optional
        A transformers tokenizer, saved beside (``hf``, ``decilm``) or embedded
        (``gguf``); default: the folder's own when ``model`` is a folder.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ExportError
        Unknown format or dtype; ``path`` exists; a model the format cannot
        express (see each format's module). Nothing is written then.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise ExportError(f"{path} exists; choose another output path or remove it first")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise ExportError(f"{existing} is a file, so {path} cannot be written under it; choose another output path")
    if not isinstance(model, nn.Module):
        source = Path(model).resolve()
        if source == path.resolve() or source in path.resolve().parents:
            raise ExportError(f"the output {path} is inside the input model folder {model}; write it elsewhere")
        from ..default_model import load_model

        model, own = load_model(str(model))
        tokenizer = tokenizer if tokenizer is not None else own
    layout = read_layout(model)
    writer = FORMATS[format]
    if format == "gguf" and tokenizer is None:
        warnings.warn(f"{path}: no tokenizer given or found beside the model, so the GGUF file holds no vocabulary "
                      "and llama.cpp cannot read text with it; pass tokenizer= (or export a folder that has one)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            target = tmp if format != "gguf" else tmp / path.name
            writer(layout, target, DTYPES[dtype], tokenizer)
            for f in [tmp, *tmp.rglob("*")]:  # libraries write through private temp files (mode 0600)
                os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask())
            os.replace(target, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    except BaseException as e:
        _remove_created(path.absolute().parent, existing)  # a refused export leaves no folder behind
        if isinstance(e, OSError):
            raise ExportError(f"writing {path} failed: {e.strerror or e}; nothing was written") from e
        raise
    return path


def _remove_created(folder: Path, existing: Path) -> None:
    """Remove ``folder`` and its parents up to ``existing`` (which was there before), where empty."""
    while folder != existing and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
