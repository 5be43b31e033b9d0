"""Charts for the Dagster UI's metadata and the PQL report: small PNG images drawn with
matplotlib, embedded as ``data:`` URIs (markdown ``![..](data:image/png;base64,..)`` shows
in the UI's metadata panel; the report uses the same bytes in ``<img>``), so neither needs a
server or a file next to it.

matplotlib is imported when the first chart is drawn (the asset code imports this module
cheaply), and only its object-oriented API is used (``Figure``, no ``pyplot``): no global
state, no display, safe in Dagster's step processes and threads.

A chart is an illustration of numbers that are also in the metadata as a table; drawing it
must never fail a materialization. ``chart_md`` therefore turns a drawing error into a
sentence in place of the image (and the caller logs it), while the tests assert that every
chart the pipeline draws is a real image.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence

DPI = 100
WIDTH, HEIGHT = 6.4, 3.2    # inches: 640 x 320 px, legible in the UI's metadata column
COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#718096", "#d53f8c"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure(width: float = WIDTH, height: float = HEIGHT):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, axis="y", color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finite(values: Sequence) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return out


def _title(ax, title: str, xlabel: str | None, ylabel: str | None) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)


def _lines(ax, hlines: dict[str, float] | None, vertical: bool = False) -> None:
    for i, (label, value) in enumerate((hlines or {}).items()):
        if value is None or not math.isfinite(float(value)):
            continue
        style = dict(color=["#c53030", "#d69e2e", "#4a5568"][i % 3], linestyle="--", linewidth=1, label=label)
        (ax.axvline if vertical else ax.axhline)(float(value), **style)


def _percent_axis(ax, axis: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=0))


def bar_chart(labels: Sequence, values: Sequence, *, title: str, xlabel: str | None = None,
              ylabel: str | None = None, hlines: dict[str, float] | None = None, horizontal: bool = False,
              percent: bool = False, annotate: bool = False, colors: Sequence[str] | None = None) -> bytes:
    """Bars of ``values`` per label; ``hlines`` draws labelled reference lines (e.g. a
    warn and an alert threshold); ``horizontal`` for long labels (feature names)."""
    labels = [str(x) for x in labels]
    vals = [0.0 if math.isnan(v) else v for v in _finite(values)]
    height = max(HEIGHT, 0.22 * len(labels) + 1.0) if horizontal else HEIGHT
    fig, ax = _figure(height=height)
    color = list(colors) if colors else COLORS[0]
    if horizontal:
        ax.grid(False)
        ax.grid(True, axis="x", color="#e2e8f0", linewidth=0.8)
        ax.barh(labels[::-1], vals[::-1], color=color[::-1] if colors else color)
        _lines(ax, hlines, vertical=True)
        if percent:
            _percent_axis(ax, "x")
    else:
        bars = ax.bar(labels, vals, color=color)
        _lines(ax, hlines)
        if percent:
            _percent_axis(ax)
        if annotate:
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], fontsize=7, padding=2)
        if len(labels) > 12:
            ax.tick_params(axis="x", labelrotation=60)
    _title(ax, title, xlabel, ylabel)
    if hlines:
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def stacked_bars(x: Sequence, series: dict[str, Sequence], *, title: str, xlabel: str | None = None,
                 ylabel: str | None = None) -> bytes:
    """Bars per ``x`` stacked by series (e.g. PQLs per day by route)."""
    labels = [str(v) for v in x]
    fig, ax = _figure()
    bottom = [0.0] * len(labels)
    for i, (name, values) in enumerate(series.items()):
        vals = [0.0 if math.isnan(v) else v for v in _finite(values)]
        ax.bar(labels, vals, bottom=bottom, label=name, color=COLORS[i % len(COLORS)], width=0.85)
        bottom = [b + v for b, v in zip(bottom, vals)]
    _ticks_sparse(ax, labels)
    _title(ax, title, xlabel, ylabel)
    if series:
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def line_chart(x: Sequence, series: dict[str, Sequence], *, title: str, xlabel: str | None = None,
               ylabel: str | None = None, hlines: dict[str, float] | None = None, percent: bool = False,
               diagonal: bool = False, markers: bool = True) -> bytes:
    """One line per series over ``x`` (numbers or labels); ``diagonal`` draws y = x (a
    calibration curve's perfect model)."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
    xs = list(x) if numeric else [str(v) for v in x]
    fig, ax = _figure()
    if diagonal:
        lo = min(_finite(xs) + [0.0]) if numeric else 0.0
        hi = max(_finite(xs) + [max((max(_finite(v), default=0.0) for v in series.values()), default=0.0)])
        ax.plot([lo, hi], [lo, hi], color="#a0aec0", linestyle=":", linewidth=1, label="perfectly calibrated")
    for i, (name, values) in enumerate(series.items()):
        ax.plot(xs, _finite(values), label=name, color=COLORS[i % len(COLORS)], linewidth=1.6,
                marker="o" if markers else None, markersize=3)
    _lines(ax, hlines)
    if percent:
        _percent_axis(ax)
    if not numeric:
        _ticks_sparse(ax, xs)
    _title(ax, title, xlabel, ylabel)
    if len(series) > 1 or hlines or diagonal:
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def histogram(values: Sequence, *, title: str, xlabel: str | None = None, ylabel: str | None = "users",
              bins: int = 40, vlines: dict[str, float] | None = None, log: bool = False,
              value_range: tuple[float, float] | None = None) -> bytes:
    """Distribution of ``values`` (e.g. the day's probabilities) with labelled thresholds."""
    import numpy as np

    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    fig, ax = _figure()
    ax.hist(vals, bins=bins, range=value_range, color=COLORS[0], log=log)
    _lines(ax, vlines, vertical=True)
    _title(ax, title, xlabel, ylabel)
    if vlines:
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def _ticks_sparse(ax, labels: list[str], most: int = 12) -> None:
    """At most ``most`` category labels on the x axis (days over months stay readable)."""
    if len(labels) <= most:
        if len(labels) > 6:
            ax.tick_params(axis="x", labelrotation=45)
        return
    step = math.ceil(len(labels) / most)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=45, ha="right")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def md_image(png: bytes, alt: str) -> str:
    return f"![{alt}]({data_uri(png)})"


