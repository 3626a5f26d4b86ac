"""``search_runbooks``: the sections of the workflow's runbooks (``docs:``) that mention
the model's words, read through ``runbook`` (confined to the workspace, no link followed)."""

from __future__ import annotations

import re

from agentflow import runbook
from agentflow.agent.tools.scene import Scene, ToolError
from agentflow.agent.tools.schemas import QueryArgs
from agentflow.agent.tools.text import cut, listing


def search_runbooks(scene: Scene, a: QueryArgs) -> str:
    """The runbook sections that mention most of the model's words, bounded."""
    words = sorted({w for w in re.findall(r"\w+", a.query.lower()) if len(w) > 1})[:20]
    if not words:
        raise ToolError("give words to look for in the runbooks")
    if not scene.runbooks:
        return "the workflow has no runbooks (docs:)"
    hits: list[tuple[int, int, str, str]] = []
    unread = []
    for path in scene.runbooks:
        try:
            text = scene.redact(runbook.read(path, scene.workspace))
        except OSError as e:
            unread.append(f"{path.name}: {e.strerror or e}")
            continue
        for section in runbook.sections(text):
            low = section.lower()
            present = [w for w in words if w in low]
            if present:
                count = sum(low.count(w) for w in present)
                hits.append((len(present), count, path.name, section))
    hits.sort(key=lambda h: (-h[0], -h[1]))
    rows = [f"[{name}]\n{cut(section, 1500)}" for _, _, name, section in hits]
    head = f"runbook sections mentioning {' '.join(words)}: {len(hits)}"
    if unread:
        head += " (not read: " + "; ".join(unread) + ")"
    return listing(head, rows, "", sep="\n\n")
