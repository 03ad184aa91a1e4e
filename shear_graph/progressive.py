"""Progressive structured pruning with LHSPG: from a dense model to a model
whose redundant removal groups are exactly zero, and the plan that removes them.

:func:`lhspg_prune` adds LoRA to a copy of the model, trains it with
:class:`~shear_graph.lhspg.LHSPG` on calibration blocks, merges the LoRA and
returns the merged model with the plan; ``apply_plan(result.model, result.plan)``
is the physically smaller model, equal in output (LoRAShear, Chen et al. 2023,
Sec. 3.3).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import add_lora, gradient_checkpointing
from .distill import check_distill, distill_loss, frozen_teacher, teacher_logits
from .errors import ShearGraphError, TrainingError
from .groups import find_groups
from .lhspg import LHSPG, period_ratios
from .plan import PrunePlan, check_ratio, plan_by_saliency
from .saliency import compute_saliency
from .trace import trace

CHECKPOINT = "lhspg_state.pt"


@dataclass
class LHSPGResult:
    """What :func:`lhspg_prune` returns.

    Attributes
    ----------
    model : nn.Module
        The merged model (LoRA folded into the base weights), same shapes as the
        input, with every channel of ``plan`` exactly zero.
    plan : PrunePlan
        Removes the zero channels; made for ``model``.
    history : list of dict
        Per step: ``step``, ``loss`` (language-modelling loss, nats per token),
        ``period`` (None in warm-up and after), ``zero_channels`` and, with
        distillation, ``distill_kl`` (nats per token).
    periods : list of dict
        Per period: ``period``, ``ratio`` (cumulative target), ``channels`` (chosen
        so far), ``first_step``, ``last_step``.
    tokens : int
        Tokens trained on.
    seconds : float
    """

    model: nn.Module
    plan: PrunePlan
    history: list = field(default_factory=list)
    periods: list = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the model, JSON-serialisable (the plan as its JSON object)."""
        return {"plan": json.loads(self.plan.to_json()), "history": self.history, "periods": self.periods,
                "tokens": self.tokens, "seconds": self.seconds, "settings": self.settings}


def saliency_selector(model: nn.Module, groups: list, ratio: float, n_periods: int, *, method: str = "taylor",
                      blocks: torch.Tensor | None = None, kinds=("attention_head", "ffn"), exclude=(),
                      shares: dict | None = None, batch_size: int = 4, progress: bool = True, round_to: int = 1):
    """The default ``select`` of :class:`LHSPG`: at period ``p`` the lowest-saliency
    channels that remove ``ratio * (p + 1) / n_periods`` of the parameters
    (:func:`~shear_graph.plan.plan_by_saliency`, so every prunable group loses the
    same share), scored on the model as it is then, channels chosen earlier first.

    Parameters
    ----------
    model, groups
        The LoRA model being trained and its groups.
    ratio : float
        Final share of total base parameters, in [0, 1).
    method : str
        Saliency criterion (:data:`shear_graph.saliency.SALIENCY`); the base
        weight stands for the composed one (its gradient is the composed weight's).
    blocks : torch.Tensor, optional
        Calibration tokens int64 [n, block_len] for data-driven criteria.
    kinds, exclude, shares, round_to
        As for :func:`~shear_graph.plan.plan_by_saliency` (a KnowledgeMap's
        unprunable clusters are excluded; every period's widths are rounded).
    progress : bool
        Show the saliency pass's tqdm bar at each period's start.

    Raises
    ------
    PlanError
        At construction, if ``ratio`` cannot be reached with these kinds,
        exclusions and shares (the message says the largest ratio that can).
    """
    check_ratio(ratio)
    ratios = period_ratios(ratio, n_periods)
    magnitude = compute_saliency(model, groups, "magnitude")
    plan_by_saliency(model, groups, magnitude, ratio, kinds, exclude, shares,
                     round_to=round_to)  # fail now, not after warm-up

    def select(period: int, chosen: dict) -> dict:
        sal = compute_saliency(model, groups, method, blocks, batch_size=batch_size, progress=progress)
        for gid, chans in chosen.items():
            sal.scores[gid][chans] = -np.inf
        plan = plan_by_saliency(model, groups, sal, ratios[period], kinds, exclude, shares, round_to=round_to)
        return {r.group: list(r.channels) for r in plan.removals}

    return select


