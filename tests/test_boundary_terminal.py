"""What a step writes cannot drive the terminal, the CI log or a report that shows it:
no escape sequence or control character from an output value, a check's detail, a log or
an artifact's name reaches stdout, stderr, a live view or a report, no value adds a
GitHub workflow command, and long values are cut (issue 14, item 6)."""

from __future__ import annotations

import base64
import json
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libtmux
from hypothesis import given
from hypothesis import strategies as st

from agentflow.textsafe import CUT_MARK, json_bytes, json_text, one_line, printable, revealed
from agentflow.tmux import socket_path_for

from conftest import AGENTFLOW, Env, run_id_of

CLIP = base64.b64encode(b"pwned-clipboard").decode()
HOSTILE = (
    "hidden\rshown "  # a carriage return that redraws the line
    f"\x1b]52;c;{CLIP}\x07"  # set the clipboard (BEL-terminated)
    f"\x1b]52;c;{CLIP}\x1b\\"  # and ST-terminated
    "\x1b]0;pwned-title\x07\x1b]2;pwned-title\x1b\\"  # the window title
    "\x1b[2J\x1b[H\x1bc"  # clear the screen, home the cursor, reset the terminal
    "\x9b2J\x9d0;c1-title\x9c"  # the same in 8-bit C1 controls
    "\x1bP+q544e\x1b\\"  # a DCS query: the terminal would answer as if typed
    "[link](http://evil.example/) <img src=x onerror=alert(1)> | cell ##[error]legacy"
    " ##vso[task.setvariable variable=PATH]/tmp"  # Azure Pipelines' form, anywhere in a line
)
"""What a hostile step puts in every value it controls."""
INJECT = "\n::error::injected\n::add-mask::x\n12:00:00  run                  succeeded"
"""Lines a value would add to a CI log (a workflow command, a forged event)."""

EVIL_PY = f"""\
import json
NASTY = {HOSTILE!r}
with open("value.txt", "w") as f:
    f.write(NASTY + {INJECT!r} + "x" * 3_500)  # long, within the 4 KiB an output holds
with open("out.json", "w") as f:
    json.dump({{"x": NASTY + {INJECT!r}}}, f)
with open("last.txt", "w") as f:
    f.write(NASTY)
with open("art-" + "\\x1b]0;pwned-title\\x07" + ".txt", "w") as f:
    f.write("kept")
print(NASTY)
print("::error::from-the-log")
print("::endgroup::")
"""

WORKFLOW = """\
version: 1
name: hostile
steps:
  - id: values
    run: python3 evil.py
    outputs:
      v: {file: value.txt}
      j: {json: out.json, key: x}
    artifacts: ["art-*"]
  - id: check
    needs: [values]
    run: cat last.txt
    success: {command: "cat last.txt; exit 1"}
"""

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""ESC, every other C0 control but tab and newline, DEL, and the C1 controls."""
OURS = ("::group::", "::endgroup::", "::error title=step check::")
"""The workflow commands agentflow itself writes in this run."""


def hostile_run(af: Env, *args: str, github: bool = False) -> tuple[str, str, str]:
    """The hostile workflow run with ``args``: (run id, stdout, stderr)."""
    af.write(WORKFLOW)
    (af.workspace / "evil.py").write_text(EVIL_PY)
    if github:
        af.env["GITHUB_ACTIONS"] = "true"
    res = af.cli("run", "wf.yaml", *args)
    af.env.pop("GITHUB_ACTIONS", None)
    assert res.returncode == 1, res.stdout + res.stderr
    return run_id_of(res.stdout), res.stdout, res.stderr


def assert_printable(text: str, where: str) -> None:
    found = UNSAFE.search(text)
    assert found is None, f"{where}: {found.group(0)!r} at {found.start()}" if found else ""


def github_commands(out: str) -> list[str]:
    """The lines GitHub's runner would act on: ``::command::`` at a line's start (after
    white space), ``##[command]`` anywhere, none between ``::stop-commands::TOKEN`` and
    ``::TOKEN::``. Lines end at CR, LF or CRLF, as the runner reads them."""
    found: list[str] = []
    stopped: str | None = None
    for line in re.split(r"\r\n|\r|\n", out):
        bare = line.lstrip()
        if stopped is not None:
            stopped = None if bare == f"::{stopped}::" else stopped
            continue
        if bare.startswith("::stop-commands::"):
            stopped = bare.removeprefix("::stop-commands::")
        elif (bare.startswith("::") and "::" in bare[2:]) or "##[" in line:
            found.append(line)
    return found


def cells(line: str) -> list[str]:
    """A Markdown table row's cells (a ``\\|`` is text, not a border)."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


# --- the one function -----------------------------------------------------------------------


