"""Partitions: one per delivery (ingest, validation) and one per calendar quarter (cohort onwards)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg

delivery_partitions = dg.DynamicPartitionsDefinition(name="delivery")

# A quarter's partition key is its first day; its data cutoff is its last day.
quarter_partitions = dg.TimeWindowPartitionsDefinition(
    start="2015-01-01", cron_schedule="0 0 1 1,4,7,10 *", fmt="%Y-%m-%d"
)


def quarter_key(day: date) -> str:
    """The partition key of the quarter containing `day`."""
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1).isoformat()


def quarter_cutoff(partition_key: str) -> date:
    """The data cutoff (last day) of a quarter partition."""
    start = datetime.strptime(partition_key, "%Y-%m-%d").date()
    month = start.month + 3
    end = date(start.year + (month > 12), (month - 1) % 12 + 1, 1)
    return end - timedelta(days=1)


def quarter_label(partition_key: str) -> str:
    """`2025-04-01` -> `2025-Q2`, the name of the quarter's report folder."""
    start = datetime.strptime(partition_key, "%Y-%m-%d").date()
    return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
