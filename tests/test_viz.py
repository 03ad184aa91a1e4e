"""The views: diagrams name exactly their group's modules, reports carry the data,
and a missing graphviz binary degrades to DOT source."""
import json
import re
import sys

import graphviz
import pytest

import shear_graph as sg
from conftest import build, random_blocks
from viz.diagram import group_diagram, model_overview
from viz.plots import knowledge_heatmap, saliency_histogram, saliency_profile
from viz.report import analysis_report


@pytest.fixture(scope="module")
def analysed():
    model = build("llama", lora=True)
    graph = sg.trace(model)
    groups = sg.find_groups(graph)
    sal = sg.compute_saliency(model, groups, "magnitude")
    km = sg.analyze_knowledge(model, groups, sal, random_blocks(n=2, seed=4), unprunable_ratio=0.4)
    return graph, groups, sal, km


def highlighted(dot: str) -> set:
    return set(re.findall(r'^\s*"([^"]+)" \[[^\n]*class="highlight"', dot, flags=re.M))


@pytest.mark.parametrize("gid", ["attention_head.L1", "ffn.L0", "hidden"])
def test_diagram_highlights_exactly_the_group_modules(analysed, gid, svg_renderer):
    graph, groups, _, _ = analysed
    g = next(g for g in groups if g.id == gid)
    d = group_diagram(graph, g)
    layer = "layers.1." if g.layer == 1 else "layers.0."
    expected = {s.param.rsplit(".", 1)[0] for s in g.slices if layer in s.param}
    assert highlighted(d.source) == expected
    if gid == "ffn.L0":  # LoRA A/B are nodes of their own, B rows and A columns labelled
        assert any(m.endswith("up_proj.lora_B.default") for m in expected)
        assert any(m.endswith("down_proj.lora_A.default") for m in expected)
        assert "cols: 96 ch × 1" in d.source
    assert "<svg" in d._repr_svg_()


def test_overview_marks_unprunable_layers(analysed):
    _, groups, _, km = analysed
    d = model_overview(groups, km)
    fixed_layers = {c.layer for c in km.clusters if c.unprunable and c.layer is not None}
    for i in (0, 1):
        node = re.search(rf'"L{i}" \[[^\n]*', d.source).group(0)
        assert ("color=red" in node) == (i in fixed_layers)


def _no_dot_binary(*args, **kwargs):
    raise graphviz.ExecutableNotFound(("dot",))


def test_without_any_renderer_the_source_is_saved(analysed, tmp_path, monkeypatch, capsys):
    graph, groups, sal, km = analysed
    monkeypatch.setattr(graphviz.Source, "pipe", _no_dot_binary)
    monkeypatch.setitem(sys.modules, "pygraphviz", None)  # import raises ImportError
    d = group_diagram(graph, groups[0])
    saved = d.save(tmp_path / "g")
    assert saved.suffix == ".dot" and saved.read_text() == d.source
    assert "graphviz 'dot' not found (pip install pygraphviz" in capsys.readouterr().err
    assert d._repr_svg_() is None and "pip install pygraphviz" in d._repr_html_()
    knowledge_heatmap(km).to_html()  # plotly views unaffected
    page = analysis_report(model_name="tiny", graph=graph, groups=groups, saliency=sal, km=km, params={}, timings={})
    assert page.count("DOT source of") == 1 + len({g.kind for g in groups})  # overview + one per kind
    assert "digraph" in page and 'class="node"' not in page


def test_without_dot_binary_pygraphviz_draws_the_same_graph(analysed, monkeypatch):
    pytest.importorskip("pygraphviz")
    graph, groups, _, _ = analysed
    monkeypatch.setattr(graphviz.Source, "pipe", _no_dot_binary)
    d = group_diagram(graph, next(g for g in groups if g.id == "ffn.L0"))
    svg = d.svg()
    assert svg is not None
    titles = set(re.findall(r"<title>([^<]+)</title>", svg))
    assert highlighted(d.source) <= titles  # every highlighted module is a drawn node
    assert svg.count('<g id="node') == len(set(re.findall(r'^\s*"([^"]+)" \[', d.source, flags=re.M)))


def test_heatmap_cells_and_hover(analysed):
    _, _, _, km = analysed
    fig = knowledge_heatmap(km)
    heat = fig.data[0]
    cell = {(y, x): (heat.z[r][c], heat.text[r][c]) for r, y in enumerate(heat.y) for c, x in enumerate(heat.x)}
    for c in km.clusters:
        z, mark = cell[("all layers" if c.layer is None else f"L{c.layer}", c.kind)]
        assert z == pytest.approx(c.loss_delta) and (mark == "✕") == c.unprunable


def test_report_carries_the_figures_data(analysed, svg_renderer):
    graph, groups, sal, km = analysed
    page = analysis_report(model_name="tiny", graph=graph, groups=groups, saliency=sal, km=km, params={}, timings={"x": 1})
    data = json.loads(re.search(r'id="shear-graph-data">(.*?)</script>', page, flags=re.S).group(1)
                      .replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert sg.KnowledgeMap(**{**data["knowledge"], "clusters": [sg.Cluster(**c) for c in data["knowledge"]["clusters"]]}) == km
    assert page.count("<svg") >= 4  # overview + one diagram per group kind (plus plotly's icons)
    for c in km.clusters:
        assert json.dumps(c.loss_delta) in page  # inside the heatmap's own JSON


def test_saliency_views(analysed):
    _, groups, sal, _ = analysed
    prof = saliency_profile(sal, groups)
    assert {t.name for t in prof.data} == {"attention_head", "ffn"}
    assert list(saliency_histogram(sal, "ffn.L0").data[0].x) == list(sal.scores["ffn.L0"])
    with pytest.raises(KeyError):
        saliency_histogram(sal, "nope")