def test_printable_strips_every_kind_of_escape_sequence() -> None:
    assert printable(HOSTILE) == (
        "shown [link](http://evil.example/) <img src=x onerror=alert(1)> | cell ##[error]legacy"
        " ##vso[task.setvariable variable=PATH]/tmp"
    )
    assert printable("a\x1b]0;never terminated\nnext") == "a\nnext"  # to the line's end
    assert printable("\x1b(Bx\x1b#8y\x1b7z") == "xyz"  # charset, DECALN, save cursor
    assert printable("\x1b[31mred\x1b[0m\tok\n") == "red\tok\n"
    assert printable("10%\r50%\r100%\r\ndone\r") == "100%\ndone"
    assert printable("\u202eevil\u2066x\u2069\u2028y\ud800") == "evilxy"  # bidi, separators
    assert printable("\x1b[31mred\x1b[0m\x1b]0;t\x07\x1b[2J", colours=True) == (
        "\x1b[31mred\x1b[0m"
    )


def test_printable_cuts_long_text_with_a_visible_mark() -> None:
    shown = printable("\x1b[2J" + "x" * 100_000, 50)
    assert shown == "x" * 50 + CUT_MARK.format(total=100_004)
    assert printable("short", 50) == "short"
    assert one_line("first\x1b]0;t\x07\nsecond", 0) == "first …"


def test_revealed_and_json_text_show_what_they_do_not_remove() -> None:
    assert revealed("rm\x1b[2K -rf\u202e\tx\n") == "rm\\x1b[2K -rf\\u202e\tx\n"
    raw = json.dumps({"v": "\x1b\x9b\u202e"}, ensure_ascii=False)
    safe = json_text(raw)
    assert_printable(safe, "json_text")
    assert json.loads(safe) == {"v": "\x1b\x9b\u202e"}


def test_json_bytes_escapes_over_utf8_exactly_what_json_text_escapes() -> None:
    # Every character around the escaped ranges, one by one and all together: the bytes
    # version (report.json is written as bytes) must agree with the text one everywhere.
    chars = [chr(c) for c in [*range(0x70, 0x250), *range(0x2000, 0x2080), 0xFFFD, 0x1F600]]
    for text in [*chars, "".join(chars)]:
        raw = json.dumps({"v": text}, ensure_ascii=False)
        assert json_bytes(raw.encode()) == json_text(raw).encode(), repr(text)


PIECES = st.characters(categories=["Cc", "Cs", "Cf", "Zl", "Zp", "L", "N"]) | st.sampled_from(
    ["\x1b", "\x9b", "\x9d", "\x1b[", "\x1b]", "\x1bP", "[", "]", ";", "m", "\x07", "\x1b\\"]
)
"""Controls of every kind, surrogates, bidi and format characters, separators, and the
parts escape sequences are made of."""


@given(st.lists(PIECES).map("".join))
def test_printable_never_leaves_a_control_character(text: str) -> None:
    for colours in (False, True):
        shown = printable(text, colours=colours)
        outside_sgr = re.sub(r"\x1b\[[0-9;:]*m", "", shown) if colours else shown
        assert_printable(outside_sgr, repr(text))
        assert not re.search("[\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]", shown)
    assert len(printable(text, 20)) <= 20 + len(CUT_MARK.format(total=len(text)))


# --- a hostile run, seen from CI, the reports, status and logs ------------------------------


def test_ci_lines_under_github_actions_carry_no_escape_and_no_injected_command(
    af: Env,
) -> None:
    _, out, err = hostile_run(af, "--ci", github=True)
    assert_printable(out, "stdout")
    assert_printable(err, "stderr")
    assert [c for c in github_commands(out) if not c.startswith(OURS)] == []
    assert out.count("::error title=step check::") == 1
    assert "from-the-log" in out  # the log and the values, as text
    assert "shown" in out
    # The value's own line breaks continue its event, they do not start lines of their own.
    assert not re.search(r"^\s*12:00:00", out, re.M)
    assert "│ 12:00:00  run" in out
    assert "│ ::error::injected" in out
    # A long value stays on its event's line, bounded.
    assert max(len(line) for line in out.splitlines()) < 9000


def test_plain_ci_lines_carry_no_escape_either(af: Env) -> None:
    _, out, err = hostile_run(af, "--ci")
    assert_printable(out + err, "--ci output")
    assert not re.search(r"^\s*::", out, re.M)
    assert "##[" not in out  # CI systems' commands anywhere in a line
    assert "##vso[" not in out
    assert "# #vso[task.setvariable" in out  # the value, as text


