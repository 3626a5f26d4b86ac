"""What a step writes cannot drive the terminal, the CI log or a report that shows it:
no escape sequence or control character from an output value, a check's detail, a log or
an artifact's name reaches stdout, stderr, a live view or a report, no value adds a
GitHub workflow command, and long values are cut (issue 14, item 6)."""

from __future__ import annotations

import base64
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from agentflow.textsafe import CUT_MARK, json_text, one_line, printable, revealed

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
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""ESC, every other C0 control but tab and newline, DEL, and the C1 controls."""


def assert_printable(text: str, where: str) -> None:
    found = UNSAFE.search(text)
    assert found is None, f"{where}: {found.group(0)!r} at {found.start()}" if found else ""


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
