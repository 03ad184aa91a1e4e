"""LHSPG's device-side projection gives the same run as the float64 host
implementation it replaced: zero sets, plan, losses and the physically pruned
model's logits, recorded from that implementation on the same seeds
(``python tests/test_lhspg_reference.py`` re-records; only ever against a
reviewed implementation)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import build, logits, pattern_blocks

import shear_graph as sg
from shear_graph.progressive import lhspg_prune

REFERENCE = Path(__file__).parent / "data" / "lhspg_reference.json"
CASES = {
    "plain": dict(ratio=0.3, warmup_steps=2, n_periods=2, period_steps=4, final_steps=2, epsilon=0.0),
    "half_space": dict(ratio=0.3, warmup_steps=1, n_periods=3, period_steps=3, final_steps=2, epsilon=0.4),
}


def trained_model():
    """A tiny llama briefly fitted to the pattern (a shorter run than conftest's ``trained``)."""
    model = build("llama")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = pattern_blocks(256, seed=1)
    for i in range(30):
        ids = data[(i * 8) % 256:(i * 8) % 256 + 8]
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    return model.eval()


def run_case(model, case: str) -> dict:
    kw = dict(CASES[case])
    result = lhspg_prune(model, pattern_blocks(48, seed=2), kw.pop("ratio"), batch_size=4, lr=2e-3, lora_rank=4,
                         progress=False, **kw)
    small = sg.apply_plan(result.model, result.plan)
    norms = sg.lhspg.group_norms(result.model, sg.find_groups(sg.trace(result.model)))
    return {"removals": {r.group: list(r.channels) for r in result.plan.removals},
            "zero": {g: [i for i, v in enumerate(n) if v == 0] for g, n in norms.items()},
            "projected": result.settings["projected"],
            "losses": [h["loss"] for h in result.history],
            "params": sg.count_params(small),
            "logits": logits(small, pattern_blocks(2, block_len=8, seed=9)).flatten().tolist()}


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.mark.parametrize("case", sorted(CASES))
def test_lhspg_run_equals_the_recorded_reference(model, case):
    want = json.loads(REFERENCE.read_text())[case]
    got = run_case(model, case)
    assert got["removals"] == want["removals"]
    assert {g: z for g, z in got["zero"].items() if z} == {g: z for g, z in want["zero"].items() if z}
    assert got["projected"] == want["projected"] and got["params"] == want["params"]
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.tensor(want["logits"]), atol=1e-5, rtol=0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    m = trained_model()
    REFERENCE.write_text(json.dumps({c: run_case(m, c) for c in CASES}))
