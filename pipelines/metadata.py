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


def preview(con: duckdb.DuckDBPyConnection, table: str, where: str, params: list) -> dg.MetadataValue:
    """A few rows (pseudonymous keys only: identifiers never reach staging) as a markdown table."""
    frame = con.execute(f"SELECT * FROM {table} WHERE {where} LIMIT {PREVIEW_ROWS}", params).df()
    return dg.MetadataValue.md(markdown_table(frame))
