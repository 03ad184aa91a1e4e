"""Removal groups: the parameter slices that must be removed together.

Found by dimension propagation (:mod:`shear_graph.rules`) over the traced graph:
every index of every parameter dim gets the id of its coupled component; the
components that touch no frozen index (graph inputs and outputs, buffers,
index-dependent constants, inner dims of reshapes) are removable channels, and
channels with the same parameter footprint form one :class:`RemovalGroup`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ShearGraphError
from .rebuild import SYNCED_MODULES
from .rules import Propagation, _op_name, module_path
from .trace import ShearGraph, is_adapter_param

KINDS = ("attention_head", "ffn", "hidden", "other")
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class ParamSlice:
    """Slices of one parameter dim that a group removes.

    Attributes
    ----------
    param : str
        Parameter name as in ``model.named_parameters()``.
    dim : int
        The dim sliced (0 = rows / output features of ``nn.Linear``).
    indices : np.ndarray
        int64 array of shape [n_channels, width]: row ``c`` holds the indices of
        ``dim`` that channel ``c`` owns (e.g. ``head_dim * query heads per KV
        head`` rows of ``q_proj`` for an attention head group).
    """

    param: str
    dim: int
    indices: np.ndarray = field(repr=False)

    @property
    def width(self) -> int:
        return int(self.indices.shape[1])


@dataclass(frozen=True)
class AttentionInfo:
    """Head layout of the attention module an ``attention_head`` group belongs to.

    ``num_heads`` query heads share ``num_kv_heads`` KV heads of ``head_dim``.
    A channel of the group holds ``num_heads / n_channels`` query heads and
    ``kv_heads_per_channel`` KV heads: 1 for GQA/MHA (a KV head with the query
    heads that share it), 0 when the module has a single KV head (MQA), whose
    groups are single query heads and whose KV head is never removable.
    """

    module: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_heads_per_channel: int = 1


@dataclass
class RemovalGroup:
    """A minimally removal structure with ``n_channels`` channels.

    Removing channel ``c`` removes ``s.indices[c]`` along ``s.dim`` of every
    ``s`` in ``slices``; the network stays valid for any subset of channels
    (LoRAShear, Chen et al. 2023, Sec. 3.1: "minimally removal structures").

    Attributes
    ----------
    id : str
        Stable name, e.g. ``"ffn.L3"``, ``"attention_head.L3"``, ``"hidden"``.
    kind : str
        ``attention_head`` (a KV head with the query heads sharing it), ``ffn``
        (an intermediate channel), ``hidden`` (a residual-stream channel) or
        ``other``.
    layer : int or None
        Layer index; None for groups spanning layers (hidden).
    rms_norm_weights : tuple of (param, offset)
        RMSNorm weights normalizing over this group's channels. Physical
        removal rescales ``offset + w`` by ``sqrt(N / K)`` so that the mean over
        K kept channels equals the masked mean over N.
    layer_norm_params : tuple of str
        LayerNorm parameters over this group: removal changes the mean and
        variance, so it is approximate (see README, "Known limits").
    """

    id: str
    kind: str
    layer: int | None
    n_channels: int
    slices: tuple
    attention: AttentionInfo | None = None
    rms_norm_weights: tuple = ()
    layer_norm_params: tuple = ()
    model_fingerprint: str = ""

    @property
    def params(self) -> list:
        return sorted({s.param for s in self.slices})

    def slice(self, param: str, dim: int | None = None) -> ParamSlice:
        """The slice of ``param`` (along ``dim`` when a param has two)."""
        for s in self.slices:
            if s.param == param and (dim is None or s.dim == dim):
                return s
        raise KeyError(f"group {self.id} has no slice of {param}")


def _layer_of(name: str):
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def _freeze_boundary(prop: Propagation, sg: ShearGraph) -> None:
    sig = sg.program.graph_signature
    fixed = set(sig.user_inputs) | set(sig.inputs_to_buffers) | set(
        getattr(sig, "inputs_to_lifted_tensor_constants", {})
    )
    for node in sg.graph.nodes:
        if node.op == "placeholder" and node.name in fixed:
            what = "a model input" if node.name in sig.user_inputs else "a buffer or constant"
            prop.freeze(prop.dims(node), node, f"{what} (its shape is fixed)")
        elif node.op == "output":
            for out in node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]:
                prop.freeze(prop.dims(out), node, "a model output (its shape is fixed)")


def _norm_offset(node: torch.fx.Node) -> float:
    """Offset c when a norm weight is used as (c + w), as Gemma's RMSNorm does."""
    frontier = [node]
    while frontier:
        n = frontier.pop()
        for user in n.users:
            name = _op_name(user.target)
            if name in ("aten.to", "aten._to_copy", "aten.alias", "aten.type_as"):
                frontier.append(user)
            elif name == "aten.add":
                other = [a for a in user.args if a is not n]
                if other and isinstance(other[0], (int, float)):
                    return float(other[0])
    return 0.0


