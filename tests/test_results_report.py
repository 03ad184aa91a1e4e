"""benchmarks/RESULTS.md is rendered for a reader from whatever results files there are: a new peer method
or a results file of a new kind shows up without a change to the renderer."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def peers(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(module, "HERE", tmp_path)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    return module


def _stage(params, ppl, zs=0.4, tps=500.0):
    return {"params": params, "perplexity": {"docs": ppl, "code": ppl / 2}, "zero_shot_average": zs,
            "tokens_per_s": tps}


def _quality(peers, name, stages, **settings):
    base = {"ratio": 0.2, "n_eval": 16, "block_len": 128, "eval_limit": 100, "recovery_steps": 200,
            "batch_size": 4, "lora_rank": 8, **peers.VARIANT, **settings}
    part = {"date": "2026-12-01", "environment": {"machine": "test box"}, "ratio": 0.2, "smoke": False,
            "general_text": False, "settings": base, "stages": {"dense": _stage(100e6, 10.0), **stages}}
    (peers.RESULTS / f"{name}.json").write_text(json.dumps(part))


def test_each_method_shows_its_best_run_and_every_run_is_in_the_history(peers):
    _quality(peers, "quality_0.2", {"lhspg_recovered": _stage(80e6, 14.0), "flap_style_recovered": _stage(80e6, 13.0),
                                    "flap_style_pruned": _stage(80e6, 30.0)})
    _quality(peers, "quality_0.2_ffn", {"lhspg_recovered": _stage(80e6, 12.0, zs=0.51)}, kinds=["ffn"])
    (peers.RESULTS / "fuzz_counts.json").write_text(json.dumps(
        {"title": "Fuzzed architectures", "question": "scale", "command": "python benchmarks/fuzz.py",
         "table": {"columns": ["family", "configs", "failures"], "rows": [["llama", 500, 0]]}}))
    (peers.RESULTS / "memory.json").write_text(json.dumps({"date": "2026-12-01", "peak": {"rss_gb": 2.5}}))
    page = peers.write_report().read_text()
    quality = page.split("### 20% of the parameters removed")[1].split("\n## ")[0]
    lhspg = [line for line in quality.splitlines() if line.startswith("| shear-graph LoRAShear")]
    assert len(lhspg) == 1 and "12.00 (1.20x)" in lhspg[0] and "--kinds ffn" in lhspg[0]  # the better of two runs
    assert "| flap style | trained on" in quality and "13.00 (1.30x)" in quality  # a new peer, named from its key
    assert "30.00" not in quality  # its row after recovery, not before
    history = page.split("## Every quality configuration tried")[1]
    assert history.count("\n| 2026-12-01 |") == 2 and "flap style: 1.30x" in history
    scale = page.split("## Scale")[1].split("\n## ")[0]
    assert "### Fuzzed architectures" in scale and "| llama | 500 | 0 |" in scale
    assert "| peak.rss_gb | 2.5 |" in page.split("## Other measurements")[1]  # an unknown file still shows
    assert "\n\n\n" not in page


def test_without_results_the_page_still_renders(peers):
    page = peers.write_report().read_text()
    assert page.startswith("# Benchmarks") and "## Every quality configuration tried" in page


def test_runs_of_another_script_and_text_render_and_only_the_latest_text_competes(peers):
    _quality(peers, "quality_0.2", {"lhspg_recovered": _stage(80e6, 11.0)})  # older text: history only
    dense = _stage(100e6, 10.0, zs=None)
    del dense["zero_shot_average"]
    (peers.RESULTS / "brown_0.2.json").write_text(json.dumps({
        "date": "2026-12-08", "environment": {"machine": "test box"}, "ratio": 0.2, "methods": ["wanda_sp"],
        "settings": {"n_eval": 16, "block_len": 128, "kinds": ["ffn"]}, "training_domains": {"brown_news": "npm"},
        "stages": {"dense": dense, "lhspg_recovered": {k: v for k, v in _stage(80e6, 14.0).items()
                                                       if k != "zero_shot_average"},
                   "wanda_sp_recovered": _stage(80e6, 15.0)},
        "zero_shot": {"lhspg_recovered": {"average": 0.477}}}))
    page = peers.write_report().read_text()
    quality = page.split("### 20% of the parameters removed")[1].split("\n## ")[0]
    assert "14.00 (1.40x)" in quality and "11.00" not in quality and "| Wanda-sp (uniform widths) |" in quality
    assert "0.477" in quality  # the zero-shot pass run after the quality run
    assert "benchmarks/quality.py run 0.2 --kinds ffn`" in quality
    assert "11.00 (1.10x)" not in page and "1.10x" in page.split("## Every quality configuration tried")[1]
