"""Looking at what a step did or does: readiness probes, success checks, outputs.

"No error" is never "success": after a step exits 0 its ``success:`` checks run, and a
service is ready only when its probe passes. Probes and commands run inside the sandbox
(so ``network: none`` services are reachable on loopback); files and logs under the
workspace are read from the host, which sees the same files.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agentflow import safefs
from agentflow.workflow.model import MetricCheck, Output, Probe, Success

PROBE_TIMEOUT = 30.0
"""The longest one probe or check command may take."""
LOG_TAIL_BYTES = 256 * 1024
"""How much of the end of a log the log checks search (bounded, whatever the log size)."""

_HTTP = """\
url=$1
if command -v curl >/dev/null 2>&1; then exec curl -fsS -o /dev/null -m 5 "$url"
elif command -v wget >/dev/null 2>&1; then exec wget -q -O /dev/null "$url"  # (-T crashes busybox)
elif command -v python3 >/dev/null 2>&1; then
  exec python3 -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)' "$url"
else echo "the sandbox has no curl, wget or python3 for an http probe" >&2; exit 127
fi"""
_TCP = """\
host=$1 port=$2
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c 'import socket,sys; socket.create_connection((sys.argv[1],int(sys.argv[2])),3)' \
    "$host" "$port"
elif command -v bash >/dev/null 2>&1; then exec bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port"
elif command -v nc >/dev/null 2>&1; then exec nc -w 3 "$host" "$port" </dev/null  # busybox: no -z
else echo "the sandbox has no python3, bash or nc for a tcp probe" >&2; exit 127
fi"""


class Executor(Protocol):
    """Runs a shell script inside the sandbox: (exit code, combined output)."""

    def exec(
        self, script: str, workdir: str, timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Where:
    """Where a step runs, as the sandbox and as the host see it."""

    box: Executor
    workdir: str
    """The step's folder inside the sandbox."""
    host_dir: Path
    """The same folder on the host."""
    root: Path
    """The workspace on the host: reads on the host never leave it (a step could point a
    symlink at a file of the host's)."""
    log: Path
    """The step's output.log."""
    env: dict[str, str] = field(default_factory=dict)
    """The step's environment, for the commands of probes and checks."""

    def host_path(self, path: str) -> Path:
        resolved = (self.host_dir / path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise OutputError(f"{path} leads outside the workspace")
        return resolved


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    """What was found (for an event, or the step's message when it fails)."""
    measured: list[str] = field(default_factory=list)
    """``metrics.NAME: KEY = VALUE`` of each metric that passed."""


class OutputError(Exception):
    """An output could not be read."""


def _script(template: str, *args: str) -> str:
    return f"set -- {shlex.join(args)}\n{template}"


def probe(ready: Probe, at: Where) -> Check:
    """One readiness probe of a service."""
    if ready.http:
        return _command(at, _script(_HTTP, ready.http), f"GET {ready.http}")
    if ready.tcp:
        host, port = ready.tcp.rsplit(":", 1)
        return _command(at, _script(_TCP, host, port), f"connect {ready.tcp}")
    if ready.command:
        return _command(at, ready.command, f"command `{ready.command}`")
    if ready.log:
        return _log_has(at.log, ready.log)
    assert ready.file is not None
    return _file(at, ready.file, non_empty=False)


def _command(at: Where, script: str, what: str) -> Check:
    code, out = at.box.exec(script, at.workdir, PROBE_TIMEOUT, at.env)
    if code == 0:
        return Check(True, f"{what}: ok")
    last = out.strip().splitlines()[-1][:200] if out.strip() else ""
    return Check(False, f"{what}: exit {code}" + (f" ({last})" if last else ""))


def tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a file as text ('' when it does not exist)."""
    try:
        with safefs.open_read(path) as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _log_has(log: Path, pattern: str) -> Check:
    if re.search(pattern, tail(log), re.MULTILINE):
        return Check(True, f"log matches /{pattern}/")
    return Check(False, f"no line of the output matches /{pattern}/")


def _file(at: Where, path: str, non_empty: bool) -> Check:
    if not Path(path).is_absolute():
        try:
            p = at.host_path(path)
        except OutputError as e:
            return Check(False, str(e))
        if not p.exists():
            return Check(False, f"{path} does not exist")
        if non_empty and p.is_file() and p.stat().st_size == 0:
            return Check(False, f"{path} is empty")
        return Check(True, f"{path} exists")
    flag = "-s" if non_empty else "-e"
    code, _ = at.box.exec(f"test {flag} {shlex.quote(path)}", at.workdir, PROBE_TIMEOUT)
    return Check(code == 0, f"{path} {'exists' if code == 0 else 'is missing or empty'}")


def success_checks(success: Success, at: Where) -> Check:
    """Every ``success:`` check in turn; the first that fails says which and what it found."""
    for path in success.files:
        c = _file(at, path, non_empty=True)
        if not c.ok:
            return Check(False, f"success check files: {c.detail}")
    if success.log:
        c = _log_has(at.log, success.log)
        if not c.ok:
            return Check(False, f"success check log: {c.detail}")
    measured = []
    for name, metric in success.metrics.items():
        c = _metric(name, metric, at)
        if not c.ok:
            return Check(False, f"success check metrics.{name}: {c.detail}")
        measured.append(f"metrics.{name}: {c.detail}")
    if success.command:
        c = _command(at, success.command, f"command `{success.command}`")
        if not c.ok:
            return Check(False, f"success check {c.detail}")
    return Check(True, "; ".join(measured) or "success checks passed", measured=measured)


def _metric(name: str, m: MetricCheck, at: Where) -> Check:
    try:
        value = json_value(_read(m.file, at), m.key, m.file)
        number = float(value)
    except OutputError as e:
        return Check(False, str(e))
    except (TypeError, ValueError):
        return Check(False, f"{m.key} in {m.file} is {value!r}, not a number")
    if m.min is not None and number < m.min:
        return Check(False, f"{m.key} = {number:g}, below the minimum {m.min:g}")
    if m.max is not None and number > m.max:
        return Check(False, f"{m.key} = {number:g}, above the maximum {m.max:g}")
    return Check(True, f"{m.key} = {number:g}")


def _read(path: str, at: Where) -> str:
    if not Path(path).is_absolute():
        try:
            return at.host_path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise OutputError(f"{path} does not exist") from None
        except OSError as e:
            raise OutputError(f"{path}: {e.strerror}") from None
    code, out = at.box.exec(f"cat {shlex.quote(path)}", at.workdir, PROBE_TIMEOUT)
    if code != 0:
        raise OutputError(f"{path} cannot be read in the sandbox")
    return out


def json_value(text: str, key: str, path: str) -> Any:
    """``key`` (dots go into objects, numbers into lists) in the JSON ``text``."""
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise OutputError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise OutputError(f"{path} has no key {key!r}")
    return value


def read_outputs(outputs: dict[str, Output], at: Where) -> dict[str, str]:
    """The step's declared outputs; OutputError names the first that cannot be read."""
    values: dict[str, str] = {}
    for name, out in outputs.items():
        if out.json_file:
            value = json_value(_read(out.json_file, at), out.key or "", out.json_file)
            values[name] = value if isinstance(value, str) else json.dumps(value)
        elif out.file:
            values[name] = _read(out.file, at).strip()
        else:
            assert out.log is not None
            matches = re.findall(out.log, tail(at.log), re.MULTILINE)
            if not matches:
                raise OutputError(f"output {name}: no line of the output matches /{out.log}/")
            last = matches[-1]
            values[name] = last[0] if isinstance(last, tuple) else last
    return values
