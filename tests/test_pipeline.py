"""The main job on a tiny model: every output, the baseline beside it, refusals, resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build, char_tokenizer, tiny_domains
from conftest import tiny_job_settings as settings

import shear_graph as sg
from shear_graph.brown import corpus_dir
from shear_graph.data import Domain
from shear_graph.errors import PlanError, ShearGraphError
from shear_graph.pipeline import OUT_OF_DOMAIN, PruneResult, PruneSettings, prune
from viz.prune_report import write_prune_report


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("llama"), char_tokenizer()


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("job") / "out"
    result = prune(model, tok, out=out, settings=settings(), domains=tiny_domains(), report=write_prune_report,
                   progress=False, keep_work=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    return result


def test_job_writes_model_plan_knowledge_results_and_report(finished, tiny):
    out = finished.out
    for name in ("plan.json", "knowledge.json", "results.json", "report.html", "model/config.json"):
        assert (out / name).exists(), name
    model = sg.load_pruned(out / "model")
    stages = finished.stages
    assert list(stages) == ["dense", "lhspg_pruned", "lhspg_recovered", "baseline_pruned", "baseline_recovered"]
    assert sg.count_params(model) == stages["lhspg_recovered"]["params"] == stages["lhspg_pruned"]["params"]
    assert 1 - stages["lhspg_pruned"]["params"] / stages["dense"]["params"] >= 0.2
    # the baseline removes at least as much (its uniform share per group moves in whole heads)
    assert stages["baseline_pruned"]["params"] <= stages["lhspg_pruned"]["params"]
    plan = sg.PrunePlan.load(out / "plan.json")
    assert plan.removals and all(r.kind in ("attention_head", "ffn") for r in plan.removals)
    km = sg.KnowledgeMap.load(out / "knowledge.json")
    assert not {c.id for c in km.clusters if c.unprunable} & {r.group for r in plan.removals}
    # evaluation only, never trained on
    ood = ({"devils_dictionary"} if OUT_OF_DOMAIN.exists() else set()) | ({"brown_heldout"} if corpus_dir() else set())
    for row in stages.values():
        assert set(row["perplexity"]) == {"docs", "code"} | ood and row["tokens_per_s"] > 0
    assert finished.split["domains"].get("devils_dictionary", {"use": "evaluation only"})["use"] == "evaluation only"
    assert PruneResult.load(out).stages == stages
    page = (out / "report.html").read_text()
    assert "shear-graph-data" in page and "LoRAShear, after recovery" in page
    assert "no zero-shot tasks in this run" in page and "items of each task" not in page  # eval_tasks=()
    assert json.loads(page.split('id="shear-graph-data">')[1].split("</script>")[0].replace("&quot;", '"'))


def test_report_names_the_zero_shot_items_only_when_tasks_ran():
    """Bug: a run with --tasks none was captioned 'zero-shot scores on the first 100 items of each task'."""
    from viz.prune_report import _zero_shot_note

    assert "first 100 items of each task" in _zero_shot_note({"eval_tasks": ["piqa"], "eval_limit": 100})
    for tasks in ([], ["wikitext2"]):
        assert _zero_shot_note({"eval_tasks": tasks, "eval_limit": 100}) == "; no zero-shot tasks in this run"


def test_stage_table_has_one_row_per_model(finished):
    from viz.prune_report import stage_table

    table = stage_table(finished).data[0]
    assert tuple(table.header.values[:2]) == ("model", "params (M)")
    assert tuple(table.cells.values[0]) == ("dense", "LoRAShear, after pruning", "LoRAShear, after recovery",
                                     "baseline, after pruning", "baseline, after recovery")


def test_recovery_and_lhspg_histories_are_logged(finished):
    assert finished.lhspg["periods"] and len(finished.lhspg["history"]) == 1 + 2 * 2 + 1
    for name in ("lhspg", "baseline"):
        weights = finished.recovery[name]["weights_history"]
        assert weights and set(weights[-1]["weights"]) == {"docs", "code"}


def test_progress_false_prints_nothing(tiny, tmp_path, capfd):
    """Every stage's bar (saliency, knowledge analysis, LHSPG, recovery, saving) follows ``progress``."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    prune(*tiny, out=tmp_path / "out", settings=settings(baseline="taylor"), domains=tiny_domains(), progress=False)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert hf_logging.is_progress_bar_enabled() == before  # transformers' switch is the caller's again


