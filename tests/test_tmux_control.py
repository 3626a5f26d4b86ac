"""The tmux control-mode client, the wake channel's waiter, and the environment script a
window sources: against a real tmux server of the test's own."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow.handoff import Handoff, script
from agentflow.tmux import REPORTED_TITLE, Tmux, server_env, wake_channel
from agentflow.tmux_control import ControlClient, ControlError, ProcessWaiter, line_of

from conftest import Env

ODD = ["semi;colon", "it's", 'dq"x', "$HOME", "~", "#{session_name}", "back\\slash", " sp ", ""]


@pytest.fixture
def tmux(af: Env) -> Iterator[Tmux]:
    t = Tmux(af.home / "t.sock")
    t.ensure_session("s1", af.workspace, "sleep 600")
    yield t
    t.close_control()
    t.server.kill()


def test_commands_go_through_one_client_and_odd_words_arrive_whole(tmux: Tmux) -> None:
    assert tmux.open_control("s1")
    client = tmux.control
    assert client is not None
    for word in [w for w in ODD if w]:  # (a buffer is never empty)
        assert client.run(["set-buffer", "-b", "t", "--", word]) == (True, [])
        assert tmux.server.cmd("show-buffer", "-b", "t").stdout == [word], word
    ok, lines = client.run(["kill-window", "-t", "@99999"])
    assert not ok
    assert any("@99999" in line for line in lines), lines
    window = tmux.new_window("s1", "st'ep", ["/bin/sh", "-c", "exit 3"], tmux.socket_path.parent)
    assert tmux.control is client, "no fallback for a command that works"
    panes = {}
    for _ in range(200):
        panes = tmux.panes("s1")
        if panes[window].dead_status is not None:  # (dead may show before its status)
            break
        subprocess.run(["sleep", "0.02"], check=True)
    assert (panes[window].name, panes[window].dead_status) == ("st'ep", 3)
    tmux.kill_window(window)
    assert window not in tmux.panes("s1")


def test_a_command_of_two_lines_is_refused_and_a_dead_client_falls_back(tmux: Tmux) -> None:
    assert line_of(["display-message", "a\nb"]) is None
    assert tmux.open_control("s1")
    assert tmux.control is not None
    with pytest.raises(ControlError):
        tmux.control.send(["display-message", "a\nb"])
    tmux.control.proc.kill()  # the client dies under the runner
    tmux.control.proc.wait()
    window = tmux.new_window("s1", "after", ["sleep", "60"], tmux.socket_path.parent)
    assert tmux.control is None, "given up"
    assert window in tmux.panes("s1"), "and the command ran as a tmux process"


def test_a_client_that_cannot_attach_says_so(tmux: Tmux) -> None:
    with pytest.raises(ControlError):
        ControlClient(tmux.binary, str(tmux.socket_path), "no-such-session", server_env())
    assert not tmux.open_control("no-such-session")
    assert tmux.control is None


def test_the_waiter_wakes_each_time_its_channel_rings(tmux: Tmux) -> None:
    channel = wake_channel("s1")
    waiter = tmux.waiter(channel)
    ring = [tmux.binary, "-S", str(tmux.socket_path), "wait-for", "-S", channel]
    try:
        subprocess.run(ring, check=True)
        assert _woke(waiter, 10), "a signal wakes the waiter"
        subprocess.run(ring, check=True)
        assert _woke(waiter, 10), "and the waiter waits again by itself"
        assert not _woke(waiter, 0.3), "nothing rang since"
    finally:
        waiter.close()


def test_the_pane_died_hook_rings_only_for_a_window_that_did_not_report(tmux: Tmux) -> None:
    # The hook is run by hand (-R): tmux 3.3a runs `pane-died` late, at the server's next
    # event, for about one window in three that dies while idle (measured). The runner's
    # periodic check is what guarantees such a death is seen; the hook only hurries it.
    cwd = tmux.socket_path.parent
    reported = f"printf '\\033]2;{REPORTED_TITLE}\\033\\\\'; exit 0"
    quiet = tmux.new_window("s1", "reported", ["/bin/sh", "-c", reported], cwd)
    for _ in range(500):
        if tmux.panes("s1")[quiet].dead:
            break
        time.sleep(0.02)
    waiter = tmux.waiter(wake_channel("s1"))
    try:
        time.sleep(0.2)  # (a signal nobody waits for is kept, but only one)
        tmux.server.cmd("set-hook", "-R", "-t", quiet, "pane-died")
        assert not _woke(waiter, 0.5), "a window whose wrapper reported wakes nobody"
        tmux.server.cmd("set-hook", "-R", "-t", "=s1:^", "pane-died")  # (any other)
        assert _woke(waiter, 10), "one that died unreported signals the session's channel"
    finally:
        waiter.close()


def test_a_window_that_died_unreported_is_seen_by_a_look(tmux: Tmux) -> None:
    cwd = tmux.socket_path.parent
    window = tmux.new_window("s1", "crashed", ["/bin/sh", "-c", "exit 7"], cwd)
    for _ in range(500):
        if tmux.panes("s1")[window].dead_status is not None:
            break
        time.sleep(0.02)
    assert (tmux.panes("s1")[window].dead, tmux.panes("s1")[window].dead_status) == (True, 7)


def _woke(waiter: ProcessWaiter, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([waiter.fileno()], [], [], left)[0] and waiter.woke():
            return True
    return False


def test_the_environment_script_holds_any_value_and_goes_when_released(tmp_path: Path) -> None:
    env = {f"V{i}": v for i, v in enumerate(ODD)}
    env |= {"NL": "a\nb", "IFS": "x", "not-a-name": "dropped"}
    handoff = Handoff(tmp_path / "private", "run1")
    path = handoff.put("step", env)
    show = 'for n in V0 V1 V2 V3 V4 V5 V6 V7 V8 NL; do eval "printf \'%s|\' \\"\\$$n\\""; done'
    out = subprocess.run(
        ["/bin/sh", "-c", f'. "$0" && {show}', path],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        check=True,
    ).stdout
    assert out == "|".join([*ODD, "a\nb"]) + "|"
    assert "not-a-name" not in script(env)
    assert "IFS" not in script(env), "the shell's own variables are left to it"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "private").st_mode & 0o777) == "0o700"
    # An orchestrator that died leaves it for the next one of the run to remove.
    assert Handoff(tmp_path / "private", "run1").keys() == ["step"]
    assert Handoff(tmp_path / "private", "run2").keys() == []
    handoff.release("step")
    assert not handoff.holds("step")
    assert not os.path.exists(path)
