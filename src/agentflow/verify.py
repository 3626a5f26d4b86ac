"""Looking at what a step did or does: readiness probes, success checks, outputs.

"No error" is never "success": after a step exits 0 its ``success:`` checks run, and a
service is ready only when its probe passes. Probes and commands run inside the sandbox
(so ``network: none`` services are reachable on loopback); files and logs under the
workspace are read from the host, which sees the same files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agentflow import safefs, stepfiles
from agentflow.workflow.model import MetricCheck, Output, Probe, Success

PROBE_TIMEOUT = 30.0
"""The longest one probe or check command may take."""
LOG_TAIL_BYTES = 256 * 1024
"""How much of the end of a log the log checks search (bounded, whatever the log size)."""
FILE_MAX = 1 << 20
"""The largest file read for an output or a metric (a step controls its size)."""
VALUE_MAX = 4096
EXEC_OUTPUT_MAX = 64 * 1024
"""The most output of a probe or check command the host keeps (its end): the command
runs what a step made, which may print without end."""
"""The longest output value: values are pasted into later steps and shown in reports."""

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
    steps: Path
    """The run's ``steps/`` folder, below which the log is read (it is sandbox-writable)."""
    env: dict[str, str] = field(default_factory=dict)
    """The step's environment, for the commands of probes and checks."""
    hidden: frozenset[safefs.Identity] = frozenset()
    """Folders never read, whatever path leads there (agentflow's home in the workspace)."""

    def host_path(self, path: str) -> Path:
        """``path`` (relative to the step's folder) on the host, checked lexically to stay
        in the workspace; the read itself goes through ``safefs`` (no link followed)."""
        joined = Path(os.path.normpath(self.host_dir / path))
        if not joined.is_relative_to(self.root):
            raise OutputError(f"{path} leads outside the workspace")
        return joined

    def read(self, path: str, limit: int) -> str:
        """A workspace file's text, through the guarded path; OutputError says why not."""
        try:
            return safefs.read_text(self.host_path(path), self.root, limit, self.hidden)
        except FileNotFoundError:
            raise OutputError(f"{path} does not exist") from None
        except safefs.TooLarge:
            raise OutputError(f"{path} is larger than {_size(limit)}: not read") from None
        except OSError as e:
            raise OutputError(_why(e, path)) from None

    def lstat(self, path: str) -> os.stat_result:
        try:
            return safefs.lstat(self.host_path(path), self.root, self.hidden)
        except FileNotFoundError:
            raise OutputError(f"{path} does not exist") from None
        except OSError as e:
            raise OutputError(_why(e, path)) from None


def _why(e: OSError, path: str) -> str:
    """``PATH is a symbolic link, not followed``, naming the component at fault when it
    is a folder on the way rather than the file itself."""
    at = Path(e.filename).name if e.filename else ""
    if not at or at == Path(path).name:
        return f"{path} {e.strerror}"
    return f"{path}: {at} {e.strerror}"


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n >= 1 << 20 else f"{n} bytes"


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
        return _log_has(at, ready.log)
    assert ready.file is not None
    return _file(at, ready.file, non_empty=False)


def _command(at: Where, script: str, what: str) -> Check:
    code, out = at.box.exec(script, at.workdir, PROBE_TIMEOUT, at.env)
    if code == 0:
        return Check(True, f"{what}: ok")
    last = out.strip().splitlines()[-1][:200] if out.strip() else ""
    return Check(False, f"{what}: exit {code}" + (f" ({last})" if last else ""))


def tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a step's file (``steps/<id>/[attempt-N/]NAME``) as text;
    '' when it cannot be read. Read through the guarded path below the run's steps/."""
    return safefs.tail(path, stepfiles.steps_root(path), size)


def _log_has(at: Where, pattern: str) -> Check:
    if re.search(pattern, safefs.tail(at.log, at.steps, LOG_TAIL_BYTES), re.MULTILINE):
        return Check(True, f"log matches /{pattern}/")
    return Check(False, f"no line of the output matches /{pattern}/")


def _file(at: Where, path: str, non_empty: bool) -> Check:
    if not Path(path).is_absolute():
        try:
            st = at.lstat(path)
        except OutputError as e:
            return Check(False, str(e))
        if stat.S_ISLNK(st.st_mode):
            return Check(False, f"{path} is a symbolic link, not followed (check its target)")
        if non_empty and stat.S_ISREG(st.st_mode) and st.st_size == 0:
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
        c = _log_has(at, success.log)
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


def _read(path: str, at: Where, limit: int = FILE_MAX) -> str:
    """A file of the step's: from the workspace on the host (the guarded path), or, for an
    absolute path, inside the sandbox; at most ``limit`` bytes either way."""
    if not Path(path).is_absolute():
        return at.read(path, limit)
    # What comes back is the end of the command's output (EXEC_OUTPUT_MAX): no more is
    # asked for, so that a larger file is an error, never silently cut.
    limit = min(limit, EXEC_OUTPUT_MAX - 1)
    script = f"head -c {limit + 1} {shlex.quote(path)} 2>/dev/null"
    code, out = at.box.exec(script, at.workdir, PROBE_TIMEOUT)
    if code != 0:
        raise OutputError(f"{path} cannot be read in the sandbox")
    if len(out.encode()) > limit:
        raise OutputError(f"{path} is larger than {_size(limit)}: not read")
    return out


def json_value(text: str, key: str, path: str) -> Any:
    """``key`` (dots go into objects, numbers into lists) in the JSON ``text``."""
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise OutputError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:  # `[[[[…` a step wrote: the parser's own limit
        raise OutputError(f"{path} is JSON nested too deeply to read") from None
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
            values[name] = _read(out.file, at, VALUE_MAX + 1024).strip()
        elif out.value is not None:
            values[name] = out.value
        else:
            assert out.log is not None
            log = safefs.tail(at.log, at.steps, LOG_TAIL_BYTES)
            matches = re.findall(out.log, log, re.MULTILINE)
            if not matches:
                raise OutputError(f"output {name}: no line of the output matches /{out.log}/")
            last = matches[-1]
            values[name] = last[0] if isinstance(last, tuple) else last
        # A lone surrogate (JSON's "\ud800") cannot be saved as UTF-8: replaced.
        values[name] = values[name].encode("utf-8", errors="replace").decode("utf-8")
        if "\0" in values[name]:  # no environment, argument or path can hold one
            raise OutputError(f"output {name} holds a NUL character: it cannot be passed on")
        if len(values[name]) > VALUE_MAX:
            raise OutputError(
                f"output {name} is {len(values[name])} characters long, more than the "
                f"{VALUE_MAX} an output may hold: write large data to a file and make its "
                "path the output"
            )
    return values
