"""Queries over a traced graph and its groups: pure functions, networkx style."""
from __future__ import annotations

import networkx as nx

from .trace import ShearGraph


def module_nodes(graph: ShearGraph, module: str) -> list:
    """FX node names emitted by ``module`` or its submodules.

    Parameters
    ----------
    graph : ShearGraph
    module : str
        A module path such as ``"model.layers.0.mlp"``.

    Returns
    -------
    list of str
        In program order.

    Raises
    ------
    KeyError
        If no node belongs to ``module``.

    Examples
    --------
    >>> import shear_graph as sg
    >>> from transformers import LlamaConfig
    >>> g = sg.trace(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                          num_attention_heads=4, vocab_size=64))
    >>> [g.nx.nodes[n]["op"] for n in module_nodes(g, "model.layers.0.mlp.down_proj")]
    ['aten.linear']
    """
    nodes = [n for n, d in graph.nx.nodes(data=True) if d["module"] == module or d["module"].startswith(module + ".")]
    if not nodes:
        raise KeyError(f"no node of the graph belongs to module '{module}'")
    return nodes


def module_neighbors(graph: ShearGraph, module: str) -> tuple:
    """Modules that feed ``module`` and modules it feeds: ``(inputs, outputs)``,
    two sorted lists of module paths ('' is the top level).

    Examples
    --------
    >>> import shear_graph as sg
    >>> from transformers import LlamaConfig
    >>> g = sg.trace(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
    ...                          num_attention_heads=4, vocab_size=64))
    >>> module_neighbors(g, "model.layers.0.mlp.down_proj")[1]
    ['model.layers.0']
    """
    own = set(module_nodes(graph, module))
    g = graph.nx
    inside = lambda m: m == module or m.startswith(module + ".")
    ins = {g.nodes[p]["module"] for n in own for p in g.predecessors(n) if p not in own}
    outs = {g.nodes[s]["module"] for n in own for s in g.successors(n) if s not in own}
    return sorted(m for m in ins if not inside(m)), sorted(m for m in outs if not inside(m))


def groups_of_param(groups: list, param: str) -> list:
    """The removal groups that slice ``param``.

    Examples
    --------
    >>> import shear_graph as sg
    >>> from transformers import LlamaConfig
    >>> groups = sg.find_groups(sg.trace(LlamaConfig(hidden_size=32, intermediate_size=48,
    ...     num_hidden_layers=1, num_attention_heads=4, vocab_size=64)))
    >>> [g.id for g in groups_of_param(groups, "model.layers.0.mlp.up_proj.weight")]
    ['hidden', 'ffn.L0']
    """
    return [g for g in groups if any(s.param == param for s in g.slices)]


def path_between(graph: ShearGraph, source: str, target: str) -> list:
    """Shortest tensor-flow path between two FX nodes (names), via networkx.

    Raises
    ------
    networkx.NetworkXNoPath
        If ``target`` does not depend on ``source``.
    """
    return nx.shortest_path(graph.nx, source, target)


__all__ = ["module_nodes", "module_neighbors", "groups_of_param", "path_between"]
