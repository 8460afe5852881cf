"""Labels of injected attacks: which accounts attacked which movie, how and when.

The simulator (:mod:`flixlake.sim.attacks`) writes them to a side file, never into the log lines
themselves; the evaluation of the detectors (:mod:`flixlake.audit.measure`) reads them. One JSON
document::

    {"attacks": [{"attack_id": "push-1", "kind": "push", "target_movie": "the+x+2001",
                  "target_rating": 5, "accounts": [3001, 3002, ...],
                  "start": "2026-11-21T18:00:00", "end": "2026-11-21T21:00:00",
                  "filler": 0, "requests": 0}, ...]}

``target_movie`` and ``target_rating`` are null for a request flood (it targets the service).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ATTACK_KINDS = ("push", "nuke", "bandwagon", "average", "flood")
LABELS_FILE = "attack_labels.json"  # beside generate's logs (ingest reads only *.log / *.jsonl)


class AttackLabel(BaseModel):
    """One injected campaign and the accounts that ran it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attack_id: str = Field(min_length=1)
    kind: str = Field(pattern="^(" + "|".join(ATTACK_KINDS) + ")$")
    target_movie: str | None = None
    target_rating: int | None = Field(default=None, ge=1, le=5)
    accounts: tuple[int, ...] = Field(min_length=1)
    start: dt.datetime
    end: dt.datetime
    filler: int = Field(default=0, ge=0)
    requests: int = Field(default=0, ge=0)


class AttackLabels(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    attacks: tuple[AttackLabel, ...] = ()

    def accounts_by_kind(self) -> dict[str, set[int]]:
        """Attacker accounts per attack kind (an account belongs to one campaign)."""
        out: dict[str, set[int]] = {}
        for label in self.attacks:
            out.setdefault(label.kind, set()).update(label.accounts)
        return out


class LabelsError(ValueError):
    """A labels file that is missing or malformed; the message names the file and the field."""


def write_labels(path: Path, labels: AttackLabels) -> Path:
    """Write the labels atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(labels.model_dump_json(indent=2))
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_labels(path: Path) -> AttackLabels:
    """Read a labels file with a clear error for a missing file or a bad field."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabelsError(f"no attack labels at {path}") from None
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{path}: not valid JSON: {exc}") from None
    try:
        return AttackLabels.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise LabelsError(f"{path}: {where}: {first['msg']}") from None
