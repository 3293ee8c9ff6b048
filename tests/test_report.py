"""The quarterly cohort report.

Unit tests of small-cell suppression (pure), then one real pipeline run on a generated cohort (two
quarterly snapshots) shared by the report tests: sections in order with the numbers of the results
tables, no count 1-10 anywhere (HTML, CSV, PDF text), a past quarter rebuilt with identical numbers,
the HTML opened in headless Chromium (screenshot, no console errors, images loaded), and the PDF's
page count and text.
"""

from __future__ import annotations

import html as htmlmod
import itertools
import json
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from cohort.report import SECTION_ORDER, coarsen_bins, open_in_chromium
from cohort.settings import Settings
from cohort.suppression import (
    COMPLEMENTARY,
    HIDDEN_TEXT,
    PRIMARY,
    SHOWN,
    Ledger,
    SuppressionError,
    derivable,
    protect,
    protect_table,
)

THRESHOLD = 11  # the unit tests' threshold; the report tests read the protocol's
ARTIFACTS = Path(__file__).parent / "artifacts"


# --------------------------------------------------------------------------------------------------
# Suppression: pure functions
# --------------------------------------------------------------------------------------------------


def _ranges(values, relations, hidden):
    """Independent check: the smallest and largest value each hidden cell can take given the published
    cells, the relations and non-negativity (linear programming)."""
    from scipy.optimize import linprog

    hidden = sorted(hidden)
    if not hidden:
        return {}
    position = {c: k for k, c in enumerate(hidden)}
    rows, rhs = [], []
    for relation in relations:
        row = np.zeros(len(hidden))
        constant = 0.0
        for cell, coefficient in relation.items():
            if cell in position:
                row[position[cell]] += coefficient
            else:
                constant += coefficient * values[cell]
        if row.any():
            rows.append(row)
            rhs.append(-constant)
    out = {}
    for cell in hidden:
        objective = np.zeros(len(hidden))
        objective[position[cell]] = 1.0
        bounds = [(0, None)] * len(hidden)
        low = linprog(objective, A_eq=np.array(rows) if rows else None, b_eq=rhs or None, bounds=bounds)
        high = linprog(-objective, A_eq=np.array(rows) if rows else None, b_eq=rhs or None, bounds=bounds)
        out[cell] = (low.fun, -high.fun if high.status == 0 else float("inf"))
    return out


def _table_relations(table):
    """Cells, relations (row/column/grand totals) of a two-way table with margins, as protect() takes them."""
    table = np.asarray(table)
    r, c = table.shape
    values = list(table.ravel()) + list(table.sum(axis=1)) + list(table.sum(axis=0)) + [table.sum()]
    cell = lambda i, j: i * c + j  # noqa: E731
    row_total = lambda i: r * c + i  # noqa: E731
    col_total = lambda j: r * c + r + j  # noqa: E731
    grand = r * c + r + c
    relations = [{**{cell(i, j): 1 for j in range(c)}, row_total(i): -1} for i in range(r)]
    relations += [{**{cell(i, j): 1 for i in range(r)}, col_total(j): -1} for j in range(c)]
    relations.append({**{row_total(i): 1 for i in range(r)}, grand: -1})
    relations.append({**{col_total(j): 1 for j in range(c)}, grand: -1})
    return values, relations


def test_primary_suppression_hides_1_to_10_and_shows_zero():
    ledger = Ledger(THRESHOLD)
    counts = {n: ledger.count(("n", n), n) for n in (0, 1, 5, 10, 11, 12, 2500)}
    ledger.solve()
    assert {n: c.text for n, c in counts.items()} == {
        0: "0", 1: "<11", 5: "<11", 10: "<11", 11: "11", 12: "12", 2500: "2,500"}
    small = Ledger(5)
    four, five = small.count("a", 4), small.count("b", 5)
    small.solve()
    assert (four.text, five.text) == ("<5", "5")  # the threshold comes from the protocol


