"""Great Expectations suites (expectations/*.json) run inside DuckDB, on one relation each.

A suite is reviewed data: a plain GX suite file whose `meta` names the relation it runs on (a
SELECT in `sql/validation/<relation>.sql`: a staging table of one delivery joined with what its
expectations compare it to, the delivery's records as delivered with their fate (through the TEMP
macros of `sql/validation/delivered_macros.sql`, see SHARED_MACROS), or a cohort table at one data
cutoff), the warehouse table it describes, its scope (`delivery` or `quarter`) and the
row keys shown as examples. Every expectation's `meta` carries its name, Kahn category
(conformance, completeness, plausibility), severity (`error` blocks downstream work, `warn` does
not), threshold (the tolerated share of failing rows; GX's `mostly` is 1 - threshold) and, where
there is one, the OHDSI Data Quality Dashboard check it stands for (`dqd`).

Execution path: GX's SQL engine, so every metric is a query inside DuckDB (about 8x faster than
GX's pandas engine; STACK_NOTES). GX 1.24 needs three things for that, all pinned and tested in
tests/test_validation.py:
- duckdb must be one of GX's "persisted-connection" dialects, else GX hands the pooled
  connection back before fetching and every expectation comes back `success=False, result={}`
  (with a MetricResolutionError or an IndexError tucked in exception_info; GX issues #10738,
  #11579). `_register_duckdb_with_gx()` adds it.
- that persisted connection must not hold a transaction: duckdb_engine BEGINs one that GX never
  ends, and DuckDB aborts it at the first failing query, so one expectation GX cannot evaluate
  would error every expectation after it. The connection GX gets ignores BEGIN, COMMIT and
  ROLLBACK (`_autocommit_connection_class`): every query runs on its own.
- the SQLAlchemy engine (duckdb_engine) runs on a cursor of the warehouse connection the caller
  already holds (DuckDB allows one writer per file, and the caller holds it), and the relation is
  materialized as a TEMP table on that cursor with only the columns the suite uses.
Results keep "failed" (the data broke the expectation) apart from "errored" (GX could not
evaluate it, including a result that came back without its metric, or the relation did not run),
and examples are row keys (`source_record`, `step_order`, or keys built from `source_site` and the
pseudonymous `patient_key`), never values. Only the latest results are kept: a delivery's per
contract table in meta.dq_results, a quarter's per cohort table in meta.cohort_dq_results.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import duckdb

from cohort.settings import EXPECTATIONS_DIR, REPORT_TEMPLATES_DIR, SQL_DIR
from cohort.sql import set_variables, sql_text

# The DuckDB SQL path patches GX internals (see the module docstring); it is verified for these
# versions only. Upgrading GX: run tests/test_validation.py, then add the version here.
TESTED_GX_VERSIONS = ("1.24.1",)

KAHN_CATEGORIES = ("conformance", "completeness", "plausibility")
SEVERITIES = ("error", "warn")
SCOPES = ("delivery", "quarter")
EXAMPLE_KEYS = 5
# Files of TEMP macros that several relations share, by the prefix of the relations that use them
# (sql/validation/<relation>.sql): a validator runs each once on its cursor, before the first
# relation that needs it (lazily, so validators on warehouses without those tables still work).
SHARED_MACROS = {"delivered_": "validation/delivered_macros"}

# Expectation types a suite may use: each verified on the DuckDB SQL path by the tests, by kind.
#   map: row by row; `mostly` = 1 - threshold; the result must carry unexpected_count.
#   aggregate: one observed value compared with bounds; the result must carry observed_value.
#   structure: about the relation's shape; no metric to carry.
EXPECTATION_KINDS: dict[str, str] = {
    "expect_column_values_to_not_be_null": "map",
    "expect_column_values_to_be_null": "map",
    "expect_column_values_to_be_in_set": "map",
    "expect_column_values_to_not_be_in_set": "map",
    "expect_column_values_to_be_between": "map",
    "expect_column_values_to_be_unique": "map",
    "expect_column_value_lengths_to_be_between": "map",
    "expect_column_pair_values_a_to_be_greater_than_b": "map",
    "expect_column_pair_values_to_be_equal": "map",
    "expect_compound_columns_to_be_unique": "map",
    "expect_table_row_count_to_be_between": "aggregate",
    "expect_column_min_to_be_between": "aggregate",
    "expect_column_max_to_be_between": "aggregate",
    "expect_column_mean_to_be_between": "aggregate",
    "expect_column_proportion_of_non_null_values_to_be_between": "aggregate",
    "expect_column_to_exist": "structure",
}
# Not usable on this path (found while building it; tests/test_validation.py keeps them out):
UNSUPPORTED_TYPES = {
    "expect_column_values_to_match_regex": "GX 1.24 has no regex support for the duckdb dialect: fails with result={}",
    "expect_column_values_to_not_match_regex": "GX 1.24 has no regex support for the duckdb dialect",
    "expect_column_values_to_be_of_type": "needs SQLAlchemy reflection, which duckdb_engine does not support here: errors",
    "expect_column_values_to_be_in_type_list": "needs SQLAlchemy reflection: errors",
    "expect_column_distinct_values_to_be_in_set": "returns observed_value=None on DuckDB",
}

# OHDSI DQD check families and what stands for them here (each suite expectation names its `dqd`
# check; tests/test_validation.py asserts every family below has at least one counterpart).
DQD_CHECKS = {
    "cdmField": "conformance: the relation has the column",
    "isRequired": "completeness: a required field is never null",
    "cdmDatatype": "conformance: delivered values parse as their type (quarantine rules invalid_*)",
    "isPrimaryKey": "conformance: the key is unique",
    "isForeignKey": "conformance: the patient exists (no orphans)",
    "fkDomain": "conformance: the value is one of the allowed codes",
    "plausibleUnitConceptIds": "conformance: the unit is known / canonical for the analyte",
    "measurePersonCompleteness": "completeness: share of patients with an estradiol / a DXA",
    "measureValueCompleteness": "completeness: null rate of a field within its threshold",
    "plausibleValueLow": "plausibility: value above the analyte's / site's lower limit",
    "plausibleValueHigh": "plausibility: value below the analyte's / site's upper limit",
    "plausibleStartBeforeEnd": "plausibility: start on or before end",
    "plausibleAfterBirth": "plausibility: nothing before birth",
    "plausibleBeforeDeath": "plausibility: nothing after death",
    "plausibleDuringLife": "plausibility: nothing after the data cutoff (future dates)",
    "withinVisitDates": "plausibility: events within the enrollment window",
    "plausibleGender": "plausibility: sex-specific codes and values",
}

_NAME = re.compile(r"[a-z0-9_]{1,80}")
_CONDITION_COLUMN = re.compile(r'col\("([^"]+)"\)')

log = logging.getLogger(__name__)


class SuiteError(ValueError):
    """A suite file that cannot be used: the message names the file and the expectation."""


@dataclass(frozen=True)
class Suite:
    """One suite file: the relation it runs on and its expectations (with `mostly` set from the threshold)."""

    name: str
    path: Path
    scope: str
    table: str
    relation: str
    keys: tuple[str, ...]
    description: str
    expectations: tuple[dict, ...]

    def columns(self) -> set[str]:
        """Every column of the relation the suite refers to (the materialized projection)."""
        columns = set(self.keys)
        for expectation in self.expectations:
            kwargs = expectation["kwargs"]
            columns.update(kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k))
            columns.update(kwargs.get("column_list") or [])
            columns.update(_CONDITION_COLUMN.findall(str(kwargs.get("row_condition") or "")))
        return columns

    def gx_suite(self):
        import great_expectations as gx

        data = {"name": self.name, "expectations": [dict(e) for e in self.expectations]}
        try:
            return gx.ExpectationSuite(**data)
        except Exception as error:  # GX raises several unrelated types for a bad suite
            raise SuiteError(f"{self.path.name}: invalid expectation ({error})") from None

    def relation_sql(self) -> str:
        return sql_text(f"validation/{self.relation}")


@dataclass(frozen=True)
class ExpectationOutcome:
    suite: str
    name: str
    expectation: str
    column: str | None
    category: str
    severity: str
    threshold: float
    dqd_check: str | None
    passed: bool
    errored: bool
    observed_value: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    element_count: int | None
    example_keys: tuple[str, ...] = ()
    error: str | None = None
    notes: str | None = None

    @property
    def status(self) -> str:
        return "errored" if self.errored else ("passed" if self.passed else "failed")

    @property
    def blocking_failure(self) -> bool:
        return self.severity == "error" and not self.passed

    def as_row(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- suite files


def suite_path(name: str) -> Path:
    return EXPECTATIONS_DIR / f"{name}.json"


def suite_files() -> list[Path]:
    return sorted(EXPECTATIONS_DIR.glob("*.json"))


def _check_expectation(path: Path, number: int, expectation: dict, names: set[str]) -> dict:
    where = f"{path.name}, expectation {number} ({expectation.get('type')})"
    if not isinstance(expectation, dict) or set(expectation) - {"type", "kwargs", "meta"}:
        raise SuiteError(f"{where}: an expectation holds exactly type, kwargs and meta")
    kind = EXPECTATION_KINDS.get(expectation.get("type"))
    if kind is None:
        why = UNSUPPORTED_TYPES.get(expectation.get("type"), "not verified on the DuckDB SQL path")
        raise SuiteError(f"{where}: expectation type not supported ({why}); supported: {sorted(EXPECTATION_KINDS)}")
    kwargs = dict(expectation.get("kwargs") or {})
    meta = dict(expectation.get("meta") or {})
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SuiteError(f"{where}: meta.name must be a snake_case name ([a-z0-9_], 1-80)")
    if name in names:
        raise SuiteError(f"{where}: meta.name {name!r} is used twice in the suite")
    names.add(name)
    where = f"{path.name}, expectation {name!r}"
    if meta.get("category") not in KAHN_CATEGORIES:
        raise SuiteError(f"{where}: meta.category must be one of {list(KAHN_CATEGORIES)}")
    if meta.get("severity") not in SEVERITIES:
        raise SuiteError(f"{where}: meta.severity must be one of {list(SEVERITIES)}")
    threshold = meta.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise SuiteError(f"{where}: meta.threshold is required: the tolerated share of failing rows, 0 <= t < 1")
    dqd = meta.get("dqd")
    dqd_checks = [dqd] if isinstance(dqd, str) else dqd if isinstance(dqd, list) else [] if dqd is None else [object()]
    if unknown := [c for c in dqd_checks if c not in DQD_CHECKS]:
        raise SuiteError(f"{where}: meta.dqd {unknown[0]!r} is not one of {sorted(DQD_CHECKS)} (a name or a list of names)")
    if kind == "map":
        mostly = round(1 - threshold, 12)
        if "mostly" in kwargs and not math.isclose(kwargs["mostly"], mostly, abs_tol=1e-9):
            raise SuiteError(f"{where}: kwargs.mostly {kwargs['mostly']} disagrees with meta.threshold {threshold} (mostly = 1 - threshold)")
        if threshold > 0:
            kwargs["mostly"] = mostly
    elif threshold != 0 or "mostly" in kwargs:
        raise SuiteError(f"{where}: a {kind} expectation has no tolerated share: threshold 0, no mostly (bounds go in kwargs)")
    if kwargs.get("row_condition") is not None and kwargs.get("condition_parser") != "great_expectations":
        raise SuiteError(f"{where}: a row_condition needs condition_parser 'great_expectations' (the SQL engine's)")
    return {"type": expectation["type"], "kwargs": kwargs, "meta": meta}


def load_suite(path: Path) -> Suite:
    """Read a suite file and check the project's rules on top of GX's own (GX builds it too)."""
    from cohort.contract import TABLES

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteError(f"{path.name}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list) or data.get("name") != path.stem:
        raise SuiteError(f"{path.name}: needs 'name' (= the file name, {path.stem!r}) and a list of 'expectations'")
    meta = data.get("meta") or {}
    scope, table, relation = meta.get("scope"), meta.get("table"), meta.get("relation")
    if scope not in SCOPES:
        raise SuiteError(f"{path.name}: meta.scope must be one of {list(SCOPES)}")
    if scope == "delivery" and table not in TABLES:
        raise SuiteError(f"{path.name}: meta.table must be a contract table {list(TABLES)} for a delivery suite")
    if scope == "quarter" and not (isinstance(table, str) and table.startswith("cohort.")):
        raise SuiteError(f"{path.name}: meta.table must name a cohort table (cohort.<name>) for a quarter suite")
    if not isinstance(relation, str) or not (SQL_DIR / "validation" / f"{relation}.sql").is_file():
        raise SuiteError(f"{path.name}: meta.relation must name a file sql/validation/<relation>.sql")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise SuiteError(f"{path.name}: meta.keys must list the row-key columns shown as examples")
    if not all(k == "source_record" or k == "patient_key" or k.endswith(("_order", "_no", "_key")) for k in keys):
        raise SuiteError(f"{path.name}: meta.keys may only hold row keys (source_record, patient_key, *_key, *_no, *_order)")
    if not data["expectations"]:
        raise SuiteError(f"{path.name}: a suite needs at least one expectation")
    names: set[str] = set()
    expectations = tuple(_check_expectation(path, n, e, names) for n, e in enumerate(data["expectations"], start=1))
    suite = Suite(
        name=data["name"], path=path, scope=scope, table=table, relation=relation, keys=tuple(keys),
        description=str(meta.get("description") or ""), expectations=expectations,
    )
    suite.gx_suite()  # GX's own validation of types and kwargs
    return suite


@lru_cache(maxsize=None)
def _suites_cached(stamp: tuple) -> tuple[Suite, ...]:
    return tuple(load_suite(path) for path, _ in stamp)


def all_suites() -> tuple[Suite, ...]:
    """Every suite file in expectations/ (re-read when a file changes)."""
    return _suites_cached(tuple((p, p.stat().st_mtime_ns) for p in suite_files()))


def suites_for(table: str, scope: str = "delivery") -> list[Suite]:
    """The suites describing `table` (a contract table, or `cohort.<name>` for quarter scope)."""
    return [s for s in all_suites() if s.scope == scope and s.table == table]


# ------------------------------------------------------------------------------ GX on DuckDB SQL


class _DuckDBDialectName:
    """Stands for 'duckdb' in GX's tuple of GXSqlDialect members (compared by name, as GX does)."""

    value = "duckdb"

    def __eq__(self, other: object) -> bool:
        return str(getattr(other, "value", other)).lower() == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return "<GX dialect duckdb (registered by cohort.validation)>"


