"""The quarterly schedule asks for the quarter that just closed; the sensor for new deliveries."""

import json
import shutil
from datetime import date, datetime, timezone

import dagster as dg
import pytest

from pipelines.partitions import quarter_cutoff, quarter_key, quarter_label
from pipelines.resources import Locations
from pipelines.schedules import closed_quarter_key, quarterly_report_schedule
from pipelines.sensors import delivery_sensor
from tests.conftest import PARTNER_DELIVERY


@pytest.mark.parametrize(
    "tick, partition",
    [
        (datetime(2025, 7, 5, 6, tzinfo=timezone.utc), "2025-04-01"),
        (datetime(2025, 1, 5, 6, tzinfo=timezone.utc), "2024-10-01"),
        (datetime(2024, 4, 5, 6, tzinfo=timezone.utc), "2024-01-01"),
    ],
)
def test_schedule_tick_requests_the_closed_quarter(tick, partition):
    context = dg.build_schedule_context(scheduled_execution_time=tick)
    request = quarterly_report_schedule(context)
    assert request.partition_key == partition
    assert request.run_key == partition


def test_quarter_helpers():
    assert quarter_key(date(2025, 6, 30)) == "2025-04-01"
    assert quarter_key(date(2025, 12, 31)) == "2025-10-01"
    assert quarter_cutoff("2025-10-01") == date(2025, 12, 31)
    assert quarter_cutoff("2024-01-01") == date(2024, 3, 31)
    assert quarter_label("2025-04-01") == "2025-Q2"
    assert closed_quarter_key(date(2026, 1, 5)) == "2025-10-01"


def test_sensor_adds_partition_and_requests_run_once(tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(PARTNER_DELIVERY, landing / PARTNER_DELIVERY.name)
    locations = Locations(landing_dir=str(landing), reports_dir=str(tmp_path / "reports"))
    with dg.instance_for_test() as instance:
        result = delivery_sensor(dg.build_sensor_context(instance=instance, resources={"locations": locations}))
        assert [r.partition_key for r in result.run_requests] == [PARTNER_DELIVERY.name]
        assert result.dynamic_partitions_requests[0].partition_keys == [PARTNER_DELIVERY.name]
        # Same manifest, next tick: nothing to do.
        again = delivery_sensor(
            dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"locations": locations})
        )
        assert again.run_requests == []
        # A corrected re-delivery (changed manifest) is requested again.
        manifest = landing / PARTNER_DELIVERY.name / "manifest.json"
        data = json.loads(manifest.read_text())
        data["extracted_at"] = "2025-07-09T09:30:00Z"
        manifest.write_text(json.dumps(data))
        corrected = delivery_sensor(
            dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"locations": locations})
        )
        assert [r.partition_key for r in corrected.run_requests] == [PARTNER_DELIVERY.name]