def test_a_lone_small_cell_gets_a_complement_in_its_row_and_column():
    table = [[3, 50, 60], [40, 45, 70], [30, 33, 80]]
    cells, rows, columns, grand = protect_table(table, THRESHOLD)
    assert cells[0][0] == PRIMARY
    hidden = {(i, j) for i in range(3) for j in range(3) if cells[i][j] != SHOWN}
    # the cheapest rectangle: the small cell, its row neighbour and the smallest pair below them
    assert hidden == {(0, 0), (0, 1), (2, 0), (2, 1)}
    assert list(rows) == list(columns) == [SHOWN] * 3 and grand == SHOWN


def test_no_hidden_cell_can_be_derived_in_random_tables():
    rng = np.random.default_rng(7)
    for trial in range(30):
        shape = (int(rng.integers(2, 6)), int(rng.integers(2, 5)))
        table = rng.choice([0, 1, 2, 4, 7, 9, 12, 15, 40, 130], size=shape, p=[.08, .08, .08, .08, .08, .08, .12, .12,
                                                                              .14, .14])
        values, relations = _table_relations(table)
        status = protect(values, relations, THRESHOLD)
        hidden = {i for i, s in enumerate(status) if s != SHOWN}
        # every 1..10 is hidden, nothing else is primary
        assert all((status[i] == PRIMARY) == (0 < v < THRESHOLD) for i, v in enumerate(values)), trial
        assert not derivable(len(values), relations, hidden), trial
        for cell, (low, high) in _ranges(values, relations, hidden).items():
            assert high - low >= 1 - 1e-6, (trial, table.tolist(), cell, low, high)


def test_complementary_set_is_irreducible():
    table = [[3, 50, 60], [40, 4, 70], [30, 33, 80]]
    values, relations = _table_relations(table)
    status = protect(values, relations, THRESHOLD)
    hidden = {i for i, s in enumerate(status) if s != SHOWN}
    for cell in [i for i, s in enumerate(status) if s == COMPLEMENTARY]:
        assert derivable(len(values), relations, hidden - {cell}), "a complementary cell was not needed"
    # two small cells on the diagonal protect each other with two complements: 3, 50 / 40, 4
    assert {i for i, s in enumerate(status) if s == COMPLEMENTARY} == {1, 3}


def test_a_bridge_between_two_protected_blocks_is_protected_too():
    # Cells (0,0),(0,1),(1,0),(1,1) and (2,2),(2,3),(3,2),(3,3) each form a protected rectangle; a small
    # cell at (0,2) joins them. Every line then has two hidden cells, yet (0,2) alone links the blocks:
    # a "two per line" rule would miss that it is still derivable.
    relations = [{4 * i + j: 1 for j in range(4)} | {16 + i: -1} for i in range(4)]
    relations += [{4 * i + j: 1 for i in range(4)} | {20 + j: -1} for j in range(4)]
    table = np.array([[3, 4, 5, 200], [6, 7, 300, 400], [500, 600, 8, 9], [700, 800, 2, 3]])
    values = list(table.ravel()) + list(table.sum(axis=1)) + list(table.sum(axis=0))
    hidden = {0, 1, 4, 5, 10, 11, 14, 15, 2}
    assert 2 in derivable(len(values), relations, hidden)
    status = protect(values, relations, THRESHOLD)
    final = {i for i, s in enumerate(status) if s != SHOWN}
    assert not derivable(len(values), relations, final)


def test_flow_chain_protects_a_small_exclusion():
    # remaining_{k-1} = remaining_k + excluded_k down the cohort flow
    ledger = Ledger(THRESHOLD)
    steps = [("all", 1000, 0), ("men", 997, 3), ("users", 600, 397), ("adults", 590, 10), ("cohort", 560, 30)]
    for name, remaining, excluded in steps:
        ledger.count(("r", name), remaining)
        ledger.count(("e", name), excluded)
    for (prev, *_), (name, *_) in itertools.pairwise(steps):
        ledger.total(("r", prev), [("r", name), ("e", name)])
    ledger.lock(("r", "all"))
    ledger.lock(("r", "cohort"))
    ledger.solve()
    text = {k: ledger.text(k) for k in [("r", s[0]) for s in steps] + [("e", s[0]) for s in steps]}
    assert text[("e", "men")] == "<11" and text[("e", "adults")] == "<11"
    assert text[("r", "all")] == "1,000" and text[("r", "cohort")] == "560"
    # 997 = 1000 - 3 would give the 3 away, so something next to it is hidden too
    assert HIDDEN_TEXT in (text[("r", "men")], text[("r", "users")])
    values = ledger._values
    hidden = {i for i, s in enumerate(ledger._status) if s != SHOWN}
    assert not derivable(len(values), ledger._relations, hidden)