def _register_duckdb_with_gx() -> None:
    """Make GX keep one persisted connection for duckdb, as it does for sqlite (idempotent)."""
    import great_expectations as gx
    from great_expectations.execution_engine import sqlalchemy_execution_engine as engine_module

    if gx.__version__ not in TESTED_GX_VERSIONS:
        raise RuntimeError(
            f"cohort.validation runs GX's SQL engine on DuckDB by patching GX internals, verified for GX "
            f"{', '.join(TESTED_GX_VERSIONS)} only (installed: {gx.__version__}); run tests/test_validation.py "
            "and add the version to TESTED_GX_VERSIONS if it passes"
        )
    dialects = getattr(engine_module, "_PERSISTED_CONNECTION_DIALECTS", None)
    if not isinstance(dialects, tuple):
        raise RuntimeError("GX internals changed: _PERSISTED_CONNECTION_DIALECTS not found")
    if "duckdb" not in dialects:
        engine_module._PERSISTED_CONNECTION_DIALECTS = (*dialects, _DuckDBDialectName())


def _quiet_gx_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _autocommit_connection_class() -> type:
    """The DB-API connection GX's SQLAlchemy engine gets: duckdb_engine's wrapper of our cursor with
    BEGIN, COMMIT and ROLLBACK ignored, so every query GX runs (all reads) is its own transaction.
    Else the transaction duckdb_engine BEGINs is never ended, and the first query that fails aborts
    it: every later expectation errors with "Current transaction is aborted", and the next suite's
    TEMP table cannot be made."""
    try:
        from duckdb_engine import ConnectionWrapper
    except ImportError:
        raise RuntimeError(
            "the validation stage needs the duckdb-engine package (SQLAlchemy dialect for DuckDB, tested with "
            "0.17.0): pip install duckdb-engine==0.17.0"
        ) from None

    class AutocommitConnection(ConnectionWrapper):
        def begin(self) -> None:
            pass

        def commit(self) -> None:
            pass

        def rollback(self) -> None:
            pass

    return AutocommitConnection


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class WarehouseValidator:
    """Runs suites on relations of the warehouse, through a connection the caller already holds.

        with WarehouseValidator(con, delivery_id="site01_2025q2", data_cutoff=date(2025, 6, 30)) as v:
            outcomes = v.validate(suite)

    The variables are set on a cursor of `con` (the relations read them with getvariable), and the
    shared TEMP macros (SHARED_MACROS) are defined there; GX's SQLAlchemy engine runs on that same
    cursor, so it sees the TEMP tables made there.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, **variables: Any):
        self._con = con
        self._variables = variables
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._datasource = None
        self._macros: set[str] = set()  # SHARED_MACROS files run on the cursor

    def __enter__(self) -> "WarehouseValidator":
        _register_duckdb_with_gx()
        connection_class = _autocommit_connection_class()
        self._cursor = self._con.cursor()
        set_variables(self._cursor, **self._variables)
        cursor = self._cursor
        context = _quiet_gx_context()
        self._datasource = context.data_sources.add_sql(
            "warehouse",
            connection_string="duckdb:///:memory:",  # never opened: the creator hands GX our cursor
            kwargs={"creator": lambda: connection_class(cursor)},
        )
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._datasource is not None:
                self._datasource.get_execution_engine().engine.dispose()
        finally:
            if self._cursor is not None:
                self._cursor.close()
            self._cursor = self._datasource = None
            self._macros = set()

    def _relation_sql(self, suite: Suite) -> str:
        """The suite's relation, after the shared macros it uses are defined on the cursor."""
        assert self._cursor is not None, "use WarehouseValidator as a context manager"
        for prefix, name in SHARED_MACROS.items():
            if suite.relation.startswith(prefix) and name not in self._macros:
                self._cursor.execute(sql_text(name))
                self._macros.add(name)
        return suite.relation_sql()

    def relation_columns(self, suite: Suite) -> list[str]:
        relation = self._relation_sql(suite)
        return [row[0] for row in self._cursor.execute(f"DESCRIBE SELECT * FROM ({relation}) AS relation").fetchall()]

    def validate(self, suite: Suite) -> list[ExpectationOutcome]:
        """Outcomes of every expectation of `suite`, in suite order (errored ones included, never raised)."""
        assert self._cursor is not None, "use WarehouseValidator as a context manager"
        table = f"dq_{suite.name}_{uuid.uuid4().hex[:8]}"
        try:
            available = self.relation_columns(suite)
            # only the columns the suite uses: less to materialize, and GX scans only what it checks
            projection = ", ".join(_quote(c) for c in available if c in suite.columns()) or "1 AS no_columns"
            self._cursor.execute(
                f"CREATE OR REPLACE TEMP TABLE {_quote(table)} AS SELECT {projection} FROM ({self._relation_sql(suite)}) AS relation"
            )
        except duckdb.Error as error:
            message = f"relation sql/validation/{suite.relation}.sql failed: {error}"
            return [_errored(suite, spec, message) for spec in suite.expectations]
        try:
            asset = self._datasource.add_table_asset(name=table, table_name=table)
            batch = asset.add_batch_definition_whole_table("all_rows").get_batch()
            result = batch.validate(
                suite.gx_suite(),
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": EXAMPLE_KEYS,
                    "unexpected_index_column_names": [k for k in suite.keys if k in available],
                    "include_unexpected_rows": False,
                },
            )
            by_name = {(item.expectation_config.meta or {}).get("name"): item for item in result.results}
            return [
                _outcome(suite, spec, by_name[spec["meta"]["name"]]) if spec["meta"]["name"] in by_name
                else _errored(suite, spec, "GX returned no result for this expectation")
                for spec in suite.expectations
            ]
        except Exception as error:  # a GX failure of the whole suite is reported, not raised
            message = f"GX could not run the suite: {error.__class__.__name__}: {error}"
            return [_errored(suite, spec, message) for spec in suite.expectations]
        finally:
            try:
                self._datasource.delete_asset(table)
            except Exception:
                pass
            self._cursor.execute(f"DROP TABLE IF EXISTS temp.{_quote(table)}")


