"""The evaluation report: HTML with the numbers, PNG plots beside it, provenance, escaped input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from flixlake.batch.report import metric_table, write_evaluation_report
from flixlake.config import Settings
from flixlake.lake.registry import upsert_model
from flixlake.lake.runs import write_manifest
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODEL_EVALUATIONS

RUN = dt.date(2026, 11, 22)
VERSION = "als-20261122-bbbb2222"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluation(
    recommender: str, segment: str, metric: str, value: float, n: int
) -> dict[str, object]:
    return {
        "model_version": VERSION,
        "run_date": RUN,
        "recommender": recommender,
        "segment": segment,
        "metric": metric,
        "value": value,
        "n_users": n,
    }


def _seed(lake: Lake, settings: Settings) -> None:
    upsert_model(
        lake,
        {
            "model_version": VERSION,
            "run_date": RUN,
            "algorithm": "als",
            "params": {"rank": 16, "reg_param": 0.05, "alpha": 10.0},
            "metrics": {
                "k": 20,
                "als": {"ndcg": 0.3125},
                "popularity": {"ndcg": 0.25},
                "lift_ndcg": 1.25,
                "selection": {
                    "winner": "als",
                    "reason": "ALS is served: NDCG 0.3125",
                    "verdicts": {
                        "popularity": {
                            "eligible": False,
                            "verdict": "popularity (NDCG 0.2500) refused: long-tail share 0.000",
                        },
                        "als": {"eligible": True, "verdict": "als (NDCG 0.3125) eligible, served"},
                    },
                },
            },
            "input_versions": {"watch_sessions": 4},
            "git_commit": "deadbeef",
            "library_versions": {"pyspark": "4.2.0"},
            "artifact_path": "/models/x",
            "status": "registered",
            "status_reason": None,
            "registered_at": dt.datetime(2026, 11, 22, 3, tzinfo=dt.UTC),
            "published_at": None,
        },
    )
    rows = [
        _evaluation("als", "all", "ndcg", 0.3125, 100),
        _evaluation("popularity", "all", "ndcg", 0.25, 100),
        _evaluation("als", "all", "recall", 0.5, 100),
        _evaluation("popularity", "all", "recall", 0.375, 100),
        _evaluation("als", "activity=heavy", "ndcg", 0.4, 30),
        _evaluation("popularity", "activity=heavy", "ndcg", 0.35, 30),
        _evaluation("als", "<script>alert(1)</script>", "ndcg", 0.1, 3),
    ]
    lake.append("model_evaluations", pa.Table.from_pylist(rows, schema=MODEL_EVALUATIONS.schema))
    write_manifest(
        settings,
        RUN,
        "train",
        {
            "model_version": VERSION,
            "search": [
                {"params": {"rank": 16, "reg_param": 0.05, "alpha": 10.0}, "ndcg": 0.2875},
                {"params": {"rank": 32, "reg_param": 0.1, "alpha": 20.0}, "ndcg": 0.2625},
            ],
        },
    )


def test_metric_table_pivots_rows_by_segment_metric_recommender() -> None:
    table = metric_table(
        [
            _evaluation("als", "all", "ndcg", 0.5, 1),
            _evaluation("popularity", "all", "ndcg", 0.25, 1),
            _evaluation("als", "gender=F", "map", 0.125, 1),
        ]
    )
    assert table == {
        "all": {"ndcg": {"als": 0.5, "popularity": 0.25}},
        "gender=F": {"map": {"als": 0.125}},
    }


def test_report_has_plots_params_search_and_provenance(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    _seed(lake, settings)
    out = tmp_path / "report"

    path = write_evaluation_report(lake, settings, VERSION, out)

    assert path == out / f"evaluation_{VERSION}.html"
    text = path.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        f"evaluation_{VERSION}_{kind}.png" for kind in ("overall", "search", "segments")
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"src='{name}'" in text
    assert "0.3125" in text and "0.2500" in text  # ALS vs popularity NDCG
    assert "lift 1.2500" in text
    assert "activity=heavy" in text and "users als: 30" in text
    assert "<td>reg_param</td><td>0.0500</td>" in text  # chosen hyperparameters
    assert "0.2625" in text  # the candidate that lost the search
    assert "deadbeef" in text and "watch_sessions" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    # every candidate's verdict, the refused one with its reason
    assert "<li class='fail'>popularity (NDCG 0.2500) refused: long-tail share 0.000</li>" in text
    assert "<li class='pass'>als (NDCG 0.3125) eligible, served</li>" in text


def test_report_without_evaluation_rows_falls_back_to_headline_metrics(
    lake: Lake, settings: Settings, tmp_path: Path
) -> None:
    _seed(lake, settings)
    lake.delete("model_evaluations", "true")
    path = write_evaluation_report(lake, settings, VERSION, tmp_path)
    assert (tmp_path / f"evaluation_{VERSION}_overall.png").is_file()
    assert not (tmp_path / f"evaluation_{VERSION}_segments.png").exists()
    assert "0.3125" in path.read_text()
