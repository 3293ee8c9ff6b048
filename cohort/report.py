"""The quarterly cohort report: read from the warehouse as it stood at one data cutoff, built with
every count passed through small-cell suppression, rendered to a self-contained HTML file (figures
embedded), printed to PDF by headless Chromium, with the figures as PNG and the tables as CSV.

    gather(con, quarter, cutoff, run_id)  -> ReportContent   aggregates only, never patient-level rows
    build(content)                        -> Report          sections, tables, figures; suppression solved
    write_report(content, reports_dir)    -> ReportOutput    <reports_dir>/<YYYY-Qn>/ (HTML, PDF, PNG, CSV)

Sections, in order, and what feeds them (a results table that is absent, or has no rows for the
cutoff, gives a "not available for this cutoff" note instead of its section's content):

  summary            the estimands below in plain words: results.fracture_cox, results.bmd_change,
                     results.incidence_rates, cohort.members
  data-sources       meta.deliveries (+ deliveries_as_of), meta.dq_results, meta.ingest_counts,
                     meta.cohort_dq_results
  protocol           sql/cohort/protocol.toml (values and comments), reference.* code lists
  attrition          cohort.attrition
  table1             cohort.members (aggregated in SQL), results.balance (SMD before/after weighting)
  ps-overlap         analysis.fracture_iptw_weights (binned in SQL), results.propensity_diagnostics
  bmd-trajectories   results.bmd_trajectory (model); analysis.bmd_long + cohort.members (observed means)
  bmd-forest         results.bmd_change
  survival           results.km_curves, results.km_curves_e2_tier, results.cumulative_incidence
  incidence          results.incidence_rates
  cox                results.fracture_cox
  sensitivity        results.fracture_cox (as-treated / ITT / crude / LC-MS/MS-only), results.bmd_change
  changes            the same tables at the previous quarter's data cutoff
  limitations        fixed text plus flags from the sections above
  provenance         meta.deliveries (ids, manifest and file checksums), git, packages, run id, protocol hash

Reproducibility: every number comes from rows with the quarter's data_cutoff (and the previous
quarter's, for the change section); run id, build time and code version appear only in the
provenance section and provenance.json, so rebuilding a past quarter rewrites identical CSVs.

Privacy: every count shown (tables, at-risk rows, summary text, CSVs, figure annotations) is a
`cohort.suppression.Count` of one `Ledger`, so one suppression decision covers the whole report.
Relations stated to it (what a reader could add or subtract): cohort = AI + no AI; each Table 1
variable's levels (and observed + missing) sum to its group; reasons follow-up ended sum to each
group and across groups; flow step k-1 = step k + excluded at k, and the cohort step = the cohort;
at-risk at year 0 = the group size (KM/CIF by AI) or the Table 1 tier counts (by E2 tier); exposure
levels of the incidence rates sum to the overall row, which equals the fractures; a Cox model's
patients + excluded = the cohort, its events = the fractures, events exposed + unexposed = events;
a delivery's records = the sum of its files; PS-overlap bins sum to the group. Implicit cells (the
'no' of a binary variable, observed counts, unexposed events) are registered too, so a small one
hides its complement. Not stated: year-to-year differences of at-risk numbers (events and censoring
mixed, as in any published at-risk table). Percentages and rates are shown only while their count
and denominator are (n / N or rate x person-time would reveal a hidden count); histogram bins are
merged until none is small; curves stop where fewer than the threshold remain at risk; summaries
(mean, median) of fewer than the threshold values are not shown. Counts carry `data-count` in the
HTML; the count columns of every CSV are listed in tables/index.json.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

import duckdb
import numpy as np
import pandas as pd

from cohort.display import png_data_uri
from cohort.protocol import PROTOCOL_PATH, Protocol, load_protocol, protocol_hash
from cohort.settings import PROJECT_ROOT, REPORT_TEMPLATES_DIR
from cohort.suppression import Count, Ledger

REPORT_FILE = "cohort_report.html"
PDF_FILE = "cohort_report.pdf"
PROVENANCE_FILE = "provenance.json"
TEMPLATE = "quarterly_report.html.j2"
PACKAGES = (
    "dagster", "duckdb", "polars", "great_expectations", "statsmodels", "lifelines", "scipy", "pandas", "numpy",
    "matplotlib", "jinja2", "playwright",
)
PRINT_WIDTH_PX = 695  # 210 mm - 2 x 13 mm page margins, at 96 px per inch
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]

NO_AI, AI = "No AI", "AI during follow-up"
GROUPS = ((False, NO_AI), (True, AI))  # reference group first
SITES = {"lumbar_spine": "Lumbar spine", "femoral_neck": "Femoral neck", "total_hip": "Total hip",
         "radius_33": "Radius 33%"}
TIERS = ("lt10", "10_20", "20_40", "ge40", "unknown")
END_REASONS = {
    "fracture": "First fragility fracture", "death": "Death", "bone_active_drug": "Started a bone-active drug",
    "end_of_enrollment": "End of enrollment", "data_cutoff": "Data cutoff (still followed)",
}
COX_MODELS = {
    "time_varying_adjusted": "As treated: time-varying current exposure, adjusted (primary)",
    "iptw_itt": "Intention to treat: AI initiation, IPTW-weighted",
    "crude_itt": "Intention to treat: AI initiation, crude",
    "time_varying_adjusted_lcms": "As treated, estradiol tiers from LC-MS/MS results only",
    "death_cause_specific": "Death (cause-specific; secondary outcome)",
}
TERM_LABELS = {
    "ai_current": "Current aromatase inhibitor",
    "ai_ever": "Aromatase inhibitor initiated (intention to treat)",
    "glucocorticoid_current": "Current systemic glucocorticoid",
    "age_per_10y": "Age at index, per 10 years",
    "bmi_per_5": "BMI, per 5 kg/m²",
    "femoral_neck_sbmd_per_0_1": "Baseline femoral-neck sBMD, per 0.1 g/cm²",
}
COX_SHORT = {"time_varying_adjusted": "as treated", "iptw_itt": "ITT, IPTW", "crude_itt": "ITT, crude",
             "time_varying_adjusted_lcms": "as treated, LC-MS/MS", "death_cause_specific": "death"}
AT_RISK_MAX_YEARS = 10


# --------------------------------------------------------------------------------------------------
# Reading the warehouse
# --------------------------------------------------------------------------------------------------


@dataclass
class ReportContent:
    """Everything the report shows, as read from the warehouse: aggregates, never patient rows.

    `data[name]` is a DataFrame, or None when its source table is absent or has no rows for the
    cutoff (the section then says so)."""

    quarter: str
    data_cutoff: date
    previous_cutoff: date
    protocol: Protocol
    data: dict[str, pd.DataFrame | None]
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def threshold(self) -> int:
        return self.protocol.reporting.small_cell_threshold


def previous_quarter_cutoff(cutoff: date) -> date:
    """The data cutoff (last day) of the quarter before the one ending on `cutoff`."""
    return date(cutoff.year, 3 * ((cutoff.month - 1) // 3) + 1, 1) - timedelta(days=1)


def quarter_name(cutoff: date) -> str:
    return f"{cutoff.year}-Q{(cutoff.month - 1) // 3 + 1}"


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
        "AND table_name = ?", [schema, name]).fetchone()[0]) or bool(con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE database_name = current_database() AND schema_name = ? "
        "AND view_name = ?", [schema, name]).fetchone()[0])


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    schema, name = table.split(".")
    return [r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND schema_name = ? "
        "AND table_name = ? ORDER BY column_index", [schema, name]).fetchall()]


def _query(con, sql: str, params: list, requires: Iterable[str] = ()) -> pd.DataFrame | None:
    """Run an aggregate query; None when a table it reads does not exist or it returns no rows."""
    if not all(_exists(con, t) for t in requires):
        return None
    frame = con.execute(sql, params).df()
    return frame if len(frame) else None


def _results(con, table: str, cutoff: date, order: str | None = None) -> pd.DataFrame | None:
    """The rows of a results table for one cutoff (None if the table or the rows are missing)."""
    if not _exists(con, table) or "data_cutoff" not in _columns(con, table):
        return None
    frame = con.execute(f"SELECT * FROM {table} WHERE data_cutoff = ?{' ORDER BY ' + order if order else ''}",
                        [cutoff]).df()
    return frame.drop(columns=["data_cutoff"]) if len(frame) else None


CONTINUOUS = {
    "age_at_index": ("Age at index (years)", "mean"),
    "bmi": ("BMI (kg/m²)", "mean"),
    "testosterone_ng_dl": ("Total testosterone (ng/dL)", "median"),
    "estradiol_pg_ml": ("Estradiol (pg/mL)", "median"),
    "vitamin_d_ng_ml": ("25-OH vitamin D (ng/mL)", "median"),
    "sbmd_femoral_neck": ("Femoral-neck sBMD (g/cm²)", "mean"),
    "sbmd_total_hip": ("Total-hip sBMD (g/cm²)", "mean"),
    "sbmd_lumbar_spine": ("Lumbar-spine sBMD (g/cm²)", "mean"),
}
CATEGORICAL = {
    "e2_tier_at_index": ("Estradiol tier at index", "coalesce(e2_tier_at_index, 'unknown')"),
    "glucocorticoid_at_index": ("Systemic glucocorticoid at index",
                                "CASE WHEN glucocorticoid_at_index THEN 'yes' ELSE 'no' END"),
    "scanner_manufacturer": ("Baseline DXA scanner", "coalesce(scanner_manufacturer, 'none')"),
    "source_site": ("Site", "source_site"),
    "in_bmd_analysis": ("In the BMD-change analysis", "CASE WHEN in_bmd_analysis THEN 'yes' ELSE 'no' END"),
}


def _members_aggregates(con, cutoff: date, prefix: str = "") -> dict[str, pd.DataFrame | None]:
    """Cohort counts and Table 1 statistics per AI group, computed inside DuckDB."""
    out: dict[str, pd.DataFrame | None] = {}
    members = "cohort.members"
    if not _exists(con, members):
        return {f"{prefix}groups": None}
    where = "FROM cohort.members WHERE data_cutoff = ?"
    out[f"{prefix}groups"] = _query(con, (
        "SELECT coalesce(ai_ever, false) AS ai_ever, count(*) AS n, sum(follow_up_days) / 365.25 AS person_years, "
        "median(follow_up_days) / 365.25 AS median_years, quantile_cont(follow_up_days, 0.25) / 365.25 AS q1_years, "
        f"quantile_cont(follow_up_days, 0.75) / 365.25 AS q3_years {where} GROUP BY ALL ORDER BY 1"), [cutoff])
    out[f"{prefix}end_reasons"] = _query(con, (
        f"SELECT coalesce(ai_ever, false) AS ai_ever, follow_up_end_reason AS reason, count(*) AS n {where} "
        "GROUP BY ALL ORDER BY ALL"), [cutoff])
    if prefix:
        return out
    names = list(CONTINUOUS)
    casts = ", ".join(f"{n}::DOUBLE AS {n}" for n in names)
    out["t1_continuous"] = _query(con, (
        f"WITH long AS (UNPIVOT (SELECT coalesce(ai_ever, false) AS ai_ever, {casts} {where}) "
        f"ON {', '.join(names)} INTO NAME variable VALUE value) "
        "SELECT variable, ai_ever, count(value) AS n_obs, avg(value) AS mean, stddev_samp(value) AS sd, "
        "quantile_cont(value, 0.5) AS median, quantile_cont(value, 0.25) AS q1, quantile_cont(value, 0.75) AS q3 "
        "FROM long GROUP BY ALL ORDER BY ALL"), [cutoff])
    parts = [f"SELECT '{name}' AS variable, {expr} AS level, coalesce(ai_ever, false) AS ai_ever, count(*) AS n "
             f"{where} GROUP BY ALL" for name, (_, expr) in CATEGORICAL.items()]
    out["t1_categorical"] = _query(con, " UNION ALL ".join(parts) + " ORDER BY ALL", [cutoff] * len(parts))
    return out


def gather(con: duckdb.DuckDBPyConnection, quarter: str, cutoff: date, run_id: str,
           protocol: Protocol | None = None) -> ReportContent:
    """Read the aggregate results for one data cutoff (and the previous quarter's, for comparison)."""
    protocol = protocol or load_protocol()
    previous = previous_quarter_cutoff(cutoff)
    data: dict[str, pd.DataFrame | None] = {}
    meta = _exists(con, "meta.deliveries")
    data["deliveries"] = _query(con, (
        "SELECT d.delivery_id, d.source_site, d.data_cutoff::VARCHAR AS data_cutoff, strftime(d.extracted_at, '%Y-%m-%d %H:%M UTC') "
        "AS extracted_at, d.manifest_sha256, d.files::VARCHAR AS files FROM meta.deliveries d "
        "JOIN meta.deliveries_as_of(?) USING (delivery_id) ORDER BY d.source_site, d.delivery_id"),
        [cutoff]) if meta else None
    data["previous_deliveries"] = _query(con, (
        "SELECT delivery_id FROM meta.deliveries_as_of(?) ORDER BY 1"), [previous]) if meta else None
    if meta:
        dq = _exists(con, "meta.dq_results")
        ingest = _exists(con, "meta.ingest_counts")
        data["delivery_history"] = _query(con, (
            "SELECT d.delivery_id, d.source_site, d.data_cutoff::VARCHAR AS data_cutoff, d.status, d.validation_passed, "
            "d.delivery_id IN (SELECT delivery_id FROM meta.deliveries_as_of(?)) AS in_use, "
            + ("q.expectations, q.passed, q.failed_error, q.failed_warning, q.errored, " if dq else
               "NULL AS expectations, NULL AS passed, NULL AS failed_error, NULL AS failed_warning, NULL AS errored, ")
            + ("i.raw_rows, i.quarantined_rows, i.duplicate_rows " if ingest else
               "NULL AS raw_rows, NULL AS quarantined_rows, NULL AS duplicate_rows ")
            + "FROM meta.deliveries d "
            + ("LEFT JOIN (SELECT delivery_id, count(*) AS expectations, count(*) FILTER (passed) AS passed, "
               "count(*) FILTER (NOT passed AND NOT coalesce(errored, false) AND severity = 'error') AS failed_error, "
               "count(*) FILTER (NOT passed AND NOT coalesce(errored, false) AND severity <> 'error') AS failed_warning, "
               "count(*) FILTER (coalesce(errored, false)) AS errored FROM meta.dq_results GROUP BY ALL) q "
               "USING (delivery_id) " if dq else "")
            + ("LEFT JOIN (SELECT delivery_id, sum(raw_rows) AS raw_rows, sum(quarantined_rows) AS quarantined_rows, "
               "sum(duplicate_rows) AS duplicate_rows FROM meta.ingest_counts GROUP BY ALL) i USING (delivery_id) "
               if ingest else "")
            + "WHERE d.data_cutoff <= ? ORDER BY d.data_cutoff, d.source_site, d.delivery_id"), [cutoff, cutoff])
        data["dq_by_category"] = _query(con, (
            "SELECT r.delivery_id, d.data_cutoff::VARCHAR AS data_cutoff, r.category, count(*) AS expectations, "
            "count(*) FILTER (r.passed) AS passed FROM meta.dq_results r JOIN meta.deliveries d USING (delivery_id) "
            "WHERE d.data_cutoff <= ? GROUP BY ALL ORDER BY 2, 1, 3"),
            [cutoff], requires=["meta.dq_results"])
        data["dq_failures"] = _query(con, (
            "SELECT r.delivery_id, r.table_name, r.expectation, coalesce(r.column_name, '') AS column_name, "
            "r.category, r.severity, coalesce(r.errored, false) AS errored, r.unexpected_count, r.unexpected_percent "
            "FROM meta.dq_results r JOIN meta.deliveries_as_of(?) USING (delivery_id) WHERE NOT r.passed "
            "ORDER BY r.delivery_id, r.table_name, r.expectation, column_name"), [cutoff], requires=["meta.dq_results"])
        data["cohort_dq"] = _query(con, (
            "SELECT table_name, count(*) AS expectations, count(*) FILTER (passed) AS passed, "
            "count(*) FILTER (NOT passed AND NOT coalesce(errored, false) AND severity = 'error') AS failed_error, "
            "count(*) FILTER (NOT passed AND NOT coalesce(errored, false) AND severity <> 'error') AS failed_warning, "
            "count(*) FILTER (coalesce(errored, false)) AS errored FROM meta.cohort_dq_results WHERE data_cutoff = ? "
            "GROUP BY ALL ORDER BY ALL"), [cutoff], requires=["meta.cohort_dq_results"])
    data["attrition"] = _results(con, "cohort.attrition", cutoff, order="step_order")
    data.update(_members_aggregates(con, cutoff))
    data.update(_members_aggregates(con, previous, prefix="previous_"))
    data["e2_assays"] = _query(con, (
        "SELECT lcms_only, count(*) AS n FROM cohort.estradiol_results WHERE data_cutoff = ? GROUP BY ALL"),
        [cutoff], requires=["cohort.estradiol_results"])
    for name, table, order in (
        ("km", "results.km_curves", "curve, group_label, time_years"),
        ("km_e2", "results.km_curves_e2_tier", "curve, group_label, time_years"),
        ("cif", "results.cumulative_incidence", "curve, group_label, time_years"),
        ("rates", "results.incidence_rates", None),
        ("cox", "results.fracture_cox", None),
        ("balance", "results.balance", None),
        ("ps_diagnostics", "results.propensity_diagnostics", None),
        ("bmd_change", "results.bmd_change", None),
        ("bmd_trajectory", "results.bmd_trajectory", None),
    ):
        data[name] = _results(con, table, cutoff, order)
        if name in ("rates", "cox", "bmd_change"):
            data[f"previous_{name}"] = _results(con, table, previous)
    data["ps_bins"] = _query(con, (
        "SELECT coalesce(ai_ever, false) AS ai_ever, least(floor(preference_score * 20), 19)::INTEGER AS bin, "
        "count(*) AS n FROM analysis.fracture_iptw_weights WHERE data_cutoff = ? AND preference_score IS NOT NULL "
        "GROUP BY ALL ORDER BY ALL"), [cutoff], requires=["analysis.fracture_iptw_weights"])
    data["bmd_observed"] = _query(con, BMD_OBSERVED_SQL, [cutoff, cutoff],
                                  requires=["analysis.bmd_long", "cohort.members"])
    for name in ("drug_codes", "drug_names", "fracture_codes", "lab_codes", "sbmd_equations"):
        data[f"reference_{name}"] = _query(con, f"SELECT * FROM reference.{name} ORDER BY ALL", [],
                                           requires=[f"reference.{name}"])
    provenance = {
        "run_id": run_id,
        "report_built_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "code_version": code_version(),
        "protocol_file": str(PROTOCOL_PATH.relative_to(PROJECT_ROOT)),
        "protocol_sha256": protocol_hash(),
        "python": platform.python_version(),
        **{f"package {name}": _version(name) for name in PACKAGES},
    }
    return ReportContent(quarter, cutoff, previous, protocol, data, provenance)


# Observed mean % change of sBMD from each member's baseline scan, per site, year since baseline
# (rounded) and group; one value per member and year (mean of that member's scans in it).
BMD_OBSERVED_SQL = """
WITH scans AS (
    SELECT source_site, patient_key, skeletal_site, scan_date, years_since_baseline, sbmd_g_cm2
    FROM analysis.bmd_long WHERE data_cutoff = ? AND sbmd_g_cm2 IS NOT NULL
), base AS (
    SELECT source_site, patient_key, skeletal_site, sbmd_g_cm2 AS baseline FROM scans
    QUALIFY row_number() OVER (PARTITION BY source_site, patient_key, skeletal_site ORDER BY scan_date) = 1
), per_member AS (
    SELECT s.source_site, s.patient_key, s.skeletal_site, round(s.years_since_baseline)::INTEGER AS year,
           avg(100 * (s.sbmd_g_cm2 / b.baseline - 1)) AS pct
    FROM scans s JOIN base b USING (source_site, patient_key, skeletal_site) GROUP BY ALL
), grouped AS (
    SELECT p.*, coalesce(m.ai_ever, false) AS ai_ever, coalesce(m.e2_tier_at_index, 'unknown') AS tier
    FROM per_member p JOIN cohort.members m
      ON m.data_cutoff = ? AND m.source_site = p.source_site AND m.patient_key = p.patient_key
)
SELECT 'ai_ever' AS grouping, skeletal_site, CASE WHEN ai_ever THEN 'true' ELSE 'false' END AS grp, year,
       count(*) AS n, avg(pct) AS mean, stddev_samp(pct) AS sd
FROM grouped GROUP BY ALL
UNION ALL
SELECT 'e2_tier', skeletal_site, tier, year, count(*), avg(pct), stddev_samp(pct) FROM grouped GROUP BY ALL
ORDER BY ALL
"""


# --------------------------------------------------------------------------------------------------
# The report model: parts of text, tables, figures, sections
# --------------------------------------------------------------------------------------------------


@dataclass
class Part:
    """A piece of text a reader sees. A count part reads its text from the solved ledger; an
    estimate part carries its value (data-value) for tests; a guarded part is shown only while its
    guard count is shown (a rate would reveal a hidden count of events)."""

    raw: str = ""
    kind: str = "text"  # text | count | estimate | strong | code
    count: Count | None = None
    key: str | None = None
    value: float | None = None
    metric: str | None = None
    guard: tuple[Count, ...] = ()
    hidden_text: str = "—"

    @property
    def visible(self) -> bool:
        return all(g.shown for g in self.guard)

    @property
    def text(self) -> str:
        if self.count is not None:
            return self.count.text
        return self.raw if self.visible else self.hidden_text

    @property
    def data_value(self) -> str | None:
        if self.kind != "estimate" or self.value is None or not self.visible:
            return None
        return repr(float(self.value))


def T(text: str) -> Part:
    return Part(str(text))


def B(text: str) -> Part:
    return Part(str(text), kind="strong")


def C(count: Count, metric: str | None = None) -> Part:
    return Part(kind="count", count=count, key=_key_text(count.key), metric=metric)


def E(value, text: str, key: str, guard: Iterable[Count] = (), hidden_text: str = "—") -> Part:
    value = None if not _finite(value) else float(value)
    return Part(text, kind="estimate", key=key, value=value, guard=tuple(guard), hidden_text=hidden_text)


def _key_text(key) -> str:
    return "|".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


Cell = list  # list[Part]


@dataclass
class Table:
    name: str                      # CSV file stem and HTML id
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    csv: Callable[[], pd.DataFrame] | None = None  # a tidy CSV instead of the displayed grid
    count_columns: list[str] | None = None         # with `csv`: its count columns
    numeric_columns: tuple[int, ...] = ()          # right-aligned columns (display)

    def frame(self) -> tuple[pd.DataFrame, list[str]]:
        """The CSV and its count columns."""
        if self.csv is not None:
            return self.csv(), list(self.count_columns or [])
        records = [["".join(p.text for p in cell) for cell in row] for row in self.rows]
        frame = pd.DataFrame(records, columns=self.columns)
        counts = [name for j, name in enumerate(self.columns)
                  if any(row[j] for row in self.rows)
                  and all(not row[j] or (len(row[j]) == 1 and row[j][0].kind == "count") for row in self.rows)]
        return frame, counts


@dataclass
class Figure:
    name: str
    caption: str
    alt: str
    make: Callable[[], object]
    png: bytes = b""

    @property
    def data_uri(self) -> str:
        return png_data_uri(self.png)


@dataclass
class Block:
    kind: str                      # p | note | list | table | figure | unavailable | h3
    parts: list[Part] = field(default_factory=list)
    items: list[list[Part]] = field(default_factory=list)
    table: Table | None = None
    figure: Figure | None = None


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def p(self, *parts) -> None:
        self.blocks.append(Block("p", _parts(parts)))

    def note(self, *parts) -> None:
        self.blocks.append(Block("note", _parts(parts)))

    def h3(self, text: str) -> None:
        self.blocks.append(Block("h3", [T(text)]))

    def bullets(self, items: list[list]) -> None:
        self.blocks.append(Block("list", items=[_parts(i) for i in items]))

    def add_table(self, table: Table) -> Table:
        self.blocks.append(Block("table", table=table))
        return table

    def add_figure(self, figure: Figure) -> Figure:
        self.blocks.append(Block("figure", figure=figure))
        return figure

    def unavailable(self, what: str, table: str) -> None:
        self.missing.append(what)
        self.blocks.append(Block("unavailable", [T(f"{what}: not available for this cutoff "
                                                    f"({table} has no rows for it).")]))


def _resolve(value):
    """A tidy-CSV value, read after the ledger is solved: a count as shown, an estimate as its full
    value (empty when hidden), anything else as is."""
    if isinstance(value, Count):
        return value.text
    if isinstance(value, Part):
        if value.kind == "estimate":
            return float(value.value) if value.visible and value.value is not None else None
        return value.text
    return value


def tidy_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{k: _resolve(v) for k, v in row.items()} for row in rows], columns=columns)


