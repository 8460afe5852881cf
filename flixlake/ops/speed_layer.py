"""The speed layer as a supervised child process: ``spark-submit streaming/speed_layer.py``.

``flixlake demo``, the feedback-loop run and the live tests start it the same way, through
:func:`start_speed_layer_process`: spark-submit with the driver memory and jars of
:func:`~flixlake.ops.dag_tasks.spark_submit_argv`, the stop signal sent to the Python driver (it
stops both queries cleanly and the JVM follows), and time for a graceful stop to let the batch in
flight finish. It is ready once the events query has written its checkpoint's ``metadata``, which
happens at query start, after the driver serves its metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

from flixlake.config import PROJECT_ROOT, Settings
from flixlake.ops.dag_tasks import spark_submit_argv
from flixlake.ops.supervise import Child, Supervisor
from flixlake.streaming.harness import checkpoint_dir

SPEED_LAYER_JOB = PROJECT_ROOT / "streaming" / "speed_layer.py"
STOP_TIMEOUT_S = 150.0  # a graceful stop lets the batch in flight finish (<= 120 s)


def speed_layer_argv(
    driver_memory: str, bootstrap_servers: str | None = None, query_name: str | None = None
) -> list[str]:
    """The spark-submit command; options left out come from the child's config."""
    return [
        *spark_submit_argv(SPEED_LAYER_JOB, driver_memory),
        *([f"--bootstrap-servers={bootstrap_servers}"] if bootstrap_servers else []),
        *([f"--query-name={query_name}"] if query_name else []),
    ]


def start_speed_layer_process(
    supervisor: Supervisor,
    settings: Settings,
    env: Mapping[str, str],
    *,
    name: str = "speed-layer",
    bootstrap_servers: str | None = None,
    query_name: str | None = None,
    timeout: float = 300.0,
) -> Child:
    """Start the speed layer under ``supervisor``; returns it once its events query started.

    ``settings`` must be what the child loads from ``env`` (its checkpoint root), but for the
    bootstrap servers and query name given here. Raises
    :class:`~flixlake.ops.supervise.ChildFailedError` with the log tail when it exits or is not
    streaming within ``timeout`` seconds.
    """
    child = supervisor.start(
        name,
        speed_layer_argv(settings.spark.driver_memory, bootstrap_servers, query_name),
        env=env,
        cwd=PROJECT_ROOT,
        signal_to="python",  # the driver stops both queries cleanly, the JVM follows
        stop_timeout=STOP_TIMEOUT_S,
    )
    metadata = checkpoint_dir(settings, query_name) / "metadata"  # written at query start
    supervisor.wait_ready(child, metadata.exists, timeout=timeout, what="streaming")
    return child
