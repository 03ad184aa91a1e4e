"""Dimension-propagation rules: one function per aten op family, one table.

A rule reads one FX node (its args and the shapes recorded by ``torch.export``)
and states which dims of its inputs and outputs are coupled, through a
:class:`Propagation` context. Reading order follows ``torch/fx/passes``:
the table is at the bottom; add a rule with :func:`register_rule`.

Rules are conservative: where an op mixes indices in a way that slicing cannot
follow (gathers, cumulative ops, inner dims of reshapes, strided slices, size-1
dims a reshape splits off), the dims are frozen, so no removal group ever
crosses them. Sizes the program holds as constants (slice bounds, split sizes,
literal view shapes, creation sizes, ``normalized_shape``) are recorded with
:meth:`Propagation.constant`; after solving, they freeze their dims unless the
rebuild re-derives them (see :func:`rederived`). Every freeze carries the op,
module and reason that :func:`shear_graph.explain` reports.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.fx

from .dims import DimSpace
from .errors import ShearGraphError, UnsupportedOpError

Rule = Callable[["Propagation", torch.fx.Node], None]
RULES: dict[str, Rule] = {}


def register_rule(op: str | object, fn: Rule) -> None:
    """Register ``fn(prop, node)`` as the rule of an op.

    Parameters
    ----------
    op : str or op
        An aten overload packet name such as ``"aten.linear"`` (covers every
        overload), or an op object (``torch.ops.aten.linear``).
    fn : callable
        ``fn(prop: Propagation, node: torch.fx.Node) -> None``.

    Examples
    --------
    >>> from shear_graph.rules import register_rule, pointwise
    >>> register_rule("aten.my_activation", pointwise)
    """
    RULES[op if isinstance(op, str) else _op_name(op)] = fn


def _op_name(target) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None) or getattr(target, "_overloadpacket", None)
    return str(packet if packet is not None else target)


def module_path(node: torch.fx.Node) -> str:
    """Innermost module path (``nn_module_stack``) of a node, '' at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _tensors(val) -> list:
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (list, tuple)):
        return [v if isinstance(v, torch.Tensor) else None for v in val]
    return []


class Propagation:
    """Walks an FX graph and fills a :class:`DimSpace` by applying the rules."""

    def __init__(self, graph: torch.fx.Graph):
        self.graph = graph
        self.space = DimSpace()
        self.head_dims: list = []  # (dim key of query head dims, AttentionSite)
        self.reductions: list = []  # (node, reduced input dim key, kind)
        self.constants: list = []  # (node, dim keys whose size the program holds, why)
        for node in graph.nodes:
            for slot, t in enumerate(_tensors(node.meta.get("val"))):
                if t is None:
                    continue
                for d, s in enumerate(t.shape):
                    self.space.add((node.name, slot, d), int(s))

    # -- helpers rules use -------------------------------------------------
    def dims(self, arg, slot: int = 0) -> list:
        """Dim keys of a node argument (empty for scalars and non-tensors)."""
        if not isinstance(arg, torch.fx.Node):
            return []
        ts = _tensors(arg.meta.get("val"))
        if slot >= len(ts) or ts[slot] is None:
            return []
        return [(arg.name, slot, d) for d in range(ts[slot].dim())]

    def size(self, key) -> int:
        return self.space.sizes[key]

    def tie(self, a, b) -> None:
        self.space.tie(a, b)

    def tie_indices(self, a, ia, b, ib) -> None:
        self.space.tie_indices(a, ia, b, ib)

    def freeze(self, keys, node=None, why: str = "") -> None:
        """Mark dims not removable; ``node`` and ``why`` say which op stopped them (for explain)."""
        for k in keys:
            self.space.freeze(k, (node.name if node is not None else "", module_path(node) if node is not None
                                  else "", _op_name(node.target) if node is not None else "", why))

    def constant(self, node, keys, why: str) -> None:
        """The sizes of ``keys`` are constants of the program at ``node``: they
        freeze their dims unless the rebuild re-derives them."""
        keys = [k for k in keys if self.size(k) > 1]
        if keys:
            self.constants.append((node, keys, why))

    def tie_aligned(self, a_dims: list, out_dims: list) -> None:
        """Broadcasting: align trailing dims, tie those of equal size."""
        for a, o in zip(reversed(a_dims), reversed(out_dims)):
            self.tie(a, o)

    def run(self) -> "Propagation":
        for node in self.graph.nodes:
            if node.op == "call_function":
                rule = RULES.get(_op_name(node.target))
                if rule is None:
                    raise UnsupportedOpError(_op_name(node.target), module_path(node))
                try:
                    rule(self, node)
                except (ValueError, IndexError, TypeError) as e:
                    raise ShearGraphError(
                        f"the rule for {_op_name(node.target)} failed on node {node.name} in module "
                        f"'{module_path(node)}': {e}. This is a shear-graph bug or an op variant the rule "
                        "does not cover; please report it with the model config."
                    ) from e
        return self