def _parts(parts) -> list[Part]:
    return [p if isinstance(p, Part) else T(p) for p in parts]


SECTION_ORDER = (
    ("summary", "Summary of key findings"),
    ("data-sources", "Data sources, deliveries and data quality"),
    ("protocol", "Protocol"),
    ("attrition", "Cohort flow"),
    ("table1", "Baseline characteristics (Table 1)"),
    ("ps-overlap", "Propensity-score overlap"),
    ("bmd-trajectories", "BMD trajectories"),
    ("bmd-forest", "BMD change estimates"),
    ("survival", "Time to first fragility fracture"),
    ("incidence", "Incidence rates"),
    ("cox", "Cox models"),
    ("sensitivity", "Sensitivity analyses"),
    ("changes", "Change since last quarter"),
    ("limitations", "Limitations"),
    ("provenance", "Provenance"),
)


@dataclass
class Report:
    content: ReportContent
    ledger: Ledger
    sections: list[Section]
    figures: list[Figure]
    tables: list[Table]
    flags: list[str]
    errors: list[str] = field(default_factory=list)

    @property
    def unavailable_sections(self) -> list[str]:
        return [s.id for s in self.sections if any(b.kind == "unavailable" for b in s.blocks)]


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------


def _finite(x) -> bool:
    try:
        return x is not None and not pd.isna(x) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 2) -> str:
    return f"{float(x):,.{digits}f}" if _finite(x) else "—"


def fmt_ci(estimate, low, high, digits: int = 2) -> str:
    """'1.23 (0.98–1.54)', or with ' to ' when a limit is negative: '-0.74 (-1.34 to -0.14)'."""
    if not _finite(estimate):
        return "not estimable"
    negative = any(_finite(x) and float(x) < 0 for x in (low, high))
    return f"{fmt(estimate, digits)} ({fmt(low, digits)}{' to ' if negative else '–'}{fmt(high, digits)})"


def fmt_p(p) -> str:
    if not _finite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_signed(x, digits: int = 2) -> str:
    return f"{float(x):+.{digits}f}" if _finite(x) else "—"


def pct_part(count: Count, denominator: Count, key: str, brackets: bool = False) -> Part:
    """A percentage shown only when both its count and its denominator are shown (n / N would reveal
    a hidden count); with brackets it reads ' (12.3%)' and vanishes when hidden."""
    value = 100 * count.value / denominator.value if denominator.value else float("nan")
    if brackets:
        return E(value, f" ({fmt(value, 1)}%)", key, guard=(count, denominator), hidden_text="")
    return E(value, fmt(value, 1), key, guard=(count, denominator))


def tier_labels(protocol: Protocol) -> dict[str, str]:
    lo, mid, hi = protocol.estradiol.tier_bounds_pg_ml
    return {"lt10": f"<{lo:g} pg/mL", "10_20": f"{lo:g}–<{mid:g} pg/mL", "20_40": f"{mid:g}–<{hi:g} pg/mL (reference)",
            "ge40": f"≥{hi:g} pg/mL", "unknown": "unknown (no result in the lookback)"}


def tier_group_labels(protocol: Protocol) -> dict[str, str]:
    """Group labels of the estradiol tiers as in the results tables and figure colors."""
    lo, mid, hi = protocol.estradiol.tier_bounds_pg_ml
    return {"lt10": f"E2 <{lo:g} pg/mL", "10_20": f"E2 {lo:g}–<{mid:g} pg/mL", "20_40": f"E2 {mid:g}–<{hi:g} pg/mL",
            "ge40": f"E2 ≥{hi:g} pg/mL", "unknown": "E2 unknown"}


def term_label(term: str, protocol: Protocol, given: str | None = None) -> str:
    if given:
        return given
    if term.startswith("e2_"):
        tiers = tier_labels(protocol)
        tier = term[3:]
        return f"Estradiol {tiers.get(tier, tier).replace(' (reference)', '')} vs {tiers['20_40'].replace(' (reference)', '')}"
    return TERM_LABELS.get(term, term)


