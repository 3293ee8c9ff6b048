"""The validation stage: suite files, GX's SQL engine on DuckDB (and the patch it needs), planted
defects caught with their exact counts, blocking checks, results and the data-quality page.

Real DuckDB files, real GX, real Dagster runs; deliveries come from cohort.generator (with
truth.json) and from the hand-written partner fixture.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cohort import validation as V
from cohort.contract import TABLES
from cohort.generator import generate
from cohort.ingest import ingest_delivery, prepare_warehouse
from cohort.settings import EXPECTATIONS_DIR, Settings
from cohort.sql import sql_text
from tests.conftest import PARTNER_DELIVERY, query

# truth.json defect kind -> the expectation of suite delivered_<table> that counts it
DEFECT_EXPECTATIONS = {
    "exact_duplicate_rows": "exact_duplicate_records",
    "impossible_values": "impossible_values",
    "future_dates": "future_dates",
    "unknown_units": "unknown_units",
    "orphan_rows": "orphan_records",
    "end_before_start": "end_before_start",
}
# ... and the staging expectations that show the same defect never reached staging
STAGING_MIRRORS = {
    "patients": ["enrollment_end_not_after_data_cutoff", "enrollment_start_not_after_end", "birth_year_from_1900",
                 "patient_key_unique"],
    "medications": ["patient_key_in_patients", "start_not_after_data_cutoff", "start_not_after_end", "days_supply_range"],
    "labs": ["patient_key_in_patients", "collected_not_after_data_cutoff", "value_not_negative", "unit_is_canonical"],
    "dxa": ["patient_key_in_patients", "scan_not_after_data_cutoff", "bmd_range"],
    "diagnoses": ["patient_key_in_patients", "diagnosis_not_after_data_cutoff"],
}


def by_name(outcomes: list[V.ExpectationOutcome]) -> dict[str, V.ExpectationOutcome]:
    return {f"{o.suite}.{o.name}": o for o in outcomes}


def generated_warehouse(root: Path, patients: int, defects: float, seed: int) -> tuple[duckdb.DuckDBPyConnection, str, dict]:
    truth = generate(root / "landing", patients=patients, seed=seed, defects=defects)
    (delivery_id,) = truth["deliveries"]
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    ingest_delivery(con, root / "landing" / delivery_id)
    return con, delivery_id, truth


# ------------------------------------------------------------------------------------ suite files


def test_every_suite_file_loads_with_valid_expectation_types():
    files = V.suite_files()
    assert {p.stem for p in files} >= {f"{kind}_{t}" for t in TABLES for kind in ("staging", "delivered")} | {
        "cohort_members", "cohort_attrition", "cohort_ai_episodes"}
    # a suite saved under another name (.yml, .json.bak) would never run: expectations/ holds only suites
    assert sorted(p.name for p in EXPECTATIONS_DIR.iterdir()) == sorted(p.name for p in files)
    for path in files:
        suite = V.load_suite(path)  # raises SuiteError naming the file and expectation
        gx_suite = suite.gx_suite()  # GX's own validation of every type and its kwargs
        assert len(gx_suite.expectations) == len(suite.expectations)
        for expectation in suite.expectations:
            assert expectation["type"] in V.EXPECTATION_KINDS, (path.name, expectation["type"])
            meta = expectation["meta"]
            assert meta["category"] in V.KAHN_CATEGORIES and meta["severity"] in V.SEVERITIES
            assert 0 <= meta["threshold"] < 1


def test_suites_refer_only_to_columns_their_relation_has(tmp_path):
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    prepare_warehouse(con)
    con.execute(sql_text("cohort/schema"))
    V.ensure_results_tables(con)
    with V.WarehouseValidator(con, delivery_id="none", data_cutoff=date(2025, 6, 30)) as validator:
        for suite in V.all_suites():
            columns = set(validator.relation_columns(suite))
            assert suite.columns() <= columns, (suite.name, sorted(suite.columns() - columns))


def test_suites_cover_kahn_categories_and_dqd_check_families():
    suites = V.all_suites()
    for table in TABLES:
        categories = {e["meta"]["category"] for s in V.suites_for(table) for e in s.expectations}
        assert categories == set(V.KAHN_CATEGORIES), table
        severities = {e["meta"]["severity"] for s in V.suites_for(table) for e in s.expectations}
        assert severities == {"error", "warn"}, table
    covered = {c for s in suites for e in s.expectations for c in V.dqd_checks(e)}
    assert covered == set(V.DQD_CHECKS), sorted(set(V.DQD_CHECKS) - covered)
    for table in ("cohort.members", "cohort.attrition", "cohort.ai_episodes"):
        assert V.suites_for(table, "quarter"), table


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(type="expect_column_values_to_match_regex", kwargs={"column": "icd10_code", "regex": "^A"}),
         "no regex support"),
        (lambda e: e.update(type="expect_column_values_to_be_of_type", kwargs={"column": "icd10_code", "type_": "VARCHAR"}),
         "reflection"),
        (lambda e: e["meta"].pop("category"), "meta.category"),
        (lambda e: e["meta"].update(severity="fatal"), "meta.severity"),
        (lambda e: e["meta"].pop("threshold"), "meta.threshold"),
        (lambda e: (e["meta"].update(threshold=0.1), e["kwargs"].update(mostly=0.5)), "disagrees with meta.threshold"),
        (lambda e: e["meta"].update(dqd="plausibleSomething"), "meta.dqd"),
        (lambda e: e["kwargs"].update(not_a_kwarg=1), "invalid expectation"),
    ],
)
def test_a_bad_suite_is_refused_with_the_reason(tmp_path, change, message):
    data = json.loads(V.suite_path("staging_diagnoses").read_text())
    change(data["expectations"][-1])
    path = tmp_path / "staging_diagnoses.json"
    path.write_text(json.dumps(data))
    with pytest.raises(V.SuiteError, match=re.escape(message)):
        V.load_suite(path)


def test_threshold_becomes_mostly():
    suite = V.load_suite(V.suite_path("staging_patients"))
    mostly_male = next(e for e in suite.expectations if e["meta"]["name"] == "mostly_male")
    assert mostly_male["kwargs"]["mostly"] == pytest.approx(0.9)
    unique = next(e for e in suite.expectations if e["meta"]["name"] == "patient_key_unique")
    assert "mostly" not in unique["kwargs"]


# ------------------------------------------------------------------ GX's SQL engine on DuckDB


@pytest.fixture
def probe(tmp_path):
    """A warehouse with one relation of known defects and a suite with an expectation per supported
    type that must fail with a known count, and one that must pass."""
    con = duckdb.connect(str(tmp_path / "probe.duckdb"))
    con.execute("""
        CREATE SCHEMA synthetic;
        CREATE TABLE synthetic.t AS SELECT
            range + 1 AS source_record,
            CASE WHEN range % 10 = 0 THEN NULL ELSE 'M' END AS code,           -- 100 nulls
            CASE WHEN range % 7 = 0 THEN 'X' ELSE 'M' END AS sex,              -- 143 'X'
            (range % 50)::DOUBLE AS value,                                     -- 40..49: 200 above 39
            DATE '2020-01-01' + (range % 30)::INT AS start_date,
            DATE '2020-01-01' + (range % 25)::INT AS end_date,                 -- end < start: 480
            DATE '2020-01-01' + (range % 30)::INT + 1 AS next_day,
            range % 500 AS key,                                                -- every key twice
            'Alice Smith, 555-12-3456' AS free_text
        FROM range(1000);
    """)
    yield con
    con.close()


def _probe_suite(expectations: list[dict]) -> V.Suite:
    full = [
        {"type": t, "kwargs": kw, "meta": {"name": n, "category": "conformance", "severity": "error", "threshold": 0}}
        for n, t, kw in expectations
    ]
    return V.Suite(name="probe", path=Path("probe.json"), scope="delivery", table="patients", relation="probe",
                   keys=("source_record",), description="", expectations=tuple(full))


MUST_FAIL = [  # name, type, kwargs, expected unexpected_count (map) or observed value (aggregate)
    ("not_null", "expect_column_values_to_not_be_null", {"column": "code"}, 100),
    ("null", "expect_column_values_to_be_null", {"column": "sex"}, 1000),
    ("in_set", "expect_column_values_to_be_in_set", {"column": "sex", "value_set": ["M"]}, 143),
    ("not_in_set", "expect_column_values_to_not_be_in_set", {"column": "sex", "value_set": ["X"]}, 143),
    ("between", "expect_column_values_to_be_between", {"column": "value", "max_value": 39}, 200),
    ("between_condition", "expect_column_values_to_be_between",
     {"column": "value", "max_value": 39, "row_condition": 'col("sex")=="X"', "condition_parser": "great_expectations"}, 29),
    ("between_dates", "expect_column_values_to_be_between",
     {"column": "start_date", "max_value": "2020-01-20T00:00:00"}, 330),
    ("unique", "expect_column_values_to_be_unique", {"column": "key"}, 1000),
    ("lengths", "expect_column_value_lengths_to_be_between", {"column": "code", "min_value": 2}, 900),
    ("pair_greater", "expect_column_pair_values_a_to_be_greater_than_b",
     {"column_A": "end_date", "column_B": "start_date", "or_equal": True, "ignore_row_if": "either_value_is_missing"}, 480),
    ("pair_equal", "expect_column_pair_values_to_be_equal", {"column_A": "end_date", "column_B": "start_date"}, 825),
    ("compound_unique", "expect_compound_columns_to_be_unique", {"column_list": ["key", "sex"]}, 714),
    ("row_count", "expect_table_row_count_to_be_between", {"max_value": 999}, 1000),
    ("min", "expect_column_min_to_be_between", {"column": "value", "min_value": 1}, 0.0),
    ("max", "expect_column_max_to_be_between", {"column": "value", "max_value": 48}, 49.0),
    ("mean", "expect_column_mean_to_be_between", {"column": "value", "max_value": 20}, 24.5),
    ("proportion_non_null", "expect_column_proportion_of_non_null_values_to_be_between", {"column": "code", "min_value": 0.95}, 0.9),
    ("column_exists", "expect_column_to_exist", {"column": "not_there"}, None),
]


def _validate_probe(con, monkeypatch, expectations) -> list[V.ExpectationOutcome]:
    suite = _probe_suite([(n, t, kw) for n, t, kw, *_ in expectations])
    monkeypatch.setattr(V.Suite, "relation_sql", lambda self: "SELECT * FROM synthetic.t")
    with V.WarehouseValidator(con) as validator:
        engine = validator._datasource.get_execution_engine()
        assert type(engine).__name__ == "SqlAlchemyExecutionEngine" and engine.dialect_name == "duckdb"
        return validator.validate(suite)


def test_every_supported_type_runs_in_duckdb_and_fails_with_real_counts(probe, monkeypatch):
    con = probe
    assert {t for _, t, _, _ in MUST_FAIL} == set(V.EXPECTATION_KINDS)
    outcomes = by_name(_validate_probe(con, monkeypatch, MUST_FAIL))
    for name, type_, _, expected in MUST_FAIL:
        outcome = outcomes[f"probe.{name}"]
        assert not outcome.errored, (name, outcome.error)
        assert not outcome.passed and outcome.status == "failed", name
        if V.EXPECTATION_KINDS[type_] == "map":
            if expected is not None:
                assert outcome.unexpected_count == expected, name
            assert outcome.unexpected_count and outcome.element_count, name
        elif V.EXPECTATION_KINDS[type_] == "aggregate":
            assert json.loads(outcome.observed_value) == pytest.approx(expected), name
    # examples are source_record numbers of failing rows, never values
    examples = outcomes["probe.in_set"].example_keys
    assert len(examples) == V.EXAMPLE_KEYS and all((int(k) - 1) % 7 == 0 for k in examples)
    for outcome in outcomes.values():
        assert "Alice" not in json.dumps(outcome.as_row(), default=str)


def test_every_supported_type_can_pass(probe, monkeypatch):
    con = probe
    passing = [
        ("not_null", "expect_column_values_to_not_be_null", {"column": "sex"}),
        ("in_set", "expect_column_values_to_be_in_set", {"column": "sex", "value_set": ["M", "X"]}),
        ("between_dates", "expect_column_values_to_be_between",
         {"column": "start_date", "min_value": "2020-01-01T00:00:00", "max_value": "2020-01-30T00:00:00"}),
        ("unique", "expect_column_values_to_be_unique", {"column": "source_record"}),
        ("pair_greater", "expect_column_pair_values_a_to_be_greater_than_b",
         {"column_A": "next_day", "column_B": "start_date"}),
        ("row_count", "expect_table_row_count_to_be_between", {"min_value": 1000, "max_value": 1000}),
        ("column_exists", "expect_column_to_exist", {"column": "value"}),
        ("empty_condition", "expect_column_values_to_be_between",
         {"column": "value", "max_value": 0, "row_condition": 'col("sex")=="nobody"', "condition_parser": "great_expectations"}),
    ]
    outcomes = _validate_probe(con, monkeypatch, passing)
    assert [(o.name, o.status) for o in outcomes] == [(n, "passed") for n, _, _ in passing]
    assert all(o.unexpected_count == 0 for o in outcomes if V.EXPECTATION_KINDS[o.expectation] == "map")


def test_without_the_duckdb_patch_gx_fails_silently_and_is_reported_as_errored(probe, monkeypatch):
    """Why the patch exists (GX #10738/#11579): with neither the persisted connection nor the
    autocommit connection (either alone avoids it: GX then fetches a result its pooled connection's
    ROLLBACK has not thrown away), GX returns success=False with result={} for everything; the
    outcomes must then say errored, never failed-with-a-count or passed."""
    from duckdb_engine import ConnectionWrapper
    from great_expectations.execution_engine import sqlalchemy_execution_engine as engine_module

    con = probe
    original = tuple(d for d in engine_module._PERSISTED_CONNECTION_DIALECTS if d != "duckdb")
    monkeypatch.setattr(engine_module, "_PERSISTED_CONNECTION_DIALECTS", original)
    monkeypatch.setattr(V, "_register_duckdb_with_gx", lambda: None)
    monkeypatch.setattr(V, "_autocommit_connection_class", lambda: ConnectionWrapper)
    outcomes = _validate_probe(con, monkeypatch, MUST_FAIL[:5] + MUST_FAIL[12:14])
    assert outcomes and all(o.errored and not o.passed and o.unexpected_count is None and o.error for o in outcomes)


def test_a_result_without_its_metric_is_errored_not_failed():
    """GX can also come back with success=False, result={} and no exception: that is not a failure."""
    from types import SimpleNamespace

    suite = _probe_suite([
        ("map", "expect_column_values_to_not_be_null", {"column": "code"}),
        ("aggregate", "expect_column_mean_to_be_between", {"column": "value", "max_value": 1}),
    ])
    silent = SimpleNamespace(result={}, success=False, exception_info={"raised_exception": False})
    nested = SimpleNamespace(result={}, success=False,
                             exception_info={"('column.mean', 'abc', ())": {"raised_exception": True, "exception_message": "boom"}})
    for item, message in ((silent, "silently"), (nested, "boom")):
        outcomes = [V._outcome(suite, spec, item) for spec in suite.expectations]
        assert all(o.errored and o.status == "errored" and message in o.error for o in outcomes)


def test_the_patch_is_pinned_to_tested_gx_versions(monkeypatch):
    import great_expectations as gx

    monkeypatch.setattr(gx, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="verified for GX 1.24.1"):
        V._register_duckdb_with_gx()


def test_errored_is_reported_apart_from_failed(probe, monkeypatch, tmp_path):
    con = probe
    outcomes = _validate_probe(con, monkeypatch, [
        # GX raises before any query (no such column) ...
        ("missing_column", "expect_column_values_to_not_be_null", {"column": "not_there"}),
        # ... and DuckDB raises inside GX's query (no mean of text): GX catches both in exception_info
        ("mean_of_text", "expect_column_mean_to_be_between", {"column": "free_text", "max_value": 1}),
        ("text_compared_with_number", "expect_column_values_to_be_between", {"column": "free_text", "max_value": 1}),
        # neither may spill over onto the expectations evaluated after them
        ("real_failure", "expect_column_values_to_not_be_null", {"column": "code"}),
        ("real_pass", "expect_column_values_to_not_be_null", {"column": "sex"}),
        ("real_mean", "expect_column_mean_to_be_between", {"column": "value", "max_value": 20}),
    ])
    assert [(o.name, o.status) for o in outcomes] == [
        ("missing_column", "errored"), ("mean_of_text", "errored"), ("text_compared_with_number", "errored"),
        ("real_failure", "failed"), ("real_pass", "passed"), ("real_mean", "failed")]
    assert "does not exist" in outcomes[0].error  # GX's own message, not a result without its metric
    assert all("Binder Error" in o.error for o in outcomes[1:3])  # DuckDB's, as GX caught it
    assert all(o.unexpected_count is None and o.observed_value is None and o.blocking_failure for o in outcomes[:3])
    assert outcomes[3].unexpected_count == 100 and json.loads(outcomes[5].observed_value) == pytest.approx(24.5)
    assert all(o.error is None for o in outcomes[3:])
    summary = V.summarize(outcomes)
    assert summary.startswith("1 of 6 expectations passed, 2 failed, 3 errored") and "BLOCKING" in summary
    # ... and apart in meta.dq_results and on the data-quality page
    prepare_warehouse(con)
    V.persist_delivery_results(con, "run", "probe_delivery", None, "patients", outcomes)
    stored = con.execute("SELECT expectation_name, passed, errored FROM meta.dq_results ORDER BY ALL").fetchall()
    assert stored == sorted((o.name, o.status == "passed", o.status == "errored") for o in outcomes)
    page = read_page(V.render_data_quality_page(con, "probe_delivery", tmp_path / "probe.html"))
    assert page.statuses == {f"probe.{o.name}": o.status for o in outcomes}
    # a relation that does not run errors every expectation of its suite, with the reason
    monkeypatch.setattr(V.Suite, "relation_sql", lambda self: "SELECT * FROM synthetic.no_such_table")
    suite = _probe_suite([("x", "expect_table_row_count_to_be_between", {"min_value": 1})])
    with V.WarehouseValidator(con) as validator:
        (outcome,) = validator.validate(suite)
    assert outcome.errored and "no_such_table" in outcome.error
    # error messages never carry data values (DuckDB quotes the value it could not convert)
    monkeypatch.setattr(V.Suite, "relation_sql", lambda self: "SELECT CAST(free_text AS INTEGER) AS n FROM synthetic.t")
    with V.WarehouseValidator(con) as validator:
        (outcome,) = validator.validate(_probe_suite([("n", "expect_column_values_to_not_be_null", {"column": "n"})]))
    assert outcome.errored and "Conversion" in outcome.error and "Alice" not in outcome.error


# -------------------------------------------------------------------- generated deliveries


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    root = tmp_path_factory.mktemp("defective")
    con, delivery_id, truth = generated_warehouse(root, patients=500, defects=0.04, seed=11)
    validation = V.validate_delivery(con, delivery_id)
    yield con, delivery_id, truth, validation
    con.close()


def test_each_planted_defect_is_caught_with_its_exact_count(defective):
    con, delivery_id, truth, validation = defective
    planted = truth["deliveries"][delivery_id]["defects"]
    checked = 0
    for kind, per_table in planted.items():
        for table, count in per_table.items():
            outcomes = by_name(validation.outcomes[table])
            key = f"delivered_{table}.{DEFECT_EXPECTATIONS[kind]}"
            if key not in outcomes:
                assert count == 0, f"{kind} planted in {table} but no expectation counts it"
                continue
            outcome = outcomes[key]
            assert not outcome.errored, (key, outcome.error)
            assert outcome.unexpected_count == count, (key, outcome.unexpected_count, count)
            assert outcome.passed == (count == 0), key  # any planted defect fails its (warn) expectation
            assert len(outcome.example_keys) == min(count, V.EXAMPLE_KEYS)
            checked += count > 0
    assert checked >= 15  # every applicable kind in every table was planted and found
    for table, names in STAGING_MIRRORS.items():
        outcomes = by_name(validation.outcomes[table])
        for name in names:
            assert outcomes[f"staging_{table}.{name}"].unexpected_count == 0, (table, name)


def test_defect_examples_are_the_defective_records(defective):
    con, delivery_id, _, validation = defective
    outcome = by_name(validation.outcomes["labs"])["delivered_labs.unknown_units"]
    records = [int(k) for k in outcome.example_keys]
    units = con.execute(
        "SELECT unit FROM raw.labs WHERE delivery_id = ? AND source_record IN (SELECT unnest(?))", [delivery_id, records]
    ).fetchall()
    assert len(units) == len(records) and all(u in ("mIU/mL", "U/L", "mg") for (u,) in units)


def test_a_moderately_defective_delivery_warns_but_does_not_block(defective):
    con, delivery_id, _, validation = defective
    every = [o for outcomes in validation.outcomes.values() for o in outcomes]
    assert not [o for o in every if o.errored], [(o.suite, o.name, o.error) for o in every if o.errored]
    assert validation.passed, V.summarize([o for o in every if o.blocking_failure])
    assert any(not o.passed and o.severity == "warn" for o in every)
    quarantined = dict(con.execute(
        "SELECT table_name, quarantined_rows FROM meta.ingest_counts WHERE delivery_id = ?", [delivery_id]).fetchall())
    for table in TABLES:
        share = by_name(validation.outcomes[table])[f"delivered_{table}.records_quarantined_share"]
        assert share.unexpected_count == quarantined[table]


def test_a_clean_delivery_passes_every_error_severity_check(tmp_path):
    con, delivery_id, truth = generated_warehouse(tmp_path, patients=300, defects=0.0, seed=5)
    assert not any(n for per_table in truth["deliveries"][delivery_id]["defects"].values() for n in per_table.values())
    validation = V.validate_delivery(con, delivery_id)
    every = [o for outcomes in validation.outcomes.values() for o in outcomes]
    assert len(every) == sum(len(s.expectations) for s in V.all_suites() if s.scope == "delivery")
    assert not [o for o in every if o.errored], [(o.suite, o.name, o.error) for o in every if o.errored]
    assert [f"{o.suite}.{o.name}" for o in every if o.severity == "error" and not o.passed] == []
    assert validation.passed


# ------------------------------------------------------------------------------ Dagster runs


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.external, self.tags, self.verdict, self.statuses = [], [], None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith("#"):
                self.external.append(attrs[name])
        if attrs.get("id") == "verdict":
            self.verdict = attrs.get("data-verdict")
        if attrs.get("data-expectation"):
            self.statuses[attrs["data-expectation"]] = attrs["data-status"]


def read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_partner_delivery_results_page_and_cohort_checks(partner_run):
    settings, _, instance, _ = partner_run
    delivery = PARTNER_DELIVERY.name
    # every delivery expectation persisted, with the new columns filled
    rows = query(settings, "SELECT suite, count(*), count(*) FILTER (passed), count(*) FILTER (errored), "
                           "count(DISTINCT expectation_name), min(data_cutoff) FROM meta.dq_results GROUP BY 1 ORDER BY 1")
    expected = {s.name: len(s.expectations) for s in V.all_suites() if s.scope == "delivery"}
    assert {r[0]: r[1] for r in rows} == expected
    assert all(r[1] == r[2] == r[4] and r[3] == 0 and r[5] == date(2025, 6, 30) for r in rows)
    assert query(settings, "SELECT validation_passed FROM meta.deliveries") == [(True,)]
    # the cohort checks ran on the quarter and passed
    cohort_rows = query(settings, "SELECT table_name, count(*), count(*) FILTER (passed) FROM meta.cohort_dq_results "
                                  "WHERE data_cutoff = DATE '2025-06-30' GROUP BY 1 ORDER BY 1")
    assert [r[0] for r in cohort_rows] == ["cohort.ai_episodes", "cohort.attrition", "cohort.members"]
    assert all(total == passed for _, total, passed in cohort_rows), cohort_rows
    checks = {
        r.event_log_entry.dagster_event.event_specific_data.check_name: r.event_log_entry.dagster_event.event_specific_data
        for r in instance.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION))
    }
    assert {"cohort_members_expectations", "cohort_attrition_expectations", "cohort_ai_episodes_expectations"} <= set(checks)
    evaluation = checks["staging_labs_expectations"]
    assert evaluation.passed and "expectations passed" in evaluation.description
    assert "records_quarantined_share" in evaluation.metadata["results"].value
    # the data-quality page: written, self-contained, shown on the dq_results asset
    page_path = settings.reports_dir / "data_quality" / f"{delivery}.html"
    materialization = instance.get_latest_materialization_event(dg.AssetKey(["meta", "dq_results"]))
    assert materialization.asset_materialization.metadata["data_quality_page"].value == str(page_path)
    page = read_page(page_path)
    assert page.verdict == "passed" and page.external == [] and "script" not in page.tags and "link" not in page.tags
    assert len(page.statuses) == sum(expected.values()) and set(page.statuses.values()) == {"passed"}
    html = page_path.read_text()
    assert "http://" not in html and "https://" not in html


def test_cohort_suites_catch_a_broken_cohort(partner_run, tmp_path):
    settings, _, _, _ = partner_run
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(settings.duckdb_path, copy)
    con = duckdb.connect(str(copy))
    cutoff = date(2025, 6, 30)
    con.execute("""
        UPDATE cohort.members SET follow_up_end = index_date - 1
        WHERE patient_key = (SELECT min(patient_key) FROM cohort.members WHERE data_cutoff = ? AND NOT ai_ever) AND data_cutoff = ?
    """, [cutoff, cutoff])
    con.execute("UPDATE cohort.attrition SET patients_remaining = patients_remaining + 1 "
                "WHERE step = 'positive_follow_up' AND data_cutoff = ?", [cutoff])
    outcomes = V.validate_quarter(con, cutoff, ["cohort.members", "cohort.attrition", "cohort.ai_episodes"])
    failed = {f"{o.suite}.{o.name}": o.unexpected_count for table in outcomes.values() for o in table if not o.passed}
    assert failed == {
        "cohort_members.follow_up_end_not_before_index": 1,
        "cohort_members.follow_up_days_match_dates": 1,
        "cohort_attrition.flow_balances": 2,  # the step itself and the one after it
        "cohort_attrition.cohort_step_matches_members": 1,
    }
    assert all(o.example_keys for table in outcomes.values() for o in table if not o.passed)
    assert not any(o.errored for table in outcomes.values() for o in table)


def test_a_delivery_failing_a_blocking_check_stops_downstream(tmp_path, monkeypatch):
    from pipelines.headless import PipelineError, run_pipeline

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    settings = Settings(landing_dir=tmp_path / "landing", duckdb_path=tmp_path / "warehouse.duckdb",
                        reports_dir=tmp_path / "reports")
    truth = generate(settings.landing_dir, patients=250, seed=3, defects=0.25)
    (delivery_id,) = truth["deliveries"]
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(PipelineError) as failure:
        run_pipeline(settings, progress=lambda _: None, instance=instance)
    # the run says why: which check, which expectation, how many rows
    assert "staging_patients_expectations" in str(failure.value)
    assert "delivered_patients.records_quarantined_share" in str(failure.value)
    # results persisted and the delivery marked as not validated ...
    assert query(settings, "SELECT validation_passed FROM meta.deliveries") == [(False,)]
    failed = query(settings, "SELECT table_name, suite, expectation_name, unexpected_count FROM meta.dq_results "
                             "WHERE severity = 'error' AND NOT passed ORDER BY ALL")
    assert ("patients", "delivered_patients", "records_quarantined_share") in [f[:3] for f in failed]
    assert all(f[3] and f[3] > 0 for f in failed)
    # ... and nothing downstream: neither meta/dq_results nor any cohort, model or report asset
    materialized = {key.to_user_string() for key in instance.get_asset_keys()
                    if instance.get_latest_materialization_event(key)}
    assert materialized <= {f"staging/{t}" for t in (*TABLES, "fractures")} | {"quarantine/rows"}
    assert "meta/dq_results" not in materialized and not any(k.startswith(("cohort/", "results/")) for k in materialized)
    # the analyst still gets the page, and it says the delivery is blocked and why
    page = read_page(settings.reports_dir / "data_quality" / f"{delivery_id}.html")
    assert page.verdict == "blocked"
    assert page.statuses["delivered_patients.records_quarantined_share"] == "failed"


def test_results_tables_of_a_fresh_warehouse(tmp_path):
    con = duckdb.connect(str(tmp_path / "fresh.duckdb"))
    prepare_warehouse(con)
    V.ensure_results_tables(con)
    delivery = {r[0] for r in con.execute("DESCRIBE meta.dq_results").fetchall()}
    cohort = {r[0] for r in con.execute("DESCRIBE meta.cohort_dq_results").fetchall()}
    shared = {"suite", "expectation_name", "threshold", "dqd_check", "element_count", "data_cutoff", "passed",
              "errored", "unexpected_count", "example_records", "category", "severity"}
    assert shared <= delivery and shared <= cohort and "delivery_id" in delivery and "delivery_id" not in cohort
    comment = con.execute("SELECT comment FROM duckdb_tables() WHERE schema_name = 'meta' AND table_name = 'dq_results'").fetchone()[0]
    assert "latest validation of the delivery" in comment