def test_reports_status_history_and_compare_carry_no_escape(af: Env) -> None:
    run_id, _, _ = hostile_run(af, "--ci")
    run = af.run_dir(run_id)
    af.env["COLUMNS"] = "1000"  # wide enough that no note or value is cut before its end
    for args in (["report", run_id], ["status", run_id], ["history"], ["compare", run_id, run_id]):
        res = af.cli(*args)
        assert res.returncode == 0, res.stderr
        assert_printable(res.stdout + res.stderr, " ".join(args))
    md = af.cli("report", run_id).stdout
    assert md == (run / "report.md").read_text()
    # Rendered, report.md shows the values as text: no link, image or HTML of theirs, and
    # their pipes do not add cells.
    prose = re.sub(r"^(`{3,})[^\n]*\n.*?^\1$", "", md, flags=re.M | re.S)  # not code blocks
    assert "shown" in prose
    assert not re.search(r"(?<!\\)\]\(http|(?<!\\)<img", prose), prose
    outputs = md.split("## Outputs\n\n")[1].split("\n\n")[0].splitlines()
    assert len(outputs) == 4, outputs  # header, rule, v, j
    assert [len(cells(row)) for row in outputs] == [3, 3, 3, 3], outputs
    html = (run / "report.html").read_text()
    assert_printable(html, "report.html")
    assert "<img src=x" not in html
    xml = (run / "junit.xml").read_text()
    assert_printable(xml.replace("\r", ""), "junit.xml")
    ET.fromstring(xml)  # well-formed: XML 1.0 forbids the control characters
    # report.json and status --json keep the values as data, every control escaped.
    for name, text in (
        ("report.json", (run / "report.json").read_text()),
        ("status --json", af.cli("status", run_id, "--json").stdout),
    ):
        assert_printable(text.replace("\n", ""), name)
    data = json.loads((run / "report.json").read_text())
    value = next(s for s in data["steps"] if s["id"] == "values")["outputs"]["j"]
    assert value.startswith(HOSTILE)


# --- a person at a terminal -----------------------------------------------------------------


@contextmanager
def terminal(af: Env, tmp_path: Path, *args: str) -> Iterator[libtmux.Server]:
    """``agentflow ARGS`` in an 80-column tmux pane whose tmux takes clipboard writes
    (``set-clipboard on``) and titles from the programs in it, as a terminal would."""
    command = shlex.join(["env", "-u", "CI", "-u", "GITHUB_ACTIONS", f"AGENTFLOW_HOME={af.home}",
                          AGENTFLOW, *args])  # fmt: skip
    server = libtmux.Server(socket_path=str(tmp_path / "term.sock"))
    try:
        server.new_session(session_name="t", window_command="sleep 600", x=80, y=24)
        server.cmd("set-option", "-g", "set-clipboard", "on")
        server.cmd("select-pane", "-t", "t", "-T", "clean")
        shell = f"cd {shlex.quote(str(af.workspace))} && {command}; echo EXIT=$?; sleep 600"
        server.cmd("respawn-pane", "-k", "-t", "t", shell)
        yield server
    finally:
        server.kill()


def _screen(server: libtmux.Server) -> str:
    return "\n".join(server.cmd("capture-pane", "-p", "-t", "t").stdout)


def _unharmed(server: libtmux.Server) -> None:
    """Nothing set the pane's title or the clipboard (tmux's paste buffers)."""
    title = server.cmd("display-message", "-p", "-t", "t", "#{pane_title}").stdout
    assert title == ["clean"], title
    buffers = server.cmd("list-buffers").stdout
    assert buffers == [], buffers


def test_the_live_view_sets_no_title_and_no_clipboard(af: Env, tmp_path: Path) -> None:
    af.write(WORKFLOW)
    (af.workspace / "evil.py").write_text(EVIL_PY)
    with terminal(af, tmp_path, "run", "wf.yaml", "--run-id", "live") as server:
        af.wait_for(lambda: "EXIT=" in _screen(server), timeout=60, message="the run ends")
        assert "EXIT=1" in _screen(server)
        assert "outputs" in _screen(server) or "check" in _screen(server)
        _unharmed(server)


def test_logs_on_a_terminal_set_no_title_and_no_clipboard(af: Env, tmp_path: Path) -> None:
    run_id, _, _ = hostile_run(af, "--ci")
    with terminal(af, tmp_path, "logs", run_id, "values") as server:
        af.wait_for(lambda: "EXIT=" in _screen(server), timeout=30, message="logs end")
        assert "EXIT=0" in _screen(server)
        assert "from-the-log" in _screen(server)
        _unharmed(server)
    # Piped, the log is every byte, as the step wrote it.
    raw = af.cli("logs", run_id, "values").stdout
    assert "\x1b]52;c;" in raw


def test_a_steps_clipboard_write_reaches_no_one_attached_whatever_their_tmux_conf(
    af: Env, tmp_path: Path
) -> None:
    # A person's tmux.conf that lets programs set the clipboard (a common setting).
    conf = tmp_path / "config"
    (conf / "tmux").mkdir(parents=True)
    (conf / "tmux" / "tmux.conf").write_text("set -g set-clipboard on\n")
    af.env["XDG_CONFIG_HOME"] = str(conf)
    wf = af.write(
        """\
        version: 1
        name: clip
        steps:
          - id: s
            run: printf '\\033]52;c;cHduZWQ=\\a'; sleep 1
        """
    )
    res = af.cli("run", str(wf), "--ci")
    assert res.returncode == 0, res.stdout + res.stderr
    server = libtmux.Server(socket_path=str(socket_path_for(af.home)))
    # With set-clipboard on, tmux would have made a paste buffer of it (and forwarded it
    # to the terminal of anyone attached).
    assert server.cmd("list-buffers").stdout == []
    assert server.cmd("show-options", "-g", "set-clipboard").stdout == ["set-clipboard off"]