# --------------------------------------------------------------------------------------------------
# Building the report
# --------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, content: ReportContent):
        self.content = content
        self.data = content.data
        self.protocol = content.protocol
        self.threshold = content.threshold
        self.ledger = Ledger(self.threshold)
        self.sections = {sid: Section(sid, title) for sid, title in SECTION_ORDER}
        self.figures: list[Figure] = []
        self.tables: list[Table] = []
        self.flags: list[str] = []
        self.errors: list[str] = []
        self.tiers = tier_labels(self.protocol)
        self.tier_groups = tier_group_labels(self.protocol)
        self.n_all: Count | None = None
        self.n_group: dict[str, Count] = {}
        self.table1_counts: dict[tuple, Count] = {}
        self.rate_counts: dict[tuple, tuple] = {}
        self.attrition_steps = None
        self.delivery_records: dict[str, Count] = {}
        self.file_rows: dict[tuple[str, str], Count] = {}
        self.at_risk_years = [0]

    # registration helpers -------------------------------------------------------------------------
    def count(self, key, value) -> Count:
        return self.ledger.count(key, value)

    def table(self, section: str, table: Table) -> Table:
        self.tables.append(table)
        return self.sections[section].add_table(table)

    def figure(self, section: str, figure: Figure) -> Figure:
        self.figures.append(figure)
        return self.sections[section].add_figure(figure)

    def build(self) -> Report:
        self.cohort_counts()
        for section, step in (
            ("data-sources", self.data_sources), ("protocol", self.protocol_section), ("attrition", self.attrition),
            ("table1", self.table1), ("ps-overlap", self.ps_overlap), ("bmd-trajectories", self.bmd_trajectories),
            ("bmd-forest", self.bmd_forest), ("survival", self.survival), ("incidence", self.incidence),
            ("cox", self.cox), ("sensitivity", self.sensitivity), ("changes", self.changes),
            ("summary", self.summary), ("limitations", self.limitations), ("provenance", self.provenance),
        ):
            self.guarded(section, step)
        self.ledger.solve()
        return Report(self.content, self.ledger, list(self.sections.values()), self.figures, self.tables, self.flags,
                      self.errors)

    def guarded(self, section_id: str, step: Callable[[], None]) -> None:
        """Build one section; if a results table has changed shape under it, the report still appears,
        with that section replaced by a visible error note (and the asset logs it)."""
        section = self.sections[section_id]
        blocks, figures, tables = len(section.blocks), len(self.figures), len(self.tables)
        try:
            step()
        except Exception as error:  # noqa: BLE001 - reported in the section and in the asset's metadata
            del section.blocks[blocks:]
            del self.figures[figures:]
            del self.tables[tables:]
            message = f"{type(error).__name__}: {error}"
            self.errors.append(f"{section.title}: {message}")
            section.blocks.append(Block("error", [T(f"This section could not be built for this cutoff ({message}).")]))

    # cohort counts (shared by summary, Table 1, flow, curves) ---------------------------------------
    def cohort_counts(self) -> None:
        groups = self.data.get("groups")
        sizes = {label: 0 for _, label in GROUPS}
        if groups is not None:
            for row in groups.itertuples():
                sizes[AI if row.ai_ever else NO_AI] = int(row.n)
        self.n_all = self.count(("n", "all"), sum(sizes.values()))
        self.ledger.lock(("n", "all"))
        for label, n in sizes.items():
            self.n_group[label] = self.count(("n", label), n)
        self.ledger.total(("n", "all"), [("n", label) for label in sizes])
        # Reasons follow-up ended, per group and in total: each column sums to its group size.
        reasons = self.data.get("end_reasons")
        counts = {(reason, label): 0 for reason in END_REASONS for _, label in GROUPS}
        if reasons is not None:
            for row in reasons.itertuples():
                counts[(row.reason, AI if row.ai_ever else NO_AI)] = int(row.n)
        all_reasons = list(dict.fromkeys([r for r, _ in counts]))
        for (reason, label), n in counts.items():
            self.count(("end", reason, label), n)
        for reason in all_reasons:
            self.count(("end", reason, "all"), sum(counts[(reason, label)] for _, label in GROUPS))
            self.ledger.total(("end", reason, "all"), [("end", reason, label) for _, label in GROUPS])
        for _, label in GROUPS:
            self.ledger.total(("n", label), [("end", reason, label) for reason in all_reasons])
        self.ledger.total(("n", "all"), [("end", reason, "all") for reason in all_reasons])
        self.end_reasons = all_reasons

    def fractures(self, label: str = "all") -> Count:
        return self.ledger.get(("end", "fracture", label))

    # data sources and data quality ---------------------------------------------------------------
    def data_sources(self) -> None:
        section = self.sections["data-sources"]
        deliveries = self.data.get("deliveries")
        if deliveries is None:
            section.unavailable("Deliveries", "meta.deliveries")
            return
        self.delivery_records: dict[str, Count] = {}
        self.file_rows: dict[tuple[str, str], Count] = {}
        for row in deliveries.itertuples():
            files = json.loads(row.files) if row.files else {}
            for name, entry in sorted(files.items()):
                self.file_rows[(row.delivery_id, name)] = self.count(("file_rows", row.delivery_id, name),
                                                                     int(entry.get("rows") or 0))
        history = self.data.get("delivery_history")
        section.p(
            f"This report uses {len(deliveries)} deliver{'y' if len(deliveries) == 1 else 'ies'} from "
            f"{deliveries['source_site'].nunique()} site(s): for each site, the latest delivery that was loaded and "
            f"passed its blocking data-quality checks with a data cutoff on or before {self.content.data_cutoff}. "
            "Each delivery is a full, date-shifted, de-identified snapshot of the site's data (extract contract v1)."
        )
        rows = []
        for row in deliveries.itertuples():
            files = [k for k in self.file_rows if k[0] == row.delivery_id]
            total = self.count(("records", row.delivery_id), sum(self.file_rows[k].value for k in files))
            self.ledger.total(("records", row.delivery_id), [("file_rows",) + k for k in files])
            self.delivery_records[row.delivery_id] = total
            rows.append([[T(row.delivery_id)], [T(row.source_site)], [T(str(row.data_cutoff))],
                         [T(row.extracted_at or "")], [T(str(len(files)))], [C(total)]])
        self.table("data-sources", Table(
            "deliveries", "Deliveries included in this report", ["Delivery", "Site", "Data cutoff", "Extracted",
                                                                   "Files", "Records delivered"],
            rows, numeric_columns=(4, 5)))
        if history is not None:
            rows = []
            for row in history.itertuples():
                def n(value, kind):
                    if value is None or pd.isna(value):
                        return [T("—")]
                    return [C(self.count((kind, row.delivery_id), int(value)))]
                checks = (lambda v: [T("—")] if v is None or pd.isna(v) else [T(f"{int(v)}")])
                passed = row.validation_passed
                status = row.status if row.status != "loaded" else (
                    "loaded, not validated" if passed is None or pd.isna(passed) else
                    "loaded, validated" if bool(passed) else "loaded, failed blocking checks")
                known = self.delivery_records.get(row.delivery_id)
                raw = ([C(known)] if known is not None and _finite(row.raw_rows) and int(row.raw_rows) == known.value
                       else n(row.raw_rows, "raw_records"))
                failed = "—" if row.expectations is None or pd.isna(row.expectations) else (
                    f"{int(row.failed_error)} / {int(row.failed_warning)} / {int(row.errored)}")
                rows.append([[T(row.delivery_id)], [T(str(row.data_cutoff))],
                             [T(status + ("; used here" if row.in_use else ""))], checks(row.expectations),
                             checks(row.passed), [T(failed)], raw, n(row.quarantined_rows, "quarantined"),
                             n(row.duplicate_rows, "duplicates")])
            self.table("data-sources", Table(
                "data_quality_history", "Data quality of every delivery up to this cutoff, in data-cutoff order",
                ["Delivery", "Data cutoff", "Status", "Checks run", "Passed", "Failed: error / warning / errored",
                 "Records", "Quarantined", "Exact duplicates"], rows,
                notes=["Checks are Great Expectations expectations (Kahn categories: conformance, completeness, "
                       "plausibility); an error-severity failure blocks the delivery from the cohort. Check counts "
                       "count checks, not people. Quarantined records failed a typing rule and were set aside with "
                       "their reason; no delivered record is dropped silently."],
                numeric_columns=tuple(range(3, 9))))
        by_category = self.data.get("dq_by_category")
        if by_category is not None:
            frame = by_category.assign(
                delivery=by_category["delivery_id"],
                passed_pct=100 * by_category["passed"] / by_category["expectations"])
            self.figure("data-sources", Figure(
                "dq_over_time", "Share of data-quality expectations passed per delivery and Kahn category, over time.",
                "Line chart of the percentage of data-quality checks passed per delivery",
                lambda frame=frame: _figures().dq_figure(frame)))
        failures = self.data.get("dq_failures")
        if failures is not None:
            rows = []
            for i, row in enumerate(failures.itertuples()):
                affected = (self.count(("dq_unexpected", row.delivery_id, row.table_name, row.expectation,
                                        row.column_name, i), int(row.unexpected_count))
                            if _finite(row.unexpected_count) else None)
                share = ([E(row.unexpected_percent, f"{row.unexpected_percent:.2f}%", f"dq_pct|{i}", guard=[affected])]
                         if affected is not None and _finite(row.unexpected_percent) else [T("—")])
                rows.append([[T(row.delivery_id)], [T(row.table_name)], [T(row.expectation)], [T(row.column_name)],
                             [T(row.category)], [T("errored" if row.errored else row.severity)],
                             [C(affected)] if affected is not None else [T("—")], share])
            self.table("data-sources", Table(
                "data_quality_failures", "Data-quality expectations not met by the deliveries in use",
                ["Delivery", "Table", "Expectation", "Column", "Category", "Severity", "Records affected", "Share"],
                rows, numeric_columns=(6, 7)))
        else:
            section.p("Every data-quality expectation run on the deliveries in use passed.")
        cohort_dq = self.data.get("cohort_dq")
        if cohort_dq is not None:
            rows = [[[T(r.table_name)], [T(str(int(r.expectations)))], [T(str(int(r.passed)))],
                     [T(str(int(r.failed_error)))], [T(str(int(r.failed_warning)))], [T(str(int(r.errored)))]]
                    for r in cohort_dq.itertuples()]
            self.table("data-sources", Table(
                "cohort_checks", "Checks on the cohort tables at this cutoff",
                ["Table", "Checks run", "Passed", "Failed (error)", "Failed (warning)", "Errored"], rows,
                numeric_columns=(1, 2, 3, 4, 5)))

    # protocol ---------------------------------------------------------------------------------------
    def protocol_section(self) -> None:
        section = self.sections["protocol"]
        p = self.protocol
        section.p(
            "Design: retrospective new-user cohort of men starting testosterone therapy (index date: first "
            "testosterone dispensing after a washout with none), followed from index for a first fragility fracture "
            "and, in those with a baseline and a later DXA scan, for the change in standardized BMD (sBMD). The "
            "exposure of interest is aromatase-inhibitor (AI) use, analysed as treated (current use, time-varying) "
            "and as initiation (intention to treat), and the estradiol (E2) tier it produces."
        )
        lab_before, lab_after = p.baseline.lab_days_before, p.baseline.lab_days_after
        scan_before, scan_after = p.bmd_analysis.baseline_scan_days_before, p.bmd_analysis.baseline_scan_days_after
        windows = [
            {"label": "Washout: no testosterone", "start": -p.new_users.washout_days, "end": -1, "kind": "washout"},
            {"label": "Exclusion: bone-active drug", "start": None, "end": 0, "kind": "exclusion",
             "span": "any time before index"},
            {"label": "Exclusion: fragility fracture", "start": -p.exclusions.prior_fracture_days, "end": 0,
             "kind": "exclusion"},
            {"label": "Baseline labs (closest to index)", "start": -lab_before, "end": lab_after, "kind": "covariate"},
            {"label": "Baseline DXA scan", "start": -scan_before, "end": scan_after, "kind": "covariate"},
            {"label": "Current AI use (time-varying)", "start": 0, "end": None, "kind": "exposure",
             "span": f"grace {p.exposure.grace_period_days} d"},
            {"label": "E2 tier (time-varying)", "start": 0, "end": None, "kind": "exposure",
             "span": f"latest result, {p.estradiol.lookback_days}-d lookback"},
            {"label": "Follow-up for outcomes", "start": 0, "end": None, "kind": "outcome",
             "span": "to fracture, death, bone drug, end"},
        ]
        self.figure("protocol", Figure(
            "design", "Study design: assessment windows in days relative to the index date (first testosterone "
            "dispensing). Exposure and follow-up continue until the first of fracture, death, start of a bone-active "
            "drug, end of enrollment or the data cutoff.", "Study design diagram with assessment windows",
            lambda windows=windows: _figures().design_figure(windows)))
        rows = [[[T(s)], [T(k)], [B(v)], [T(d)]] for s, k, v, d in protocol_parameters(p)]
        self.table("protocol", Table(
            "protocol_parameters", f"Protocol parameters ({PROTOCOL_PATH.name}, validated when the pipeline loads it)",
            ["Section", "Parameter", "Value", "Meaning"], rows))
        section.h3("Definitions")
        section.bullets([
            ["Fragility fracture: an initial-encounter ICD-10-CM code (7th character A, B or C) of the hip, spine, "
             "distal forearm or proximal humerus, or M80; codes of the same site within 90 days are one fracture; "
             "pathological fractures (M84.5, C79.51) are not fragility fractures."],
            [f"AI episode: AI dispensings (anastrozole, letrozole, exemestane) joined across gaps of up to "
             f"{p.exposure.grace_period_days} days; a dispensing without supply or end date covers "
             f"{p.exposure.default_days_supply} days. Current AI use is time-varying; AI initiation (ever) is the "
             "intention-to-treat exposure."],
            [f"Estradiol tier: from the latest estradiol result of the previous {p.estradiol.lookback_days} days "
             f"(tiers {', '.join(v for k, v in self.tiers.items() if k != 'unknown')}); a censored result '<x' is "
             "placed in a tier only when x is at or below that tier's upper bound."
             + (" Only LC-MS/MS results are used (protocol lcms_only)." if p.estradiol.lcms_only else "")],
            ["sBMD: BMD standardized across manufacturers (Hui 1997 spine and total hip, Lu 2001 femoral neck); "
             "Norland scanners and the radius have no equation and stay out of cross-manufacturer comparisons."],
            ["Follow-up ends at the first of: fracture, death (a competing event), start of a bone-active drug, end "
             "of enrollment, data cutoff."],
        ])
        section.h3("Code lists")
        codes = []
        drug_codes = self.data.get("reference_drug_codes")
        if drug_codes is not None:
            codes.append(Table("codes_drugs", "Drugs by code (ATC prefix or RxNorm)",
                               ["System", "Code", "Ingredient", "Class"],
                               [[[T(r.code_system)], [T(r.code_prefix)], [T(r.ingredient)], [T(r.drug_class)]]
                                for r in drug_codes.itertuples()]))
        drug_names = self.data.get("reference_drug_names")
        if drug_names is not None:
            codes.append(Table("codes_drug_names", "Drugs by name, when no code matches (regular expression on the "
                               "upper-case drug name)", ["Name pattern", "Ingredient", "Class"],
                               [[[Part(r.name_pattern.replace("|", " | "), kind="code")], [T(r.ingredient)],
                                 [T(r.drug_class)]] for r in drug_names.itertuples()]))
        fracture_codes = self.data.get("reference_fracture_codes")
        if fracture_codes is not None:
            codes.append(Table("codes_fractures", "Fragility fractures (ICD-10-CM prefixes, no dot)",
                               ["ICD-10-CM prefix", "Fracture site"],
                               [[[T(r.code_prefix)], [T(r.fracture_site)]] for r in fracture_codes.itertuples()]))
        lab_codes = self.data.get("reference_lab_codes")
        if lab_codes is not None:
            codes.append(Table("codes_labs", "Laboratory analytes (LOINC)", ["LOINC", "Analyte"],
                               [[[T(r.loinc_code)], [T(r.analyte)]] for r in lab_codes.itertuples()]))
        equations = self.data.get("reference_sbmd_equations")
        if equations is not None:
            codes.append(Table("codes_sbmd", "sBMD equations: sBMD = slope × (BMD − offset) + intercept",
                               ["Site", "Manufacturer", "Slope", "Offset", "Intercept"],
                               [[[T(SITES.get(r.skeletal_site, r.skeletal_site))], [T(r.manufacturer)],
                                 [T(f"{r.slope:g}")], [T(f"{r.bmd_offset:g}")], [T(f"{r.intercept:g}")]]
                                for r in equations.itertuples()]))
        if not codes:
            section.unavailable("Code lists", "reference.*")
        for table in codes:
            self.table("protocol", table)

    # attrition --------------------------------------------------------------------------------------
    def attrition(self) -> None:
        section = self.sections["attrition"]
        attrition = self.data.get("attrition")
        if attrition is None:
            section.unavailable("Cohort flow", "cohort.attrition")
            return
        steps = list(attrition.itertuples())
        remaining = [self.count(("attrition_remaining", s.step), int(s.patients_remaining)) for s in steps]
        excluded = [self.count(("attrition_excluded", s.step), int(s.patients_excluded)) for s in steps]
        for i in range(1, len(steps)):
            self.ledger.total(("attrition_remaining", steps[i - 1].step),
                              [("attrition_remaining", steps[i].step), ("attrition_excluded", steps[i].step)])
        # The cohort is the last step that still has every member; the steps after it select the BMD analysis.
        cohort_step = None
        for i, step in enumerate(steps):
            if step.patients_remaining == self.n_all.value and (step.step == "positive_follow_up" or cohort_step is None):
                cohort_step = i
        if cohort_step is not None:
            self.ledger.equal(("attrition_remaining", steps[cohort_step].step), ("n", "all"))
        self.attrition_steps = (steps, remaining, excluded, cohort_step)
        flow = []
        for i, step in enumerate(steps):
            flow.append({"description": step.description, "remaining": remaining[i], "excluded": excluded[i],
                         "cohort": i == cohort_step})
        self.figure("attrition", Figure(
            "attrition_flow", "Cohort flow: patients remaining after each protocol step and excluded at it. The boxed "
            "step is the study cohort; later steps select the BMD-change analysis.", "Cohort flow diagram",
            lambda flow=flow: _figures().flow_figure([
                {**f, "remaining": f["remaining"].text, "excluded": f["excluded"].text} for f in flow])))
        rows = [[[T(str(s.step_order))], [T(s.description)], [C(remaining[i])], [C(excluded[i])]]
                for i, s in enumerate(steps)]
        self.table("attrition", Table(
            "attrition", "Cohort flow, step by step (RECORD 6.1)", ["#", "Step", "Remaining", "Excluded"], rows,
            row_classes=["highlight" if i == cohort_step else "" for i in range(len(steps))],
            numeric_columns=(2, 3)))

    # Table 1 ----------------------------------------------------------------------------------------
    def table1(self) -> None:
        section = self.sections["table1"]
        continuous = self.data.get("t1_continuous")
        categorical = self.data.get("t1_categorical")
        if continuous is None or categorical is None or self.n_all.value == 0:
            section.unavailable("Baseline characteristics", "cohort.members")
            self.table1_counts = {}
            return
        balance = self.data.get("balance")
        smd_after = smd_before = {}
        if balance is not None:
            smd_before = dict(zip(balance["covariate"], balance["smd_before"]))
            smd_after = dict(zip(balance["covariate"], balance["smd_after"]))
        groups = [label for _, label in GROUPS]
        rows, classes, tidy, smd_rows = [], [], [], []
        rows.append([[B("Patients, n")]] + [[C(self.n_group[g])] for g in groups] + [[T("")], [T("")]])
        classes.append("strong")
        for g in groups:
            tidy.append({"characteristic": "Patients", "level": "", "group": g, "n": self.n_group[g]})

        def smd_cells(covariate: str, own: float | None):
            before = smd_before.get(covariate, own)
            after = smd_after.get(covariate)
            smd_rows.append({"covariate": covariate, "smd_before": before, "smd_after": after})
            return [[E(before, fmt(before, 3), f"smd_before|{covariate}")] if _finite(before) else [T("—")],
                    [E(after, fmt(after, 3), f"smd_after|{covariate}")] if _finite(after) else [T("—")]]

        stats = {(r.variable, bool(r.ai_ever)): r for r in continuous.itertuples()}
        for variable, (label, kind) in CONTINUOUS.items():
            cells, obs, missing = [], {}, {}
            for flag, g in GROUPS:
                r = stats.get((variable, flag))
                n_obs = int(r.n_obs) if r is not None else 0
                obs[g] = self.count(("t1_observed", variable, g), n_obs)
                missing[g] = self.count(("t1_missing", variable, g), self.n_group[g].value - n_obs)
                self.ledger.total(("n", g), [("t1_observed", variable, g), ("t1_missing", variable, g)])
                if r is None or n_obs == 0:
                    cells.append([T("—")])
                    tidy.append({"characteristic": label, "level": "", "group": g, "n": obs[g]})
                    continue
                digits = 3 if variable.startswith("sbmd") else 1
                text = (f"{fmt(r.mean, digits)} ({fmt(r.sd, digits)})" if kind == "mean" else
                        f"{fmt(r.median, digits)} [{fmt(r.q1, digits)}–{fmt(r.q3, digits)}]")
                # A summary of fewer than `threshold` values is not shown (it is close to the values
                # themselves); of more, it is shown even if the count itself is hidden as a complement.
                guard = [] if n_obs >= self.threshold else [obs[g]]
                cells.append([E(r.mean if kind == "mean" else r.median, text, f"t1|{variable}|{g}", guard=guard)])
                tidy.append({"characteristic": label, "level": "", "group": g, "n": obs[g],
                             **{stat: E(getattr(r, stat), "", f"t1|{variable}|{g}|{stat}", guard=guard)
                                for stat in ("mean", "sd", "median", "q1", "q3")}})
            own = _smd_continuous(stats.get((variable, True)), stats.get((variable, False)))
            rows.append([[T(f"{label}, {'mean (SD)' if kind == 'mean' else 'median [IQR]'}")]] + cells
                        + smd_cells(variable, own))
            classes.append("")
            if any(m.value for m in missing.values()):
                rows.append([[T("   missing, n (%)")]] + [[C(missing[g]), pct_part(
                    missing[g], self.n_group[g], f"t1pct|{variable}_missing|{g}", brackets=True)] for g in groups]
                    + smd_cells(f"{variable}_missing", None))
                classes.append("sub")
                for g in groups:
                    tidy.append({"characteristic": label, "level": "missing", "group": g, "missing_n": missing[g],
                                 "percent": pct_part(missing[g], self.n_group[g], "")})
        levels_seen = {}
        for r in categorical.itertuples():
            levels_seen.setdefault(r.variable, {})[(r.level, bool(r.ai_ever))] = int(r.n)
        self.table1_counts = {}
        for variable, (label, _) in CATEGORICAL.items():
            values = levels_seen.get(variable, {})
            levels = sorted({lv for lv, _ in values}, key=lambda lv: _level_order(variable, lv))
            rows.append([[B(f"{label}, n (%)")], [T("")], [T("")], [T("")], [T("")]])
            classes.append("group")
            for level in levels:
                cells = []
                for flag, g in GROUPS:
                    c = self.count(("t1", variable, level, g), values.get((level, flag), 0))
                    self.table1_counts[(variable, level, g)] = c
                    cells.append([C(c), pct_part(c, self.n_group[g], f"t1pct|{variable}={level}|{g}", brackets=True)])
                    tidy.append({"characteristic": label, "level": self._level_label(variable, level), "group": g,
                                 "n": c, "percent": pct_part(c, self.n_group[g], "")})
                covariate = variable if (variable == "glucocorticoid_at_index" and level == "yes") else f"{variable}={level}"
                own = _smd_binary(values.get((level, True), 0), self.n_group[AI].value,
                                  values.get((level, False), 0), self.n_group[NO_AI].value)
                rows.append([[T("   " + self._level_label(variable, level))]] + cells + (
                    smd_cells(covariate, own) if not (variable == "glucocorticoid_at_index" and level == "no")
                    and variable != "in_bmd_analysis" else [[T("")], [T("")]]))
                classes.append("sub")
            for _, g in GROUPS:
                self.ledger.total(("n", g), [("t1", variable, level, g) for level in levels])
        # The BMD analysis at the end of the flow is the 'in BMD analysis: yes' row.
        if self.attrition_steps is not None:
            steps, _, _, cohort_step = self.attrition_steps
            yes = [self.table1_counts.get(("in_bmd_analysis", "yes", g)) for _, g in GROUPS]
            if (cohort_step is not None and cohort_step < len(steps) - 1 and all(yes)
                    and sum(c.value for c in yes) == int(steps[-1].patients_remaining)):
                self.ledger.total(("attrition_remaining", steps[-1].step), [c.key for c in yes])
        weighted = balance is not None
        columns = ["Characteristic", NO_AI, AI, "SMD before weighting", "SMD after weighting (IPTW)"]
        self.table("table1", Table(
            "table1_baseline", "Baseline characteristics at index by aromatase-inhibitor exposure during follow-up",
            columns, rows, row_classes=classes,
            notes=[
                "SMD: standardized mean difference (AI − no AI) / pooled SD; |SMD| > 0.1 is commonly read as "
                "imbalance. " + ("SMDs are those of the propensity model (results.balance): continuous covariates with "
                                 "missing values median-imputed with a missing indicator, weights stabilized and "
                                 "truncated." if weighted else
                                 "Weighted SMDs are not available for this cutoff (results.balance has no rows for "
                                 "it); unweighted SMDs are computed from the observed values."),
                "AI exposure here is any AI during follow-up, which is known only after index: the groups describe "
                "who later received an AI; the analyses handle exposure as time-varying or from initiation.",
                f"A statistic of a group with fewer than {self.threshold} observed values is not shown (—).",
            ],
            csv=lambda tidy=tidy: tidy_frame(tidy, ["characteristic", "level", "group", "n", "percent", "mean", "sd",
                                                    "median", "q1", "q3", "missing_n"]),
            count_columns=["n", "missing_n"], numeric_columns=(1, 2, 3, 4)))
        self.tables.append(Table("table1_smd", "Standardized mean differences", [], [],
                                 csv=lambda smd_rows=smd_rows: pd.DataFrame(
                                     smd_rows, columns=["covariate", "smd_before", "smd_after"]),
                                 count_columns=[]))
        if weighted:
            worst = balance.loc[balance["smd_after"].abs().idxmax()] if len(balance) else None
            if worst is not None and abs(worst["smd_after"]) > 0.1:
                self.flags.append(f"Residual imbalance after weighting: |SMD| {abs(worst['smd_after']):.2f} for "
                                  f"{worst['covariate_label'] if 'covariate_label' in balance else worst['covariate']}.")
        # Follow-up (STROBE 14c): person-time and how follow-up ended, per group.
        groups_frame = self.data.get("groups")
        py = {AI if r.ai_ever else NO_AI: r for r in groups_frame.itertuples()} if groups_frame is not None else {}
        rows = [[[T("Person-years")]] + [[E(py[g].person_years, fmt(py[g].person_years, 0), f"person_years|{g}")]
                                         if g in py else [T("—")] for g in groups]
                + [[E(sum(r.person_years for r in py.values()), fmt(sum(r.person_years for r in py.values()), 0),
                      "person_years|all")]]]
        rows.append([[T("Follow-up, years, median [IQR]")]] + [[E(py[g].median_years, f"{fmt(py[g].median_years, 1)} "
                                                                   f"[{fmt(py[g].q1_years, 1)}–{fmt(py[g].q3_years, 1)}]",
                                                                   f"follow_up_median|{g}", guard=[self.n_group[g]])]
                                                                 if g in py else [T("—")] for g in groups] + [[T("")]])
        for reason in self.end_reasons:
            rows.append([[T(f"Ended by: {END_REASONS.get(reason, reason)}")]]
                        + [[C(self.ledger.get(("end", reason, g)))] for g in groups]
                        + [[C(self.ledger.get(("end", reason, "all")))]])
        self.table("table1", Table(
            "follow_up", "Follow-up and how it ended, by AI exposure during follow-up (STROBE 14c)",
            ["", NO_AI, AI, "Total"], rows, numeric_columns=(1, 2, 3)))

    def _level_label(self, variable: str, level: str) -> str:
        if variable == "e2_tier_at_index":
            return self.tiers.get(level, level)
        if variable == "scanner_manufacturer" and level == "none":
            return "none (no baseline scan)"
        return level

    # propensity-score overlap -----------------------------------------------------------------------
    def ps_overlap(self) -> None:
        section = self.sections["ps-overlap"]
        diagnostics = self.data.get("ps_diagnostics")
        bins = self.data.get("ps_bins")
        if diagnostics is None and bins is None:
            section.unavailable("Propensity-score overlap", "results.propensity_diagnostics")
            return
        bounds = _equipoise_bounds(self.protocol)
        section.p(
            "The propensity score is each man's probability of starting an AI given his baseline covariates; the "
            "preference score rescales it for how common AI use is, so 0.5 means no preference. Good overlap "
            f"(many men of both groups between {bounds[0]:g} and {bounds[1]:g}, 'equipoise') means the weighted "
            "comparison rests on comparable men.")
        if bins is not None:
            merged, counts = {}, {}
            for flag, g in GROUPS:
                part = bins[bins["ai_ever"] == flag]
                raw = [0] * 20
                for r in part.itertuples():
                    raw[int(r.bin)] = int(r.n)
                merged[g] = coarsen_bins(raw, self.threshold)
                counts[g] = [self.count(("ps_bin", g, lo, hi), n) for lo, hi, n in merged[g]]
                total = self.count(("ps_n", g), sum(raw))
                self.ledger.total(("ps_n", g), [c.key for c in counts[g]])
                if total.value == self.n_group[g].value:
                    self.ledger.equal(("ps_n", g), ("n", g))

            def make(merged=merged, counts=counts):
                frames = []
                for g in (AI, NO_AI):  # AI above the axis, no AI mirrored below
                    if not all(c.shown for c in counts[g]) or not counts[g]:
                        continue
                    n = sum(c.value for c in counts[g])
                    for (lo, hi, k) in merged[g]:
                        frames.append({"group_label": g, "left": lo / 20, "right": hi / 20,
                                       "density": k / (n * (hi - lo) / 20) if n else 0.0})
                return _figures().ps_overlap_bins_figure(pd.DataFrame(frames, columns=[
                    "group_label", "left", "right", "density"]), bounds,
                    "Preference score by AI exposure during follow-up")

            self.figure("ps-overlap", Figure(
                "ps_overlap", f"Preference-score distributions (AI during follow-up above the axis, no AI mirrored "
                f"below); dashed lines: equipoise bounds {bounds[0]:g}–{bounds[1]:g}. Adjacent bins are merged until "
                f"each holds at least {self.threshold} men, so no bar shows a small count.",
                "Mirrored histogram of preference scores by group", make))
            rows = []
            for g in merged:
                for (lo, hi, _), c in zip(merged[g], counts[g]):
                    rows.append([[T(g)], [T(f"{lo / 20:.2f}–{hi / 20:.2f}")], [C(c)]])
            table = Table("ps_overlap_bins", "Preference-score bins of the overlap plot", ["Group", "Preference score",
                                                                                           "Patients"], rows)
            self.tables.append(table)  # CSV only
        if diagnostics is not None:
            d = diagnostics.iloc[0]
            rows = []

            def judged(name, value, text, passed=None, threshold=None):
                verdict = "" if passed is None or pd.isna(passed) else ("passed" if passed else "FAILED")
                rows.append([[T(name)], [E(value, text, f"ps|{name}")] if _finite(value) else [T(text)],
                             [T(threshold or "")], [T(verdict)]])

            judged("c-statistic", d.get("c_statistic"), fmt(d.get("c_statistic"), 3))
            judged("Equipoise (share with preference score in bounds)", d.get("equipoise"),
                   fmt(d.get("equipoise"), 3), d.get("equipoise_passed"), f"≥ {fmt(d.get('equipoise_threshold'), 2)}")
            judged("Max |SMD| before weighting", d.get("max_abs_smd_before"), fmt(d.get("max_abs_smd_before"), 3))
            judged("Max |SMD| after weighting", d.get("max_abs_smd_after"), fmt(d.get("max_abs_smd_after"), 3),
                   d.get("balance_passed"), f"≤ {fmt(d.get('smd_threshold'), 2)}")
            judged("Effective sample size, AI", d.get("ess_treated"), fmt(d.get("ess_treated"), 1))
            judged("Effective sample size, no AI", d.get("ess_control"), fmt(d.get("ess_control"), 1))
            judged("Largest weight", d.get("max_weight"), fmt(d.get("max_weight"), 2))
            if _finite(d.get("weights_truncated")):
                c = self.count(("ps_truncated",), int(d.get("weights_truncated")))
                rows.append([[T("Patients whose weight was truncated")], [C(c)],
                             [T(str(d.get("truncation") or ""))], [T("")]])
            rows.append([[T("Fit")], [T(str(d.get("fit_method") or ""))], [T("")], [T("")]])
            self.table("ps-overlap", Table("ps_diagnostics", "Propensity-model diagnostics (results.propensity_"
                                           "diagnostics)", ["Diagnostic", "Value", "Threshold", "Verdict"], rows,
                                           numeric_columns=(1,)))
            for name, passed in (("equipoise", d.get("equipoise_passed")), ("balance after weighting",
                                                                            d.get("balance_passed"))):
                if passed is not None and not pd.isna(passed) and not passed:
                    self.flags.append(f"The propensity-score diagnostics failed on {name}.")

    # BMD trajectories -------------------------------------------------------------------------------
    def bmd_trajectories(self) -> None:
        section = self.sections["bmd-trajectories"]
        model = self.data.get("bmd_trajectory")
        if model is not None:
            frame = _trajectory_frame(model, self.tier_groups)
            if frame is not None:
                self.figure("bmd-trajectories", Figure(
                    "bmd_trajectories_model", "Model-predicted mean change in sBMD from baseline (%) by year, per "
                    "skeletal site, by exposure group and estradiol tier (results.bmd_trajectory), with 95% CIs.",
                    "Model-predicted BMD trajectories per site", lambda frame=frame: _figures().bmd_trajectory_figure(
                        frame, "Model-predicted BMD change from baseline")))
                # estimates only: the model's patients and scans are in the BMD-change table
                self.tables.append(Table("bmd_trajectories_model", "Model-predicted BMD trajectories", [], [],
                                         csv=lambda frame=frame: frame.copy(), count_columns=[]))
            else:
                section.note("results.bmd_trajectory has rows for this cutoff but not the expected columns.")
        else:
            section.unavailable("Model-predicted BMD trajectories", "results.bmd_trajectory")
        observed = self.data.get("bmd_observed")
        if observed is None:
            section.unavailable("Observed BMD change", "analysis.bmd_long")
            return
        group_labels = {"ai_ever": {"true": AI, "false": NO_AI}, "e2_tier": self.tier_groups}
        panels = {"ai_ever": "By AI exposure", "e2_tier": "By E2 tier at index"}
        points, tidy = [], []
        for r in observed.itertuples():
            label = group_labels[r.grouping].get(r.grp, r.grp)
            c = self.count(("bmd_observed_n", r.grouping, r.skeletal_site, label, int(r.year)), int(r.n))
            ok = r.n >= self.threshold and _finite(r.mean)
            se = r.sd / math.sqrt(r.n) if ok and _finite(r.sd) else 0.0
            tidy.append({"grouping": panels[r.grouping], "skeletal_site": r.skeletal_site, "group": label,
                         "years_since_baseline": int(r.year), "n_patients": c,
                         "mean_pct_change": r.mean if ok else None, "ci_low": r.mean - 1.96 * se if ok else None,
                         "ci_high": r.mean + 1.96 * se if ok else None})
            if ok:
                points.append({"panel": panels[r.grouping], "skeletal_site": r.skeletal_site, "group_label": label,
                               "year": int(r.year), "mean": r.mean, "ci_low": r.mean - 1.96 * se,
                               "ci_high": r.mean + 1.96 * se})
        rank = {label: i for i, label in enumerate([NO_AI, AI] + [self.tier_groups[t] for t in TIERS])}
        points.sort(key=lambda p: (p["panel"] != panels["ai_ever"], rank.get(p["group_label"], 99), p["group_label"]))
        frame = pd.DataFrame(points, columns=["panel", "skeletal_site", "group_label", "year", "mean", "ci_low",
                                              "ci_high"])
        section.p("Observed mean change in standardized BMD from each man's baseline scan, by whole years since "
                  "that scan. Descriptive: men with more scans weigh more in later years, and the groups are not "
                  f"adjusted; points based on fewer than {self.threshold} men are left out.")
        self.figure("bmd-trajectories", Figure(
            "bmd_trajectories_observed", "Observed mean change in sBMD from baseline (%, 95% CI) per skeletal site, by "
            "AI exposure during follow-up (top) and by estradiol tier at index (bottom).",
            "Observed BMD trajectories per site by group",
            lambda frame=frame: _figures().bmd_trajectory_figure(frame, "Observed BMD change from baseline")))
        self.tables.append(Table("bmd_trajectories_observed", "Observed BMD change", [], [],
                                 csv=lambda tidy=tidy: tidy_frame(tidy, list(tidy[0]) if tidy else []),
                                 count_columns=["n_patients"]))

    # BMD forest -------------------------------------------------------------------------------------
    def bmd_forest(self) -> None:
        section = self.sections["bmd-forest"]
        change = self.data.get("bmd_change")
        if change is None:
            section.unavailable("BMD change estimates", "results.bmd_change")
            return
        primary = _bmd_primary(change)
        section.p("Mixed-effects models of log sBMD per skeletal site: the estimate is the difference in the annual "
                  "rate of change (% per year) while exposed (current AI, or time spent in an estradiol tier versus "
                  f"{self.tiers['20_40'].replace(' (reference)', '')}), with its 95% CI.")
        rows, forest = self.bmd_rows(primary, "bmd")
        self.table("bmd-forest", Table(
            "bmd_change", "BMD change estimates (results.bmd_change)",
            ["Site", "Term", "% per year (95% CI)", "p", "Patients", "Scans", "Note"], rows,
            numeric_columns=(2, 3, 4, 5)))
        if forest:
            frame = pd.DataFrame(forest)
            self.figure("bmd-forest", Figure(
                "bmd_forest", "Difference in annual sBMD change (% per year, 95% CI) per skeletal site; hollow "
                "markers: model did not converge.", "Forest plot of BMD change estimates",
                lambda frame=frame: _figures().estimate_forest_figure(
                    frame, "Difference in sBMD change (% per year, 95% CI)", "BMD change by exposure", 0.0)))

    def bmd_rows(self, frame: pd.DataFrame, prefix: str):
        """Rows of the BMD-change table and of its forest plot. Patients and scans are per model (site and
        analysis), registered once; patients in a model plus those it excluded are the BMD analysis."""
        rows, forest = [], []
        in_bmd = None
        if self.attrition_steps is not None and self.attrition_steps[3] is not None:
            steps = self.attrition_steps[0]
            if self.attrition_steps[3] < len(steps) - 1:
                in_bmd = ("attrition_remaining", steps[-1].step)
        for r in frame.itertuples():
            site = SITES.get(r.skeletal_site, r.skeletal_site)
            analysis = str(getattr(r, "analysis", "primary"))
            label = term_label(r.term, self.protocol)
            key = f"{prefix}|{r.skeletal_site}|{r.term}"
            model = (prefix, r.skeletal_site, analysis)
            n_patients = self.count(model + ("n_patients",), int(r.n_patients)) \
                if _finite(getattr(r, "n_patients", None)) else None
            n_scans = self.count(model + ("n_scans",), int(r.n_scans)) if _finite(getattr(r, "n_scans", None)) else None
            excluded = getattr(r, "n_patients_excluded", None)
            if n_patients and _finite(excluded) and in_bmd is not None and model + ("excluded",) not in self.ledger:
                c = self.count(model + ("excluded",), int(excluded))
                if n_patients.value + c.value == self.ledger.get(in_bmd).value:
                    self.ledger.total(in_bmd, [n_patients.key, c.key])
            converged = bool(getattr(r, "converged", True))
            note = str(getattr(r, "note", "") or "")
            if note in ("None", "nan"):
                note = ""
            rows.append([[T(site)], [T(label)],
                         [E(r.estimate_pct_per_year, fmt_ci(r.estimate_pct_per_year, r.ci_low, r.ci_high),
                            f"{key}|estimate_pct_per_year")],
                         [T(fmt_p(getattr(r, "p_value", None)))],
                         [C(n_patients)] if n_patients else [T("—")], [C(n_scans)] if n_scans else [T("—")],
                         [T(("" if converged else "NOT CONVERGED. ") + note)]])
            if _finite(r.estimate_pct_per_year):
                forest.append({"label": f"{site}: {_short_term(r.term, self.protocol)}",
                               "estimate": r.estimate_pct_per_year, "ci_low": r.ci_low, "ci_high": r.ci_high,
                               "flagged": not converged,
                               "color": _term_color(r.term, self.tier_groups)})
            if not converged:
                self.flags.append(f"The BMD model for {site} ({label}) did not converge.")
        return rows, forest

    # survival curves --------------------------------------------------------------------------------
    def survival(self) -> None:
        section = self.sections["survival"]
        km, km_e2, cif = self.data.get("km"), self.data.get("km_e2"), self.data.get("cif")
        if km is None and cif is None:
            section.unavailable("Kaplan-Meier and cumulative-incidence curves", "results.km_curves")
            return
        section.p("Kaplan-Meier estimates of remaining free of fragility fracture and Aalen-Johansen cumulative "
                  "incidence of fracture with death as a competing risk. Grouping by AI use during follow-up or by "
                  "estradiol tier at index is descriptive, not adjusted for confounding (the adjusted comparison is in "
                  f"the Cox models). Curves stop where fewer than {self.threshold} men remain at risk.")
        horizon = 0
        for frame in (km, km_e2, cif):
            if frame is not None:
                horizon = max(horizon, int(min(frame["time_years"].max(), AT_RISK_MAX_YEARS)))
        self.at_risk_years = list(range(0, horizon + 1))
        for frame, kind, title, ylabel, value in (
            (km, "km", "Kaplan-Meier: free of fragility fracture", "Free of fragility fracture (probability)",
             "survival"),
            (km_e2, "km", "Kaplan-Meier by estradiol tier at index", "Free of fragility fracture (probability)",
             "survival"),
            (cif, "cif", "Cumulative incidence of fragility fracture (death competing)",
             "Cumulative incidence of fragility fracture (proportion)", "cif"),
        ):
            if frame is None:
                continue
            for curve, part in frame.groupby("curve", sort=False):
                self.curve_block(part, curve, kind, title, ylabel, value)
        if km is None:
            section.unavailable("Kaplan-Meier curves", "results.km_curves")
        if cif is None:
            section.unavailable("Cumulative-incidence curves", "results.cumulative_incidence")

    def curve_block(self, frame: pd.DataFrame, curve: str, kind: str, title: str, ylabel: str, value: str) -> None:
        years = self.at_risk_years
        grouping = "ai_ever" if curve == "ai_ever" else "e2_tier"
        tier_of = {v: k for k, v in self.tier_groups.items()}
        at_risk_rows, estimates, cut = [], [], []
        rank = {label: i for i, label in enumerate([NO_AI, AI] + [self.tier_groups[t] for t in TIERS])}
        labels = sorted(dict.fromkeys(frame["group_label"]), key=lambda g: (rank.get(g, 99), g))
        for label in labels:
            group = frame[frame["group_label"] == label]
            group = group.sort_values("time_years")
            times = group["time_years"].to_numpy(dtype=float)
            n_at = group["at_risk"].to_numpy()
            row = {"group_label": label}
            counts = []
            for year in years:
                pos = int(np.searchsorted(times, float(year), side="left"))
                n = int(n_at[pos]) if pos < len(times) else 0
                key = ("at_risk", grouping, label, year)
                if key in self.ledger and self.ledger.get(key).value != n:
                    key = ("at_risk", kind, curve, label, year)
                c = self.count(key, n)
                counts.append(c)
                row[year] = c
            at_risk_rows.append(row)
            # Year 0 at risk is the group size.
            first = counts[0]
            if grouping == "ai_ever" and label in self.n_group and first.value == self.n_group[label].value:
                self.ledger.equal(first.key, ("n", label))
            elif grouping == "e2_tier" and label in tier_of:
                parts = [self.table1_counts.get(("e2_tier_at_index", tier_of[label], g)) for _, g in GROUPS]
                if all(parts) and sum(p.value for p in parts) == first.value:
                    self.ledger.total(first.key, [p.key for p in parts])
            cut.append(group[group["at_risk"] >= self.threshold])
            for year in (1, 3, 5):
                if year > years[-1]:
                    continue
                pos = int(np.searchsorted(times, float(year), side="right")) - 1
                r = group.iloc[max(pos, 0)]
                guard = counts[years.index(year)]
                estimates.append((label, year, r[value], r["ci_low"], r["ci_high"], guard))
        shown_curves = pd.concat(cut, ignore_index=True) if cut else frame.iloc[:0]
        name = f"{kind}_{curve}"
        at_risk_frame = at_risk_rows

        def make(shown=shown_curves, rows=at_risk_frame):
            table = pd.DataFrame([{**{"group_label": r["group_label"]}, **{y: r[y].text for y in years}}
                                  for r in rows])
            return _figures().curves_at_risk_figure(shown, table, ylabel, title, value=value)

        self.figure("survival", Figure(
            name, f"{title}, by {'AI exposure during follow-up' if grouping == 'ai_ever' else 'estradiol tier at index'}"
            ", with 95% confidence bands and numbers at risk at whole years.", f"{title} with numbers at risk", make))
        self.table("survival", Table(
            f"at_risk_{name}", f"Numbers at risk — {title}",
            ["Group"] + [f"Year {y}" for y in years],
            [[[T(r["group_label"])]] + [[C(r[y])] for y in years] for r in at_risk_rows],
            numeric_columns=tuple(range(1, len(years) + 1))))
        what = "Free of fracture" if value == "survival" else "Cumulative incidence"
        rows = [[[T(label)], [T(f"{year}")],
                 [E(v, fmt_ci(100 * v, 100 * lo, 100 * hi, 1) + " %", f"{name}|{label}|{year}", guard=[guard])]]
                for label, year, v, lo, hi, guard in estimates]
        if rows:
            self.table("survival", Table(f"estimates_{name}", f"{what} at 1, 3 and 5 years, % (95% CI)",
                                         ["Group", "Years", f"{what}, % (95% CI)"], rows, numeric_columns=(1, 2)))

    # incidence rates --------------------------------------------------------------------------------
    def incidence(self) -> None:
        section = self.sections["incidence"]
        rates = self.data.get("rates")
        if rates is None:
            section.unavailable("Incidence rates", "results.incidence_rates")
            return
        section.p("Crude incidence of first fragility fracture per 1,000 person-years (exact Poisson 95% CI), with "
                  "person-time and fractures attributed to the exposure at the time (current AI use, current "
                  "estradiol tier, current glucocorticoid use).")
        self.rate_counts = {}
        rows, classes = [], []
        exposure_names = {"overall": "All follow-up", "ai_current": "Aromatase inhibitor",
                          "e2_tier": "Estradiol tier (all assays)", "e2_tier_lcms": "Estradiol tier (LC-MS/MS only)",
                          "glucocorticoid_current": "Systemic glucocorticoid"}
        for exposure, part in rates.groupby("exposure", sort=False):
            rows.append([[B(exposure_names.get(exposure, exposure))], [T("")], [T("")], [T("")]])
            classes.append("group")
            keys = []
            for r in part.itertuples():
                c = self.count(("rate_events", exposure, str(r.level)), int(r.events))
                self.rate_counts[(exposure, str(r.level))] = (c, r)
                keys.append(c.key)
                rows.append([[T("   " + r.group_label)], [C(c)],
                             [E(r.person_years, fmt(r.person_years, 0), f"rate|{exposure}|{r.level}|person_years")],
                             [E(r.rate_per_1000py, fmt_ci(r.rate_per_1000py, r.ci_low, r.ci_high, 1),
                                f"rate|{exposure}|{r.level}|rate_per_1000py", guard=[c])]])
                classes.append("sub")
            overall = self.rate_counts.get(("overall", "all"))
            if exposure != "overall" and overall and sum(self.ledger.get(k).value for k in keys) == overall[0].value:
                self.ledger.total(overall[0].key, keys)
        overall = self.rate_counts.get(("overall", "all"))
        if overall and overall[0].value == self.fractures().value:
            self.ledger.equal(overall[0].key, self.fractures().key)
        self.table("incidence", Table(
            "incidence_rates", "Fragility fractures per 1,000 person-years by current exposure",
            ["Exposure", "Fractures", "Person-years", "Rate per 1,000 PY (95% CI)"], rows, row_classes=classes,
            notes=[f"A rate is not shown when its count of fractures is suppressed (fewer than {self.threshold}, or "
                   "hidden so that a small count cannot be worked out): rate × person-years would reveal it."],
            numeric_columns=(1, 2, 3)))

    # Cox models ---------------------------------------------------------------------------------------
    def cox_rows(self, frame: pd.DataFrame, prefix: str = "cox"):
        """Rows of the Cox table (a heading row per model with its patients and events, then one row per
        term), the tidy CSV rows and the forest-plot rows."""
        rows, classes, tidy, forest = [], [], [], []
        for model, part in frame.groupby("model", sort=False):
            first = part.iloc[0]
            n_patients = self.count((prefix, "n_patients", model), int(first.n_patients)) \
                if _finite(first.get("n_patients")) else None
            n_events = self.count((prefix, "n_events", model), int(first.n_events)) \
                if _finite(first.get("n_events")) else None
            excluded = self.count((prefix, "n_excluded", model), int(first.n_patients_excluded)) \
                if _finite(first.get("n_patients_excluded")) else None
            if n_patients and excluded and n_patients.value + excluded.value == self.n_all.value:
                self.ledger.total(("n", "all"), [n_patients.key, excluded.key])
            if n_events and first.get("outcome", "fracture") == "fracture" and n_events.value == self.fractures().value:
                self.ledger.equal(n_events.key, self.fractures().key)
            heading = [B(COX_MODELS.get(model, model))]
            if n_patients:
                heading += [T(" — patients "), C(n_patients)]
            if excluded and excluded.value:
                heading += [T(" (excluded for missing covariates: "), C(excluded), T(")")]
            if n_events:
                heading += [T(f", {'deaths' if first.get('outcome') == 'death' else 'fractures'} "), C(n_events)]
            rows.append([heading, [T("")], [T("")], [T("")], [T("")], [T("")]])
            classes.append("group")
            for r in part.itertuples():
                exposed = None
                if _finite(getattr(r, "n_events_exposed", None)) and n_events:
                    exposed = self.count((prefix, "n_events_exposed", model, r.term), int(r.n_events_exposed))
                    unexposed = self.count((prefix, "n_events_unexposed", model, r.term),
                                           n_events.value - exposed.value)
                    self.ledger.total(n_events.key, [exposed.key, unexposed.key])
                label = term_label(r.term, self.protocol, getattr(r, "term_label", None))
                notes = str(getattr(r, "diagnostics_notes", "") or "")
                passed = bool(getattr(r, "diagnostics_passed", True))
                key = f"{prefix}|{model}|{r.term}"
                hr = E(r.hazard_ratio, fmt_ci(r.hazard_ratio, r.ci_low, r.ci_high), f"{key}|hazard_ratio")
                rows.append([[T("   " + label)], [hr], [T(fmt_p(r.p_value))],
                             [T(fmt_p(getattr(r, "ph_p_value", None)))], [C(exposed)] if exposed else [T("—")],
                             [T("passed")] if passed else [B("FAILED"), T(f": {notes}" if notes else "")]])
                classes.append("sub")
                tidy.append({"model": model, "term": r.term, "term_label": label, "hazard_ratio": hr,
                             "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value,
                             "ph_p_value": getattr(r, "ph_p_value", None), "n_patients": n_patients or "",
                             "n_patients_excluded": excluded or "", "n_events": n_events or "",
                             "n_events_exposed": exposed or "", "diagnostics_passed": passed,
                             "diagnostics_notes": notes})
                forest.append({"model": model, "term": r.term,
                               "label": f"{_short_term(r.term, self.protocol)} ({COX_SHORT.get(model, model)})",
                               "estimate": r.hazard_ratio, "ci_low": r.ci_low, "ci_high": r.ci_high,
                               "flagged": not passed})
        return rows, classes, tidy, forest

    def cox(self) -> None:
        section = self.sections["cox"]
        cox = self.data.get("cox")
        if cox is None:
            section.unavailable("Cox models", "results.fracture_cox")
            return
        main = cox[cox["model"].isin(["time_varying_adjusted", "iptw_itt", "crude_itt", "death_cause_specific"])
                   | ~cox["model"].isin(list(COX_MODELS))]
        section.p(
            "Hazard ratios (HR, 95% CI) for a first fragility fracture. The primary model is a Cox model on "
            "counting-process intervals with time-varying current AI use, current estradiol tier (reference "
            f"{self.tiers['20_40'].replace(' (reference)', '')}) and glucocorticoid use, adjusted for age, BMI and "
            "baseline femoral-neck sBMD. Each result carries the diagnostics gate (events, minimum detectable "
            "relative risk, and for the AI comparison equipoise and covariate balance); PH test: scaled Schoenfeld "
            "residuals (a small p-value means the HR changes over follow-up).")
        rows, classes, tidy, forest = self.cox_rows(main)
        columns = ["model", "term", "term_label", "hazard_ratio", "ci_low", "ci_high", "p_value", "ph_p_value",
                   "n_patients", "n_patients_excluded", "n_events", "n_events_exposed", "diagnostics_passed",
                   "diagnostics_notes"]
        self.table("cox", Table(
            "fracture_cox", "Cox models of time to first fragility fracture (results.fracture_cox)",
            ["Model / term", "HR (95% CI)", "p", "PH test p", "Events while exposed", "Diagnostics"],
            rows, row_classes=classes, numeric_columns=(1, 2, 3, 4),
            csv=lambda tidy=tidy: tidy_frame(tidy, columns),
            count_columns=["n_patients", "n_patients_excluded", "n_events", "n_events_exposed"]))
        exposure_terms = [f for f in forest if f["model"] in ("time_varying_adjusted", "iptw_itt")
                          and (f["term"].startswith("ai_") or f["term"].startswith("e2_")
                               or f["term"] == "glucocorticoid_current")]
        if exposure_terms:
            frame = pd.DataFrame(exposure_terms)
            frame["color"] = [_term_color(t, self.tier_groups) for t in frame["term"]]
            self.figure("cox", Figure(
                "cox_forest", "Hazard ratios of first fragility fracture (95% CI, log scale) for the exposures of the "
                "primary and the intention-to-treat models; hollow markers: diagnostics gate failed.",
                "Forest plot of fracture hazard ratios", lambda frame=frame: _figures().estimate_forest_figure(
                    frame, "Hazard ratio (95% CI, log scale)", "Fracture hazard ratios", 1.0, log_scale=True)))
        failing = cox[~cox["diagnostics_passed"].astype(bool)] if "diagnostics_passed" in cox else cox.iloc[:0]
        for r in failing.itertuples():
            if r.term in ("ai_current", "ai_ever") and r.model in ("time_varying_adjusted", "iptw_itt"):
                self.flags.append(f"{COX_MODELS.get(r.model, r.model)}, {term_label(r.term, self.protocol)}: "
                                  f"diagnostics failed ({r.diagnostics_notes}).")

    # sensitivity analyses -------------------------------------------------------------------------------
    def sensitivity(self) -> None:
        section = self.sections["sensitivity"]
        cox = self.data.get("cox")
        if cox is None:
            section.unavailable("Fracture sensitivity analyses", "results.fracture_cox")
        else:
            section.h3("Fracture: as treated versus intention to treat")
            rows = []
            for model, term in (("time_varying_adjusted", "ai_current"), ("time_varying_adjusted_lcms", "ai_current"),
                                ("iptw_itt", "ai_ever"), ("crude_itt", "ai_ever")):
                r = cox[(cox["model"] == model) & (cox["term"] == term)]
                if r.empty:
                    rows.append([[T(COX_MODELS.get(model, model))], [T(term_label(term, self.protocol))],
                                 [T("not available for this cutoff")], [T("")]])
                    continue
                r = r.iloc[0]
                rows.append([[T(COX_MODELS.get(model, model))], [T(term_label(term, self.protocol))],
                             [E(r.hazard_ratio, fmt_ci(r.hazard_ratio, r.ci_low, r.ci_high),
                                f"sens|{model}|{term}|hazard_ratio")],
                             [T("passed" if r.get("diagnostics_passed", True) else "FAILED")]])
            self.table("sensitivity", Table(
                "sensitivity_ai", "Aromatase inhibitor and fracture across analyses", ["Analysis", "Exposure",
                                                                                      "HR (95% CI)", "Diagnostics"],
                rows, numeric_columns=(2,),
                notes=["As treated compares time on and off an AI (adjusted by regression); intention to treat "
                       "compares men who started an AI with men who did not from the start, weighted by the inverse "
                       "of the propensity of starting (IPTW) or unweighted (crude)."]))
            section.h3("Fracture: estradiol tiers from all assays versus LC-MS/MS only")
            rows = []
            for term in ("e2_lt10", "e2_10_20", "e2_ge40", "e2_unknown"):
                cells = [[T(term_label(term, self.protocol))]]
                found = False
                for model in ("time_varying_adjusted", "time_varying_adjusted_lcms"):
                    r = cox[(cox["model"] == model) & (cox["term"] == term)]
                    if r.empty:
                        cells.append([T("—")])
                        continue
                    found = True
                    r = r.iloc[0]
                    cells.append([E(r.hazard_ratio, fmt_ci(r.hazard_ratio, r.ci_low, r.ci_high),
                                    f"sens|{model}|{term}|hazard_ratio")])
                if found:
                    rows.append(cells)
            if rows:
                self.table("sensitivity", Table(
                    "sensitivity_lcms", "Estradiol tier and fracture: all assays vs LC-MS/MS only, HR (95% CI)",
                    ["Estradiol tier", "All assays (primary)", "LC-MS/MS only"], rows, numeric_columns=(1, 2),
                    notes=["Immunoassays are unreliable below about 20 pg/mL; LC-MS/MS is the reference method."]))
        change = self.data.get("bmd_change")
        section.h3("BMD: sensitivity analyses")
        if change is None:
            section.unavailable("BMD sensitivity analyses", "results.bmd_change")
        else:
            column = next((c for c in ("analysis", "model", "sensitivity") if c in change.columns), None)
            if column is None or change[column].nunique() < 2:
                section.note("results.bmd_change holds one analysis for this cutoff: no BMD sensitivity analysis to "
                             "compare.")
            else:
                analyses = list(dict.fromkeys(change[column].astype(str)))
                names = {"primary": "Primary (all assays)", "lcms_only": "LC-MS/MS only", "crude": "Crude"}
                rows = []
                for (site, term), part in change.groupby(["skeletal_site", "term"], sort=False):
                    cells = [[T(SITES.get(site, site))], [T(term_label(term, self.protocol))]]
                    for analysis in analyses:
                        r = part[part[column].astype(str) == analysis]
                        if r.empty:
                            cells.append([T("—")])
                            continue
                        r = r.iloc[0]
                        cells.append([E(r.estimate_pct_per_year, fmt_ci(r.estimate_pct_per_year, r.ci_low, r.ci_high),
                                        f"sens_bmd|{analysis}|{site}|{term}")])
                    rows.append(cells)
                self.table("sensitivity", Table(
                    "sensitivity_bmd", "BMD change across analyses, % per year (95% CI)",
                    ["Site", "Term"] + [names.get(a, a) for a in analyses], rows,
                    numeric_columns=tuple(range(2, 2 + len(analyses))),
                    notes=["Crude: time and years on an AI only, no covariates: the difference from the primary "
                           "analysis shows the confounding the adjustment removes."] if "crude" in analyses else []))

    # change since last quarter ------------------------------------------------------------------------
    def changes(self) -> None:
        section = self.sections["changes"]
        previous = self.content.previous_cutoff
        label = quarter_name(previous)
        groups = self.data.get("previous_groups")
        if groups is None:
            section.p(f"No cohort for the previous quarter ({label}, data cutoff {previous}) in the warehouse: "
                      "nothing to compare.")
            section.unavailable("Previous quarter's results", "cohort.members")
            return
        section.p(f"Compared with the previous quarter ({label}, data cutoff {previous}). Counts are suppressed on "
                  "their own; estimates show the change (current − previous).")
        before = self.data.get("previous_deliveries")
        now = self.data.get("deliveries")
        if before is not None and now is not None:
            new = sorted(set(now["delivery_id"]) - set(before["delivery_id"]))
            section.p("Deliveries new since then: " + (", ".join(new) if new else "none") + ".")
        prev_n = {AI if r.ai_ever else NO_AI: int(r.n) for r in groups.itertuples()}
        prev_py = sum(float(r.person_years) for r in groups.itertuples())
        reasons = self.data.get("previous_end_reasons")
        prev_fractures = int(reasons[reasons["reason"] == "fracture"]["n"].sum()) if reasons is not None else 0
        rows = []

        def count_row(name, key, before_value, current: Count):
            c = self.count(("previous",) + key, before_value)
            rows.append([[T(name)], [C(c)], [C(current)], [T("")]])

        count_row("Men in the cohort", ("n", "all"), sum(prev_n.values()), self.n_all)
        count_row("Men with an AI during follow-up", ("n", AI), prev_n.get(AI, 0), self.n_group[AI])
        count_row("First fragility fractures", ("fractures",), prev_fractures, self.fractures())
        current_py = sum(float(r.person_years) for r in self.data["groups"].itertuples()) \
            if self.data.get("groups") is not None else float("nan")
        rows.append([[T("Person-years")], [T(fmt(prev_py, 0))], [T(fmt(current_py, 0))],
                     [T(fmt_signed(current_py - prev_py, 0))]])

        def estimate_rows(now_frame, before_frame, keys, value, low, high, labeller, digits=2, guards=None):
            for match in keys:
                a, b = _pick(now_frame, match), _pick(before_frame, match)
                if a is None and b is None:
                    continue
                now_guard, before_guard = guards(match, a, b) if guards else ((), ())
                rows.append([
                    [T(labeller(match))],
                    [E(b[value], fmt_ci(b[value], b[low], b[high], digits), "previous|" + "|".join(
                        map(str, match.values())), guard=before_guard)] if b is not None else [T("—")],
                    [E(a[value], fmt_ci(a[value], a[low], a[high], digits), "change|" + "|".join(
                        map(str, match.values())), guard=now_guard)] if a is not None else [T("—")],
                    [E(a[value] - b[value], fmt_signed(a[value] - b[value], digits), "delta|" + "|".join(
                        map(str, match.values())), guard=tuple(now_guard) + tuple(before_guard))]
                    if a is not None and b is not None else [T("")]])

        cox_keys = [{"model": m, "term": t} for m, t in (("time_varying_adjusted", "ai_current"),
                                                           ("iptw_itt", "ai_ever"),
                                                           ("time_varying_adjusted", "e2_lt10"),
                                                           ("time_varying_adjusted", "e2_10_20"))]
        estimate_rows(self.data.get("cox"), self.data.get("previous_cox"), cox_keys, "hazard_ratio", "ci_low",
                      "ci_high", lambda m: f"HR: {term_label(m['term'], self.protocol)} ({m['model']})")
        now_bmd, before_bmd = self.data.get("bmd_change"), self.data.get("previous_bmd_change")
        now_bmd = _bmd_primary(now_bmd) if now_bmd is not None else None
        before_bmd = _bmd_primary(before_bmd) if before_bmd is not None else None
        bmd_keys = []
        for frame in (now_bmd, before_bmd):
            if frame is not None:
                for r in frame.itertuples():
                    if {"skeletal_site": r.skeletal_site, "term": r.term} not in bmd_keys:
                        bmd_keys.append({"skeletal_site": r.skeletal_site, "term": r.term})
        estimate_rows(now_bmd, before_bmd, bmd_keys, "estimate_pct_per_year", "ci_low", "ci_high",
                      lambda m: f"BMD % per year: {SITES.get(m['skeletal_site'], m['skeletal_site'])}, "
                                f"{term_label(m['term'], self.protocol)}")

        def rate_guards(match, now, before):
            # A rate reveals its count of fractures: shown only while that count is.
            now_guard = ()
            if now is not None:
                known = self.rate_counts.get((match["exposure"], match["level"]))
                now_guard = (known[0],) if known else (self.count(("rate_events",) + tuple(match.values()),
                                                                  int(now["events"])),)
            before_guard = ()
            if before is not None:
                before_guard = (self.count(("previous", "rate_events") + tuple(match.values()), int(before["events"])),)
            return now_guard, before_guard

        rate_keys = [{"exposure": e, "level": lv} for e, lv in (("overall", "all"), ("ai_current", "true"),
                                                                 ("ai_current", "false"))]
        estimate_rows(self.data.get("rates"), self.data.get("previous_rates"), rate_keys, "rate_per_1000py", "ci_low",
                      "ci_high", lambda m: f"Fractures per 1,000 PY: "
                                           f"{ {'overall': 'all follow-up', 'ai_current': 'current AI'}.get(m['exposure'], m['exposure'])}"
                                           f"{'' if m['level'] == 'all' else ' = ' + ('yes' if m['level'] == 'true' else 'no' if m['level'] == 'false' else m['level'])}",
                      digits=1, guards=rate_guards)
        self.table("changes", Table(
            "change_since_last_quarter", f"Key numbers, {label} → {self.content.quarter}",
            ["", label, self.content.quarter, "Change"], rows, numeric_columns=(1, 2, 3)))

    # summary ------------------------------------------------------------------------------------------
    def summary(self) -> None:
        section = self.sections["summary"]
        groups = self.data.get("groups")
        py = float(groups["person_years"].sum()) if groups is not None else 0.0
        section.p(
            "The cohort holds ", C(self.n_all, metric="cohort_size"),
            " men who started testosterone therapy, followed for ",
            E(py, f"{py:,.0f}", "person_years|all"), " person-years; ", C(self.n_group[AI], metric="ai_ever"),
            " received an aromatase inhibitor during follow-up and ", C(self.fractures(), metric="fractures"),
            " had a first fragility fracture.")
        findings = []
        cox = self.data.get("cox")

        def hr_sentence(model, term, lead):
            if cox is None:
                return None
            r = _pick(cox, {"model": model, "term": term})
            if r is None:
                return None
            passed = bool(r.get("diagnostics_passed", True))
            return [B(lead), T(f" {_hr_words(r['hazard_ratio'], r['ci_low'], r['ci_high'])}: hazard ratio "),
                    E(r["hazard_ratio"], fmt(r["hazard_ratio"]), f"summary|{model}|{term}|hazard_ratio"),
                    T(" (95% CI "), E(r["ci_low"], fmt(r["ci_low"]), f"summary|{model}|{term}|ci_low"), T("–"),
                    E(r["ci_high"], fmt(r["ci_high"]), f"summary|{model}|{term}|ci_high"), T(")."),
                    T(" Diagnostics passed." if passed else " Diagnostics FAILED: read with caution.")]

        lo = self.tiers["lt10"].replace(" pg/mL", "")
        ref = self.tiers["20_40"].replace(" (reference)", "")
        for item in (
            hr_sentence("time_varying_adjusted", "ai_current", "Fracture while taking an AI (primary, as treated):"),
            hr_sentence("iptw_itt", "ai_ever", "Fracture after starting an AI (intention to treat, IPTW):"),
            hr_sentence("time_varying_adjusted", "e2_lt10", f"Fracture with estradiol {lo} pg/mL vs {ref}:"),
        ):
            if item:
                findings.append(item)
        if cox is None:
            findings.append([B("Fracture hazard ratios:"), T(" not available for this cutoff (results.fracture_cox "
                                                              "has no rows for it).")])
        change = self.data.get("bmd_change")
        if change is not None:
            primary = _bmd_primary(change)
            for r in primary[primary["term"] == "ai_current"].itertuples():
                site = SITES.get(r.skeletal_site, r.skeletal_site)
                findings.append([B(f"{site} BMD during AI use:"),
                                 T(f" {_bmd_words(r.estimate_pct_per_year, r.ci_low, r.ci_high)}: "),
                                 E(r.estimate_pct_per_year, fmt_signed(r.estimate_pct_per_year),
                                   f"summary|bmd|{r.skeletal_site}|ai_current|estimate_pct_per_year"),
                                 T(f" % per year (95% CI {fmt(r.ci_low)} to {fmt(r.ci_high)}) compared with time "
                                   "off an AI.")])
        else:
            findings.append([B("BMD change:"), T(" model estimates not available for this cutoff (results.bmd_change "
                                                 "has no rows for it).")])
        rates = getattr(self, "rate_counts", {})
        on, off = rates.get(("ai_current", "true")), rates.get(("ai_current", "false"))
        if on and off:
            withheld = "not shown (its count of fractures is suppressed)"
            findings.append([B("Crude fracture incidence per 1,000 person-years (unadjusted):"), T(" on an AI "),
                             E(on[1].rate_per_1000py, fmt_ci(on[1].rate_per_1000py, on[1].ci_low, on[1].ci_high, 1),
                               "summary|rate|ai_current|true", guard=[on[0]], hidden_text=withheld),
                             T("; off an AI "),
                             E(off[1].rate_per_1000py, fmt_ci(off[1].rate_per_1000py, off[1].ci_low, off[1].ci_high, 1),
                               "summary|rate|ai_current|false", guard=[off[0]], hidden_text=withheld), T(".")])
        history = self.data.get("delivery_history")
        if history is not None:
            in_use = history[history["in_use"]]
            findings.append([B("Data:"), T(f" {len(in_use)} deliver{'y' if len(in_use) == 1 else 'ies'} in use, all "
                                           "passed their blocking data-quality checks.")])
        if self.flags:
            findings.append([B("Diagnostics:"), T(f" {len(self.flags)} flag{'s' if len(self.flags) > 1 else ''} "
                                                  "raised (listed under Limitations); results that failed the "
                                                  "diagnostics gate are marked FAILED.")])
        section.bullets(findings)
        section.note(f"Counts from 1 to {self.threshold - 1} are shown as <{self.threshold}; a count marked "
                     "'hidden' is withheld so that a small count cannot be worked out from the totals.")

    # limitations --------------------------------------------------------------------------------------
    def limitations(self) -> None:
        section = self.sections["limitations"]
        items = [
            ["Observational data: confounding by indication (why men were given an AI) can remain after adjustment "
             "and weighting for measured covariates; unmeasured confounders (frailty, falls, smoking, alcohol) are "
             "not in the deliveries."],
            ["Exposure is inferred from dispensings and prescriptions: whether the drug was taken is unknown, and a "
             "grace period bridges gaps."],
            ["Estradiol is measured when clinicians order it; immunoassays are unreliable below about 20 pg/mL, "
             "where the tiers matter most (see the LC-MS/MS-only sensitivity analysis)."],
            ["Fractures come from diagnosis codes (no chart review); vertebral fractures are under-ascertained."],
            ["BMD is only measured in men who had scans, at intervals chosen by their clinicians; sBMD equations do "
             "not exist for Norland scanners or the radius."],
            ["Dates are shifted per patient for de-identification: calendar dates are not exact, intervals are."],
            [f"Counts below {self.threshold} are suppressed and a few more hidden to protect them; comparing reports "
             "of successive quarters could still narrow down small changes."],
        ]
        assays = self.data.get("e2_assays")
        if assays is not None:
            by = {bool(r.lcms_only): int(r.n) for r in assays.itertuples()}
            if by.get(False):
                share = 100 * by.get(True, 0) / by[False]
                items.append([f"About {share:.0f}% of the estradiol measurement days in the cohort have an LC-MS/MS "
                              "result."])
        missing = [what for section in self.sections.values() for what in section.missing]
        if missing:
            items.append(["Not available for this cutoff: " + "; ".join(missing) + "."])
        for flag in self.flags:
            items.append([flag])
        section.bullets(items)

    # provenance ---------------------------------------------------------------------------------------
    def provenance(self) -> None:
        section = self.sections["provenance"]
        deliveries = self.data.get("deliveries")
        if deliveries is not None:
            rows = [[[T(r.delivery_id)], [T(r.source_site)], [T(str(r.data_cutoff))], [Part(r.manifest_sha256 or "",
                                                                                            kind="code")]]
                    for r in deliveries.itertuples()]
            self.table("provenance", Table("provenance_deliveries", "Deliveries and manifest checksums (SHA-256)",
                                           ["Delivery", "Site", "Data cutoff", "Manifest SHA-256"], rows))
            rows = []
            for r in deliveries.itertuples():
                files = json.loads(r.files) if r.files else {}
                for name, entry in sorted(files.items()):
                    rows.append([[T(r.delivery_id)], [T(name)], [C(self.file_rows[(r.delivery_id, name)])],
                                 [Part(entry.get("sha256", ""), kind="code")]])
            self.table("provenance", Table("provenance_files", "Delivered files (rows and SHA-256 from the manifest, "
                                           "verified at ingest)", ["Delivery", "File", "Records", "SHA-256"], rows,
                                           numeric_columns=(2,)))
        else:
            section.unavailable("Deliveries", "meta.deliveries")
        self.sections["provenance"].blocks.append(Block("provenance"))


