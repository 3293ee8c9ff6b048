"""Figures shared by the Dagster UI and the report: one look, one color per group everywhere.

The code location imports this module, so matplotlib, numpy and pandas are imported inside the
functions that draw (matplotlib with the Agg backend: no display on a server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

GROUP_COLORS = {"AI during follow-up": "#c0392b", "No AI": "#2c7fb8"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def km_figure(curves: pd.DataFrame, title: str):
    """Kaplan-Meier step curves with 95% bands, from rows of results.km_curves."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, group in curves.groupby("group_label", sort=False):
        color = GROUP_COLORS.get(label)
        axis.step(group["time_years"], group["survival"], where="post", label=label, color=color)
        axis.fill_between(group["time_years"], group["ci_low"], group["ci_high"], step="post", alpha=0.15, color=color)
    axis.set_xlabel("Years since index (first testosterone dispensing)")
    axis.set_ylabel("Free of fragility fracture (probability)")
    axis.set_title(title)
    axis.legend(loc="lower left")
    axis.grid(alpha=0.3)
    plt.close(figure)
    return figure


# Added for the fracture models: E2 tiers and current exposure get their own colors.
GROUP_COLORS.update({
    "Current AI": "#e6550d",
    "No current AI": "#3182bd",
    "E2 <10 pg/mL": "#a50f15",
    "E2 10–<20 pg/mL": "#fc9272",
    "E2 20–<40 pg/mL": "#31a354",
    "E2 ≥40 pg/mL": "#756bb1",
    "E2 unknown": "#969696",
    "All follow-up": "#636363",
})


def km_figure_at_risk(curves: pd.DataFrame, title: str, at_risk: pd.DataFrame | None = None,
                      ylabel: str = "Free of fragility fracture (probability)"):
    """Kaplan-Meier step curves with 95% bands and, below, a numbers-at-risk table.

    `at_risk`: one row per group_label, one column per time in years, cells already formatted for
    display (suppressed counts, e.g. from cohort.fracture.numbers_at_risk + suppress_count)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(curves["group_label"]))
    rows = len(at_risk) if at_risk is not None else 0
    figure = plt.figure(figsize=(6.5, 4 + 0.22 * (rows + 1)))
    grid = figure.add_gridspec(2, 1, height_ratios=[4, 0.3 + 0.22 * (rows + 1)], hspace=0.45)
    axis = figure.add_subplot(grid[0])
    for label in groups:
        group = curves[curves["group_label"] == label]
        color = GROUP_COLORS.get(label)
        axis.step(group["time_years"], group["survival"], where="post", label=label, color=color)
        axis.fill_between(group["time_years"], group["ci_low"], group["ci_high"], step="post", alpha=0.15, color=color)
    axis.set_xlabel("Years since index (first testosterone dispensing)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(loc="lower left", fontsize=8)
    axis.grid(alpha=0.3)
    if rows:
        times = [c for c in at_risk.columns if c != "group_label"]
        table_axis = figure.add_subplot(grid[1], sharex=axis)
        table_axis.set_axis_off()
        table_axis.set_title("Number at risk", fontsize=8, loc="left")
        for row, (_, record) in enumerate(at_risk.iterrows()):
            y = 1 - (row + 1) / (rows + 1)
            label = record["group_label"]
            table_axis.text(-0.02, y, label, transform=table_axis.get_yaxis_transform(), ha="right", va="center",
                            fontsize=7, color=GROUP_COLORS.get(label, "black"))
            for t in times:
                table_axis.text(float(t), y, str(record[t]), ha="center", va="center", fontsize=7)
        table_axis.set_ylim(0, 1)
    plt.close(figure)
    return figure


def cif_figure(cif: pd.DataFrame, title: str):
    """Cumulative incidence step curves (Aalen-Johansen, death competing) with 95% bands, from rows
    of results.cumulative_incidence for one curve (grouping)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for label, group in cif.groupby("group_label", sort=False):
        color = GROUP_COLORS.get(label)
        axis.step(group["time_years"], group["cif"], where="post", label=label, color=color)
        axis.fill_between(group["time_years"], group["ci_low"], group["ci_high"], step="post", alpha=0.15, color=color)
    axis.set_xlabel("Years since index (first testosterone dispensing)")
    axis.set_ylabel("Cumulative incidence of fragility fracture")
    axis.set_title(title)
    axis.legend(loc="upper left", fontsize=8)
    axis.grid(alpha=0.3)
    plt.close(figure)
    return figure


