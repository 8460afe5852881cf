"""The recommendation service over real HTTP, on a tiny lake written into the real Delta tables.

Each test starts uvicorn with the service on a free loopback port (in a thread of the test
process) and stops it. Expected answers are derived from the fixture lists with the documented
rules (first 20 of the user's ranked list minus what the user saw since the cutoff; trending,
shortest window first, then the movies most frequent in the model's top-20 lists), never by
calling the service's own code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import uvicorn

from flixlake.batch.catalog import upsert_movies
from flixlake.config import Settings, load_settings
from flixlake.contract.kafka import create_topic, free_port
from flixlake.contract.logformat import EventType, parse_line
from flixlake.lake.store import Lake
from flixlake.lake.tables import SPEED_TRENDING, SPEED_USER_ACTIVITY
from flixlake.ops.broker import BrokerProcess
from flixlake.serving.app import create_app, uvicorn_config
from flixlake.serving.views import MovieCatalog, load_batch_view
from flixlake.streaming.events import SpeedLayer
from flixlake.testing import record_published_model

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MOVIES = [f"movie-{i:03d}" for i in range(80)]
USERS = range(1, 31)
K = 20
T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)
TRENDING_ROWS = [  # (window, seconds, movie, watchers)
    ("1h", 3600, "movie-070", 5),
    ("1h", 3600, "movie-071", 3),
    ("24h", 86400, "movie-072", 9),
    ("24h", 86400, "movie-070", 8),
]
TRENDING_ORDER = ["movie-070", "movie-071", "movie-072"]  # 1h by watchers, then 24h, distinct


def m1_list(user: int) -> list[str]:
    """Model m1's 25 ranked movies for a user (distinct: 7 is coprime with 80)."""
    return [MOVIES[(user * 3 + r * 7) % 80] for r in range(25)]


def m2_list(user: int) -> list[str]:
    return [MOVIES[(user * 5 + r * 11) % 80] for r in range(25)]


LISTS: dict[str, Callable[[int], list[str]]] = {"m1": m1_list, "m2": m2_list}


def popular(model: str) -> list[str]:
    """Movies by how often they appear in the model's top-20 lists; ties by movie id."""
    counts = Counter(m for u in USERS for m in LISTS[model](u)[:K])
    return sorted(counts, key=lambda m: (-counts[m], m))


def fallback(model: str | None, seen: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Trending, then the model's popular movies, then the catalog (movie_idx order: sorted ids)."""
    out: list[str] = []
    for m in TRENDING_ORDER + (popular(model) if model else []) + sorted(MOVIES):
        if m not in out and m not in seen:
            out.append(m)
    return out[:K]


# -- writing the tiny lake -------------------------------------------------------------------------
def publish(lake: Lake, version: str, published_at: dt.datetime, with_view: bool = True) -> None:
    """What compaction and the publish step leave behind: the movies, the batch view partition,
    then the models row."""
    upsert_movies(lake, MOVIES)
    if with_view:
        rows = [
            {
                "user_id": u,
                "rank": r + 1,
                "movie_id": m,
                "score": 1.0 / (r + 1),
                "model_version": version,
            }
            for u in USERS
            for r, m in enumerate(LISTS[version](u))
        ]
        lake.append("batch_recommendations", pa.Table.from_pylist(rows))
    record_published_model(lake, version, published_at.date(), published_at)


def write_trending(lake: Lake) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "window": w,
            "window_seconds": s,
            "movie_id": m,
            "watchers": n,
            "as_of": now,
            "updated_batch": 1,
            "updated_at": now,
        }
        for w, s, m, n in TRENDING_ROWS
    ]
    lake.append("speed_trending", pa.Table.from_pylist(rows, schema=SPEED_TRENDING.schema))