def _arg(node, i, name, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# -- rules ------------------------------------------------------------------

def no_op(prop: Propagation, node) -> None:
    """Ops that make no tensor or carry no coupling (asserts, symbolic sizes)."""


def pointwise(prop: Propagation, node) -> None:
    """Elementwise ops with broadcasting: every tensor operand ties to the output."""
    out = prop.dims(node)
    for a in list(node.args) + list(node.kwargs.values()):
        prop.tie_aligned(prop.dims(a), out)


def unary(prop: Propagation, node) -> None:
    """Ops whose output follows the first operand only (casts, dropout, type_as)."""
    prop.tie_aligned(prop.dims(node.args[0]), prop.dims(node))


def scan(prop: Propagation, node) -> None:
    """Cumulative ops (cumsum, diff): pointwise, but the scanned dim mixes indices."""
    x = prop.dims(node.args[0])
    prop.tie_aligned(x, prop.dims(node))
    d = _norm_dim(_arg(node, 1, "dim", -1), len(x))
    prop.freeze([x[d]], node, "a cumulative op mixes the indices of this dim")


def softmax(prop: Propagation, node) -> None:
    """softmax / log_softmax: pointwise, but the normalized dim sums over its indices."""
    x = prop.dims(node.args[0])
    prop.tie_aligned(x, prop.dims(node))
    if x:
        prop.freeze([x[_norm_dim(_arg(node, 1, "dim", -1), len(x))]], node, "softmax normalizes over this dim")
    _eager_attention(prop, node)


def like(prop: Propagation, node) -> None:
    """ones_like, zeros_like, ...: uniform values, sizes derived from the operand."""


def constant(prop: Propagation, node) -> None:
    """Creation ops with uniform values (ones, zeros, full): slicing them is
    harmless, but their sizes are constants of the program."""
    prop.constant(node, prop.dims(node), "a tensor created with a literal size")


def index_constant(prop: Propagation, node) -> None:
    """Creation ops whose values depend on the index (arange): never removable."""
    prop.freeze(prop.dims(node), node, "index-dependent values (arange, triu, ...)")


def gather(prop: Propagation, node) -> None:
    """Data-dependent indexing: every dim involved is frozen."""
    keys = prop.dims(node)
    for a in node.args:
        for x in a if isinstance(a, (list, tuple)) else [a]:
            keys += prop.dims(x)
    prop.freeze(keys, node, "data-dependent indexing (gather, index)")


def reduction(prop: Propagation, node) -> None:
    """Reductions over dims (mean, sum, amax, var): the kept dims tie to the output."""
    x = prop.dims(node.args[0])
    dims = _arg(node, 1, "dim", None)
    if dims is None:
        dims = list(range(len(x)))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_norm_dim(d, len(x)) for d in dims}
    keepdim = bool(_arg(node, 2, "keepdim", False))
    out = iter(prop.dims(node))
    for i, k in enumerate(x):
        if i in dims:
            prop.reductions.append((node, k, _op_name(node.target)))
            if keepdim:
                next(out)
        else:
            prop.tie(k, next(out))


_LITERAL_SHAPE = ("aten.view", "aten.reshape", "aten._unsafe_view", "aten.view_copy", "aten.unflatten")


