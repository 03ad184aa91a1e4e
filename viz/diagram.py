"""graphviz views: one removal group inside its layer, and the whole model by layer."""
from __future__ import annotations

import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import graphviz

_LAYER_PREFIX = re.compile(r"^(.*?\.\d+)(?:\.|$)")
HIGHLIGHT = "#ffcc66"
INSTALL_HINT = "pip install pygraphviz, whose wheels carry graphviz; or apt install graphviz / brew install graphviz"


def render_svg(source: str) -> str | None:
    """Lay out DOT source with graphviz's ``dot`` and return the SVG.

    Graphviz's ``dot`` binary is used when it is on the PATH; otherwise
    pygraphviz, whose wheels (Linux x86_64/aarch64 with glibc 2.28+, macOS
    arm64, Windows x64) carry the graphviz libraries, so ``pip install`` alone
    draws diagrams. Both give the same nodes, edges and labels; the layout may
    differ by a few points between graphviz versions.

    Parameters
    ----------
    source : str
        A graph in the DOT language.

    Returns
    -------
    str or None
        The SVG document, or None when neither renderer is installed.
    """
    try:
        return graphviz.Source(source).pipe(format="svg").decode()
    except graphviz.ExecutableNotFound:
        pass
    try:
        import pygraphviz
    except ImportError:
        return None
    return pygraphviz.AGraph(string=source).draw(format="svg", prog="dot").decode()


def can_render() -> bool:
    """True when :func:`render_svg` has a renderer (the ``dot`` binary or pygraphviz)."""
    return render_svg("digraph{}") is not None


