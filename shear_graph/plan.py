"""Prune plans: which channels of which removal groups go."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import PlanError
from .groups import KINDS
from .trace import base_model_of, fingerprint, is_adapter_param


@dataclass
class GroupRemoval:
    """The channels removed from one group, and the exact parameter indices.

    ``slices`` holds, per parameter dim, its original ``size`` and the sorted
    ``indices`` removed: what the plan removes is written out, never implied.
    """

    group: str
    kind: str
    layer: int | None
    n_channels: int
    channels: list
    slices: list  # [{"param", "dim", "size", "width", "indices"}]
    rms_norm_weights: list = field(default_factory=list)  # [[param, offset]]
    layer_norm_params: list = field(default_factory=list)
    module: str | None = None  # the attention module, for attention_head groups

    @property
    def kept(self) -> int:
        return self.n_channels - len(self.channels)


@dataclass
class PrunePlan:
    """Channels to remove per removal group, tied to one model structure.

    Attributes
    ----------
    model_class, fingerprint : str
        The structure the plan was made for (:func:`shear_graph.trace.fingerprint`);
        :func:`apply_plan` and :func:`mask_plan` refuse any other.
    removals : list of GroupRemoval
        One entry per group that loses channels.
    groups : dict
        Every group of the model (pruned or not): id -> ``{"kind", "layer",
        "n_channels"}``, and for attention modules ``{"module", "num_heads",
        "num_kv_heads", "head_dim"}`` before pruning.
    """

    model_class: str
    fingerprint: str
    removals: list
    groups: dict = field(default_factory=dict)
    method: str = "manual"

    # -- construction ----------------------------------------------------
    @classmethod
    def from_channels(cls, model: torch.nn.Module, groups: list, channels: dict, method: str = "manual") -> "PrunePlan":
        """Build a plan removing ``channels[group_id]`` (channel indices) per group.

        Raises
        ------
        PlanError
            Unknown group id, a channel index out of range or repeated, or every
            channel of a group removed (a layer with zero heads or zero FFN
            width cannot run).
        """
        fp = fingerprint(model)
        foreign = [g.id for g in groups if g.model_fingerprint and g.model_fingerprint != fp]
        if foreign:
            raise PlanError(
                f"these groups were found on another model (group {foreign[0]} and {len(foreign) - 1} more); "
                "find the groups of this model: sg.find_groups(sg.trace(model))"
            )
        by_id = {g.id: g for g in groups}
        params = _params_by_name(model)
        removals = []
        for gid, chans in channels.items():
            if gid not in by_id:
                raise PlanError(f"unknown removal group '{gid}'; known ids: {', '.join(sorted(by_id)[:8])}, ...")
            g = by_id[gid]
            chans = sorted(int(c) for c in chans)
            if len(set(chans)) != len(chans):
                raise PlanError(f"group {gid}: a channel is listed twice")
            if chans and (chans[0] < 0 or chans[-1] >= g.n_channels):
                raise PlanError(f"group {gid} has channels 0..{g.n_channels - 1}; got {chans[0]}..{chans[-1]}")
            if len(chans) == g.n_channels:
                raise PlanError(
                    f"plan removes all {g.n_channels} channels of group {gid} ({g.kind}); "
                    "keep at least one so the layer still runs"
                )
            if not chans:
                continue
            removals.append(GroupRemoval(
                group=gid, kind=g.kind, layer=g.layer, n_channels=g.n_channels, channels=chans,
                slices=[{"param": s.param, "dim": s.dim, "size": _dim_size(params, s.param, s.dim), "width": s.width,
                         "indices": np.sort(s.indices[chans].ravel()).tolist()} for s in g.slices],
                rms_norm_weights=[list(x) for x in g.rms_norm_weights],
                layer_norm_params=list(g.layer_norm_params),
                module=g.attention.module if g.attention else None,
            ))
        widths = {}
        for g in groups:
            widths[g.id] = {"kind": g.kind, "layer": g.layer, "n_channels": g.n_channels}
            if g.attention is not None:
                widths[g.id].update(module=g.attention.module, num_heads=g.attention.num_heads,
                                    num_kv_heads=g.attention.num_kv_heads, head_dim=g.attention.head_dim,
                                    kv_heads_per_channel=g.attention.kv_heads_per_channel)
        return cls(type(model).__name__, fp, removals, widths, method)

    # -- reading -----------------------------------------------------------
    def removed_indices(self) -> dict:
        """``{param: {dim: sorted removed indices}}`` over all groups."""
        out: dict = {}
        for r in self.removals:
            for s in r.slices:
                out.setdefault(s["param"], {}).setdefault(s["dim"], set()).update(s["indices"])
        return {p: {d: sorted(v) for d, v in dims.items()} for p, dims in out.items()}

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise :class:`PlanError` unless ``model`` has the structure the plan
        was made for and every removal is whole channels of its group."""
        for r in self.removals:
            kept = r.n_channels - len(r.channels)
            if kept < 1:
                raise PlanError(f"plan removes all {r.n_channels} channels of group {r.group}; keep at least one")
            for s in r.slices:
                idx = s["indices"]
                if len(idx) != len(r.channels) * s["width"] or len(set(idx)) != len(idx) or \
                        (idx and not 0 <= min(idx) <= max(idx) < s["size"]):
                    what = ("it would break the query/KV head ratio (a KV head goes only with all of its query heads)"
                            if r.kind == "attention_head" else "a channel is removed only in part")
                    raise PlanError(
                        f"plan entry for group {r.group} removes {len(idx)} indices of {s['param']} (dim {s['dim']}) "
                        f"for {len(r.channels)} channels of width {s['width']}: {what}. Make plans with "
                        "PrunePlan.from_channels, not by editing the JSON."
                    )
        fp = fingerprint(model)
        if fp != self.fingerprint:
            raise PlanError(
                f"this plan was made for a {self.model_class} with fingerprint {self.fingerprint}; "
                f"the model given is a {type(model).__name__} with fingerprint {fp}. "
                "Make the plan on this model (trace it and find its groups again)."
            )

    def widths_after(self) -> dict:
        """Group id -> channels kept, for every group of the model."""
        kept = {gid: g["n_channels"] for gid, g in self.groups.items()}
        for r in self.removals:
            kept[r.group] = r.kept
        return kept

    def summary(self) -> list:
        """One row per group: ``(group, kind, layer, removed, total)``."""
        return [(r.group, r.kind, r.layer, len(r.channels), r.n_channels) for r in self.removals]

    def __str__(self) -> str:
        rows = [f"PrunePlan({self.method}) for {self.model_class} [{self.fingerprint}]: "
                f"{sum(len(r.channels) for r in self.removals)} channels in {len(self.removals)} groups"]
        rows += [f"  {g:<24} {k:<15} removes {n:>6} of {t:>6}" for g, k, _, n, t in self.summary()]
        return "\n".join(rows)

    # -- JSON ----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        """Parse a plan; raises :class:`PlanError` on malformed JSON."""
        try:
            d = json.loads(text)
            missing = {"model_class", "fingerprint", "removals"} - set(d)
            if missing:
                raise ValueError(f"missing field(s) {sorted(missing)}")
            d["removals"] = [GroupRemoval(**r) for r in d["removals"]]
            return cls(**d)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise PlanError(f"not a shear-graph prune plan: {e}") from e

    def save(self, path) -> None:
        """Write the plan as JSON atomically (a temp file, then rename)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path) -> "PrunePlan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"no plan file at {path}")
        return cls.from_json(path.read_text())


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, with
    the permissions a plain ``open(path, "w")`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _params_by_name(model) -> dict:
    return dict(model.named_parameters(remove_duplicate=False))


def _dim_size(params: dict, name, dim) -> int:
    p = params.get(name)
    if p is None:
        raise PlanError(f"model has no parameter {name}")
    return int(p.shape[dim])


def count_params(model: torch.nn.Module, removed: dict | None = None) -> int:
    """Base-model parameters (LoRA excluded, tied counted once), optionally after
    removing ``removed = {param: {dim: indices}}``."""
    total, seen = 0, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or is_adapter_param(name):
            continue
        seen.add(id(p))
        shape = list(p.shape)
        for d, idx in (removed or {}).get(name, {}).items():
            shape[d] -= len(idx)
        total += math.prod(shape)
    return total


def check_ratio(ratio) -> None:
    """Raise :class:`PlanError` unless ``ratio`` is a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise PlanError(f"ratio must be a number in [0, 1), got {ratio!r} ({type(ratio).__name__})")
    if not 0 <= ratio < 1:  # NaN fails too
        raise PlanError(f"ratio must be in [0, 1), got {ratio}")