def reshape(prop: Propagation, node) -> None:
    """view/reshape/squeeze/unsqueeze/flatten: match dims in groups of equal product.

    Inside a group that splits or merges dims only the outermost dims are
    coupled (block-wise: a head is a block of ``head_dim`` rows); inner dims
    are frozen, so a head is always removed whole (RoPE couples its halves).
    squeeze/unsqueeze/flatten derive their shape from the input and ignore
    size-1 dims; view/reshape/unflatten state the shape, so a size-1 dim they
    split off (a single head) is an outer dim that freezes the one inside it,
    and every size they give literally (not -1) is a constant of the program.
    """
    states_shape = _op_name(node.target) in _LITERAL_SHAPE
    src, dst = prop.dims(node.args[0]), prop.dims(node)
    literal = set()
    if states_shape:
        if _op_name(node.target) == "aten.unflatten":
            d = _norm_dim(node.args[1], len(src))
            keys, shape = dst[d: d + len(node.args[2])], node.args[2]
        else:
            keys, shape = dst, node.args[1]
        if isinstance(shape, (list, tuple)) and len(shape) == len(keys):
            keys = [o for o, s in zip(keys, shape) if not (isinstance(s, int) and s == -1)]
        literal = set(keys)
        while src and dst and prop.size(src[0]) == 1 and prop.size(dst[0]) == 1:  # leading batch-like ones
            src, dst = src[1:], dst[1:]
        src = _drop_trailing_ones(prop, src)
        dst = _drop_trailing_ones(prop, dst)
    if not states_shape:
        src = [k for k in src if prop.size(k) != 1]
        dst = [k for k in dst if prop.size(k) != 1]
    if 0 in [prop.size(k) for k in src + dst]:
        return
    i = j = 0
    while i < len(src) and j < len(dst):
        gi, gj = [src[i]], [dst[j]]
        pi, pj = prop.size(src[i]), prop.size(dst[j])
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(src[i]); pi *= prop.size(src[i]); i += 1
            else:
                gj.append(dst[j]); pj *= prop.size(dst[j]); j += 1
        _reshape_group(prop, node, gi, gj)
        if len(gi) > 1 or len(gj) > 1:
            # a size kept 1:1 is read as derived (x.size(-1) and a literal look alike
            # in the exported graph); a size that splits or merges dims is a constant
            prop.constant(node, [k for k in gj if k in literal], "a view/reshape that splits or merges dims "
                          "with a literal size")


def _drop_trailing_ones(prop, keys: list) -> list:
    while keys and prop.size(keys[-1]) == 1:
        keys = keys[:-1]
    return keys


