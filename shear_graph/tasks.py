"""Evaluation tasks read from local files, with lm-evaluation-harness prompts.

A zero-shot task turns each line of its file into an :class:`Item`: one
``(context, continuation)`` log-likelihood request per choice, the gold
index, and the choice texts whose lengths normalize ``acc_norm``. Prompts,
target delimiter (one space) and choices are those of lm-evaluation-harness
0.4 (its task YAMLs), so accuracies compare with the published tables.
Perplexity sources are plain text: WikiText-2 (the raw test file) and any
text file a user names as a domain.

Files are found under a data folder (``data_dir``, else the
``SHEAR_GRAPH_EVAL_DATA`` environment variable) at each task's ``path``, or
at a path given per task. Tasks are registered with :func:`register_task`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import EvalDataError

DATA_ENV = "SHEAR_GRAPH_EVAL_DATA"
DELIMITER = " "  # lm-eval's target_delimiter between context and choice


@dataclass(frozen=True)
class Item:
    """One multiple-choice question as log-likelihood requests.

    Attributes
    ----------
    requests : list of (str, str)
        One ``(context, continuation)`` pair per choice.
    gold : int
        Index of the right choice.
    choices : list of str
        The choice texts without the delimiter; ``acc_norm`` divides each
        summed log-probability by its choice's length in UTF-8 bytes.
    """

    requests: list
    gold: int
    choices: list


@dataclass(frozen=True)
class Task:
    """A zero-shot task: where its file lies and how to read it.

    Attributes
    ----------
    name : str
        lm-eval's task name (``arc_easy``, ``hellaswag``, ...).
    metric : str
        The metric papers report for it (``acc`` or ``acc_norm``).
    path : str
        Default file, relative to the data folder.
    read : callable
        ``read(path) -> list[Item]``; raises :class:`EvalDataError` naming
        the file and line of any malformed item.
    metrics : tuple of str
        Metrics computed (``acc_norm`` is meaningless where the choices are
        contexts, as in WinoGrande).
    companions : callable, optional
        ``companions(path) -> [Path]``: other files the task reads beside
        ``path`` (PIQA's labels), guarded and hashed with it.
    """

    name: str
    metric: str
    path: str
    read: Callable
    metrics: tuple = ("acc", "acc_norm")
    companions: Callable | None = None

    def files(self, path: Path) -> list:
        """``path`` and those of its companion files that exist."""
        return [path] + [f for f in (self.companions(path) if self.companions else []) if f.is_file()]


TASKS: dict = {}
# Perplexity sources known by name: name -> (default path, reader of the text).
TEXTS: dict = {}


def register_task(name: str, metric: str, path: str, metrics: tuple = ("acc", "acc_norm"),
                  companions: Callable | None = None):
    """Decorator registering ``read(path) -> list[Item]`` as task ``name``
    (the other arguments as :class:`Task`'s attributes)."""
    def add(read: Callable) -> Callable:
        TASKS[name] = Task(name, metric, path, read, metrics, companions)
        return read
    return add


def data_dir(path=None) -> Path:
    """The evaluation data folder: ``path``, else ``$SHEAR_GRAPH_EVAL_DATA``.

    Raises
    ------
    EvalDataError
        Neither is set, or the folder does not exist.
    """
    if path is None:
        path = os.environ.get(DATA_ENV)
        if not path:
            raise EvalDataError(
                f"no evaluation data folder: pass data_dir (--data-dir DIR) or set {DATA_ENV}; the folder "
                f"holds one subfolder per task ({', '.join(f'{t.path}' for t in TASKS.values())}, "
                f"{', '.join(p for p, _ in TEXTS.values())})"
            )
    path = Path(path)
    if not path.is_dir():
        raise EvalDataError(f"evaluation data folder {path} does not exist; give the folder that holds the task "
                            "files (README: Evaluation data)")
    return path


def available(path=None) -> list:
    """Tasks and texts whose default file exists under the data folder ``path``."""
    root = data_dir(path)
    known = {**{n: t.path for n, t in TASKS.items()}, **{n: p for n, (p, _) in TEXTS.items()}}
    return [n for n, rel in known.items() if (root / rel).is_file()]


# -- reading ------------------------------------------------------------------

def _json_lines(path: Path, parse: Callable) -> list:
    """``parse(doc)`` for each non-blank line of a JSON-lines file; a line that
    is not JSON or that ``parse`` rejects is reported with file and line."""
    out = []
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(parse(json.loads(line)))
                except json.JSONDecodeError as e:
                    raise EvalDataError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno})") from e
                except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                    raise EvalDataError(f"{path}, line {n}: {_reason(e)}") from e
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path}, line {n + 1}: not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise EvalDataError(f"cannot read {path}: {e.strerror or e}") from e
    if not out:
        raise EvalDataError(f"{path} holds no items")
    return out


