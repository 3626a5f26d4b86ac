"""The facts of a step (``step_info``) and of the sandbox (``sandbox_info``): what the
workflow, the plan and the run's state say, and what is measured inside the sandbox."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from agentflow.agent.tools.commands import workdir
from agentflow.agent.tools.scene import Scene, known
from agentflow.agent.tools.schemas import NoArgs, StepArgs
from agentflow.agent.tools.text import human_size
from agentflow.plan import Plan, PlannedStep
from agentflow.redact import MASK
from agentflow.sandbox import Sandbox, describe
from agentflow.sandbox.slurm import SlurmSandbox
from agentflow.state import StepState
from agentflow.workflow.model import Step, Workflow

EXEC_TIMEOUT = 5.0
"""Seconds a fact-finding command in the sandbox may take."""


# --- a step's facts ---------------------------------------------------------------------


def step_info(scene: Scene, a: StepArgs) -> str:
    """A step's facts as JSON: its state, command, env (secrets masked), settings, graph."""
    step_id = known(scene, a.step)
    wf = scene.workflow
    step = next((s for s in wf.steps if s.id == step_id), None)
    planned = _planned(scene.plan, step_id)
    st = scene.state.steps.get(step_id) if scene.state else None
    info: dict[str, Any] = {"step": step_id, "description": step.description if step else None}
    if st is not None:
        info |= _state_facts(st)
    info["command"] = planned.run if planned else (step.run if step else None)
    if planned is None and step is not None and step.task:
        info["task"] = step.task
    if planned is not None and planned.source == "planner":
        info |= {"written_by": "planner", "notes": planned.notes}
    if st is not None:
        info["run_override"] = st.run_override
        info["env_overrides"] = _env(scene, st.env_overrides) or None
    info |= _env_facts(scene, step_id, step)
    if step is not None:
        info |= _settings(wf, step)
    if st is not None and st.outputs:
        info["output_values"] = st.outputs
    graph = _graph(scene)
    info["needs"] = graph.get(step_id, [])
    direct = [s for s, needs in graph.items() if step_id in needs]
    info["dependents"] = direct
    info["downstream"] = _downstream(graph, step_id)
    shown = {k: v for k, v in info.items() if v not in (None, [], {})}
    return json.dumps(shown, indent=1, ensure_ascii=False, default=str)


def _env(scene: Scene, env: dict[str, str]) -> dict[str, str]:
    secret = set(scene.workflow.secrets)
    return {k: MASK if k in secret else v for k, v in env.items()}


def _env_facts(scene: Scene, step_id: str, step: Step | None) -> dict[str, Any]:
    if step_id == scene.step and scene.env:
        return {"env": _env(scene, scene.env), "env_is": "rendered, as the step gets it"}
    written = {**scene.workflow.env, **(step.env if step else {})}
    return {"env": _env(scene, written), "env_is": "as written (${{ }} not filled in)"}


def _graph(scene: Scene) -> dict[str, list[str]]:
    """Each step's needs: the plan's (it may hold steps the planner added), else the
    workflow's."""
    graph = {s.id: list(s.needs) for s in scene.plan.steps} if scene.plan else {}
    for s in scene.workflow.steps:
        graph.setdefault(s.id, list(s.needs))
    return graph


def _planned(plan: Plan | None, step_id: str) -> PlannedStep | None:
    if plan is None:
        return None
    return next((s for s in plan.steps if s.id == step_id), None)


def _state_facts(st: StepState) -> dict[str, Any]:
    return {
        "status": st.status,
        "attempts": st.attempts,
        "retries": st.retries,
        "exit_code": st.exit_code,
        "message": st.message,
        "kill_reason": st.kill_reason,
        "started_at": st.started_at,
        "finished_at": st.finished_at,
    }


def _settings(wf: Workflow, step: Step) -> dict[str, Any]:
    """What the workflow says of the step: where and how it runs, and how it is judged."""
    retry = wf.retry_of(step)
    return {
        "workdir": step.workdir,
        "service": step.service or None,
        "timeout_s": wf.timeout_of(step),
        "stall_timeout_s": wf.stall_timeout_of(step),
        "retry": {"limit": retry.limit, "on": retry.on} if retry.limit else None,
        "on_failure": wf.on_failure_of(step),
        "ready": step.ready.model_dump(mode="json", exclude_none=True) if step.ready else None,
        "success": (
            step.success.model_dump(mode="json", exclude_defaults=True) if step.success else None
        ),
        "outputs": {
            name: o.model_dump(mode="json", exclude_none=True, by_alias=True)
            for name, o in step.outputs.items()
        },
        "recover": [r.model_dump(mode="json", exclude_defaults=True) for r in step.recover],
    }


def _downstream(graph: dict[str, list[str]], step_id: str) -> list[str]:
    """Every step that needs ``step_id``, directly or through others, in the graph's order."""
    below = {step_id}
    changed = True
    while changed:
        changed = False
        for s, needs in graph.items():
            if s not in below and below.intersection(needs):
                below.add(s)
                changed = True
    return [s for s in graph if s in below and s != step_id]