_HEAD_PRESERVING = {"aten.reshape", "aten.view", "aten._unsafe_view", "aten.expand", "aten.unsqueeze",
                    "aten.clone", "aten.contiguous", "aten.alias", "aten.to", "aten._to_copy"}


def _kv_heads(site) -> int:
    """KV heads of an attention: the head count of its key before any
    repeat (``repeat_kv`` is unsqueeze, expand and reshape)."""
    k = site.key
    val = k.meta["val"]
    per_head = val.shape[0] * val.shape[-2] * val.shape[-1]
    heads = val.numel() // per_head
    while isinstance(k, torch.fx.Node) and k.op == "call_function" and _op_name(k.target) in _HEAD_PRESERVING:
        k = k.args[0]
        heads = min(heads, k.meta["val"].numel() // per_head)
    return int(heads)


def _with_kv_heads(info, n_channels):
    if n_channels == info.num_kv_heads:
        return info
    if info.num_kv_heads == 1 and n_channels == info.num_heads:
        return AttentionInfo(info.module, info.num_heads, 1, info.head_dim, kv_heads_per_channel=0)
    raise ShearGraphError(
        f"attention {info.module}: {n_channels} head groups for {info.num_heads} query and "
        f"{info.num_kv_heads} KV heads; shear-graph cannot tell how they share. Please report the model."
    )


def find_groups(graph: ShearGraph) -> list:
    """Find every removal group of a traced model.

    Parameters
    ----------
    graph : ShearGraph
        From :func:`shear_graph.trace`.

    Returns
    -------
    list of RemovalGroup
        Sorted by layer, then kind. Rank dims of LoRA adaptors are never groups;
        ``lora_B`` rows and ``lora_A`` columns join their base layer's groups.

    Raises
    ------
    UnsupportedOpError
        If an op has no propagation rule (the message names op and module).

    Examples
    --------
    >>> from transformers import LlamaConfig
    >>> import shear_graph as sg
    >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    ...                   num_attention_heads=8, num_key_value_heads=2, vocab_size=100)
    >>> groups = sg.find_groups(sg.trace(cfg))
    >>> sorted((g.id, g.n_channels) for g in groups)[:3]
    [('attention_head.L0', 2), ('attention_head.L1', 2), ('ffn.L0', 96)]
    """
    if not isinstance(graph, ShearGraph):
        raise TypeError(f"find_groups takes the ShearGraph from sg.trace(model), got {type(graph).__name__}")
    return _find(graph)[0]


def _module_class(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    cls = list(stack.values())[-1][1] if stack else ""
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def _resolve_constants(prop: Propagation, comps, head_comps: dict) -> None:
    """Freeze the dims whose sizes are constants of the program, unless the
    rebuild re-derives them: shape attributes of the torch layers that
    :func:`~shear_graph.rebuild.sync_shape_attributes` reads back from weights,
    and the head counts of attention modules rebuilt from the derived config."""
    for node, keys, why in prop.constants:
        cls = _module_class(node)
        weightless_norm = _op_name(node.target) in ("aten.layer_norm", "aten.rms_norm") and (
            len(node.args) < 3 or node.args[2] is None)
        if cls.startswith(SYNCED_MODULES) and not weightless_norm:
            continue
        mod = module_path(node)
        att = next((m for m in head_comps if mod == m or mod.startswith(m + ".")), None)
        for key in keys:
            c = comps.of(key)
            live = np.unique(c[~comps.frozen[c]])
            if not len(live) or (att is not None and np.isin(live, head_comps[att]).all()):
                continue
            comps.freeze(live, key, (node.name, mod, _op_name(node.target),
                                     f"{why}: size {prop.size(key)} is a constant of the program that "
                                     "the rebuild cannot re-derive"))


def _check_reductions(prop: Propagation, comps, norm_modules: dict) -> None:
    """A reduction over removable channels changes when they are removed; only
    the norms the rebuild compensates (RMSNorm by rescaling, LayerNorm with its
    documented approximation) may reduce over a group."""
    for node, key, kind in prop.reductions:
        c = comps.of(key)
        live = np.unique(c[~comps.frozen[c]])
        if not len(live):
            continue
        mod = module_path(node)
        if kind in ("aten.mean", "aten.rms_norm", "aten.layer_norm", "aten.var"):
            ok = np.array([mod in norm_modules.get(int(x), ()) for x in live])
            live = live[~ok]
        if len(live):
            comps.freeze(live, key, (node.name, mod, kind, f"{kind.split('.')[-1]} reduces over this dim and no "
                                     "norm weight of the same module can compensate the removal"))


def _solve(graph: ShearGraph):
    """Propagate, solve and apply the soundness checks: ``(prop, comps, head_info)``."""
    prop = Propagation(graph.graph).run()
    _freeze_boundary(prop, graph)
    comps = prop.space.solve()
    head_info, head_comps = {}, {}
    for key, site in prop.head_dims:
        q = site.query.meta["val"]
        info = AttentionInfo(site.module, int(q.shape[-3]), _kv_heads(site), int(q.shape[-1]))
        cs = np.unique(comps.of(key))
        head_comps[site.module] = np.union1d(head_comps.get(site.module, np.zeros(0, np.int64)), cs)
        for c in cs:
            head_info[int(c)] = info
    _resolve_constants(prop, comps, head_comps)
    norm_modules: dict = {}  # component -> modules owning a 1-D parameter (norm weight) in it
    placeholders = {n.name: n for n in graph.graph.nodes if n.op == "placeholder"}
    for ph, pname in graph.param_names.items():
        node = placeholders[ph]
        if node.meta["val"].dim() == 1 and node.users:
            for c in np.unique(comps.of((ph, 0, 0))):
                norm_modules.setdefault(int(c), set()).add(pname.rsplit(".", 1)[0])
    _check_reductions(prop, comps, norm_modules)
    return prop, comps, head_info


def _find(graph: ShearGraph):
    prop, comps, head_info = _solve(graph)
    placeholders = {n.name: n for n in graph.graph.nodes if n.op == "placeholder"}

    # one entry per (component, parameter dim, index)
    slots = []  # (param name, dim, placeholder)
    labs = []
    for ph, pname in graph.param_names.items():
        node = placeholders[ph]
        if not node.users:  # the unused twin of a tied parameter: its alias carries the flow
            continue
        for d in range(node.meta["val"].dim()):
            labs.append(comps.of((ph, 0, d)))
            slots.append((pname, d, node))
    if not slots:
        return [], prop, comps
    # int32 index arrays (a 405B model has about 4e7 parameter-dim indices: int64 copies
    # of these arrays were most of the memory of finding its groups); the slices' own
    # indices are int64 again below
    lengths = np.array([len(x) for x in labs], dtype=np.int64)
    lab = np.concatenate(labs)
    del labs
    itype = np.int32 if len(lab) < 2 ** 31 else np.int64
    sid = np.repeat(np.arange(len(slots), dtype=np.int32), lengths)
    idx = np.arange(len(lab), dtype=itype)
    idx -= np.repeat((np.cumsum(lengths) - lengths).astype(itype), lengths)
    base_slot = np.array([not is_adapter_param(p) for p, _, _ in slots])
    keep = ~comps.frozen[lab]
    has_base = np.zeros(len(comps.frozen), dtype=bool)
    has_base[lab[base_slot[sid]]] = True
    keep &= has_base[lab]
    lab, sid, idx = lab[keep], sid[keep], idx[keep]
    order = np.lexsort((idx, sid, lab))
    lab, sid, idx = lab[order], sid[order], idx[order]
    if not len(lab):
        return [], prop, comps

    # a component's signature: which slots it touches and how many indices each
    pair_start = np.flatnonzero(np.r_[True, (lab[1:] != lab[:-1]) | (sid[1:] != sid[:-1])])
    pair_lab, pair_sid = lab[pair_start], sid[pair_start]
    pair_cnt = np.diff(np.r_[pair_start, len(lab)])
    comp_start = np.flatnonzero(np.r_[True, pair_lab[1:] != pair_lab[:-1]])
    sig_of_comp: dict = {}
    bounds = np.r_[comp_start, len(pair_lab)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        key = (tuple(pair_sid[a:b].tolist()), tuple(pair_cnt[a:b].tolist()))
        sig_of_comp.setdefault(key, []).append(pair_lab[a])

    embed_tables = {
        n.args[0].name for n in graph.graph.nodes
        if n.op == "call_function" and _op_name(n.target) == "aten.embedding"
    }
    reduced = {}  # component -> list of (reduction node, kind)
    for node, key, kind in prop.reductions:
        for c in np.unique(comps.of(key)):
            reduced.setdefault(int(c), []).append((node, kind))

    comp_pos = {int(c): i for i, c in enumerate(lab[np.r_[True, lab[1:] != lab[:-1]]])}
    comp_first = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    groups = []
    for (slot_ids, counts), comp_labels in sig_of_comp.items():
        comp_labels = np.array(comp_labels)
        starts = comp_first[[comp_pos[int(c)] for c in comp_labels]]
        slices = []
        offset = 0
        for s, w in zip(slot_ids, counts):
            cols = starts[:, None] + offset + np.arange(w)[None, :]
            slices.append(ParamSlice(slots[s][0], slots[s][1], idx[cols].astype(np.int64)))
            offset += w
        order = np.argsort(slices[0].indices[:, 0])
        slices = [ParamSlice(s.param, s.dim, s.indices[order]) for s in slices]
        present = {s.param for s in slices}
        slices = tuple(slices + [
            ParamSlice(alias, s.dim, s.indices)
            for s in slices for alias in graph.aliases.get(s.param, ()) if alias not in present
        ])
        c0 = int(comp_labels[0])
        names = [slots[s][0] for s in slot_ids]
        layers = {_layer_of(n) for n in names if not is_adapter_param(n)}
        if c0 in head_info:
            kind = "attention_head"
        elif len(layers) > 1 or any(slots[s][2].name in embed_tables for s in slot_ids):
            kind = "hidden"
        elif len(layers) == 1 and None not in layers:
            kind = "ffn"
        else:
            kind = "other"
        rms, ln = [], []
        for node, rkind in reduced.get(c0, []):
            mod = module_path(node)
            for s in slot_ids:
                pname, d, ph = slots[s]
                if ph.meta["val"].dim() == 1 and pname.rsplit(".", 1)[0] == mod:
                    if rkind == "aten.mean" and (pname, _norm_offset(ph)) not in rms:
                        rms.append((pname, _norm_offset(ph)))
                    elif rkind in ("aten.layer_norm", "aten.var") and pname not in ln:
                        ln.append(pname)
                    elif rkind == "aten.rms_norm" and (pname, 0.0) not in rms:
                        rms.append((pname, 0.0))
        layer = layers.pop() if len(layers) == 1 else None
        groups.append(RemovalGroup(
            id="", kind=kind, layer=None if kind == "hidden" else layer,
            n_channels=len(comp_labels), slices=slices,
            attention=_with_kv_heads(head_info.get(c0), len(comp_labels)) if kind == "attention_head" else None,
            rms_norm_weights=tuple(rms), layer_norm_params=tuple(ln), model_fingerprint=graph.fingerprint,
        ))
    groups.sort(key=lambda g: (g.layer if g.layer is not None else -1, KINDS.index(g.kind), g.slices[0].param))
    seen: dict = {}
    for g in groups:
        base = g.kind if g.layer is None else f"{g.kind}.L{g.layer}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        g.id = base if n == 0 else f"{base}.{n}"
    return groups, prop, comps


def group_counts(groups: list) -> dict:
    """Channels per kind per layer: ``{kind: {layer: n_channels}}``."""
    out: dict = {}
    for g in groups:
        out.setdefault(g.kind, {})
        out[g.kind][g.layer] = out[g.kind].get(g.layer, 0) + g.n_channels
    return out