def _columns_of(kwargs: dict) -> str | None:
    names = [kwargs[k] for k in ("column", "column_A", "column_B") if kwargs.get(k)] + list(kwargs.get("column_list") or [])
    return ",".join(names) or None


def dqd_checks(spec: dict) -> list[str]:
    """The DQD check names an expectation stands for (meta.dqd: a name or a list of names)."""
    dqd = spec["meta"].get("dqd")
    return [dqd] if isinstance(dqd, str) else list(dqd or [])


def _base(suite: Suite, spec: dict) -> dict:
    meta = spec["meta"]
    return dict(
        suite=suite.name, name=meta["name"], expectation=spec["type"], column=_columns_of(spec["kwargs"]),
        category=meta["category"], severity=meta["severity"], threshold=float(meta["threshold"]),
        dqd_check=",".join(dqd_checks(spec)) or None, notes=meta.get("notes"),
    )


def _scrub(message: str) -> str:
    """An error message fit for the UI: first line, quoted literals (possibly data values) withheld."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "unknown error"
    return re.sub(r"'[^']{2,}'", "'…'", first)[:300]


def _errored(suite: Suite, spec: dict, message: str) -> ExpectationOutcome:
    return ExpectationOutcome(
        **_base(suite, spec), passed=False, errored=True, observed_value=None, unexpected_count=None,
        unexpected_percent=None, element_count=None, error=_scrub(message),
    )


def _exception(info: Any) -> str | None:
    """The message of an exception GX caught, if any (GX nests it per metric sometimes)."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "GX raised an exception") if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "GX raised an exception"
    return None


