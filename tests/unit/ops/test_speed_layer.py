"""The speed layer's spark-submit command: the job file, the driver memory, the options given."""

from __future__ import annotations

from flixlake.config import PROJECT_ROOT
from flixlake.ops.speed_layer import speed_layer_argv


def test_the_command_submits_the_speed_layer_job_with_the_options_given() -> None:
    argv = speed_layer_argv("3g", "127.0.0.1:19092", "speed_layer_x")

    assert argv[argv.index("--driver-memory") + 1] == "3g"
    job = argv.index(str(PROJECT_ROOT / "streaming" / "speed_layer.py"))
    # the job's own options come after the job file, spark-submit's before it
    assert argv[job + 1 :] == ["--bootstrap-servers=127.0.0.1:19092", "--query-name=speed_layer_x"]


def test_options_left_out_come_from_the_childs_config() -> None:
    argv = speed_layer_argv("1g")

    assert argv[-1] == str(PROJECT_ROOT / "streaming" / "speed_layer.py")
    assert not any(arg.startswith(("--bootstrap-servers", "--query-name")) for arg in argv)
