"""Metadata every table asset shows an analyst in the UI: its documented columns and a preview."""

import dagster as dg
import duckdb

from cohort.display import markdown_table

PREVIEW_ROWS = 5


def column_schema(con: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    """The table's columns with their types and COMMENT ON descriptions."""
    columns = con.execute(
        "SELECT column_name, data_type, comment FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name || '.' || table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    return dg.TableSchema(columns=[dg.TableColumn(name, type_, description=comment) for name, type_, comment in columns])


# Quasi-identifiers a preview never shows, even date-shifted: dates, birth year, race, ethnicity and
# record numbers. What remains (pseudonymous key, codes, values) is enough to judge the table.
HIDDEN_TYPES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE")
HIDDEN_COLUMNS = ("birth_year", "race", "ethnicity", "source_record", "source_line", "delivery_id")


def preview(con: duckdb.DuckDBPyConnection, table: str, where: str, params: list) -> dg.MetadataValue:
    """A few rows, without dates and other quasi-identifiers, as a markdown table."""
    shown = [
        name for name, type_ in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name || '.' || table_name = ? ORDER BY column_index", [table]
        ).fetchall()
        if type_ not in HIDDEN_TYPES and name not in HIDDEN_COLUMNS
    ]
    columns = ", ".join(f'"{name}"' for name in shown)
    frame = con.execute(f"SELECT {columns} FROM {table} WHERE {where} LIMIT {PREVIEW_ROWS}", params).df()
    return dg.MetadataValue.md(markdown_table(frame))
