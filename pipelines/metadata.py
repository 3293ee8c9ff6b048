"""Metadata every asset shows an analyst in the UI: its documented columns (declared up front and
read back at materialization), a preview, where its SQL lives, and its counts small-cell suppressed.

The code location imports this module: nothing heavy at import time (suppression's numpy and
scipy, pandas, matplotlib are imported by the functions that run during a materialization)."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Iterable

import dagster as dg
import duckdb

from cohort.display import markdown_table
from cohort.settings import SQL_DIR

if TYPE_CHECKING:
    from cohort.suppression import Count, Ledger

PREVIEW_ROWS = 5


def sql_description(meaning: str, table: str, *sql_files: str) -> str:
    """An asset description: what it means clinically, then the table and the SQL file(s) it runs
    (paths under sql/, e.g. "cohort/members"), the way every table asset says it."""
    files = ", ".join(f"`sql/{name}.sql`" for name in sql_files)
    return f"{meaning} Table `{table}`. SQL: {files}."


# ------------------------------------------------------------------------------- column schemas

_COLUMNS_SQL = (
    "SELECT schema_name || '.' || table_name, column_name, data_type, comment FROM duckdb_columns() "
    "WHERE database_name = current_database() {where} ORDER BY schema_name, table_name, column_index"
)


def _table_schema(columns: Iterable[tuple[str, str, str | None]]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, type_, description=comment) for name, type_, comment in columns])


def column_schema(con: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    """The table's columns in a warehouse, with their types and COMMENT ON descriptions."""
    rows = con.execute(_COLUMNS_SQL.format(where="AND schema_name || '.' || table_name = ?"), [table]).fetchall()
    return _table_schema(row[1:] for row in rows)


# The DDL of every warehouse table, in the order the pipeline runs it (sql/models/*.sql are the
# results tables).
DDL_FILES = ("warehouse/schema", "validation/results_schema", "cohort/schema")
# COMMENT ON COLUMN a.b.c IS '...': most of the DDL's statements, and the slowest to run (half a
# millisecond each), so their text is read here; any other form is run by DuckDB.
_COLUMN_COMMENT = re.compile(r"\s*COMMENT\s+ON\s+COLUMN\s+(\w+)\.(\w+)\.(\w+)\s+IS\s+'((?:[^']|'')*)'\s*;?\s*\Z", re.I)


@functools.cache
def _declared_columns() -> dict[str, list[tuple[str, str, str | None]]]:
    """Every table's columns as the DDL declares them, described as the warehouse describes them
    (COMMENT ON, else sql/warehouse/column_docs.csv: cohort.dictionary). The DDL runs once in an
    in-memory DuckDB (about 0.15 s of CPU), so a definition carries its schema without opening the
    warehouse, which a run may hold locked or which may not exist yet."""
    from cohort.dictionary import _column_docs, describe_column

    texts = [(SQL_DIR / f"{name}.sql").read_text() for name in DDL_FILES]
    texts += [path.read_text() for path in sorted((SQL_DIR / "models").glob("*.sql"))]
    comments: dict[tuple[str, str, str], str] = {}
    con = duckdb.connect(":memory:")
    try:
        for text in texts:
            for statement in con.extract_statements(text):
                if match := _COLUMN_COMMENT.match(statement.query):
                    comments[match.group(1, 2, 3)] = match.group(4).replace("''", "'")
                elif not statement.query.lstrip().upper().startswith("COMMENT ON TABLE"):
                    con.execute(statement)
        docs = {**_column_docs(con), **comments}
        rows = con.execute(_COLUMNS_SQL.format(where="")).fetchall()
    finally:
        con.close()
    tables: dict[str, list[tuple[str, str, str | None]]] = {}
    for table, column, type_, _ in rows:
        schema, name = table.split(".", 1)
        tables.setdefault(table, []).append((column, type_, describe_column(docs, schema, name, column)))
    return tables


def declared_column_schema(table: str) -> dg.TableSchema:
    """`dagster/column_schema` of a warehouse table ("schema.table") for its asset definition, from
    the DDL in sql/ and the descriptions in sql/warehouse/column_docs.csv; KeyError if no DDL declares it."""
    columns = _declared_columns()
    if table not in columns:
        raise KeyError(f"no DDL in sql/ declares table {table!r}")
    return _table_schema(columns[table])


def table_metadata(table: str) -> dict:
    """Definition metadata of a table asset: its declared column schema (shown before any materialization)."""
    return {"dagster/column_schema": declared_column_schema(table)}


# ------------------------------------------------------------------------------------- previews

# Quasi-identifiers a preview never shows, even date-shifted: dates, birth year, race, ethnicity and
# record numbers. What remains (pseudonymous key, codes, values) is enough to judge the table.
HIDDEN_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
HIDDEN_COLUMNS = ("birth_year", "race", "ethnicity", "source_record", "source_line", "delivery_id")


def preview(con: duckdb.DuckDBPyConnection, table: str, where: str, params: list) -> dg.MetadataValue:
    """A few rows, without dates and other quasi-identifiers, as a markdown table."""
    shown = [
        name for _, name, type_, _ in con.execute(
            _COLUMNS_SQL.format(where="AND schema_name || '.' || table_name = ?"), [table]
        ).fetchall()
        if type_ not in HIDDEN_TYPES and name not in HIDDEN_COLUMNS
    ]
    columns = ", ".join(f'"{name}"' for name in shown)
    frame = con.execute(f"SELECT {columns} FROM {table} WHERE {where} LIMIT {PREVIEW_ROWS}", params).df()
    return dg.MetadataValue.md(markdown_table(frame))


# ----------------------------------------------------------------------- small-cell suppression
#
# Every count an asset shows goes through one cohort.suppression.Ledger per materialization (one
# run's metadata is read together), with the exact relations a reader knows between the counts,
# so a count under the threshold can neither be read nor derived by subtraction.


