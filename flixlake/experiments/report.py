"""The experiment report: each variant's per-user watch-through and its sequential test.

:func:`result_rows` formats :func:`flixlake.experiments.stats.analyse_experiment` results once,
for the terminal table of ``flixlake experiment report`` and for the HTML page. The page (HTML
helpers of :mod:`flixlake.batch.report`) adds one PNG drawn on matplotlib's Agg canvas (no
display needed): watch-through per variant with its per-user interval, per served hour, and each
variant's difference from the control with its always-valid interval at every hourly look.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from flixlake.batch.report import CSS, esc, html_kv, html_table
from flixlake.config import OnlineConfig
from flixlake.experiments.stats import ExperimentAnalysis, VariantResult

PLOT_NAME = "watch_through.png"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _bound(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else ("-inf" if x < 0 else "+inf")


def result_rows(results: Iterable[VariantResult]) -> list[dict[str, str]]:
    """One row of display text per variant; test columns stay blank where nothing was tested."""
    rows = []
    for r in results:
        c = r.comparison
        rows.append(
            {
                "variant": r.variant,
                "model_version": ", ".join(v or "(none)" for v in r.model_versions),
                "users": f"{r.users:,}",
                "answers": f"{r.served:,}",
                "converted": f"{r.converted:,}",
                "rate": f"{r.rate:.4f}",
                "rate CI": f"[{r.ci_low:.4f}, {r.ci_high:.4f}]",
                "deff": f"{r.design_effect:.2f}" if math.isfinite(r.design_effect) else "",
                "diff": f"{c.diff:+.4f}" if c else "",
                "always-valid diff CI": f"[{_bound(c.diff_low)}, {_bound(c.diff_high)}]"
                if c
                else "",
                "z": f"{c.z:.3f}" if c else "",
                "always-valid p": _p_value(c.p_value) if c else "",
                "verdict": r.verdict,
            }
        )
    return rows


def hourly_rates(rows: pa.Table) -> dict[str, tuple[list[dt.datetime], list[float]]]:
    """Watch-through per served hour of each variant (its model versions and users together)."""
    sums = rows.group_by(["variant", "served_hour"], use_threads=False).aggregate(
        [("served", "sum"), ("converted", "sum")]
    )
    sums = sums.sort_by([("variant", "ascending"), ("served_hour", "ascending")])
    out: dict[str, tuple[list[dt.datetime], list[float]]] = {}
    for row in sums.to_pylist():
        hours, rates = out.setdefault(str(row["variant"]), ([], []))
        hours.append(row["served_hour"])
        rates.append(row["converted_sum"] / row["served_sum"])
    return out


def plot_watch_through(
    analysis: ExperimentAnalysis,
    hourly: dict[str, tuple[list[dt.datetime], list[float]]],
    confidence: float,
    path: Path,
) -> Path:
    """Rates with intervals, rates per served hour, and the sequential test look by look."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    results = analysis.results
    fig = Figure(figsize=(8, 10), dpi=100)
    FigureCanvasAgg(fig)
    bars_ax, lines_ax, diff_ax = fig.subplots(3, 1)
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
        labels=[f"{r.rate:.3f}\n{r.users:,} users" for r in results],
        label_type="center",
        fontsize=8,
        color="white",
    )
    bars_ax.set_ylabel("watch-through")
    bars_ax.set_title(f"Watch-through per variant, {confidence * 100:g}% per-user intervals")
    for variant, (hours, rates) in hourly.items():
        lines_ax.plot(
            hours, rates, marker="o", markersize=3, label=variant, color=colors.get(variant)
        )
    lines_ax.set_ylabel("watch-through")
    lines_ax.set_title("Watch-through per served hour (UTC)")
    lines_ax.legend(fontsize=8)
    diff_ax.axhline(0.0, color="black", linewidth=0.8)
    for r in results:
        if r.comparison is None:
            continue
        looks = r.comparison.looks
        shown = looks.counted
        hours = [h for h, keep in zip(looks.hours, shown, strict=True) if keep]
        color = colors[r.variant]
        diff_ax.plot(hours, looks.diff[shown], color=color, label=f"{r.variant} - control")
        low = np.maximum(looks.low[shown], -1.0)
        high = np.minimum(looks.high[shown], 1.0)
        diff_ax.fill_between(hours, low, high, color=color, alpha=0.2)
    diff_ax.set_ylabel("difference in watch-through")
    diff_ax.set_title(
        f"Difference from the control at each hourly look, {confidence * 100:g}% always-valid "
        "interval"
    )
    if diff_ax.has_data():
        diff_ax.legend(fontsize=8)
    for ax in (lines_ax, diff_ax):
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _hour(stamp: dt.datetime) -> str:
    return f"{stamp:%Y-%m-%d %H:%M}"


