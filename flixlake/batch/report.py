"""The evaluation report: one self-contained HTML page (plus PNG plots beside it) per model.

It answers what a reviewer asks before a model goes out: which recommender is served (ALS or a
baseline) and why; how every candidate did, overall and per user segment; which hyperparameters
were chosen and what else was tried; and exactly which data, code and libraries produced it.
Written by the register step and again by the publish step, so it shows the gate's verdict. Plots use matplotlib's Agg canvas directly
(no pyplot, no display), so the report renders on headless workers.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flixlake.batch.recommenders import recommender_of
from flixlake.config import Settings
from flixlake.lake.registry import model_lineage
from flixlake.lake.runs import MissingStepError, parse_run_date, read_manifest
from flixlake.lake.store import Lake

RECOMMENDERS = ("als", "popularity", "itemknn", "ease", "incumbent")
_COLORS = {
    "als": "#1f77b4",
    "popularity": "#bbbbbb",
    "itemknn": "#ff7f0e",
    "ease": "#2ca02c",
    "incumbent": "#9467bd",
}
_BASELINES = ("popularity", "itemknn", "ease")
_OVERALL = "all"
_PARAM_NAMES = ("rank", "reg_param", "alpha", "max_iter")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def metric_table(evaluations: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``model_evaluations`` rows as ``{segment: {metric: {recommender: value}}}``."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in evaluations:
        segment = table.setdefault(str(row["segment"]), {})
        segment.setdefault(str(row["metric"]), {})[str(row["recommender"])] = float(row["value"])
    return table


def _segment_users(evaluations: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(str(r["segment"]), str(r["recommender"])): int(r["n_users"]) for r in evaluations}


def _from_headline(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Fallback when no evaluation rows exist: the headline metrics stored on the model row."""
    overall: dict[str, dict[str, float]] = {}
    for recommender in RECOMMENDERS:
        for metric, value in (metrics.get(recommender) or {}).items():
            if metric != "n_users" and isinstance(value, int | float):
                overall.setdefault(metric, {})[recommender] = float(value)
    return {_OVERALL: overall} if overall else {}