def test_the_same_count_shown_twice_is_suppressed_in_both_places():
    ledger = Ledger(THRESHOLD)
    ledger.count("total", 40)
    ledger.count("ai", 4)
    ledger.count("no_ai", 36)
    ledger.count("at_risk_no_ai_year0", 36)  # the same 36 in the at-risk row
    ledger.total("total", ["ai", "no_ai"])
    ledger.equal("no_ai", "at_risk_no_ai_year0")
    ledger.lock("total")
    ledger.solve()
    assert ledger.text("ai") == "<11"
    assert ledger.text("no_ai") == ledger.text("at_risk_no_ai_year0") == HIDDEN_TEXT
    assert ledger.text("total") == "40"


def test_locked_cells_are_never_complements_and_impossible_cases_fail_loudly():
    ledger = Ledger(THRESHOLD)
    for key, value in (("total", 40), ("a", 3), ("b", 37)):
        ledger.count(key, value)
    ledger.total("total", ["a", "b"])
    ledger.lock("total")
    ledger.lock("b")
    with pytest.raises(SuppressionError):
        ledger.solve()
    with pytest.raises(ValueError, match="does not hold"):
        protect([5, 5, 11], [{0: 1, 1: 1, 2: -1}], THRESHOLD)
    reader = Ledger(THRESHOLD)
    reader.count("x", 3)
    with pytest.raises(RuntimeError, match="solve"):
        reader.text("x")


def test_histogram_bins_are_merged_until_none_is_small():
    counts = [0, 0, 3, 4, 8, 20, 30, 0, 0, 2]
    merged = coarsen_bins(counts, THRESHOLD)
    assert all(n == 0 or n >= THRESHOLD for _, _, n in merged)
    assert sum(n for _, _, n in merged) == sum(counts)
    assert [(lo, hi) for lo, hi, _ in merged] == [(0, 2), (2, 5), (5, 6), (6, 10)]
    assert coarsen_bins([1, 2, 3], THRESHOLD) == []  # fewer than the threshold in all: nothing to draw
    assert coarsen_bins([0, 0], THRESHOLD) == [(0, 2, 0)]


def test_the_quarterly_schedule_runs_the_report_for_the_closed_quarter():
    from datetime import datetime, timezone

    from pipelines.definitions import build_definitions
    from pipelines.resources import build_resources
    from pipelines.schedules import quarterly_report_schedule

    request = quarterly_report_schedule(dg.build_schedule_context(
        scheduled_execution_time=datetime(2025, 7, 5, 6, tzinfo=timezone.utc)))
    assert request.partition_key == "2025-04-01"  # 2025-Q2, data cutoff 2025-06-30
    defs = build_definitions(build_resources(Settings(Path("landing"), Path("warehouse.duckdb"), Path("reports"))))
    job = defs.resolve_job_def(quarterly_report_schedule.job_name)
    assert dg.AssetKey("quarterly_report") in job.asset_layer.selected_asset_keys
    # the report waits for every model table it reads
    parents = defs.resolve_asset_graph().get(dg.AssetKey("quarterly_report")).parent_keys
    assert {dg.AssetKey(["cohort", "members"]), dg.AssetKey(["cohort", "attrition"]),
            dg.AssetKey(["results", "km_curves"])} <= parents


# --------------------------------------------------------------------------------------------------
# The report of a generated cohort
# --------------------------------------------------------------------------------------------------

COUNT_RE = re.compile(r'<span class="count" data-count="([^"]*)" data-status="([^"]*)"(?: data-metric="[^"]*")?>'
                      r'([^<]*)</span>')
