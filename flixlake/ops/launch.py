"""The ``flixlake`` command's entry point: ``flixlake serve`` listens before anything loads.

A refused connection counts as a failed request, and importing the command line (rich, typer,
pyarrow, the lake) takes about half a second, more on a busy machine. So for ``serve`` this binds
the service's port first — from ``--host``/``--port`` or the config — and hands the listening
socket to the command (:func:`flixlake.serving.listen.take`); then it imports the command line.
Clients that connect meanwhile wait in the backlog instead of being refused.
"""

from __future__ import annotations

import contextlib
import sys

from flixlake.serving import listen


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def bind_early(args: list[str]) -> None:
    """Bind ``flixlake serve``'s port now; any problem is left for the command to report."""
    if "--help" in args:
        return
    from flixlake.config import ConfigError, load_settings  # pydantic only: ~0.1 s

    with contextlib.suppress(ConfigError, OSError, ValueError):
        host, port = _option(args, "--host"), _option(args, "--port")
        if host is None or port is None:
            serving = load_settings(_option(args, "--env"), home=_option(args, "--home")).serving
            host, port = host or serving.host, port or str(serving.port)
        listen.prebind(host, int(port))


def main() -> None:
    """``flixlake``: bind early for ``serve``, then run the command line."""
    if sys.argv[1:2] == ["serve"]:
        bind_early(sys.argv[2:])
    from flixlake.ops.cli import app  # deliberately after binding: the import is the slow part

    app()
