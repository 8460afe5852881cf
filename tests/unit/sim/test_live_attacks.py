"""Attacks in a live simulation: lines at their time, floods asking the service, labels aside."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from flixlake.contract.logformat import parse_line
from flixlake.sim.attacks import SIM_ACCOUNT_OFFSET, parse_attack
from flixlake.sim.simulate import Simulator, parse_faults
from flixlake.sim.world import World

WORLD = World.build(60, 40, seed=4)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _run(sim: Simulator, clock: Clock, seconds: float, step: float = 1.0) -> list[bytes]:
    lines = []
    end = clock.now + seconds
    while clock.now < end:
        lines += [ln.value for ln in sim.next_lines(500, clock.now) if ln.kind == "attack"]
        clock.now += step
    return lines


def test_attack_lines_come_due_in_order_with_unmarked_lines() -> None:
    clock = Clock()
    push = parse_attack("push:accounts=3,after=1,hours=0.05")
    sim = Simulator(WORLD, 4, parse_faults(""), clock=clock, minute_seconds=1.0, attacks=[push])
    assert sim.attacks is not None
    label = sim.attacks.labels().attacks[0]
    assert _run(sim, clock, 0.5) == []  # the campaign starts one simulated minute in
    lines = _run(sim, clock, 400)
    events = [parse_line(ln) for ln in lines]
    assert all(e.ok for e in events)
    assert {e.user_id for e in events} == set(label.accounts)
    assert min(label.accounts) > WORLD.n_users + SIM_ACCOUNT_OFFSET
    assert {e.movie_id for e in events} == {label.target_movie}
    assert sorted(e.rating for e in events if e.event_type == "rate") == [5, 5, 5]
    times = [e.event_time for e in events]
    assert times == sorted(times)
    assert sim.attack_counts["lines"] == len(lines)
    assert sim.attacks.next_due() is None  # every line went out


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(429)
        self.send_header("Retry-After", "1")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the simulator's users ask too: no refused connection


@pytest.fixture
def limiting_service() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


def test_a_flood_asks_the_service_and_counts_its_refusals(limiting_service: str) -> None:
    clock = Clock()
    flood = parse_attack("flood:accounts=2,requests=5,after=0,hours=0.01")
    sim = Simulator(
        WORLD, 4, parse_faults(""), serve_url=limiting_service, clock=clock, attacks=[flood]
    )
    try:
        assert _run(sim, clock, 60) == []  # the service logs requests, the simulator does not
        deadline = time.monotonic() + 10
        while sim.attack_counts["limited"] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sim.close()
    assert sim.attack_counts == {"lines": 0, "asked": 10, "answered": 0, "limited": 10, "failed": 0}


def test_without_a_service_flood_requests_are_logged_as_telemetry_lines() -> None:
    clock = Clock()
    flood = parse_attack("flood:accounts=1,requests=4,after=0,hours=0.01")
    sim = Simulator(WORLD, 4, parse_faults(""), clock=clock, attacks=[flood])
    events = [parse_line(ln) for ln in _run(sim, clock, 120)]
    assert [e.event_type for e in events] == ["reco"] * 4
    assert all(e.reco_status == 200 and len(e.reco_results) == 20 for e in events)