ESTIMATE_RE = re.compile(r'<span class="est" data-estimate="([^"]*)"(?: data-value="([^"]*)")?>([^<]*)</span>')
Q1, Q2 = "2025-Q1", "2025-Q2"
CUTOFF = {Q1: date(2025, 3, 31), Q2: date(2025, 6, 30)}


def _protocol_threshold() -> int:
    from cohort.protocol import load_protocol

    return load_protocol().reporting.small_cell_threshold


def _safe(text: str, threshold: int | None = None) -> bool:
    """A count as it may be shown: 0, at least the threshold, '<11' or 'hidden'."""
    threshold = threshold or _protocol_threshold()
    if text in (f"<{threshold}", HIDDEN_TEXT, "", "—"):
        return True
    value = int(text.replace(",", ""))
    return value == 0 or value >= threshold


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """Two quarterly snapshots of a generated site, the whole pipeline once (both quarters' reports)."""
    from cohort.generator import generate
    from pipelines.headless import run_pipeline

    root = tmp_path_factory.mktemp("report")
    generate(root / "landing", patients=2000, quarters=2, seed=29)
    settings = Settings(landing_dir=root / "landing", duckdb_path=root / "warehouse.duckdb",
                        reports_dir=root / "reports", published_dir=root / "published")
    instance = dg.DagsterInstance.ephemeral()
    summary = run_pipeline(settings, progress=lambda _line: None, instance=instance)
    assert set(summary.reports) == {Q1, Q2}
    return settings, instance


def _html(settings, quarter=Q2) -> str:
    return (settings.reports_dir / quarter / "cohort_report.html").read_text()


def _counts(html: str) -> dict[str, tuple[str, str]]:
    return {htmlmod.unescape(k): (status, htmlmod.unescape(text)) for k, status, text in COUNT_RE.findall(html)}


def _estimates(html: str) -> dict[str, tuple[str | None, str]]:
    return {htmlmod.unescape(k): (v or None, htmlmod.unescape(text)) for k, v, text in ESTIMATE_RE.findall(html)}


def _shown_as(status: str, text: str, value: int) -> bool:
    """The text of a count is its value, '<11' when small, or 'hidden' when it is a complement."""
    threshold = _protocol_threshold()
    if 0 < value < threshold:
        return status == PRIMARY and text == f"<{threshold}"
    if status == COMPLEMENTARY:
        return text == HIDDEN_TEXT
    return status == SHOWN and text == f"{value:,}"


def _db(settings):
    return duckdb.connect(str(settings.duckdb_path), read_only=True)


def _table_exists(con, table: str) -> bool:
    schema, name = table.split(".")
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                            [schema, name]).fetchone()[0])


def test_report_files_are_written_per_quarter(report_run):
    settings, _ = report_run
    for quarter in (Q1, Q2):
        folder = settings.reports_dir / quarter
        assert (folder / "cohort_report.html").stat().st_size > 100_000
        assert (folder / "cohort_report.pdf").read_bytes()[:5] == b"%PDF-"
        figures = sorted(p.name for p in (folder / "figures").glob("*.png"))
        assert {"design.png", "attrition_flow.png", "km_ai_ever.png", "bmd_trajectories_observed.png"} <= set(figures)
        index = json.loads((folder / "tables" / "index.json").read_text())
        assert set(index) == {p.name for p in (folder / "tables").glob("*.csv")}
        assert {"attrition.csv", "table1_baseline.csv", "deliveries.csv"} <= set(index)
        html = _html(settings, quarter)
        # self-contained: every image is embedded, nothing is fetched from anywhere
        assert html.count('<img src="data:image/png;base64,') == len(figures)
        assert not re.search(r'(src|href)="(?!data:|#)', html)
        assert "<script" not in html


