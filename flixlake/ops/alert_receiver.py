"""A webhook receiver for Alertmanager: every notification it gets, kept as a line of JSON.

It stands for the person on call in the demo and the drill: Alertmanager posts each group of
alerts (``firing`` and, with ``send_resolved``, ``resolved``) to ``POST /alerts``; the receiver
appends the payload to ``<out>`` (JSON lines), prints one line per alert, and lists what it got
at ``GET /alerts``. Standard library only.

    flixlake alert-receiver --port 9095 --out var/monitoring/alerts.jsonl
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 1 << 20


class AlertReceiver:
    """The recorded notifications, in memory and in a JSON-lines file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.notifications: list[dict[str, Any]] = []

    def record(self, payload: dict[str, Any]) -> None:
        payload = {**payload, "received_at": time.time()}
        with self.lock:
            self.notifications.append(payload)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            with self.out.open("a") as f:
                f.write(json.dumps(payload, sort_keys=True) + "\n")
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            summary = alert.get("annotations", {}).get("summary", "")
            print(
                f"alert {alert.get('status', '?')}: {labels.get('alertname', '?')} "
                f"[{labels.get('severity', '')}] {summary}",
                flush=True,
            )

    def events(self) -> list[tuple[str, str]]:
        """(status, alertname) of every alert in every notification, in order of arrival."""
        with self.lock:
            return [
                (a.get("status", ""), a.get("labels", {}).get("alertname", ""))
                for n in self.notifications
                for a in n.get("alerts", [])
            ]

    def server(self, host: str, port: int) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/alerts" or not 0 < length <= MAX_BODY:
                    self._answer(404 if self.path != "/alerts" else 400, b"POST /alerts JSON\n")
                    return
                try:
                    payload = json.loads(self.rfile.read(length))
                except ValueError:
                    self._answer(400, b"not JSON\n")
                    return
                if not isinstance(payload, dict):
                    self._answer(400, b"expected a JSON object\n")
                    return
                receiver.record(payload)
                self._answer(200, b"ok\n")

            def do_GET(self) -> None:
                if self.path != "/alerts":
                    self._answer(404, b"GET /alerts\n")
                    return
                with receiver.lock:
                    body = json.dumps(receiver.notifications).encode()
                self._answer(200, body, "application/json")

            def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # one line per alert is printed instead

        return ThreadingHTTPServer((host, port), Handler)