_CODE_LIKE = re.compile(r"[A-Za-z0-9 _.:/<>=%+-]{0,40}")


def _safe(value: Any) -> Any:
    """An observed value fit for the UI: numbers, dates, booleans and short code-like strings only."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, str) and _CODE_LIKE.fullmatch(value):
        return value
    if isinstance(value, (list, tuple)):
        items = [_safe(v) for v in value]
        return items if all(not isinstance(i, str) or i != "(withheld)" for i in items) else f"({len(value)} values)"
    return "(withheld)"


def _outcome(suite: Suite, spec: dict, item) -> ExpectationOutcome:
    kind = EXPECTATION_KINDS[spec["type"]]
    result = dict(item.result or {})
    error = _exception(item.exception_info)
    if error is None and kind == "map" and (
        result.get("element_count") is None or (result["element_count"] > 0 and result.get("unexpected_count") is None)
    ):
        error = "GX returned no unexpected_count (metric resolution failed silently)"
    if error is None and kind == "aggregate" and "observed_value" not in result:
        error = "GX returned no observed_value (metric resolution failed silently)"
    if error is not None:
        return _errored(suite, spec, error)

    unexpected = result.get("unexpected_count")
    elements = result.get("element_count")
    if kind == "map" and elements == 0:
        unexpected = 0  # no row to check (e.g. a row_condition that matches nothing)
    percent = result.get("unexpected_percent")
    if kind == "map":
        checked = (elements or 0) - (result.get("missing_count") or 0) if spec["type"] != "expect_column_values_to_not_be_null" else elements
        observed = f"{percent or 0:.4g}% of {checked or 0:,} rows" if checked else "no rows to check"
    elif kind == "aggregate":
        observed = json.dumps(_safe(result.get("observed_value")), default=str)
    else:
        observed = "present" if item.success else "absent"
    keys = list(suite.keys)
    examples = []
    for entry in result.get("partial_unexpected_index_list") or []:
        if isinstance(entry, dict) and all(entry.get(k) is not None for k in keys):
            examples.append(":".join(str(entry[k]) for k in keys))
        if len(examples) == EXAMPLE_KEYS:
            break
    return ExpectationOutcome(
        **_base(suite, spec),
        passed=bool(item.success), errored=False, observed_value=observed[:200],
        unexpected_count=None if unexpected is None else int(unexpected),
        unexpected_percent=None if percent is None else float(percent),
        element_count=None if elements is None else int(elements),
        example_keys=tuple(examples),
    )


# ---------------------------------------------------------------------------- results and pages


RESULT_COLUMNS = (
    "run_id", "suite", "expectation_name", "expectation", "column_name", "category", "severity", "threshold",
    "dqd_check", "passed", "errored", "observed_value", "unexpected_count", "unexpected_percent", "element_count",
    "example_records", "error", "validated_at",
)


def ensure_results_tables(con: duckdb.DuckDBPyConnection) -> None:
    """meta.dq_results (columns added since a warehouse was created) and meta.cohort_dq_results."""
    con.execute(sql_text("validation/results_schema"))


def _result_rows(outcomes: Iterable[ExpectationOutcome], run_id: str, validated_at: datetime) -> list[dict]:
    return [
        {
            "run_id": run_id, "suite": o.suite, "expectation_name": o.name, "expectation": o.expectation,
            "column_name": o.column, "category": o.category, "severity": o.severity, "threshold": o.threshold,
            "dqd_check": o.dqd_check, "passed": o.passed, "errored": o.errored, "observed_value": o.observed_value,
            "unexpected_count": o.unexpected_count, "unexpected_percent": o.unexpected_percent,
            "element_count": o.element_count, "example_records": ",".join(o.example_keys), "error": o.error,
            "validated_at": validated_at,
        }
        for o in outcomes
    ]


def persist_delivery_results(
    con: duckdb.DuckDBPyConnection, run_id: str, delivery_id: str, data_cutoff: date | None, table: str,
    outcomes: list[ExpectationOutcome],
) -> None:
    """Replace the delivery's results for `table` in meta.dq_results (the latest set per delivery and table)."""
    _replace_results(con, "meta.dq_results", run_id, outcomes, {"delivery_id": delivery_id, "table_name": table},
                     data_cutoff=data_cutoff)


