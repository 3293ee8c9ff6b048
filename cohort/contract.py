"""The extract contract (v1, ../shared/EXTRACTS.md) as data, and the manifest checks.

A delivery that breaks the contract at the file level (manifest, checksums, row counts,
missing tables or columns) is rejected whole with a `DeliveryRejected` naming the file and
the reason; row-level problems are not errors here, they go to quarantine during ingest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

CONTRACT_VERSION = "1"
DELIVERY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FILE_FORMATS = (".csv", ".csv.gz", ".parquet")

# Contract columns per table, in contract order; `required` columns must be present as columns
# (their values may still be null in a given row, which ingest quarantines where it matters).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": (
        "patient_key", "sex_at_birth", "birth_year", "age_90_plus", "race", "ethnicity",
        "enrollment_start", "enrollment_end", "death_date",
    ),
    "medications": (
        "patient_key", "drug_name", "rxnorm_code", "atc_code", "start_date", "days_supply",
        "end_date", "dose_mg", "doses_per_week", "route",
    ),
    "labs": (
        "patient_key", "loinc_code", "test_name", "result", "unit", "collected_date",
        "assay_method", "loq",
    ),
    "dxa": (
        "patient_key", "scan_date", "skeletal_site", "laterality", "bmd_g_cm2", "t_score",
        "z_score", "manufacturer", "scanner_model",
    ),
    "diagnoses": ("patient_key", "icd10_code", "diagnosis_date", "encounter_type"),
}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_key", "sex_at_birth", "enrollment_start", "enrollment_end"),
    "medications": ("patient_key", "drug_name", "start_date"),
    "labs": ("patient_key", "test_name", "result", "collected_date"),
    "dxa": ("patient_key", "scan_date", "skeletal_site", "bmd_g_cm2", "manufacturer"),
    "diagnoses": ("patient_key", "icd10_code", "diagnosis_date"),
}
TABLES = tuple(TABLE_COLUMNS)


class DeliveryRejected(Exception):
    """The delivery breaks the contract at file level; nothing from it may be loaded."""

    def __init__(self, delivery: str, reason: str, file: str | None = None):
        self.delivery = delivery
        self.reason = reason
        self.file = file
        where = f" ({file})" if file else ""
        super().__init__(f"delivery {delivery!r} rejected{where}: {reason}")


@dataclass(frozen=True)
class DeliveryFile:
    table: str
    path: Path
    expected_rows: int
    sha256: str

    @property
    def format(self) -> str:
        return next(f for f in FILE_FORMATS if self.path.name.endswith(f))


@dataclass(frozen=True)
class Manifest:
    delivery_id: str
    source_site: str
    extracted_at: datetime
    data_cutoff: date
    deidentification: str
    files: dict[str, DeliveryFile] = field(default_factory=dict)  # by table
    manifest_sha256: str = ""


def table_of(file_name: str) -> str | None:
    """The contract table a file name stands for (`labs.csv.gz` -> `labs`), else None."""
    for fmt in FILE_FORMATS:
        if file_name.endswith(fmt):
            stem = file_name[: -len(fmt)]
            return stem if stem in TABLE_COLUMNS else None
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_date(delivery: str, key: str, value: object) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise DeliveryRejected(delivery, f"manifest field {key!r} is not an ISO date", "manifest.json")


def read_manifest(folder: Path) -> Manifest:
    """Parse and check `folder/manifest.json` and the files it lists (presence, checksums).

    Row counts are checked by ingest once the files are read, since counting CSV records
    (quoted fields may hold newlines) needs a real CSV parser.
    """
    delivery = folder.name
    if not DELIVERY_ID_PATTERN.fullmatch(delivery):
        raise DeliveryRejected(delivery[:64], "folder name is not a valid delivery_id ([A-Za-z0-9_.-]{1,64})")
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DeliveryRejected(delivery, "manifest.json is missing")
    raw_bytes = manifest_path.read_bytes()
    try:
        data = json.loads(raw_bytes.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeliveryRejected(delivery, f"manifest.json is not valid JSON ({error.__class__.__name__})", "manifest.json")
    if not isinstance(data, dict):
        raise DeliveryRejected(delivery, "manifest.json must hold a JSON object", "manifest.json")

    missing = [k for k in ("contract_version", "delivery_id", "source_site", "extracted_at", "data_cutoff", "files") if k not in data]
    if missing:
        raise DeliveryRejected(delivery, f"manifest.json lacks required fields: {', '.join(missing)}", "manifest.json")
    if str(data["contract_version"]) != CONTRACT_VERSION:
        raise DeliveryRejected(delivery, f"unsupported contract_version {str(data['contract_version'])[:20]!r} (expected {CONTRACT_VERSION!r})", "manifest.json")
    if data["delivery_id"] != delivery:
        raise DeliveryRejected(delivery, "manifest delivery_id differs from the folder name", "manifest.json")
    site = str(data["source_site"])
    if not DELIVERY_ID_PATTERN.fullmatch(site):
        raise DeliveryRejected(delivery, "source_site must match [A-Za-z0-9_.-]{1,64}", "manifest.json")
    try:
        extracted_at = datetime.fromisoformat(str(data["extracted_at"]).replace("Z", "+00:00"))
    except ValueError:
        raise DeliveryRejected(delivery, "manifest field 'extracted_at' is not an ISO timestamp", "manifest.json")
    data_cutoff = _parse_date(delivery, "data_cutoff", data["data_cutoff"])
    if not isinstance(data["files"], dict):
        raise DeliveryRejected(delivery, "manifest field 'files' must be an object", "manifest.json")

    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")}
    listed = set(data["files"])
    if unlisted := sorted(present - listed):
        raise DeliveryRejected(delivery, f"file present but not listed in the manifest: {unlisted[0]}", unlisted[0])
    if absent := sorted(listed - present):
        raise DeliveryRejected(delivery, f"file listed in the manifest is absent: {absent[0]}", absent[0])

    files: dict[str, DeliveryFile] = {}
    for name, entry in sorted(data["files"].items()):
        table = table_of(name)
        if table is None:
            raise DeliveryRejected(delivery, f"file {name} is not one of the contract tables in a supported format", name)
        if table in files:
            raise DeliveryRejected(delivery, f"table {table} is delivered twice ({files[table].path.name}, {name})", name)
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), int) or not isinstance(entry.get("sha256"), str):
            raise DeliveryRejected(delivery, f"manifest entry for {name} needs integer 'rows' and string 'sha256'", "manifest.json")
        path = folder / name
        if sha256_of(path) != entry["sha256"].lower():
            raise DeliveryRejected(delivery, f"sha256 of {name} does not match the manifest", name)
        files[table] = DeliveryFile(table, path, entry["rows"], entry["sha256"].lower())
    if missing_tables := [t for t in TABLES if t not in files]:
        raise DeliveryRejected(delivery, f"required table missing: {', '.join(missing_tables)}")

    return Manifest(
        delivery_id=delivery,
        source_site=site,
        extracted_at=extracted_at,
        data_cutoff=data_cutoff,
        deidentification=str(data.get("deidentification", "")),
        files=files,
        manifest_sha256=hashlib.sha256(raw_bytes).hexdigest(),
    )


def discover_deliveries(landing_dir: Path) -> list[Path]:
    """Delivery folders in the landing zone (any folder holding a manifest.json), sorted by name."""
    if not landing_dir.is_dir():
        return []
    return sorted(p for p in landing_dir.iterdir() if p.is_dir() and (p / "manifest.json").exists())