def test_sections_are_in_order_with_the_numbers_of_the_results_tables(report_run):
    settings, _ = report_run
    html = _html(settings)
    assert re.findall(r'<section id="([^"]+)"', html) == [sid for sid, _ in SECTION_ORDER]
    assert "data-error=" not in html  # every section was built
    counts, estimates = _counts(html), _estimates(html)
    cutoff = CUTOFF[Q2]
    with _db(settings) as con:
        n, ai, fractures = con.execute(
            "SELECT count(*), count(*) FILTER (ai_ever), count(*) FILTER (follow_up_end_reason = 'fracture') "
            "FROM cohort.members WHERE data_cutoff = ?", [cutoff]).fetchone()
        assert re.search(rf'data-metric="cohort_size">{n:,}<', html)
        assert _shown_as(*counts["n|AI during follow-up"], ai) and _shown_as(*counts["end|fracture|all"], fractures)
        for step, remaining, excluded in con.execute(
                "SELECT step, patients_remaining, patients_excluded FROM cohort.attrition WHERE data_cutoff = ? "
                "ORDER BY step_order", [cutoff]).fetchall():
            assert _shown_as(*counts[f"attrition_remaining|{step}"], remaining), step
            assert _shown_as(*counts[f"attrition_excluded|{step}"], excluded), step
        for tier, group, value in con.execute(
                "SELECT e2_tier_at_index, CASE WHEN ai_ever THEN 'AI during follow-up' ELSE 'No AI' END, count(*) "
                "FROM cohort.members WHERE data_cutoff = ? GROUP BY ALL", [cutoff]).fetchall():
            assert _shown_as(*counts[f"t1|e2_tier_at_index|{tier}|{group}"], value)
        # Kaplan-Meier numbers at risk at whole years, from results.km_curves
        km = con.execute("SELECT group_label, time_years, at_risk FROM results.km_curves WHERE data_cutoff = ? "
                         "AND curve = 'ai_ever' ORDER BY group_label, time_years", [cutoff]).df()
        for label, group in km.groupby("group_label"):
            for year in range(0, 4):
                later = group[group["time_years"] >= year]
                expected = int(later["at_risk"].iloc[0]) if len(later) else 0
                assert _shown_as(*counts[f"at_risk|ai_ever|{label}|{year}"], expected), (label, year)
        # Estimates: the exact values of the results tables (data-value), rounded in the text.
        checked = 0
        if _table_exists(con, "results.fracture_cox"):
            for model, term, hr, low, high in con.execute(
                    "SELECT model, term, hazard_ratio, ci_low, ci_high FROM results.fracture_cox "
                    "WHERE data_cutoff = ? AND model IN ('time_varying_adjusted', 'iptw_itt', 'crude_itt') "
                    "AND isfinite(hazard_ratio)", [cutoff]).fetchall():
                value, text = estimates[f"cox|{model}|{term}|hazard_ratio"]
                assert float(value) == hr and text == f"{hr:,.2f} ({low:,.2f}–{high:,.2f})"
                checked += 1
            primary = con.execute("SELECT hazard_ratio FROM results.fracture_cox WHERE data_cutoff = ? AND "
                                  "model = 'time_varying_adjusted' AND term = 'ai_current'", [cutoff]).fetchone()
            assert float(estimates["summary|time_varying_adjusted|ai_current|hazard_ratio"][0]) == primary[0]
        else:
            assert 'data-unavailable="cox"' in html
        if _table_exists(con, "results.balance"):
            for covariate, after in con.execute("SELECT covariate, smd_after FROM results.balance WHERE "
                                                "data_cutoff = ? AND isfinite(smd_after)", [cutoff]).fetchall():
                key = f"smd_after|{covariate}"
                if key in estimates:
                    assert float(estimates[key][0]) == after
                    checked += 1
        if _table_exists(con, "results.incidence_rates"):
            for exposure, level, events, rate in con.execute(
                    "SELECT exposure, level, events, rate_per_1000py FROM results.incidence_rates WHERE data_cutoff = ?",
                    [cutoff]).fetchall():
                status, text = counts[f"rate_events|{exposure}|{level}"]
                assert _shown_as(status, text, events)
                value, shown = estimates[f"rate|{exposure}|{level}|rate_per_1000py"]
                assert (float(value) == rate) if status == SHOWN else (value is None and shown == "—")
        if _table_exists(con, "results.bmd_change"):
            for site, term, estimate in con.execute(
                    "SELECT skeletal_site, term, estimate_pct_per_year FROM results.bmd_change WHERE data_cutoff = ? "
                    "AND isfinite(estimate_pct_per_year) AND analysis = 'primary'", [cutoff]).fetchall():
                key = f"bmd|{site}|{term}|estimate_pct_per_year"
                assert float(estimates[key][0]) == estimate
                checked += 1
        else:
            assert 'data-unavailable="bmd-forest"' in html
    # CSV and HTML agree: the attrition table as written
    attrition = pd.read_csv(settings.reports_dir / Q2 / "tables" / "attrition.csv", dtype=str)
    assert list(attrition["Remaining"]) == [counts[f"attrition_remaining|{s}"][1] for s in
                                            _steps(settings, CUTOFF[Q2])]


