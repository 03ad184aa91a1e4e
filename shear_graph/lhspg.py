"""LHSPG: LoRA Half-Space Projected Gradient (LoRAShear, Chen et al. 2023, Sec. 3.3, Alg. 2).

Progressive structured pruning through LoRA. The trainable variables are the
peft LoRA factors; the base weights stay frozen except on the redundant groups,
which are driven to exactly zero while the kept groups go on learning, so their
LoRA absorbs what the redundant ones carried (the paper's knowledge transfer).

Equations, per step ``t`` (learning rate ``gamma``):

1. Trial iterate (AdamW, Loshchilov & Hutter 2019) on every LoRA factor ``A``, ``B``::

       m <- b1 m + (1-b1) g ;  v <- b2 v + (1-b2) g^2
       p <- p (1 - gamma wd) - gamma (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)

   so the composed weight ``W = W0 + s B A`` (``s`` = ``lora_alpha / r``)
   moves only through ``B`` and ``A`` (LoRAShear Eq. 3).

2. Half-space projection (OTOv2's HSPG, Chen et al. 2023, Eq. 6), per channel ``g``
   of the redundant groups active in the current period, with ``[x]_g`` the
   channel's composed slices before the step and ``[x~]_g`` after it and the decay::

       [x~]_g <- 0   if  [x~]_g . [x]_g < epsilon ||[x]_g||^2

   A channel whose trial iterate has turned away from its current value is
   projected onto zero at once.

3. Progressive decay (LoRAShear Alg. 2 leaves the schedule open): at step
   ``k = 1..T`` of a period of ``T`` steps the active redundant channels are
   scaled by ``((T - k) / (T - k + 1)) ** p``, so their magnitude falls as
   ``((T - k) / T) ** p`` and is exactly zero at the period's end, whatever the
   gradient did. HESSO (Chen et al. 2023) decays linearly (``p = 1``); we take
   ``p = 3``, which front-loads the removal and leaves the kept groups most of
   the period to adapt: on the tiny model of ``tests/test_lhspg.py`` it gave a
   lower loss after removal than ``p = 1`` in each of three settings.

Choices where the paper is silent:

- A row slice of ``W`` has the matching rows of ``B`` in its group, a column
  slice the matching columns of ``A`` (the engine composes LoRA slices with their
  base weight), so scaling a channel's base and LoRA slices by ``c`` scales its
  composed slice ``W0 + s B A`` by exactly ``c``. The base slices of redundant
  channels are therefore scaled with their LoRA slices: a rank-``r`` update
  cannot cancel an arbitrary base row, and those slices are removed at the end.
- Channels zeroed in earlier periods are held at zero after every step.
- The redundant set of period ``p`` is the lowest-saliency channels reaching
  ``ratio * (p + 1) / P`` of the parameters (:func:`saliency_selector`), with
  the channels already chosen kept chosen, so the set only grows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ShearGraphError
from .trace import is_adapter_param


@dataclass(frozen=True)
class _Slice:
    """One parameter slice of a group, resolved to tensors."""

    param: torch.Tensor
    dim: int
    indices: np.ndarray  # [n_channels, width]
    lora: tuple | None  # (A [r, in], B [out, r], scaling) when ``param`` is a LoRA base weight


def _lora_of(model: nn.Module, name: str):
    """``(A, B, scaling)`` of the peft LoRA layer whose base weight is ``name``."""
    if not name.endswith(".base_layer.weight"):
        return None
    module = model.get_submodule(name[: -len(".base_layer.weight")])
    adapters = list(getattr(module, "lora_A", {}))
    if len(adapters) != 1:
        return None
    a = adapters[0]
    return module.lora_A[a].weight, module.lora_B[a].weight, float(module.scaling[a])


def resolve_slices(model: nn.Module, groups: list) -> dict:
    """Group id -> list of :class:`_Slice`, one per distinct tensor and dim
    (tied parameters appear once, so they are scaled once)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for g in groups:
        seen, slices = set(), []
        for s in g.slices:
            p = named[s.param]
            if (id(p), s.dim) in seen:
                continue
            seen.add((id(p), s.dim))
            slices.append(_Slice(p, s.dim, s.indices, None if is_adapter_param(s.param) else _lora_of(model, s.param)))
        out[g.id] = slices
    return out


