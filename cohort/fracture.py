"""Time to first fragility fracture: the estimators behind the models stage, on plain frames."""

from __future__ import annotations

import pandas as pd

KM_COLUMNS = ["curve", "group_label", "time_years", "at_risk", "events", "censored", "survival", "ci_low", "ci_high"]
DAYS_PER_YEAR = 365.25


def kaplan_meier_by_group(members: pd.DataFrame, curve: str, group_column: str, labels: dict) -> pd.DataFrame:
    """Kaplan-Meier of time to first fracture from index, one curve per value of `group_column`.

    `members` needs follow_up_days and follow_up_end_reason (cohort.members).
    """
    from lifelines import KaplanMeierFitter

    frames = []
    for value, label in labels.items():
        group = members[members[group_column] == value]
        if group.empty:
            continue
        fitter = KaplanMeierFitter().fit(
            group["follow_up_days"] / DAYS_PER_YEAR, event_observed=group["follow_up_end_reason"] == "fracture"
        )
        table = fitter.event_table.join(fitter.survival_function_).join(fitter.confidence_interval_)
        frames.append(
            pd.DataFrame(
                {
                    "curve": curve,
                    "group_label": label,
                    "time_years": table.index.to_numpy(),
                    "at_risk": table["at_risk"].to_numpy(),
                    "events": table["observed"].to_numpy(),
                    "censored": table["censored"].to_numpy(),
                    "survival": table.iloc[:, -3].to_numpy(),
                    "ci_low": table.iloc[:, -2].to_numpy(),
                    "ci_high": table.iloc[:, -1].to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=KM_COLUMNS)