def test_transformers_bars_are_restored_after_an_error_and_left_off_when_off():
    from huggingface_hub.utils.tqdm import progress_bar_states
    from transformers.utils import logging as hf_logging

    from shear_graph.pipeline import _transformers_bars

    saved = dict(progress_bar_states)
    try:
        hf_logging.enable_progress_bar()
        progress_bar_states["huggingface_hub.http_get"] = False  # a caller's own per-group choice
        mine = dict(progress_bar_states)
        with pytest.raises(ValueError), _transformers_bars(show=False):
            assert not hf_logging.is_progress_bar_enabled()
            raise ValueError
        assert hf_logging.is_progress_bar_enabled() and dict(progress_bar_states) == mine
        hf_logging.disable_progress_bar()
        with _transformers_bars(show=False):
            pass
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
        progress_bar_states.clear()
        progress_bar_states.update(saved)


def test_a_file_as_out_is_refused_even_with_overwrite(tiny, tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ShearGraphError, match="is a file, not a folder"):
        prune(*tiny, out=tmp_path / "afile", settings=settings(), domains=tiny_domains(), overwrite=True,
              progress=False)
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_new_run_refused_for_its_data_leaves_no_folder(tiny, tmp_path):
    with pytest.raises(ShearGraphError, match="tokens"):
        prune(*tiny, out=tmp_path / "out", settings=settings(), domains=[Domain("tiny", ["hello world"], "x")],
              progress=False)
    assert not (tmp_path / "out").exists()


def test_overwrite_never_deletes_files_a_run_did_not_write(tiny, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ShearGraphError, match=r"holds files this tool did not write \(notes.txt\)"):
        prune(*tiny, out=mine, settings=settings(), domains=tiny_domains(), overwrite=True, progress=False)
    (mine / "results.json").write_text("{}")  # a run's file beside the user's does not make the folder ours
    with pytest.raises(ShearGraphError, match=r"holds files this tool did not write \(notes.txt\)"):
        prune(*tiny, out=mine, settings=settings(), domains=tiny_domains(), overwrite=True, progress=False)
    assert (mine / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(mine)
    with pytest.raises(ShearGraphError, match="is the working directory or contains it"):
        prune(*tiny, out="", settings=settings(), domains=tiny_domains(), overwrite=True, progress=False)
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 2


def test_existing_out_is_refused_without_overwrite_or_resume(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ShearGraphError, match=r"exists; pass overwrite=True \(--overwrite\) to replace it or choose"):
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), progress=False)
    (out / "results.json").write_text("{}")
    with pytest.raises(ShearGraphError, match=r"holds a complete run \(results.json\); pass overwrite=True") as e:
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), progress=False)
    assert "resume" not in str(e.value)  # a finished run has nothing to resume: offering it only leads to a refusal
    (out / ".work").mkdir()
    (out / ".work" / "settings.json").write_text("{}")
    with pytest.raises(ShearGraphError, match="holds an unfinished run; pass resume=True"):
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), progress=False)


def test_unreachable_ratio_says_the_largest_that_can(tiny, tmp_path):
    with pytest.raises(PlanError, match="at most 0.[0-9]+ of the parameters are removable even before"):
        prune(*tiny, out=tmp_path / "out", settings=settings(ratio=0.6, kinds=("attention_head",)),
              domains=tiny_domains(), progress=False)
    assert not (tmp_path / "out" / ".work" / "stages.json").exists()  # refused before any evaluation


