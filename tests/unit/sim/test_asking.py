"""The simulator asks the service as the course's infrastructure does, and logs every call."""

from __future__ import annotations

import datetime as dt
import http.server
import threading

from flixlake.contract.kafka import free_port
from flixlake.contract.logformat import format_reco, parse_line
from flixlake.sim.simulate import ask_service


def test_a_refused_call_is_logged_as_status_0_with_the_error() -> None:
    asked = ask_service(f"http://127.0.0.1:{free_port()}", 42)
    assert asked.status == 0
    assert asked.result == ["java.net.ConnectException: Connection refused"]
    line = format_reco(dt.datetime(2026, 11, 22, 8), 42, asked.server, 0, asked.result, asked.ms)
    event = parse_line(line)
    assert event.ok and event.reco_status == 0 and event.reco_results is None
    assert event.reco_error == "java.net.ConnectException: Connection refused"


def test_an_answer_is_logged_with_its_status_ids_and_server() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, b"a+1,b+2") if self.path == "/recommend/42" else (503, b"no")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok, failed = ask_service(url, 42), ask_service(url, 7)
    finally:
        server.shutdown()
    assert (ok.status, ok.result, ok.server) == (200, ["a+1", "b+2"], url.removeprefix("http://"))
    assert failed.status == 503 and failed.result[0].startswith("HTTP 503")
