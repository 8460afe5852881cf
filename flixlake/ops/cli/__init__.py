"""The ``flixlake`` command: generate, ingest, query, run the batch pipeline and the live system.

State lives under ``$FLIXLAKE_HOME`` (default ``./var``); ``$FLIXLAKE_ENV`` picks ``conf/<env>.yaml``.
Run ``flixlake COMMAND --help`` for each command's options.

Commands import the domain module they run when they run, not here: ``flixlake --help`` stays
fast and ``flixlake serve`` never loads pyspark or Airflow.
"""

from __future__ import annotations

import typer

from flixlake.ops.cli import audit, batch, data, experiment, live

app = typer.Typer(
    help="flixlake: movie recommendations on Kafka, Spark and Delta Lake.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app)
app.add_typer(batch.app)
app.add_typer(audit.app)
app.add_typer(live.app)
app.add_typer(experiment.app, name="experiment")

if __name__ == "__main__":
    app()