def test_ratio_unreachable_only_after_the_analysis_names_the_exclusions_and_resumes_smaller(tiny, tmp_path,
                                                                                            monkeypatch):
    model, _ = tiny
    groups = sg.find_groups(sg.trace(model))
    from shear_graph.plan import max_removable

    no_exclusion = max_removable(model, groups, ("attention_head", "ffn"))
    ratio = round(no_exclusion - 0.01, 3)
    out = tmp_path / "out"
    with pytest.raises(PlanError, match=r"groups excluded as unprunable: at most 0.[0-9]+ of the parameters.*"
                                        r"knowledge analysis are kept .*continue with a smaller ratio"):
        prune(*tiny, out=out, settings=settings(ratio=ratio, unprunable_ratio=0.5), domains=tiny_domains(),
              progress=False)
    analysis = (out / ".work" / "knowledge.json").read_text()
    with pytest.raises(ShearGraphError, match=r"different settings \(fraction, ratio\): fraction fed the stages "
                                                 r"already finished.*only its and later stages'"):
        prune(*tiny, out=out, settings=settings(ratio=0.1, unprunable_ratio=0.5, fraction=0.5),
              domains=tiny_domains(), resume=True, progress=False)

    def analysed_again(*args, **kwargs):
        raise AssertionError("the knowledge analysis ran again; the ratio does not change it")

    monkeypatch.setattr("shear_graph.pipeline.analyze_knowledge", analysed_again)
    result = prune(*tiny, out=out, settings=settings(ratio=0.1, unprunable_ratio=0.5), domains=tiny_domains(),
                   resume=True, progress=False)
    assert result.settings["ratio"] == 0.1 and result.knowledge == json.loads(analysis)
    assert 1 - result.stages["lhspg_pruned"]["params"] / result.stages["dense"]["params"] == pytest.approx(0.1, abs=0.02)


def test_resume_on_other_text_than_the_finished_analysis_is_refused(tiny, tmp_path):
    model, _ = tiny
    from shear_graph.plan import max_removable

    ratio = round(max_removable(model, sg.find_groups(sg.trace(model)), ("attention_head", "ffn")) - 0.01, 3)
    out = tmp_path / "out"
    with pytest.raises(PlanError):  # leaves the dense evaluation and the knowledge analysis behind
        prune(*tiny, out=out, settings=settings(ratio=ratio, unprunable_ratio=0.5), domains=tiny_domains(),
              progress=False)
    docs, code = tiny_domains()
    edited = Domain("code", [code.texts[0].replace("text", "txt")], code.source)
    with pytest.raises(ShearGraphError, match=r"other data: the finished knowledge analysis was made on other text "
                                                 r"or blocks of code; resume with the same domains"):
        prune(*tiny, out=out, settings=settings(ratio=0.1, unprunable_ratio=0.5), domains=[docs, edited],
              resume=True, progress=False)
    renamed = Domain("docs", docs.texts, "elsewhere")  # the same text under another source is the same data
    prune(*tiny, out=out, settings=settings(ratio=0.1, unprunable_ratio=0.5), domains=[renamed, code], resume=True,
          progress=False)


def test_killed_run_resumes_to_the_same_plan(tiny, finished, tmp_path, monkeypatch):
    import shear_graph.recovery as recovery

    real = recovery.recover

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recovery, "recover", killed)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), progress=False)
    assert (out / ".work" / "plan.json").exists() and not (out / "results.json").exists()
    monkeypatch.setattr(recovery, "recover", real)
    with pytest.raises(ShearGraphError, match="different settings"):
        prune(*tiny, out=out, settings=settings(recovery_steps=4), domains=tiny_domains(), resume=True,
              progress=False)
    resumed = prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), resume=True, progress=False)
    assert (sg.PrunePlan.load(out / "plan.json").removed_indices()
            == sg.PrunePlan.load(finished.out / "plan.json").removed_indices())
    assert resumed.stages["lhspg_pruned"]["params"] == finished.stages["lhspg_pruned"]["params"]
    assert not (out / ".work").exists()  # the stage cache goes once the run is complete
    with pytest.raises(ShearGraphError, match="its run is complete"):
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), resume=True, progress=False)


