"""The runner's side of ports (``ports:``): the run's ports held when it is driven (new
ones for steps without, the checkpoint's again on a resume), given back at its end, and
the readiness check of the local sandbox that a service's own processes hold the port
its probe was answered on. Plain functions over the runner (not one more mixin): the
ledger is ``ports.py``, ``/proc`` is read by ``listeners.py``."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from urllib.parse import urlsplit

from agentflow import listeners, ports, stepfiles
from agentflow.errors import EnvironmentProblem
from agentflow.runner.base import RunnerBase
from agentflow.runner.windows import Windows
from agentflow.sandbox import PROC_VAR
from agentflow.sandbox.local import LocalSandbox, step_marker
from agentflow.state import now
from agentflow.template import references, strings_in
from agentflow.workflow.model import Probe, Step

LOOPBACK_NAMES = frozenset({"localhost", "0.0.0.0", "::", "::1"})
"""Hosts that are this machine's loopback (besides ``127.*``)."""


def _home(r: RunnerBase) -> Path:
    return r.s.run.path.parent.parent


def hold_ports(r: RunnerBase) -> None:
    """Give every step that asks for ports its ports (the checkpoint's, else new free
    ones), held in the home's ledger; recorded before any step can start."""
    wanted = {s.id: list(s.ports) for s in r.s.workflow.steps if s.ports}
    recorded = {k: st.ports for k, st in r.state.steps.items() if st.ports}
    if not wanted and not recorded:
        return
    try:
        held = ports.hold(_home(r), r.state.run_id, wanted, recorded)
    except (ports.NoFreePort, OSError) as e:
        raise EnvironmentProblem(f"the run's ports could not be chosen: {e}") from e
    for step_id, st in r.state.steps.items():
        mine = held.ports.get(step_id, {})
        if st.ports != mine:
            r._update(step_id, ports=mine)
        if step_id in held.new:
            shown = ", ".join(f"{k}={v}" for k, v in held.new[step_id].items())
            r._emit("ports_held", step_id, message=shown, data={"ports": dict(mine)})
    for warning in held.shared:
        r._emit("port_shared", message=f"warning: {warning}")


def release_ports(r: RunnerBase) -> None:
    """The run is over: its ports go back to the ledger."""
    if any(st.ports for st in r.state.steps.values()):
        with contextlib.suppress(OSError):
            ports.release(_home(r), r.state.run_id)


def refused(r: Windows, step: Step, ready: Probe) -> bool:
    """After ``step``'s probe (``ready``, rendered) passed: True when the service must not
    be called ready. In the local sandbox, a loopback port the probe reached that is held
    by a process not of the step fails the step, naming that process."""
    st = r.state.steps[step.id]
    if st.kill_reason is not None:
        return True  # being stopped: it does not become ready any more
    if not ready.owned or not isinstance(r.s.sandbox, LocalSandbox):
        return False
    step_dir = r.s.run.step_dir(step.id)
    who = listeners.Step(
        step.id, stepfiles.pid(step_dir), f"{PROC_VAR}={step_marker(step_dir)}".encode()
    )
    for port in probed_ports(step, ready, st.ports):
        problem = listeners.foreign(port, who)
        if problem:
            message = f"ready: {problem}"
            r._update(step.id, kill_reason="not_ready", kill_sent_at=now(), message=message)
            r._emit("not_ready", step.id, message=f"{problem}: stopping it")
            r._signal(step.id, signal.SIGTERM)
            return True
    return False


def probed_ports(step: Step, ready: Probe, own: dict[str, int]) -> list[int]:
    """The loopback ports a probe reaches: an ``http`` or ``tcp`` probe's of a loopback
    host, and the step's own ports that the probe names (``${{ ports.NAME }}``, also in a
    ``command``)."""
    found: list[int] = []
    host: str | None = None
    port: int | None = None
    with contextlib.suppress(ValueError):
        if ready.http:
            url = urlsplit(ready.http)
            host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        elif ready.tcp:
            name, number = ready.tcp.rsplit(":", 1)
            host, port = name.strip("[]"), int(number)
    if host is not None and port is not None and _loopback(host):
        found.append(port)
    if step.ready is not None:
        for text in strings_in(step.ready.model_dump()):
            with contextlib.suppress(ValueError):
                for ref in references(text):
                    if ref.kind == "ports" and ref.names[0] in own:
                        found.append(own[ref.names[0]])
    return list(dict.fromkeys(found))


def _loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_NAMES or host.startswith("127.")
