"""The GPU path: every step that scores or trains runs on CUDA in bf16 unchanged.

Skipped where no CUDA device is present (CI, the CPU machine); run on a GPU
machine with ``pytest -m gpu``.
"""
from __future__ import annotations

import pytest
import torch
from conftest import build, char_tokenizer, family_config, input_ids, tiny_domains
from conftest import tiny_job_settings as settings

import shear_graph as sg
from shear_graph.pipeline import prune

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BF16 = torch.bfloat16


def _params_on_cuda_bf16(model) -> bool:
    return all(p.device.type == "cuda" and p.dtype == BF16 for p in model.parameters())


def test_pruned_model_equals_masked_model_on_gpu_in_bf16():
    model = build("llama").to("cuda", BF16)
    groups = sg.find_groups(sg.trace(model))
    plan = sg.plan_by_magnitude(model, groups, 0.3)
    ids = input_ids().cuda()
    with torch.no_grad():
        masked = sg.mask_plan(model, plan)(input_ids=ids).logits.float()
        pruned = sg.apply_plan(model, plan)
        out = pruned(input_ids=ids).logits.float()
    assert _params_on_cuda_bf16(pruned)
    assert sg.count_params(pruned) < sg.count_params(model)
    # bf16 keeps 8 mantissa bits: the two differ only in summation order
    assert torch.allclose(out, masked, atol=0.05, rtol=0.05), (out - masked).abs().max()


def test_saliency_and_recovery_run_on_gpu_in_bf16():
    model = build("llama").to("cuda", BF16)
    groups = sg.find_groups(sg.trace(model))
    blocks = input_ids(batch=4, seq=16)
    sal = sg.compute_saliency(model, groups, "taylor", blocks, batch_size=2)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in sal.scores.values())
    train = {"a": blocks, "b": input_ids(seed=2, batch=4, seq=16)}
    probe = {d: b[:2] for d, b in train.items()}
    ref = {d: sg.held_out_loss(model, b) for d, b in probe.items()}
    res = sg.recover(model, train, probe, ref, steps=4, batch_size=2, update_every=2, lora_rank=4,
                     device="cuda", dtype=BF16, progress=False)
    assert _params_on_cuda_bf16(res.model)
    assert len(res.loss_history) == 4


def test_main_job_runs_on_gpu_in_bf16_and_saves_a_loadable_model(tmp_path):
    torch.manual_seed(0)
    model, tok = build("llama", config=family_config("llama")), char_tokenizer()
    result = prune(model, tok, out=tmp_path / "out", settings=settings(device="cuda", dtype="bfloat16"),
                   domains=tiny_domains(), progress=False)
    assert {"dense", "lhspg_pruned", "lhspg_recovered", "baseline_pruned", "baseline_recovered"} <= set(result.stages)
    assert result.stages["lhspg_pruned"]["params"] < result.stages["dense"]["params"]
    loaded = sg.load_pruned(tmp_path / "out" / "model", device="cuda", dtype=BF16)
    assert _params_on_cuda_bf16(loaded)
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=input_ids().cuda()).logits).all()