def _figures():
    from cohort import figures

    return figures


def _pick(frame: pd.DataFrame | None, match: dict) -> pd.Series | None:
    if frame is None:
        return None
    mask = np.ones(len(frame), dtype=bool)
    for column, value in match.items():
        if column not in frame:
            return None
        mask &= frame[column].astype(str).to_numpy() == str(value)
    return frame[mask].iloc[0] if mask.any() else None


def _term_color(term: str, tier_groups: dict[str, str]) -> str:
    """A model term drawn in the color of the group it stands for (current AI, AI initiation, a tier)."""
    label = {"ai_current": "Current AI", "ai_ever": AI}.get(term) or (
        tier_groups.get(term[3:], "") if term.startswith("e2_") else "")
    return _figures().report_color(label, "#333333")


def _short_term(term: str, protocol: Protocol) -> str:
    if term.startswith("e2_"):
        return "E2 " + tier_labels(protocol).get(term[3:], term[3:]).replace(" (reference)", "").replace(
            " (no result in the lookback)", "")
    return {"ai_current": "Current AI", "ai_ever": "AI initiated", "glucocorticoid_current": "Glucocorticoid"}.get(
        term, TERM_LABELS.get(term, term))


def _hr_words(hr, low, high) -> str:
    if not _finite(hr):
        return "not estimable"
    if _finite(low) and low > 1:
        return "higher risk"
    if _finite(high) and high < 1:
        return "lower risk"
    return "no clear difference (the interval includes 1)"


