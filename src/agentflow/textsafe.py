"""Step-controlled text made safe to print: the one place that strips terminal control.

What a step writes (its output, output values, metric files, artifact names) and what the
model writes (diagnoses, proposed commands) reach terminals (the live view, ``--ci`` lines,
``status``, ``logs``, ``report``), CI logs (GitHub Actions reads workflow commands from
stdout) and report files. Raw, that text can drive the reader's terminal: set the clipboard
(OSC 52), the window title, clear the screen, move the cursor over earlier lines, or send
the terminal's answer back as typed input. ``printable`` removes all of it; every path that
prints or renders such text goes through it. The text is kept as it was where it is data
(``state.json``, ``events.jsonl``, ``report.json``).

Hand-written rather than a library: the small ANSI-stripping packages handle colour codes,
not the whole of ECMA-48 (8-bit C1 controls, unterminated OSC/DCS strings, nF escapes), and
the rules fit in a few regular expressions.
"""

from __future__ import annotations

import re

VALUE_LIMIT = 4096
"""Characters of one value (an output, a note, a check's detail) shown in full places."""
MESSAGE_LIMIT = 8 * 1024
"""Characters of one event message (a proposed diff is the longest there is)."""
CUT_MARK = "… [cut: {total} characters]"
"""Ends a text cut at its limit; ``total`` is the length of the text as written."""

# Escape sequences (ECMA-48), 7-bit and 8-bit forms:
# - control strings (OSC, DCS, SOS, PM, APC) run to BEL or ST (ESC \ or U+009C); one that is
#   never terminated is taken to the end of its line (a terminal would swallow even more);
# - CSI: parameters 0x30-0x3F, intermediates 0x20-0x2F, a final byte 0x40-0x7E;
# - any other escape: intermediates, then one final byte 0x30-0x7E (ESC 7, ESC c, ESC ( B).
_SEQUENCE = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b[ -/]*[0-~]"
)
_SGR = r"\x1b\[[0-9;:]*m"
"""Colours and text attributes, the only sequences ``colours=True`` keeps."""
# What is left to remove: C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F:
# some terminals act on them in UTF-8), surrogates (unprintable: writing one raises), the
# bidirectional overrides and isolates (they reorder what is shown: "Trojan Source"), the
# Unicode line and paragraph separators (line breaks to some viewers), and the two
# non-characters XML forbids.
_UNWANTED = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069\u2028\u2029\ufffe\uffff"
)
_CONTROL = re.compile(f"[{_UNWANTED}]")
_CONTROL_OR_SGR = re.compile(f"({_SGR})|[{_UNWANTED}]")
_ONLY_SGR = re.compile(_SGR)
_PARTIAL_SGR = re.compile(r"\x1b\[[0-9;:]*$")


def printable(text: str | None, limit: int | None = None, *, colours: bool = False) -> str:
    """``text`` without escape sequences and control characters, tab and newline aside.

    A line redrawn with carriage returns (a progress bar) keeps what was drawn last: its
    last non-empty part. ``limit`` cuts the result to that many characters and marks the
    cut (``CUT_MARK``). ``colours`` keeps colour codes (SGR), for a log shown on a terminal.
    """
    if not text:
        return ""
    total = len(text)
    precut = limit is not None and total > _work(limit)
    if limit is not None and precut:
        text = text[: _work(limit)]  # bounded work: what is cut is not shown anyway
    text = _SEQUENCE.sub(lambda m: _kept(m, colours), text)
    if "\r" in text:
        text = "\n".join(_last_drawn(line) for line in text.replace("\r\n", "\n").split("\n"))
    if colours:
        text = _CONTROL_OR_SGR.sub(lambda m: m.group(1) or "", text)
    else:
        text = _CONTROL.sub("", text)
    if limit is not None and (precut or len(text) > limit):
        text = _PARTIAL_SGR.sub("", text[:limit]) + CUT_MARK.format(total=total)
    return text


def _work(limit: int) -> int:
    """How much of a text to clean for ``limit`` characters (escapes take room)."""
    return 4 * limit + 4096


def _kept(m: re.Match[str], colours: bool) -> str:
    return m.group(0) if colours and _ONLY_SGR.fullmatch(m.group(0)) else ""


def _last_drawn(line: str) -> str:
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


def one_line(text: str | None, limit: int = 0) -> str:
    """The first line of ``text``, printable, with `` …`` when more lines follow; cut to
    ``limit`` characters (0: no cut) with ``…``."""
    # Room for a text that is already printable and cut (an event's sentence): cut once.
    shown = printable(text, max(limit, MESSAGE_LIMIT) + 1024).strip()
    if not shown:
        return ""
    lines = shown.split("\n")
    first = lines[0].replace("\t", " ") + (" …" if len(lines) > 1 else "")
    if limit and len(first) > limit:
        first = first[: limit - 1].rstrip() + "…"
    return first


def clip_words(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with ``…``; a
    single word longer than that is cut inside it."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit // 2:  # a boundary not too far back
        head = head[:space]
    return head.rstrip(" ,;:(") + "…"


# Also the invisible marks (zero-width, bidirectional, word joiner, BOM): shown, never
# stripped, in what a person approves.
_HIDDEN = re.compile(f"[{_UNWANTED}\u200b-\u200f\u2060\ufeff]")
_LONG_SPACE = re.compile(r"[ \t]{16,}")


def revealed(text: str) -> str:
    """``text`` with each control character and invisible mark shown as its escape
    (``\\x1b``, ``\\u202e``) and each long run of blanks as its length: for what a person
    approves to run, where removing, or pushing text off the screen, would hide what runs."""
    shown = _HIDDEN.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return _LONG_SPACE.sub(lambda m: f" ⟨{len(m.group(0))} blanks⟩ ", shown)


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def json_text(text: str) -> str:
    """JSON text with the characters JSON leaves raw but terminals may act on (DEL, C1
    controls, bidirectional overrides, line separators) written as ``\\uXXXX``. They can
    only stand inside strings, so the JSON means the same."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


# The same characters in UTF-8: DEL, C1 (C2 80-9F), U+2028-202E, U+2066-2069.
_JSON_UNSAFE_UTF8 = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def json_bytes(data: bytes) -> bytes:
    """``json_text`` of UTF-8 JSON, as bytes (a large report is never held as text too)."""
    return _JSON_UNSAFE_UTF8.sub(lambda m: b"\\u%04x" % ord(m.group(0).decode()), data)
