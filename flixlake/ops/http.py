"""Plain HTTP calls from the operator tools (Airflow's REST API, the service), stdlib only."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from typing import Any

HTTP_TIMEOUT_S = 10.0


# -- HTTP: Airflow's REST API and the service ----------------------------------------------------
def http_request(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, bytes, Message]:
    """One HTTP request: status, body, headers (4xx/5xx included; connection errors raise)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def get_json(url: str) -> Any:
    """GET ``url`` as JSON; None when it is not up or answers with an error yet."""
    try:
        status, body, _ = http_request("GET", url)
        return json.loads(body) if status == 200 else None
    except (OSError, ValueError):  # refused, reset, timed out, half-started: not ready yet
        return None
