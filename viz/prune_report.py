"""One self-contained HTML report of a ``shear-graph prune`` run."""
from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go

from .plots import knowledge_heatmap, mixture_curves
from .report import _table

STAGE_LABELS = {
    "dense": "dense", "lhspg_pruned": "LoRAShear, after pruning", "lhspg_recovered": "LoRAShear, after recovery",
    "baseline_pruned": "baseline, after pruning", "baseline_recovered": "baseline, after recovery",
}


def _label(stage: str) -> str:
    if stage in STAGE_LABELS:
        return STAGE_LABELS[stage]
    for suffix, when in (("_pruned", "after pruning"), ("_recovered", "after recovery")):
        if stage.endswith(suffix):
            return f"{stage[:-len(suffix)]}, {when}"
    return stage


def _stage_rows(result) -> tuple:
    stages = result.stages
    dense = stages["dense"]
    domains = list(dense["perplexity"])
    tasks = list(dense.get("zero_shot", {}))
    wikitext = any("wikitext2" in row for row in stages.values())
    header = ["model", "params (M)", *[f"ppl {d}" for d in domains], *[f"ppl {d} / dense" for d in domains],
              *tasks, *(["zero-shot avg"] if tasks else []), *(["WikiText-2 ppl"] if wikitext else []),
              "tokens/s (1x512)"]
    rows = []
    for name, row in stages.items():
        zs = row.get("zero_shot", {})
        rows.append([
            _label(name), f"{row['params'] / 1e6:.2f}",
            *[f"{row['perplexity'][d]:.2f}" for d in domains],
            *[f"{row['perplexity'][d] / dense['perplexity'][d]:.2f}x" for d in domains],
            *[f"{zs[t]['value']:.3f}" if t in zs else "-" for t in tasks],
            *([f"{row['zero_shot_average']:.3f}" if "zero_shot_average" in row else "-"] if tasks else []),
            *([f"{row['wikitext2']['perplexity']:.2f}" if "wikitext2" in row else "-"] if wikitext else []),
            f"{row['tokens_per_s']:.0f}",
        ])
    return header, rows


def stage_table(result) -> go.Figure:
    """The report's model table (parameters, perplexity per domain, zero-shot
    scores, tokens/s per stage) as a plotly table that renders inline in Jupyter.

    Parameters
    ----------
    result : shear_graph.PruneResult
    """
    header, rows = _stage_rows(result)
    fig = go.Figure(go.Table(header=dict(values=header, align="left"),
                             cells=dict(values=[list(col) for col in zip(*rows)], align="left")))
    fig.update_layout(height=120 + 50 * len(rows), margin=dict(l=10, r=10, t=10, b=10))
    return fig


def lhspg_curve(lhspg: dict) -> go.Figure:
    """LHSPG training loss per step and the number of zero channels, periods shaded."""
    hist = lhspg.get("history", [])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[h["step"] for h in hist], y=[h["loss"] for h in hist], name="loss (nats/token)"))
    fig.add_trace(go.Scatter(x=[h["step"] for h in hist], y=[h["zero_channels"] for h in hist], name="zero channels",
                             yaxis="y2"))
    for p in lhspg.get("periods", []):
        fig.add_vrect(x0=p["first_step"] - 0.5, x1=p["last_step"] + 0.5, opacity=0.08, line_width=0,
                      fillcolor="red")
    fig.update_layout(title="LHSPG: training loss and channels driven to zero (shaded: pruning periods)",
                      xaxis_title="step", yaxis_title="loss", height=380,
                      yaxis2=dict(title="zero channels", overlaying="y", side="right"))
    return fig


def _zero_shot_note(settings: dict) -> str:
    if not [t for t in settings.get("eval_tasks", ()) if t != "wikitext2"]:
        return "; no zero-shot tasks in this run"
    return (f"; zero-shot scores on the first {settings['eval_limit']} items of each task "
            "(lm-evaluation-harness conventions)")


def _flat_note(names: list) -> str:
    if not names:
        return ""
    return (f" Here the gap was 0 on every domain at every measurement for {', '.join(names)}: LHSPG trains on "
            "these same domains while it prunes, so at small ratios its pruned model starts recovery at or below "
            "the dense model's probe loss, and recovery trains on a uniform mixture.")


