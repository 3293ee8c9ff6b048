"""The quarterly cohort report: gathered from the warehouse, rendered to a self-contained HTML file
(figures embedded) with the figures as PNG and the tables as CSV beside it.

Every count shown to a reader passes through `suppress_count`; no patient-level row is read.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata
from pathlib import Path

import duckdb
import pandas as pd

from cohort.display import figure_png, png_data_uri, suppress_count
from cohort.figures import km_figure
from cohort.protocol import PROTOCOL_PATH, load_protocol, protocol_hash
from cohort.settings import PROJECT_ROOT, REPORT_TEMPLATES_DIR

REPORT_FILE = "cohort_report.html"
PACKAGES = ("dagster", "duckdb", "polars", "great_expectations", "statsmodels", "lifelines", "pandas", "numpy")


@dataclass
class ReportContent:
    quarter: str
    data_cutoff: date
    summary: dict[str, str]
    deliveries: pd.DataFrame
    attrition: pd.DataFrame
    km_curves: pd.DataFrame
    provenance: dict[str, str] = field(default_factory=dict)


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gather(con: duckdb.DuckDBPyConnection, quarter: str, cutoff: date, run_id: str) -> ReportContent:
    """Read the aggregate results for one data cutoff (never patient-level rows)."""
    threshold = load_protocol().reporting.small_cell_threshold
    deliveries = con.execute(
        "SELECT d.delivery_id, d.source_site, d.data_cutoff, d.extracted_at, d.manifest_sha256 "
        "FROM meta.deliveries d JOIN meta.deliveries_as_of(?) USING (delivery_id) ORDER BY d.source_site",
        [cutoff],
    ).df()
    attrition = con.execute(
        "SELECT step_order, step, description, patients_remaining, patients_excluded FROM cohort.attrition "
        "WHERE data_cutoff = ? ORDER BY step_order", [cutoff]
    ).df()
    members, ai_ever, fractures, person_years = con.execute(
        "SELECT count(*), count(*) FILTER (ai_ever), count(*) FILTER (follow_up_end_reason = 'fracture'), "
        "coalesce(sum(follow_up_days) / 365.25, 0) FROM cohort.members WHERE data_cutoff = ?", [cutoff]
    ).fetchone()
    km = con.execute(
        "SELECT curve, group_label, time_years, at_risk, events, censored, survival, ci_low, ci_high "
        "FROM results.km_curves WHERE data_cutoff = ? ORDER BY curve, group_label, time_years", [cutoff]
    ).df()
    summary = {
        "cohort_size": suppress_count(members, threshold),
        "ai_ever": suppress_count(ai_ever, threshold),
        "fractures": suppress_count(fractures, threshold),
        "person_years": f"{person_years:,.0f}",
    }
    provenance = {
        "run_id": run_id,
        "code_version": code_version(),
        "protocol_file": str(PROTOCOL_PATH.relative_to(PROJECT_ROOT)),
        "protocol_sha256": protocol_hash(),
        **{f"package {name}": _version(name) for name in PACKAGES},
    }
    return ReportContent(quarter, cutoff, summary, deliveries, attrition, km, provenance)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _suppressed(frame: pd.DataFrame, columns: list[str], threshold: int) -> pd.DataFrame:
    shown = frame.copy()
    for column in columns:
        shown[column] = shown[column].map(lambda n: suppress_count(n, threshold))
    return shown


def render(content: ReportContent, reports_dir: Path) -> Path:
    """Write `<reports_dir>/<YYYY-Qn>/cohort_report.html` plus figures (PNG) and tables (CSV)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    threshold = load_protocol().reporting.small_cell_threshold
    out = reports_dir / content.quarter
    out.mkdir(parents=True, exist_ok=True)

    attrition = _suppressed(content.attrition, ["patients_remaining", "patients_excluded"], threshold)
    km_at_risk = _km_at_risk_table(content.km_curves, threshold)
    tables = {"attrition": attrition, "km_at_risk": km_at_risk, "deliveries": content.deliveries}
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)

    figures = {}
    if not content.km_curves.empty:
        png = figure_png(km_figure(content.km_curves, "Time to first fragility fracture by AI exposure"))
        (out / "km_fracture_by_ai.png").write_bytes(png)
        figures["km"] = png_data_uri(png)

    environment = Environment(loader=FileSystemLoader(REPORT_TEMPLATES_DIR), autoescape=select_autoescape(["html", "j2"]))
    html = environment.get_template("quarterly_report.html.j2").render(
        content=content,
        attrition=attrition.to_dict("records"),
        km_at_risk=km_at_risk,
        deliveries=content.deliveries.to_dict("records"),
        figures=figures,
        threshold=threshold,
    )
    path = out / REPORT_FILE
    path.write_text(html)
    return path


def _km_at_risk_table(curves: pd.DataFrame, threshold: int) -> pd.DataFrame:
    """Numbers at risk per group at whole years, suppressed for display."""
    if curves.empty:
        return pd.DataFrame(columns=["group"])
    horizon = int(curves["time_years"].max()) + 1
    rows = []
    for label, group in curves.groupby("group_label", sort=False):
        row = {"group": label}
        for year in range(horizon):
            later = group[group["time_years"] >= year]
            row[f"year {year}"] = suppress_count(int(later["at_risk"].iloc[0]) if len(later) else 0, threshold)
        rows.append(row)
    return pd.DataFrame(rows)
