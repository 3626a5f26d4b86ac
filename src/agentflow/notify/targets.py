"""Where a run's notifications go: the workflow's ``notify:`` and the ``--notify`` URL,
which is kept in the run directory (``notify.json``) so that ``resume`` and a detached
run's own orchestrator send to it too."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agentflow.errors import UsageError
from agentflow.store import RunDir
from agentflow.workflow.notify import DEFAULT_ON, ENV_REF, NotifyEvent

if TYPE_CHECKING:
    from agentflow.workflow.model import Workflow

NOTIFY_FILE = "notify.json"
"""In the run directory: the ``--notify`` URL given to ``run``, ``resume`` or ``rerun``."""


@dataclass(frozen=True)
class Targets:
    """Where notifications go, and which events are wanted."""

    webhooks: tuple[str, ...] = ()
    command: str | None = None
    on: frozenset[NotifyEvent] = frozenset(DEFAULT_ON)
    cwd: Path = Path()
    """Where the command runs: the workflow's folder."""


def checked_url(url: str | None) -> str | None:
    """``--notify``'s value, checked before anything is made."""
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise UsageError(f"{url!r} is not an http:// or https:// URL")
    return url


def remember(run: RunDir, url: str) -> None:
    """Keep a ``--notify`` URL with the run (private: a webhook's URL is a credential)."""
    checked_url(url)
    path = run.path / NOTIFY_FILE
    tmp = path.with_name(f".{NOTIFY_FILE}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"webhook": url}, f)
    tmp.replace(path)


def remembered(run: RunDir) -> str | None:
    try:
        data = json.loads((run.path / NOTIFY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = data.get("webhook") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def targets_for(workflow: Workflow, run: RunDir, cwd: Path) -> tuple[Targets | None, list[str]]:
    """The run's targets (None: nobody to tell) and warnings about them."""
    cfg = workflow.notify
    warnings: list[str] = []
    hooks: list[str] = []
    if cfg is not None and cfg.webhook is not None:
        ref = ENV_REF.match(cfg.webhook)
        url = os.environ.get(ref.group(1), "") if ref else cfg.webhook
        if url.startswith(("http://", "https://")):
            hooks.append(url)
        else:
            name = ref.group(1) if ref else cfg.webhook
            warnings.append(f"notify.webhook: {name} is not set to an http(s) URL: not used")
    cli = remembered(run)
    if cli is not None and cli not in hooks:
        hooks.append(cli)
    command = cfg.command if cfg is not None else None
    if not hooks and command is None:
        return None, warnings
    on = frozenset(cfg.on) if cfg is not None else frozenset(DEFAULT_ON)
    return Targets(tuple(hooks), command, on, cwd), warnings