def small_cell_threshold() -> int:
    """The protocol's threshold: counts 1..threshold-1 are not shown (sql/cohort/protocol.toml)."""
    from cohort.protocol import load_protocol

    return load_protocol().reporting.small_cell_threshold


def row_count(count: Count) -> dict:
    """The row count of a materialization. `dagster/row_count` must be an integer, and the UI plots it
    across materializations as a true number, so a suppressed count is left out rather than replaced
    by a false one (0 or the threshold); its text ("<11", "hidden") goes under `row_count` instead."""
    return {"dagster/row_count": count.value} if count.shown else {"row_count": count.text}


def _total_if_exact(ledger: Ledger, total: Count, parts: list[Count]) -> None:
    # Only a relation that holds is one a reader can use (and Ledger refuses any other).
    if total.value == sum(p.value for p in parts):
        ledger.total(total.key, [p.key for p in parts])


INGEST_LAYERS = ("raw", "staging", "quarantined", "duplicates")


def ingest_ledger(
    counts: dict[str, dict[str, int]], reasons: list[tuple[str, str, str, int]], fractures: int, threshold: int
) -> Ledger:
    """The counts an ingest run shows, solved: per table raw = staging + quarantined + duplicates and
    quarantined = the sum of its quarantine reasons, the quarantined total across tables (the row count
    of quarantine.rows), and the staged fractures. Keys: (table, layer), (table, "reason", rule,
    column), "quarantined", "fractures"."""
    from cohort.suppression import Ledger

    ledger = Ledger(threshold)
    per_table = []
    for table, layers in sorted(counts.items()):
        raw, staging, quarantined, duplicates = (ledger.count((table, layer), layers.get(layer, 0)) for layer in INGEST_LAYERS)
        _total_if_exact(ledger, raw, [staging, quarantined, duplicates])
        causes = [ledger.count((t, "reason", rule, column), n) for t, rule, column, n in reasons if t == table]
        if causes:
            _total_if_exact(ledger, quarantined, causes)
        per_table.append(quarantined)
    _total_if_exact(ledger, ledger.count("quarantined", sum(q.value for q in per_table)), per_table)
    ledger.count("fractures", fractures)
    ledger.solve()
    return ledger


def cohort_ledger(
    steps: list[tuple[str, int, int]], rows: int, members: int, in_bmd_analysis: int, ai_ever: int, threshold: int
) -> tuple[Ledger, int | None]:
    """The counts a cohort build shows, solved: the cohort flow (cohort.attrition: step, patients
    remaining, excluded at the step), the rows of cohort.members (one per member), the cohort size
    (locked, as in the report), the members in the BMD analysis (the last step) and those ever on an
    AI. The members never on an AI are not shown but follow by subtraction, so they are registered
    too: when they are few, the AI count is hidden. Keys: "rows", ("n", "all"),
    ("attrition_remaining", step), ("attrition_excluded", step), "in_bmd_analysis",
    ("n", "AI during follow-up"), ("n", "No AI"). Returns the ledger and the index of the cohort step."""
    from cohort.suppression import Ledger, register_flow

    ledger = Ledger(threshold)
    size = ledger.count(("n", "all"), members)
    ledger.lock(size.key)
    if ledger.count("rows", rows).value == members:
        ledger.equal("rows", size.key)
    remaining, _, cohort_step = register_flow(ledger, steps, cohort_total=size.key)
    bmd = ledger.count("in_bmd_analysis", in_bmd_analysis)
    if remaining and remaining[-1].value == bmd.value:
        ledger.equal(bmd.key, remaining[-1].key)
    groups = [ledger.count(("n", "AI during follow-up"), ai_ever), ledger.count(("n", "No AI"), members - ai_ever)]
    _total_if_exact(ledger, size, groups)
    ledger.solve()
    return ledger, cohort_step


def attrition_flow(ledger: Ledger, attrition: list[tuple[str, str]], cohort_step: int | None) -> list[dict]:
    """The cohort flow as shown, from a solved cohort_ledger: per step of cohort.attrition (step,
    description) its suppressed remaining and excluded texts, and whether it is the study cohort."""
    return [
        {
            "step": step,
            "description": description,
            "remaining": ledger.text(("attrition_remaining", step)),
            "excluded": ledger.text(("attrition_excluded", step)),
            "cohort": i == cohort_step,
        }
        for i, (step, description) in enumerate(attrition)
    ]


def table_count_ledger(rows: int, patients: int, threshold: int) -> Ledger:
    """A cohort or analysis table's row and patient counts, solved (no relation between them)."""
    from cohort.suppression import Ledger

    ledger = Ledger(threshold)
    ledger.count("rows", rows)
    ledger.count("patients", patients)
    ledger.solve()
    return ledger


def shown_outcome(outcome, threshold: int):
    """A data-quality outcome (cohort.validation.ExpectationOutcome) as it may be shown: a small
    unexpected count is withheld, with the percentage, the observed text ("x% of n rows") and the
    example row keys (as many as the count, up to five) it could be recomputed from; other small numbers in the observed text (rows checked, a row count) are
    suppressed. Counts of expectations are not counts of people or records and are shown as they are."""
    from dataclasses import replace

    from cohort.display import suppress_count, suppress_numbers_in_text

    if outcome.unexpected_count is not None and 0 < outcome.unexpected_count < threshold:
        return replace(outcome, unexpected_count=None, unexpected_percent=None, example_keys=(),
                       observed_value=f"{suppress_count(outcome.unexpected_count, threshold)} rows unexpected")
    return replace(outcome, observed_value=suppress_numbers_in_text(outcome.observed_value, threshold))
