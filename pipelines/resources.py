"""Resources, built in one place from the environment (cohort.settings) and swappable in tests."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from pydantic import ValidationError

from cohort.protocol import Protocol, ProtocolError, load_protocol
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


# Launchpad field -> (protocol section, key): the protocol values an analyst may override for a run.
PROTOCOL_OVERRIDES = {
    "min_age_at_index": ("population", "min_age_at_index"),
    "washout_days": ("new_users", "washout_days"),
    "prior_fracture_days": ("exclusions", "prior_fracture_days"),
    "baseline_scan_days_before": ("bmd_analysis", "baseline_scan_days_before"),
    "baseline_scan_days_after": ("bmd_analysis", "baseline_scan_days_after"),
    "grace_period_days": ("exposure", "grace_period_days"),
    "e2_lookback_days": ("estradiol", "lookback_days"),
    "e2_tier_bounds_pg_ml": ("estradiol", "tier_bounds_pg_ml"),
    "e2_lcms_only": ("estradiol", "lcms_only"),
}


class StudyProtocol(dg.ConfigurableResource):
    """The study protocol: sql/cohort/protocol.toml, with optional per-run overrides set in the
    launchpad (resources -> protocol -> config). Unset fields keep the file's value; the merged
    protocol is validated and a bad value fails the run with the field and the reason."""

    min_age_at_index: Optional[int] = None
    washout_days: Optional[int] = None
    prior_fracture_days: Optional[int] = None
    baseline_scan_days_before: Optional[int] = None
    baseline_scan_days_after: Optional[int] = None
    grace_period_days: Optional[int] = None
    e2_lookback_days: Optional[int] = None
    e2_tier_bounds_pg_ml: Optional[list[float]] = None
    e2_lcms_only: Optional[bool] = None

    def load(self) -> Protocol:
        base = load_protocol()
        data = base.model_dump()
        for field, (section, key) in PROTOCOL_OVERRIDES.items():
            if (value := getattr(self, field)) is not None:
                data[section][key] = value
        try:
            return Protocol.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{next((f for f, target in PROTOCOL_OVERRIDES.items() if target == tuple(e['loc'][:2])), '.'.join(map(str, e['loc'])))}: {e['msg']}"
                for e in error.errors()
            )
            raise ProtocolError(f"protocol overrides are invalid: {problems}") from None


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or Settings.from_env()
    return {
        "warehouse": Warehouse(database=str(settings.duckdb_path),
                               connection_config=settings.duckdb_config),
        "protocol": StudyProtocol(),
        "locations": Locations(
            landing_dir=str(settings.landing_dir),
            reports_dir=str(settings.reports_dir),
            published_dir=str(settings.published_dir),
        ),
    }