def _bmd_words(estimate, low, high) -> str:
    if not _finite(estimate):
        return "not estimable"
    if _finite(high) and high < 0:
        return "faster loss"
    if _finite(low) and low > 0:
        return "slower loss or gain"
    return "no clear difference (the interval includes 0)"


def _bmd_primary(frame: pd.DataFrame) -> pd.DataFrame:
    """The primary analysis rows of results.bmd_change (all rows when it holds one analysis)."""
    for column in ("analysis", "model", "sensitivity"):
        if column in frame.columns and frame[column].nunique() > 1:
            values = list(dict.fromkeys(frame[column]))
            primary = next((v for v in values if str(v) in ("primary", "all_assays", "main", "mixed_model")), values[0])
            return frame[frame[column] == primary]
    return frame


def _trajectory_frame(model: pd.DataFrame, tier_groups: dict[str, str]) -> pd.DataFrame | None:
    """results.bmd_trajectory as the trajectory figure's frame (panel, skeletal_site, group_label, year,
    mean, ci_low, ci_high), tolerant of the column names the models stage chooses."""
    if "analysis" in model.columns and model["analysis"].nunique() > 1:
        model = model[model["analysis"] == ("primary" if (model["analysis"] == "primary").any()
                                            else model["analysis"].iloc[0])]
    columns = set(model.columns)
    year = next((c for c in ("year", "years", "years_since_baseline", "time_years") if c in columns), None)
    mean = next((c for c in ("mean_pct_change", "predicted_pct_change", "pct_change", "estimate", "mean")
                 if c in columns), None)
    group = next((c for c in ("group_label", "exposure_group", "group") if c in columns), None)
    if not (year and mean and group and "skeletal_site" in columns):
        return None
    frame = pd.DataFrame({
        "skeletal_site": model["skeletal_site"], "group_label": model[group].astype(str), "year": model[year],
        "mean": model[mean], "ci_low": model["ci_low"] if "ci_low" in columns else model[mean],
        "ci_high": model["ci_high"] if "ci_high" in columns else model[mean],
    })
    tiers = set(tier_groups.values()) | set(tier_groups)
    if "panel" in columns:
        frame["panel"] = model["panel"].astype(str)
    else:
        frame["panel"] = ["By E2 tier" if g in tiers or g.startswith("E2") else "By AI exposure"
                          for g in frame["group_label"]]
    frame["group_label"] = frame["group_label"].map(lambda g: tier_groups.get(g, g))
    return frame


