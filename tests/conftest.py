"""Shared fixtures: real DuckDB files, real Dagster runs, in temporary folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from cohort.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
PARTNER_DELIVERY = FIXTURES / "partner_delivery" / "northside_2025q2"


@pytest.fixture
def workspace(tmp_path: Path) -> Settings:
    """An empty landing folder, warehouse path and reports folder under tmp_path."""
    settings = Settings(
        landing_dir=tmp_path / "landing", duckdb_path=tmp_path / "warehouse.duckdb", reports_dir=tmp_path / "reports",
        published_dir=tmp_path / "published",
    )
    settings.landing_dir.mkdir()
    return settings


def land(settings: Settings, delivery: Path) -> Path:
    """Copy a delivery folder into the landing zone."""
    return Path(shutil.copytree(delivery, settings.landing_dir / delivery.name))


def query(settings: Settings, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def latest_metadata(instance: dg.DagsterInstance, *key: str) -> dict:
    """The metadata of the asset's latest materialization, as the UI shows it."""
    return instance.get_latest_materialization_event(dg.AssetKey(list(key))).asset_materialization.metadata


@pytest.fixture(scope="session")
def partner_run(tmp_path_factory):
    """The whole pipeline, once, on a delivery written by hand (not by our generator)."""
    from pipelines.headless import run_pipeline

    root = tmp_path_factory.mktemp("partner")
    settings = Settings(landing_dir=root / "landing", duckdb_path=root / "warehouse.duckdb", reports_dir=root / "reports",
                        published_dir=root / "published")
    settings.landing_dir.mkdir()
    land(settings, PARTNER_DELIVERY)
    instance = dg.DagsterInstance.ephemeral()
    lines: list[str] = []
    summary = run_pipeline(settings, progress=lines.append, instance=instance)
    return settings, summary, instance, lines
