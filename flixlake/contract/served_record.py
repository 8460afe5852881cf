"""The served-recommendation record: what the service ships per answer and the lake lands.

The service's telemetry writes one JSON object per answer to ``serving.telemetry.served_topic``;
the speed layer validates each with :class:`ServedRecord` before landing it in
``served_recommendations``. Unknown keys are ignored, so the producer may add fields first.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_MAX_ID = 2**63 - 1
# Where an answer's movies came from: the model's list as is, with watched movies dropped, filled
# up with trending/popular movies, only trending/popular movies (no batch-view entry), or drawn at
# random from the catalog (an exploration variant: no model behind it).
AnswerSource = Literal["batch", "batch_filtered", "batch_filled", "fallback", "explore"]
ANSWER_SOURCES: tuple[AnswerSource, ...] = (
    "batch",
    "batch_filtered",
    "batch_filled",
    "fallback",
    "explore",
)


class ServedRecord(BaseModel):
    """One answer as the service's telemetry shipper writes it (unknown keys are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str = Field(min_length=1, max_length=200)
    user_id: Annotated[int, Field(ge=0, le=_MAX_ID)]
    time: dt.datetime
    variant: str = Field(min_length=1)
    model_version: str = ""  # empty when the service answered before any model was loaded
    items: list[str]
    status: int
    latency_ms: float = Field(ge=0)
    server: str = ""
    experiment: str = "default"  # records from before experiments were named
    answer_source: AnswerSource | None = None  # None: records from before answers carried it


def validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "record"
    return f"served_record: {where}: {first['msg']}"