def _steps(settings, cutoff):
    with _db(settings) as con:
        return [r[0] for r in con.execute("SELECT step FROM cohort.attrition WHERE data_cutoff = ? ORDER BY step_order",
                                          [cutoff]).fetchall()]


def test_no_count_from_1_to_10_survives_in_html_csv_or_pdf(report_run):
    settings, _ = report_run
    folder = settings.reports_dir / Q2
    html = _html(settings)
    counts = _counts(html)
    assert len(counts) > 100
    unsafe = {k: t for k, (_, t) in counts.items() if not _safe(t)}
    assert not unsafe
    # no patient-level row: no patient key of the cohort appears in any file of the report
    with _db(settings) as con:
        keys = [r[0] for r in con.execute("SELECT patient_key FROM cohort.members WHERE data_cutoff = ? "
                                          "USING SAMPLE 200 ROWS (reservoir, 1)", [CUTOFF[Q2]]).fetchall()]
    texts = [html] + [p.read_text() for p in folder.rglob("*.csv")] + [(folder / "provenance.json").read_text()]
    assert not [k for k in keys if any(k in t for t in texts)]
    statuses = [s for s, _ in counts.values()]
    assert PRIMARY in statuses  # the generated cohort does have small cells (e.g. AI users with E2 <10 at index)
    # every count in the HTML is one of the marked-up ones: no bare number in a count column of any table
    index = json.loads((folder / "tables" / "index.json").read_text())
    checked = 0
    for name, entry in index.items():
        frame = pd.read_csv(folder / "tables" / name, dtype=str, keep_default_na=False)
        for column in entry["count_columns"]:
            bad = [v for v in frame[column] if not _safe(v)]
            assert not bad, (name, column, bad[:5])
            checked += len(frame)
    assert checked > 100
    provenance = json.loads((folder / "provenance.json").read_text())
    records = [f["records"] for d in provenance["deliveries"].values() for f in d["files"].values()]
    assert records and all(_safe(r) for r in records)
    # PDF: the same text as the HTML page (both from one DOM), so its counts are the safe ones above:
    # every number in the PDF text is a number of the HTML text, and the suppressed markers are there.
    pdf_text = subprocess.run(["pdftotext", "-layout", str(folder / "cohort_report.pdf"), "-"], capture_output=True,
                              text=True, check=True).stdout
    visible = htmlmod.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(style|title)[^>]*>.*?</\1>", " ", html, flags=re.S)))
    hexlike = re.compile(r"\b[0-9a-f]{12,}\b|[0-9a-f]{12,}")
    number = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
    footer = re.compile(r"^\s*Cohort report \d{4}-Q\d · data cutoff [\d-]+\s+page \d+ of \d+\s*$", re.M)
    assert len(footer.findall(pdf_text)) >= 8  # every page has its footer (quarter, cutoff, page number)
    pdf_numbers = set(number.findall(hexlike.sub(" ", footer.sub(" ", pdf_text))))
    html_numbers = set(number.findall(hexlike.sub(" ", visible)))
    assert pdf_numbers <= html_numbers
    assert f"<{_protocol_threshold()}" in pdf_text
    # and the count contexts of the PDF text hold no small number: the numbers-at-risk tables and the
    # cohort-flow table, read from the PDF itself.
    token = re.compile(r"<\d+|hidden|\d+(?:,\d{3})*")
    lines = pdf_text.splitlines()
    blocks = seen = 0
    for i, line in enumerate(lines):
        if "Numbers at risk —" in line or "Cohort flow, step by step" in line:
            blocks += 1
            for row in lines[i + 1:]:
                if "CSV: tables/" in row:
                    break
                if not row.strip() or footer.match(row) or re.search(r"Group|Step|Remaining|Year 0", row):
                    continue
                cells = re.split(r"\s{2,}", row.strip())  # pdftotext -layout: columns apart by 2+ spaces
                values = cells[-2:] if "Cohort flow" in line else cells[1:]  # not the step / group label
                values = [v for v in values if token.fullmatch(v)]
                assert all(_safe(v) for v in values), row
                seen += len(values)
    assert blocks >= 3 and seen >= 30