def persist_quarter_results(
    con: duckdb.DuckDBPyConnection, run_id: str, data_cutoff: date, table: str, outcomes: list[ExpectationOutcome]
) -> None:
    """Replace the quarter's results for a cohort table in meta.cohort_dq_results (the latest set per quarter and table)."""
    _replace_results(con, "meta.cohort_dq_results", run_id, outcomes, {"data_cutoff": data_cutoff, "table_name": table})


def _replace_results(
    con: duckdb.DuckDBPyConnection, target: str, run_id: str, outcomes: list[ExpectationOutcome], key: dict[str, Any],
    **columns: Any,
) -> None:
    """Delete the rows of `target` matching `key` (column: value) and insert the outcomes' rows, with
    the key's and the other given columns' values."""
    import pandas as pd

    ensure_results_tables(con)
    rows = pd.DataFrame(_result_rows(outcomes, run_id, datetime.now(timezone.utc)), columns=list(RESULT_COLUMNS))
    for column, value in {**key, **columns}.items():
        rows[column] = value
    con.execute(f"DELETE FROM {target} WHERE " + " AND ".join(f"{column} = ?" for column in key), list(key.values()))
    con.register("dq_rows", rows)
    try:
        con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM dq_rows")
    finally:
        con.unregister("dq_rows")


