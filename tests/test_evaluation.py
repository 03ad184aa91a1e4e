"""Evaluation: lm-eval-style scoring and perplexity against hand computations,
task files, the calibration guard, the report format and the CLI, on tiny
models with a tiny byte-level BPE tokenizer trained here."""
import json
import math
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import shear_graph as sg
from conftest import build, family_config
from shear_graph.cli import app
from shear_graph.evaluation import check_not_calibration, resolve_sources, score_items
from shear_graph.scoring import encode_pair, loglikelihoods, window_ids
from shear_graph.tasks import DATA_ENV, TASKS, wikitext_text

CORPUS = [
    "Question: Is the sky blue?\nAnswer: yes",
    "The cat sat on the mat. The dog did not.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor .",
]
ARC = [
    {"question": "Which gas do plants take in?", "choices": ["carbon dioxide", "helium", "neon"], "gold": 0},
    {"question": "What is ice?", "choices": ["frozen water", "hot sand"], "gold": 0},
]
TEXT = " = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . " * 6


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def tiny(name, tok, seed=0):
    config = family_config(name)
    config.vocab_size = len(tok)
    return build(name, seed=seed, config=config)


@pytest.fixture(scope="module")
def llama(tok):
    return tiny("llama", tok)


def write_jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def hand_loglikelihood(model, tok, context, continuation):
    """Sum of log_softmax over full logits at the continuation's tokens, one
    sequence at a time, left-truncated to the model's length as lm-eval does."""
    ctx = tok.encode(context, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    cont = whole[len(ctx):]
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    inp = whole[-(limit + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].double(), -1)
    first = len(inp) - len(cont)
    return sum(logp[first + j, t].item() for j, t in enumerate(cont))


def test_acc_and_acc_norm_equal_a_hand_computation(llama, tok, tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", ARC)
    report = sg.evaluate(llama, tok, {"arc_easy": path}, progress=False)
    (result,) = report.results
    hand = [np.array([hand_loglikelihood(llama, tok, f"Question: {d['question']}\nAnswer:", " " + c)
                      for c in d["choices"]]) for d in ARC]
    scored = score_items(llama, tok, TASKS["arc_easy"].read(path))
    for h, s in zip(hand, scored):
        np.testing.assert_allclose(s, h, rtol=1e-5)
    acc = np.mean([np.argmax(h) == d["gold"] for h, d in zip(hand, ARC)])
    norm = np.mean([np.argmax(h / [len(c.encode()) for c in d["choices"]]) == d["gold"] for h, d in zip(hand, ARC)])
    assert result.metrics["acc"] == acc and result.metrics["acc_norm"] == norm
    assert result.metric == "acc" and result.value == acc and result.n == 2
    assert result.stderr == pytest.approx(np.std([h.argmax() == 0 for h in hand], ddof=1) / math.sqrt(2))


def test_context_trailing_space_moves_to_the_continuation(tok):
    assert encode_pair(tok, "Answer: ", "yes") == encode_pair(tok, "Answer:", " yes")
    context, continuation = encode_pair(tok, "Answer:", " yes")
    assert tok.decode(continuation) == " yes" and tok.decode(context) == "Answer:"
    assert encode_pair(tok, "", "yes")[0] == [tok.eos_token_id]


def test_perplexity_is_exp_of_the_mean_nll_by_hand(llama, tok, tmp_path):
    (tmp_path / "d.txt").write_text(TEXT)
    report = sg.evaluate(llama, tok, [], texts={"docs": tmp_path / "d.txt"}, seq_len=[16, 40], progress=False)
    ids = tok(TEXT)["input_ids"]
    for result, n in zip(report.results, (16, 40)):
        windows = len(ids) // n
        nll = []
        with torch.no_grad():
            for w in range(windows):
                x = torch.tensor([ids[w * n:(w + 1) * n]])
                logp = torch.log_softmax(llama(x).logits[0].double(), -1)
                nll += [-logp[i, x[0, i + 1]].item() for i in range(n - 1)]
        assert result.task == "docs" and result.metric == "perplexity" and result.seq_len == n
        assert result.value == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
        assert (result.n, result.n_windows) == (windows * (n - 1), windows)
        assert result.metrics["dropped_tokens"] == len(ids) - windows * n


def test_batched_scores_equal_one_at_a_time(tok):
    model = tiny("llama", tok, seed=3)
    requests = [(CORPUS[i % 4][: 10 + 7 * i].rstrip(), " " + CORPUS[(i + 1) % 4][: 3 + 5 * i]) for i in range(9)]
    requests += [("Is the sky blue?\nAnswer:", "x"), ("Is the sky blue?\nAnswer:", "y")]
    encoded = [encode_pair(tok, c, x) for c, x in requests]
    assert encoded[-1][0] == encoded[-2][0] and len(encoded[-1][1]) == 1  # one input row serves both
    one = loglikelihoods(model, encoded, batch_size=1)
    for batch_size in (4, 16):
        np.testing.assert_allclose(loglikelihoods(model, encoded, batch_size=batch_size), one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one, [hand_loglikelihood(model, tok, c, x) for c, x in requests], rtol=1e-5)


def test_batches_hold_rows_of_similar_length():
    from shear_graph.scoring import _batches

    rows = [(0,) * n for n in (100, 30, 28, 25, 22, 21, 5)]
    assert [[len(r) for r in b] for b in _batches(rows, 3)] == [[100], [30, 28, 25], [22, 21], [5]]


def test_inputs_longer_than_the_model_are_left_truncated(tok):
    model = tiny("gpt2", tok)  # n_positions 64
    context, continuation = " ".join(CORPUS) * 2, " He starts pulling."
    assert len(tok.encode(context)) > 64
    (score,) = loglikelihoods(model, [encode_pair(tok, context, continuation)])
    assert score == pytest.approx(hand_loglikelihood(model, tok, context, continuation), rel=1e-5)


def test_pruned_model_scores_as_its_masked_original(llama, tok, tmp_path):
    plan = sg.plan_by_magnitude(llama, sg.find_groups(sg.trace(llama)), 0.3)
    pruned, masked = sg.apply_plan(llama, plan), sg.mask_plan(llama, plan)
    path = write_jsonl(tmp_path / "arc.jsonl", ARC)
    a = sg.evaluate(pruned, tok, {"arc_easy": path}, progress=False)
    b = sg.evaluate(masked, tok, {"arc_easy": path}, progress=False)
    assert a.results[0].metrics == b.results[0].metrics
    np.testing.assert_allclose(np.concatenate(score_items(pruned, tok, TASKS["arc_easy"].read(path))),
                               np.concatenate(score_items(masked, tok, TASKS["arc_easy"].read(path))), atol=1e-4)
    assert a.model["parameters"] == sg.count_params(pruned) < sg.count_params(llama)
    assert a.model["fingerprint"] != b.model["fingerprint"]


def test_winogrande_scores_the_suffix_after_each_filled_prefix(llama, tok, tmp_path):
    doc = {"sentence": "The cat sat on the mat because _ was tired.", "option1": "the cat", "option2": "the mat",
           "answer": "1"}
    path = write_jsonl(tmp_path / "wino.jsonl", [doc, {**doc, "answer": "2"}])
    (item, _) = TASKS["winogrande"].read(path)
    assert item.requests == [("The cat sat on the mat because the cat", " was tired."),
                             ("The cat sat on the mat because the mat", " was tired.")]
    result = sg.evaluate(llama, tok, {"winogrande": path}, progress=False).results[0]
    hand = [hand_loglikelihood(llama, tok, c, x) for c, x in item.requests]
    np.testing.assert_allclose(score_items(llama, tok, [item])[0], hand, rtol=1e-5)
    assert result.metric == "acc" and "acc_norm" not in result.metrics
    assert result.value == 0.5  # same scores, golds 0 and 1: exactly one is right


def test_task_prompts_follow_lm_eval(tmp_path):
    boolq = write_jsonl(tmp_path / "b.jsonl", [{"passage": "P.", "question": "is it", "answer": True},
                                               {"title": "T", "passage": "P.", "question": "is it", "label": 0}])
    yes, no = TASKS["boolq"].read(boolq)
    assert yes.requests == [("P.\nQuestion: is it?\nAnswer:", " no"), ("P.\nQuestion: is it?\nAnswer:", " yes")]
    assert no.requests[0] == ("T -- P.\nQuestion: is it?\nAnswer:", " no") and (yes.gold, no.gold) == (1, 0)
    piqa = write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}])
    (tmp_path / "valid-labels.lst").write_text("1\n")
    (item,) = TASKS["piqa"].read(piqa)
    assert item.requests[1] == ("Question: g\nAnswer:", " b") and item.gold == 1
    hf_arc = {"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}
    assert TASKS["arc_challenge"].read(write_jsonl(tmp_path / "c.jsonl", [hf_arc]))[0].gold == 1
    obqa = {"question_stem": "Stem", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"}
    assert TASKS["openbookqa"].read(write_jsonl(tmp_path / "o.jsonl", [obqa]))[0].requests[0] == ("Stem", " x")
    hs = tmp_path / "h.txt"
    hs.write_text("Roof: A man is on a roof. he\n2\nsits.\nok [title] jumps [step] on.\nruns.\nfalls.\n")
    (item,) = TASKS["hellaswag"].read(hs)
    assert item.requests[1] == ("Roof: A man is on a roof. He", " ok. jumps on.") and item.gold == 2
    hs_json = write_jsonl(tmp_path / "h.jsonl", [{"activity_label": "Roof", "ctx_a": "A man is on a roof.",
                                                  "ctx_b": "he", "endings": ["a", "b", "c", "d"], "label": "3"}])
    assert TASKS["hellaswag"].read(hs_json)[0].requests[0] == ("Roof: A man is on a roof. He", " a")


def test_wikitext_text_joins_rows_as_the_hub_dataset(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(" \n = A = \n \n Text one . \n")
    rows = ["", " = A = \n", "", " Text one . \n"]  # datasets' wikitext rows: blank lines are ""
    assert wikitext_text(tmp_path / "wiki.test.raw") == "\n\n".join(rows)


@pytest.mark.parametrize("content,line,message", [
    ('{"question": "q", "choices": ["a", "b"], "gold": 0}\n{"question": "q", "choices": [\n', 2, "not valid JSON"),
    ('{"question": "q", "choices": ["a", "b"], "gold": 0}\n\n{"choices": ["a", "b"], "gold": 0}\n', 3,
     "missing field 'question'"),
    ('{"question": "q", "choices": ["a", "b"], "gold": 5}\n', 1, "gold answer must be an index in 0..1"),
])
def test_bad_task_line_names_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "arc.jsonl"
    path.write_text(content)
    with pytest.raises(sg.EvalDataError, match=f"{path}, line {line}: .*{message}"):
        TASKS["arc_easy"].read(path)


def test_bad_hellaswag_and_piqa_files_name_file_and_line(tmp_path):
    hs = tmp_path / "h.txt"
    hs.write_text("A: b. c\n1\na\nb\nc\nd\nA: b. c\nx\na\nb\nc\nd\n")
    with pytest.raises(sg.EvalDataError, match=f"{hs}, line 8: gold index must be 0-3"):
        TASKS["hellaswag"].read(hs)
    hs.write_text("A: b. c\n1\na\nb\n")
    with pytest.raises(sg.EvalDataError, match="from line 1, is incomplete"):
        TASKS["hellaswag"].read(hs)
    piqa = write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
    (tmp_path / "valid-labels.lst").write_text("0\n3\n")
    with pytest.raises(sg.EvalDataError, match=f"valid-labels.lst, line 2: gold answer must be an index in 0..1"):
        TASKS["piqa"].read(piqa)


def test_refuses_to_evaluate_on_calibration_data(llama, tok, tmp_path):
    data = tmp_path / "data"
    (data / "wikitext2").mkdir(parents=True)
    (data / "wikitext2" / "wiki.test.raw").write_text(TEXT)
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(data / "wikitext2" / "wiki.test.raw", calib / "renamed.txt")
    sources = resolve_sources(["wikitext2"], data_dir=data)
    for exclude, reason in [([data / "wikitext2" / "wiki.test.raw"], "that file was used"),
                            ([calib / "renamed.txt"], "same content"), ([calib], "same content"),
                            (["WikiText2"], "listed among")]:
        with pytest.raises(sg.CalibrationOverlapError, match=reason):
            check_not_calibration(sources, exclude)
    with pytest.raises(sg.CalibrationOverlapError):
        sg.evaluate(llama, tok, ["wikitext2"], data_dir=data, exclude=[calib / "renamed.txt"], progress=False)
    (calib / "renamed.txt").write_text(TEXT + "more")
    check_not_calibration(sources, [calib, "c4", tmp_path / "nothing-here"])


def test_data_folder_comes_from_the_environment_or_fails_clearly(llama, tok, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(sg.EvalDataError, match="no evaluation data folder: pass data_dir"):
        sg.evaluate(llama, tok, ["piqa"], progress=False)
    write_jsonl(tmp_path / "arc_easy" / "test.parsed_from_llm-adapters.jsonl", ARC)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert sg.evaluate(llama, tok, ["arc_easy"], progress=False).results[0].n == 2
    with pytest.raises(sg.EvalDataError, match="piqa: no file"):
        sg.evaluate(llama, tok, ["piqa"], progress=False)
    with pytest.raises(sg.EvalDataError, match="unknown task 'mmlu'"):
        sg.evaluate(llama, tok, ["mmlu"], progress=False)


def test_report_round_trips_through_json(llama, tok, tmp_path):
    (tmp_path / "d.txt").write_text(TEXT)
    path = write_jsonl(tmp_path / "arc.jsonl", ARC)
    report = sg.evaluate(llama, tok, {"arc_easy": path, "arc_challenge": path}, texts={"d": tmp_path / "d.txt"},
                         seq_len=16, limit=1, progress=False, model_name="tiny")
    report.save(tmp_path / "r.json")
    again = sg.EvalReport.load(tmp_path / "r.json")
    assert again == report
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["model"]["name"] == "tiny" and d["model"]["fingerprint"] == sg.trace(llama).fingerprint
    assert d["average"]["tasks"] == ["arc_easy", "arc_challenge"] and d["results"][0]["stderr"] is None
    assert {"task", "metric", "value", "n", "stderr", "seq_len", "seconds"} <= set(d["results"][2])
    with pytest.raises(sg.ShearGraphError, match="not a shear-graph evaluation report"):
        sg.EvalReport.from_json('{"model": {}}')


def test_runs_in_the_dtype_given(tok, tmp_path):
    model = tiny("llama", tok)
    path = write_jsonl(tmp_path / "arc.jsonl", ARC)
    report = sg.evaluate(model, tok, {"arc_easy": path}, dtype=torch.bfloat16, device="cpu", progress=False)
    assert report.model["dtype"] == "bfloat16" and 0 <= report.results[0].value <= 1


def test_lm_eval_adapter(llama, tok, monkeypatch):
    if "lm_eval" not in sys.modules:
        monkeypatch.setitem(sys.modules, "lm_eval", None)  # make the import fail even if installed later
        with pytest.raises(sg.ShearGraphError, match="pip install lm-eval"):
            sg.lm_eval_model(llama, tok)
    calls = {}

    class HFLM:
        def __init__(self, **kwargs):
            calls.update(kwargs)

    for name in ("lm_eval", "lm_eval.models", "lm_eval.models.huggingface"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["lm_eval.models.huggingface"].HFLM = HFLM
    assert isinstance(sg.lm_eval_model(llama, tok, batch_size=8), HFLM)
    assert calls == {"pretrained": llama, "tokenizer": tok, "batch_size": 8}


# -- command line ---------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(app, ["eval", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, llama, tok):
    root = tmp_path_factory.mktemp("eval")
    llama.save_pretrained(root / "dense")
    tok.save_pretrained(root / "dense")
    plan = sg.plan_by_magnitude(llama, sg.find_groups(sg.trace(llama)), 0.3)
    sg.save_pruned(sg.apply_plan(llama, plan), root / "pruned", tokenizer=tok)
    data = root / "data"
    write_jsonl(data / "piqa" / "valid.jsonl", [{"goal": "g", "sol1": "a cat", "sol2": "the mat"}] * 3)
    (data / "piqa" / "valid-labels.lst").write_text("0\n1\n0\n")
    (data / "wikitext2").mkdir()
    (data / "wikitext2" / "wiki.test.raw").write_text(TEXT)
    return root, data


@pytest.mark.parametrize("folder", ["dense", "pruned"])
def test_cli_eval_writes_results(cli_setup, tmp_path, folder):
    root, data = cli_setup
    result = run(root / folder, "--data-dir", data, "--seq-len", "16,32", "--limit", 2, "--out", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = sg.EvalReport.load(tmp_path / "r.json")
    assert [(r.task, r.metric, r.seq_len) for r in report.results][1:] == [("wikitext2", "perplexity", 16),
                                                                           ("wikitext2", "perplexity", 32)]
    assert report.results[0].task == "piqa" and report.results[0].n == 2
    assert report.model["pruned"] == (folder == "pruned") and report.model["name"] == str(root / folder)
    assert "wikitext2" in result.output and "perplexity" in result.output


def test_cli_refuses_calibration_data_before_loading(cli_setup, tmp_path):
    root, data = cli_setup
    result = run(tmp_path / "no-model", "--data-dir", data, "--tasks", "wikitext2",
                 "--exclude", data / "wikitext2" / "wiki.test.raw")
    assert result.exit_code == 2 and "used for calibration/recovery" in result.output


@pytest.mark.parametrize("args,message", [
    (["--seq-len", "1"], "--seq-len takes window lengths of at least 2"),
    (["--tasks", "mmlu"], "unknown task 'mmlu'"),
    (["--tasks", "piqa=", "--limit", "1"], "bad task 'piqa='"),
    (["--dtype", "int8"], "unknown --dtype 'int8'"),
    (["--text", "docs"], "--text takes NAME=FILE"),
])
def test_cli_bad_arguments(cli_setup, args, message):
    root, data = cli_setup
    result = run(root / "dense", "--data-dir", data, *args)
    assert result.exit_code == 2 and message in result.output


def test_cli_model_without_tokenizer(tmp_path, cli_setup):
    _, data = cli_setup
    build("llama").save_pretrained(tmp_path / "m")
    result = run(tmp_path / "m", "--data-dir", data, "--tasks", "piqa")
    assert result.exit_code == 2 and "has no tokenizer" in result.output


# -- real model (slow tier) -------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    import os

    from shear_graph.default_model import load_default_model

    if not os.environ.get(DATA_ENV):
        pytest.skip(f"set {DATA_ENV} to the evaluation data folder (data/eval in the shared folder)")
    return load_default_model()


@pytest.mark.slow
def test_smollm2_scores_equal_hand_computation_batched_or_not(smollm2, tmp_path):
    model, tok = smollm2
    items = TASKS["piqa"].read(sg.tasks.data_dir() / TASKS["piqa"].path)[:6]
    requests = [r for item in items for r in item.requests]
    encoded = [encode_pair(tok, c, x) for c, x in requests]
    one, batched = loglikelihoods(model, encoded, batch_size=1), loglikelihoods(model, encoded, batch_size=12)
    np.testing.assert_allclose(batched, one, rtol=1e-4)
    np.testing.assert_allclose(one[:2], [hand_loglikelihood(model, tok, c, x) for c, x in requests[:2]], rtol=1e-4)
    wiki = sg.tasks.data_dir() / "wikitext2" / "wiki.test.raw"
    (tmp_path / "wiki-head.txt").write_text(wiki.read_text()[:12000])
    report = sg.evaluate(model, tok, ["arc_easy"], texts={"wiki-head": tmp_path / "wiki-head.txt"}, limit=12,
                         seq_len=128, progress=False)
    arc, ppl = report.results
    assert arc.n == 12 and ppl.seq_len == 128 and 5 < ppl.value < 100
    assert report.model["parameters"] == 134515008


@pytest.mark.slow
def test_cli_eval_on_smollm2(smollm2, tmp_path):
    """Uses the smollm2 fixture for its skip when no evaluation data folder is set."""
    result = CliRunner().invoke(app, ["eval", "--tasks", "piqa", "--limit", "4", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = sg.EvalReport.load(tmp_path / "r.json")
    assert report.model["name"] == "smollm2-135m" and report.results[0].n == 4


@pytest.mark.slow
def test_pruned_smollm2_saved_and_evaluated_from_its_folder(smollm2, tmp_path):
    model, tok = smollm2
    plan = sg.plan_by_magnitude(model, sg.find_groups(sg.trace(model)), 0.1)
    sg.save_pruned(sg.apply_plan(model, plan), tmp_path / "m", tokenizer=tok)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "m"), "--tasks", "arc_easy", "--limit", "8",
                                      "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = sg.EvalReport.load(tmp_path / "r.json")
    assert report.model["pruned"] and report.model["parameters"] < 0.91 * 134515008