def _reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return str(e) or type(e).__name__


def _text(doc: dict, key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _gold(value, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"gold answer must be an index in 0..{n - 1}, got {value!r}")
    return value


def _mc(context: str, choices: list, gold: int) -> Item:
    """The usual item: one context, each choice after the delimiter."""
    if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"need at least two string choices, got {choices!r}")
    return Item([(context, DELIMITER + c) for c in choices], _gold(gold, len(choices)), list(choices))


# -- tasks --------------------------------------------------------------------

@register_task("boolq", "acc", "boolq/dev.jsonl")
def read_boolq(path: Path) -> list:
    """BoolQ dev set: ``{title, passage, question, answer: bool}`` per line
    (Google's release), or ``super_glue/boolq``'s ``{passage, question,
    label: 0/1}``.

    lm-eval reads ``super_glue/boolq``, whose passages are ``"{title} --
    {passage}"``; a separate title is joined the same way.
    """
    def parse(doc):
        answer = doc["answer"] if "answer" in doc else doc["label"]
        if not isinstance(answer, (bool, int)) or answer not in (0, 1):
            raise ValueError(f"answer must be true/false, got {answer!r}")
        passage = _text(doc, "passage")
        if "title" in doc:
            passage = f"{_text(doc, 'title')} -- {passage}"
        context = f"{passage}\nQuestion: {_text(doc, 'question')}?\nAnswer:"
        return _mc(context, ["no", "yes"], int(answer))
    return _json_lines(path, parse)


def _piqa_labels_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-labels.lst")


@register_task("piqa", "acc", "piqa/valid.jsonl", companions=lambda path: [_piqa_labels_path(path)])
def read_piqa(path: Path) -> list:
    """PIQA: ``{goal, sol1, sol2}`` per line, labels (0/1) one per line in
    ``<stem>-labels.lst`` beside it (the official layout), or a ``label``
    field in each line."""
    docs = _json_lines(path, lambda doc: (f"Question: {_text(doc, 'goal')}\nAnswer:",
                                          [_text(doc, "sol1"), _text(doc, "sol2")], doc.get("label")))
    labels_path = _piqa_labels_path(path)
    if all(label is not None for _, _, label in docs):
        labels = [(path, n, label) for n, (_, _, label) in enumerate(docs, 1)]
    elif labels_path.is_file():
        rows = [(labels_path, n, int(r) if r.strip().isdigit() else r.strip())
                for n, r in enumerate(read_text(labels_path).splitlines(), 1) if r.strip()]
        if len(rows) != len(docs):
            raise EvalDataError(f"{labels_path} has {len(rows)} labels for {len(docs)} items in {path}")
        labels = rows
    else:
        raise EvalDataError(f"{path}: items carry no 'label' and there is no {labels_path.name} beside it")
    items = []
    for (context, choices, _), (where, row, label) in zip(docs, labels):
        try:
            items.append(_mc(context, choices, label))
        except ValueError as e:
            raise EvalDataError(f"{where}, line {row}: {e}") from e
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag clean-up: strip, WikiHow ``[title]`` to a full
    stop, other bracket tags dropped, double spaces single."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


# ActivityNet contexts end in an unfinished sentence (the dataset's ctx_b), e.g.
# "A man is sitting on a roof. he": lm-eval capitalizes ctx_b.
_CTX_B = re.compile(r"^(.*\. )([a-z][^.]*)$", re.S)


@register_task("hellaswag", "acc_norm", "hellaswag/hellaswag_val_full.txt")
def read_hellaswag(path: Path) -> list:
    """HellaSwag validation set, in either layout:

    - ``.jsonl``, the dataset's own fields ``{activity_label, ctx_a, ctx_b,
      endings, label}``: context ``activity_label + ": " + ctx_a + " " +
      ctx_b.capitalize()``, exactly as lm-eval;
    - ``.txt``, six lines per item (``activity_label: context``, gold index,
      four endings). The text has no ctx_a/ctx_b split, so a trailing
      unfinished sentence that starts lower-case is taken for ctx_b and its
      first letter capitalized.
    """
    if path.suffix == ".jsonl":
        def parse(doc):
            ctx = _text(doc, "ctx_a") + " " + _text(doc, "ctx_b").capitalize()
            context = hellaswag_preprocess(_text(doc, "activity_label") + ": " + ctx)
            return _mc(context, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))
        return _json_lines(path, parse)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise EvalDataError(f"cannot read {path}: {e}") from e
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise EvalDataError(f"{path}: {len(lines)} lines is not six per item (context, gold index, 4 endings); "
                            f"the last item, from line {len(lines) - len(lines) % 6 + 1}, is incomplete")
    items = []
    for start in range(0, len(lines), 6):
        context, gold, endings = lines[start], lines[start + 1].strip(), lines[start + 2:start + 6]
        if not gold.isdigit() or int(gold) > 3:
            raise EvalDataError(f"{path}, line {start + 2}: gold index must be 0-3, got {gold!r}")
        if ": " not in context:
            raise EvalDataError(f"{path}, line {start + 1}: expected 'activity_label: context', got {context[:60]!r}")
        m = _CTX_B.match(context)
        if m:
            context = m.group(1) + m.group(2)[0].upper() + m.group(2)[1:]
        items.append(_mc(hellaswag_preprocess(context), [hellaswag_preprocess(e) for e in endings], int(gold)))
    if not items:
        raise EvalDataError(f"{path} holds no items")
    return items