def _reshape_group(prop, node, a: list, b: list) -> None:
    a = [k for k in a if prop.size(k) != 1] or a[:1]
    if prop.size(b[0]) == 1 and len(b) > 1:
        # a single head split off: its block is the whole dim, never removable alone
        prop.freeze(a + b, node, "a view splits off a size-1 dim (a single head): the block is the whole dim")
        return
    if len(a) == 1 and len(b) == 1:
        prop.tie(a[0], b[0])
        return
    total = int(np.prod([prop.size(k) for k in a]))
    f = np.arange(total)
    sa, sb = prop.size(a[0]), prop.size(b[0])
    prop.tie_indices(a[0], f // (total // sa), b[0], f // (total // sb))
    prop.freeze(a[1:] + b[1:], node, "the inner dim of a reshape that splits or merges dims")


def permute(prop: Propagation, node) -> None:
    x = prop.dims(node.args[0])
    out = prop.dims(node)
    name = _op_name(node.target)
    if name == "aten.permute":
        order = [_norm_dim(d, len(x)) for d in node.args[1]]
    elif name in ("aten.t", "aten.numpy_T"):
        order = list(reversed(range(len(x))))
    else:
        d0, d1 = (_norm_dim(d, len(x)) for d in node.args[1:3])
        order = list(range(len(x)))
        order[d0], order[d1] = order[d1], order[d0]
    for o, i in enumerate(order):
        prop.tie(x[i], out[o])


def expand(prop: Propagation, node) -> None:
    """expand(x, sizes): broadcast; every size given literally (not -1) is a constant."""
    prop.tie_aligned(prop.dims(node.args[0]), prop.dims(node))
    out = prop.dims(node)
    x = prop.dims(node.args[0])
    grown = [o for i, o in enumerate(out) if i < len(out) - len(x) or prop.size(x[i - len(out) + len(x)]) == 1]
    prop.constant(node, grown, "an expand to a literal size")


def repeat(prop: Propagation, node) -> None:
    x = prop.dims(node.args[0])
    out = prop.dims(node)
    for a, o in zip(reversed(x), reversed(out)):
        n = prop.size(o)
        prop.tie_indices(a, np.arange(n) % prop.size(a), o, np.arange(n))


def slice_(prop: Propagation, node) -> None:
    x = prop.dims(node.args[0])
    out = prop.dims(node)
    d = _norm_dim(_arg(node, 1, "dim", 0), len(x))
    start = _arg(node, 2, "start", 0) or 0
    step = _arg(node, 4, "step", 1) or 1
    size = prop.size(x[d])
    start = min(max(start + size if start < 0 else start, 0), size)
    _tie_piece(prop, x, out, d, start, step)
    if step != 1:
        prop.freeze([x[d], out[d]], node, f"a slice with step {step}")
    elif prop.size(out[d]) != size:
        prop.constant(node, [x[d], out[d]], "slice bounds")


def select(prop: Propagation, node) -> None:
    x = prop.dims(node.args[0])
    d = _norm_dim(node.args[1], len(x))
    prop.freeze([x[d]], node, "indexing with a constant index (select)")
    for a, o in zip(x[:d] + x[d + 1:], prop.dims(node)):
        prop.tie(a, o)


def _tie_piece(prop, whole: list, piece: list, d: int, offset: int, step: int = 1) -> int:
    """``piece`` is indices offset, offset + step, ... of ``whole`` along ``d``
    and equal to it elsewhere; returns the offset after it."""
    n = prop.size(piece[d])
    for i, (w, p) in enumerate(zip(whole, piece)):
        if i == d:
            prop.tie_indices(p, np.arange(n), w, offset + step * np.arange(n))
        else:
            prop.tie(w, p)
    return offset + step * n


def cat(prop: Propagation, node) -> None:
    out = prop.dims(node)
    d = _norm_dim(_arg(node, 1, "dim", 0), len(out))
    offset = 0
    for t in node.args[0]:
        x = prop.dims(t)
        if len(x) == len(out):  # legacy empty tensors are skipped by torch.cat
            offset = _tie_piece(prop, out, x, d, offset)


def stack(prop: Propagation, node) -> None:
    out = prop.dims(node)
    d = _norm_dim(_arg(node, 1, "dim", 0), len(out))
    rest = out[:d] + out[d + 1:]
    for t in node.args[0]:
        for a, o in zip(prop.dims(t), rest):
            prop.tie(a, o)


def split(prop: Propagation, node) -> None:
    """split / split_with_sizes / chunk / tensor_split: output slot k is an
    index range of the input."""
    x = prop.dims(node.args[0])
    name = _op_name(node.target)
    d = _norm_dim(_arg(node, 2, "dim", 0), len(x))
    n = len(_tensors(node.meta["val"]))
    offset = 0
    for slot in range(n):
        offset = _tie_piece(prop, x, prop.dims(node, slot), d, offset)
    if n < 2:
        return
    pieces = [prop.dims(node, slot)[d] for slot in range(n)]
    if name == "aten.chunk" and len({prop.size(p) for p in pieces}) == 1:
        # chunk derives its bounds from the size: it stays exact when every piece
        # loses the same indices, so index i of every piece is one channel
        for p in pieces[1:]:
            prop.tie(pieces[0], p)
    elif name == "aten.chunk":
        prop.freeze([x[d]], node, "chunk into unequal pieces")
    else:
        prop.constant(node, [x[d]] + pieces, f"{name.split('.')[-1]} with literal sizes")


def unbind(prop: Propagation, node) -> None:
    """unbind drops ``dim``: like select, one slot per index."""
    x = prop.dims(node.args[0])
    d = _norm_dim(_arg(node, 1, "dim", 0), len(x))
    prop.freeze([x[d]], node, "unbind (indexing every index of this dim)")
    for slot in range(len(_tensors(node.meta["val"]))):
        for a, o in zip(x[:d] + x[d + 1:], prop.dims(node, slot)):
            prop.tie(a, o)


def getitem(prop: Propagation, node) -> None:
    src, slot = node.args
    for a, o in zip(prop.dims(src, slot), prop.dims(node)):
        prop.tie(a, o)


def linear(prop: Propagation, node) -> None:
    """y[..., out] = x[..., in] @ W[out, in].T + b[out]."""
    x, w = prop.dims(node.args[0]), prop.dims(node.args[1])
    b = prop.dims(_arg(node, 2, "bias"))
    out = prop.dims(node)
    for a, o in zip(x[:-1], out[:-1]):
        prop.tie(a, o)
    prop.tie(x[-1], w[1])
    prop.tie(w[0], out[-1])
    if b:
        prop.tie(b[0], out[-1])


def _tie_matmul(prop, a: list, b: list, out: list) -> None:
    prop.tie(a[-1], b[-2])
    prop.tie(a[-2], out[-2])
    prop.tie(b[-1], out[-1])
    prop.tie_aligned(a[:-2], out[:-2])
    prop.tie_aligned(b[:-2], out[:-2])


def matmul(prop: Propagation, node) -> None:
    """mm / bmm / matmul: a[..., m, k] @ b[..., k, n] -> out[..., m, n]."""
    a, b = prop.dims(node.args[0]), prop.dims(node.args[1])
    if len(a) == 1 or len(b) == 1:
        raise UnsupportedOpError(f"{_op_name(node.target)} with a 1-D operand", module_path(node))
    _tie_matmul(prop, a, b, prop.dims(node))


def addmm(prop: Propagation, node) -> None:
    """addmm(bias, a, b) and baddbmm: bias broadcast onto a @ b."""
    out = prop.dims(node)
    _tie_matmul(prop, prop.dims(node.args[1]), prop.dims(node.args[2]), out)
    prop.tie_aligned(prop.dims(node.args[0]), out)


def embedding(prop: Propagation, node) -> None:
    """out[..., h] = W[idx[...], h]: the vocabulary dim is gathered, hence frozen."""
    w, idx = prop.dims(node.args[0]), prop.dims(node.args[1])
    out = prop.dims(node)
    prop.freeze([w[0]], node, "the vocabulary dim of an embedding is gathered")
    for a, o in zip(idx, out[:-1]):
        prop.tie(a, o)
    prop.tie(w[1], out[-1])


def layer_norm(prop: Propagation, node) -> None:
    """layer_norm(x, shape, weight, bias) / rms_norm(x, shape, weight): pointwise
    over x; weight and bias tie to the normalized dims, which are recorded as
    reduced (removing them changes the statistics)."""
    x = prop.dims(node.args[0])
    out = prop.dims(node, 0)
    for a, o in zip(x, out):
        prop.tie(a, o)
    normalized = x[len(x) - len(node.args[1]):]
    for k in normalized:
        prop.reductions.append((node, k, _op_name(node.target)))
    prop.constant(node, normalized, "normalized_shape of a norm")
    affine = ("weight", "bias") if _op_name(node.target) == "aten.layer_norm" else ("weight",)
    for i, name in enumerate(affine, start=2):
        prop.tie_aligned(prop.dims(_arg(node, i, name)), out)


def group_norm(prop: Propagation, node) -> None:
    """group_norm(x[N, C, *], num_groups, weight[C], bias[C]): removing channels
    regroups them, so the channel dim is frozen."""
    x = prop.dims(node.args[0])
    out = prop.dims(node, 0)
    for a, o in zip(x, out):
        prop.tie(a, o)
    for i in (2, 3):
        w = prop.dims(_arg(node, i, None))
        if w:
            prop.tie(w[0], out[1])
    prop.freeze([x[1]], node, "group_norm groups channels by a constant num_groups")


@dataclass(frozen=True)
class AttentionSite:
    """One attention in the program: ``node`` is sdpa, or the probabilities @ V
    matmul of eager attention; ``query`` is [B, Hq, Sq, D] and ``key`` the key
    [B, Hk', Sk, D] it is scored against (after any GQA repeat)."""

    node: torch.fx.Node
    query: torch.fx.Node
    key: torch.fx.Node

    @property
    def module(self) -> str:
        return module_path(self.node)


_TRANSPARENT = {"aten.to", "aten._to_copy", "aten.dropout", "aten.type_as", "aten.contiguous", "aten.clone",
                "aten.alias", "aten.native_dropout", "aten.mul", "aten.div", "aten.add", "aten.sub",
                "aten.masked_fill", "aten.where"}


def _eager_attention(prop: Propagation, node) -> None:
    """softmax(Q @ K^T ...) @ V over a heads dim is attention: its heads dim
    becomes a head group like sdpa's (GQA repeats are reshapes the rules follow)."""
    shape = node.meta["val"].shape
    x = node.args[0]
    while isinstance(x, torch.fx.Node) and x.op == "call_function" and _op_name(x.target) in _TRANSPARENT:
        x = next((a for a in x.args if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor)
                  and a.meta["val"].shape == shape and a.meta["val"].is_floating_point()), None)
    if not isinstance(x, torch.fx.Node) or x.op != "call_function" or \
            _op_name(x.target) not in ("aten.matmul", "aten.bmm"):
        return
    q, kt = x.args[:2]
    frontier, pv = [node], None
    while frontier and pv is None:
        n = frontier.pop()
        for u in n.users:
            name = _op_name(u.target)
            if name in ("aten.matmul", "aten.bmm") and u.args[0] is n:
                pv = u
            elif name in _TRANSPARENT:
                frontier.append(u)
    if pv is None or q.meta["val"].dim() != 4:
        return
    k = kt
    if _op_name(kt.target) in ("aten.transpose", "aten.permute"):
        k = kt.args[0]
    site = AttentionSite(pv, q, k)
    prop.head_dims.append((prop.dims(q)[-3], site))


