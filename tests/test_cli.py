"""The command line on a tiny model folder (no tokenizer) and on bad input."""
import json

import pytest
from typer.testing import CliRunner

import shear_graph as sg
from conftest import build
from shear_graph.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    build("llama").save_pretrained(path)
    return path


def test_oneshot_a_model_folder_without_tokenizer(tiny_folder, tmp_path):
    result = run("oneshot", tiny_folder, "--ratio", "0.2", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["reload_logits_identical"] and summary["removed_fraction"] >= 0.2
    assert sg.PrunePlan.load(tmp_path / "o" / "plan.json").removals


def test_oneshot_round_to_is_named_as_the_flag_and_recorded(tiny_folder, tmp_path):
    result = run("oneshot", tiny_folder, "--ratio", "0.2", "--round-to", "0", "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "--round-to" in result.output, result.output
    result = run("oneshot", tiny_folder, "--ratio", "0.2", "--round-to", "8", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["round_to"] == 8


def test_groups_of_a_model_folder(tiny_folder):
    result = run("groups", tiny_folder)
    assert result.exit_code == 0, result.output
    assert "attention_head.L1" in result.output and "hidden" in result.output


def test_groups_explains_a_parameter(tiny_folder):
    result = run("groups", tiny_folder, "--explain", "model.embed_tokens.weight")
    assert result.exit_code == 0, result.output
    assert "dim 0 (size 128): 0 removable" in result.output
    assert "frozen by aten.embedding in module 'model.embed_tokens'" in result.output
    bad = run("groups", tiny_folder, "--explain", "model.embed_tokens")
    assert bad.exit_code == 2 and "not a parameter of the traced model" in bad.output


def test_output_overlapping_the_input_is_refused(tiny_folder):
    for out in (tiny_folder, tiny_folder / "sub", tiny_folder.parent):
        result = run("oneshot", tiny_folder, "--out", out, "--overwrite")
        assert result.exit_code == 2 and "overlaps the input model folder" in result.output
    assert (tiny_folder / "model.safetensors").is_file()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    result = run("oneshot", tmp_path / "nope", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'} does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = run("oneshot", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "is not a model folder (no config.json)" in result.output


def test_garbage_config_is_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    result = run("groups", tmp_path / "m")
    assert result.exit_code == 2 and "config.json is not valid JSON" in result.output


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "o").mkdir()
    result = run("oneshot", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "pass --overwrite" in result.output


@pytest.mark.parametrize("kinds", ["ffn,heads", ""])
def test_unknown_or_empty_kinds(tmp_path, kinds):
    result = run("oneshot", "--kinds", kinds, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "unknown group kind(s)" in result.output


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "1.0", "nan", "0"])
def test_bad_ratio_is_refused_before_any_model_is_loaded(tmp_path, ratio):
    result = run("oneshot", tmp_path / "does-not-exist", "--ratio", ratio, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--ratio must be above 0 and below 1" in result.output


def test_analyze_writes_report_and_json(tmp_path):
    from conftest import char_tokenizer

    folder = tmp_path / "tiny"
    build("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    text = tmp_path / "prose.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    result = run("analyze", folder, "--out", tmp_path / "a", "--domain", text, "--block-len", "32",
                 "--n-eval", "2", "--n-calib", "2", "--saliency", "activation")
    assert result.exit_code == 0, result.output
    km = sg.KnowledgeMap.load(tmp_path / "a" / "knowledge.json")
    assert len(km.clusters) == 5 and km.split["domains"]["prose"]["n_tokens"] == 1800
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Knowledge distribution" in page and "plotly" in page and "<svg" in page
    assert "unprunable (1): " in result.output


def test_analyze_refuses_a_binary_domain(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"\x00\x01\x02")
    result = run("analyze", "--domain", tmp_path / "x.txt", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "is not a text file" in result.output


def test_core_never_imports_the_views():
    import subprocess
    import sys

    code = "import sys, shear_graph; print([m for m in ('plotly', 'graphviz', 'viz') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_main_job_refuses_what_it_cannot_do_before_any_work(tiny_folder, tmp_path):
    (tmp_path / "exists").mkdir()
    result = run("prune", tiny_folder, "--out", tmp_path / "exists")
    assert result.exit_code == 2 and "exists; pass --overwrite to replace it or choose another --out" in result.output
    (tmp_path / "exists" / "results.json").write_text("{}")
    result = run("prune", tiny_folder, "--out", tmp_path / "exists")
    assert result.exit_code == 2 and "holds a complete run" in result.output and "--resume" not in result.output
    (tmp_path / "exists" / ".work").mkdir()
    (tmp_path / "exists" / ".work" / "settings.json").write_text("{}")
    result = run("prune", tiny_folder, "--out", tmp_path / "exists")
    assert result.exit_code == 2 and "holds an unfinished run; pass --resume to continue it" in result.output
    result = run("prune", tiny_folder, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "has no tokenizer" in result.output
    result = run("prune", tiny_folder, "--out", tmp_path / "o", "--baseline", "random")
    assert result.exit_code == 2 and "baseline must be taylor, magnitude or none" in result.output
    result = run("prune", tiny_folder, "--out", tmp_path / "o", "--ratio", "1.5")
    assert result.exit_code == 2 and "--ratio must be above 0 and below 1" in result.output


@pytest.mark.parametrize("command", [["prune"], ["analyze"], ["oneshot"], ["eval", "--tasks", "piqa"]])
def test_unwritable_output_is_refused_before_any_model_is_loaded(command, monkeypatch):
    import shear_graph.default_model as default_model

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(default_model, "load_model", never)
    result = run(*command, "--out", "/proc/no/such/out")
    assert result.exit_code == 2 and "cannot write to /proc/no/such" in result.output
    assert "choose another --out" in result.output


@pytest.mark.parametrize("args, message", [
    (["analyze", "--fraction", "1.5"], "--fraction must be in (0, 1), got 1.5"),
    (["analyze", "--unprunable-ratio", "2"], "--unprunable-ratio must be in [0, 1], got 2.0"),
    (["analyze", "--n-eval", "0"], "--n-eval must be at least 1, got 0"),
    (["prune", "--eval-limit", "0"], "--eval-limit must be at least 1"),
    (["prune", "--lora-rank", "0"], "--lora-rank must be at least 1, got 0"),
    (["prune", "--layer-shares", "owl"], "--layer-shares must be uniform or knowledge, got 'owl'"),
    (["prune", "--keep-layers", "0,x"], "--keep-layers takes comma-separated layer indices such as 0,1,-1"),
    (["prune", "--keep-layers", "1,,2"], "--keep-layers takes comma-separated layer indices such as 0,1,-1"),
    (["prune", "--keep-layers", " "], "--keep-layers takes comma-separated layer indices such as 0,1,-1"),
    (["prune", "--distill", "2"], "--distill must be a number from 0 (language-modelling loss only) to 1"),
    (["prune", "--recovery-distill", "-1"], "--recovery-distill must be a number from 0 (language-modelling loss "
                                            "only) to 1"),
    (["prune", "--kinds", "ffn,hiden"], "--kinds must name one or both of attention_head, ffn (the removal-group "
                                        "types LHSPG prunes), got 'hiden'"),
    (["prune", "--kinds", ""], "--kinds must name one or both of attention_head, ffn"),
    (["prune", "--ratio", "0"], "--ratio must be above 0"),
    (["prune", "--eval-limit", "0"], "--eval-limit must be at least 1 (in Python, None scores every item), got 0"),
    (["oneshot", "--ratio", "0"], "--ratio must be above 0"),
    (["prune", "--tasks", "piqa,nope"], "unknown --tasks ['nope']"),
    (["prune", "--tasks", " "], "--tasks is empty"),
    (["prune", "--data-dir", "/no/such/folder"], "evaluation data folder /no/such/folder does not exist"),
    (["prune", "--resume"], "no unfinished run there (no .work folder); start a run without --resume"),
    (["prune", "--resume", "--overwrite"], "--overwrite and --resume exclude each other"),
    (["eval", "--tasks", ""], "--tasks is empty"),
    (["eval", "--tasks", " , "], "--tasks is empty"),
])
def test_bad_settings_are_refused_before_any_model_is_loaded(args, message, tmp_path, monkeypatch):
    import shear_graph.default_model as default_model

    def never(*a, **kw):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(default_model, "load_model", never)
    monkeypatch.setattr(default_model, "load_default_model", never)
    out = tmp_path / ("r.json" if args[0] == "eval" else "out")
    result = run(*args, "--out", out)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_refused_run_leaves_no_parent_folders_behind(tmp_path):
    result = run("prune", "--out", tmp_path / "fresh" / "sub", "--distill", "2")
    assert result.exit_code == 2 and "--distill must be" in result.output
    assert not (tmp_path / "fresh").exists()


def test_eval_output_that_is_a_folder_is_refused(tmp_path):
    result = run("eval", "--tasks", "piqa", "--out", tmp_path, "--overwrite")
    assert result.exit_code == 2 and "is a folder; give the path of the JSON file" in result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["prune", "analyze", "eval"])
def test_unusable_device_is_a_clear_error(command, tmp_path, monkeypatch):
    import shear_graph.default_model as default_model

    monkeypatch.setattr(default_model, "load_model", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("loaded")))
    result = run(command, "--device", "cuda", "--out", tmp_path / ("r.json" if command == "eval" else "out"))
    assert result.exit_code == 2 and "device 'cuda' is not usable here" in result.output, result.output
    assert "use --device cpu" in result.output  # and what to do about it


def test_prune_refuses_a_task_folder_that_lacks_tasks_before_any_work(tmp_path, monkeypatch):
    import shear_graph.default_model as default_model
    from shear_graph.tasks import TASKS

    monkeypatch.setattr(default_model, "load_default_model", lambda *a, **kw: (_ for _ in ()).throw(
        AssertionError("the model was loaded before the task folder was checked")))
    piqa = tmp_path / "data" / TASKS["piqa"].path
    piqa.parent.mkdir(parents=True)
    piqa.write_text("")
    result = run("prune", "--data-dir", tmp_path / "data", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "lacks files of 3 task(s): boolq" in result.output, result.output
    assert "--tasks" in result.output and not (tmp_path / "out").exists()


def test_interrupted_prune_says_how_to_resume(tmp_path, monkeypatch):
    import shear_graph.pipeline as pipeline

    def interrupted(*args, out, **kwargs):
        (out / ".work").mkdir(parents=True, exist_ok=True)
        (out / ".work" / "settings.json").write_text("{}")
        if out.name == "later":
            (out / ".work" / "stages.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prune", interrupted)
    result = run("prune", "--out", tmp_path / "later")
    assert result.exit_code == 130 and "continue with the same command and --resume" in result.output
    result = run("prune", "--out", tmp_path / "early")
    assert result.exit_code == 130 and "before any stage finished" in result.output


def test_prune_tasks_none_means_no_zero_shot_evaluation(tmp_path, monkeypatch):
    """``--tasks none`` was refused as empty (trial, session 4)."""
    import shear_graph.pipeline as pipeline

    seen = {}

    def job(*args, settings, **kwargs):
        seen["tasks"] = settings.eval_tasks
        raise pipeline.ShearGraphError("stop here")

    monkeypatch.setattr(pipeline, "prune", job)
    result = run("prune", "--tasks", "none", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "stop here" in result.output and seen["tasks"] == ()


def test_setting_names_become_flags_only_as_whole_words():
    from shear_graph.cli import PRUNE_FLAGS, _as_flags

    assert _as_flags("choose a smaller ratio (--ratio) or more kinds (--kinds)", PRUNE_FLAGS) == (
        "choose a smaller --ratio or more --kinds")
    assert _as_flags("see PruneSettings.kinds and kinds_x", PRUNE_FLAGS) == "see PruneSettings.kinds and kinds_x"



def test_overwrite_never_deletes_the_working_directory_or_the_users_files(tiny_folder, tmp_path, monkeypatch):
    """Bug: `prune --out "" --overwrite` read the empty path as ".", deleted everything in the working
    directory and then failed with a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("mine")
    for out in ("", "."):
        result = run("prune", tiny_folder, "--out", out, "--overwrite")
        assert result.exit_code == 2 and "is the working directory or contains it" in result.output, result.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for command in (["prune"], ["oneshot"], ["analyze", "--domain", tmp_path / "precious.txt"]):
        result = run(*command, *([] if command[0] == "analyze" else [tiny_folder]), "--out", mine, "--overwrite")
        assert result.exit_code == 2 and "holds files this tool did not write (notes.txt)" in result.output, \
            result.output
    assert (tmp_path / "precious.txt").read_text() == "mine" and (mine / "notes.txt").read_text() == "mine"
    result = run("prune", tiny_folder, "--out", tmp_path / "precious.txt")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output and "--overwrite" not in result.output