def test_rebuilding_a_past_quarter_gives_identical_numbers(report_run, tmp_path):
    settings, instance = report_run
    from assets.reports import quarterly_report
    from pipelines.resources import build_resources

    folder = settings.reports_dir / Q1
    before = tmp_path / "before"
    shutil.copytree(folder, before)
    result = dg.materialize([quarterly_report], partition_key="2025-01-01", resources=build_resources(settings),
                            instance=instance)
    assert result.success
    after = folder
    for sub in ("tables", "figures"):
        names = sorted(p.name for p in (before / sub).iterdir())
        assert names == sorted(p.name for p in (after / sub).iterdir())
        for name in names:
            assert (before / sub / name).read_bytes() == (after / sub / name).read_bytes(), name

    def numbers(path: Path) -> str:
        text = path.read_text()
        return re.sub(r'<section id="provenance".*?</section>', "", text, flags=re.S)

    assert numbers(before / "cohort_report.html") == numbers(after / "cohort_report.html")
    old, new = (json.loads((p / "provenance.json").read_text()) for p in (before, after))
    assert old["run_id"] != new["run_id"] and old["deliveries"] == new["deliveries"]
    # the Q1 report is the cohort as it stood then: its own cutoff, not the newer delivery
    assert "site01_2025q2" not in (after / "tables" / "deliveries.csv").read_text()


def test_the_report_renders_in_headless_chromium(report_run):
    settings, _ = report_run
    html = settings.reports_dir / Q2 / "cohort_report.html"
    screenshot = ARTIFACTS / "cohort_report_2025-Q2.png"
    screenshot.unlink(missing_ok=True)
    check = open_in_chromium(html, screenshot=screenshot)
    assert check.console_errors == []
    assert check.external_requests == []
    assert check.print_overflow_px == 0  # nothing wider than an A4 page: printed at full size, not shrunk
    assert check.broken_images == [] and check.images == len(list((html.parent / "figures").glob("*.png")))
    from PIL import Image

    with Image.open(screenshot) as image:
        width, height = image.size
        assert width == 1200 and height > 5 * width  # the whole page, top to bottom
        gray = np.asarray(image.convert("L"))
    assert gray.std() > 10 and (gray < 128).mean() > 0.005  # not a blank page: text and figures drawn


def test_the_pdf_has_the_expected_pages_and_key_estimates(report_run):
    settings, _ = report_run
    pdf = settings.reports_dir / Q2 / "cohort_report.pdf"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    assert 8 <= pages <= 40
    assert "A4" in info or re.search(r"Page size:\s+595", info)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    flat = re.sub(r"\s+", " ", text)
    html = _html(settings)
    counts, estimates = _counts(html), _estimates(html)
    assert f"{counts['n|all'][1]} men who started testosterone" in flat
    for title in [t for _, t in SECTION_ORDER]:
        assert title in flat, title
    key = "summary|time_varying_adjusted|ai_current|hazard_ratio"
    if key in estimates:
        low, high = (estimates[key.replace("hazard_ratio", b)][1] for b in ("ci_low", "ci_high"))
        assert f"hazard ratio {estimates[key][1]} (95% CI {low}–{high})" in flat
    else:
        assert "Fracture hazard ratios: not available for this cutoff" in flat
