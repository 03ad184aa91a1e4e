"""Apply a prune plan: by masking (zeroing slices) or physically (slicing)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .compensate import add_biases, check_compensation
from .errors import PlanError
from .plan import PrunePlan
from .rebuild import derive_attention, intermediate_key, sync_shape_attributes
from .trace import base_model_of

METADATA_KEY = "shear_graph"
EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")
HIDDEN_ALIAS_KEYS = ("word_embed_proj_dim", "embedding_size")
EPS_CONFIG_KEYS = ("rms_norm_eps", "norm_eps", "layer_norm_eps")


def _set_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, param)


def _check_plan_type(plan) -> None:
    if not isinstance(plan, PrunePlan):
        raise TypeError(f"expected a PrunePlan, got {type(plan).__name__}; load a saved one with "
                        "sg.PrunePlan.load(path)")


def mask_plan(model: nn.Module, plan: PrunePlan, inplace: bool = False, compensate=None) -> nn.Module:
    """A copy of ``model`` with every slice the plan removes set to zero.

    The masked model has the original shapes; for attention-head and FFN
    groups its logits equal those of :func:`apply_plan` (the oracle), with
    the same ``compensate`` biases added to both.

    Parameters
    ----------
    compensate : Compensation, optional
        From :func:`~shear_graph.compensate_plan` for this plan: add the mean
        contribution of the removed channels to the output projections' biases.

    Raises
    ------
    PlanError
        If the plan was made for a different model structure, or ``compensate`` for another plan.
    ShearGraphError
        ``compensate`` not a Compensation.
    """
    _check_plan_type(plan)
    plan.check_model(model)
    check_compensation(compensate, plan)
    out = model if inplace else copy.deepcopy(model)
    params = dict(out.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, dims in plan.removed_indices().items():
            p = params[name]
            for d, idx in dims.items():
                p.index_fill_(d, torch.tensor(idx, device=p.device), 0)
    if compensate is not None:
        add_biases(out, plan, compensate, pruned=False)
    return out


def apply_plan(model: nn.Module, plan: PrunePlan, inplace: bool = False, compensate=None) -> nn.Module:
    """Physically remove the plan's channels: a new, smaller model.

    Parameters are sliced (tied parameters stay one tensor); RMSNorm weights
    over a pruned dim are rescaled by ``sqrt(N / K)`` so that the mean over the
    K kept channels equals the masked mean over N; the config is derived from
    the new shapes (``hidden_size``, per-layer ``num_attention_heads``,
    ``num_key_value_heads``, intermediate size, explicit ``head_dim``) and
    recorded per layer under ``config.shear_graph``; attention modules take
    their attributes from their constructor on that config.

    Parameters
    ----------
    model : nn.Module
        A transformers model, optionally peft-wrapped. Not modified unless
        ``inplace=True``.
    plan : PrunePlan
    compensate : Compensation, optional
        From :func:`~shear_graph.compensate_plan` for this plan: the removed
        channels' mean contribution goes into the output projections' biases
        (FLAP's bias compensation); config switches such as Llama's
        ``mlp_bias`` / ``attention_bias`` are set, with zero biases where they
        add others, so the model still loads with ``from_pretrained``.

    Returns
    -------
    nn.Module
        Same class as ``model``, same device and dtype, fewer parameters.

    Raises
    ------
    PlanError
        If the plan was made for a different model structure, ``compensate`` for
        another plan, or a module cannot be rebuilt for its pruned widths (the
        message names it). On any error the input model is left exactly as it
        was, ``inplace`` or not.
    ShearGraphError
        ``compensate`` not a Compensation.
    """
    _check_plan_type(plan)
    plan.check_model(model)
    check_compensation(compensate, plan)
    removed = plan.removed_indices()
    if not inplace:
        return _prune(model, _copy_except(model, removed), plan, removed, compensate)
    saved = _snapshot(model)
    try:
        return _prune(model, model, plan, removed, compensate)
    except BaseException:
        _restore(saved)
        raise


def _snapshot(model: nn.Module) -> list:
    """What apply_plan may change in place: every module's attributes,
    parameters, buffers and children, and the config's fields. Parameters
    are replaced, never written to, so references suffice for them."""
    saved = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    config = getattr(base_model_of(model), "config", None)
    return saved + ([(config, copy.deepcopy(vars(config)))] if config is not None else [])


def _restore(saved: list) -> None:
    for entry in saved:
        obj, attrs = entry[0], entry[1]
        vars(obj).clear()
        vars(obj).update(attrs)
        for live, old in zip((getattr(obj, "_parameters", None), getattr(obj, "_buffers", None),
                              getattr(obj, "_modules", None)), entry[2:]):
            live.clear()
            live.update(old)


def _prune(model: nn.Module, out: nn.Module, plan: PrunePlan, removed: dict, compensate) -> nn.Module:
    base = base_model_of(out)
    config = getattr(base, "config", None)
    heads = sorted({plan.groups[r.group]["module"] for r in plan.removals if r.kind == "attention_head"})
    if heads and not hasattr(config, "to_dict"):
        raise PlanError(f"the plan removes attention heads of {heads[0]}, whose attributes shear-graph rebuilds "
                        f"from a transformers config, but {type(base).__name__} has no .config: leave its "
                        "attention_head groups out of the plan (prune FFN and hidden groups only)")
    named = dict(out.named_parameters(remove_duplicate=False))
    done: dict = {}
    with torch.no_grad():
        for name, dims in removed.items():
            p = named[name]
            if id(p) not in done:
                w = p.data
                for d, idx in dims.items():
                    keep = torch.ones(w.shape[d], dtype=torch.bool)
                    keep[idx] = False
                    w = w.index_select(d, keep.nonzero().squeeze(1).to(w.device))
                done[id(p)] = nn.Parameter(w, requires_grad=p.requires_grad)  # index_select copied already
            _set_param(out, name, done[id(p)])
    if out is not model:
        _unshare(model, out)
    norm_eps = _rescale_rms_norms(out, plan)
    sync_shape_attributes(out)
    if hasattr(config, "to_dict"):
        attention = derive_config(config, plan, norm_eps)
        derive_attention(out, config, attention)
        config.shear_graph["scalar_buffers"] = _scalar_buffers(base)
    if compensate is not None:
        add_biases(out, plan, compensate, pruned=True)
    return out


def _copy_except(model: nn.Module, removed: dict) -> nn.Module:
    """Deep copy of ``model`` that shares (for now) the parameters about to be
    sliced: copying them first would only be thrown away (the copy of a
    135M-parameter model is most of apply_plan's time)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    memo = {id(named[n]): named[n] for n in removed if n in named}
    return copy.deepcopy(model, memo)


def _unshare(model: nn.Module, out: nn.Module) -> None:
    """Give ``out`` its own copy of any parameter still shared with ``model``
    (never expected: every alias of a sliced tensor is in the plan), so that
    the input model is never changed through the result."""
    original = {id(p) for p in model.parameters()}
    copies: dict = {}
    for name, p in list(out.named_parameters(remove_duplicate=False)):
        if id(p) in original:
            copies.setdefault(id(p), nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
            _set_param(out, name, copies[id(p)])


def _scalar_buffers(model: nn.Module) -> dict:
    """Non-persistent one-element buffers (e.g. Gemma's embedding scale
    sqrt(hidden_size)): a model rebuilt from the pruned config would recompute
    them from the new widths, so their values travel in the config."""
    out = {}
    for path, m in model.named_modules():
        for name, b in m._buffers.items():
            if b is not None and b.numel() == 1 and name in m._non_persistent_buffers_set and b.is_floating_point():
                out[f"{path}.{name}" if path else name] = float(b)
    return out


def _keep_config_valid(config) -> None:
    """transformers refuses some configs the models run fine with (Llama:
    hidden_size not a multiple of num_attention_heads, even with an explicit
    head_dim). Then the top-level head counts fall back to 1 and the real
    counts live per attention module in ``config.shear_graph``; such a model
    loads with :func:`shear_graph.load_pruned` only."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except Exception:  # the strict-dataclass error type varies across versions
        for key in ("num_attention_heads", "num_key_value_heads"):
            if getattr(config, key, None):
                setattr(config, key, 1)
        validate()


def _rescale_rms_norms(model: nn.Module, plan: PrunePlan) -> dict:
    """RMSNorm over N channels of which K are kept: ``mean(x^2)`` over K is N/K
    times the masked mean over N. Scaling ``offset + w`` by ``sqrt(N/K)`` and
    ``eps`` by ``N/K`` makes the pruned norm equal the masked one exactly:
    ``w' x / sqrt(S/K + eps N/K) = w x / sqrt(S/N + eps)``.

    Returns ``{norm module path: new eps}``.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    done, eps = set(), {}
    with torch.no_grad():
        for r in plan.removals:
            for name, offset in r.rms_norm_weights:
                if name in done:
                    continue
                done.add(name)
                p = params[name]
                n = next(s["size"] for s in r.slices if s["param"] == name)
                # a new tensor, not copy_: the input model may still hold this one
                _set_param(model, name, nn.Parameter((p + offset) * math.sqrt(n / p.shape[0]) - offset,
                                                     requires_grad=p.requires_grad))
                owner = name.rpartition(".")[0]
                module = model.get_submodule(owner)
                attr = next((a for a in EPS_ATTRS if isinstance(getattr(module, a, None), float)), None)
                if attr is not None:
                    setattr(module, attr, getattr(module, attr) * n / p.shape[0])
                    eps[owner] = getattr(module, attr)
    untouched = [path for path, m in model.named_modules() if path not in eps
                 and any(isinstance(getattr(m, a, None), float) for a in EPS_ATTRS) and "Norm" in type(m).__name__]
    return {"modules": eps, "all_norms": not untouched}


def derive_config(config, plan: PrunePlan, norm_eps: dict | None = None) -> dict:
    """Write the pruned widths into ``config``.

    Widths equal across layers go to the top-level keys (``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, the intermediate-size key,
    ``head_dim``), so plain ``from_pretrained`` can load uniform models; the
    per-layer widths and each attention module's head layout go under
    ``config.shear_graph``, which :func:`shear_graph.load_pruned` reads.

    Returns
    -------
    dict
        Attention module path -> ``{"num_heads", "num_kv_heads", "head_dim"}`` after pruning.
    """
    kept = plan.widths_after()
    attention, layers = {}, {}
    ffn_key = None
    for gid, g in plan.groups.items():
        if g["kind"] == "hidden":
            for key in HIDDEN_ALIAS_KEYS:  # e.g. OPT's word_embed_proj_dim == hidden_size
                if getattr(config, key, None) == config.hidden_size:
                    setattr(config, key, kept[gid])
            config.hidden_size = kept[gid]
        elif g["kind"] == "ffn" and g["layer"] is not None:
            ffn_key = ffn_key or intermediate_key(config, g["n_channels"])
            layers.setdefault(g["layer"], {})["intermediate_size"] = kept[gid]
        elif g["kind"] == "attention_head":
            q_per_channel = g["num_heads"] // g["n_channels"]
            kv_per_channel = g.get("kv_heads_per_channel", 1)
            a = {"num_heads": kept[gid] * q_per_channel,
                 "num_kv_heads": kept[gid] * kv_per_channel if kv_per_channel else g["num_kv_heads"],
                 "head_dim": g["head_dim"]}
            attention[g["module"]] = a
            layers.setdefault(g["layer"], {}).update(
                num_attention_heads=a["num_heads"], num_key_value_heads=a["num_kv_heads"])
    head_dims = {a["head_dim"] for a in attention.values()}
    if len(head_dims) == 1:
        config.head_dim = head_dims.pop()  # explicit, as hidden_size // heads no longer holds
    for key, cfg_key in (("num_attention_heads", "num_attention_heads"),
                         ("num_key_value_heads", "num_key_value_heads"), ("intermediate_size", ffn_key)):
        values = [v[key] for v in layers.values() if key in v]
        if cfg_key and values and len(set(values)) == 1 and len(values) == len(layers):
            setattr(config, cfg_key, values[0])
    norm_eps = norm_eps or {"modules": {}, "all_norms": False}
    values = set(norm_eps["modules"].values())
    if norm_eps["all_norms"] and len(values) == 1:
        # every norm was rescaled alike: the top-level eps can say so
        key = next((k for k in EPS_CONFIG_KEYS if isinstance(getattr(config, k, None), float)), None)
        if key is not None:
            setattr(config, key, values.pop())
    _keep_config_valid(config)
    setattr(config, METADATA_KEY, {
        "version": 1,
        "method": plan.method,
        "norm_eps": dict(norm_eps["modules"]),
        "attention": attention,
        "layers": {str(k): layers[k] for k in sorted(layers)},
    })
    return attention
