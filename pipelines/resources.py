"""Resources, built in one place from the environment (cohort.settings) and swappable in tests."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cohort.settings import Settings


class Warehouse(DuckDBResource):
    """The DuckDB warehouse file. Unlike the base resource, the connection is closed even when the
    step fails, so a failed step never leaves the file locked for the rest of the process."""

    lock_wait_seconds: float = 120.0

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        con = self._connect_waiting_for_lock()
        try:
            yield con
        finally:
            con.close()

    def _connect_waiting_for_lock(self) -> duckdb.DuckDBPyConnection:
        # Another process (a reader, another run) may hold the file; DuckDB allows one writer.
        deadline = time.monotonic() + self.lock_wait_seconds
        while True:
            try:
                return duckdb.connect(self.database, config=self.connection_config)
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


class Locations(dg.ConfigurableResource):
    """Where deliveries land, where reports go and where read-only copies are published."""

    landing_dir: str
    reports_dir: str
    published_dir: str = ""

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir)

    @property
    def reports(self) -> Path:
        return Path(self.reports_dir)

    @property
    def published(self) -> Path:
        return Path(self.published_dir)


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or Settings.from_env()
    return {
        "warehouse": Warehouse(database=str(settings.duckdb_path)),
        "locations": Locations(
            landing_dir=str(settings.landing_dir),
            reports_dir=str(settings.reports_dir),
            published_dir=str(settings.published_dir),
        ),
    }