def prune_report(result) -> str:
    """The report as one HTML string: the stage table (parameters, perplexity per
    domain, zero-shot scores, WikiText-2, tokens/s), the knowledge heatmap,
    the LHSPG curve, the recovery mixture weights, settings, timings. plotly.js
    is inlined once; the run's ``results.json`` is embedded."""
    from shear_graph.knowledge import KnowledgeMap

    km = KnowledgeMap.from_json(json.dumps(result.knowledge))
    figs = [knowledge_heatmap(km), lhspg_curve(result.lhspg)]
    names, flat = [], []
    for name, rec in result.recovery.items():
        if rec.get("weights_history"):
            fig = mixture_curves(rec["weights_history"])
            fig.update_layout(title=f"recovery data mixture: {name}")
            figs.append(fig)
            names.append(name)
            if all(max(e["gaps"].values(), default=0) <= 0 for e in rec["weights_history"]):
                flat.append(name)
    plots = [f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, f in enumerate(figs)]
    header, rows = _stage_rows(result)
    wikitext_note = f"; WikiText-2 at {result.settings['seq_len']} tokens" if "WikiText-2 ppl" in header else ""
    dense, final = result.stages["dense"], result.stages.get("lhspg_recovered", {})
    removed = 1 - final.get("params", dense["params"]) / dense["params"]
    summary = [("parameters removed", f"{removed:.1%} ({dense['params'] / 1e6:.1f} M -> "
                                      f"{final.get('params', 0) / 1e6:.1f} M)"),
               ("unprunable clusters", ", ".join(c.id for c in km.clusters if c.unprunable) or "none"),
               ("total time", f"{sum(result.seconds.values()) / 60:.1f} min")]
    split_rows = [(n, d["source"], d["n_tokens"], len(d["eval_blocks"]), len(d["calib_blocks"]),
                   d.get("use", "training + probe"))
                  for n, d in result.split.get("domains", {}).items()]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shear-graph prune: {html.escape(str(result.out))}</title>
<style>body{{font-family:Helvetica,Arial,sans-serif;margin:24px;max-width:1300px}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style>
</head><body>
<h1>LoRAShear pruning report</h1>
{_table(summary, ["", ""])}
{"".join(f'<p style="color:#a15c00"><b>note:</b> {html.escape(n)}</p>' for n in result.notes)}
<h2>Models</h2>
<p>Perplexity on held-out blocks of {result.settings["block_len"]} tokens (never trained on or used for a
decision){_zero_shot_note(result.settings)}{wikitext_note}.</p>
{_table(rows, header)}
<h2>Knowledge distribution</h2>{plots[0]}
<h2>LHSPG</h2>{plots[1]}
<h2>Recovery</h2>
<p>The mixture is the share of training batches drawn from each domain. Every {result.settings["update_every"]}
steps it moves toward the domains whose probe loss is furthest above the dense model's (the gap; Hedge-style
multiplicative update). A domain whose gap is 0 (the pruned model is already at or below the dense model's
loss there) gets no extra weight, so when every gap is 0 the mixture stays uniform.{_flat_note(flat)}</p>
{''.join(plots[2:]) or '<p>no recovery run</p>'}
<h2>Data</h2>{_table(split_rows, ["domain", "source", "tokens", "eval blocks", "calib blocks", "use"])}
<h2>Settings</h2>{_table(list(result.settings.items()), ["setting", "value"])}
<h2>Timings (s)</h2>{_table(list(result.seconds.items()), ["stage", "seconds"])}
<script type="application/json" id="shear-graph-data">{html.escape(result.to_json())}</script>
</body></html>"""


def write_prune_report(result, path=None) -> Path:
    """Write :func:`prune_report` to ``path`` (default ``result.out / "report.html"``), atomically."""
    from shear_graph.plan import atomic_write_text

    path = Path(path) if path is not None else Path(result.out) / "report.html"
    atomic_write_text(path, prune_report(result))
    return path