def write_activity(lake: Lake, activity: dict[int, tuple[list[str], list[str]]]) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "user_id": user,
            "watched_movies": watched,
            "rated_movies": rated,
            "first_seen": now,
            "last_seen": now,
            "since": T0,
            "model_version": "m1",
            "updated_batch": 1,
            "updated_at": now,
        }
        for user, (watched, rated) in activity.items()
    ]
    lake.append(
        "speed_user_activity", pa.Table.from_pylist(rows, schema=SPEED_USER_ACTIVITY.schema)
    )


# -- running the service ---------------------------------------------------------------------------
Response = tuple[int, dict[str, str], str]


class Service:
    """uvicorn + the service on a free port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.app = create_app(settings, port=self.port)
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died during startup"
            assert time.monotonic() < deadline, f"server not started within {timeout}s"
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"

    def request(self, path: str, method: str = "GET") -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
        finally:
            conn.close()

    def get(self, path: str) -> Response:
        return self.request(path)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        _, _, text = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        prefix = f"{name}{{{want}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(prefix + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextlib.contextmanager
def running(settings: Settings, loaded: bool = True) -> Iterator[Service]:
    """The service, started; with ``loaded``, once it serves a batch view (it answers before)."""
    service = Service(settings)
    service.start()
    try:
        if loaded:
            wait_for(lambda: json.loads(service.get("/health")[2])["batch_views"], timeout=60)
        yield service
    finally:
        service.stop()


def serving_settings(tmp_path: Path, **serving: Any) -> Settings:
    overrides: dict[str, Any] = {
        "speed_refresh_seconds": 0.2,
        "model_poll_seconds": 0.3,
        "telemetry": {"enabled": False},
    }
    overrides.update(serving)
    return load_settings("test", home=tmp_path / "home", overrides={"serving": overrides})


def wait_for(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll until ``check()`` is truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        assert time.monotonic() < deadline, f"condition not met within {timeout}s (last {value!r})"
        time.sleep(interval)
        value = check()
    return value


@pytest.fixture
def served_lake(tmp_path: Path) -> tuple[Settings, Lake]:
    settings = serving_settings(tmp_path)
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    write_trending(lake)
    return settings, lake


# -- tests -----------------------------------------------------------------------------------------
def test_the_service_lake_and_contract_never_import_spark_airflow_or_plots(tmp_path: Path) -> None:
    """What the slim install (core dependencies only) must run: the service on the lake."""
    modules = [
        "flixlake.serving.app",
        "flixlake.serving.recommender",
        "flixlake.serving.refresh",
        "flixlake.serving.telemetry",
        "flixlake.serving.views",
        "flixlake.lake.store",
        "flixlake.lake.registry",
        "flixlake.lake.bronze",
        "flixlake.contract.logformat",
        "flixlake.contract.served_record",
        "flixlake.contract.kafka",
    ]
    # (not pandas: pyarrow.dataset imports it when it happens to be installed; our code does not,
    # which the import contract in pyproject.toml checks)
    heavy = ["pyspark", "airflow", "scipy", "matplotlib"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from flixlake.config import load_settings\n"
        "import flixlake.serving.app as app\n"
        f"app.create_app(load_settings('test', home={str(tmp_path)!r}))\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_answer_is_one_line_of_the_users_top_20(served_lake: tuple[Settings, Lake]) -> None:
    settings, _ = served_lake
    with running(settings) as service:
        status, headers, body = service.get("/recommend/7")
        status2, headers2, _ = service.get("/recommend/7")
    assert status == 200 and status2 == 200
    assert headers["content-type"].startswith("text/plain")
    assert "\n" not in body
    ids = body.split(",")
    assert ids == m1_list(7)[:K]
    assert len(set(ids)) == K
    assert headers["x-model-version"] == "m1"
    assert headers["x-variant"] == "control"
    assert headers["x-recommendation-source"] == "batch"
    assert headers["x-request-id"] and headers["x-request-id"] != headers2["x-request-id"]


def test_movies_seen_since_the_cutoff_disappear_after_a_refresh(
    served_lake: tuple[Settings, Lake],
) -> None:
    settings, lake = served_lake
    ranked = m1_list(1)
    watched, rated = [ranked[0], ranked[2]], [ranked[4]]
    many = m1_list(2)[:10]  # user 2 saw 10 of 25: 15 remain, 5 come from trending/popular
    with running(settings) as service:
        assert service.get("/recommend/1")[2].split(",") == ranked[:K]
        write_activity(lake, {1: (watched, rated), 2: (many, []), 500: (["movie-070"], [])})
        body = wait_for(lambda: (b := service.get("/recommend/1")[2]) != ",".join(ranked[:K]) and b)
        user2 = service.get("/recommend/2")
        new_user = service.get("/recommend/500")
        fallbacks_short = service.metric("flixlake_serving_fallbacks_total", reason="short_list")
        fallbacks_new = service.metric("flixlake_serving_fallbacks_total", reason="new_user")
    seen = {*watched, *rated}
    assert body.split(",") == [m for m in ranked if m not in seen][:K]
    rest = [m for m in m1_list(2) if m not in many]
    expected2 = rest + [m for m in fallback("m1", set(many)) if m not in rest][: K - len(rest)]
    assert user2[2].split(",") == expected2
    assert len(set(expected2)) == K
    assert user2[1]["x-recommendation-source"] == "batch_filled"
    assert new_user[2].split(",") == fallback("m1", {"movie-070"})
    assert new_user[1]["x-recommendation-source"] == "fallback"
    assert fallbacks_short >= 1 and fallbacks_new >= 1


def test_unknown_users_get_trending_then_popular(served_lake: tuple[Settings, Lake]) -> None:
    settings, _ = served_lake
    with running(settings) as service:
        status, headers, body = service.get("/recommend/123456")
        unknown = service.metric("flixlake_serving_fallbacks_total", reason="unknown_user")
    assert status == 200
    assert body.split(",") == fallback("m1")
    assert body.split(",")[:3] == TRENDING_ORDER
    assert len(body.split(",")) == K
    assert headers["x-recommendation-source"] == "fallback"
    assert headers["x-model-version"] == "m1"
    assert unknown == 1


def test_without_a_lake_it_says_503_then_answers_from_the_catalog(tmp_path: Path) -> None:
    """Never an empty 200: nothing to recommend is a 503 with Retry-After; once the catalog is
    there every answer has movies, even while no batch view is loaded."""
    settings = serving_settings(tmp_path, startup_wait_seconds=5)
    assert not settings.lake_root.exists()
    with running(settings, loaded=False) as service:
        empty = service.get("/recommend/5")
        head = service.request("/recommend/5", "HEAD")
        health = json.loads(service.get("/health")[2])
        ready = service.get("/health/ready")
        refused = service.metric(
            "flixlake_serving_requests_total", endpoint="recommend", status="503"
        )
        available = service.metric("flixlake_serving_view_available", view="speed_trending")
        # a published model whose batch view is missing, the catalog, and trending appear
        lake = Lake(settings.lake_root)
        publish(lake, "m9", T0, with_view=False)
        write_trending(lake)
        trending = wait_for(lambda: (r := service.get("/recommend/5"))[0] == 200 and r)
        full = wait_for(
            lambda: (r := service.get("/recommend/5"))[2].split(",")[:3] == TRENDING_ORDER and r
        )
        health_after = json.loads(service.get("/health")[2])
        ready_after = service.get("/health/ready")
    assert empty[0] == 503 and empty[1]["retry-after"] == "1" and "catalog" in empty[2]
    assert head[0] == 503 and head[2] == ""
    assert health["status"] == "degraded"
    assert health["views"]["batch_recommendations"]["available"] is False
    assert health["variants"]["control"]["model_version"] == "none"
    assert ready[0] == 503 and json.loads(ready[2])["status"] == "not ready"
    assert refused == 2 and available == 0  # the GET and the HEAD, both counted as 503
    assert trending[2] != ""
    assert full[2].split(",") == fallback(None)  # trending, then the catalog's static list
    assert len(full[2].split(",")) == K
    assert full[1]["x-recommendation-source"] == "fallback"
    assert health_after["views"]["speed_trending"]["available"] is True
    assert health_after["variants"]["control"]["model_version"] == "none"
    assert ready_after[0] == 503  # still no batch view: not ready for a load balancer
    assert any("batch view" in r for r in json.loads(ready_after[2])["reasons"])


BAD_REQUESTS = [
    ("GET", "/recommend/abc", 400),
    ("GET", "/recommend/-5", 400),
    ("GET", "/recommend/0", 400),
    ("GET", "/recommend/1.5", 400),
    ("GET", "/recommend/2147483648", 400),
    ("GET", "/recommend/" + "9" * 400, 400),
    ("GET", "/recommend/%EF%BC%91", 400),  # a full-width digit one
    ("GET", "/recommend/%20", 400),
    ("GET", "/recommend/", 400),
    ("GET", "/recommend", 400),
    ("GET", "/recommend/1/2", 404),
    ("GET", "/recommend/1/", 404),
    ("GET", "/recommendations/1", 404),
    ("GET", "/", 404),
    ("POST", "/recommend/1", 405),
    ("PUT", "/recommend/1", 405),
    ("DELETE", "/recommend/1", 405),
    ("POST", "/health", 405),
]


def raw_exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_bad_requests_get_a_clear_4xx(served_lake: tuple[Settings, Lake]) -> None:
    settings, _ = served_lake
    with running(settings) as service:
        answers = [(m, p, *service.request(p, m)) for m, p, _ in BAD_REQUESTS]
        garbage = raw_exchange(service.port, b"BLAH\x00\x01 nonsense\r\n\r\n")
        still_fine = service.get("/recommend/3")
        counted = service.metric(
            "flixlake_serving_requests_total", endpoint="recommend", status="400"
        )
    for (method, path, expected), (_, _, status, headers, body) in zip(
        BAD_REQUESTS, answers, strict=True
    ):
        assert status == expected, (method, path, status, body)
        if method != "HEAD":
            assert body and "\n" not in body.strip(), (method, path, body)
        if expected == 405:
            assert headers.get("allow") == "GET, HEAD"
    assert garbage.startswith(b"HTTP/1.1 400"), garbage[:80]
    assert still_fine[0] == 200 and still_fine[2].split(",") == m1_list(3)[:K]
    assert counted == sum(1 for _, p, s in BAD_REQUESTS if s == 400 and p.startswith("/recommend"))


def test_head_works_wherever_get_does(served_lake: tuple[Settings, Lake]) -> None:
    settings, _ = served_lake
    with running(settings) as service:
        pairs = {
            path: (service.request(path, "GET"), service.request(path, "HEAD"))
            for path in ("/recommend/7", "/health/live", "/health", "/metrics")
        }
        answers = service.metric(
            "flixlake_serving_requests_total", endpoint="recommend", status="200"
        )
    for path, ((get_status, get_headers, get_body), (status, headers, body)) in pairs.items():
        assert status == get_status == 200, path
        assert body == "", path  # no body, ...
        assert headers["content-type"] == get_headers["content-type"], path  # ... same headers
        if path == "/recommend/7":
            assert (
                headers["content-length"]
                == get_headers["content-length"]
                == str(len(get_body.encode()))
            )
            assert headers["x-model-version"] == "m1"
    assert answers == 1  # a HEAD is not an answer: not counted, not logged as one


def test_health_reveals_no_internals_and_ready_means_loaded_and_fresh(
    tmp_path: Path,
) -> None:
    """/health/live is 200 from the start; /health/ready is 503 until a batch view is loaded and
    the speed views are read, then 200; neither /health nor /health/ready shows Kafka
    addresses, host names or exception text, even while a view cannot be read."""
    secret_port = free_port()
    settings = serving_settings(
        tmp_path,
        telemetry={
            "enabled": True,
            "bootstrap_servers": f"127.0.0.1:{secret_port}",
            "server_name": "secret-host.example:8082",
            "buffer_records": 10,
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    broken = settings.lake_root / "speed_user_activity" / "_delta_log"
    broken.mkdir(parents=True)
    (broken / "00000000000000000000.json").write_text("{not json: FancyDecodeError")
    with running(settings) as service:
        live = service.get("/health/live")
        not_ready = wait_for(lambda: (r := service.get("/health/ready"))[0] == 503 and r)
        texts = [service.get("/health")[2], not_ready[2]]
        errors = wait_for(
            lambda: service.metric(
                "flixlake_serving_refresh_errors_total", view="speed_user_activity"
            )
        )
        texts.append(service.get("/health")[2])
        shutil.rmtree(settings.lake_root / "speed_user_activity")
        write_activity(lake, {1: (["movie-001"], [])})
        write_trending(lake)
        ready = wait_for(lambda: (r := service.get("/health/ready"))[0] == 200 and r, timeout=30)
        texts.append(service.get("/health")[2])
    assert live == (200, live[1], "live")
    reasons = json.loads(not_ready[2])["reasons"]
    assert any("speed_user_activity" in r for r in reasons)
    assert any("speed_trending" in r for r in reasons)
    assert errors >= 1  # the read really failed (and was logged), yet nothing of it is shown
    for text in texts:
        for secret in (str(secret_port), "secret-host", socket.gethostname(), "Error", "json"):
            assert secret not in text, (secret, text)
    assert json.loads(ready[2]) == {"status": "ready", "reasons": []}


def test_a_new_model_is_swapped_in_without_failing_a_request(
    served_lake: tuple[Settings, Lake],
) -> None:
    settings, lake = served_lake
    expected = {m: {u: ",".join(LISTS[m](u)[:K]) for u in USERS} for m in LISTS}
    stop = threading.Event()
    results: list[tuple[int, str, int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def hammer(offset: int, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = offset
        mine: list[tuple[int, str, int, str]] = []
        while not stop.is_set():
            user = USERS[i % len(USERS)]
            i += 1
            try:
                conn.request("GET", f"/recommend/{user}")
                resp = conn.getresponse()
                body = resp.read().decode()
                mine.append((user, resp.getheader("x-model-version") or "", resp.status, body))
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()
        with lock:
            results.extend(mine)

    with running(settings) as service:
        threads = [threading.Thread(target=hammer, args=(k * 7, service.port)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            publish(lake, "m2", T0 + dt.timedelta(days=1))
            wait_for(lambda: service.get("/recommend/1")[1]["x-model-version"] == "m2", timeout=30)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        swaps = service.metric("flixlake_serving_view_swaps_total")
    assert failures == []
    assert len(results) > 100
    bad = [
        r for r in results if r[2] != 200 or r[1] not in expected or expected[r[1]][r[0]] != r[3]
    ]
    assert bad == []
    versions = Counter(r[1] for r in results)
    assert versions["m1"] > 0 and versions["m2"] > 0
    assert swaps >= 2  # the first load and the swap to m2


def assigned(experiment: str, user: int, split: list[tuple[str, float]]) -> str:
    """The documented rule: sha1("<experiment>:<user>") first 8 bytes mod 10000 -> ranges."""
    digest = hashlib.sha1(f"{experiment}:{user}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10_000
    upper = 0.0
    for name, percent in split:
        upper += percent * 100
        if bucket < upper:
            return name
    raise AssertionError("split does not cover 100 %")


def test_experiment_routes_users_by_stable_hash(tmp_path: Path) -> None:
    split = [("control", 70.0), ("treatment", 30.0)]
    settings = serving_settings(
        tmp_path,
        experiment={
            "name": "exp-ab",
            "variants": [
                {"name": "control", "model": "m1", "percent": 70},
                {"name": "treatment", "model": "m2", "percent": 30},
            ],
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    publish(lake, "m2", T0 + dt.timedelta(days=1))
    write_trending(lake)
    users = [*USERS, *range(1000, 1200)]
    with running(settings) as service:
        first = {u: service.get(f"/recommend/{u}") for u in users}
        again = {u: service.get(f"/recommend/{u}") for u in users[:40]}
        health = json.loads(service.get("/health")[2])
    model_of = {"control": "m1", "treatment": "m2"}
    for user, (status, headers, body) in first.items():
        variant = assigned("exp-ab", user, split)
        assert status == 200
        assert headers["x-variant"] == variant, user
        assert headers["x-model-version"] == model_of[variant]
        if user in USERS:
            assert body == ",".join(LISTS[model_of[variant]](user)[:K])
        else:
            assert body.split(",") == fallback(model_of[variant])
    for user, (_, headers, body) in again.items():
        assert (headers["x-variant"], body) == (first[user][1]["x-variant"], first[user][2])
    treatment = sum(1 for _, h, _ in first.values() if h["x-variant"] == "treatment")
    assert 0.15 * len(users) < treatment < 0.45 * len(users)  # 30 % of 230, far outside 6 sigma
    assert health["variants"]["treatment"]["model_version"] == "m2"
    assert set(health["batch_views"]) == {"m1", "m2"}


def test_the_previous_models_variant_drops_what_its_users_watched_since_its_run_date(
    tmp_path: Path, spark: Any
) -> None:
    """Previous (m1, run 11-20) against current (m2, run 11-21): a watch on 11-20 after m1's
    cutoff is in neither m1's training data nor a view cut at m2's date. The speed layer, told
    which models the experiment serves, starts its views at m1's date, so m1's users never get
    that movie back."""
    split = [("control", 50.0), ("treatment", 50.0)]
    settings = serving_settings(
        tmp_path,
        experiment={
            "name": "prev-vs-current",
            "variants": [
                {"name": "control", "model": "previous", "percent": 50},
                {"name": "treatment", "model": "current", "percent": 50},
            ],
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    publish(lake, "m2", T0 + dt.timedelta(days=1))
    user = next(u for u in USERS if assigned("prev-vs-current", u, split) == "control")
    watched = m1_list(user)[0]
    line = f"{T0 + dt.timedelta(hours=7):%Y-%m-%dT%H:%M:%S},{user},GET /data/m/{watched}/1.mpg"
    served_models = tuple(v.model for v in settings.serving.experiment.variants)  # as job.py
    speed = SpeedLayer(lake, settings.streaming, "movielog", "q", model_refs=served_models)
    kafka_rows = pa.table(  # one micro-batch as Spark's Kafka source gives it
        {
            "key": pa.nulls(1, pa.binary()),
            "value": pa.array([line.encode()], pa.binary()),
            "topic": pa.array(["movielog"]),
            "partition": pa.array([0], pa.int32()),
            "offset": pa.array([0], pa.int64()),
            "timestamp": pa.array([T0], pa.timestamp("us", tz="UTC")),
            "timestampType": pa.array([0], pa.int32()),
        }
    )
    speed.process(spark.createDataFrame(kafka_rows), batch_id=0)
    with running(settings) as service:
        status, headers, body = service.get(f"/recommend/{user}")
    assert status == 200
    assert (headers["x-variant"], headers["x-model-version"]) == ("control", "m1")
    assert body.split(",") == m1_list(user)[1 : K + 1]  # all but the watched one
    assert headers["x-recommendation-source"] == "batch_filtered"


def test_load_batch_view_closes_rank_gaps_and_drops_duplicates(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    rows = [
        (7, 1, "a"),
        (7, 2, "b"),
        (7, 5, "c"),  # ranks 3-4 missing
        (7, 6, "a"),  # a duplicate of rank 1
        (7, 7, "d"),
        (3, 1, "x"),
        (3, 2, "y"),
        (3, 3, "z"),  # beyond width 2
    ]
    table = pa.Table.from_pylist(
        [
            {"user_id": u, "rank": r, "movie_id": m, "score": 0.5, "model_version": "v1"}
            for u, r, m in rows
        ]
        + [{"user_id": 7, "rank": 1, "movie_id": "other", "score": 0.5, "model_version": "v2"}]
    )
    lake.append("batch_recommendations", table)
    catalog = MovieCatalog()
    view = load_batch_view(lake, "v1", catalog, width=8)
    narrow = load_batch_view(lake, "v1", catalog, width=2)
    assert view is not None and narrow is not None
    assert view.users.tolist() == [3, 7]
    assert [catalog.ids[i] for i in view.row(7) or []] == ["a", "b", "c", "d"]
    assert [catalog.ids[i] for i in view.row(3) or []] == ["x", "y", "z"]
    assert [catalog.ids[i] for i in narrow.row(3) or []] == ["x", "y"]  # ranks 1..width kept
    assert [catalog.ids[i] for i in narrow.row(7) or []] == ["a", "b"]
    assert view.row(8) is None
    assert view.rows == 8
    assert load_batch_view(lake, "v3", catalog) is None


# -- telemetry -------------------------------------------------------------------------------------
def consume(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_every_answer_is_logged_to_kafka(tmp_path: Path, broker: BrokerProcess) -> None:
    log_topic, served_topic = "movielog-serving", "served-serving"
    for topic in (log_topic, served_topic):
        assert create_topic(broker.bootstrap, topic, partitions=2) == 2
    settings = serving_settings(
        tmp_path,
        telemetry={
            "enabled": True,
            "bootstrap_servers": broker.bootstrap,
            "log_topic": log_topic,
            "served_topic": served_topic,
            "server_name": "reco-test:8082",
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    write_trending(lake)
    users = [1, 2, 3, 999]
    with running(settings) as service:
        answers = {u: service.get(f"/recommend/{u}") for u in users}
        assert service.get("/recommend/abc")[0] == 400  # not logged: no valid user
        lines = consume(broker.bootstrap, log_topic, len(users))
        records = consume(broker.bootstrap, served_topic, len(users))
        wait_for(
            lambda: service.metric("flixlake_serving_telemetry_records_total", outcome="sent") >= 8
        )
    assert len(lines) == len(users) and len(records) == len(users)
    for message in lines:
        event = parse_line(message.value)
        assert event.ok, message.value
        assert event.event_type == EventType.RECO
        assert event.reco_server == "reco-test:8082" and event.reco_status == 200
        assert event.user_id is not None
        assert list(event.reco_results or ()) == answers[event.user_id][2].split(",")
        assert message.key == str(event.user_id).encode()
    parsed = [json.loads(m.value) for m in records]
    assert sorted(r["user_id"] for r in parsed) == users
    for record in parsed:
        _, headers, body = answers[record["user_id"]]
        assert record["request_id"] == headers["x-request-id"]
        assert record["model_version"] == "m1" and record["variant"] == "control"
        assert record["experiment"] == "default"
        assert record["items"] == body.split(",") and record["status"] == 200
        assert record["latency_ms"] >= 0 and record["time"].endswith("Z")


def test_a_dead_broker_neither_fails_nor_blocks_requests(tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens here
    settings = serving_settings(
        tmp_path,
        telemetry={
            "enabled": True,
            "bootstrap_servers": f"127.0.0.1:{nobody}",
            "buffer_records": 20,
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    timings: list[float] = []
    statuses: Counter[int] = Counter()
    with running(settings) as service:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        for i in range(2500):
            started = time.perf_counter()
            conn.request("GET", f"/recommend/{USERS[i % 30]}")
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] += 1
            timings.append(time.perf_counter() - started)
        conn.close()
        dropped = wait_for(
            lambda: service.metric("flixlake_serving_telemetry_dropped_total", reason="buffer_full")
        )
        buffered = service.metric("flixlake_serving_telemetry_buffered")
    timings.sort()
    median, worst = timings[len(timings) // 2] * 1e3, timings[-1] * 1e3
    print(f"dead broker: median {median:.2f} ms, max {worst:.1f} ms")
    assert statuses == {200: 2500}
    assert dropped > 0
    assert buffered <= 20


def test_the_live_loop_kafka_watch_to_answer_to_delta_to_lineage(
    spark: Any, tmp_path: Path, broker: BrokerProcess
) -> None:
    """A watch produced to Kafka leaves the user's next answer once the speed view refreshes; the
    answers land in ``served_recommendations`` and ``lineage --request`` leads to their model."""
    from typer.testing import CliRunner

    from flixlake.contract.kafka import produce_lines
    from flixlake.contract.logformat import format_watch
    from flixlake.ops.cli import app
    from flixlake.streaming.job import run_speed_layer

    log_topic, served_topic = "movielog-live", "served-live"
    for topic in (log_topic, served_topic):
        assert create_topic(broker.bootstrap, topic, partitions=2) == 2
    settings = load_settings(
        "test",
        home=tmp_path / "home",
        overrides={
            "kafka": {"bootstrap_servers": broker.bootstrap, "topic": log_topic},
            "streaming": {"trigger_seconds": 0.2, "query_name": "live"},
            "serving": {
                "speed_refresh_seconds": 0.2,
                "model_poll_seconds": 0.3,
                "telemetry": {"enabled": True, "served_topic": served_topic},
            },
        },
    )
    lake = Lake(settings.lake_root)
    publish(lake, "m1", T0)
    ranked = m1_list(1)
    stop_stream = threading.Event()
    summary: dict[str, Any] = {}
    stream = threading.Thread(
        target=lambda: summary.update(run_speed_layer(spark, settings, lake, until=stop_stream))
    )
    stream.start()
    try:
        with running(settings) as service:
            before = service.get("/recommend/1")
            assert before[2].split(",") == ranked[:K]
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            produce_lines(broker.bootstrap, log_topic, [format_watch(now, 1, ranked[0], 0)])
            after = wait_for(
                lambda: (r := service.get("/recommend/1"))[2].split(",")[0] != ranked[0] and r,
                timeout=90,
            )
            ids = {before[1]["x-request-id"], after[1]["x-request-id"]}
            served = wait_for(
                lambda: (
                    lake.exists("served_recommendations")
                    and ids <= set(lake.read("served_recommendations")["request_id"].to_pylist())
                    and lake.read("served_recommendations")
                ),
                timeout=90,
            )
    finally:
        stop_stream.set()
        stream.join(120)
    assert not stream.is_alive()
    assert after[2].split(",") == ranked[1 : K + 1]
    rows = {r["request_id"]: r for r in served.to_pylist()}
    first = rows[before[1]["x-request-id"]]
    assert first["user_id"] == 1 and first["items"] == ranked[:K]
    assert first["answer_source"] == before[1]["x-recommendation-source"] == "batch"
    assert (first["model_version"], first["variant"], first["experiment"]) == (
        "m1",
        "control",
        "default",
    )
    assert summary["served"]["events"] >= 2 and summary["events"] >= 1

    result = CliRunner().invoke(
        app,
        ["lineage", "--request", after[1]["x-request-id"], "--home", str(settings.home)],
        env={"FLIXLAKE_ENV": "test"},
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["request"]["items"] == ranked[1 : K + 1]
    assert info["model_lineage"]["model"]["model_version"] == "m1"
    missing = CliRunner().invoke(
        app,
        ["lineage", "--request", "no-such-id", "--home", str(settings.home)],
        env={"FLIXLAKE_ENV": "test"},
    )
    assert missing.exit_code == 2 and "no-such-id" in missing.output