def summarize(outcomes: list[ExpectationOutcome]) -> str:
    """One line for a check's description: how many failed, errored, and which block."""
    failed = [o for o in outcomes if not o.passed and not o.errored]
    errored = [o for o in outcomes if o.errored]
    blocking = [o for o in outcomes if o.blocking_failure]
    text = f"{len(outcomes) - len(failed) - len(errored)} of {len(outcomes)} expectations passed"
    if failed:
        text += f", {len(failed)} failed"
    if errored:
        text += f", {len(errored)} errored (GX could not evaluate them)"
    if blocking:
        reasons = [
            f"{o.suite}.{o.name}: " + (
                "errored" if o.errored else
                f"{o.unexpected_count:,} rows ({o.unexpected_percent or 0:.3g}%) > tolerated {o.threshold:.3g}"
                if o.unexpected_count is not None else f"observed {o.observed_value}"
            )
            for o in blocking
        ]
        text += ". BLOCKING: " + "; ".join(reasons[:6]) + ("; ..." if len(reasons) > 6 else "")
    return text


def render_data_quality_page(con: duckdb.DuckDBPyConnection, delivery_id: str, out_path: Path) -> Path:
    """Write the delivery's data-quality page (self-contained HTML, no network) from meta.dq_results."""
    import jinja2

    ensure_results_tables(con)
    delivery = con.execute(
        "SELECT delivery_id, source_site, data_cutoff, extracted_at, status, validation_passed FROM meta.deliveries "
        "WHERE delivery_id = ?", [delivery_id]
    ).fetchone()
    columns = ["table_name", "suite", "expectation_name", "expectation", "column_name", "category", "severity",
               "threshold", "dqd_check", "passed", "errored", "observed_value", "unexpected_count",
               "unexpected_percent", "element_count", "example_records", "error", "validated_at"]
    rows = [dict(zip(columns, r)) for r in con.execute(
        f"SELECT {', '.join(columns)} FROM meta.dq_results WHERE delivery_id = ? ORDER BY table_name, suite, "
        "NOT errored, passed, severity, expectation_name", [delivery_id]
    ).fetchall()]
    for row in rows:
        row["status"] = "errored" if row["errored"] else ("passed" if row["passed"] else "failed")
    counts = {r[0]: dict(zip(("raw", "staged", "quarantined", "duplicates"), r[1:])) for r in con.execute(
        "SELECT table_name, raw_rows, staging_rows, quarantined_rows, duplicate_rows FROM meta.ingest_counts "
        "WHERE delivery_id = ?", [delivery_id]
    ).fetchall()}
    tables = sorted({r["table_name"] for r in rows}, key=lambda t: (_TABLE_ORDER.get(t, 99), t))
    matrix = {
        t: {c: _tally([r for r in rows if r["table_name"] == t and r["category"] == c]) for c in KAHN_CATEGORIES}
        for t in tables
    }
    suites = {s.name: s for s in all_suites()}
    notes = {f"{s.name}.{e['meta']['name']}": e["meta"].get("notes") for s in suites.values() for e in s.expectations}
    for row in rows:
        row["notes"] = notes.get(f"{row['suite']}.{row['expectation_name']}")
        row["example_records"] = ", ".join((row["example_records"] or "").split(","))
        row["dqd_check"] = ", ".join((row["dqd_check"] or "").split(","))
    validated = max((r["validated_at"] for r in rows if r["validated_at"]), default=None)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPORT_TEMPLATES_DIR)), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = environment.get_template("data_quality.html.j2").render(
        delivery=dict(zip(("delivery_id", "source_site", "data_cutoff", "extracted_at", "status", "validation_passed"),
                          delivery or (delivery_id, None, None, None, "unknown", None))),
        rows=rows, tables=tables, counts=counts, matrix=matrix, categories=KAHN_CATEGORIES,
        totals=_tally(rows), suites=suites, dqd=DQD_CHECKS,
        validated_at=validated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if validated else None,
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    return out_path


_TABLE_ORDER = {t: n for n, t in enumerate(("patients", "medications", "labs", "dxa", "diagnoses"))}


def _tally(rows: list[dict]) -> dict:
    return {
        "total": len(rows),
        "passed": sum(1 for r in rows if r["passed"] and not r["errored"]),
        "failed": sum(1 for r in rows if not r["passed"] and not r["errored"]),
        "errored": sum(1 for r in rows if r["errored"]),
        "blocking": sum(1 for r in rows if r["severity"] == "error" and not r["passed"]),
    }


def data_quality_page_path(reports_dir: Path, delivery_id: str) -> Path:
    return Path(reports_dir) / "data_quality" / f"{delivery_id}.html"


# ------------------------------------------------------------------------------- whole deliveries


@dataclass
class DeliveryValidation:
    delivery_id: str
    data_cutoff: date | None
    outcomes: dict[str, list[ExpectationOutcome]] = field(default_factory=dict)  # by contract table

    @property
    def passed(self) -> bool:
        return not any(o.blocking_failure for table in self.outcomes.values() for o in table)


def delivery_context(con: duckdb.DuckDBPyConnection, delivery_id: str) -> dict:
    row = con.execute("SELECT data_cutoff FROM meta.deliveries WHERE delivery_id = ?", [delivery_id]).fetchone()
    if row is None:
        raise KeyError(f"delivery {delivery_id!r} has not been ingested")
    return {"delivery_id": delivery_id, "data_cutoff": row[0]}


def validate_delivery(con: duckdb.DuckDBPyConnection, delivery_id: str, tables: Iterable[str] | None = None) -> DeliveryValidation:
    """Every delivery suite of every (given) contract table, on one delivery. Persists nothing."""
    from cohort.contract import TABLES

    variables = delivery_context(con, delivery_id)
    validation = DeliveryValidation(delivery_id, variables["data_cutoff"])
    with WarehouseValidator(con, **variables) as validator:
        for table in tables or TABLES:
            validation.outcomes[table] = [o for suite in suites_for(table) for o in validator.validate(suite)]
    return validation


def validate_quarter(con: duckdb.DuckDBPyConnection, data_cutoff: date, tables: Iterable[str]) -> dict[str, list[ExpectationOutcome]]:
    """Every quarter suite of the given cohort tables (`cohort.members`, ...) at a data cutoff."""
    outcomes: dict[str, list[ExpectationOutcome]] = {}
    with WarehouseValidator(con, data_cutoff=data_cutoff) as validator:
        for table in tables:
            outcomes[table] = [o for suite in suites_for(table, "quarter") for o in validator.validate(suite)]
    return outcomes


__all__ = [
    "DQD_CHECKS", "EXPECTATION_KINDS", "KAHN_CATEGORIES", "SEVERITIES", "DeliveryValidation", "ExpectationOutcome",
    "Suite", "SuiteError", "WarehouseValidator", "all_suites", "data_quality_page_path", "load_suite",
    "persist_delivery_results", "persist_quarter_results", "render_data_quality_page", "suites_for", "summarize",
    "validate_delivery", "validate_quarter",
]