def ps_overlap_figure(preference: pd.Series, treated, labels: dict, title: str,
                      equipoise_bounds: tuple[float, float] = (0.3, 0.7)):
    """Preference-score distributions of the two groups (density histograms, as CohortMethod's
    plotPs), with the equipoise bounds marked. `labels`: {True: treated label, False: control label}."""
    import numpy as np

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    treated = np.asarray(treated, dtype=bool)
    values = np.asarray(preference, dtype=float)
    bins = np.linspace(0, 1, 51)
    for flag in (False, True):
        label = labels[flag]
        axis.hist(values[treated == flag], bins=bins, density=True, alpha=0.45, label=label,
                  color=GROUP_COLORS.get(label))
    for bound in equipoise_bounds:
        axis.axvline(bound, color="black", linestyle="--", linewidth=0.8)
    axis.set_xlabel("Preference score")
    axis.set_ylabel("Density")
    axis.set_title(title)
    axis.legend(fontsize=8)
    plt.close(figure)
    return figure


def forest_figure(cox: pd.DataFrame, title: str):
    """Hazard ratios with 95% CIs on a log axis, one line per row of results.fracture_cox (columns
    term_label, hazard_ratio, ci_low, ci_high, diagnostics_passed); rows failing the diagnostics
    gate are drawn hollow and labelled 'diagnostics failed'."""
    import numpy as np

    plt = _pyplot()
    shown = cox[np.isfinite(cox["hazard_ratio"].astype(float))].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(6.5, 0.9 + 0.32 * max(len(shown), 1)))
    y = np.arange(len(shown))[::-1]
    for yi, (_, row) in zip(y, shown.iterrows()):
        passed = bool(row["diagnostics_passed"])
        axis.plot([row["ci_low"], row["ci_high"]], [yi, yi], color="#333333", linewidth=1.2)
        axis.plot(row["hazard_ratio"], yi, "s", color="#333333", markerfacecolor="#333333" if passed else "white")
    axis.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullLocator

    finite = shown[["ci_low", "ci_high"]].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.5, 2.0)
    ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 10, 20) if low / 1.2 <= t <= high * 1.2]
    axis.xaxis.set_major_locator(FixedLocator(ticks or [1]))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticklabels([f"{t:g}" for t in ticks or [1]])
    axis.set_yticks(y)
    axis.set_yticklabels([f"{r.term_label}{'' if r.diagnostics_passed else '  [diagnostics failed]'}"
                          for r in shown.itertuples()], fontsize=7)
    axis.set_xlabel("Hazard ratio (95% CI, log scale)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3, axis="x")
    plt.close(figure)
    return figure


# --- report figures ---
# Figures of the quarterly report (cohort/report.py). They take what the reader may see: counts
# arrive as already-suppressed text, curves already cut where fewer than the threshold are at risk.
# Colors: GROUP_COLORS above for every group label; the report's own additions are set only when
# missing, so a color chosen for the models stays the same in the report.

for _label, _color in {
    "AI during follow-up": "#c0392b", "No AI": "#2c7fb8",
    "Current AI": "#e6550d", "No current AI": "#3182bd",
    "E2 <10 pg/mL": "#a50f15", "E2 10–<20 pg/mL": "#fc9272", "E2 20–<40 pg/mL": "#31a354",
    "E2 ≥40 pg/mL": "#756bb1", "E2 unknown": "#969696", "All follow-up": "#636363",
}.items():
    GROUP_COLORS.setdefault(_label, _color)

SITE_LABELS = {
    "lumbar_spine": "Lumbar spine", "femoral_neck": "Femoral neck", "total_hip": "Total hip", "radius_33": "Radius 33%",
}
REPORT_DPI = 150


def report_color(label: str, fallback: str = "#444444") -> str:
    """The color of a group label in every figure (LC-MS/MS variants share their tier's color)."""
    if label in GROUP_COLORS:
        return GROUP_COLORS[label]
    base = label.replace(" (LC-MS/MS)", "")
    return GROUP_COLORS.get(base, fallback)


REPORT_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "legend.fontsize": 8.5, "axes.spines.top": False,
    "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": REPORT_DPI,
}