@dataclass
class Diagram:
    """DOT source that renders inline in Jupyter (SVG) and saves to files."""

    source: str
    name: str

    def svg(self) -> str | None:
        """The rendered SVG, or None when no graphviz renderer is installed
        (see :func:`render_svg`)."""
        return render_svg(self.source)

    def _repr_svg_(self):
        return self.svg()

    def _repr_html_(self):
        if self.svg() is not None:
            return None
        return (f"<p>no graphviz renderer ({INSTALL_HINT}); the DOT source:</p>"
                f"<pre>{html.escape(self.source)}</pre>")

    def save(self, path) -> Path:
        """Write ``<path>.dot`` always and ``<path>.svg`` when ``dot`` exists;
        returns the SVG path, or the DOT path with a message on stderr."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        dot_path = path.with_suffix(".dot")
        dot_path.write_text(self.source)
        svg = self.svg()
        if svg is None:
            print(f"graphviz 'dot' not found ({INSTALL_HINT}); DOT source saved to {dot_path}", file=sys.stderr)
            return dot_path
        svg_path = path.with_suffix(".svg")
        svg_path.write_text(svg)
        return svg_path


def _quote(s: str) -> str:
    return '"' + s.replace('"', r"\"") + '"'


def _ranges(indices) -> str:
    idx = sorted(int(i) for i in indices)
    parts, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def _slice_label(s) -> str:
    side = "rows" if s.dim == 0 else "cols" if s.dim == 1 else f"dim {s.dim}"
    shown = "; ".join(_ranges(s.indices[c]) for c in range(min(2, len(s.indices))))
    more = " …" if len(s.indices) > 2 else ""
    return f"{side}: {len(s.indices)} ch × {s.width}  [{shown}{more}]"


def module_graph(graph):
    """FX graph collapsed to leaf modules: ``{module: set(successor modules)}``."""
    g = graph.nx
    edges: dict = {}
    for u, v in g.edges:
        mu, mv = g.nodes[u]["module"], g.nodes[v]["module"]
        if mu and mv and mu != mv:
            edges.setdefault(mu, set()).add(mv)
    return edges


def group_diagram(graph, group, layer: int | None = None) -> Diagram:
    """One layer's modules with the modules ``group`` slices highlighted and
    each slice labelled (rows or columns, channels × width, first index ranges);
    LoRA A/B modules appear as their own nodes.

    Parameters
    ----------
    graph : shear_graph.ShearGraph
    group : shear_graph.RemovalGroup
    layer : int, optional
        The layer to draw for groups spanning layers (hidden); default 0.

    Returns
    -------
    Diagram
    """
    layer = group.layer if group.layer is not None else (layer or 0)
    owners: dict = {}
    for s in group.slices:
        owners.setdefault(s.param.rsplit(".", 1)[0], []).append(s)
    prefix = None
    for m in sorted(owners):
        hit = _LAYER_PREFIX.match(m)
        if hit and hit.group(1).rsplit(".", 1)[1] == str(layer):
            prefix = hit.group(1)
            break
    if prefix is None:
        raise ValueError(f"group {group.id} touches no module of layer {layer}")
    inside = lambda m: m == prefix or m.startswith(prefix + ".")
    edges = module_graph(graph)
    nodes = {m for m in edges if inside(m)} | {n for ns in edges.values() for n in ns if inside(n)}
    lines = [f"digraph {_quote(group.id)} {{", '  rankdir=TB; node [shape=box, style="rounded,filled", '
             'fillcolor=white, fontname=Helvetica, fontsize=10]; edge [color="#888888"];',
             f'  label={_quote(f"{group.id}: {group.kind}, {group.n_channels} channels (layer {layer})")}; '
             'labelloc=t; fontname=Helvetica;',
             '  "input" [shape=plaintext, style="", label="from previous layer"];',
             '  "output" [shape=plaintext, style="", label="to next layer"];']
    for m in sorted(nodes):
        short = m[len(prefix) + 1:] or f"layer {layer} (residual adds)"
        if m in owners:
            label = short + "\\n" + "\\n".join(_slice_label(s) for s in owners[m])
            lines.append(f"  {_quote(m)} [label={_quote(label)}, fillcolor=\"{HIGHLIGHT}\", penwidth=2, "
                         'class="highlight"];')
        else:
            lines.append(f"  {_quote(m)} [label={_quote(short)}];")
    for u, vs in sorted(edges.items()):
        for v in sorted(vs):
            if inside(u) and inside(v):
                lines.append(f"  {_quote(u)} -> {_quote(v)};")
            elif inside(v) and not inside(u):
                lines.append(f"  \"input\" -> {_quote(v)};")
            elif inside(u) and not inside(v):
                lines.append(f"  {_quote(u)} -> \"output\";")
    lines.append("}")
    return Diagram("\n".join(dict.fromkeys(lines)), f"group_{group.id}")


def model_overview(groups, knowledge=None, per_row: int = 10) -> Diagram:
    """The whole model collapsed by layer, ``per_row`` layers a row, so a
    30-layer model fits one screen. Each layer shows its head groups and FFN
    width; with a knowledge map, cells are shaded by loss delta and unprunable
    layers outlined red."""
    layers = sorted({g.layer for g in groups if g.layer is not None})
    by_layer: dict = {}
    for g in groups:
        if g.layer is not None:
            by_layer.setdefault(g.layer, []).append(g)
    deltas = {c.id: c for c in (knowledge.clusters if knowledge else [])}
    top = max((c.loss_delta for c in deltas.values()), default=0) or 1.0
    hidden = [g for g in groups if g.kind == "hidden"]
    lines = ["digraph overview {", '  rankdir=TB; nodesep=0.15; ranksep=0.3; '
             'node [shape=box, style="rounded,filled", fillcolor=white, fontname=Helvetica, fontsize=9];',
             f'  label="{len(layers)} layers' + (f', hidden size {hidden[0].n_channels}' if hidden else "") +
             '"; labelloc=t; fontname=Helvetica;', '  "embed" [label="embeddings"];']
    for i in layers:
        parts, fill, red = [f"L{i}"], "white", False
        for g in sorted(by_layer[i], key=lambda g: g.kind):
            parts.append(f"{g.kind.replace('attention_head', 'heads')} {g.n_channels}")
            c = deltas.get(f"{g.kind}.L{i}")
            if c is not None:
                red = red or c.unprunable
                level = int(255 - 155 * max(c.loss_delta, 0) / top)
                fill = f"#ff{level:02x}{level:02x}" if c.loss_delta >= 0 else fill
        extra = ", color=red, penwidth=2" if red else ""
        label = "\\n".join(parts)
        lines.append(f'  "L{i}" [label="{label}", fillcolor="{fill}"{extra}];')
    for row in range(0, len(layers), per_row):
        lines.append("  { rank=same; " + " ".join(f'"L{i}";' for i in layers[row:row + per_row]) + " }")
    chain = ["embed"] + [f"L{i}" for i in layers] + ["head"]
    lines.append('  "head" [label="final norm + lm_head"];')
    lines += [f'  "{a}" -> "{b}";' for a, b in zip(chain, chain[1:])]
    lines.append("}")
    return Diagram("\n".join(lines), "overview")
