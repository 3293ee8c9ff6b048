"""What an analyst reads in the UI: every asset described, every table asset's columns declared up
front and equal to the real table's, and no count under the small-cell threshold shown or derivable."""

import re

import dagster as dg
import duckdb
import pytest

from cohort.ingest import IngestOutcome
from cohort.settings import PROJECT_ROOT
from cohort.validation import ExpectationOutcome, summarize
from pipelines.definitions import defs
from tests.conftest import latest_metadata
from pipelines.metadata import (
    attrition_flow,
    cohort_ledger,
    declared_column_schema,
    ingest_ledger,
    row_count,
    shown_outcome,
)

TABLE_SCHEMAS = {"raw", "staging", "quarantine", "cohort", "analysis", "results", "meta"}
SQL_PATH = re.compile(r"sql/[\w/]+\.sql")
THRESHOLD = 11
GRAPH = defs.resolve_asset_graph()
KEYS = sorted(GRAPH.get_all_asset_keys(), key=lambda k: k.to_user_string())
TABLE_KEYS = [k for k in KEYS if len(k.path) == 2 and k.path[0] in TABLE_SCHEMAS]


def _ids(keys):
    return [k.to_user_string() for k in keys]


# ------------------------------------------------------------------------- definitions in the UI


@pytest.mark.parametrize("key", KEYS, ids=_ids(KEYS))
def test_every_asset_has_group_kinds_owners_and_description(key):
    node = GRAPH.get(key)
    assert node.group_name in {"ingest", "validation", "cohort", "models", "reports"}
    assert node.kinds and node.owners
    assert node.description and len(node.description) > 40


@pytest.mark.parametrize("key", KEYS, ids=_ids(KEYS))
def test_descriptions_name_existing_sql_files(key):
    node = GRAPH.get(key)
    named = SQL_PATH.findall(node.description)
    if "sql" in node.kinds:
        assert named, f"{key.to_user_string()} runs SQL but its description names no sql/ file"
    missing = [path for path in named if not (PROJECT_ROOT / path).is_file()]
    assert not missing, f"{key.to_user_string()} names SQL files that do not exist: {missing}"


def test_check_descriptions_name_existing_sql_files():
    specs = [spec for check in defs.asset_checks for spec in check.check_specs]
    named = {path for spec in specs for path in SQL_PATH.findall(spec.description or "")}
    assert len(named) >= 10
    assert not [path for path in named if not (PROJECT_ROOT / path).is_file()]


def test_table_assets_are_found():
    # the rule below must not pass by finding nothing
    assert {"staging/labs", "quarantine/rows", "cohort/members", "cohort/attrition", "meta/dq_results"} <= set(
        _ids(TABLE_KEYS)
    )


@pytest.mark.parametrize("key", TABLE_KEYS, ids=_ids(TABLE_KEYS))
def test_table_assets_declare_the_columns_of_the_real_table(key, partner_run):
    """Declared in the definition (visible before any materialization), equal to the table the
    pipeline built, every column described."""
    settings, _, _, _ = partner_run
    table = ".".join(key.path)
    schema = GRAPH.get(key).metadata.get("dagster/column_schema")
    assert isinstance(schema, dg.TableSchema) and schema.columns, f"{table} declares no column schema"
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        actual = [name for (name,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
            key.path,
        ).fetchall()]
    assert [c.name for c in schema.columns] == actual
    assert all(c.description for c in schema.columns), [c.name for c in schema.columns if not c.description]


def test_declared_schema_comes_from_the_ddl():
    schema = declared_column_schema("cohort.members")
    columns = {c.name: c for c in schema.columns}
    assert columns["index_date"].type == "DATE"
    assert columns["index_date"].description == "First testosterone dispensing after the washout."  # COMMENT ON
    assert "pseudonym" in columns["patient_key"].description  # sql/warehouse/column_docs.csv
    with pytest.raises(KeyError):
        declared_column_schema("cohort.no_such_table")


# ------------------------------------------------------------------------- small-cell suppression


def _numbers(text: str) -> set[int]:
    """Every whole number a reader sees in a text (thousands separators allowed)."""
    return {int(n.replace(",", "")) for n in re.findall(r"(?<![\w.])\d[\d,]*(?![\w.]\d)", text)}