METHOD = (
    "An answer converts when its user watches one of its movies within the watch window after "
    "it was served. Users are the unit: experiments randomise users, so each variant's rate "
    "(converted / answers) gets the delta-method variance over users, which counts a heavy "
    "user's many answers as one correlated cluster; <i>deff</i> is how many times that variance "
    "exceeds the per-answer (binomial) one. Each variant is compared with the control by an "
    "always-valid sequential test (mSPRT, normal mixture with sd {tau:g}) evaluated at every "
    "served hour: its p-value and interval stay valid however often the report is read, and "
    "the experiment may stop as soon as the verdict is significant. A look counts once both "
    "arms have {min_users} users; z is the difference over its per-user standard error at the "
    "last look (not a fixed-horizon test: read the always-valid p)."
)


def write_experiment_report(
    out_dir: Path,
    experiment: str,
    analysis: ExperimentAnalysis,
    rows: pa.Table,
    online: OnlineConfig,
    requested: str,
) -> Path:
    """Write ``report.html`` and its plot into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = analysis.results
    plot = plot_watch_through(analysis, hourly_rates(rows), online.confidence, out_dir / PLOT_NAME)
    hours = analysis.hours
    table = result_rows(results)
    per_hour = rows.group_by(["served_hour", "variant", "model_version"], use_threads=False)
    by_hour = (
        per_hour.aggregate([("served", "sum"), ("converted", "sum"), ("user_id", "count")])
        .sort_by([("served_hour", "ascending"), ("variant", "ascending")])
        .to_pylist()
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(experiment)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Experiment {esc(experiment)}</h1>",
        html_kv(
            {
                "control": results[0].variant,
                "range asked for": requested,
                "served hours (UTC)": f"{_hour(hours[0])} to {_hour(hours[-1])}, "
                f"{len(hours)} with answers (each one a look of the sequential test)",
                "watch window (s)": ", ".join(
                    str(w) for w in sorted(set(rows["window_seconds"].to_pylist()))
                ),
                "confidence": online.confidence,
                "users needed per arm to test": online.min_users,
                "mSPRT mixture sd": online.mixture_sd,
                "users seen in more than one variant": analysis.users_in_several_variants,
                "last computed at": max(rows["computed_at"].to_pylist()),
            }
        ),
        "<h2>Watch-through per variant, per user</h2>",
        f"<p>{METHOD.format(tau=online.mixture_sd, min_users=online.min_users)}</p>",
        html_table(list(table[0]), [list(row.values()) for row in table]),
        f"<img src='{esc(plot.name)}' alt='watch-through per variant, per served hour, and the "
        "difference from the control at every look'>",
        "<h2>Per served hour</h2>",
        html_table(
            ["served hour (UTC)", "variant", "model_version", "users", "answers", "converted"],
            [
                [
                    _hour(r["served_hour"]),
                    r["variant"],
                    r["model_version"],
                    r["user_id_count"],
                    r["served_sum"],
                    r["converted_sum"],
                ]
                for r in by_hour
            ],
        ),
        "</body></html>",
    ]
    target = out_dir / "report.html"
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