def _smd_continuous(treated, control) -> float | None:
    if treated is None or control is None or not (_finite(treated.sd) and _finite(control.sd)):
        return None
    pooled = math.sqrt((treated.sd ** 2 + control.sd ** 2) / 2)
    return (treated.mean - control.mean) / pooled if pooled > 0 else 0.0


def _smd_binary(n1: int, N1: int, n0: int, N0: int) -> float | None:
    if not N1 or not N0:
        return None
    p1, p0 = n1 / N1, n0 / N0
    pooled = math.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    return (p1 - p0) / pooled if pooled > 0 else 0.0


def _level_order(variable: str, level: str):
    if variable == "e2_tier_at_index":
        return (TIERS.index(level) if level in TIERS else len(TIERS), level)
    if level in ("yes", "no"):
        return (0 if level == "yes" else 1, level)
    return (1 if level == "none" else 0, level)


def _equipoise_bounds(protocol: Protocol) -> tuple[float, float]:
    section = getattr(protocol, "fracture_models", None)
    bounds = getattr(section, "equipoise_bounds", None) if section is not None else None
    return tuple(bounds) if bounds else (0.3, 0.7)


def coarsen_bins(counts: list[int], threshold: int) -> list[tuple[int, int, int]]:
    """Merge adjacent histogram bins until each merged bin holds 0 or at least `threshold` (so a
    histogram shows no small count): runs of empty bins stay empty, a non-empty run is extended to
    the right until it reaches the threshold, and a small remainder at the end joins the bin before.
    Returns (first bin, end bin exclusive, count) triples; a total below the threshold gives []."""
    if 0 < sum(counts) < threshold:
        return []
    out: list[list[int]] = []
    start, acc = 0, 0
    for i, n in enumerate(counts):
        if acc == 0 and n == 0:
            if out and out[-1][2] == 0:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1, 0])
            start = i + 1
            continue
        acc += n
        if acc >= threshold:
            out.append([start, i + 1, acc])
            start, acc = i + 1, 0
    if acc:
        # Small remainder: join the last non-empty bin (and any empty bins between).
        while out and out[-1][2] == 0:
            out.pop()
        if out:
            out[-1][1] = len(counts)
            out[-1][2] += acc
        else:
            out.append([start, len(counts), acc])
    elif start < len(counts):
        out.append([start, len(counts), 0])
    return [tuple(b) for b in out]


