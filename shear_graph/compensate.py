"""Bias compensation: put back the mean contribution of removed channels.

Removing input channel ``j`` of an output projection ``y = W x + b`` loses
``W[:, j] x_j``. FLAP (An et al., AAAI 2024, arXiv 2312.11983, "baseline bias
compensation"; lib/prune.py ``compress``) keeps its mean over the calibration
tokens: ``b' = b + W[:, R] E[x_R]`` for the removed set ``R``. The loss left
is ``W[:, R] (x_R - E[x_R])``, whose size is exactly what the ``flap``
saliency measures. Here it is a step any plan can take:

    comp = sg.compensate_plan(model, plan, blocks)
    pruned = sg.apply_plan(model, plan, compensate=comp)   # == mask_plan(..., compensate=comp)

Output projections without a bias get one through the config switch that
gives their module biases (Llama: ``attention_bias`` for ``o_proj``,
``mlp_bias`` for ``down_proj``); the switch also gives the sibling layers
(``q/k/v_proj``, ``gate/up_proj``) biases, which are set to zero, so that the
model still computes the same function and loads with ``from_pretrained``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import PlanError, ShearGraphError
from .moments import collect_input_moments, input_dim
from .plan import PrunePlan
from .rebuild import _construct, layer_index
from .trace import base_model_of, fingerprint, is_adapter_param

COMPENSATED_KINDS = ("ffn", "attention_head")
BIAS_SWITCHES = ("attention_bias", "mlp_bias")  # config keys that give a module's linear layers biases


@dataclass
class Compensation:
    """Biases to add to the output projections of a plan's removed channels.

    Attributes
    ----------
    fingerprint, plan_key : str
        The model structure and the plan (a digest of its removed indices)
        the biases belong to; applying them with another plan is refused.
    biases : dict
        Output projection module path -> float32 CPU tensor [out_features]
        (the unpruned width): ``W[:, R] E[x_R]``.
    weights : dict
        Module path -> the name of its weight parameter.
    switches : list of str
        Config keys set to True on the pruned model to give those modules
        biases (empty when they have biases already).
    n_calib_tokens : int
        Tokens the means were taken over.
    skipped : list of str
        Groups whose removals were left uncompensated: kinds other than
        ``ffn`` and ``attention_head`` (a removed hidden channel has no single
        output projection).
    """

    fingerprint: str
    plan_key: str
    biases: dict
    weights: dict
    switches: list = field(default_factory=list)
    n_calib_tokens: int = 0
    skipped: list = field(default_factory=list)

    def check_plan(self, plan: PrunePlan) -> None:
        """Raise :class:`PlanError` unless these biases were computed for ``plan``."""
        if plan.fingerprint != self.fingerprint or plan_key(plan) != self.plan_key:
            raise PlanError("this Compensation was computed for another plan; compute it for this one: "
                            "sg.compensate_plan(model, plan, blocks)")


def plan_key(plan: PrunePlan) -> str:
    return hashlib.sha256(json.dumps(plan.removed_indices(), sort_keys=True).encode()).hexdigest()[:16]


def _output_projections(model: nn.Module, plan: PrunePlan):
    """``({module path: (module, weight name, [removed input indices])}, skipped group ids)``."""
    modules = dict(model.named_modules())
    found, skipped = {}, []
    for r in plan.removals:
        if r.kind not in COMPENSATED_KINDS:
            skipped.append(r.group)
            continue
        for s in r.slices:
            path, _, attr = s["param"].rpartition(".")
            module = modules.get(path)
            if attr != "weight" or is_adapter_param(s["param"]) or module is None or input_dim(module) != s["dim"]:
                continue
            entry = found.setdefault(path, (module, s["param"], []))
            entry[2].extend(s["indices"])
    return found, skipped


def _logical(path: str) -> str:
    """A module path as the model's own classes name it (peft wraps a layer and moves it to ``.base_layer``)."""
    return path.replace(".base_layer", "")


def _switch_for(model: nn.Module, config, path: str) -> str:
    """The config key that gives the module at ``path`` a bias; raises if none does."""
    parent_path, _, child = _logical(path).rpartition(".")
    parent = model.get_submodule(parent_path)
    for key in BIAS_SWITCHES:
        if not hasattr(config, key):
            continue
        cfg = copy.deepcopy(config)
        setattr(cfg, key, True)
        try:
            fresh = _construct(type(parent), cfg, layer_index(parent_path))
        except TypeError:
            continue
        if getattr(getattr(fresh, child, None), "bias", None) is not None:
            return key
    raise ShearGraphError(
        f"bias compensation needs a bias on {_logical(path)}, which has none, and no config switch "
        f"({', '.join(BIAS_SWITCHES)}) of {type(config).__name__} gives it one; prune without compensation")


def _check_blocks(blocks) -> None:
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.numel() == 0 or \
            blocks.dtype not in (torch.int64, torch.int32):
        what = (f"a {blocks.dtype} tensor of shape {tuple(blocks.shape)}" if isinstance(blocks, torch.Tensor)
                else type(blocks).__name__)
        raise ShearGraphError(f"bias compensation needs calibration tokens, an int64 tensor [n_blocks, block_len] "
                              f"(sg.make_blocks(...).all_calib()); got {what}")


