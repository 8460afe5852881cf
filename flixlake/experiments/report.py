"""The experiment report: each variant's watch-through, interval and test against the control.

:func:`result_rows` formats :func:`flixlake.experiments.stats.compare_variants` results once, for the
terminal table of ``flixlake experiment report`` and for the HTML page. The page (HTML helpers
of :mod:`flixlake.batch.report`) adds one PNG drawn on matplotlib's Agg canvas (no display needed):
watch-through per variant with its interval, and per served hour.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flixlake.batch.report import CSS, esc, html_kv, html_table
from flixlake.config import OnlineConfig
from flixlake.experiments.stats import VariantResult

PLOT_NAME = "watch_through.png"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def result_rows(results: Iterable[VariantResult]) -> list[dict[str, str]]:
    """One row of display text per variant; test columns stay blank where nothing was tested."""
    rows = []
    for r in results:
        c = r.comparison
        rows.append(
            {
                "variant": r.variant,
                "model_version": ", ".join(v or "(none)" for v in r.model_versions),
                "served": f"{r.served:,}",
                "converted": f"{r.converted:,}",
                "rate": f"{r.rate:.4f}",
                "rate CI": f"[{r.ci_low:.4f}, {r.ci_high:.4f}]",
                "diff": f"{c.diff:+.4f}" if c else "",
                "diff CI": f"[{c.diff_low:+.4f}, {c.diff_high:+.4f}]" if c else "",
                "z": f"{c.z:.3f}" if c else "",
                "p": _p_value(c.p_value) if c else "",
                "verdict": r.verdict,
            }
        )
    return rows


def hourly_rates(
    rows: Iterable[Mapping[str, Any]],
) -> dict[str, tuple[list[dt.datetime], list[float]]]:
    """Watch-through per served hour of each variant (its model versions together)."""
    counts: dict[str, dict[dt.datetime, tuple[int, int]]] = {}
    for row in rows:
        per_hour = counts.setdefault(str(row["variant"]), {})
        served, converted = per_hour.get(row["served_hour"], (0, 0))
        per_hour[row["served_hour"]] = (served + row["served"], converted + row["converted"])
    return {
        variant: (sorted(per_hour), [c / s for s, c in (per_hour[h] for h in sorted(per_hour))])
        for variant, per_hour in sorted(counts.items())
    }


def plot_watch_through(
    results: list[VariantResult],
    hourly: dict[str, tuple[list[dt.datetime], list[float]]],
    confidence: float,
    path: Path,
) -> Path:
    """Bars of each variant's rate with its interval, and lines of its rate per served hour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 7), dpi=100)
    FigureCanvasAgg(fig)
    bars_ax, lines_ax = fig.subplots(2, 1)
    colors = {r.variant: f"C{i}" for i, r in enumerate(results)}
    bars = bars_ax.bar(
        [r.variant for r in results],
        [r.rate for r in results],
        yerr=[[r.rate - r.ci_low for r in results], [r.ci_high - r.rate for r in results]],
        capsize=8,
        color=[colors[r.variant] for r in results],
    )
    bars_ax.bar_label(
        bars,
        labels=[f"{r.rate:.3f}\nn={r.served:,}" for r in results],
        label_type="center",
        fontsize=8,
        color="white",
    )
    bars_ax.set_ylabel("watch-through")
    bars_ax.set_title(f"Watch-through per variant, {confidence * 100:g}% Wilson intervals")
    for variant, (hours, rates) in hourly.items():
        lines_ax.plot(
            hours, rates, marker="o", markersize=3, label=variant, color=colors.get(variant)
        )
    locator = AutoDateLocator()
    lines_ax.xaxis.set_major_locator(locator)
    lines_ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    lines_ax.set_ylabel("watch-through")
    lines_ax.set_title("Watch-through per served hour (UTC)")
    lines_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _hour(stamp: dt.datetime) -> str:
    return f"{stamp:%Y-%m-%d %H:%M}"


def write_experiment_report(
    out_dir: Path,
    experiment: str,
    results: list[VariantResult],
    rows: list[dict[str, Any]],
    online: OnlineConfig,
    requested: str,
) -> Path:
    """Write ``report.html`` and its plot into ``out_dir`` (control first in ``results``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_watch_through(results, hourly_rates(rows), online.confidence, out_dir / PLOT_NAME)
    hours = sorted({r["served_hour"] for r in rows})
    table = result_rows(results)
    by_hour = sorted(rows, key=lambda r: (r["served_hour"], r["variant"], r["model_version"]))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(experiment)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Experiment {esc(experiment)}</h1>",
        html_kv(
            {
                "control": results[0].variant,
                "range asked for": requested,
                "served hours (UTC)": f"{_hour(hours[0])} to {_hour(hours[-1])}, "
                f"{len(hours)} with answers",
                "watch window (s)": ", ".join(sorted({str(r["window_seconds"]) for r in rows})),
                "confidence": online.confidence,
                "answers needed to test": online.min_served,
                "last computed at": max(r["computed_at"] for r in rows),
            }
        ),
        "<h2>Watch-through per variant</h2>",
        "<p>An answer converts when its user watches one of its movies within the watch window "
        "after it was served. Rate intervals: Wilson. Test: pooled two-proportion z-test of "
        "each variant against the control (two-sided); difference interval: unpooled. "
        f"A variant is not tested when it or the control has fewer than {online.min_served} "
        "answers.</p>",
        html_table(list(table[0]), [list(row.values()) for row in table]),
        f"<img src='{esc(plot.name)}' alt='watch-through per variant and per served hour'>",
        "<h2>Per served hour</h2>",
        html_table(
            ["served hour (UTC)", "variant", "model_version", "served", "converted", "rate"],
            [
                [
                    _hour(r["served_hour"]),
                    r["variant"],
                    r["model_version"],
                    r["served"],
                    r["converted"],
                    r["converted"] / r["served"],
                ]
                for r in by_hour
            ],
        ),
        "</body></html>",
    ]
    target = out_dir / "report.html"
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
