"""Figures shared by the Dagster UI and the report: one look, one color per group everywhere."""

from __future__ import annotations

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
