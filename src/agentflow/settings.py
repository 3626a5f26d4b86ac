"""Configuration from the environment, read in this one place.

Every variable agentflow reads (its own ``AGENTFLOW_*``, the Anthropic SDK's, ``CI``) is a
field here, with its meaning; ``docs/reference/configuration.md`` is generated from this
class. Settings are read afresh on each call of ``settings()``: tests and the orchestrator
change the environment between runs in one process.

Not here: a workflow's ``secrets`` (their names come from the workflow, not from us) and
the environment a step inherits on the local sandbox (``sandbox/local.py``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    AliasChoices,
    ByteSize,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentflow.errors import UsageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    home: Path = Field(Path(".agentflow"), validation_alias="AGENTFLOW_HOME")
    """``AGENTFLOW_HOME``: where runs are kept (``runs/<run-id>/``). Relative paths are taken
    from the current directory."""

    model: str | None = Field(None, validation_alias="AGENTFLOW_MODEL")
    """``AGENTFLOW_MODEL``: the model of the LLM planner and diagnosis when the workflow's
    ``planner.model`` does not name one. Unset: ``claude-sonnet-4-5`` (``DEFAULT_MODEL`` in
    ``agent/llm.py``)."""

    tmux_socket: Path | None = Field(None, validation_alias="AGENTFLOW_TMUX_SOCKET")
    """``AGENTFLOW_TMUX_SOCKET``: the tmux server's socket, instead of one per home under
    ``$XDG_RUNTIME_DIR/agentflow`` (or ``~/.cache/agentflow``)."""

    tmux_no_control: bool = Field(False, validation_alias="AGENTFLOW_TMUX_NO_CONTROL")
    """``AGENTFLOW_TMUX_NO_CONTROL``: set (``1``) to run each tmux command of a run as a
    tmux client process of its own instead of through one control-mode client (``tmux
    -C``): slower, for a tmux whose control mode misbehaves."""

    anthropic_api_key: str | None = Field(None, validation_alias="ANTHROPIC_API_KEY", repr=False)
    """``ANTHROPIC_API_KEY``: the key of the Anthropic API. Without it, a workflow with
    ``planner: {type: anthropic}`` needs a saved plan (``--plan``) or ``--planner static``,
    and ``on_failure: diagnose`` needs ``--no-diagnose`` (else exit 4)."""

    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    """``ANTHROPIC_BASE_URL``: another endpoint for the Messages API (a proxy, a gateway)."""

    llm_record: Path | None = Field(None, validation_alias="AGENTFLOW_LLM_RECORD")
    """``AGENTFLOW_LLM_RECORD``: a file to which every request to the model and its answer
    are appended, one JSON line each (secrets are masked before anything is sent): a real
    transcript to keep as a test fixture."""

    llm_replay: Path | None = Field(None, validation_alias="AGENTFLOW_LLM_REPLAY")
    """``AGENTFLOW_LLM_REPLAY``: a file written through ``AGENTFLOW_LLM_RECORD`` whose
    answers are given again, in order, instead of asking the model (no key, no network)."""

    artifact_copy_max: ByteSize = Field(
        ByteSize(100_000_000), validation_alias="AGENTFLOW_ARTIFACT_COPY_MAX"
    )
    """``AGENTFLOW_ARTIFACT_COPY_MAX``: the largest artifact copied into the run directory,
    in bytes or with a unit (``500MB``, ``2GiB``; default 100 MB). A larger file is only
    recorded, by path, size and sha256; ``0`` records every artifact and copies none."""

    cache_max: ByteSize = Field(ByteSize(5_000_000_000), validation_alias="AGENTFLOW_CACHE_MAX")
    """``AGENTFLOW_CACHE_MAX``: how large the step cache (``$AGENTFLOW_HOME/cache``) may grow,
    in bytes or with a unit (default 5 GB). A step whose files would take more is not
    cached; ``agentflow gc`` removes the least recently used entries over it."""

    gpus: str | None = Field(None, validation_alias="AGENTFLOW_GPUS")
    """``AGENTFLOW_GPUS``: the GPUs steps with ``resources.gpus`` draw from, comma-separated
    ids (``0,1,2,3``), shared by every run of the home. Unset: the GPUs ``nvidia-smi``
    lists, else none. Set but empty: none."""

    ci: bool = Field(False, validation_alias=AliasChoices("CI"))
    """``CI``: set (to anything but ``0``, ``false``, ``no``) by CI systems: plain lines,
    no live view, no questions."""

    github_actions: bool = Field(False, validation_alias="GITHUB_ACTIONS")
    """``GITHUB_ACTIONS``: set by GitHub Actions: steps' lines are folded into groups and
    failures become ``::error`` annotations."""

    @field_validator("ci", "github_actions", "tmux_no_control", mode="before")
    @classmethod
    def _flag(cls, value: object) -> bool:
        return str(value).strip().lower() not in ("", "0", "false", "no", "none")

    @field_validator(
        "model",
        "anthropic_api_key",
        "anthropic_base_url",
        "tmux_socket",
        "llm_record",
        "llm_replay",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return value or None

    @field_validator("artifact_copy_max", "cache_max", mode="before")
    @classmethod
    def _size(cls, value: object, info: ValidationInfo) -> object:
        name, default = _SIZES[info.field_name or ""]
        if value in ("", None):
            return ByteSize(default)
        try:
            return TypeAdapter(ByteSize).validate_python(value)
        except ValidationError:
            # Not a ValueError: it reaches the command line as one line, not a traceback.
            raise UsageError(
                f"{name}={value!r} is not a size: give bytes, or a number with a unit (500MB, 2GiB)"
            ) from None

    @field_validator("home", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return value or ".agentflow"

    @property
    def home_dir(self) -> Path:
        # Resolved once, here: every later use of the home goes by its real path, so a
        # link on the way to it (a step may replace one in a folder it can write) is
        # never followed again.
        return self.home.resolve()


_SIZES = {
    "artifact_copy_max": ("AGENTFLOW_ARTIFACT_COPY_MAX", 100_000_000),
    "cache_max": ("AGENTFLOW_CACHE_MAX", 5_000_000_000),
}
"""Each size setting's variable and default (an empty value means the default)."""


def settings() -> Settings:
    """The settings as the environment says now."""
    return Settings()