# --- sandbox facts ----------------------------------------------------------------------

# Sections a line "@@NAME" each; the GPU last: a hung nvidia-smi loses nothing else.
_FACTS = """\
echo @@df; df -Pk . 2>&1 | tail -n 1
echo @@mem; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>&1
echo @@cgroup; cat /sys/fs/cgroup/memory.max 2>/dev/null \
  || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null
echo @@tcp; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
  | grep -E '^ *[0-9]+: [0-9A-Fa-f]+:[0-9A-Fa-f]+ [0-9A-Fa-f]+:[0-9A-Fa-f]+ 0A ' | head -n 200
echo @@user; id 2>&1 | head -c 300; echo
echo @@gpu; if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>&1 | head -n 16; fi
"""


def sandbox_info(scene: Scene, a: NoArgs) -> str:
    """What the sandbox is (its settings) and what is measured inside it."""
    box = scene.sandbox
    # (Imported here: the Docker SDK weighs 20 MB, which a local run does without.)
    from agentflow.sandbox.docker import STEPS_MOUNT, DockerSandbox

    # The sandbox's own settings where it has them (what it was started with).
    own = box.config if isinstance(box, DockerSandbox | SlurmSandbox) else None
    cfg = own or scene.workflow.sandbox
    backend = box.name if box is not None else cfg.backend
    lines = [f"backend: {backend}"]
    if backend in ("docker", "slurm"):
        facts, relaxed = describe(cfg)
        lines += facts + [f"relaxed: {r}" for r in relaxed]
    if backend == "docker":
        lines.append(
            f"mounted: the workspace at {cfg.workdir} and the run's steps/ at "
            f"{STEPS_MOUNT} (read-write); agentflow's home is hidden where it lies in one"
        )
    elif backend != "slurm":
        lines.append(
            "local: steps run on this machine as the user, in the workspace; nothing is "
            "isolated (the root is writable, the network is the host's)"
        )
    if box is None:
        lines.append("not measured: the sandbox is not started yet")
        return "\n".join(lines)
    return "\n".join(lines + _measured(scene, box))


def _measured(scene: Scene, box: Sandbox) -> list[str]:
    code, out = box.exec(_FACTS, workdir(scene), EXEC_TIMEOUT)
    out = scene.redact(out)  # before anything is cut from it
    parts = _sections(out)
    if not parts:
        return [f"not measured: exit {code}: {out.strip()[-300:]}"]
    measured = [
        _disk(parts.get("df", "")),
        _memory(parts.get("mem", ""), parts.get("cgroup", "")),
    ]
    ports = _ports(parts.get("tcp", ""))
    measured.append("listening TCP ports: " + (", ".join(ports) if ports else "none"))
    gpus = [line for line in parts.get("gpu", "").splitlines() if line.strip()]
    measured.append("GPUs: " + ("; ".join(gpus[:16]) if gpus else "none (no nvidia-smi)"))
    if parts.get("user", "").strip():
        measured.append("user: " + parts["user"].strip()[:300])
    if code == 124:
        measured.append(f"(the measurement stopped at its time limit, {EXEC_TIMEOUT:g}s)")
    return measured


def _sections(out: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        m = re.fullmatch(r"@@(\w+)", line.strip())
        if m:
            name = m.group(1)
            parts[name] = ""
        elif name is not None:
            parts[name] += line + "\n"
    return parts


def _disk(df: str) -> str:
    fields = df.split()
    if len(fields) >= 6 and fields[1].isdigit() and fields[3].isdigit():
        free, total = int(fields[3]) << 10, int(fields[1]) << 10
        # Not the mount point: busybox names the first mount of the device (docker-init).
        return f"free disk in the workdir: {human_size(free)} of {human_size(total)}"
    return f"free disk in the workdir: unknown ({df.strip()[:200] or 'no df'})"


def _memory(meminfo: str, cgroup: str) -> str:
    kb = dict(re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.MULTILINE))
    text = "memory: " + (
        f"{human_size(int(kb['MemAvailable']) << 10)} available of "
        f"{human_size(int(kb['MemTotal']) << 10)}"
        if "MemAvailable" in kb and "MemTotal" in kb
        else "unknown"
    )
    limit = cgroup.strip()
    if limit.isdigit() and int(limit) < 1 << 60:  # cgroup v1 writes "no limit" as ~2^63
        text += f"; the sandbox's limit (cgroup): {human_size(int(limit))}"
    return text


def _ports(tcp: str) -> list[str]:
    """Listening sockets of /proc/net/tcp{,6} lines (state 0A) as address:port."""
    found: dict[tuple[int, str], None] = {}
    for line in tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":
            continue
        address, _, port = fields[1].partition(":")
        try:
            found[(int(port, 16), _address(address))] = None
        except ValueError:
            continue
    return [
        f"{addr}:{port}" if ":" not in addr else f"[{addr}]:{port}" for port, addr in sorted(found)
    ]


def _address(hex_address: str) -> str:
    """An address as /proc/net/tcp writes it: 32-bit words in the host's order (little
    endian on every machine Docker runs on)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    return str(ipaddress.IPv6Address(words))