def draw_safely(draw: Callable[[], bytes]) -> tuple[bytes | None, str | None]:
    """(png, None), or (None, the error as "Type: message"): a chart must never fail the data
    it illustrates, in the metadata or in the report."""
    try:
        return draw(), None
    except Exception as e:  # noqa: BLE001 - see above
        return None, f"{type(e).__name__}: {e}"


def chart_md(draw: Callable[[], bytes], alt: str, table: str | None = None, log=None) -> str:
    """Markdown for a metadata entry: the chart, then (optionally) the same numbers as a
    table. A drawing error becomes a sentence in the entry (and a warning in ``log``)."""
    png, error = draw_safely(draw)
    if png is not None:
        image = md_image(png, alt)
    else:
        if log is not None:
            log.warning(f"chart '{alt}' could not be drawn: {error}")
        image = f"_chart '{alt}' could not be drawn ({error}); the numbers are below._"
    return image if table is None else f"{image}\n\n{table}"


def decode_md_images(markdown: str) -> list[bytes]:
    """The PNG images embedded in a markdown text (tests and the report use it)."""
    import re

    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)]


# --- the pipeline's charts (plain lists and dicts in, PNG bytes out; metadata and report share them)

def decile_chart(deciles: list[dict]) -> bytes:
    """Lift per score decile on the holdout (decile 1 = highest scores): how much more the
    top of the list converts than the average."""
    return bar_chart([d["decile"] for d in deciles], [d["lift"] for d in deciles], annotate=True,
                     title="Lift by score decile (holdout)", xlabel="decile (1 = highest scores)",
                     ylabel="conversion / average", hlines={"average (lift 1)": 1.0})


def calibration_chart(curve: list[dict]) -> bytes:
    """Mean predicted probability against the observed conversion rate per bin."""
    return line_chart([c["mean_predicted"] for c in curve], {"model": [c["observed"] for c in curve]},
                      title="Calibration (holdout)", xlabel="mean predicted probability",
                      ylabel="observed conversion", diagonal=True)


def lift_chart(perf_rows: list[dict]) -> bytes:
    """Lift of each PQL definition per labelled snapshot (model vs the rules)."""
    days = sorted({str(r["snapshot_date"]) for r in perf_rows})
    series = {}
    for name in sorted({r["definition"] for r in perf_rows}):
        by_day = {str(r["snapshot_date"]): r["lift"] for r in perf_rows if r["definition"] == name}
        series[name.replace("_", " ")] = [by_day.get(d) for d in days]
    return line_chart(days, series, title="Backtest: conversion of PQLs / the rest, per snapshot",
                      xlabel="snapshot", ylabel="lift", hlines={"2x": 2.0})


def score_distribution_chart(probabilities: Sequence, thresholds: dict[str, float], day: str) -> bytes:
    return histogram(probabilities, title=f"Score distribution, {day}", xlabel="probability of converting",
                     ylabel="users (log)", vlines={f"{name} from {p:g}": p for name, p in thresholds.items()},
                     log=True, value_range=(0.0, 1.0))


def pqls_per_day_chart(days: Sequence, by_route: dict[str, Sequence]) -> bytes:
    return stacked_bars(days, by_route, title="PQLs per day, by route", ylabel="PQL users")


def drift_chart(features: list[tuple[str, float]], warn: float, alert: float, reference: str) -> bytes:
    """PSI per scoring feature against ``reference`` with the warn and alert lines."""
    ranked = sorted(features, key=lambda f: -(f[1] or 0.0))
    colors = ["#c53030" if (v or 0) >= alert else "#d69e2e" if (v or 0) >= warn else COLORS[0] for _, v in ranked]
    return bar_chart([f for f, _ in ranked], [v for _, v in ranked], horizontal=True, colors=colors,
                     title=f"Feature drift vs {reference} (PSI)", xlabel="population stability index",
                     hlines={f"alert {alert:g}": alert, f"warn {warn:g}": warn})


def quarantine_chart(days: Sequence, rates: Sequence, warn: float, error: float) -> bytes:
    return line_chart(days, {"quarantined / raw lines": rates}, title="Quarantine rate per day",
                      ylabel="share of raw lines", percent=True, markers=len(days) <= 60,
                      hlines={f"error {error:.1%}": error, f"warn {warn:.1%}": warn})
