"""Configuration by environment: only the documented variables count (a field's own name,
such as HOME or MODEL, must never be read), and empty values mean unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.docstrings import attribute_docstrings
from agentflow.settings import Settings, settings


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AGENTFLOW_HOME", "AGENTFLOW_MODEL", "AGENTFLOW_TMUX_SOCKET", "CI",
                 "GITHUB_ACTIONS", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_only_the_documented_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.setenv("MODEL", "not-this-one")
    monkeypatch.setenv("TMUX_SOCKET", "/nope")
    s = settings()
    assert s.home == Path(".agentflow")  # not $HOME: runs must not land in the user's home
    assert s.model is None
    assert s.tmux_socket is None


def test_values_and_empty_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_HOME", "")
    monkeypatch.setenv("AGENTFLOW_MODEL", "")
    assert settings().home == Path(".agentflow")
    assert settings().model is None
    monkeypatch.setenv("AGENTFLOW_HOME", "/data/af")
    assert settings().home_dir == Path("/data/af")
    for value, expected in (("true", True), ("1", True), ("false", False), ("0", False)):
        monkeypatch.setenv("CI", value)
        assert settings().ci is expected, value


def test_every_field_names_its_variable() -> None:
    docs = attribute_docstrings(Settings)
    for name, field in Settings.model_fields.items():
        assert field.validation_alias is not None, name
        assert docs.get(name), name  # the generated configuration page needs its docstring
