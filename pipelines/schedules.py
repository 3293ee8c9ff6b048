"""The quarterly report schedule: a few days after each quarter closes, report on that quarter."""

from datetime import date, timedelta

import dagster as dg

from pipelines.jobs import quarterly_cohort_report
from pipelines.partitions import quarter_key

QUARTERLY_CRON = "0 6 5 1,4,7,10 *"  # 06:00 on the 5th day after a quarter ends: late deliveries have landed


def closed_quarter_key(tick: date) -> str:
    """The partition of the quarter that closed before `tick` (a tick on 2025-07-05 -> 2025-04-01)."""
    return quarter_key(date(tick.year, tick.month, 1) - timedelta(days=1))


@dg.schedule(
    cron_schedule=QUARTERLY_CRON,
    job=quarterly_cohort_report,
    execution_timezone="UTC",
    description="Builds the cohort, models and report for the quarter that just closed.",
)
def quarterly_report_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    partition = closed_quarter_key(context.scheduled_execution_time.date())
    return dg.RunRequest(run_key=partition, partition_key=partition)
