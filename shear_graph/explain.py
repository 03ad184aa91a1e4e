"""Why a parameter's dims are (not) in removal groups: the op and module that froze them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ShearGraphError
from .groups import _find
from .trace import ShearGraph


@dataclass
class DimExplanation:
    """One dim of a parameter.

    Attributes
    ----------
    dim, size : int
        The dim and its size.
    groups : list of str
        Ids of the removal groups that slice this dim.
    removable : int
        Indices of the dim in some group.
    frozen : list of dict
        One entry per reason, ``{"indices", "op", "module", "node", "why"}``:
        how many indices of the dim it stopped, and the op that stopped them.
    """

    dim: int
    size: int
    groups: list = field(default_factory=list)
    removable: int = 0
    frozen: list = field(default_factory=list)


@dataclass
class Explanation:
    """The answer of :func:`explain` for one parameter; ``str()`` gives the text."""

    param: str
    dims: list

    def __str__(self) -> str:
        lines = [f"{self.param}:"]
        for d in self.dims:
            head = f"  dim {d.dim} (size {d.size}): {d.removable} removable"
            lines.append(head + (f" in {', '.join(d.groups)}" if d.groups else ""))
            for f in d.frozen:
                where = f"{f['op']} in module '{f['module'] or '<top level>'}'" if f["op"] else "-"
                lines.append(f"    {f['indices']} frozen by {where}: {f['why']}")
        return "\n".join(lines)


def explain(graph: ShearGraph, param: str) -> Explanation:
    """Say, for each dim of ``param``, which removal groups slice it and which
    op and module froze the rest (so "why are there no head groups?" has an answer).

    Parameters
    ----------
    graph : ShearGraph
        From :func:`shear_graph.trace`.
    param : str
        A parameter name as in ``model.named_parameters()``.

    Returns
    -------
    Explanation
        One :class:`DimExplanation` per dim; ``print()`` it for a report.

    Raises
    ------
    ShearGraphError
        If ``param`` is not a parameter of the traced model.

    Examples
    --------
    >>> import shear_graph as sg
    >>> from transformers import LlamaConfig
    >>> g = sg.trace(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                          num_attention_heads=4, vocab_size=64))
    >>> e = sg.explain(g, "model.embed_tokens.weight")
    >>> e.dims[0].frozen[0]["why"]
    'the vocabulary dim of an embedding is gathered'
    """
    if not isinstance(graph, ShearGraph):
        raise ShearGraphError(f"explain takes the ShearGraph from sg.trace(model), got {type(graph).__name__}")
    nodes = {n.name: n for n in graph.graph.nodes if n.op == "placeholder"}
    names = set(graph.aliases.get(param, ())) | {param}
    candidates = [ph for ph, name in graph.param_names.items() if name in names]
    if not candidates:
        near = sorted(graph.param_names.values(), key=lambda n: -len(set(n.split(".")) & set(param.split("."))))[:3]
        raise ShearGraphError(f"'{param}' is not a parameter of the traced model; did you mean one of {near}?")
    ph = next((c for c in candidates if nodes[c].users), candidates[0])
    groups, prop, comps = _find(graph)
    node = nodes[ph]
    out = []
    for d in range(node.meta["val"].dim()):
        key = (ph, 0, d)
        labels = comps.of(key)
        e = DimExplanation(d, len(labels))
        e.groups = [g.id for g in groups if any(s.param in names and s.dim == d for s in g.slices)]
        e.removable = int(sum(next(s for s in g.slices if s.param in names and s.dim == d).indices.size for g in groups if g.id in e.groups))
        frozen = comps.frozen[labels]
        reasons: dict = {}
        comps_, counts = np.unique(labels[frozen], return_counts=True)
        for c, n in zip(comps_, counts):
            r = comps.reason(int(c))
            reason = r[1] if r and r[1] else ("", "", "", "frozen")
            reasons[reason] = reasons.get(reason, 0) + int(n)
        for (name, module, op, why), n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            e.frozen.append({"indices": n, "op": op, "module": module, "node": name, "why": why})
        unused = len(labels) - e.removable - int(frozen.sum())
        if unused > 0 and not node.users:
            e.frozen.append({"indices": unused, "op": "", "module": "", "node": "", "why": "the parameter is unused"})
        out.append(e)
    return Explanation(param, out)