def protocol_parameters(protocol: Protocol) -> list[tuple[str, str, str, str]]:
    """(section, parameter, value, meaning) for every protocol value; meanings from protocol.toml's comments."""
    comments: dict[tuple[str, str], str] = {}
    section = ""
    try:
        text = PROTOCOL_PATH.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        header = re.match(r"^\s*\[([\w.]+)\]", line)
        if header:
            section = header.group(1)
            continue
        item = re.match(r"^\s*(\w+)\s*=.*?#\s*(.+)$", line)
        if item:
            comments[(section, item.group(1))] = item.group(2).strip()
    rows = []
    for name, value in protocol.model_dump().items():
        if isinstance(value, dict):
            for key, v in value.items():
                shown = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(
                    v, (list, tuple)) else str(v).lower() if isinstance(v, bool) else str(v)
                rows.append((name, key, shown, comments.get((name, key), "")))
    return rows


def build(content: ReportContent) -> Report:
    """Sections, tables and figures of the report, with the suppression ledger solved."""
    return _Builder(content).build()


# --------------------------------------------------------------------------------------------------
# Writing: HTML, PNG, CSV, PDF
# --------------------------------------------------------------------------------------------------


@dataclass
class BrowserCheck:
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    images: int = 0
    print_overflow_px: int = 0  # how far the widest element overflows an A4 text width when printed

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.broken_images or self.external_requests)