def _ingest_case():
    counts = {
        "labs": {"raw": 520, "staging": 517, "quarantined": 3, "duplicates": 0},
        "patients": {"raw": 40, "staging": 40, "quarantined": 0, "duplicates": 0},
    }
    reasons = [("labs", "non_numeric_result", "result", 3)]
    return IngestOutcome("site_2025q2", "loaded", counts=counts, quarantine_reasons=reasons), counts, reasons


def test_row_count_is_an_int_only_when_it_may_be_shown():
    from cohort.suppression import Ledger

    ledger = Ledger(THRESHOLD)
    small, zero, large = ledger.count("small", 3), ledger.count("zero", 0), ledger.count("large", 519)
    ledger.solve()
    assert row_count(small) == {"row_count": "<11"}
    assert row_count(zero) == {"dagster/row_count": 0}
    assert row_count(large) == {"dagster/row_count": 519}


def test_ingest_counts_are_suppressed_with_their_complements():
    from assets.ingest import _layers_table, _reasons_plot, _reasons_table

    outcome, counts, reasons = _ingest_case()
    ledger = ingest_ledger(counts, reasons, fractures=3, threshold=THRESHOLD)
    labs = {layer: ledger.text(("labs", layer)) for layer in ("raw", "staging", "quarantined", "duplicates")}
    assert labs["quarantined"] == "<11" and labs["duplicates"] == "0"
    assert ledger.text(("labs", "reason", "non_numeric_result", "result")) == "<11"
    assert ledger.text("quarantined") == "<11"  # quarantine/rows' row count
    assert ledger.text("fractures") == "<11"
    assert "dagster/row_count" not in row_count(ledger.get("fractures"))
    # raw - staging - duplicates would give the 3 away: the cheaper of raw and staging is hidden
    assert labs["raw"] == "520" and labs["staging"] == "hidden"
    assert "dagster/row_count" not in row_count(ledger.get(("labs", "staging")))
    # what the UI renders: no small count anywhere
    shown = _layers_table(ledger) + _reasons_table(ledger, outcome)
    shown += _reasons_plot(ledger, outcome).value.split(")", 1)[-1]  # the table under the image
    assert not {n for n in _numbers(shown) if 0 < n < THRESHOLD}, shown


def test_a_small_bar_is_not_drawn():
    from cohort.figures import bar_figure

    figure = bar_figure(["a", "b"], [3, 500], "t", "rows", texts=["<11", "500"])
    widths = {bar.get_width() for bar in figure.axes[0].patches}
    assert 3 not in widths and widths == {0, 500}
    assert "<11" in [text.get_text() for text in figure.axes[0].texts]


STEPS = [
    ("source_population", 1200, 0),
    ("sex_at_birth", 1100, 100),
    ("testosterone_user", 520, 580),
    ("new_user", 517, 3),  # an excluded count of 3 ...
    ("positive_follow_up", 400, 117),
    ("follow_up_dxa", 250, 150),
]


def test_cohort_flow_hides_a_small_exclusion_and_what_would_give_it_away():
    ledger, cohort_step = cohort_ledger(STEPS, rows=400, members=400, in_bmd_analysis=250, ai_ever=120,
                                        threshold=THRESHOLD)
    flow = attrition_flow(ledger, [(step, step.replace("_", " ")) for step, _, _ in STEPS], cohort_step)
    shown = {f["step"]: f for f in flow}
    assert shown["new_user"]["excluded"] == "<11"
    # ... not recoverable as testosterone_user remaining - new_user remaining
    assert "hidden" in (shown["testosterone_user"]["remaining"], shown["new_user"]["remaining"])
    # nor through the next step (new_user remaining = positive_follow_up remaining + its excluded)
    assert "hidden" in (shown["new_user"]["remaining"], shown["positive_follow_up"]["excluded"]) or \
        shown["positive_follow_up"]["remaining"] == "hidden"
    assert [f["cohort"] for f in flow] == [False, False, False, False, True, False]
    assert ledger.text(("n", "all")) == "400"  # the cohort size is locked, as in the report
    texts = " ".join(f"{f['remaining']} {f['excluded']}" for f in flow)
    assert 3 not in _numbers(texts) and 517 not in _numbers(texts)