def _composed(s: _Slice, idx: torch.Tensor, lora: tuple | None = None) -> torch.Tensor:
    """The slice's composed values ``(W0 + s B A)`` at ``idx`` along ``s.dim``, float32.

    ``lora``: ``(A, B)`` to compose with instead of the slice's own factors (a
    snapshot taken before the step); for a slice of a LoRA factor itself, the
    snapshot of that factor is ``lora[0]``.
    """
    if s.lora is None:
        value = s.param if lora is None else lora[0]
        return value.detach().index_select(s.dim, idx).float()
    base = s.param.detach().index_select(s.dim, idx).float()
    a, b = (s.lora[0], s.lora[1]) if lora is None else lora
    scaling = s.lora[2]
    if s.dim == 0:
        return base + scaling * (b.detach().index_select(0, idx).float() @ a.detach().float())
    return base + scaling * (b.detach().float() @ a.detach().index_select(1, idx).float())


def _index(s: _Slice, channels: list) -> torch.Tensor:
    return torch.as_tensor(s.indices[channels].ravel(), dtype=torch.long, device=s.param.device)


def _factors(s: _Slice) -> list:
    """The trainable tensors a slice's composed value depends on (its LoRA factors)."""
    if s.lora is None:
        return [s.param] if s.param.requires_grad else []
    return [s.lora[0], s.lora[1]]


def _scale(s: _Slice, idx: torch.Tensor, factor: torch.Tensor) -> None:
    """Multiply the slice's base and LoRA values at ``idx`` by ``factor`` (one per index)."""
    for t, dim in _tensors(s):
        f = factor.to(t.dtype).view([-1 if d == dim else 1 for d in range(t.dim())])
        t.data.index_copy_(dim, idx, t.data.index_select(dim, idx) * f)


def _tensors(s: _Slice) -> list:
    """``(tensor, dim)`` pairs that scaling the slice touches: the slice and its LoRA factor along ``dim``."""
    if s.lora is None:
        return [(s.param, s.dim)]
    a, b, _ = s.lora
    return [(s.param, s.dim), (b, 0) if s.dim == 0 else (a, 1)]


@dataclass(frozen=True)
class _Resolved:
    """A group's channels resolved once per period onto the parameters' device:
    per slice the flat index along ``dim`` and, per index, its channel's position."""

    slices: list  # [(_Slice, idx long [n * width], owner long [n * width])]
    n: int


def _resolve(slices: list, channels: list) -> _Resolved:
    out = []
    for s in slices:
        idx = _index(s, channels)
        owner = torch.arange(len(channels), device=idx.device).repeat_interleave(s.indices.shape[1])
        out.append((s, idx, owner))
    return _Resolved(out, len(channels))