def test_a_refused_resume_with_a_new_ratio_keeps_the_lhspg_checkpoint(tiny, tmp_path, monkeypatch):
    import shear_graph.progressive as progressive

    real, saved = progressive._save_state, []

    def killed_after_first_save(*args, **kwargs):
        real(*args, **kwargs)
        saved.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(progressive, "_save_state", killed_after_first_save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prune(*tiny, out=out, settings=settings(recovery_steps=0, baseline=None), domains=tiny_domains(),
              progress=False)
    monkeypatch.setattr(progressive, "_save_state", real)
    checkpoint = out / ".work" / "lhspg" / progressive.CHECKPOINT
    assert saved and checkpoint.exists()
    with pytest.raises(PlanError, match="at most"):
        prune(*tiny, out=out, settings=settings(ratio=0.99, recovery_steps=0, baseline=None),
              domains=tiny_domains(), resume=True, progress=False)
    assert checkpoint.exists() and json.loads((out / ".work" / "settings.json").read_text())["ratio"] == 0.2
    loaded = []
    real_load = progressive._load_state
    monkeypatch.setattr(progressive, "_load_state", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    prune(*tiny, out=out, settings=settings(recovery_steps=0, baseline=None), domains=tiny_domains(), resume=True,
          progress=False)
    assert loaded  # the old run's LHSPG progress was picked up, not redone


def test_resume_without_a_run_to_continue_is_refused(tiny, tmp_path):
    with pytest.raises(ShearGraphError, match="no unfinished run there"):
        prune(*tiny, out=tmp_path / "never-run", settings=settings(), resume=True, progress=False)
    assert not (tmp_path / "never-run").exists()


def test_zero_shot_task_folder_is_checked_before_any_work(tiny, tmp_path, monkeypatch):
    from shear_graph.errors import EvalDataError
    from shear_graph.pipeline import zero_shot_sources
    from shear_graph.tasks import DATA_ENV, TASKS

    monkeypatch.delenv(DATA_ENV, raising=False)
    folder, tasks, note = zero_shot_sources(("piqa", "boolq"))
    assert folder is None and tasks == [] and "skipped: no task folder" in note and DATA_ENV in note
    assert zero_shot_sources(()) == (None, [], None)
    with pytest.raises(EvalDataError, match="does not exist"):
        prune(*tiny, out=tmp_path / "out", settings=settings(eval_tasks=("piqa",)), data_dir=tmp_path / "none",
              progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "data" / TASKS["piqa"].path).parent.mkdir(parents=True)
    (tmp_path / "data" / TASKS["piqa"].path).write_text("")
    with pytest.raises(EvalDataError, match=r"lacks files of 1 task\(s\): boolq"):
        zero_shot_sources(("piqa", "boolq"), tmp_path / "data")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert zero_shot_sources(("piqa",)) == (tmp_path / "data", ["piqa"], None)


def test_bad_settings_are_named(tiny, tmp_path):
    with pytest.raises(ShearGraphError, match="baseline must be taylor, magnitude or none"):
        prune(*tiny, out=tmp_path / "o", settings=settings(baseline="random"), progress=False)
    with pytest.raises(ShearGraphError, match="period_steps must be at least 1"):
        prune(*tiny, out=tmp_path / "o", settings=settings(period_steps=0), progress=False)
    with pytest.raises(ShearGraphError, match="ratio must be above 0"):
        prune(*tiny, out=tmp_path / "o", settings=settings(ratio=0.0), progress=False)
    with pytest.raises(ShearGraphError, match="layer_shares must be uniform or knowledge"):
        prune(*tiny, out=tmp_path / "o", settings=settings(layer_shares="owl"), progress=False)
    with pytest.raises(ShearGraphError, match="distill must be a number from 0"):
        prune(*tiny, out=tmp_path / "o", settings=settings(distill=1.5), progress=False)
    for kinds in ((), ("ffn", "hidden")):
        with pytest.raises(ShearGraphError, match="kinds must name one or both of attention_head, ffn"):
            prune(*tiny, out=tmp_path / "o", settings=settings(kinds=kinds), progress=False)
    with pytest.raises(ShearGraphError, match=r"kinds must be a tuple of group kinds such as \('ffn',\), not the "
                                              r"string 'ffn'"):  # it would be read letter by letter
        prune(*tiny, out=tmp_path / "o", settings=settings(kinds="ffn"), progress=False)
    with pytest.raises(sg.PlanError, match="keep_layers must be integers from -2 to 1"):
        prune(*tiny, out=tmp_path / "o", settings=settings(keep_layers=(5,)), overwrite=True, progress=False)
    with pytest.raises(ShearGraphError, match=r"keep_layers must be a tuple of decoder-layer indices .* got \(0, 1.5\)"):
        prune(*tiny, out=tmp_path / "o", settings=settings(keep_layers=(0, 1.5)), overwrite=True, progress=False)
    with pytest.raises(sg.PlanError, match=r"cannot be reached with keep_layers \[0, 1\] left whole: at most 0.000"):
        prune(*tiny, out=tmp_path / "o", settings=settings(keep_layers=(0, 1)), overwrite=True, progress=False)
    assert not (tmp_path / "o").exists()  # refused before the dense evaluation, nothing left to block a rerun
    with pytest.raises(ShearGraphError, match="unknown eval_tasks"):
        prune(*tiny, out=tmp_path / "o", settings=settings(eval_tasks=("piqa", "mmlu")), progress=False)


def test_full_disk_at_the_final_save_leaves_nothing_half_written(tiny, finished, tmp_path, monkeypatch):
    import shutil

    from transformers import PreTrainedModel

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    shutil.rmtree(out / "model")
    (out / "results.json").unlink()
    real = PreTrainedModel.save_pretrained

    def disk_full(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # partly written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(sg.CheckpointError, match="No space left on device.*rerun with --resume"):
        prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), resume=True, progress=False)
    assert not (out / "model").exists() and not (out / "results.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".model")]  # no temporary folder left
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), resume=True, progress=False)
    assert (out / "results.json").exists() and sg.load_pruned(out / "model") is not None


