"""The command line in-process, through Typer's test runner: fast checks of what every
command promises about arguments, help and errors (the real console script is exercised
by the other tests)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentflow.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGENTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_help_lists_every_command_but_the_hidden_one() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("run", "resume", "status", "logs", "attach", "stop", "init", "plan"):
        assert name in res.output
    assert "drive" not in res.output  # the detached orchestrator's own command


def test_version_is_the_installed_packages() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"agentflow {metadata.version('agentflow')}\n"
    assert "--version" in runner.invoke(app, ["--help"]).output


def test_init_then_validate(tmp_path: Path) -> None:
    res = runner.invoke(app, ["init", "proj"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "proj" / "runbook.md").exists()
    res = runner.invoke(app, ["validate", "proj/workflow.yaml"])
    assert res.exit_code == 0, res.output
    assert "valid workflow 'starter', 3 steps" in res.output


def test_a_bad_workflow_is_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text("version: 1\nname: x\nsteps:\n  - id: a\n    rn: echo\n")
    res = runner.invoke(app, ["validate", "wf.yaml"])
    assert res.exit_code == 2
    assert "wf.yaml:5:5" in res.output
    assert "Traceback" not in res.output


def test_an_unknown_run_says_so(tmp_path: Path) -> None:
    for args in (["status", "nope"], ["logs", "nope", "a"], ["attach", "nope"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "nope" in res.output


def test_attach_has_write_and_no_read_only_flag() -> None:
    res = runner.invoke(app, ["attach", "--help"], env={"COLUMNS": "120"})
    assert "--write" in res.output
    assert "--read-only" not in res.output