def _batch_order(n_blocks: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Block indices for every step [steps, batch_size]: epochs of seeded permutations,
    so a resumed run sees the same batches."""
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    perms = [torch.randperm(n_blocks, generator=gen) for _ in range(math.ceil(need / n_blocks))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def _save_state(path: Path, peft_model, opt: LHSPG, history: list, periods: list, run: dict) -> None:
    from peft import get_peft_model_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"lora": get_peft_model_state_dict(peft_model), "optimizer": opt.state_dict(),
                "history": history, "periods": periods, "run": run}, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, peft_model, opt: LHSPG, run: dict) -> tuple:
    from peft import set_peft_model_state_dict

    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("run", run)  # checkpoints older than this check carry no settings
    changed = sorted(k for k in run if k in saved and saved[k] != run[k])
    if changed:
        raise ShearGraphError(f"the LHSPG checkpoint {path} was made with other settings ("
                              + "; ".join(f"{k}={saved[k]!r}, now {run[k]!r}" for k in changed)
                              + "); resume with the same settings, or give another checkpoint_dir to start afresh")
    set_peft_model_state_dict(peft_model, state["lora"])
    opt.load_state_dict(state["optimizer"])
    opt.hold_pruned()
    return state["history"], state["periods"]


def lhspg_prune(model: nn.Module, blocks: torch.Tensor, ratio: float, *, knowledge=None, shares: dict | None = None,
                kinds=("attention_head", "ffn"), saliency: str = "taylor", warmup_steps: int = 10,
                n_periods: int = 4, period_steps: int = 20, final_steps: int = 20, batch_size: int = 4, lr: float = 3e-4,
                lora_rank: int = 8, lora_alpha: float = 16.0, epsilon: float = 0.0, distill: float = 0.0,
                seed: int = 0, device=None, dtype=None, checkpoint_dir=None, progress: bool = True,
                round_to: int = 1, checkpointing: bool | None = None) -> LHSPGResult:
    """Prune ``ratio`` of ``model``'s parameters progressively with LHSPG.

    The model is deep-copied (the caller's is never changed), moved to
    ``device``/``dtype``, given LoRA adaptors on every linear layer of its
    decoder layers, and trained for ``warmup_steps + n_periods * period_steps``
    steps on ``blocks``; LoRA is then merged.

    Parameters
    ----------
    model : nn.Module
        A transformers causal LM (no adaptor).
    blocks : torch.Tensor
        Calibration tokens, int64 [n_blocks, block_len]; never evaluation data.
    ratio : float
        Share of total base parameters to remove, in [0, 1).
    knowledge : KnowledgeMap, optional
        Its unprunable clusters are left whole.
    shares : dict, optional
        Group id -> relative share of channels to remove (default: the same for
        every group); ``knowledge.prune_shares()`` gives per-layer shares.
    kinds : tuple of str
        Group kinds to prune.
    round_to : int
        Keep a multiple of ``round_to`` channels in every FFN group
        (:func:`~shear_graph.plan.plan_by_saliency`); 1: no rounding.
    saliency : str
        Criterion choosing each period's channels (see :func:`saliency_selector`).
    warmup_steps, n_periods, period_steps, final_steps, epsilon, lr
        See :class:`~shear_graph.lhspg.LHSPG`.
    batch_size : int
        Blocks per step.
    lora_rank, lora_alpha : int, float
        LoRA rank ``r`` and ``alpha`` (scaling ``alpha / r``).
    distill : float
        Weight ``a`` in [0, 1] of distillation from ``model`` itself (the dense
        teacher): each step minimises ``(1 - a) * CE + a * KL(dense || pruned)``
        per token (:func:`~shear_graph.distill.distill_loss`), so the knowledge the
        removed groups held moves into the kept ones toward the dense model's
        distributions rather than toward the training text alone. 0 (default):
        the language-modelling loss only, as in LoRAShear. Costs one teacher
        forward per step (and a copy of ``model`` when it is not already on
        ``device``/``dtype``).
    device, dtype
        Where and in what to train (default: the model's); bf16 on GPU works,
        LoRA factors stay float32 (peft's adaptor autocast).
    checkpoint_dir : path, optional
        Saves the LoRA and optimizer state after warm-up and after each period
        (atomic: temporary file, then rename); a call with the same folder and
        settings resumes from it (other settings are refused, see Raises).

    Returns
    -------
    LHSPGResult

    Raises
    ------
    PlanError
        ``ratio`` out of range or not reachable once unprunable clusters are excluded.
    TrainingError
        A NaN or infinite loss; the message names the step, and ``checkpoint_dir``
        keeps the last good state.
    ShearGraphError
        ``blocks`` not an int64 tensor [n, block_len] with at least one block;
        ``distill`` not in [0, 1]; a checkpoint in ``checkpoint_dir`` made with
        other settings (the message names them).
    """
    check_ratio(ratio)
    check_distill(distill)
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.dtype != torch.long or len(blocks) == 0:
        raise ShearGraphError("blocks must be a non-empty int64 tensor [n_blocks, block_len] of calibration tokens "
                              "(shear_graph.make_blocks(...).all_calib())")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = dtype or next(model.parameters()).dtype
    work = copy.deepcopy(model).to(device=device, dtype=dtype)
    torch.manual_seed(seed)
    peft_model = add_lora(work, lora_rank, lora_alpha)
    groups = find_groups(trace(peft_model))
    # the selection's saliency sample is drawn from all of ``blocks``, which may come ordered by domain
    pick = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:4 * batch_size]
    calib = blocks[pick].to(device)
    select = saliency_selector(peft_model, groups, ratio, n_periods, method=saliency, blocks=calib,
                               kinds=kinds, exclude=knowledge or (), shares=shares, batch_size=batch_size,
                               progress=progress, round_to=round_to)
    opt = LHSPG(peft_model, groups, select, lr=lr, warmup_steps=warmup_steps, n_periods=n_periods,
                period_steps=period_steps, final_steps=final_steps, epsilon=epsilon)
    steps = opt.total_steps
    order = _batch_order(len(blocks), steps, batch_size, seed)
    history, periods = [], []
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    saved_step = None
    run = dict(ratio=ratio, kinds=list(kinds), saliency=saliency, warmup_steps=warmup_steps, n_periods=n_periods,
               period_steps=period_steps, final_steps=final_steps, batch_size=batch_size, lr=lr, lora_rank=lora_rank,
               lora_alpha=lora_alpha, epsilon=epsilon, distill=distill, seed=seed, shares=shares)
    if ckpt is not None and ckpt.exists():
        history, periods = _load_state(ckpt, peft_model, opt, run)
        saved_step = opt.schedule["step"]
    boundaries = {warmup_steps + p * period_steps for p in range(n_periods + 1)} | {steps}
    peft_model.train()
    bar = tqdm(total=steps, initial=opt.schedule["step"], desc="LHSPG", unit="step", disable=not progress)
    with frozen_teacher(model, device, dtype) if distill else nullcontext() as teacher, \
            gradient_checkpointing(peft_model, checkpointing):
        for step in range(opt.schedule["step"] + 1, steps + 1):
            ids = blocks[order[step - 1]].to(device)
            opt.zero_grad(set_to_none=True)
            out = peft_model(input_ids=ids, labels=ids, use_cache=False)
            loss, value = out.loss, float(out.loss.detach())
            if distill:
                kd = distill_loss(out.logits, teacher_logits(teacher, ids))
                loss = (1 - distill) * loss + distill * kd
            total = float(loss.detach())
            if not math.isfinite(total):
                raise TrainingError(f"LHSPG loss is {total} at step {step}; "
                                    + (f"the last good state (step {saved_step}) is in {ckpt}"
                                       if saved_step is not None else "no checkpoint was kept")
                                    + "; lower the learning rate", step)
            loss.backward()
            opt.step()
            pos = opt.position(step)
            history.append({"step": step, "loss": value, "period": None if pos is None else pos[0],
                            "zero_channels": sum(len(c) for c in opt.pruned.values()),
                            **({"distill_kl": float(kd.detach())} if distill else {})})
            if pos is not None and pos[1] == period_steps:
                periods.append({"period": len(periods), "ratio": period_ratios(ratio, n_periods)[len(periods)],
                                "channels": sum(len(c) for c in opt.pruned.values()),
                                "first_step": step - period_steps + 1, "last_step": step})
            if ckpt is not None and step in boundaries:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                _save_state(ckpt, peft_model, opt, history, periods, run)
                saved_step = step
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", zero=history[-1]["zero_channels"])
    bar.close()
    peft_model.eval()
    pruned_channels = opt.pruned
    merged = peft_model.merge_and_unload()
    merged_groups = find_groups(trace(merged))
    plan = PrunePlan.from_channels(merged, merged_groups, pruned_channels,
                                   method=f"lhspg({saliency}, ratio={ratio}, periods={n_periods})")
    return LHSPGResult(merged, plan, history, periods, steps * batch_size * blocks.shape[1],
                       time.perf_counter() - start, {**run, "projected": opt.projected})
