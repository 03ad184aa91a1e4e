"""Save a pruned model atomically and load it back in one call."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .plan import umask
from .prune import EPS_ATTRS, METADATA_KEY
from .rebuild import derive_attention, sync_shape_attributes


def is_saved_model(path: Path) -> bool:
    """Whether ``path`` holds a model that :func:`save_pruned` wrote (its config carries the pruning record)."""
    try:
        return METADATA_KEY in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_replaceable(path, written, what: str = "path") -> None:
    """Refuse a folder that an ``overwrite`` could not replace without losing what is not ours.

    Parameters
    ----------
    path : str or Path
        The output folder; it need not exist.
    written : tuple of str or callable
        The names this tool writes into such a folder (every entry must be one of
        them: a run's ``model``, ``results.json``, ``.work``, ...), or a test
        ``path -> bool`` that the folder is one it wrote (:func:`is_saved_model`).
        An empty folder is always ours to replace.
    what : str
        How messages name the path (``"--out"`` for the command line).

    Raises
    ------
    CheckpointError
        ``path`` is the working directory or a folder above it; ``path`` is a file;
        or it is a folder holding anything this tool did not write there (the user's
        own files or model: never deleted, whatever ``overwrite`` says).
    """
    path = Path(path)
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise CheckpointError(f"{what} {path} is the working directory or contains it; write into a folder of its own")
    if not path.exists():
        return
    if not path.is_dir():
        raise CheckpointError(f"{what} {path} is a file, not a folder; choose another {what}")
    names = sorted(p.name for p in path.iterdir())
    foreign = (([] if written(path) else names) if callable(written) else
               [n for n in names if n not in written])
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise CheckpointError(f"{what} {path} holds files this tool did not write ({shown}); it replaces only an empty "
                              f"folder or one it wrote: choose another {what}")


def save_pruned(model: nn.Module, path, tokenizer=None, overwrite: bool = False) -> Path:
    """``save_pretrained`` into ``path`` atomically.

    The model is written to a temporary folder beside ``path`` and renamed
    into place, so an interrupted save never leaves a half-written model at
    ``path``.

    Raises
    ------
    CheckpointError
        ``path`` exists and ``overwrite`` is False; ``path`` is not a folder this
        function may replace (:func:`check_replaceable`: the working directory, a
        file, a folder of other files); or ``model`` is a peft model (merge it
        first: ``model.merge_and_unload()``).
    """
    path = Path(path)
    check_replaceable(path, is_saved_model)
    if hasattr(model, "peft_config"):
        raise CheckpointError("save_pruned takes a merged model: call model.merge_and_unload() first")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for f in tmp.rglob("*"):  # libraries write through private temp files (mode 0600)
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask())
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / "previous")
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old / "previous", path)  # put the previous model back
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _read_state_dict(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise CheckpointError(f"{path} has no model.safetensors: not a saved model")
        sd = {}
        for f in files:
            sd.update(load_file(str(path / f)))
        return sd
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read the weights in {path} (corrupted or incomplete?): {e}") from e


def load_pruned(path, device=None, dtype=None) -> nn.Module:
    """Load a model saved by :func:`save_pruned` (or ``save_pretrained`` of a
    pruned model), per-layer widths included, in one call.

    Parameters
    ----------
    path : str or Path
        The folder holding ``config.json`` and safetensors weights.
    device, dtype : optional
        Where and in which dtype to place the model (default: CPU, the saved dtype).

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode, with logits equal to the model that was saved.

    Raises
    ------
    CheckpointError
        Missing folder, config or weights; corrupted weights; weights that do
        not cover every parameter of the architecture.
    """
    import transformers
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"no config.json in {path}: not a saved model folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / 'config.json'}: {e}") from e
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise CheckpointError(f"config.json names no known transformers architecture ({arch!r})")
    sd = _read_state_dict(path)
    model = _construct(cls, config)
    meta = getattr(config, METADATA_KEY, None) or {}
    named = dict(model.named_parameters(remove_duplicate=False))
    for name, tensor in sd.items():
        owner, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(owner) if owner else model
        except AttributeError as e:
            raise CheckpointError(f"{path}: weight {name} matches no module of {arch}") from e
        if name in named:
            setattr(module, attr, nn.Parameter(tensor))
        elif attr in module._buffers:
            module._buffers[attr] = tensor
    model.tie_weights()
    loaded = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in sd}
    missing = [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in loaded]
    if missing:
        raise CheckpointError(f"{path} lacks weights for {', '.join(missing[:5])}: incomplete checkpoint")
    sync_shape_attributes(model)
    derive_attention(model, config, meta.get("attention", {}))
    modules = dict(model.named_modules())
    for path_, eps in meta.get("norm_eps", {}).items():
        m = modules[path_]
        attr = next(a for a in EPS_ATTRS if isinstance(getattr(m, a, None), float))
        setattr(m, attr, eps)
    with torch.no_grad():
        for name, value in meta.get("scalar_buffers", {}).items():
            owner, _, attr = name.rpartition(".")
            (model.get_submodule(owner) if owner else model)._buffers[attr].fill_(value)
    model.eval()
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model


def _construct(cls, config) -> nn.Module:
    """Build ``cls`` from ``config`` with one attention head per layer.

    Pruned head counts need not divide the hidden size of models that derive
    head_dim from it (GPT-2, OPT, BERT); the real counts go back into the
    same config object afterwards, and every attention module is re-derived
    from ``config.shear_graph``.
    """
    from transformers.initialization import no_init_weights

    keys = [k for k in ("num_attention_heads", "num_key_value_heads") if getattr(config, k, None)]
    saved = {k: getattr(config, k) for k in keys}
    for k in keys:
        setattr(config, k, 1)
    try:
        with no_init_weights():  # every parameter is replaced by a loaded one
            return cls(config)
    finally:
        for k, v in saved.items():
            setattr(config, k, v)
