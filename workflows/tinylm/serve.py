"""Serve the target model over HTTP on loopback: ``GET /health``, and
``POST /generate {"prompt": str, "n": int, "temperature": float, "seed": int}``
→ ``{"text": str}`` (the continuation).

    python -m tinylm.serve --model ckpt/target.npz --port 8765
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from tinylm.checkpoint import decoder, load
from tinylm.data import decode, encode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("ckpt/target.npz"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)
    if not args.model.is_file():
        print(f"error: no model at {args.model}: train the target first", file=sys.stderr)
        return 2
    params, cfg, _ = load(args.model)
    lock = threading.Lock()  # one decoder, one request at a time

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"ok": True, "layers": cfg.layers, "d": cfg.d})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/generate":
                self._send(404, {"error": "not found"})
                return
            req = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
            prompt = encode(str(req.get("prompt", "")))[-(cfg.ctx // 2) :] or [0]
            n = max(1, min(int(req.get("n", 64)), cfg.ctx - len(prompt)))
            temp = float(req.get("temperature", 0.8))
            rng = np.random.default_rng(int(req.get("seed", 0)))
            with lock:
                dec = decoder(params, cfg)
                logits = dec.feed(prompt)[-1]
                out = []
                for _ in range(n):
                    if temp <= 0:
                        tok = int(np.argmax(logits))
                    else:
                        z = logits / temp
                        prob = np.exp(z - z.max())
                        tok = int(rng.choice(len(prob), p=prob / prob.sum()))
                    out.append(tok)
                    logits = dec.feed([tok])[-1]
            self._send(200, {"text": decode(out)})

        def log_message(self, *a: object) -> None:
            return None

    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as e:
        print(
            f"error: cannot listen on {args.host}:{args.port} ({e.strerror}): is the port taken?",
            file=sys.stderr,
        )
        return 2
    print(f"serving {args.model} on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