def _question_and_choices(doc: dict, stem: str) -> tuple:
    """``(question, choices, gold)`` from the three layouts ARC and OBQA come in:
    ``{question, choices: [str], gold}``; Hugging Face ``{<stem>, choices:
    {text, label}, answerKey}``; AI2's ``{question: {stem, choices: [{text,
    label}]}, answerKey}``."""
    if isinstance(doc.get("question"), dict):
        q = doc["question"]
        texts, labels = [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
        question = _text(q, "stem")
    elif isinstance(doc.get("choices"), dict):
        texts, labels = doc["choices"]["text"], doc["choices"]["label"]
        question = _text(doc, stem if stem in doc else "question")
    else:
        return _text(doc, "question"), doc["choices"], doc["gold"]
    key = str(doc["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not among the choice labels {labels}")
    return question, texts, labels.index(key)


def _read_arc(path: Path) -> list:
    def parse(doc):
        question, choices, gold = _question_and_choices(doc, "question")
        return _mc(f"Question: {question}\nAnswer:", choices, gold)
    return _json_lines(path, parse)


register_task("arc_easy", "acc", "arc_easy/test.parsed_from_llm-adapters.jsonl")(_read_arc)
register_task("arc_challenge", "acc_norm", "arc_challenge/test.jsonl")(_read_arc)


@register_task("openbookqa", "acc_norm", "openbookqa/test.jsonl")
def read_openbookqa(path: Path) -> list:
    """OpenBookQA (main) test set; the prompt is the bare question stem."""
    def parse(doc):
        question, choices, gold = _question_and_choices(doc, "question_stem")
        return _mc(question, choices, gold)
    return _json_lines(path, parse)


@register_task("winogrande", "acc", "winogrande/dev.jsonl", metrics=("acc",))
def read_winogrande(path: Path) -> list:
    """WinoGrande (xl) dev set: ``{sentence, option1, option2, answer: "1"|"2"}``.

    Partial scoring, as lm-eval: each option fills the blank ``_`` to make a
    context, and the same continuation (the rest of the sentence) is scored
    after each context.
    """
    def parse(doc):
        sentence = _text(doc, "sentence")
        if "_" not in sentence:
            raise ValueError("sentence has no blank '_'")
        blank = sentence.index("_")
        contexts = [sentence[:blank] + _text(doc, "option1"), sentence[:blank] + _text(doc, "option2")]
        answer = str(doc["answer"]).strip()
        if answer not in ("1", "2"):
            raise ValueError(f"answer must be '1' or '2', got {doc['answer']!r}")
        target = DELIMITER + sentence[blank + 1:].strip()
        return Item([(c, target) for c in contexts], int(answer) - 1, contexts)
    return _json_lines(path, parse)


# -- perplexity text -------------------------------------------------------------

def wikitext_text(path: Path) -> str:
    """The WikiText-2 raw test file as perplexity papers tokenize it.

    LLM-Pruner, SparseGPT and GPTQ join the Hugging Face rows with blank lines
    (``"\\n\\n".join(test["text"])``); a row is one line of the raw file with
    its newline, or ``""`` for a blank line. This rebuilds that string from
    the raw file.
    """
    rows = [line if line.strip() else "" for line in read_text(path).splitlines(keepends=True)]
    return "\n\n".join(rows)


def read_text(path: Path) -> str:
    """A UTF-8 text file, whole.

    Raises
    ------
    EvalDataError
        The file is missing, unreadable, not UTF-8, or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvalDataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise EvalDataError(f"cannot read {path}: {e.strerror or e}") from e
    if not text.strip():
        raise EvalDataError(f"{path} is empty")
    return text


TEXTS["wikitext2"] = ("wikitext2/wiki.test.raw", wikitext_text)
