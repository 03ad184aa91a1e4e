"""One self-contained HTML report of a knowledge-distribution analysis."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .diagram import INSTALL_HINT, Diagram, group_diagram, model_overview
from .plots import knowledge_heatmap, saliency_histogram, saliency_profile


def _table(rows: list, header: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _diagram_html(d: Diagram) -> str:
    svg = d.svg()
    if svg is None:
        return (f"<p>no graphviz renderer ({INSTALL_HINT}): DOT source of {html.escape(d.name)}</p>"
                f"<pre>{html.escape(d.source)}</pre>")
    return svg[svg.index("<svg"):]


def analysis_report(model_name: str, graph, groups, saliency, km, params: dict, timings: dict) -> str:
    """The report as one HTML string: knowledge heatmap, saliency profile and
    histograms, the whole-model overview and one removal-group diagram per
    kind, the group table, the data split and timings. plotly.js is inlined
    once, so the file opens offline; every figure's data is in the page."""
    figs = [knowledge_heatmap(km), saliency_profile(saliency, groups)]
    worst = max(km.clusters, key=lambda c: c.loss_delta)
    for gid in list(worst.removed)[:1]:
        figs.append(saliency_histogram(saliency, gid))
    plots = [f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, f in enumerate(figs)]
    diagrams = [model_overview(groups, km)]
    seen = set()
    for g in groups:
        if g.kind not in seen:
            seen.add(g.kind)
            diagrams.append(group_diagram(graph, g))
    fixed = [c for c in km.clusters if c.unprunable]
    summary = [
        ("model", model_name), ("saliency", km.saliency), ("fraction masked per cluster", km.fraction),
        ("base held-out loss (nats/token)", f"{km.base_loss:.4f}"),
        ("clusters", len(km.clusters)), ("unprunable", ", ".join(c.id for c in fixed) or "none"),
        ("non-uniformity: largest / smallest positive cluster Δloss (ratio)", f"{km.non_uniformity:.1f}"),
        ("clusters whose masking did not raise the loss", km.n_harmless),
        ("calibration tokens used by the saliency", saliency.n_calib_tokens or "none (data-free criterion)"),
    ] + [(k, v) for k, v in params.items()]
    group_rows = [(g.id, g.kind, g.layer, g.n_channels, len(g.slices)) for g in groups]
    split_rows = [(name, d["source"], d["n_tokens"], len(d["eval_blocks"]), len(d["calib_blocks"]), d["sha256"][:12])
                  for name, d in km.split.get("domains", {}).items()]
    data = {"knowledge": json.loads(km.to_json()), "timings": timings}
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shear-graph analysis: {html.escape(model_name)}</title>
<style>body{{font-family:Helvetica,Arial,sans-serif;margin:24px;max-width:1200px}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
.diagram svg{{max-width:100%;height:auto}} details{{margin:8px 0}}</style></head><body>
<h1>Knowledge distribution: {html.escape(model_name)}</h1>
{_table(summary, ["", ""])}
<h2>Heatmap</h2>{plots[0]}
<h2>Saliency</h2>{''.join(plots[1:])}
<h2>Model overview</h2><div class="diagram">{_diagram_html(diagrams[0])}</div>
<h2>Removal groups</h2>
{''.join(f'<h3>{html.escape(d.name)}</h3><div class="diagram">{_diagram_html(d)}</div>' for d in diagrams[1:])}
<details><summary>All {len(groups)} groups</summary>{_table(group_rows, ["group", "kind", "layer", "channels", "slices"])}</details>
<h2>Data split</h2>
<p>Blocks of {km.split.get("block_len")} tokens, seed {km.split.get("seed")}; evaluation and calibration blocks never overlap.</p>
{_table(split_rows, ["domain", "source", "tokens", "eval blocks", "calib blocks", "sha256"])}
<h2>Timings (s)</h2>{_table(list(timings.items()), ["step", "seconds"])}
<script type="application/json" id="shear-graph-data">{html.escape(json.dumps(data))}</script>
</body></html>"""


def write_report(path, **kwargs) -> Path:
    from shear_graph.plan import atomic_write_text

    path = Path(path)
    atomic_write_text(path, analysis_report(**kwargs))
    return path