def compensate_plan(model: nn.Module, plan: PrunePlan, blocks: torch.Tensor, batch_size: int = 4,
                    progress: bool = True) -> Compensation:
    """The biases that keep, for every channel the plan removes, its mean contribution.

    For each output projection (``down_proj`` for FFN channels, ``o_proj`` for
    head groups) whose input channels ``R`` the plan removes:
    ``delta b = W[:, R] @ E[x_R]``, the mean of ``x_R`` over every token of
    ``blocks`` on the unpruned model (FLAP, An et al. AAAI 2024).

    Parameters
    ----------
    model : nn.Module
        The unpruned model the plan was made for, on the device and in the dtype
        to compute in; not changed.
    plan : PrunePlan
    blocks : torch.Tensor
        Calibration tokens, int64 [n_blocks, block_len].
    batch_size : int
        Blocks per forward.
    progress : bool
        Show a tqdm bar over the batches.

    Returns
    -------
    Compensation
        For :func:`~shear_graph.apply_plan` and :func:`~shear_graph.mask_plan`
        (``compensate=``).

    Raises
    ------
    ShearGraphError
        No calibration tokens (or not an integer tensor [n_blocks, block_len]),
        token ids outside the model's vocabulary, ``batch_size`` below 1, or an
        output projection without a bias whose config has no switch for one.
    PlanError
        The plan was made for another model structure.
    """
    if not isinstance(plan, PrunePlan):
        raise TypeError(f"expected a PrunePlan, got {type(plan).__name__}")
    plan.check_model(model)
    _check_blocks(blocks)
    vocab = model.get_input_embeddings().weight.shape[0] if hasattr(model, "get_input_embeddings") else None
    if vocab is not None and (int(blocks.min()) < 0 or int(blocks.max()) >= vocab):
        raise ShearGraphError(f"calibration token ids must lie in [0, {vocab}) for this model's embedding, got "
                              f"{int(blocks.min())} to {int(blocks.max())}; tokenize with the model's own tokenizer")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ShearGraphError(f"batch_size must be a positive integer (blocks per forward), got {batch_size!r}")
    projections, skipped = _output_projections(model, plan)
    config = base_model_of(model).config
    switches = sorted({_switch_for(model, config, path) for path, (m, _, _) in projections.items() if m.bias is None})
    device = next(model.parameters()).device
    batches = [b.to(device) for b in torch.split(blocks.long(), batch_size)]
    was_training = model.training
    model.eval()
    try:
        moments = collect_input_moments(model, {p: m for p, (m, _, _) in projections.items()}, batches, progress,
                                        "bias compensation")
    finally:
        model.train(was_training)
    biases = {}
    for path, (module, _, removed) in projections.items():
        idx = torch.tensor(sorted(set(removed)), device=device)
        w = module.weight.detach().float()
        mean = moments[path].mean[idx]
        delta = w[:, idx] @ mean if input_dim(module) == 1 else mean @ w[idx, :]
        biases[path] = delta.cpu()
    return Compensation(fingerprint(model), plan_key(plan), biases, {p: w for p, (_, w, _) in projections.items()},
                        switches, int(blocks.numel()), skipped)


def check_compensation(compensate, plan: PrunePlan) -> None:
    """Raise unless ``compensate`` is None or the :class:`Compensation` of ``plan``."""
    if compensate is None:
        return
    if not isinstance(compensate, Compensation):
        raise ShearGraphError(f"compensate takes the Compensation from sg.compensate_plan(model, plan, blocks), "
                              f"got {type(compensate).__name__}")
    compensate.check_plan(plan)


def add_biases(model: nn.Module, plan: PrunePlan, comp: Compensation, pruned: bool) -> None:
    """Add ``comp``'s biases to ``model``, the plan's result: physically ``pruned``
    (output rows the plan removes are dropped from the bias) or masked (they are 0)."""
    removed = plan.removed_indices()
    config = base_model_of(model).config
    for key in comp.switches:
        setattr(config, key, True)
    if comp.switches:
        _zero_biases(model, config)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for path, delta in comp.biases.items():
            module = modules[path]
            out_dim = 1 - input_dim(module)
            gone = removed.get(comp.weights[path], {}).get(out_dim, [])
            keep = torch.ones(delta.numel(), dtype=torch.bool)
            keep[gone] = False
            delta = delta[keep] if pruned else delta * keep
            w = module.weight
            old = module.bias if module.bias is not None else torch.zeros(delta.numel(), dtype=w.dtype)
            module.bias = nn.Parameter(old.detach().to(w.device, w.dtype) + delta.to(w.device, w.dtype),
                                       requires_grad=w.requires_grad)
    meta = getattr(config, "shear_graph", None)
    if isinstance(meta, dict):
        meta["bias_compensation"] = {"n_calib_tokens": comp.n_calib_tokens, "modules": len(comp.biases)}


def _zero_biases(model: nn.Module, config) -> None:
    """Zero biases on every linear layer that ``config``'s switches give one and
    the model lacks, so that it loads with ``from_pretrained`` and computes as before."""
    built: dict = {}
    for path, module in list(model.named_modules()):
        cls = type(module)
        # the switches act on the modules of decoder layers, never on the model's head
        if layer_index(path) is None or not any(isinstance(c, nn.Linear) or hasattr(c, "base_layer")
                                                for c in module.children()):
            continue
        if cls not in built:
            try:
                built[cls] = _construct(cls, config, layer_index(path))
            except (TypeError, ValueError, AttributeError):
                built[cls] = None
        fresh = built[cls]
        if fresh is None:
            continue
        for name, child in fresh.named_children():
            if not isinstance(child, nn.Linear) or child.bias is None:
                continue
            ours = getattr(module, name, None)
            ours = getattr(ours, "base_layer", ours)
            if isinstance(ours, nn.Linear) and ours.bias is None:
                w = ours.weight
                ours.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                         requires_grad=w.requires_grad)