def test_knowledge_layer_shares_kept_layers_kinds_and_distillation_reach_lhspg(tiny, finished, tmp_path):
    result = prune(*tiny, out=tmp_path / "o", settings=settings(layer_shares="knowledge", distill=0.5,
                                                                 keep_layers=(-1,), kinds=("ffn",), recovery_steps=0,
                                                                 baseline=None),
                   domains=tiny_domains(), progress=False)
    shares = sg.KnowledgeMap.from_json(json.dumps(result.knowledge)).prune_shares()
    last = {g: 0.0 for g in shares if g.endswith(".L1")}
    assert last and result.lhspg["settings"]["shares"] == {**shares, **last} and len(set(shares.values())) > 1
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert all(not r["group"].endswith(".L1") for r in plan["removals"])
    assert plan["removals"] and all(r["kind"] == "ffn" for r in plan["removals"])
    assert any(r["kind"] == "attention_head" for r in json.loads((finished.out / "plan.json").read_text())["removals"])
    assert result.lhspg["settings"]["distill"] == 0.5 and "distill_kl" in result.lhspg["history"][-1]
    assert finished.lhspg["settings"]["shares"] is None  # the default: one share for every group
    assert finished.lhspg["settings"]["distill"] == 0.0


def test_recovery_distillation_reaches_every_methods_recovery(tiny, finished, tmp_path):
    result = prune(*tiny, out=tmp_path / "o", settings=settings(recovery_distill=0.5, n_periods=1, recovery_steps=2),
                   domains=tiny_domains(), progress=False)
    assert result.recovery["lhspg"]["config"]["distill"] == 0.5
    assert result.recovery["baseline"]["config"]["distill"] == 0.5
    assert result.settings["recovery_distill"] == 0.5 and "distill" not in finished.recovery["lhspg"]["config"]


def test_saliency_is_calibrated_on_every_domain():
    from shear_graph.pipeline import calibration_sample

    blocks = {"a": torch.zeros(10, 4, dtype=torch.long), "b": torch.ones(10, 4, dtype=torch.long)}
    sample = calibration_sample(blocks, 8)
    assert sample.shape == (8, 4) and (sample[:, 0] == 0).sum() == 4 and (sample[:, 0] == 1).sum() == 4
    # a peer that scores on the first k blocks (LLM-Pruner's 10 samples) still sees every domain
    three = {**blocks, "c": torch.full((10, 4), 2, dtype=torch.long)}
    assert calibration_sample(three, 32)[:10, 0].tolist() == [0, 1, 2] * 3 + [0]