def sdpa(prop: Propagation, node) -> None:
    """q[B,Hq,Sq,D] k[B,Hk,Sk,D] v[B,Hk,Sk,Dv] -> out[B,Hq,Sq,Dv].

    With GQA (Hq = g * Hk) query head ``h`` uses KV head ``h // g``.
    """
    q, k, v = (prop.dims(a) for a in node.args[:3])
    out = prop.dims(node)
    prop.tie_aligned(q[:-3], out[:-3])
    prop.tie_aligned(k[:-3], out[:-3])
    prop.tie_aligned(v[:-3], out[:-3])
    hq, hk = prop.size(q[-3]), prop.size(k[-3])
    prop.tie(q[-3], out[-3])
    if hq == hk:
        prop.tie(q[-3], k[-3])
        prop.tie(k[-3], v[-3])
    else:
        g = hq // hk
        prop.tie_indices(q[-3], np.arange(hq), k[-3], np.arange(hq) // g)
        prop.tie(k[-3], v[-3])
    prop.head_dims.append((q[-3], AttentionSite(node, node.args[0], node.args[1])))
    prop.tie(q[-2], out[-2])
    prop.tie(k[-2], v[-2])
    prop.tie(q[-1], k[-1])
    prop.tie(v[-1], out[-1])
    scores = [out[0], q[-3], q[-2], k[-2]]  # the mask broadcasts onto [B, Hq, Sq, Sk]
    prop.tie_aligned(prop.dims(_arg(node, 3, "attn_mask")), scores)


_TABLE = {
    no_op: "_assert_tensor_metadata _assert_scalar _assert_async sym_size sym_numel "
           "sym_stride sym_constrain_range_for_size _functional_assert_async",
    pointwise: "add sub mul div pow neg rsqrt sqrt exp log tanh sigmoid silu gelu relu "
               "cos sin erf abs where masked_fill clamp clamp_min clamp_max minimum maximum "
               "eq ne lt le gt ge __and__ __or__ __xor__ bitwise_and bitwise_or bitwise_not "
               "logical_and logical_or logical_not "
               "reciprocal square sign floor ceil round rsub fmod remainder hardtanh leaky_relu "
               "elu mish softplus lerp addcmul addcdiv relu6 hardswish hardsigmoid",
    unary: "to _to_copy alias clone contiguous detach dropout type_as lift_fresh_copy "
           "_to_dim_order_copy native_dropout feature_dropout alpha_dropout",
    scan: "cumsum cumprod diff",
    softmax: "softmax _softmax log_softmax _log_softmax _safe_softmax",
    like: "ones_like zeros_like full_like empty_like",
    constant: "ones zeros full empty new_ones new_zeros new_full new_empty scalar_tensor tensor",
    index_constant: "arange linspace triu tril",
    gather: "index gather index_select take masked_select nonzero scatter index_put "
            "embedding_bag",
    reduction: "mean sum amax amin var std norm linalg_vector_norm prod logsumexp",
    reshape: "view reshape _unsafe_view view_copy squeeze unsqueeze flatten unflatten",
    permute: "permute transpose t swapaxes",
    expand: "expand expand_as",
    repeat: "repeat",
    slice_: "slice",
    select: "select",
    cat: "cat concat concatenate",
    stack: "stack",
    split: "split split_with_sizes chunk tensor_split",
    unbind: "unbind",
    linear: "linear",
    matmul: "mm bmm matmul",
    addmm: "addmm baddbmm",
    embedding: "embedding",
    layer_norm: "layer_norm rms_norm",
    group_norm: "group_norm",
    sdpa: "scaled_dot_product_attention",
}
for _fn, _names in _TABLE.items():
    for _n in _names.split():
        RULES[f"aten.{_n}"] = _fn
RULES["getitem"] = getitem
