"""What the operator tools print: tables, the batch summary, the demo's live status line."""

from __future__ import annotations

import re
import time
from http.client import HTTPException
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flixlake.config import Settings
from flixlake.lake.registry import current_published_model
from flixlake.lake.store import lake_from_settings
from flixlake.ops.http import http_request
from flixlake.ops.supervise import log_tail

console = Console()
err = Console(stderr=True)


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    if not rows:
        console.print("(no rows)")
        return
    for column in rows[0]:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*[cell(v) for v in row.values()])
    console.print(table)


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value[:5])) + (" …" if len(value) > 5 else "")
    return "" if value is None else str(value)


def print_batch_summary(summaries: dict[str, dict[str, Any]]) -> None:
    """Headline numbers of one batch run."""
    evaluation = summaries.get("evaluate", {})
    k = evaluation.get("k", 20)
    rows = []
    recommenders = {"als": evaluation.get("als"), **(evaluation.get("baselines") or {})}
    if "popularity" not in recommenders:
        recommenders["popularity"] = evaluation.get("popularity")
    incumbent = evaluation.get("incumbent") or {}
    if incumbent.get("scored"):
        recommenders[f"current ({incumbent.get('model_version')})"] = incumbent
    for name, found in recommenders.items():
        metrics = found or {}
        rows.append(
            {
                "recommender": name,
                **{f"{m}@{k}": metrics.get(m) for m in ("ndcg", "precision", "recall", "map")},
                "coverage": metrics.get("coverage"),
                "users": metrics.get("n_users"),
            }
        )
    print_table(rows, title="offline evaluation on the held-out window (same users)")
    publish = summaries.get("publish", {})
    train = summaries.get("train", {})
    search = train.get("search_summary") or {}
    console.print(f"ALS {train.get('model_version')} params {train.get('params')}")
    if search:
        console.print(
            f"search: {search.get('trials_run')} of {search.get('trials')} trials "
            f"({search.get('failed')} failed), chosen trial {search.get('chosen_trial')}: "
            f"{search.get('chosen')}"
        )
    if evaluation.get("recommender"):
        console.print(
            f"served recommender: {evaluation['recommender']} "
            f"(model {evaluation.get('model_version')})"
        )
    console.print(f"published: {publish.get('published')}  {publish.get('reason', '')}")


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def print_sample_answer(console: Console, settings: Settings, service_url: str) -> None:
    """``curl`` one user of the published batch view, and show what came back."""
    lake = lake_from_settings(settings)
    model = current_published_model(lake)
    version = model["model_version"] if model else ""
    rows = lake.sql(
        "SELECT min(user_id) AS user_id FROM batch_recommendations "
        f"WHERE model_version = '{version}'"
    ).to_pylist()
    user = rows[0]["user_id"] if rows and rows[0]["user_id"] is not None else 1
    url = f"{service_url}/recommend/{user}"
    asked = time.perf_counter()
    status, body, headers = http_request("GET", url)
    took = (time.perf_counter() - asked) * 1000
    console.print(f"    $ curl {url}")
    console.print(f"    {body.decode('utf-8', 'replace').strip()}", soft_wrap=True, markup=False)
    console.print(
        f"    (HTTP {status} in {took:.1f} ms, X-Model-Version: "
        f"{headers.get('X-Model-Version', '?')}, source {headers.get('X-Recommendation-Source')})"
    )


# -- the status line -----------------------------------------------------------------------------
_BATCH_LINE = re.compile(
    r"^\[(?P<query>[\w-]+)\] batch \d+: (?P<events>\d+) events \((?P<rejected>\d+) rejected\)"
    r".* lag (?P<lag>[\d.]+s|-)"
)


_SENT_LINE = re.compile(r"sent (?P<sent>[\d,]+) lines, (?P<rate>\d+)/s")


class LiveStatus:
    """One status line, from the speed layer's and the simulator's logs and the service's
    /metrics: lines sent, events landed in bronze and the lag, answers and their median
    latency, served answers landed in the lake."""

    LEGEND = "lines sent │ events the speed layer landed │ service answers │ answers landed"
    AVAILABILITY_LEGEND = " │ availability of the last whole minute, from the log"

    def __init__(
        self,
        stream_log: Path,
        simulator_log: Path,
        metrics_url: str,
        query: str,
        exporter_url: str | None = None,
    ) -> None:
        self.exporter_url = exporter_url  # flixlake monitor's /metrics, when it runs
        self.stream_log = stream_log
        self.simulator_log = simulator_log
        self.metrics_url = metrics_url
        self.query = query
        self._stream_offset = 0
        self.events = 0
        self.rejected = 0
        self.served_landed = 0
        self.lag = "-"

    def line(self) -> str:
        self._read_stream_log()
        sent = _last_match(_SENT_LINE, log_tail(self.simulator_log))
        simulator = f"sent {sent['sent']} ({sent['rate']}/s)" if sent else "sent 0"
        quarantined = f" ({self.rejected:,} quarantined)" if self.rejected else ""
        availability = f" │ {self._availability()}" if self.exporter_url else ""
        return (
            f"{simulator} │ bronze +{self.events:,}{quarantined}, lag {self.lag} │ "
            f"{self._service()} │ served +{self.served_landed:,}{availability}"
        )

    def _availability(self) -> str:
        """``availability 99.2% of 118`` for the last whole minute the exporter has seen."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.exporter_url is not None
        try:
            status, body, _ = http_request("GET", self.exporter_url)
        except (OSError, HTTPException):
            return "availability: exporter not answering"
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name.startswith("flixlake_availability_minute")
        }
        ratio = values.get("flixlake_availability_minute_ratio", -1.0)
        if status != 200 or ratio < 0:
            return "availability -"
        return f"availability {ratio:.1%} of {values.get('flixlake_availability_minute_requests', 0):,.0f}"

    def _read_stream_log(self) -> None:
        """Add up the batch lines the speed layer printed since the last call."""
        try:
            with self.stream_log.open("rb") as log:
                log.seek(self._stream_offset)
                chunk = log.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._stream_offset += len(complete)
        for text in complete.decode("utf-8", "replace").splitlines():
            match = _BATCH_LINE.match(text)
            if match is None:
                continue
            if match["query"] == self.query:
                self.events += int(match["events"])
                self.rejected += int(match["rejected"])
                self.lag = match["lag"]
            elif match["query"].startswith(self.query):  # the served-records query beside it
                self.served_landed += int(match["events"])

    def _service(self) -> str:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            status, body, _ = http_request("GET", self.metrics_url)
        except (OSError, HTTPException):
            return "service not answering"
        if status != 200:
            return f"service /metrics HTTP {status}"
        answers = 0.0
        buckets: list[tuple[float, float]] = []
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.labels.get("endpoint") != "recommend":
                    continue
                if sample.name == "flixlake_serving_requests_total":
                    answers += sample.value if sample.labels.get("status") == "200" else 0.0
                elif sample.name == "flixlake_serving_request_latency_seconds_bucket":
                    buckets.append((float(sample.labels["le"]), sample.value))
        return f"answers {answers:,.0f}, p50 {_median_bound(buckets)}"


def _median_bound(buckets: list[tuple[float, float]]) -> str:
    """The upper bound of the histogram bucket holding the median, e.g. ``≤ 0.5 ms``."""
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return "-"
    bound = next(le for le, count in buckets if count >= total / 2)
    return "> 2 s" if bound == float("inf") else f"≤ {bound * 1000:g} ms"


def _last_match(pattern: re.Pattern[str], text: str) -> dict[str, str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1].groupdict() if matches else None