@dataclass
class ReportOutput:
    folder: Path
    html: Path
    pdf: Path | None
    figures: list[Path]
    tables: list[Path]
    report: Report
    browser: BrowserCheck | None = None
    pdf_problem: str | None = None


def chromium_path() -> str | None:
    """Debian's Chromium (or COHORT_CHROMIUM), used headless for the PDF."""
    configured = os.environ.get("COHORT_CHROMIUM")
    for candidate in ([configured] if configured else []) + ["/usr/bin/chromium", "chromium", "chromium-browser"]:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


def render_html(report: Report) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(loader=FileSystemLoader(REPORT_TEMPLATES_DIR),
                              autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    content = report.content
    return environment.get_template(TEMPLATE).render(
        content=content, report=report, sections=report.sections, threshold=content.threshold,
        provenance=content.provenance, suppression=report.ledger.summary(),
    )


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def write_report(content: ReportContent, reports_dir: Path, pdf: bool = True) -> ReportOutput:
    """Write `<reports_dir>/<YYYY-Qn>/`: cohort_report.html (self-contained), cohort_report.pdf,
    figures/*.png, tables/*.csv (+ tables/index.json: what each CSV holds and its count columns) and
    provenance.json. The folder is written aside and swapped in, so a reader never sees half a report."""
    report = build(content)
    final = Path(reports_dir) / content.quarter
    work = Path(reports_dir) / f".{content.quarter}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "figures").mkdir(parents=True)
    (work / "tables").mkdir()
    figures, tables, index = [], [], {}
    for figure in report.figures:
        figure.png = _png(figure.make())
        path = work / "figures" / f"{figure.name}.png"
        path.write_bytes(figure.png)
        figures.append(final / "figures" / path.name)
    for table in report.tables:
        frame, count_columns = table.frame()
        path = work / "tables" / f"{table.name}.csv"
        frame.to_csv(path, index=False, float_format="%.6g")
        tables.append(final / "tables" / path.name)
        index[path.name] = {"title": table.caption, "count_columns": count_columns, "rows": len(frame)}
    (work / "tables" / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    deliveries = {}
    if content.data.get("deliveries") is not None:
        for r in content.data["deliveries"].itertuples():
            files = json.loads(r.files or "{}")
            deliveries[r.delivery_id] = {"manifest_sha256": r.manifest_sha256, "files": {
                name: {"sha256": entry.get("sha256"),
                       "records": report.ledger.text(("file_rows", r.delivery_id, name))
                       if ("file_rows", r.delivery_id, name) in report.ledger else None}
                for name, entry in sorted(files.items())}}
    (work / PROVENANCE_FILE).write_text(json.dumps({
        **content.provenance, "quarter": content.quarter, "data_cutoff": str(content.data_cutoff),
        "deliveries": deliveries,
    }, indent=2, default=str) + "\n")
    html_path = work / REPORT_FILE
    html_path.write_text(render_html(report), encoding="utf-8")
    browser, pdf_path, problem = None, None, None
    if pdf:
        executable = chromium_path()
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed: no PDF written"
        if executable is None:
            problem = "Chromium not found (apt-get install chromium, or set COHORT_CHROMIUM): no PDF written"
        if problem is None:
            browser = print_pdf(html_path, work / PDF_FILE, executable,
                                footer=f"Cohort report {content.quarter} · data cutoff {content.data_cutoff}")
            pdf_path = final / PDF_FILE
    if final.exists():
        old = Path(reports_dir) / f".{content.quarter}.old-{os.getpid()}"
        final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(final)
    return ReportOutput(final, final / REPORT_FILE, pdf_path, figures, tables, report, browser, problem)


def render(content: ReportContent, reports_dir: Path) -> Path:
    """Write the report (see write_report) and return the HTML path."""
    return write_report(content, reports_dir).html


FOOTER_TEMPLATE = ('<div style="width:100%; font-family: DejaVu Sans, sans-serif; font-size:7.5pt; color:#57606a; '
                   'padding: 0 13mm; display:flex; justify-content:space-between;"><span>{title}</span>'
                   '<span>page <span class="pageNumber"></span> of <span class="totalPages"></span></span></div>')


def open_in_chromium(html: Path, executable: str | None = None, screenshot: Path | None = None,
                     pdf: Path | None = None, viewport: tuple[int, int] = (1200, 900),
                     footer: str | None = None) -> BrowserCheck:
    """Open the HTML file in headless Chromium with the network blocked; record console errors, images
    that did not load and any request leaving the file; optionally take a full-page screenshot and
    print the PDF (A4, backgrounds, the CSS @page size)."""
    from playwright.sync_api import sync_playwright

    check = BrowserCheck()
    executable = executable or chromium_path()
    if executable is None:
        raise RuntimeError("Chromium not found (apt-get install chromium, or set COHORT_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("console", lambda m: check.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: check.console_errors.append(str(e)))

            def route(r):
                if r.request.url.startswith(("file:", "data:")):
                    r.continue_()
                else:
                    check.external_requests.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(html.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt || i.src.slice(0, 40), i.complete && i.naturalWidth > 0])")
            check.images = len(images)
            check.broken_images = [alt for alt, ok in images if not ok]
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            # At print size (A4 less the @page margins, 184 mm = 695 px) nothing may be wider than the
            # page: Chromium would shrink every page to fit it.
            page.set_viewport_size({"width": PRINT_WIDTH_PX, "height": viewport[1]})
            page.emulate_media(media="print")
            check.print_overflow_px = max(0, int(page.evaluate("document.documentElement.scrollWidth")) - PRINT_WIDTH_PX)
            if pdf is not None:
                page.pdf(path=str(pdf), format="A4", print_background=True, prefer_css_page_size=True,
                         display_header_footer=True, header_template="<span></span>",
                         footer_template=FOOTER_TEMPLATE.format(title=footer or "Cohort report"))
        finally:
            browser.close()
    return check


def print_pdf(html: Path, pdf: Path, executable: str | None = None, footer: str | None = None) -> BrowserCheck:
    return open_in_chromium(html, executable, pdf=pdf, footer=footer)