def kind_set(kinds) -> set | None:
    """``kinds`` (an iterable of group kinds, see :data:`~shear_graph.groups.KINDS`) as a
    set; None or empty for every kind. Raises :class:`PlanError` for a bare string
    (it would be read letter by letter) or a name that is not a group kind."""
    if not kinds:
        return None
    if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds):
        raise PlanError(f"kinds must be a list or tuple of group kinds such as ('ffn',), got {kinds!r}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise PlanError(f"unknown group kinds {unknown}; the kinds are {', '.join(KINDS)}")
    return set(kinds)


def max_removable(model: torch.nn.Module, groups: list, kinds=None, exclude=()) -> float:
    """The largest share of the parameters any plan can remove: every selected
    group down to one channel (``kinds`` and ``exclude`` as in :func:`plan_by_saliency`)."""
    kinds = kind_set(kinds)
    excluded = set(getattr(exclude, "unprunable_groups", exclude))
    chans = {g.id: list(range(1, g.n_channels)) for g in groups
             if (kinds is None or g.kind in kinds) and g.id not in excluded}
    plan = PrunePlan.from_channels(model, groups, chans)
    return 1 - count_params(model, plan.removed_indices()) / count_params(model)


def check_reachable(model: torch.nn.Module, groups: list, ratio: float, kinds=None, exclude=(), note: str = "") -> None:
    """Raise :class:`PlanError` naming the largest reachable ratio when no plan
    over ``kinds`` (less ``exclude``) can remove ``ratio`` of the parameters."""
    best = max_removable(model, groups, kinds, exclude)
    if best < ratio:
        kinds = kind_set(kinds)
        # only the exclusions among the kinds pruned narrow the reach
        excluded = set(getattr(exclude, "unprunable_groups", exclude)) & {
            g.id for g in groups if kinds is None or g.kind in kinds}
        raise PlanError(
            f"ratio {ratio} cannot be reached with group kinds {sorted(kinds) if kinds else 'all'}"
            f"{f' and {len(excluded)} groups excluded as unprunable' if excluded else ''}: "
            f"at most {best:.3f} of the parameters are removable{note}"
        )


def keep_layer_shares(groups: list, layers) -> dict:
    """Shares for :func:`plan_by_saliency` that leave every group of ``layers``
    whole (share 0), e.g. LLM-Pruner's recipe, which leaves the first four and
    the last two decoder layers whole (Ma et al. 2023, arXiv 2305.11627).

    Parameters
    ----------
    groups : list of RemovalGroup
    layers : iterable of int
        Decoder-layer indices; negative ones count from the end (-1 the last).

    Returns
    -------
    dict
        Group id -> 0.0 for the groups of those layers (groups spanning layers,
        such as ``hidden``, are never named).

    Raises
    ------
    PlanError
        ``layers`` not a list of integers, or an index outside the model's layers.
    """
    if not isinstance(layers, (list, tuple, range, np.ndarray)):
        raise PlanError(f"keep_layers must be a list of decoder-layer indices, got {layers!r}")
    n = 1 + max((g.layer for g in groups if g.layer is not None), default=-1)
    kept = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise PlanError(f"keep_layers must be integers from {-n} to {n - 1} (this model has {n} decoder "
                            f"layers; negative counts from the end), got {layer!r}")
        kept.add(int(layer) % n)
    return {g.id: 0.0 for g in groups if g.layer in kept}


MIN_SHARE = 1e-3  # a positive share below it would need an unbounded search; 0 leaves a group whole


ALLOCATIONS = ("uniform", "global", "standardized")


def plan_by_saliency(model: torch.nn.Module, groups: list, saliency, ratio: float, kinds=None,
                     exclude=(), shares: dict | None = None, allocation: str = "uniform",
                     round_to: int = 1) -> PrunePlan:
    """Remove ``ratio`` of the model's parameters, lowest-saliency channels first.

    With ``allocation="uniform"`` every selected group loses the same fraction
    ``f`` of its channels, or ``f * shares[group]`` with ``shares`` (rounded,
    at least one channel kept); ``f`` is found by bisection so that the
    parameters removed reach ``ratio`` of :func:`count_params`. Within a group
    the channels with the lowest ``saliency.scores`` go first.
    ``"global"`` and ``"standardized"`` rank the channels of all groups
    jointly instead (:func:`plan_adaptive`, FLAP's adaptive structure with and
    without its standardization); they take no ``shares``.

    Parameters
    ----------
    model : torch.nn.Module
    groups : list of RemovalGroup
    saliency : shear_graph.saliency.Saliency
    ratio : float
        Fraction of total base parameters to remove, in [0, 1).
    kinds : iterable of str, optional
        Group kinds to prune (default: all).
    exclude : iterable of str or KnowledgeMap
        Group ids to leave whole; a :class:`~shear_graph.knowledge.KnowledgeMap`
        excludes its unprunable clusters.
    shares : dict, optional
        Group id -> relative share of its channels to remove (>= 0; 1 for a
        group not named), e.g. :meth:`~shear_graph.knowledge.KnowledgeMap.prune_shares`.
    allocation : {"uniform", "global", "standardized"}
        How the cut is spread over the groups (see above).
    round_to : int
        Keep a multiple of ``round_to`` channels in every FFN and hidden group
        (:func:`round_kept`), so that exported widths need little padding and
        fit tensor-core tiles (8, 64, 128, 256); 1 (default): no rounding.
        Attention-head groups are not rounded: a head is ``head_dim`` wide already.
        The uniform allocation only.

    Raises
    ------
    PlanError
        ``ratio`` outside [0, 1), ``kinds`` a bare string or not group kinds, a
        share negative or not finite, ``ratio`` not reachable with the kinds,
        exclusions, shares and rounding given (the message gives the largest
        reachable ratio), an unknown ``allocation``, ``shares`` or ``round_to``
        with a joint one, or ``round_to`` not a positive integer.
    """
    if allocation not in ALLOCATIONS:
        raise PlanError(f"allocation must be one of {', '.join(ALLOCATIONS)}; got {allocation!r}")
    check_round_to(round_to)
    if allocation != "uniform":
        if round_to != 1:
            raise PlanError(f"round_to rounds the uniform allocation's per-group cuts; allocation={allocation!r} "
                            "ranks all groups jointly: give one or the other")
        if shares:
            raise PlanError(f"shares set each group's cut for the uniform allocation; allocation={allocation!r} "
                            "ranks all groups jointly: give one or the other")
        return plan_adaptive(model, groups, saliency, ratio, kinds, exclude, standardize=allocation == "standardized")
    check_ratio(ratio)
    kinds = kind_set(kinds)
    excluded = set(getattr(exclude, "unprunable_groups", exclude))
    chosen = [g for g in groups if (kinds is None or g.kind in kinds) and g.id not in excluded]
    order = {g.id: np.argsort(saliency.scores[g.id], kind="stable").tolist() for g in chosen}
    share = _check_shares({} if shares is None else shares, groups, chosen)
    total = count_params(model)
    method = f"{saliency.method}(ratio={ratio}{', shares' if shares else ''})"

    def plan_at(f: float) -> PrunePlan:
        chans = {g.id: order[g.id][: g.n_channels - round_kept(
                     g, g.n_channels - min(int(round(f * share[g.id] * g.n_channels)), g.n_channels - 1), round_to)]
                 for g in chosen}
        return PrunePlan.from_channels(model, groups, chans, method=method)

    def removed(plan: PrunePlan) -> float:
        return 1 - count_params(model, plan.removed_indices()) / total

    check_reachable(model, groups, ratio, kinds, exclude)
    positive = [v for v in share.values() if v > 0]
    hi = 1.0 / min(positive) if positive else 1.0  # every group with a share can reach its limit
    most = removed(plan_at(hi))
    if most < ratio:
        raise PlanError(f"ratio {ratio} cannot be reached with these shares{' and round_to' if round_to > 1 else ''}: "
                        f"at most {most:.4f} "
                        "(a share of 0 leaves its group whole); give the groups larger shares or a smaller ratio")
    lo = 0.0
    for _ in range(30 + math.ceil(math.log2(hi))):  # the same precision whatever the smallest share
        mid = (lo + hi) / 2
        if removed(plan_at(mid)) >= ratio:
            hi = mid
        else:
            lo = mid
    return plan_at(hi)


def standardized_scores(saliency, group, head_power: float = 2.0) -> np.ndarray:
    """A group's channel scores on a common scale: FLAP's standardization.

    The scores of the group (one module of one layer) are shifted to zero
    mean and scaled to unit (Bessel) standard deviation; where the criterion
    scored each index a channel owns (:attr:`Saliency.index_scores`, e.g. the
    ``o_proj`` columns of a head group) the indices are standardized and each
    channel takes the mean over its own, as FLAP does for heads (An et al.,
    AAAI 2024; lib/prune.py, ``structure == "AL-AM"``). FLAP squares the
    per-column scores of attention heads first: ``head_power`` (1 leaves them).

    Returns
    -------
    np.ndarray
        float64 [n_channels]; zeros when the group's scores do not vary.
    """
    x = saliency.index_scores.get(group.id)
    if x is None:
        x = saliency.scores[group.id][:, None]
    elif group.kind == "attention_head":
        x = x ** head_power
    std = x.std(ddof=1) if x.size > 1 else 0.0
    if not std > 0:
        return np.zeros(group.n_channels)
    return ((x - x.mean()) / std).mean(1)


def plan_adaptive(model: torch.nn.Module, groups: list, saliency, ratio: float, kinds=None, exclude=(),
                  standardize: bool = True, head_power: float = 2.0) -> PrunePlan:
    """Remove ``ratio`` of the parameters, ranking every group's channels jointly.

    FLAP's adaptive structure search "AL-AM" (An et al., AAAI 2024, Sec.
    "Adaptive Structure Search"; lib/prune.py): each module's scores are
    standardized per layer and kind (:func:`standardized_scores`), and the
    channels with the lowest standardized scores in the whole model go first,
    attention head groups and FFN channels alike, until the parameters removed
    reach ``ratio`` of :func:`count_params` (the smallest such prefix; FLAP
    weights each candidate by its parameters, 512/3 for a LLaMA head against
    an FFN channel, which counting the parameters of the plan does exactly).
    The widths per layer follow: a layer with flat scores loses more. Each
    group keeps at least its best channel. FLAP's ratio is of the attention
    and FFN parameters; here, as in :func:`plan_by_saliency`, it is of all.

    Parameters
    ----------
    model : torch.nn.Module
    groups : list of RemovalGroup
    saliency : shear_graph.saliency.Saliency
        E.g. ``compute_saliency(model, groups, "flap", blocks)``.
    ratio : float
        Fraction of total base parameters to remove, in [0, 1).
    kinds : iterable of str, optional
        Group kinds to prune (default: all); FLAP prunes
        ``("attention_head", "ffn")``.
    exclude : iterable of str or KnowledgeMap
        Group ids to leave whole.
    standardize : bool
        False ranks the raw scores jointly ("global"), which only makes sense
        for a criterion on one scale across modules.
    head_power : float
        Power of the per-index attention scores before standardizing (FLAP: 2).

    Returns
    -------
    PrunePlan

    Raises
    ------
    PlanError
        ``ratio`` outside [0, 1), bad ``kinds``, a group without scores, or
        ``ratio`` not reachable with the kinds and exclusions given.
    """
    check_ratio(ratio)
    kinds = kind_set(kinds)
    excluded = set(getattr(exclude, "unprunable_groups", exclude))
    chosen = [g for g in groups if (kinds is None or g.kind in kinds) and g.id not in excluded]
    missing = [g.id for g in chosen if g.id not in saliency.scores]
    if missing:
        raise PlanError(f"the saliency has no scores for group {missing[0]} ({len(missing)} in all); "
                        "compute it on these groups: sg.compute_saliency(model, groups, ...)")
    check_reachable(model, groups, ratio, kinds, exclude)
    score, group_of, channel = [], [], []
    for g in chosen:
        s = standardized_scores(saliency, g, head_power) if standardize else np.asarray(saliency.scores[g.id], float)
        movable = np.argsort(s, kind="stable")[:-1]  # the best channel of each group stays
        score.append(s[movable])
        group_of += [g.id] * len(movable)
        channel.append(movable)
    order = np.argsort(np.concatenate(score), kind="stable") if score else np.zeros(0, dtype=int)
    group_of = np.asarray(group_of)[order]
    channel = np.concatenate(channel)[order] if channel else channel
    total = count_params(model)
    allocation = "standardized" if standardize else "global"
    method = f"{saliency.method}(ratio={ratio}, allocation={allocation})"

    def plan_at(k: int) -> PrunePlan:
        chans: dict = {}
        for gid, c in zip(group_of[:k], channel[:k]):
            chans.setdefault(gid, []).append(int(c))
        return PrunePlan.from_channels(model, groups, chans, method=method)

    lo, hi = 0, len(order)  # removed(plan_at(k)) grows with k; find the least k reaching the ratio
    while lo < hi:
        mid = (lo + hi) // 2
        if 1 - count_params(model, plan_at(mid).removed_indices()) / total >= ratio:
            hi = mid
        else:
            lo = mid + 1
    return plan_at(lo)


def _check_shares(shares: dict, groups: list, chosen: list) -> dict:
    if not isinstance(shares, dict):
        raise PlanError(f"shares must be a dict of group id -> share, got {type(shares).__name__}")
    unknown = sorted(set(shares) - {g.id for g in groups})
    if unknown:
        raise PlanError(f"shares name groups this model does not have: {unknown[:5]}; group ids are like "
                        f"{[g.id for g in groups[:3]]}")
    values = {}
    for k, v in shares.items():
        try:
            values[k] = float(v)
        except (TypeError, ValueError):
            raise PlanError(f"shares must be numbers; {k!r} has {v!r}") from None
    bad = {k: v for k, v in values.items() if not math.isfinite(v) or v < 0 or 0 < v < MIN_SHARE}
    if bad:
        raise PlanError(f"shares must be 0 (leave the group whole) or finite numbers from {MIN_SHARE:g}; got {bad}")
    return {g.id: values.get(g.id, 1.0) for g in chosen}


def plan_by_magnitude(model: torch.nn.Module, groups: list, ratio: float, kinds=None, exclude=(),
                      round_to: int = 1) -> PrunePlan:
    """:func:`plan_by_saliency` with the ``magnitude`` criterion (squared L2
    norm of each channel's weights). Raises :class:`PlanError` as it does."""
    from .saliency import compute_saliency

    check_ratio(ratio)
    return plan_by_saliency(model, groups, compute_saliency(model, groups, "magnitude"), ratio, kinds, exclude,
                            round_to=round_to)


ROUNDED_KINDS = ("ffn", "hidden")  # one channel is one unit of width


def check_round_to(round_to) -> None:
    """Raise :class:`PlanError` unless ``round_to`` is a positive integer."""
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise PlanError(f"round_to must be a positive integer number of channels (e.g. 8, 64, 128, 256), "
                        f"got {round_to!r}")


def round_kept(group, kept: int, round_to: int) -> int:
    """``kept`` channels of ``group`` rounded to the nearest multiple of ``round_to``
    (at least ``round_to``, at most all): FFN and hidden groups only, and only
    groups of at least ``round_to`` channels."""
    if round_to == 1 or group.kind not in ROUNDED_KINDS or group.n_channels < round_to:
        return kept
    return min(group.n_channels, max(round_to, round_to * int(round(kept / round_to))))
