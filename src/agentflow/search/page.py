"""Writing a search's HTML page (``searches/<id>/search.html``) from its record, its study
(the inputs' importance) and its trials' runs (the pruning metric's curves)."""

from __future__ import annotations

from pathlib import Path

from agentflow import series
from agentflow.report.curves import RUN_COLOURS, Curve
from agentflow.report.search import page
from agentflow.search.info import search_dir
from agentflow.search.study import importances, open_study
from agentflow.store import Store
from agentflow.sweep import SweepRecord, frozen_workflow, save_record
from agentflow.workflow.search import pruning_step


def write_page(store: Store, record: SweepRecord) -> Path:
    info = record.search
    assert info is not None
    workflow = frozen_workflow(store.home, record).workflow
    search, objective = workflow.search, workflow.objective
    assert search is not None
    assert objective is not None
    shares = importances(open_study(Path(info.study), search, objective))
    curves: list[Curve] = []
    metric = search.prune.metric if search.prune else None
    step = pruning_step(workflow, search.prune) if search.prune else None
    if metric is not None and step is not None:
        for m in record.members:
            if m.run_id is None:
                continue
            found = series.load(store.runs / m.run_id, step).series.get(metric)
            if found is not None and found.points:
                colour = "#adb5bd" if m.status == "pruned" else RUN_COLOURS[0]
                curves.append(Curve(f"#{m.index} {m.status}", found, colour))
    path = search_dir(store.home, record.sweep_id) / "search.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(record, shares, curves, metric), encoding="utf-8")
    info.report = str(path)
    save_record(store.home, record)
    return path