class LHSPG(torch.optim.Optimizer):
    """LoRA Half-Space Projected Gradient optimizer (equations in the module docstring).

    Parameters
    ----------
    model : peft.PeftModel
        A causal LM with LoRA adaptors; its trainable parameters (the LoRA
        factors) are the ones optimized.
    groups : list of RemovalGroup
        Groups of ``model`` itself (``find_groups(trace(model))``), whose slices
        include the LoRA factors.
    select : callable
        ``select(period, chosen) -> {group id: [channels]}``: the cumulative
        redundant channels for ``period`` (0-based), a superset of ``chosen``
        (the channels of earlier periods). Called at each period's first step.
    lr, betas, eps, weight_decay : float
        AdamW's (equation 1).
    warmup_steps : int
        Steps of plain AdamW before the first period.
    n_periods, period_steps : int
        ``P`` pruning periods of ``T`` steps each; every chosen channel is zero
        after step ``warmup_steps + P * T``.
    final_steps : int
        Steps after the last period, the redundant channels held at zero, so the
        kept groups adapt to the last period's removals too.
    epsilon : float
        Half-space threshold (equation 2), in [0, 1).
    decay_power : float
        ``p`` of the decay (equation 3): a channel's magnitude after step ``k``
        of ``T`` is ``((T - k) / T) ** p``.

    Raises
    ------
    ShearGraphError
        The model has no trainable parameters, a non-positive period count or
        length, or ``select`` returns a set that drops an earlier channel.
    """

    def __init__(self, model: nn.Module, groups: list, select, *, lr: float = 2e-4, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0, n_periods: int = 1,
                 period_steps: int = 1, final_steps: int = 0, epsilon: float = 0.0,
                 decay_power: float = 3.0):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ShearGraphError("LHSPG needs a model with LoRA adaptors (peft.get_peft_model); "
                                  "this one has no trainable parameters")
        if n_periods < 1 or period_steps < 1 or warmup_steps < 0 or final_steps < 0:
            raise ShearGraphError(f"n_periods and period_steps must be >= 1, warmup_steps and final_steps >= 0; "
                                  f"got {n_periods}, {period_steps}, {warmup_steps}, {final_steps}")
        if not 0 <= epsilon < 1:
            raise ShearGraphError(f"epsilon must be in [0, 1), got {epsilon}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.slices = resolve_slices(model, groups)
        self.select = select
        self.warmup_steps, self.n_periods, self.period_steps = warmup_steps, n_periods, period_steps
        self.final_steps, self.epsilon, self.decay_power = final_steps, epsilon, decay_power
        self.schedule = {"step": 0, "pruned": {}, "active": {}, "projected": 0}
        self._flips = {}
        self._set_active()
        self._set_pruned()

    # -- schedule ------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Warm-up, periods and final steps."""
        return self.warmup_steps + self.n_periods * self.period_steps + self.final_steps

    @property
    def pruned(self) -> dict:
        """Channels already zero: ``{group id: sorted channels}``."""
        return {g: sorted(c) for g, c in self.schedule["pruned"].items() if c}

    @property
    def redundant(self) -> dict:
        """Every chosen channel, zero or on its way: ``{group id: sorted channels}``."""
        out = {g: set(c) for g, c in self.schedule["pruned"].items()}
        for g, c in self.schedule["active"].items():
            out.setdefault(g, set()).update(c)
        return {g: sorted(c) for g, c in out.items() if c}

    def position(self, step: int):
        """(period, step within period 1..T) of a 1-based step, or None outside the periods."""
        k = step - self.warmup_steps - 1
        if k < 0 or k >= self.n_periods * self.period_steps:
            return None
        return k // self.period_steps, k % self.period_steps + 1

    def _start_period(self, period: int) -> None:
        chosen = self.redundant
        params = [p for g in self.param_groups for p in g["params"]]
        grads = [p.grad for p in params]  # a data-driven select() runs its own backward passes
        for p in params:
            p.grad = None
        try:
            with torch.enable_grad():
                new = self.select(period, chosen)
        finally:
            for p, g in zip(params, grads):
                p.grad = g
        for gid, chans in chosen.items():
            if not set(chans) <= set(new.get(gid, ())):
                raise ShearGraphError(f"select() dropped channels of group {gid} chosen in an earlier period")
        unknown = set(new) - set(self.slices)
        if unknown:
            raise ShearGraphError(f"select() returned unknown group ids: {sorted(unknown)[:5]}")
        self.schedule["active"] = {g: sorted(set(c) - set(chosen.get(g, ()))) for g, c in new.items()}
        self._set_active()

    # -- step ----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One LHSPG step: AdamW trial, then projection and decay of the
        redundant channels. Returns the closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.schedule["step"] += 1
        pos = self.position(self.schedule["step"])
        if pos is not None and pos[1] == 1:
            self._start_period(pos[0])
        before = self._snapshot() if pos is not None else []
        self._adamw()
        if pos is not None:
            t, k = self.period_steps, pos[1]
            self._project_and_decay(before, ((t - k) / (t - k + 1)) ** self.decay_power)
            if k == t:
                for gid, chans in self.schedule["active"].items():
                    self.schedule["pruned"].setdefault(gid, [])
                    self.schedule["pruned"][gid] = sorted(set(self.schedule["pruned"][gid]) | set(chans))
                self.schedule["active"] = {}
                self._set_active()
                self._set_pruned()
        self.hold_pruned()
        return loss

    def _adamw(self) -> None:
        """Equation 1 on every parameter with a gradient, as foreach ops per step count
        (the same arithmetic, in the same order, as one tensor at a time)."""
        for group in self.param_groups:
            b1, b2 = group["betas"]
            batches = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
                batches.setdefault((st["step"], p.device, p.dtype), []).append(p)
            for (t, _, dtype), params in batches.items():
                grads = [p.grad.float() for p in params]
                m = [self.state[p]["exp_avg"] for p in params]
                v = [self.state[p]["exp_avg_sq"] for p in params]
                torch._foreach_mul_(m, b1)
                torch._foreach_add_(m, grads, alpha=1 - b1)
                torch._foreach_mul_(v, b2)
                torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
                denom = torch._foreach_div(v, 1 - b2 ** t)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, group["eps"])
                update = torch._foreach_div(m, 1 - b1 ** t)
                torch._foreach_div_(update, denom)
                if group["weight_decay"]:
                    torch._foreach_add_(update, [p.float() for p in params], alpha=group["weight_decay"])
                torch._foreach_mul_(update, group["lr"])
                if dtype != torch.float32:
                    update = [u.to(dtype) for u in update]
                torch._foreach_sub_(params, update)

    def _snapshot(self) -> list:
        """Copies of the LoRA factors the active channels' composed values depend on,
        taken before the trial step (buffers allocated once per period)."""
        if not self._before:
            return []
        torch._foreach_copy_(self._before, self._factor_list)
        return self._before

    def _set_active(self) -> None:
        """Resolve the active channels onto the device and allocate the snapshot buffers."""
        self._active = {gid: _resolve(self.slices[gid], chans)
                        for gid, chans in self.schedule["active"].items() if chans}
        factors = {}
        for r in self._active.values():
            for s, _, _ in r.slices:
                factors.update({id(t): t for t in _factors(s)})
        self._factor_list = list(factors.values())
        self._slot = {k: i for i, k in enumerate(factors)}
        self._before = [t.detach().clone() for t in self._factor_list]

    def _set_pruned(self) -> None:
        self._pruned = [(t, dim, idx) for gid, chans in self.schedule["pruned"].items() if chans
                        for s, idx, _ in _resolve(self.slices[gid], chans).slices for t, dim in _tensors(s)]

    def _old_lora(self, s: _Slice, before: list) -> tuple:
        if s.lora is None:
            return (before[self._slot[id(s.param)]],) if s.param.requires_grad else None
        return before[self._slot[id(s.lora[0])]], before[self._slot[id(s.lora[1])]]

    def _project_and_decay(self, before: list, decay: float) -> None:
        """Equations 2 and 3 for every active group: per-channel dot products and norms
        accumulate in float32 on the parameters' device; no value leaves it."""
        for r in self._active.values():
            device = r.slices[0][1].device
            dot = torch.zeros(r.n, dtype=torch.float32, device=device)
            norm2 = torch.zeros(r.n, dtype=torch.float32, device=device)
            for s, idx, _ in r.slices:
                x = _composed(s, idx, self._old_lora(s, before)).movedim(s.dim, 0).reshape(r.n, -1)
                trial = (decay * _composed(s, idx)).movedim(s.dim, 0).reshape(r.n, -1)
                dot += (trial * x).sum(1)
                norm2 += (x * x).sum(1)
            flip = dot < self.epsilon * norm2
            factor = torch.where(flip, 0.0, decay).to(torch.float32)
            count = (flip & (norm2 > 0)).sum()
            self._flips[device] = self._flips[device] + count if device in self._flips else count
            for s, idx, owner in r.slices:
                _scale(s, idx, factor[owner])

    @property
    def projected(self) -> int:
        """Channels the half-space test has projected onto zero so far (equation 2)."""
        return self.schedule["projected"] + sum(int(c) for c in self._flips.values())

    def hold_pruned(self) -> None:
        """Set the channels zeroed in earlier periods back to zero (after every step)."""
        for t, dim, idx in self._pruned:
            t.data.index_fill_(dim, idx, 0)

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        out = super().state_dict()
        out["lhspg"] = {"step": self.schedule["step"], "projected": self.projected,
                        "pruned": self.pruned, "active": {g: list(c) for g, c in self.schedule["active"].items()}}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        sched = state_dict.pop("lhspg")
        super().load_state_dict(state_dict)
        self.schedule = {"step": sched["step"], "projected": sched["projected"],
                         "pruned": {g: list(c) for g, c in sched["pruned"].items()},
                         "active": {g: list(c) for g, c in sched["active"].items()}}
        self._flips = {}
        self._set_active()
        self._set_pruned()


def group_norms(model: nn.Module, groups: list, channels: dict | None = None) -> dict:
    """L2 norm of each channel's composed slices: ``{group id: float64 [n_channels]}``
    (only ``channels[group id]`` when given). Zero means the channel is pruned."""
    slices = resolve_slices(model, groups)
    out = {}
    for g in groups:
        chans = list(range(g.n_channels)) if channels is None else list(channels.get(g.id, []))
        if not chans:
            continue
        total = torch.zeros(len(chans), dtype=torch.float64)
        for s in slices[g.id]:
            v = _composed(s, _index(s, chans)).movedim(s.dim, 0).reshape(len(chans), -1).double().cpu()
            total += (v * v).sum(1)
        out[g.id] = total.sqrt().numpy()
    return out


def period_ratios(ratio: float, n_periods: int) -> list:
    """Cumulative parameter ratio removed after each period: ``ratio * (p + 1) / P``."""
    return [ratio * (p + 1) / n_periods for p in range(n_periods)]

