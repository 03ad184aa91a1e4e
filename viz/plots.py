"""plotly views: the knowledge-distribution heatmap, saliency plots and the recovery mixture."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.subplots import make_subplots

KIND_ORDER = ("attention_head", "ffn", "hidden")


def knowledge_heatmap(km) -> go.Figure:
    """Layers x group kinds, coloured by the loss increase (nats per token) when
    the cluster's lowest-saliency channels are masked; unprunable cells carry ✕.

    Parameters
    ----------
    km : shear_graph.KnowledgeMap

    Returns
    -------
    plotly.graph_objects.Figure
        Hover shows the cluster, loss delta and channels masked / total.
    """
    kinds = [k for k in KIND_ORDER if any(c.kind == k for c in km.clusters)]
    kinds += sorted({c.kind for c in km.clusters} - set(kinds))
    layers = sorted({c.layer for c in km.clusters if c.layer is not None})
    rows = (["all layers"] if any(c.layer is None for c in km.clusters) else []) + [f"L{i}" for i in layers]
    z = np.full((len(rows), len(kinds)), np.nan)
    text = [["" for _ in kinds] for _ in rows]
    hover = [["" for _ in kinds] for _ in rows]
    for c in km.clusters:
        r = rows.index("all layers" if c.layer is None else f"L{c.layer}")
        k = kinds.index(c.kind)
        z[r, k] = c.loss_delta
        masked = sum(len(v) for v in c.removed.values())
        text[r][k] = "✕" if c.unprunable else ""
        hover[r][k] = (f"{c.id}<br>Δloss {c.loss_delta:+.4f} nats/token<br>masked {masked} of {c.n_channels} "
                       f"channels<br>{'UNPRUNABLE' if c.unprunable else 'prunable'}")
    # the whole-model hidden cluster can dwarf the per-layer ones: scale colours
    # to the per-layer clusters and let it saturate (hover shows its value)
    per_layer = [c.loss_delta for c in km.clusters if c.layer is not None]
    zmax = max(per_layer) if per_layer and max(per_layer) > 0 else None
    fig = go.Figure(go.Heatmap(
        z=z, x=list(kinds), y=rows, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
        colorscale="YlOrRd", colorbar={"title": "Δ loss"}, zmin=min(0.0, np.nanmin(z)), zmax=zmax,
    ))
    fig.update_layout(
        title=f"Δ held-out loss when {km.fraction:.0%} of a cluster is masked ({km.saliency}); ✕ unprunable",
        yaxis={"autorange": "reversed", "title": "layer"}, xaxis={"title": "group kind"},
        height=max(400, 18 * len(rows) + 160), width=720,
    )
    return fig


def saliency_profile(saliency, groups) -> go.Figure:
    """Mean channel saliency per layer, one line per group kind (log scale)."""
    fig = go.Figure()
    for kind in KIND_ORDER:
        pts = sorted((g.layer, float(np.mean(saliency.scores[g.id]))) for g in groups
                     if g.kind == kind and g.layer is not None and g.id in saliency.scores)
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=kind))
    fig.update_layout(title=f"Mean channel saliency per layer ({saliency.method})", xaxis={"title": "layer"},
                      yaxis={"title": "saliency", "type": "log"}, height=420, width=720)
    return fig


def saliency_histogram(saliency, group_id: str, bins: int = 60) -> go.Figure:
    """Histogram of one group's channel saliencies."""
    if group_id not in saliency.scores:
        raise KeyError(f"no saliency for group '{group_id}'")
    fig = go.Figure(go.Histogram(x=saliency.scores[group_id], nbinsx=bins, name=group_id))
    fig.update_layout(title=f"Channel saliency, {group_id} ({saliency.method})", xaxis={"title": "saliency"},
                      yaxis={"title": "channels"}, height=360, width=720)
    return fig


def mixture_curves(history) -> go.Figure:
    """The recovery data mixture over training: weight per domain (top) and
    its loss gap to the dense model (bottom, nats per token).

    Parameters
    ----------
    history : list of dict or shear_graph.RecoveryResult
        ``RecoveryResult.weights_history`` (entries ``{"step", "weights",
        "gaps", "losses"}``), or the result itself.

    Returns
    -------
    plotly.graph_objects.Figure
        One weight trace per domain (row 1) and one gap trace per domain
        (row 2), in the same colour; hover shows weight, gap and probe loss.
    """
    entries = getattr(history, "weights_history", history)
    if not entries:
        raise ValueError("the history is empty: no probe measurement was logged")
    steps = [e["step"] for e in entries]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("mixture weight", "loss gap to the dense model (nats/token)"))
    for i, d in enumerate(entries[0]["weights"]):
        color = DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]
        gaps = [e["gaps"][d] for e in entries]
        fig.add_trace(go.Scatter(
            x=steps, y=[e["weights"][d] for e in entries], name=d, legendgroup=d, mode="lines+markers",
            line={"color": color}, customdata=np.column_stack([gaps, [e["losses"][d] for e in entries]]),
            hovertemplate=f"{d}<br>step %{{x}}<br>weight %{{y:.3f}}<br>gap %{{customdata[0]:.3f}} nats"
                          "<br>probe loss %{customdata[1]:.3f}<extra></extra>",
        ), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=gaps, name=d, legendgroup=d, showlegend=False, mode="lines+markers",
                                 line={"color": color, "dash": "dot"}), row=2, col=1)
    fig.update_yaxes(title_text="weight", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="gap", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title="Dynamic data mixture during recovery", height=560, width=760)
    return fig
