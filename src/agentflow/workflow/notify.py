"""The workflow's ``notify:`` block: who is told when a run ends, fails or waits for a person.

Its own module, not ``model.py``'s: that module is the rest of the format and is long enough.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from agentflow.workflow.base import Model

NotifyEvent = Literal["end", "failure", "blocked", "stall"]
"""``end``: the run succeeded; ``failure``: it failed; ``blocked``: a step waits for a
person (escalated), or the run ended so; ``stall``: a step printed nothing for its
``stall_timeout``."""

DEFAULT_ON: tuple[NotifyEvent, ...] = ("end", "failure", "blocked")

ENV_REF = re.compile(r"^\$\{\{\s*env\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
"""A webhook given as ``${{ env.NAME }}``: a Slack webhook's address is itself a secret,
better kept out of a committed workflow file."""


class Notify(Model):
    """Where to send a notification when the run ends, fails or waits for a person."""

    webhook: str | None = None
    """A URL (``http://`` or ``https://``) that gets a JSON POST: a Slack-compatible
    ``text`` and the fields ``event``, ``run_id``, ``workflow``, ``status``, ``step``,
    ``message``, ``report``. Or ``${{ env.NAME }}``: the URL from agentflow's environment
    (list NAME in ``secrets`` to have it masked)."""
    command: str | None = None
    """A shell command run on this machine (not in the sandbox) for each notification,
    with the notification in ``AGENTFLOW_EVENT``, ``AGENTFLOW_RUN_ID``,
    ``AGENTFLOW_WORKFLOW``, ``AGENTFLOW_STATUS``, ``AGENTFLOW_STEP``,
    ``AGENTFLOW_MESSAGE``, ``AGENTFLOW_REPORT``, ``AGENTFLOW_TEXT`` and as JSON on its
    standard input; 30 s at most."""
    on: list[NotifyEvent] = Field(default_factory=lambda: list(DEFAULT_ON))
    """Which events: ``end``, ``failure``, ``blocked``, ``stall``. By default all but
    ``stall``."""

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or ENV_REF.match(value) or re.match(r"^https?://[^\s/]+", value):
            return value
        raise ValueError("use an http:// or https:// URL, or ${{ env.NAME }}")

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("command: an empty command")
        return value
