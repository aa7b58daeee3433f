"""Commands stop on bad arguments before they create anything: a missing workdir, a missing input."""
from __future__ import annotations

from click.testing import CliRunner

from pipeline.cli import main


def test_report_no_write_on_a_missing_workdir_says_so_and_creates_nothing(tmp_path):
    missing = tmp_path / "nonexistent"
    result = CliRunner().invoke(main, ["report", "--no-write", "--workdir", str(missing)])
    assert result.exit_code == 2
    assert f"no such workdir: {missing}" in result.output
    assert not missing.exists()


def test_run_with_a_missing_input_creates_no_workdir_and_no_lock(tmp_path):
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["run", "--input", str(tmp_path / "nope"), "--workdir", str(workdir), "--quiet"])
    assert result.exit_code == 2
    assert "input not found" in result.output
    assert not workdir.exists()


def test_archive_with_an_empty_input_directory_creates_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["archive", "--input", str(tmp_path / "empty"), "--workdir", str(workdir), "--quiet"])
    assert result.exit_code == 2
    assert "no input files found" in result.output
    assert not workdir.exists()
