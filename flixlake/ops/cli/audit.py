"""``flixlake audit``: the daily audit in-process, without Airflow or spark-submit."""

from __future__ import annotations

from typing import Annotated

import typer

from flixlake.ops.cli.common import EnvOpt, HomeOpt, console, fail, print_table, settings_or_exit

app = typer.Typer()


@app.command()
def audit(
    run_date: Annotated[str, typer.Option("--run-date", help="the day to audit, YYYY-MM-DD")],
    env: EnvOpt = None,
    home: HomeOpt = None,
) -> None:
    """Audit one day: drift of every input, fairness and exposure per model version.

    Writes audit_drift, audit_fairness and audit_requirements (the day's rows replaced), the
    gauges ($FLIXLAKE_HOME/metrics/audit.prom) and the HTML report; same as
    ``spark-submit jobs/audit.py --run-date DAY``.
    """
    from flixlake.audit.job import run_audit
    from flixlake.lake.runs import parse_run_date
    from flixlake.lake.store import MissingTableError, lake_from_settings
    from flixlake.ops.spark import build_spark_session

    settings = settings_or_exit(env, home)
    try:
        day = parse_run_date(run_date)
    except ValueError as exc:
        raise fail(str(exc)) from None
    spark = build_spark_session(settings, app_name=f"flixlake-audit-{day}")
    try:
        summary = run_audit(spark, lake_from_settings(settings), settings, day)
    except MissingTableError as exc:
        raise fail(str(exc)) from None
    finally:
        spark.stop()
    print_table(
        [
            {
                "input": name,
                "drift distance": entry["distance"],
                "threshold": entry["max_distance"],
                "volume ratio": entry["volume_ratio"],
                "windows drifted": f"{entry['drifted']} of {entry['windows']}",
                "largest shift": entry["largest_shift"],
            }
            for name, entry in summary["drift"].items()
        ],
        title=f"drift of {day} against {summary['reference'][0][:10]} .. {day}",
    )
    for version, checks in summary["requirements"].items():
        console.print(f"[bold]{version}[/bold]")
        for text in checks:
            style = "red" if " NOT met " in text else "green"
            console.print(f"  [{style}]{text}[/{style}]")
    for note in summary["notes"]:
        console.print(f"  note: {note}")
    console.print(f"report {summary['report']}\nmetrics {summary['metrics']}")
