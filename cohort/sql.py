"""Run the project's SQL files (sql/**/*.sql) against a DuckDB connection.

Parameters reach the SQL as DuckDB variables (`SET VARIABLE x = ...`, read with
`getvariable('x')`), so every file also runs as-is in the DuckDB CLI after setting them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from cohort.settings import SQL_DIR


def sql_text(name: str, **identifiers: str) -> str:
    """The text of `sql/<name>.sql`; `identifiers` fill `{placeholders}` (table names from code, never data)."""
    text = (SQL_DIR / f"{name}.sql").read_text()
    return text.format(**identifiers) if identifiers else text


def set_variables(con: duckdb.DuckDBPyConnection, **variables: Any) -> None:
    for key, value in variables.items():
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, date):
            con.execute(f"SET VARIABLE {key} = ?::DATE", [value.isoformat()])
        else:
            con.execute(f"SET VARIABLE {key} = ?", [value])


def run_sql(con: duckdb.DuckDBPyConnection, name: str, identifiers: dict[str, str] | None = None, **variables: Any) -> None:
    """Execute every statement of `sql/<name>.sql` with the given variables set."""
    set_variables(con, **variables)
    con.execute(sql_text(name, **(identifiers or {})))
