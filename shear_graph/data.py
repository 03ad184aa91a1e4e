"""Text domains for calibration and held-out evaluation, cut into token blocks.

A domain is named text: a local ``.txt`` file, a ``.jsonl`` file (one
``{"text": ...}`` per line), a Hugging Face ``datasets`` object (its ``text``
column), a list of strings, or the embedded defaults that need no download:
CPython's pydoc topics (English technical prose) and its standard-library
sources (code).

:func:`make_blocks` tokenizes each domain into fixed-length blocks, shuffles
the block order with a seed and gives the first ``n_eval`` blocks to the
evaluation split and the next ``n_calib`` to calibration, so the two never
share a token; the :class:`DataSplit` it returns records which blocks went where.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import ShearGraphError


class DataError(ShearGraphError):
    """Text data that cannot be used (empty, too short, not text, wrong tokenizer)."""


@dataclass
class Domain:
    """Named text. ``source`` says where it came from (a path, ``datasets:<name>``,
    ``python:pydoc_topics``...)."""

    name: str
    texts: list
    source: str

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
        return h.hexdigest()


def domain_from_file(path, name: str | None = None, text_field: str = "text") -> Domain:
    """Read a ``.txt`` file (the whole file is one text) or a ``.jsonl`` file
    (``text_field`` of each line).

    Raises
    ------
    DataError
        The file is missing, not UTF-8 text, or a jsonl line is not an object
        with ``text_field`` (the message names file and line).
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DataError(f"domain '{name}': no file at {path}")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"domain '{name}': {path} is not a text file (binary content); give .txt or .jsonl")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"domain '{name}': {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if path.suffix != ".jsonl":
        return Domain(name, [text], str(path))
    texts = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)[text_field]))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}, line {i}: expected a JSON object with a '{text_field}' field ({e})") from e
    return Domain(name, texts, str(path))


def domain_from_dataset(dataset, name: str, text_field: str = "text") -> Domain:
    """A domain from a Hugging Face ``datasets.Dataset`` (its ``text_field`` column).

    Raises
    ------
    DataError
        If the dataset has no such column.
    """
    columns = getattr(dataset, "column_names", None) or []
    if text_field not in columns:
        raise DataError(f"domain '{name}': the dataset has no '{text_field}' column (columns: {columns})")
    label = getattr(getattr(dataset, "info", None), "dataset_name", None) or name
    return Domain(name, [str(t) for t in dataset[text_field]], f"datasets:{label}")


def default_domains(max_chars: int = 600_000, general: bool = True) -> list:
    """The embedded default: ``python_docs`` (pydoc topics, English prose) and
    ``python_code`` (standard-library sources, in sorted file order), each cut
    to ``max_chars`` characters, and with ``general`` the Brown Corpus's
    training documents as four genre domains (:func:`shear_graph.brown.brown_domains`,
    whole documents up to ``max_chars`` each; left out where the corpus is not
    installed, see :func:`shear_graph.brown.corpus_dir`). Needs no download.

    Raises
    ------
    DataError
        ``$SHEAR_GRAPH_BROWN`` names a folder without the corpus.
    """
    import sysconfig

    from pydoc_data.topics import topics

    docs = "\n\n".join(topics[k] for k in sorted(topics))[:max_chars]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code, size = [], 0
    for f in sorted(stdlib.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        code.append(text)
        size += len(text)
        if size >= max_chars:
            break
    python = [Domain("python_docs", [docs], "python:pydoc_data.topics"),
              Domain("python_code", ["\n\n".join(code)[:max_chars]], f"python:{stdlib}/*.py")]
    if not general:
        return python
    from .brown import brown_domains, corpus_dir

    return python + (brown_domains(max_chars=max_chars)[0] if corpus_dir() is not None else [])


@dataclass
class DataSplit:
    """Which blocks of which domain went to calibration and to evaluation.

    Attributes
    ----------
    block_len : int
        Tokens per block.
    seed : int
    domains : dict
        name -> ``{"source", "sha256", "n_tokens", "n_blocks", "eval_blocks",
        "calib_blocks"}`` (block indices in the domain's token stream).
    """

    block_len: int
    seed: int
    domains: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Blocks:
    """Token blocks per split: ``calib[name]`` and ``eval[name]`` are int64
    tensors of shape [n_blocks, block_len]."""

    calib: dict
    eval: dict
    split: DataSplit

    def all_calib(self) -> torch.Tensor:
        return torch.cat(list(self.calib.values())) if self.calib else torch.empty(0, self.split.block_len)

    def all_eval(self) -> torch.Tensor:
        return torch.cat(list(self.eval.values())) if self.eval else torch.empty(0, self.split.block_len)


def check_tokenizer(model, tokenizer) -> None:
    """Raise :class:`DataError` if the tokenizer can produce ids the model's
    embedding has no row for."""
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0]
    if len(tokenizer) > rows:
        raise DataError(
            f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows: "
            "they do not belong together; load the tokenizer saved with this model"
        )


def make_blocks(tokenizer, domains: list, block_len: int = 128, n_eval: int = 16, n_calib: int = 32,
                seed: int = 0) -> Blocks:
    """Tokenize domains into blocks and split them into evaluation and calibration.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    domains : list of Domain
    block_len : int
        Tokens per block (documents are joined with the EOS token first).
    n_eval, n_calib : int
        Blocks per domain for each split (fewer if the domain is short: the
        evaluation split is filled first, and calibration gets at least one block).

    Returns
    -------
    Blocks

    Raises
    ------
    DataError
        A domain with fewer than two blocks of tokens (one for each split), or
        duplicate domain names.
    """
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise DataError(f"domain names must be unique, got {names}")
    split = DataSplit(block_len, seed)
    calib, evals = {}, {}
    sep = tokenizer.eos_token or "\n\n"
    gen = torch.Generator().manual_seed(seed)
    for d in domains:
        text = sep.join(t for t in d.texts if t)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0] if text else torch.empty(0)
        n_blocks = len(ids) // block_len
        if n_blocks < 2:
            raise DataError(
                f"domain '{d.name}' has {len(ids)} tokens: at least {2 * block_len} are needed "
                f"(one block of {block_len} for evaluation and one for calibration)"
            )
        blocks = ids[: n_blocks * block_len].reshape(n_blocks, block_len).long()
        order = torch.randperm(n_blocks, generator=gen)
        n_e = min(n_eval, n_blocks - 1)
        n_c = min(n_calib, n_blocks - n_e)
        e_idx, c_idx = order[:n_e], order[n_e: n_e + n_c]
        evals[d.name], calib[d.name] = blocks[e_idx], blocks[c_idx]
        split.domains[d.name] = {
            "source": d.source, "sha256": d.sha256, "n_tokens": int(len(ids)), "n_blocks": int(n_blocks),
            "eval_blocks": sorted(e_idx.tolist()), "calib_blocks": sorted(c_idx.tolist()),
        }
    return Blocks(calib, evals, split)
