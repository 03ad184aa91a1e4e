"""Dynamic knowledge recovery: the mixture rule, LoRA training that follows the
gap, divergence and resume, and two gloo processes that agree with one."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import shear_graph as sg
from conftest import build, family_config
from recovery_ranks import RUN, L, recovery_data
from shear_graph.recovery import CHECKPOINT_FILE
from viz.plots import mixture_curves

TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine
    OpenMP's barriers between them cost more than the ops (20 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return recovery_data()


def run(model, data, **kw):
    return sg.recover(model, *data, **{**RUN, **kw})


def test_update_weights_equals_hand_computation():
    w, g, eta, c = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.0, 1.0]), 2.0, 0.1
    alpha = [0.2 * math.exp(2 * 0.5), 0.3 * math.exp(0), 0.5 * math.exp(2 * 1.0)]
    expected = [(1 - c) * a / sum(alpha) + c / 3 for a in alpha]
    out = sg.update_weights(w, g, eta, c)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    np.testing.assert_allclose(out, [0.14115, 0.09283, 0.76602], atol=1e-5)
    assert out[2] > w[2] and out[1] < w[1]  # the largest gap gains, the gap-free domain loses
    np.testing.assert_allclose(sg.update_weights(w, g, eta=0.0, smoothing=0.0), w)
    huge = sg.update_weights(np.array([0.5, 0.5]), np.array([1e4, 0.0]), 1.0, 1e-3)
    np.testing.assert_allclose(huge, [1 - 5e-4, 5e-4])  # no overflow; the smoothing floor c / k holds


@pytest.mark.parametrize("weights, gaps, match", [
    ([0.5, 0.5], [-0.1, 0.0], "non-negative"),
    ([0.5, 0.5], [0.1], "one length"),
    ([0.0, 0.0], [0.1, 0.0], "not all zero"),
])
def test_update_weights_refuses_bad_input(weights, gaps, match):
    with pytest.raises(sg.ShearGraphError, match=match):
        sg.update_weights(np.array(weights), np.array(gaps))


def test_recover_follows_the_gap_and_returns_a_plain_merged_copy(data):
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, probe, _ = data
    r = run(model, data, steps=12, update_every=4)

    first, last = r.weights_history[0], r.weights_history[-1]
    assert first["step"] == 0 and last["step"] == 12 and [e["step"] for e in r.weights_history] == [0, 4, 8, 12]
    assert first["losses"]["count"] == pytest.approx(sg.held_out_loss(model, probe["count"]), abs=1e-4)
    assert first["gaps"]["count"] > 4 and first["gaps"]["skip"] < 1e-3
    assert last["weights"]["count"] > 0.95 > 0.05 > last["weights"]["skip"]
    assert sum(s["domain"] == "count" for s in r.loss_history) >= 10
    assert sg.held_out_loss(r.model, probe["count"]) < sg.held_out_loss(model, probe["count"]) - 0.5
    assert last["losses"]["count"] == pytest.approx(sg.held_out_loss(r.model, probe["count"]), abs=1e-4)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(r.model) is LlamaForCausalLM and not hasattr(r.model, "peft_config")
    shapes = {k: v.shape for k, v in r.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in before.items()}
    assert all(p.requires_grad for p in r.model.parameters())
    assert r.tokens == 12 * 4 * L and len(r.loss_history) == 12 and r.start_step == 0
    assert json.loads(json.dumps(r.to_dict()))["weights_history"] == r.weights_history


def test_nan_loss_halts_naming_step_and_domain_and_keeps_last_good_state(data, tmp_path):
    with pytest.raises(sg.TrainingError, match=r"at step 1 on domain '(count|skip)'") as e:
        run(build("llama"), data, lr=1e30, checkpoint_dir=tmp_path)
    assert e.value.step == 1 and e.value.domain in data[0]
    assert str(tmp_path) in str(e.value)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert saved["progress"]["step"] == 0 and saved["progress"]["loss_history"] == []
    assert saved["lora"] and all(torch.isfinite(t).all() for t in saved["lora"].values())
    assert not list(tmp_path.glob(f".{CHECKPOINT_FILE}.*"))  # no temporary file left behind


def test_resume_equals_one_uninterrupted_run(data, tmp_path):
    config = family_config("llama")
    config.attention_dropout = 0.1  # so the per-step dropout seeding is tested too
    whole = run(build("llama", config=config), data, steps=7)
    first = run(build("llama", config=config), data, steps=3, checkpoint_dir=tmp_path)
    assert first.start_step == 0 and first.weights_history[-1]["step"] == 3
    resumed = run(build("llama", config=config), data, steps=7, checkpoint_dir=tmp_path)

    assert resumed.start_step == 3
    assert resumed.weights_history == whole.weights_history
    assert resumed.loss_history == whole.loss_history and resumed.tokens == whole.tokens
    torch.testing.assert_close(resumed.model.state_dict(), whole.model.state_dict(), rtol=0, atol=0)
    with pytest.raises(sg.ShearGraphError, match="lora_rank"):
        run(build("llama"), data, steps=7, lora_rank=4, checkpoint_dir=tmp_path)


def test_two_gloo_processes_agree_with_each_other_and_with_one_process(data, tmp_path):
    # accelerate.debug_launcher forks this process; once torch has run an OpenMP
    # parallel region here (any earlier test), the forked ranks hang in libgomp's
    # team barrier (libgomp is not fork-safe), so the ranks start fresh under torchrun.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(TESTS / "recovery_ranks.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    torch.testing.assert_close(ranks[0]["state"], ranks[1]["state"], rtol=0, atol=0)
    assert ranks[0]["result"]["weights_history"] == ranks[1]["result"]["weights_history"]
    assert ranks[0]["result"]["config"]["world_size"] == 2

    # each rank trained on its half of the global batch: one process with the whole batch matches
    single = run(build("llama"), data, batch_size=4)
    torch.testing.assert_close(ranks[0]["state"], single.model.state_dict(), rtol=1e-4, atol=1e-5)
    two = ranks[0]["result"]
    assert two["tokens"] == single.tokens
    assert [s["domain"] for s in two["loss_history"]] == [s["domain"] for s in single.loss_history]
    np.testing.assert_allclose([s["loss"] for s in two["loss_history"]],
                               [s["loss"] for s in single.loss_history], rtol=1e-5)
    for a, b in zip(two["weights_history"], single.weights_history):
        np.testing.assert_allclose(list(a["losses"].values()), list(b["losses"].values()), rtol=1e-5)


@pytest.mark.parametrize("case, match", [
    ("empty", "train is empty"),
    ("no_probe", r"\['skip'\] are in train but not in probe"),
    ("no_reference", r"\['skip'\] are in train but not in reference_loss"),
    ("float_blocks", r"train\['count'\] must be an int64 tensor"),
    ("flat_blocks", r"probe\['skip'\] must be an int64 tensor \[n_blocks, block_len\].*shape \(16,\)"),
    ("big_ids", r"token ids in \[0, 500\].*128 rows"),
    ("steps", "steps must be an integer >= 1, got 0"),
    ("reference", r"reference_loss\['count'\] must be a finite loss"),
])
def test_bad_input_is_refused_with_what_to_do(data, case, match):
    train, probe, ref = (dict(x) for x in data)
    kw = {}
    if case == "empty":
        train = {}
    elif case == "no_probe":
        del probe["skip"]
    elif case == "no_reference":
        del ref["skip"]
    elif case == "float_blocks":
        train["count"] = train["count"].float()
    elif case == "flat_blocks":
        probe["skip"] = probe["skip"][0]
    elif case == "big_ids":
        train["skip"] = train["skip"].clone()
        train["skip"][0, 0] = 500
    elif case == "steps":
        kw["steps"] = 0
    elif case == "reference":
        ref["count"] = float("nan")
    with pytest.raises(sg.ShearGraphError, match=match):
        run(build("llama"), (train, probe, ref), **kw)


def test_recover_refuses_a_model_that_carries_an_adaptor(data):
    with pytest.raises(sg.ShearGraphError, match="merge it first"):
        run(build("llama", lora=True), data)


def test_mixture_curves_carry_the_logged_values():
    logged = [(0, 0.7, 1.0), (5, 0.8, 0.6), (10, 0.6, 0.2)]  # step, weight of code, gap of code
    history = [{"step": s, "weights": {"code": wc, "prose": 1 - wc}, "gaps": {"code": gc, "prose": 0.1},
                "losses": {"code": 2 + gc, "prose": 3.0}} for s, wc, gc in logged]
    fig = mixture_curves(history)
    weights = {t.name: t for t in fig.data if t.yaxis == "y"}
    gaps = {t.name: t for t in fig.data if t.yaxis == "y2"}
    assert set(weights) == set(gaps) == {"code", "prose"} and len(fig.data) == 4
    assert list(weights["code"].x) == [0, 5, 10]
    np.testing.assert_allclose(weights["code"].y, [0.7, 0.8, 0.6])
    np.testing.assert_allclose(weights["prose"].y, [0.3, 0.2, 0.4])
    np.testing.assert_allclose(gaps["code"].y, [1.0, 0.6, 0.2])
    np.testing.assert_allclose(weights["code"].customdata[:, 0], [1.0, 0.6, 0.2])
