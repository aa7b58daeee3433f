"""The declarative rule engine: known-bad shapes as conditions over event columns and flags.

A rule is data (``configs/rules.yaml``): id, title, severity, rationale, a condition
(a pandas expression over the normalised columns and the flags of features.flags),
optionally an aggregate threshold, and test events that must (or must not) match.
Rules are the floor under the model: their hits are added to the model's view in
the rank, never instead of it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SEVERITIES = ("info", "low", "medium", "high", "critical")
AGGREGATE_BY = ("user", "source_ip")


class RuleError(ValueError):
    """A rule pack that cannot be used; the message names the rule and the problem."""


class Aggregate(BaseModel):
    """Fire only when, per ``by`` value and tumbling window, matching events reach ``min``
    (counted as events, or as distinct values of ``distinct``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    by: str
    window_minutes: int = Field(30, ge=1, le=1440)
    min: int = Field(ge=1)
    distinct: str | None = None

    @field_validator("by")
    @classmethod
    def _by(cls, value: str) -> str:
        if value not in AGGREGATE_BY:
            raise ValueError(f"must be one of {', '.join(AGGREGATE_BY)}")
        return value


class RuleTest(BaseModel):
    """Test events for a rule: ``event`` merged over a base event, ``repeat`` copies ({i} numbers them),
    and for rules on history flags the identity's ``history`` (peers, user_agents, ua_families, verb_resources)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: dict
    expect: bool = True
    repeat: int = Field(1, ge=1, le=1000)
    history: dict[str, list[str]] | None = None


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    title: str
    severity: str
    rationale: str
    condition: str
    aggregate: Aggregate | None = None
    applies_to_allowlisted: bool = False
    references: tuple[str, ...] = ()
    tests: tuple[RuleTest, ...] = Field(min_length=1)

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value not in SEVERITIES:
            raise ValueError(f"must be one of {', '.join(SEVERITIES)}")
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]{2,63}", value):
            raise ValueError("must be lower_snake_case, 3-64 characters")
        return value


@dataclass
class RulePack:
    rules: tuple[Rule, ...]
    disabled: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_dicts(cls, items: list[dict], disabled=(), source: str = "rule pack") -> "RulePack":
        rules = []
        for index, item in enumerate(items or []):
            try:
                rules.append(Rule.model_validate(item))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                name = item.get("id", f"#{index + 1}") if isinstance(item, dict) else f"#{index + 1}"
                raise RuleError(f"{source}: rule {name}: '{where}': {first['msg']}") from None
        ids = [r.id for r in rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise RuleError(f"{source}: duplicate rule ids: {', '.join(duplicates)}")
        unknown = sorted(set(disabled) - set(ids))
        if unknown:
            raise RuleError(f"{source}: rules.disabled names unknown rules: {', '.join(unknown)}")
        return cls(tuple(rules), frozenset(disabled))

    @property
    def active(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.id not in self.disabled)

    def evaluate(self, events: pd.DataFrame) -> pd.DataFrame:
        """Boolean hit columns, one per active rule, aligned with ``events`` (flags already added)."""
        hits = {}
        managed = events["managed_identity"].to_numpy(dtype=bool) if len(events) else np.zeros(0, dtype=bool)
        for rule in self.active:
            matched = _condition(rule, events)
            if not rule.applies_to_allowlisted:
                matched = matched & ~managed
            if rule.aggregate is not None and matched.any():
                matched = _aggregate(rule.aggregate, events, matched)
            hits[rule.id] = matched
        return pd.DataFrame(hits, index=events.index)

    def severity(self, rule_id: str) -> str:
        return next(r.severity for r in self.rules if r.id == rule_id)

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


_IDENTIFIER = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\b")
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")


def _columns_read(condition: str, available) -> list[str]:
    """The event columns a condition names (pandas.eval is much faster on just those)."""
    names = set(_IDENTIFIER.findall(_STRING.sub("", condition)))
    return [c for c in available if c in names]


def _condition(rule: Rule, events: pd.DataFrame) -> np.ndarray:
    if events.empty:
        return np.zeros(0, dtype=bool)
    try:
        result = events[_columns_read(rule.condition, events.columns)].eval(rule.condition, engine="python")
    except Exception as error:  # pandas raises many types for a bad expression; all mean the rule is broken
        raise RuleError(f"rule {rule.id}: condition cannot be evaluated: {type(error).__name__}: {error}") from None
    if isinstance(result, pd.Series):
        return result.fillna(False).to_numpy(dtype=bool).copy()
    return np.full(len(events), bool(result))


def _aggregate(aggregate: Aggregate, events: pd.DataFrame, matched: np.ndarray) -> np.ndarray:
    subset = events.loc[matched, [aggregate.by, "time"] + ([aggregate.distinct] if aggregate.distinct else [])].copy()
    subset["bucket"] = subset["time"].dt.floor(f"{aggregate.window_minutes}min")
    grouped = subset.groupby([aggregate.by, "bucket"], dropna=True)
    if aggregate.distinct:
        metric = grouped[aggregate.distinct].transform("nunique")
    else:
        metric = grouped["time"].transform("size")
    passing = (metric >= aggregate.min).reindex(subset.index).fillna(False).to_numpy(dtype=bool)
    result = np.zeros(len(events), dtype=bool)
    result[np.flatnonzero(matched)[passing]] = True
    return result
