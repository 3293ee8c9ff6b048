"""Great Expectations suites (expectations/*.json) run against warehouse tables.

Each expectation's `meta` carries its Kahn category (conformance, completeness, plausibility),
its severity (`error` blocks downstream work, `warn` does not) and a threshold. Results keep
"failed" (the data broke the expectation) apart from "errored" (GX could not evaluate it), and
examples are row keys (source_record), never values, so nothing identifying leaks into the UI.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from cohort.settings import EXPECTATIONS_DIR

KAHN_CATEGORIES = {"conformance", "completeness", "plausibility"}
SEVERITIES = {"error", "warn"}
EXAMPLE_KEYS = 5


class SuiteError(ValueError):
    """A suite file that cannot be used: the message names the file and the expectation."""


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    category: str
    severity: str
    passed: bool
    errored: bool
    observed_value: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    example_records: list[int]
    error: str | None = None

    @property
    def blocking_failure(self) -> bool:
        return self.severity == "error" and not self.passed

    def as_row(self) -> dict:
        return asdict(self)


def suite_path(name: str) -> Path:
    return EXPECTATIONS_DIR / f"{name}.json"


def load_suite_data(path: Path) -> dict:
    """Read a suite file and check the project's rules on top of GX's own."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteError(f"{path.name}: not readable JSON ({error})") from None
    if not isinstance(data.get("expectations"), list) or not data.get("name"):
        raise SuiteError(f"{path.name}: needs a 'name' and a list of 'expectations'")
    for number, expectation in enumerate(data["expectations"], start=1):
        meta = expectation.get("meta") or {}
        where = f"{path.name}, expectation {number} ({expectation.get('type')})"
        if meta.get("category") not in KAHN_CATEGORIES:
            raise SuiteError(f"{where}: meta.category must be one of {sorted(KAHN_CATEGORIES)}")
        if meta.get("severity") not in SEVERITIES:
            raise SuiteError(f"{where}: meta.severity must be one of {sorted(SEVERITIES)}")
        if "threshold" not in meta:
            raise SuiteError(f"{where}: meta.threshold is required (the tolerated share of failing rows)")
    return data


def build_suite(data: dict, path: Path | None = None):
    """A GX ExpectationSuite from suite data; unknown expectation types or bad kwargs raise SuiteError."""
    import great_expectations as gx

    try:
        return gx.ExpectationSuite(**data)
    except Exception as error:  # GX raises several unrelated types for a bad suite
        raise SuiteError(f"{path.name if path else data.get('name')}: invalid expectation ({error})") from None


def _quiet_gx_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _observed(result: dict) -> str | None:
    value = result.get("observed_value")
    if value is None:
        return None
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


def _columns(kwargs: dict) -> str | None:
    names = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k)] + list(kwargs.get("column_list") or [])
    return ",".join(names) or None


def validate_frame(frame: pd.DataFrame, suite_name: str) -> list[ExpectationOutcome]:
    """Run suite `expectations/<suite_name>.json` against `frame` (which must hold `source_record`)."""
    path = suite_path(suite_name)
    data = load_suite_data(path)
    suite = build_suite(data, path)
    context = _quiet_gx_context()
    batch = (
        context.data_sources.add_pandas("warehouse")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("whole_table")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    validation = batch.validate(
        suite,
        result_format={
            "result_format": "SUMMARY",
            "partial_unexpected_count": EXAMPLE_KEYS,
            "unexpected_index_column_names": ["source_record"],
            "include_unexpected_rows": False,
        },
    )
    outcomes = []
    for item in validation.results:
        config = item.expectation_config
        meta = config.meta or {}
        result = item.result or {}
        exception = item.exception_info or {}
        errored = bool(exception.get("raised_exception"))
        examples = [
            int(entry["source_record"]) for entry in (result.get("partial_unexpected_index_list") or [])[:EXAMPLE_KEYS]
            if isinstance(entry, dict) and entry.get("source_record") is not None
        ]
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=_columns(config.kwargs),
                category=meta.get("category", "conformance"),
                severity=meta.get("severity", "error"),
                passed=bool(item.success) and not errored,
                errored=errored,
                observed_value=_observed(result),
                unexpected_count=result.get("unexpected_count"),
                unexpected_percent=result.get("unexpected_percent"),
                example_records=examples,
                error=(exception.get("exception_message") or "")[:300] or None if errored else None,
            )
        )
    return outcomes
