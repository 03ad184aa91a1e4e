from typer.testing import CliRunner

from shear_graph.cli import app


def test_missing_model_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "is not a model folder (no config.json)" in result.output


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "o").mkdir()
    result = CliRunner().invoke(app, ["prune", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pass --overwrite" in result.output


def test_unknown_kind(tmp_path):
    result = CliRunner().invoke(app, ["prune", "--kinds", "ffn,heads", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown group kind(s) ['heads']" in result.output
