"""Resources, built in one place from the environment (cohort.settings) and swappable in tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from cohort.settings import Settings


class Warehouse(DuckDBResource):
    """The DuckDB warehouse file; creates its folder on first use."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as con:
            yield con


class Locations(dg.ConfigurableResource):
    """Where deliveries land and where reports go."""

    landing_dir: str
    reports_dir: str

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir)

    @property
    def reports(self) -> Path:
        return Path(self.reports_dir)


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or Settings.from_env()
    return {
        "warehouse": Warehouse(database=str(settings.duckdb_path)),
        "locations": Locations(landing_dir=str(settings.landing_dir), reports_dir=str(settings.reports_dir)),
    }
