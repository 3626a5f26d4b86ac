"""What to do about the YAML mistake everyone makes once: a ``: `` inside a plain value.

``run: echo "HTTP 403: denied"`` is not a string to YAML: the ``: `` after ``403`` starts a
mapping where none may start, and the parser says only "mapping values are not allowed
here". On a line of its own (``run:`` then an indented ``python x.py --a: 3``) the value
even parses, as a mapping. Both get a hint: quote the whole value, or write it as a block
with ``|``.
"""

from __future__ import annotations

import re
from typing import Any

_KEY_LINE = re.compile(r"^(?P<indent>\s*(?:-\s+)*)(?P<key>[A-Za-z_][\w-]*):(?:\s+(?P<value>.*))?$")
"""``  - run: echo a: b`` → indent, key ``run``, value ``echo a: b``."""
_SHOWN = 60
"""The longest value repeated in a hint (longer ones are not spelled out)."""


def colon_hint(text: str, line: int, column: int) -> str:
    """A hint for "mapping values are not allowed here" at ``line``:``column`` (1-based)
    of ``text``: which key's value holds the ``: ``, and how to write it. Empty when the
    error is not inside a plain value."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    owner = _owner(lines, line - 1, column - 1)
    if owner is None:
        return ""
    key, value = owner
    return f": the value of {key}: has ': ' in it; {_quote_or_block(key, value)}"


def mapping_hint(value: Any) -> str:
    """A hint for a text value that YAML read as a mapping (``{'python x.py --a': 3}``)."""
    if not isinstance(value, dict) or len(value) != 1:
        return ""
    return (
        ": YAML read it as a mapping because of the ': ' in it; "
        "quote the whole value, or write it as a block with |"
    )


def _owner(lines: list[str], index: int, column: int) -> tuple[str, str] | None:
    """The key whose plain value holds the error: on the error's own line (``key: value``
    with the error past the key), or a less indented line above (a value that goes on
    over several lines)."""
    here = _KEY_LINE.match(lines[index])
    if here and here.group("value") and column > here.end("key"):
        return _plain(here)
    width = _indent(lines[index])
    for above in reversed(lines[:index]):
        if not above.strip() or above.lstrip().startswith("#"):
            continue
        if _indent(above) >= width:
            continue
        m = _KEY_LINE.match(above)
        owner = _plain(m) if m and m.group("value") else None
        return (owner[0], "") if owner else None  # its first line alone is not the value
    return None


def _plain(m: re.Match[str]) -> tuple[str, str] | None:
    value = re.sub(r"\s+#.*$", "", m.group("value")).strip()  # a comment is no part of it
    if not value or value[0] in "'\"{[|>&*!":
        return None  # quoted, flow or block values have other mistakes
    return m.group("key"), value


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" -"))


def _quote_or_block(key: str, value: str) -> str:
    if value and len(value) <= _SHOWN and "'" not in value:
        return f"quote the whole value ({key}: '{value}') or write it as a block with |"
    return f"quote the whole value, or write it as a block ({key}: | and the text indented below)"
