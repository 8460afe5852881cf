"""``make demo``: the main job on the embedded default, end to end on one machine.

Generates a small synthetic history (once; it is deterministic), ingests it into bronze exactly
once, runs the batch pipeline for the last day of the history, then prints the model's offline
metrics and a few users' recommendations straight from the ``batch_recommendations`` table.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console

from flixlake.config import Settings


def run_demo(
    settings: Settings, console: Console, users: int, movies: int, days: int, seed: int
) -> int:
    """Run the demo; returns the process exit code (0 ok, 3 when a gate refused to publish)."""
    from flixlake.cli import print_batch_summary
    from flixlake.entrypoint import GateFailedError
    from flixlake.generate import generate_history
    from flixlake.ingest import ingest_paths
    from flixlake.lake import Lake
    from flixlake.pipeline import run_batch
    from flixlake.spark import build_spark_session

    started = time.perf_counter()
    data_dir = settings.home / "demo-data" / f"u{users}-m{movies}-d{days}-s{seed}"
    summary_file = data_dir / "summary.json"
    console.rule("[bold]flixlake demo")
    console.print(f"home: {settings.home}   env: {settings.env}")
    if summary_file.exists():
        generated: dict[str, Any] = json.loads(summary_file.read_text())
        console.print(f"1/4 synthetic history already in {data_dir}")
    else:
        console.print(
            f"1/4 generating {users:,} users × {movies:,} movies × {days} days into {data_dir}"
        )
        generated = generate_history(
            data_dir, n_users=users, n_movies=movies, days=days, seed=seed, bad_rate=0.002
        )
        summary_file.write_text(json.dumps(generated, default=str))
    console.print(f"    {json.dumps(generated.get('lines', generated), default=str)}")

    lake = Lake(settings.lake_root)
    console.print("2/4 ingesting into bronze_events (exactly once; a rerun adds nothing)")
    ingested = ingest_paths(lake, [data_dir], settings.ingest.chunk_lines)
    console.print(
        f"    {ingested.lines:,} new lines, {ingested.rejected:,} quarantined {dict(ingested.reasons)}, "
        f"{ingested.skipped_chunks} chunks already ingested"
    )

    run_date = _as_date(generated["last_date"])
    console.print(f"3/4 batch pipeline for run date {run_date}")
    spark = build_spark_session(settings, app_name="flixlake-demo")
    try:
        results = run_batch(
            spark,
            lake,
            settings,
            run_date,
            on_start=lambda s: console.print(f"    ▶ {s.name}: {s.description}"),
            on_done=lambda r: console.print(f"      done in {r.seconds:.1f}s"),
        )
    except GateFailedError as exc:
        console.print(f"[red]gate refused to publish:[/red] {exc}")
        return 3
    finally:
        spark.stop()
    print_batch_summary({r.step.name: r.summary for r in results})

    console.print("4/4 a few users' recommendations (batch_recommendations, newest model):")
    version = next(r.summary for r in results if r.step.name == "train")["model_version"]
    sample = lake.sql(
        "SELECT user_id, array_agg(movie_id ORDER BY rank) AS movies FROM batch_recommendations "
        f"WHERE model_version = '{version}' AND rank <= 20 GROUP BY user_id ORDER BY user_id LIMIT 3"
    ).to_pylist()
    for row in sample:
        console.print(f"    user {row['user_id']}: {', '.join(row['movies'][:8])}, …")
    console.print(
        f"done in {time.perf_counter() - started:.0f}s. Explore: flixlake tables | "
        f'flixlake sql "SELECT * FROM models" | flixlake lineage --model {version}'
    )
    return 0


def _as_date(value: Any) -> Any:
    import datetime as dt

    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
