"""The per-account limit: a quiet account's burst passes, a flood gets 429 with Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from flixlake.batch.catalog import upsert_movies
from flixlake.config import Settings, load_settings
from flixlake.lake.store import lake_from_settings
from flixlake.serving.app import create_app
from flixlake.serving.ratelimit import AccountRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_one_request_per_interval() -> None:
    clock = Clock()
    limiter = AccountRateLimiter(requests_per_minute=60, burst=3, clock=clock)
    assert [limiter.allow(7) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow(7) == pytest.approx(1.0)  # the 4th must wait one interval (1 s)
    assert limiter.allow(8) == 0.0  # another account is not affected
    clock.now += 0.5
    assert limiter.allow(7) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.allow(7) == 0.0  # one interval later: one more request
    assert limiter.allow(7) > 0


def test_a_refused_request_does_not_use_up_the_allowance() -> None:
    clock = Clock()
    limiter = AccountRateLimiter(requests_per_minute=60, burst=1, clock=clock)
    assert limiter.allow(1) == 0.0
    for _ in range(100):  # hammering while limited ...
        assert limiter.allow(1) > 0
    clock.now += 1.0
    assert limiter.allow(1) == 0.0  # ... does not push the next allowed request further out


def test_idle_accounts_are_forgotten() -> None:
    clock = Clock()
    limiter = AccountRateLimiter(requests_per_minute=60, burst=2, clock=clock, prune_seconds=1)
    for account in range(100):
        limiter.allow(account)
    assert len(limiter) == 100
    clock.now += 1.5  # every account's allowance is full again
    limiter.allow(1000)
    assert len(limiter) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="requests_per_minute > 0 and burst >= 1"):
        AccountRateLimiter(requests_per_minute=0, burst=1)


def _get(app: Any, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET through the service's ASGI callable."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": path, "method": "GET"}, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def _app_with_catalog(settings: Settings) -> Any:
    """The service with a catalog read, so it answers 200 (before that it says 503)."""
    upsert_movies(lake_from_settings(settings), [f"movie-{i}" for i in range(30)])
    app = create_app(settings)
    app.refresher.refresh_catalog()
    return app


def test_the_service_answers_a_flooding_account_with_429(tmp_path: Path) -> None:
    settings = load_settings(
        "test",
        home=tmp_path,
        overrides={
            "serving": {"telemetry": {"enabled": False}},
            "attacks": {"rate_limit": {"enabled": True, "requests_per_minute": 6, "burst": 2}},
        },
    )
    app = _app_with_catalog(settings)
    statuses = [_get(app, "/recommend/42")[0] for _ in range(2)]
    status, headers, body = _get(app, "/recommend/42")
    assert statuses == [200, 200]
    assert status == 429
    assert headers[b"retry-after"] == b"10"  # 6 a minute: the next slot in 10 s
    assert body == b"too many requests for user 42: retry later"
    assert _get(app, "/recommend/43")[0] == 200  # other accounts are still answered
    metrics = app.metrics.render().decode()
    assert 'flixlake_serving_requests_total{endpoint="recommend",status="429"} 1.0' in metrics


def test_the_limit_is_off_when_disabled(tmp_path: Path) -> None:
    settings = load_settings(
        "test", home=tmp_path, overrides={"serving": {"telemetry": {"enabled": False}}}
    )
    app = _app_with_catalog(settings)  # conf/test.yaml turns the limiter off
    assert {_get(app, "/recommend/42")[0] for _ in range(30)} == {200}
