"""The study protocol (sql/cohort/protocol.toml), loaded and validated.

Invalid values fail loudly with the field and the reason, before any SQL runs.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cohort.settings import SQL_DIR

PROTOCOL_PATH = SQL_DIR / "cohort" / "protocol.toml"
BONE_ACTIVE_CLASSES = {"bisphosphonate", "denosumab", "pth_analog"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Population(_Section):
    sex_at_birth: Literal["M", "F", "U"] = "M"
    min_age_at_index: int = Field(18, ge=0, le=120)


class NewUsers(_Section):
    washout_days: int = Field(365, ge=0, le=3650)


class Exclusions(_Section):
    bone_active_drug_classes: tuple[str, ...] = ("bisphosphonate", "denosumab", "pth_analog")
    prior_fracture_days: int = Field(365, ge=0, le=3650)

    @field_validator("bone_active_drug_classes")
    @classmethod
    def _known_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := sorted(set(value) - BONE_ACTIVE_CLASSES):
            raise ValueError(f"unknown drug class(es) {unknown}; choose from {sorted(BONE_ACTIVE_CLASSES)}")
        return value


class Baseline(_Section):
    lab_days_before: int = Field(365, ge=0, le=3650)
    lab_days_after: int = Field(30, ge=0, le=365)


class BmdAnalysis(_Section):
    baseline_scan_days_before: int = Field(365, ge=0, le=3650)
    baseline_scan_days_after: int = Field(90, ge=0, le=3650)
    require_follow_up_scan: bool = True


class Exposure(_Section):
    grace_period_days: int = Field(30, ge=0, le=365)
    default_days_supply: int = Field(30, ge=1, le=365)


class Estradiol(_Section):
    lookback_days: int = Field(180, ge=1, le=3650)
    tier_bounds_pg_ml: tuple[float, float, float] = (10, 20, 40)
    lcms_only: bool = False

    @field_validator("tier_bounds_pg_ml")
    @classmethod
    def _increasing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not 0 < value[0] < value[1] < value[2]:
            raise ValueError("tier bounds must be positive and strictly increasing, e.g. [10, 20, 40]")
        return value


class FractureModels(_Section):
    """Confounding control and the diagnostics gate of the fracture models (cohort/fracture.py)."""

    truncation_percentiles: tuple[float, float] = (1, 99)   # [0, 100]: no truncation
    truncation_scope: Literal["overall", "group"] = "overall"
    smd_threshold: float = Field(0.1, gt=0, le=1)
    equipoise_bounds: tuple[float, float] = (0.3, 0.7)
    equipoise_threshold: float = Field(0.2, ge=0, le=1)
    min_events: int = Field(10, ge=1)
    mdrr_threshold: float = Field(10, gt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    ph_time_transform: Literal["rank", "km"] = "rank"
    lcms_sensitivity: bool = True

    @field_validator("truncation_percentiles", "equipoise_bounds")
    @classmethod
    def _ordered_pair(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError("the first bound must be below the second")
        return value


class Reporting(_Section):
    small_cell_threshold: int = Field(11, ge=1, le=1000)


class Protocol(_Section):
    population: Population = Population()
    new_users: NewUsers = NewUsers()
    exclusions: Exclusions = Exclusions()
    baseline: Baseline = Baseline()
    bmd_analysis: BmdAnalysis = BmdAnalysis()
    exposure: Exposure = Exposure()
    estradiol: Estradiol = Estradiol()
    fracture_models: FractureModels = FractureModels()
    reporting: Reporting = Reporting()

    def sql_variables(self) -> dict[str, object]:
        """The protocol as the flat variables the cohort SQL reads with getvariable()."""
        lo, mid, hi = self.estradiol.tier_bounds_pg_ml
        return {
            "sex_at_birth": self.population.sex_at_birth,
            "min_age_at_index": self.population.min_age_at_index,
            "washout_days": self.new_users.washout_days,
            "bone_active_drug_classes": list(self.exclusions.bone_active_drug_classes),
            "prior_fracture_days": self.exclusions.prior_fracture_days,
            "lab_days_before": self.baseline.lab_days_before,
            "lab_days_after": self.baseline.lab_days_after,
            "baseline_scan_days_before": self.bmd_analysis.baseline_scan_days_before,
            "baseline_scan_days_after": self.bmd_analysis.baseline_scan_days_after,
            "require_follow_up_scan": self.bmd_analysis.require_follow_up_scan,
            "grace_period_days": self.exposure.grace_period_days,
            "default_days_supply": self.exposure.default_days_supply,
            "e2_lookback_days": self.estradiol.lookback_days,
            "e2_bound_low": lo,
            "e2_bound_mid": mid,
            "e2_bound_high": hi,
            "e2_lcms_only": self.estradiol.lcms_only,
        }


class ProtocolError(ValueError):
    pass


def load_protocol(path: Path = PROTOCOL_PATH) -> Protocol:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ProtocolError(f"protocol file {path} could not be read: {error}") from None
    try:
        return Protocol.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ProtocolError(f"protocol file {path} is invalid: {problems}") from None


def protocol_hash(path: Path = PROTOCOL_PATH) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