def test_the_no_ai_group_cannot_be_derived_from_the_cohort_size():
    # 400 members, 397 ever on an AI: the 3 never on one follow by subtraction unless 397 is hidden
    ledger, _ = cohort_ledger(STEPS, rows=400, members=400, in_bmd_analysis=250, ai_ever=397, threshold=THRESHOLD)
    assert ledger.text(("n", "all")) == "400"
    assert ledger.text(("n", "AI during follow-up")) == "hidden"


def test_attrition_metadata_shows_no_small_count():
    from assets.cohort import _flow_plot, _flow_table

    ledger, cohort_step = cohort_ledger(STEPS, rows=400, members=400, in_bmd_analysis=250, ai_ever=120,
                                        threshold=THRESHOLD)
    flow = attrition_flow(ledger, [(step, "step") for step, _, _ in STEPS], cohort_step)
    table = _flow_table(flow)
    assert "<11" in table and "hidden" in table
    assert not {n for n in _numbers(table) if 0 < n < THRESHOLD}
    assert _flow_plot(flow).value.startswith("![cohort flow](data:image/png;base64,")


def _outcome(**changes) -> ExpectationOutcome:
    base = dict(
        suite="staging_labs", name="value_in_range", expectation="expect_column_values_to_be_between",
        column="value", category="plausibility", severity="error", threshold=0.0, dqd_check=None, passed=False,
        errored=False, observed_value="0.3% of 1,000 rows", unexpected_count=3, unexpected_percent=0.3,
        element_count=1000, example_keys=("11", "57", "301"),
    )
    return ExpectationOutcome(**{**base, **changes})


def test_data_quality_unexpected_counts_are_suppressed():
    from assets.validation import _results_frame

    small = _outcome()
    shown = shown_outcome(small, THRESHOLD)
    assert shown.unexpected_count is None and shown.unexpected_percent is None and shown.example_keys == ()
    assert 3 not in _numbers(shown.observed_value)
    assert " 3 rows" not in summarize([shown]) and "<11" in summarize([shown])
    row = _results_frame([small], THRESHOLD).iloc[0]
    assert row["unexpected"] == "<11" and row["unexpected_%"] == "" and row["example_rows"] == ""
    # a count of 0 rows unexpected among 5 checked: the 5 is a small count too
    few_checked = shown_outcome(_outcome(passed=True, unexpected_count=0, unexpected_percent=0.0,
                                         observed_value="0% of 5 rows", element_count=5), THRESHOLD)
    assert few_checked.observed_value == "0% of <11 rows"
    large = shown_outcome(_outcome(unexpected_count=40, unexpected_percent=4.0, observed_value="4% of 1,000 rows"),
                          THRESHOLD)
    assert large.unexpected_count == 40 and large.observed_value == "4% of 1,000 rows"


def test_data_quality_plot():
    import pandas as pd

    from assets.validation import _dq_plot

    summary = pd.DataFrame({"table_name": ["labs", "labs"], "category": ["conformance", "plausibility"],
                            "expectations": [10, 4], "passed": [9, 3], "failed": [1, 0], "errored": [0, 1]})
    assert _dq_plot(summary).value.startswith("![data-quality results](data:image/png;base64,")


def test_materializations_of_a_real_run_show_no_small_count(partner_run):
    """The partner delivery quarantines one lab record: its count, and the staging row count it
    could be derived from, are not shown."""
    _, _, instance, _ = partner_run

    labs = latest_metadata(instance, "staging", "labs")
    assert labs["quarantined_rows"].value == "<11"
    assert "dagster/row_count" not in labs and labs["row_count"].value == "hidden"
    quarantine = latest_metadata(instance, "quarantine", "rows")
    assert "dagster/row_count" not in quarantine
    assert "<11" in quarantine["rows_per_layer"].value
    attrition = latest_metadata(instance, "cohort", "attrition")
    assert attrition["attrition_plot"].value.startswith("![cohort flow](data:image/png;base64,")
    assert not {n for n in _numbers(attrition["attrition"].value) if 0 < n < THRESHOLD}
    dq = latest_metadata(instance, "meta", "dq_results")
    assert dq["results_plot"].value.startswith("![data-quality results](data:image/png;base64,")
