"""The soundness check shared by the soundness tests and the fuzzer: every
offered group, for a random subset of its channels, prunes to a model that
runs and equals masking; any error leaves the input model unchanged."""
from __future__ import annotations

import numpy as np
import torch

import shear_graph as sg


def outputs(model, inputs: dict):
    with torch.no_grad():
        out = model(**inputs)
    return getattr(out, "logits", out)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, before: dict) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(
        now[k].shape == v.shape and torch.equal(now[k], v) for k, v in before.items())


def check_group(model, groups, group, inputs: dict, rng, inplace: bool = False) -> str:
    """Remove a random proper subset of ``group``'s channels; return "exact",
    "approximate" (LayerNorm over the group, documented), or "refused: <error>"
    after checking the input model is unchanged. Raises AssertionError on a
    wrong result, a pruned model that crashes, or a changed input."""
    k = int(rng.integers(1, group.n_channels))
    chans = sorted(rng.choice(group.n_channels, size=k, replace=False).tolist())
    plan = sg.PrunePlan.from_channels(model, groups, {group.id: chans})
    before = state(model)
    reference = outputs(sg.mask_plan(model, plan), inputs)
    try:
        pruned = sg.apply_plan(model, plan, inplace=inplace)
    except sg.ShearGraphError as e:
        assert unchanged(model, before), f"{group.id}: apply_plan failed and changed the input model"
        return f"refused: {type(e).__name__}"
    if not inplace:
        assert unchanged(model, before), f"{group.id}: apply_plan changed the input model"
    try:
        got = outputs(pruned, inputs)
    except Exception as e:  # the failure this check exists to catch
        raise AssertionError(f"{group.id}: the pruned model crashes: {type(e).__name__}: {e}") from e
    assert got.shape == reference.shape, f"{group.id}: output shape {tuple(got.shape)} != {tuple(reference.shape)}"
    if group.layer_norm_params:
        assert torch.isfinite(got).all(), f"{group.id}: non-finite output"
        return "approximate"
    err = (got - reference).abs().max().item()
    assert err <= 1e-5 + 1e-5 * reference.abs().max().item(), f"{group.id}: apply_plan != mask_plan by {err:.3g}"
    return "exact"


def check_model(model, inputs: dict, seed: int = 0, graph=None) -> tuple:
    """Trace (with ``inputs`` as example inputs), find groups and check each
    one; returns ``(groups, {group id: outcome})``."""
    graph = graph or sg.trace(model, example_inputs=inputs)
    groups = sg.find_groups(graph)
    rng = np.random.default_rng(seed)
    return groups, {g.id: check_group(model, groups, g, inputs, rng) for g in groups if g.n_channels > 1}