def _report_style(function):
    """Draw with the report's print-size style (9-pt text on figures drawn at their printed width,
    7 inches), without changing matplotlib's global settings for other figures."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        plt = _pyplot()
        with plt.rc_context(REPORT_STYLE):
            return function(*args, **kwargs)

    return wrapper


def _report_pyplot():
    return _pyplot()


@_report_style
def design_figure(windows: list[dict], title: str = "Study design"):
    """Design diagram (Schneeweiss 2019 style): one bar per assessment window in days relative to the
    index date (day 0, first testosterone dispensing). windows: label, start, end (days; start None =
    any time before, end None = to the end of follow-up), kind ('washout' | 'exclusion' | 'covariate' |
    'exposure' | 'outcome'), optional span (text after the bar)."""
    from matplotlib.patches import Patch

    plt = _report_pyplot()
    colors = {"washout": "#7f7f7f", "exclusion": "#8c6d31", "covariate": "#3182bd", "exposure": "#c0392b",
              "outcome": "#31a354"}
    names = {"washout": "washout", "exclusion": "exclusion assessment", "covariate": "covariate assessment",
             "exposure": "exposure (time-varying)", "outcome": "follow-up"}
    figure, axis = plt.subplots(figsize=(7.0, 1.1 + 0.36 * len(windows)))
    starts = [w["start"] for w in windows if w["start"] is not None]
    left = min(starts + [-365]) - 60
    right = 420
    for row, window in enumerate(reversed(windows)):
        start = window["start"] if window["start"] is not None else left
        end = window["end"] if window["end"] is not None else right
        color = colors.get(window["kind"], "#555555")
        axis.barh(row, end - start, left=start, height=0.55, color=color, alpha=0.85)
        if window["start"] is None:
            axis.annotate("", xy=(left - 25, row), xytext=(left + 5, row),
                          arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
        if window["end"] is None:
            axis.annotate("", xy=(right + 35, row), xytext=(right - 5, row),
                          arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
        span = window.get("span") or (f"[{window['start']}, {window['end']}]" if window["start"] is not None
                                       and window["end"] is not None else "")
        axis.text(left - 35, row, window["label"], ha="right", va="center", fontsize=8.5)
        if span:
            x = right + 45 if window["end"] is None else max(end, 0) + 12
            axis.text(x, row, span, ha="left", va="center", fontsize=7.5, color="#333333")
    axis.axvline(0, color="black", linewidth=1.2)
    axis.text(0, len(windows) - 0.3, "day 0: index (first testosterone)", ha="center", va="bottom", fontsize=8,
              bbox=dict(facecolor="white", edgecolor="none", pad=1))
    axis.set_yticks([])
    axis.set_ylim(-0.7, len(windows) + 0.5)
    axis.set_xlim(left - 30, right + 330)
    ticks = sorted({t for t in (-365, -180, 0, 180, 365) if left <= t <= right} | {w["start"] for w in windows
                    if w["start"] is not None and w["start"] < -365})
    axis.set_xticks(ticks)
    axis.set_xlabel("Days relative to the index date")
    axis.spines["left"].set_visible(False)
    kinds = list(dict.fromkeys(w["kind"] for w in windows))
    axis.legend([Patch(color=colors.get(k, "#555555"), alpha=0.85) for k in kinds], [names.get(k, k) for k in kinds],
                loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(kinds), fontsize=7.5, frameon=False)
    axis.set_title(title, loc="left")
    plt.close(figure)
    return figure

@_report_style
def flow_figure(steps: list[dict], title: str = "Cohort flow"):
    """Attrition flow diagram: one box per step (description, 'n = <text>') down the left and the
    patients excluded at that step (already suppressed text) in a box to the right. A step with
    cohort=True is outlined (the study cohort)."""
    import textwrap

    from matplotlib.patches import FancyBboxPatch

    plt = _report_pyplot()
    pitch = 0.78
    figure, axis = plt.subplots(figsize=(7.0, 0.62 * len(steps) + 0.45))
    axis.set_xlim(0, 10)
    axis.set_ylim(-pitch * (len(steps) - 1) - 0.4, 0.45)
    axis.set_axis_off()
    for i, step in enumerate(steps):
        y = -pitch * i
        cohort = bool(step.get("cohort"))
        axis.add_patch(FancyBboxPatch((0.1, y - 0.27), 6.4, 0.54, boxstyle="round,pad=0.02", facecolor="#eef3f8",
                                      edgecolor="#2c7fb8" if cohort else "#7f7f7f", linewidth=1.8 if cohort else 0.8))
        text = textwrap.fill(step["description"], 40)
        axis.text(0.3, y, text, ha="left", va="center", fontsize=7.5 if "\n" in text else 8, linespacing=1.15)
        axis.text(6.38, y, f"n = {step['remaining']}", ha="right", va="center", fontsize=8.5, weight="bold")
        if i + 1 < len(steps):
            axis.annotate("", xy=(3.1, y - pitch + 0.28), xytext=(3.1, y - 0.28),
                          arrowprops=dict(arrowstyle="->", color="#555555", lw=1))
        if i > 0 and step.get("excluded") not in (None, "", "0"):
            ym = y + pitch / 2
            axis.annotate("", xy=(6.95, ym), xytext=(3.1, ym), arrowprops=dict(arrowstyle="->", color="#999999", lw=0.8))
            axis.add_patch(FancyBboxPatch((7.0, ym - 0.16), 2.9, 0.32, boxstyle="round,pad=0.02", facecolor="#fbeee6",
                                          edgecolor="#c0392b", linewidth=0.6))
            axis.text(8.45, ym, f"excluded: {step['excluded']}", ha="center", va="center", fontsize=8)
    axis.set_title(title, loc="left")
    plt.close(figure)
    return figure

@_report_style
def dq_figure(frame: pd.DataFrame, title: str = "Data-quality checks passed, by delivery"):
    """Share of expectations passed per delivery (x, in data-cutoff order) and Kahn category (lines).
    frame: delivery, category, passed_pct."""
    plt = _report_pyplot()
    figure, axis = plt.subplots(figsize=(7.0, 2.8))
    order = list(dict.fromkeys(frame["delivery"]))
    palette = {"completeness": "#1b9e77", "conformance": "#7570b3", "plausibility": "#d95f02"}
    for category, part in frame.groupby("category", sort=True):
        x = [order.index(d) for d in part["delivery"]]
        axis.plot(x, part["passed_pct"], marker="o", label=category, color=palette.get(category))
    axis.set_xticks(range(len(order)))
    axis.set_xticklabels(order, rotation=20, ha="right")
    axis.set_ylim(-5, 105)
    axis.set_ylabel("Expectations passed (%)")
    axis.set_xlabel("Delivery (in data-cutoff order)")
    axis.legend(title="Kahn category", loc="lower left")
    axis.grid(alpha=0.3)
    axis.set_title(title, loc="left")
    plt.close(figure)
    return figure


@_report_style
def ps_overlap_bins_figure(bins: pd.DataFrame, bounds: tuple[float, float], title: str):
    """Preference-score distribution per group as density bars over bins that each hold zero or at
    least the threshold of patients (bins: group_label, left, right, density), mirrored: the first
    group above the axis, the second below. Equipoise bounds dashed."""
    plt = _report_pyplot()
    figure, axis = plt.subplots(figsize=(7.0, 3.4))
    groups = list(dict.fromkeys(bins["group_label"]))
    for sign, label in zip((1, -1), groups):
        part = bins[bins["group_label"] == label]
        axis.bar(part["left"], sign * part["density"], width=part["right"] - part["left"], align="edge",
                 color=report_color(label), alpha=0.75, label=label, edgecolor="white", linewidth=0.4)
    for bound in bounds:
        axis.axvline(bound, color="black", linestyle="--", linewidth=0.8)
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_xlim(0, 1)
    axis.set_xlabel("Preference score (propensity of AI initiation, adjusted for its prevalence)")
    axis.set_ylabel("Density (second group mirrored)")
    ticks = axis.get_yticks()
    axis.set_yticks(ticks)
    axis.set_yticklabels([f"{abs(t):g}" for t in ticks])
    axis.legend(loc="upper left")
    axis.set_title(title, loc="left")
    plt.close(figure)
    return figure


@_report_style
def bmd_trajectory_figure(frame: pd.DataFrame, title: str, ylabel: str = "Change from baseline (%)"):
    """BMD trajectories: one panel per skeletal site (columns) and grouping (rows: by AI exposure, by
    estradiol tier), groups in the order they first appear, legend per row at the right.
    frame: panel, skeletal_site, group_label, year, mean, ci_low, ci_high."""
    plt = _report_pyplot()
    panels = list(dict.fromkeys(frame["panel"]))
    sites = [s for s in SITE_LABELS if s in set(frame["skeletal_site"])] or [None]
    figure, axes = plt.subplots(len(panels) or 1, len(sites), figsize=(7.0, 2.25 * max(len(panels), 1) + 0.9),
                                squeeze=False, sharex=True, sharey="row")
    for r, panel in enumerate(panels):
        order = list(dict.fromkeys(frame.loc[frame["panel"] == panel, "group_label"]))
        for c, site in enumerate(sites):
            axis = axes[r][c]
            part = frame[(frame["panel"] == panel) & (frame["skeletal_site"] == site)]
            for label in order:
                group = part[part["group_label"] == label].sort_values("year")
                if group.empty:
                    continue
                color = report_color(label)
                axis.plot(group["year"], group["mean"], marker="o", markersize=3, color=color, label=label)
                axis.fill_between(group["year"], group["ci_low"], group["ci_high"], color=color, alpha=0.12)
            axis.axhline(0, color="grey", linewidth=0.6)
            axis.grid(alpha=0.3)
            if r == 0:
                axis.set_title(SITE_LABELS.get(site, site), fontsize=9)
            if c == 0:
                axis.set_ylabel(ylabel, fontsize=8.5)
        handles = {}
        for axis in axes[r]:
            for h, label in zip(*axis.get_legend_handles_labels()):
                handles.setdefault(label, h)
        if handles:
            ordered = [label for label in order if label in handles]
            legend = axes[r][-1].legend([handles[k] for k in ordered], ordered, fontsize=7.5, loc="center left",
                                        bbox_to_anchor=(1.03, 0.5), frameon=False, title=panel, title_fontsize=8)
            legend._legend_box.align = "left"
    figure.suptitle(title, x=0.01, ha="left", fontsize=10)
    figure.supxlabel("Years since baseline DXA", fontsize=9, x=0.45)
    figure.subplots_adjust(left=0.1, right=0.76, top=0.9, bottom=0.12, wspace=0.12, hspace=0.12)
    plt.close(figure)
    return figure

@_report_style
def estimate_forest_figure(rows: pd.DataFrame, xlabel: str, title: str, null_value: float = 0.0,
                           log_scale: bool = False):
    """Forest plot: one line per row (label, estimate, ci_low, ci_high, flagged, color optional);
    flagged rows (diagnostics failed / not converged) drawn hollow with a note."""
    import numpy as np

    plt = _report_pyplot()
    shown = rows[np.isfinite(rows["estimate"].astype(float))].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(7.0, 0.9 + 0.3 * max(len(shown), 1)))
    y = np.arange(len(shown))[::-1]
    for yi, row in zip(y, shown.itertuples()):
        color = getattr(row, "color", None) or "#333333"
        flagged = bool(row.flagged)
        axis.plot([row.ci_low, row.ci_high], [yi, yi], color=color, linewidth=1.3)
        axis.plot(row.estimate, yi, "s", color=color, markerfacecolor="white" if flagged else color, markersize=5)
    axis.axvline(null_value, color="grey", linestyle="--", linewidth=0.8)
    if log_scale:
        # Ratios on a log axis, labelled at readable values that never crowd each other.
        from matplotlib.ticker import FixedLocator, NullLocator

        axis.set_xscale("log")
        finite = shown[["ci_low", "ci_high"]].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite) & (finite > 0)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.5, 2.0)
        ticks = [t for t in (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 10, 20, 50, 100) if low / 1.3 <= t <= high * 1.3] or [1]
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticklabels([f"{t:g}" for t in ticks])
    axis.set_yticks(y)
    axis.set_yticklabels([f"{r.label}{'  [flagged]' if r.flagged else ''}" for r in shown.itertuples()], fontsize=8)
    axis.set_ylim(-0.8, len(shown) - 0.2)
    axis.set_xlabel(xlabel)
    axis.grid(alpha=0.3, axis="x")
    axis.set_title(title, loc="left")
    plt.close(figure)
    return figure


@_report_style
def curves_at_risk_figure(curves: pd.DataFrame, at_risk: pd.DataFrame | None, ylabel: str, title: str,
                          value: str = "survival", ylim: tuple[float, float] | None = None):
    """Step curves with 95% bands (curves: group_label, time_years, <value>, ci_low, ci_high, already
    cut where fewer than the threshold were at risk) and the numbers at risk below (at_risk: one row
    per group_label, one column per whole year, suppressed text)."""
    plt = _report_pyplot()
    groups = list(dict.fromkeys(curves["group_label"]))
    rows = 0 if at_risk is None else len(at_risk)
    figure = plt.figure(figsize=(7.0, 3.5 + 0.2 * (rows + 2)))
    grid = figure.add_gridspec(2, 1, height_ratios=[3.5, 0.2 * (rows + 2)], hspace=0.42)
    axis = figure.add_subplot(grid[0])
    for label in groups:
        group = curves[curves["group_label"] == label]
        color = report_color(label)
        axis.step(group["time_years"], group[value], where="post", label=label, color=color, linewidth=1.4)
        axis.fill_between(group["time_years"], group["ci_low"], group["ci_high"], step="post", alpha=0.13,
                          color=color)
    axis.set_ylabel(ylabel)
    axis.set_xlabel("Years since index (first testosterone dispensing)")
    if ylim:
        axis.set_ylim(*ylim)
    axis.legend(loc="best")
    axis.grid(alpha=0.3)
    axis.set_title(title, loc="left")
    if rows:
        years = [c for c in at_risk.columns if c != "group_label"]
        axis.set_xlim(-0.25, max(float(years[-1]), 1) + 0.3)
        table_axis = figure.add_subplot(grid[1], sharex=axis)
        table_axis.set_axis_off()
        table_axis.text(-0.01, 1.0, "Number at risk", transform=table_axis.transAxes, ha="right", va="bottom",
                        fontsize=8.5, weight="bold")
        for row, record in enumerate(at_risk.itertuples(index=False)):
            values = dict(zip(at_risk.columns, record))
            yy = 1 - (row + 1) / (rows + 1)
            label = values["group_label"]
            table_axis.text(-0.04, yy, label, transform=table_axis.get_yaxis_transform(), ha="right", va="center",
                            fontsize=8, color=report_color(label, "black"))
            for year in years:
                table_axis.text(float(year), yy, str(values[year]), ha="center", va="center", fontsize=8)
        table_axis.set_ylim(0, 1)
    plt.close(figure)
    return figure


# --- BMD figures ---
# Figures of the BMD mixed models (cohort/bmd.py, assets/models.py: bmd_change_models), for the
# Dagster UI: a forest plot of the estimands per skeletal site and residual checks per model.
# Colors: GROUP_COLORS; the one group label the BMD models add is set only when missing.

GROUP_COLORS.setdefault("Current AI, E2 <10 pg/mL", "#7f0000")
BMD_TERM_GROUPS = {  # term of results.bmd_change -> group label (its color)
    "ai_current": "Current AI", "e2_lt10": "E2 <10 pg/mL", "e2_10_20": "E2 10–<20 pg/mL",
    "e2_ge40": "E2 ≥40 pg/mL", "e2_unknown": "E2 unknown",
}
BMD_SITE_LABELS = {"lumbar_spine": "Lumbar spine", "femoral_neck": "Femoral neck", "total_hip": "Total hip"}


def bmd_forest_figure(rows: pd.DataFrame, title: str, term_labels: dict[str, str] | None = None):
    """Differences in annual sBMD change (% per year, 95% CI), one panel per skeletal site, one line per
    term (rows of results.bmd_change: skeletal_site, term, estimate_pct_per_year, ci_low, ci_high;
    optional analysis, drawn as separate lines with hollow markers for non-primary analyses).
    Terms not estimable (null estimate) are listed but not drawn."""
    import numpy as np
    import pandas as pd

    plt = _pyplot()
    labels = term_labels or {}
    sites = [s for s in BMD_SITE_LABELS if s in set(rows["skeletal_site"])] or list(dict.fromkeys(rows["skeletal_site"]))
    per_site = max((rows["skeletal_site"] == s).sum() for s in sites) if sites else 1
    figure, axes = plt.subplots(1, max(len(sites), 1), figsize=(3.1 * max(len(sites), 1) + 1.6, 0.8 + 0.3 * per_site),
                                sharey=True, squeeze=False)
    axes = axes[0]
    order = list(dict.fromkeys(zip(rows.get("analysis", pd.Series([""] * len(rows), index=rows.index)), rows["term"])))
    y_of = {key: len(order) - 1 - i for i, key in enumerate(order)}
    for axis, site in zip(axes, sites):
        part = rows[rows["skeletal_site"] == site]
        for row in part.itertuples():
            analysis = getattr(row, "analysis", "")
            y = y_of[(analysis, row.term)]
            estimate = float(row.estimate_pct_per_year) if row.estimate_pct_per_year is not None else float("nan")
            if not np.isfinite(estimate):
                axis.text(0, y, "not estimable", ha="center", va="center", fontsize=6.5, color="grey")
                continue
            color = GROUP_COLORS.get(BMD_TERM_GROUPS.get(row.term, ""), "#333333")
            hollow = analysis not in ("", "primary")
            axis.plot([row.ci_low, row.ci_high], [y, y], color=color, linewidth=1.3)
            axis.plot(estimate, y, "o" if hollow else "s", color=color, markersize=4.5,
                      markerfacecolor="white" if hollow else color)
        axis.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(BMD_SITE_LABELS.get(site, site), fontsize=9)
        axis.grid(alpha=0.3, axis="x")
        axis.tick_params(labelsize=7)
    axes[0].set_yticks([y_of[k] for k in order])
    axes[0].set_yticklabels([(f"{labels.get(t, t)}" + (f" ({a})" if a not in ("", "primary") else "")) for a, t in order],
                            fontsize=7)
    axes[0].set_ylim(-0.7, len(order) - 0.3)
    figure.supxlabel("Difference in annual sBMD change, % per year (95% CI)", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    plt.close(figure)
    return figure


def bmd_residual_figure(fitted, residuals, title: str, max_points: int = 4000, seed: int = 0):
    """Residual checks of one mixed model: standardized conditional residuals against fitted values
    (with a running median) and a normal QQ plot. At most `max_points` scans are drawn (a fixed
    random subset), so the figure stays small at network scale."""
    import numpy as np
    from scipy import stats

    plt = _pyplot()
    fitted = np.asarray(fitted, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    keep = np.isfinite(fitted) & np.isfinite(residuals)
    fitted, residuals = fitted[keep], residuals[keep]
    if len(fitted) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(fitted), max_points, replace=False))
        fitted_shown, residuals_shown = fitted[pick], residuals[pick]
    else:
        fitted_shown, residuals_shown = fitted, residuals
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.8))
    left.scatter(fitted_shown, residuals_shown, s=3, alpha=0.35, color="#2c7fb8", linewidths=0)
    if len(fitted) >= 20:
        edges = np.quantile(fitted, np.linspace(0, 1, 21))
        bins = np.clip(np.searchsorted(edges, fitted, side="right") - 1, 0, 19)
        centers = [np.median(fitted[bins == b]) for b in range(20) if (bins == b).any()]
        medians = [np.median(residuals[bins == b]) for b in range(20) if (bins == b).any()]
        left.plot(centers, medians, color="#c0392b", linewidth=1.2, label="median")
        left.legend(fontsize=7, loc="upper right")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xlabel("Fitted log sBMD (conditional)", fontsize=8)
    left.set_ylabel("Residual / residual SD", fontsize=8)
    left.set_title("Residuals vs fitted", fontsize=8.5)
    left.tick_params(labelsize=7)
    n = len(residuals_shown)
    if n:
        theoretical = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n)
        ordered = np.sort(residuals_shown)
        right.scatter(theoretical, ordered, s=3, alpha=0.5, color="#2c7fb8", linewidths=0)
        # Reference line through the quartiles (as R's qqline): conditional residuals are shrunk
        # (their SD is below sigma), so normality shows as a straight line, not as the identity.
        q1, q3 = np.quantile(residuals_shown, [0.25, 0.75])
        z1, z3 = stats.norm.ppf([0.25, 0.75])
        slope = (q3 - q1) / (z3 - z1)
        ends = np.array([theoretical[0], theoretical[-1]])
        right.plot(ends, q1 + slope * (ends - z1), color="grey", linewidth=0.8, linestyle="--")
    right.set_xlabel("Normal quantile", fontsize=8)
    right.set_ylabel("Standardized residual (sorted)", fontsize=8)
    right.set_title("Normal QQ plot", fontsize=8.5)
    right.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    plt.close(figure)
    return figure


# --- figures of the Dagster UI ---
def bar_figure(labels: list[str], values: list[int], title: str, xlabel: str, texts: list[str] | None = None):
    """Horizontal bars, largest first (e.g. quarantined rows by rule).

    `texts`: each bar's count as shown (small-cell suppressed); a bar whose text is not its exact
    count (suppressed) is not drawn, only its text, since its length would give the count away."""
    plt = _pyplot()
    texts = texts if texts is not None else [f"{v:,}" for v in values]
    drawn = [v if t == f"{int(v):,}" else 0 for v, t in zip(values, texts)]
    figure, axis = plt.subplots(figsize=(6.5, 0.4 * len(labels) + 1.2))
    order = sorted(range(len(values)), key=lambda i: (drawn[i], texts[i] != f"{int(values[i]):,}"))
    axis.barh([labels[i] for i in order], [drawn[i] for i in order], color="#7f8c8d")
    for y, i in enumerate(order):
        axis.annotate(texts[i], (drawn[i], y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    axis.margins(x=0.12)
    plt.close(figure)
    return figure


DQ_STATUS_COLORS = {"passed": "#31a354", "failed": "#e6550d", "errored": "#969696"}


def dq_status_figure(summary: pd.DataFrame, title: str = "Data-quality expectations by table and Kahn category"):
    """Stacked horizontal bars: expectations passed, failed and errored (GX could not evaluate them)
    per table and Kahn category. summary: table_name, category, passed, failed, errored (counts of
    expectations, not of records)."""
    plt = _pyplot()
    labels = [f"{t} · {c}" for t, c in zip(summary["table_name"], summary["category"])][::-1]
    figure, axis = plt.subplots(figsize=(6.5, 0.32 * len(labels) + 1.4))
    left = [0] * len(labels)
    for status, color in DQ_STATUS_COLORS.items():
        values = [int(v) for v in summary[status]][::-1]
        axis.barh(labels, values, left=left, color=color, label=status)
        left = [a + b for a, b in zip(left, values)]
    axis.set_xlabel("Expectations")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(axis="x", alpha=0.3)
    plt.close(figure)
    return figure