def recommenders_in(table: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The recommenders present in a metric table, in reporting order (ALS first)."""
    found = {r for segment in table.values() for values in segment.values() for r in values}
    return [r for r in RECOMMENDERS if r in found] + sorted(found - set(RECOMMENDERS))


def baseline_verdict(metrics: dict[str, Any], k: Any) -> str | None:
    """One plain sentence: does ALS beat the best baseline on this window, and which one is it."""
    als = (metrics.get("als") or {}).get("ndcg")
    baselines = metrics.get("baselines") or {"popularity": metrics.get("popularity") or {}}
    scores = {
        name: float(values["ndcg"])
        for name, values in baselines.items()
        if isinstance((values or {}).get("ndcg"), int | float)
    }
    if not isinstance(als, int | float) or not scores:
        return None
    best = max(scores, key=lambda name: scores[name])
    listed = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    if als > scores[best]:
        return (
            f"<p class='pass'>ALS beats every baseline: NDCG@{esc(k)} {als:.4f} vs the best, "
            f"{esc(best)} {scores[best]:.4f} ({esc(listed)}).</p>"
        )
    served = (metrics.get("selection") or {}).get("winner")
    instead = (
        f" The gate serves {esc(served)} instead of ALS." if served and served != "als" else ""
    )
    return (
        f"<p class='fail'>A baseline beats ALS on this window: {esc(best)} NDCG@{esc(k)} "
        f"{scores[best]:.4f} vs ALS {als:.4f} ({esc(listed)}).{instead}</p>"
    )


def _ndcg_metric(metrics: Iterable[str]) -> str | None:
    return next((m for m in sorted(metrics) if m.lower().startswith("ndcg")), None)


# -- plots ---------------------------------------------------------------------------------------
def _grouped_bars(
    path: Path, title: str, groups: list[str], values: dict[str, list[float]], xlabel: str
) -> Path:
    """Horizontal grouped bar chart (one bar per recommender in each group) saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(2.5, 0.55 * len(groups) * max(1, len(values)) + 1.2)
    fig = Figure(figsize=(7.5, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bar = 0.8 / max(1, len(values))
    for i, (recommender, series) in enumerate(values.items()):
        positions = [g + i * bar for g in range(len(groups))]
        bars = ax.barh(
            positions, series, height=bar, label=recommender, color=_COLORS.get(recommender)
        )
        labels = [f"{v:.4f}" if math.isfinite(v) else "n/a" for v in series]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_yticks([g + bar * (len(values) - 1) / 2 for g in range(len(groups))], groups)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.15)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_overall(table: dict[str, dict[str, dict[str, float]]], k: Any, path: Path) -> Path | None:
    """ALS vs popularity on every overall metric @k."""
    overall = table.get(_OVERALL) or {}
    metrics = sorted(overall)
    if not metrics:
        return None
    values = {r: [overall[m].get(r, math.nan) for m in metrics] for r in recommenders_in(table)}
    return _grouped_bars(path, f"Overall ranking metrics @{k}", metrics, values, "value")


def plot_segments(
    table: dict[str, dict[str, dict[str, float]]],
    k: Any,
    path: Path,
    users: dict[tuple[str, str], int] | None = None,
) -> Path | None:
    """ALS vs popularity NDCG@k for each user segment (with its number of users)."""
    segments = sorted(table, key=lambda s: (s != _OVERALL, s))
    metric = _ndcg_metric({m for s in segments for m in table[s]})
    if metric is None or len(segments) < 2:
        return None
    counts = users or {}
    labels = [f"{s} (n={counts[(s, 'als')]})" if (s, "als") in counts else s for s in segments]
    values = {
        r: [table[s].get(metric, {}).get(r, math.nan) for s in segments]
        for r in recommenders_in(table)
    }
    return _grouped_bars(path, f"{metric} @{k} per user segment", labels, values, metric)


def _flatten(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def plot_search(search: list[dict[str, Any]], path: Path) -> Path | None:
    """The hyperparameter candidates' validation NDCG, to see how clear the choice was."""
    rows = [_flatten(e) for e in search if isinstance(e, dict) and e.get("status", "ok") == "ok"]
    score_key = next(
        (
            k
            for k in sorted({k for r in rows for k in r})
            if "ndcg" in k.lower() and all(isinstance(r.get(k), int | float) for r in rows)
        ),
        None,
    )
    if not rows or score_key is None:
        return None
    labels = []
    for i, r in enumerate(rows):
        keys = [k for k in r if k.startswith("params.")] or [k for k in r if k in _PARAM_NAMES]
        labels.append(", ".join(f"{k.split('.')[-1]}={r[k]}" for k in keys) or f"candidate {i}")
    values = {"candidates": [float(r[score_key]) for r in rows]}
    return _grouped_bars(
        path, "Hyperparameter search (validation window)", labels, values, score_key
    )


# -- HTML ----------------------------------------------------------------------------------------
def esc(value: Any) -> str:
    """A value as escaped HTML text (floats to 4 decimals, dicts and lists as JSON)."""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        return html.escape(json.dumps(value, sort_keys=True, default=str))
    return html.escape("" if value is None else str(value))


def html_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """An HTML table with every header and cell escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_kv(mapping: dict[str, Any]) -> str:
    """A two-column key/value HTML table, sorted by key."""
    return html_table(["key", "value"], sorted(mapping.items()))


def _search_from_train(
    settings: Settings, run_date: Any, model_version: str
) -> list[dict[str, Any]]:
    try:
        train = read_manifest(settings, parse_run_date(str(run_date)), "train")
    except (MissingStepError, ValueError):
        return []
    if train.get("model_version") != model_version:
        return []  # train was rerun into another version since; don't show foreign results
    search = train.get("search") or []
    return [s for s in search if isinstance(s, dict)]


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;font-size:90%;vertical-align:top}th{background:#f4f4f4}
.pass{color:#176a1a;font-weight:bold}.fail{color:#a11;font-weight:bold}img{max-width:100%}
"""


def write_evaluation_report(
    lake: Lake, settings: Settings, model_version: str, out_dir: Path
) -> Path:
    """Write ``evaluation_<model>.html`` (+ PNGs) into ``out_dir`` for reviewers; its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lineage = model_lineage(lake, model_version)
    model = lineage["model"]
    evaluations = lineage["evaluations"]
    metrics = model["metrics"]
    k = metrics.get("k") or settings.batch.k
    table = metric_table(evaluations) or _from_headline(metrics)
    users = _segment_users(evaluations)
    recorded = (model["params"] or {}).get("search")
    search = (
        list(recorded.get("trials") or [])
        if isinstance(recorded, dict)
        else _search_from_train(settings, model["run_date"], model_version)
    )
    recommenders = recommenders_in(table)

    stem = f"evaluation_{_safe(model_version)}"
    plots = [
        plot_overall(table, k, out_dir / f"{stem}_overall.png"),
        plot_segments(table, k, out_dir / f"{stem}_segments.png", users),
        plot_search(search, out_dir / f"{stem}_search.png"),
    ]

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(model_version)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Model {esc(model_version)}</h1>",
        html_kv(
            {
                "run date": model["run_date"],
                "recommender served": recommender_of(model),
                "algorithm": model["algorithm"],
                "status": model["status"],
                "status reason": model["status_reason"],
                "registered at": model["registered_at"],
                "published at": model["published_at"],
                "artifact path": model["artifact_path"],
            }
        ),
        f"<h2>Offline evaluation @{esc(k)}</h2>",
    ]
    label = {
        "published": "Published recommender",
        "rejected": "Chosen recommender (not published)",
    }.get(str(model["status"]), "Chosen recommender")
    verdict_parts = [f"<p><b>{label}: {esc(recommender_of(model))}</b>."]
    selection = metrics.get("selection") or {}
    if selection.get("reason"):
        verdict_parts.append(
            f" The gate's choice among the candidates on the same users and window: "
            f"{esc(selection['reason'])}."
        )
    if model["status_reason"]:
        verdict_parts.append(
            f" Gate verdict ({esc(model['status'])}): {esc(model['status_reason'])}."
        )
    parts.append("".join(verdict_parts) + "</p>")
    verdicts = selection.get("verdicts") or {}
    if verdicts:
        items = "".join(
            f"<li class='{'pass' if (v or {}).get('eligible') else 'fail'}'>"
            f"{esc((v or {}).get('verdict') or name)}</li>"
            for name, v in verdicts.items()
        )
        parts.append(f"<p>Every candidate judged (requirements, then NDCG):</p><ul>{items}</ul>")
    als_ndcg = (metrics.get("als") or {}).get("ndcg")
    pop_ndcg = (metrics.get("popularity") or {}).get("ndcg")
    if isinstance(als_ndcg, int | float) and isinstance(pop_ndcg, int | float):
        better = als_ndcg > pop_ndcg
        parts.append(
            f"<p>ALS NDCG@{esc(k)} <b>{esc(float(als_ndcg))}</b> vs popularity "
            f"<b>{esc(float(pop_ndcg))}</b>: <span class='{'pass' if better else 'fail'}'>"
            f"{'better' if better else 'not better'}</span> than the baseline "
            f"(lift {esc(metrics.get('lift_ndcg'))}).</p>"
        )
    verdict = baseline_verdict(metrics, k)
    if verdict:
        parts.append(verdict)
    incumbent = metrics.get("incumbent") or {}
    if incumbent.get("model_version"):
        scored = (
            f"NDCG@{esc(k)} {esc(incumbent.get('ndcg'))} on the same users and window"
            if incumbent.get("scored")
            else f"not re-scored: {esc(incumbent.get('why'))}"
        )
        parts.append(
            f"<p>Current model {esc(incumbent['model_version'])}: {scored} "
            f"({esc(incumbent.get('why'))}).</p>"
        )
    parts += [f"<img src='{p.name}' alt='{esc(p.stem)}'>" for p in plots if p is not None]
    for segment in sorted(table, key=lambda s: (s != _OVERALL, s)):
        rows = [
            [m, *[table[segment][m].get(r) for r in recommenders]] for m in sorted(table[segment])
        ]
        n = ", ".join(f"{r}: {users[(segment, r)]}" for r in recommenders if (segment, r) in users)
        parts.append(f"<h3>segment {esc(segment)}{f' (users {esc(n)})' if n else ''}</h3>")
        parts.append(html_table(["metric", *recommenders], rows))

    all_params = model["params"] or {}
    params = {key: v for key, v in all_params.items() if key not in ("search", "candidates")}
    parts.append(f"<h2>Hyperparameters ({esc(recommender_of(model))})</h2>")
    parts.append(html_kv(_flatten(params)) if params else "<p>none recorded</p>")
    candidates = all_params.get("candidates") or {}
    if candidates:
        parts.append("<h3>Every candidate's params</h3>")
        parts.append(
            html_table(
                ["candidate", "params"],
                [[name, candidates[name]] for name in sorted(candidates)],
            )
        )
    parts.append("<h2>ALS search results (validation window)</h2>")
    if isinstance(recorded, dict):
        chosen = recorded.get("chosen")
        parts.append(
            f"<p>{esc(recorded.get('method'))}: {esc(recorded.get('trials_run'))} of "
            f"{esc(recorded.get('trials'))} trials ({esc(recorded.get('failed'))} failed"
            f"{', stopped by the time budget' if recorded.get('stopped_by_budget') else ''}); "
            f"chosen: trial {esc(recorded.get('chosen_trial'))} {esc(chosen)}"
            f"{'; search skipped: ' + esc(recorded.get('skipped')) if recorded.get('skipped') else ''}"
            f"</p>"
        )
    if search:
        flat = [_flatten(s) for s in search]
        headers = list(dict.fromkeys(key for row in flat for key in row))
        parts.append(html_table(headers, [[row.get(h) for h in headers] for row in flat]))
    else:
        parts.append("<p>no search results recorded</p>")

    parts.append("<h2>Provenance</h2>")
    parts.append(html_kv({"git commit": model["git_commit"], **model["library_versions"]}))
    parts.append("<h3>Input tables (Delta versions)</h3>")
    parts.append(
        html_table(
            ["table", "version", "latest version", "operation", "committed at", "metrics"],
            [
                [
                    name,
                    info["version"],
                    info["latest_version"],
                    (info["commit"] or {}).get("operation", "not in the log any more"),
                    (info["commit"] or {}).get("timestamp"),
                    (info["commit"] or {}).get("operationMetrics"),
                ]
                for name, info in sorted(lineage["inputs"].items())
            ],
        )
    )
    if lineage["quality_checks"]:
        parts.append("<h3>Quality checks of the run</h3>")
        parts.append(
            html_table(
                ["table", "check", "passed", "observed", "threshold"],
                [
                    [q["table_name"], q["check_name"], q["passed"], q["observed"], q["threshold"]]
                    for q in lineage["quality_checks"]
                ],
            )
        )
    parts.append(f"<p>batch view rows: {esc(lineage['batch_view_rows'])}</p></body></html>")

    target = out_dir / f"{stem}.html"
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
