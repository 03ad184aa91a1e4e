"""Memory at scale (issue 22): gradient checkpointing changes no result, the
automatic switch follows the model's size, and recovery trains in place when asked."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import build, pattern_blocks
from recovery_ranks import RUN, recovery_data

import shear_graph as sg
import shear_graph.adapters as adapters
from shear_graph.progressive import lhspg_prune


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpointing_switches_on_above_the_size_threshold(monkeypatch):
    model = build("llama")
    assert not adapters.wants_checkpointing(model, None) and adapters.wants_checkpointing(model, True)
    monkeypatch.setattr(adapters, "CHECKPOINTING_ABOVE", sg.count_params(model) - 1)
    assert adapters.wants_checkpointing(model, None)
    with adapters.gradient_checkpointing(model) as on:
        assert on and model.is_gradient_checkpointing
    assert not model.is_gradient_checkpointing  # the caller's model is left as it was


def test_lhspg_with_gradient_checkpointing_gives_the_same_run():
    model = build("llama")
    kw = dict(warmup_steps=1, n_periods=2, period_steps=2, final_steps=1, batch_size=4, lr=1e-3, progress=False)
    data = pattern_blocks(16, seed=2)
    plain = lhspg_prune(model, data, 0.2, checkpointing=False, **kw)
    ckpt = lhspg_prune(model, data, 0.2, checkpointing=True, **kw)
    assert [(r.group, r.channels) for r in ckpt.plan.removals] == [(r.group, r.channels) for r in plain.plan.removals]
    assert [h["loss"] for h in ckpt.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-5)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[k], v, atol=1e-5, rtol=0)
    assert not ckpt.model.is_gradient_checkpointing


def test_recovery_in_place_trains_the_model_itself_to_the_same_weights():
    data = recovery_data()
    model = build("llama")
    copied = sg.recover(model, *data, **RUN)
    same = copy.deepcopy(model)
    result = sg.recover(same, *data, **RUN, inplace=True, checkpointing=True)
    assert result.model is same
    for k, v in copied.model.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v, atol=1e-5, rtol=0)


def test_dim_solve_labels_equal_the_solve_with_the_identity_diagonal():
    """The solve leaves out the identity diagonal to save memory at 405B; every
    index keeps the component label it had with it (so groups are unchanged)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from shear_graph.rules import Propagation

    model = build("llama", lora=True)
    prop = Propagation(sg.trace(model).graph).run()
    space = prop.space
    comps = space.solve()
    offset = len(comps.labels)
    rows = [np.arange(offset)] + [comps.base[a] + ia for a, ia, _, _ in space._edges]
    cols = [np.arange(offset)] + [comps.base[b] + ib for _, _, b, ib in space._edges]
    r, c = np.concatenate(rows), np.concatenate(cols)
    _, want = connected_components(coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(offset, offset)),
                                   directed=False)
    assert space._edges and np.array_equal(comps.labels, want)


def test_group_indices_stay_int64_after_the_int32_solve():
    import numpy as np

    groups = sg.find_groups(sg.trace(build("llama", lora=True)))
    assert groups and all(s.indices.dtype == np.int64 for g in groups for s in g.slices)