def test_peers_run_beside_on_the_same_terms_and_only_they_run_on_resume(tiny, finished, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    seen = {}

    def magnitude_peer(model, calib, n_params):
        seen.update(calib=tuple(calib.shape), n_params=n_params)
        groups = sg.find_groups(sg.trace(model))
        return sg.apply_plan(model, sg.plan_by_magnitude(model, groups, 1 - n_params / sg.count_params(model),
                                                         kinds=("ffn",)))

    def retraining_free(model, calib, n_params):
        return magnitude_peer(model, calib, n_params)
    retraining_free.recover = False

    result = prune(*tiny, out=out, settings=settings(), domains=tiny_domains(), resume=True, progress=False,
                   peers={"magnitude": magnitude_peer, "frozen": retraining_free}, report=write_prune_report)
    assert seen == {"calib": (16, 32), "n_params": finished.stages["lhspg_pruned"]["params"]}
    assert list(result.stages)[-3:] == ["magnitude_pruned", "magnitude_recovered", "frozen_pruned"]
    for stage in ("dense", "lhspg_pruned", "lhspg_recovered", "baseline_pruned", "baseline_recovered"):
        assert result.stages[stage] == finished.stages[stage]  # cached, not run again
    assert {k for k in result.seconds if k not in finished.seconds} == {
        "magnitude pruning", "evaluate magnitude_pruned", "recovery magnitude", "evaluate magnitude_recovered",
        "frozen pruning", "evaluate frozen_pruned"}
    # equal compute: the baseline and every peer train on as many tokens as LHSPG and LoRAShear's recovery
    s = settings()
    per_step = s.batch_size * s.block_len
    assert result.recovery["lhspg"]["tokens"] == s.recovery_steps * per_step
    assert result.recovery["magnitude"]["tokens"] == result.recovery["baseline"]["tokens"] == (
        s.recovery_steps + s.warmup_steps + s.n_periods * s.period_steps + s.final_steps) * per_step
    assert abs(result.stages["magnitude_pruned"]["params"] - seen["n_params"]) / seen["n_params"] < 0.02
    assert result.recovery["magnitude"]["weights_history"]
    assert "magnitude, after recovery" in (out / "report.html").read_text()


def test_peer_budget_counts_lhspg_steps_or_not():
    s = settings(recovery_steps=5, warmup_steps=1, n_periods=2, period_steps=3, final_steps=2)
    assert s.lhspg_steps == 9 and s.peer_recovery_steps == 14
    assert settings(recovery_steps=5, peer_budget="recovery").peer_recovery_steps == 5
    assert settings(recovery_steps=0).peer_recovery_steps == 0
    with pytest.raises(ShearGraphError, match="peer_budget must be tokens"):
        settings(peer_budget="flops").check()


def test_evaluation_only_domains_are_reported_and_never_trained_on(tiny, tmp_path):
    prose = Domain("prose", ["The quick brown fox jumps over the lazy dog. " * 200], "inline")
    result = prune(*tiny, out=tmp_path / "out", settings=settings(baseline=None), domains=tiny_domains(),
                   eval_domains=[prose], progress=False)
    assert set(result.stages["dense"]["perplexity"]) == {"docs", "code", "prose"}
    assert result.split["domains"]["prose"]["use"] == "evaluation only"
    assert result.split["domains"]["prose"]["calib_blocks"] == []  # none drawn: the report said 1
    assert set(result.recovery["lhspg"]["weights_history"][-1]["weights"]) == {"docs", "code"}
    with pytest.raises(sg.DataError, match=r"\['docs'\] given both for training and as evaluation-only"):
        prune(*tiny, out=tmp_path / "o2", settings=settings(), domains=tiny_domains(),
              eval_domains=[tiny_domains()[0]], progress=False)
