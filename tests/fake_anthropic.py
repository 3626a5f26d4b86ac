"""A fake Anthropic Messages API on 127.0.0.1: records each request and replays scripted
responses, so the real ``anthropic`` SDK is exercised over HTTP (no patching)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """Sent instead of ``body`` as JSON: an answer ``json.dumps`` cannot make."""
    delay: float = 0.0
    """Seconds the fake thinks before it answers (a slow model)."""
    requires: tuple[str, ...] = ()
    """Text the request's last message must contain (what the previous tool returned):
    else the fake answers 400 saying what was missing, so a test proves what the model
    could see before it answered."""


def tool_use(name: str, payload: dict[str, Any], tokens: tuple[int, int] = (900, 120)) -> Reply:
    """A successful answer that calls ``name`` with ``payload``."""
    return Reply(
        body={
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": name, "input": payload}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
        }
    )


_ids = iter(range(1, 1_000_000))


def call(name: str, payload: dict[str, Any], use_id: str | None = None) -> dict[str, Any]:
    """A ``tool_use`` block (for ``answer``), with an id of its own unless given one."""
    return {"type": "tool_use", "id": use_id or f"toolu_{next(_ids)}", "name": name,
            "input": payload}  # fmt: skip


def text(words: str) -> dict[str, Any]:
    """A ``text`` block (for ``answer``)."""
    return {"type": "text", "text": words}


def answer(
    *blocks: dict[str, Any],
    requires: tuple[str, ...] = (),
    stop_reason: str = "tool_use",
    tokens: tuple[int, int] = (900, 120),
    cache: tuple[int, int] = (0, 0),
    delay: float = 0.0,
) -> Reply:
    """An answer with several content blocks; ``cache`` is (read, written) tokens."""
    return Reply(
        body={
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": list(blocks),
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": tokens[0],
                "output_tokens": tokens[1],
                "cache_read_input_tokens": cache[0],
                "cache_creation_input_tokens": cache[1],
            },
        },
        requires=requires,
        delay=delay,
    )


def last_message_text(body: dict[str, Any]) -> str:
    """Everything in the request's last message, as text (tool results included)."""
    messages = body.get("messages") or []
    return json.dumps(messages[-1]) if messages else ""


def error(status: int, kind: str, message: str = "try again") -> Reply:
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": kind, "message": message}},
        headers={"retry-after": "0"},
    )


class FakeAnthropic:
    """``with FakeAnthropic([...replies]) as fake:`` then point the SDK at ``fake.url``."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.unmet: list[list[str]] = []
        """What scripted replies required and the requests did not contain."""
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "body": body, "headers": dict(self.headers)}
                    )
                    reply = (
                        fake.replies.pop(0)
                        if fake.replies
                        else error(500, "api_error", "the fake has no scripted reply left")
                    )
                missing = [r for r in reply.requires if r not in last_message_text(body)]
                if missing:
                    fake.unmet.append(missing)
                    reply = error(
                        400, "invalid_request_error", f"fake: not in the request: {missing}"
                    )
                time.sleep(reply.delay)
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                # The client may have given up waiting (a test of its timeout).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def messages(self) -> Iterator[dict[str, Any]]:
        for r in self.requests:
            yield r["body"]
