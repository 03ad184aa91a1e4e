"""The README is a front door that stays true: short, its links lead somewhere, its commands run as
written (the fast ones run, the rest are checked against their --help), and its headline numbers
are the ones in benchmarks/RESULTS.md."""
from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import shear_graph as sg
from shear_graph.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(page: Path) -> set:
    """GitHub's heading anchors of a Markdown page."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {"".join(c for c in h.lower() if c.isalnum() or c in " -_").replace(" ", "-") for h in heads}


def _inline_commands(prefix: str) -> list:
    """Every `...` span and code-block line of the README that starts with ``prefix``."""
    spans = re.findall(r"`([^`\n]+)`", TEXT)
    blocks = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
              for line in block.splitlines()]
    return sorted({c.strip() for c in spans + blocks if c.strip().startswith(prefix)})


def _headline_rows() -> list:
    table = TEXT.split("<!-- headline results")[1].split("<!-- end of headline results -->")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[1:]
            if line.startswith("|") and not line.startswith("|---")][1:]


def test_readme_is_short():
    assert len(README.read_bytes()) < 15_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_local_link_leads_somewhere(page):
    for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", page.read_text()):
        target = next(t for t in target if t)
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name} links to {target}: no such heading"


def test_make_targets_exist():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    commands = _inline_commands("make ") + [c.split(" ", 1)[1] for c in _inline_commands("SHEAR_GRAPH_EVAL_DATA=")]
    assert {"make run", "make test"} <= set(commands)
    for command in commands:
        done = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"`{command}`: {done.stderr}"


def test_cli_commands_and_their_flags_exist():
    commands = _inline_commands("shear-graph ")
    verbs = typer.main.get_command(app).commands
    assert {c.split()[1] for c in commands} >= {"groups", "oneshot", "analyze", "prune", "eval"}
    for command in commands:
        words = command.split()
        if words[1].isupper():  # a placeholder (`shear-graph VERB --help`)
            continue
        if words[1] not in verbs:
            raise AssertionError(f"`{command}`: shear-graph has no command {words[1]}")
        flags = {o for p in verbs[words[1]].params for o in p.opts + p.secondary_opts}
        missing = [w for w in words[2:] if w.startswith("--") and w not in flags]
        assert not missing, f"`{command}`: {words[1]} has no {missing}"


def test_benchmark_commands_and_their_flags_exist():
    rows = _headline_rows()
    commands = [re.search(r"`([^`]+)`", r[-1]).group(1) for r in rows if "`" in r[-1]]
    help_text = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    for command in commands:
        words = command.split()
        assert (ROOT / "benchmarks" / words[0]).is_file(), f"`{command}`: no benchmarks/{words[0]}"
        if words[0] == "peers.py":
            assert words[1] in help_text and all(w in help_text for w in words[2:] if w.startswith("--")), command


def test_python_example_names_exist():
    code = re.search(r"## Python API\n\n```python\n(.*?)```", TEXT, flags=re.S).group(1)
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = __import__(node.module, fromlist=[a.name for a in node.names])
            assert all(hasattr(module, a.name) for a in node.names), node.module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sg":
            assert hasattr(sg, node.attr), f"the README's example calls sg.{node.attr}, which does not exist"


def test_headline_numbers_are_those_in_results():
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    rows = _headline_rows()
    assert 0 < len(rows) <= 10
    for row in rows:
        for cell in row[:-1]:
            for number in re.findall(r"(?<![\w.])\d+\.\d+(?![\d.])", cell):
                assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", results), \
                    f"README headline {number} ({row[0]}) is not in benchmarks/RESULTS.md"
        for cell in row[1:-1]:  # the results themselves: integers too
            for number in re.findall(r"(?<![\w.])\d+(?![\w.])", cell):
                assert re.search(rf"(?<![\d.]){number}(?![\d])", results), \
                    f"README headline {number} ({row[0]}) is not in benchmarks/RESULTS.md"
