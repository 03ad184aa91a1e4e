"""Each saliency criterion equals a hand computation on a tiny model."""
import numpy as np
import pytest
import torch

import shear_graph as sg
from conftest import build, random_blocks


@pytest.fixture(scope="module")
def llama():
    model = build("llama")
    return model, sg.find_groups(sg.trace(model))


def ffn0(model):
    mlp = model.model.layers[0].mlp
    return mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()


def test_magnitude_by_hand(llama):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "magnitude")
    gate, up, down = ffn0(model)
    hand = gate.pow(2).sum(1) + up.pow(2).sum(1) + down.pow(2).sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], hand.double().numpy(), rtol=1e-5)


def test_taylor_by_hand(llama):
    model, groups = llama
    blocks = random_blocks()
    s = sg.compute_saliency(model, groups, "taylor", blocks, batch_size=2)
    ref = build("llama")
    grads = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for ids in torch.split(blocks, 2):
        ref.zero_grad()
        ref(input_ids=ids, labels=ids).loss.backward()
        for n, p in ref.named_parameters():
            grads[n] += p.grad
    pre = "model.layers.0.mlp."
    w = dict(ref.named_parameters())
    elem = {k: (w[pre + k + ".weight"] * grads[pre + k + ".weight"]).abs().detach() for k in ("gate_proj", "up_proj", "down_proj")}
    hand = elem["gate_proj"].sum(1) + elem["up_proj"].sum(1) + elem["down_proj"].sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], hand.double().numpy(), rtol=1e-4)
    assert all(p.grad is None for p in model.parameters()), "the model's gradients are left as they were"


def test_activation_wanda_sp_by_hand(llama):
    model, groups = llama
    blocks = random_blocks()
    s = sg.compute_saliency(model, groups, "activation", blocks, batch_size=3)
    inputs = {}
    mlp = model.model.layers[0].mlp
    hooks = [m.register_forward_hook(lambda mod, a, o, k=k: inputs.setdefault(k, []).append(a[0].detach()))
             for k, m in (("gate", mlp.gate_proj), ("down", mlp.down_proj))]
    with torch.no_grad():
        for ids in torch.split(blocks, 3):
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    norm = {k: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]).pow(2).sum(0).sqrt() for k, v in inputs.items()}
    gate, up, down = ffn0(model)
    # gate and up read the same input (the normed hidden state)
    hand = (gate.abs() * norm["gate"]).sum(1) + (up.abs() * norm["gate"]).sum(1) + (down.abs() * norm["down"]).sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], hand.double().numpy(), rtol=1e-4)


def test_lora_by_hand():
    model = build("llama", lora=True)
    groups = sg.find_groups(sg.trace(model))
    s = sg.compute_saliency(model, groups, "lora")
    mlp = model.base_model.model.model.layers[0].mlp
    elem = {}
    for k in ("gate_proj", "up_proj", "down_proj"):
        m = getattr(mlp, k)
        delta = m.lora_B["default"].weight @ m.lora_A["default"].weight * m.scaling["default"]
        elem[k] = (m.base_layer.weight * delta).abs().detach()
    hand = elem["gate_proj"].sum(1) + elem["up_proj"].sum(1) + elem["down_proj"].sum(0)
    np.testing.assert_allclose(s.scores["ffn.L0"], hand.double().numpy(), rtol=1e-4)


def test_lora_without_adaptor_and_unknown_method(llama):
    model, groups = llama
    with pytest.raises(sg.ShearGraphError, match="needs a peft LoRA model"):
        sg.compute_saliency(model, groups, "lora")
    with pytest.raises(sg.ShearGraphError, match="unknown saliency 'fisher'; registered: activation"):
        sg.compute_saliency(model, groups, "fisher")
    with pytest.raises(sg.ShearGraphError, match="needs calibration blocks"):
        sg.compute_saliency(model, groups, "taylor")


def test_registry_extends_in_a_few_lines(llama):
    model, groups = llama

    @sg.register_saliency("ones", needs_data=False)
    def ones(ctx):
        return {n: torch.ones_like(p) for n, p in ctx.params.items()}

    try:
        s = sg.compute_saliency(model, groups, "ones")
        assert np.all(s.scores["ffn.L0"] == 64 * 3)  # 64 weights in each of gate row, up row, down column
    finally:
        del sg.SALIENCY["ones"]


def test_saliency_json_round_trip(llama):
    model, groups = llama
    s = sg.compute_saliency(model, groups, "magnitude")
    again = sg.Saliency.from_json(s.to_json())
    assert again.method == s.method and all(np.array_equal(again.scores[k], v) for k, v in s.scores.items())


def test_blocks_must_be_a_tensor(llama):
    """Bug from a fresh-user trial: a list of blocks died in torch.split."""
    model, groups = llama
    with pytest.raises(TypeError, match="blocks must be an int64 tensor"):
        sg.compute_saliency(model, groups, "taylor", [])
