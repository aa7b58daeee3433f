"""The declarative rule engine: known-bad shapes as conditions over event columns and flags.

A rule is data (``configs/rules.yaml``): id, title, severity, rationale, a condition
(a pandas expression over the normalised columns and the flags of features.flags),
optionally an aggregate threshold, and test events that must (or must not) match.
Rules are the floor under the model: their hits are added to the model's view in
the rank, never instead of it.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import string
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.columns import EventColumns, combine, sorted_distinct
from features.events import COLUMN_NAMES, SALVAGE_MARKERS
from features.flags import FLAG_NAMES, HELPER_COLUMNS, FlagInputs, frame_with_flags, with_needs

SEVERITIES = ("info", "low", "medium", "high", "critical")
AGGREGATE_BY = ("user", "source_ip")
# ASFF finding types are namespace/category[/classifier]; a rule's ``finding_type`` names what it detects in
# the TTPs namespace (Security Hub's taxonomy, whose TTPs categories are these) or another namespace's category.
FINDING_TYPE_NAMESPACES = ("Software and Configuration Checks", "TTPs", "Effects", "Unusual Behaviors",
                           "Sensitive Data Identifications")
TTP_CATEGORIES = ("Data Exfiltration", "Command and Control", "Credential Access", "Defense Evasion", "Discovery",
                  "Execution", "Initial Access", "Lateral Movement", "Persistence", "Privilege Escalation")

# MITRE ATT&CK for Containers (attack.mitre.org/matrices/enterprise/containers/): its nine tactics, and the
# techniques of that matrix the rule pack uses, each with the tactics ATT&CK files it under. A rule's ``tactic``
# and ``technique`` must come from here and agree with each other; add a technique here (with its ATT&CK name)
# before a rule uses it.
TACTICS = {
    "TA0001": "Initial Access", "TA0002": "Execution", "TA0003": "Persistence", "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion", "TA0006": "Credential Access", "TA0007": "Discovery", "TA0008": "Lateral Movement",
    "TA0040": "Impact",
}


@dataclass(frozen=True)
class Technique:
    name: str
    tactics: tuple[str, ...]


TECHNIQUES = {
    "T1036.005": Technique("Masquerading: Match Legitimate Name or Location", ("TA0005",)),
    "T1053.007": Technique("Scheduled Task/Job: Container Orchestration Job", ("TA0002", "TA0003", "TA0004")),
    "T1069": Technique("Permission Groups Discovery", ("TA0007",)),
    "T1070": Technique("Indicator Removal", ("TA0005",)),
    "T1078": Technique("Valid Accounts", ("TA0001", "TA0003", "TA0004", "TA0005")),
    "T1098": Technique("Account Manipulation", ("TA0003", "TA0004")),
    "T1098.006": Technique("Account Manipulation: Additional Container Cluster Roles", ("TA0003", "TA0004")),
    "T1110": Technique("Brute Force", ("TA0006",)),
    "T1133": Technique("External Remote Services", ("TA0001", "TA0003")),
    "T1136.001": Technique("Create Account: Local Account", ("TA0003",)),
    "T1528": Technique("Steal Application Access Token", ("TA0006",)),
    "T1543.005": Technique("Create or Modify System Process: Container Service", ("TA0003", "TA0004")),
    "T1550.001": Technique("Use Alternate Authentication Material: Application Access Token", ("TA0005", "TA0008")),
    "T1552.007": Technique("Unsecured Credentials: Container API", ("TA0006",)),
    "T1562.001": Technique("Impair Defenses: Disable or Modify Tools", ("TA0005",)),
    "T1609": Technique("Container Administration Command", ("TA0002",)),
    "T1610": Technique("Deploy Container", ("TA0002", "TA0005")),
    "T1611": Technique("Escape to Host", ("TA0004",)),
    "T1613": Technique("Container and Resource Discovery", ("TA0007",)),
}
_TECHNIQUE_ID = re.compile(r"T\d{4}(\.\d{3})?")


# --------------------------------------------------------------------------- title templates
# A rule's ``title_template`` is one plain line filled from one event it matched ("{user} {acted} {resource}
# {object}"). The placeholders are these, each read from the event columns a finding's evidence keeps
# (pipeline.report.pivots.EVIDENCE_COLUMNS); a missing value reads as its neutral word. Values are log text an
# attacker can set: control and bidirectional characters become spaces, each value is cut to TITLE_VALUE_MAX
# characters and the title to TITLE_MAX; the title stays plain text, escaped by whatever renders it.
TITLE_VALUE_MAX, TITLE_MAX = 80, 200
_PAST = {"create": "created", "update": "updated", "patch": "patched", "delete": "deleted", "deletecollection": "deleted all",
         "get": "read", "list": "listed", "watch": "watched", "proxy": "proxied"}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+")


def _present(value) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def _object(event: Mapping) -> str | None:
    namespace, name = event.get("namespace"), event.get("name")
    if _present(name):
        return f"{namespace}/{name}" if _present(namespace) else str(name)
    return f"{namespace}/*" if _present(namespace) else None


@dataclass(frozen=True)
class Placeholder:
    name: str
    reads: str
    missing: str
    value: Callable[[Mapping], object]


def _column(name: str) -> Callable[[Mapping], object]:
    return lambda event: event.get(name)


TITLE_PLACEHOLDERS = {p.name: p for p in (
    Placeholder("user", "user: the identity acting", "an unknown identity", _column("user")),
    Placeholder("source_ip", "source_ip: the connection address", "an unknown address", _column("source_ip")),
    Placeholder("user_agent", "user_agent: the client", "an unknown client", _column("user_agent")),
    Placeholder("verb", "verb, as the API names it (get, patch, create)", "act on", _column("verb")),
    Placeholder("acted", "verb in plain past tense (patched, read, listed)", "acted on",
                lambda event: _PAST.get(event.get("verb"), event.get("verb"))),
    Placeholder("resource", "resource (deployments, secrets)", "an object", _column("resource")),
    Placeholder("subresource", "subresource (exec, token, proxy)", "none", _column("subresource")),
    Placeholder("namespace", "namespace", "no namespace", _column("namespace")),
    Placeholder("name", "name", "an unnamed object", _column("name")),
    Placeholder("object", "namespace/name, or name alone for cluster-wide objects", "(no name)", _object),
    Placeholder("code", "code: the HTTP response code", "no response", _column("code")),
    Placeholder("impersonated_user", "impersonated_user: who the request acted as", "another identity",
                _column("impersonated_user")),
    Placeholder("path", "request_uri without its query (the API path asked for)", "an unknown path",
                lambda event: str(event["request_uri"]).split("?", 1)[0] if _present(event.get("request_uri")) else None),
)}


def _plain(text: str, limit: int) -> str:
    flat = " ".join(_UNSAFE.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def template_fields(template: str) -> list[str]:
    """The placeholders ``template`` names; raises ValueError for anything but plain ``{name}`` fields."""
    names = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion or not re.fullmatch(r"[a-z_]+", name):
            raise ValueError(f"placeholder {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                             "must be a plain {name}")
        names.append(name)
    return names


def fill_title(template: str, event: Mapping) -> str:
    """``template`` filled from ``event`` (a row of event columns): missing values read as neutral words."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            placeholder = TITLE_PLACEHOLDERS[name]
            value = placeholder.value(event)
            parts.append(_plain(str(value), TITLE_VALUE_MAX) if _present(value) else placeholder.missing)
    return _plain("".join(parts), TITLE_MAX)


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
    for rules on history flags the identity's ``history`` (peers, user_agents, ua_families, verb_resources),
    and for rules on the ``salvage`` marker the marker the event is archived with (features.events.SALVAGE_MARKERS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: dict
    expect: bool = True
    repeat: int = Field(1, ge=1, le=1000)
    history: dict[str, list[str]] | None = None
    salvage: str | None = None

    @field_validator("salvage")
    @classmethod
    def _marker(cls, value: str | None) -> str | None:
        if value is not None and value not in SALVAGE_MARKERS:
            raise ValueError(f"must be one of {', '.join(SALVAGE_MARKERS)}")
        return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    title: str
    severity: str
    finding_type: str
    tactic: str
    technique: str
    title_template: str
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

    @field_validator("tactic")
    @classmethod
    def _tactic(cls, value: str) -> str:
        if value not in TACTICS:
            raise ValueError(f"must be an ATT&CK for Containers tactic id, one of {', '.join(TACTICS)}")
        return value

    @field_validator("technique")
    @classmethod
    def _technique(cls, value: str) -> str:
        if not _TECHNIQUE_ID.fullmatch(value):
            raise ValueError("must be an ATT&CK technique id such as T1609 or T1552.007")
        if value not in TECHNIQUES:
            raise ValueError(f"is not among the declared ATT&CK for Containers techniques (features.rules.TECHNIQUES): "
                             f"{', '.join(TECHNIQUES)}")
        return value

    @field_validator("title_template")
    @classmethod
    def _title_template(cls, value: str) -> str:
        if "\n" in value or not value.strip() or len(value) > TITLE_MAX:
            raise ValueError(f"must be one non-empty line of at most {TITLE_MAX} characters")
        unknown = sorted(set(template_fields(value)) - set(TITLE_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"names unknown placeholders {', '.join(unknown)}; known: {', '.join(TITLE_PLACEHOLDERS)}")
        return value

    @model_validator(mode="after")
    def _technique_under_tactic(self) -> "Rule":
        if self.tactic not in TECHNIQUES[self.technique].tactics:
            raise ValueError(f"technique {self.technique} is not under tactic {self.tactic} ({TACTICS[self.tactic]}) in ATT&CK")
        return self

    @property
    def tactic_name(self) -> str:
        return TACTICS[self.tactic]

    @property
    def technique_name(self) -> str:
        return TECHNIQUES[self.technique].name

    def title_for(self, event: Mapping) -> str:
        """The plain one-line title of this rule's hit on ``event`` (``fill_title``)."""
        return fill_title(self.title_template, event)

    @field_validator("finding_type")
    @classmethod
    def _finding_type(cls, value: str) -> str:
        parts = value.split("/")
        if not 2 <= len(parts) <= 3 or parts[0] not in FINDING_TYPE_NAMESPACES or not all(parts):
            raise ValueError(f"must be an ASFF type namespace/category[/classifier] with namespace one of {', '.join(FINDING_TYPE_NAMESPACES)}")
        if parts[0] == "TTPs" and parts[1] not in TTP_CATEGORIES:
            raise ValueError(f"TTPs category must be one of {', '.join(TTP_CATEGORIES)}")
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
        return pd.DataFrame(self.hits(events), index=events.index)

    def hits(self, events: pd.DataFrame | FlagInputs, truths: dict[str, np.ndarray] | None = None,
             groups: "AggregateGroups | None" = None) -> dict[str, np.ndarray]:
        """Boolean hits per active rule: of a flagged DataFrame, or of the FlagInputs of
        features.flags.flag_events with ``truths`` (boolean columns such as the history flags) beside its flags.

        Each condition is compiled once per pack (``compile_condition``) and evaluated over the
        columns it names; the result is what ``DataFrame.eval`` gives (``_reference_condition``),
        which still evaluates any condition outside the compiled subset. A rule with an aggregate
        threshold counts its groups over ``events``, or, for one piece of an hour read in pieces, takes
        them from ``groups`` (every piece's matches, ``AggregateGroups``): the hits of the whole."""
        hits = {}
        columns = _Columns(events, truths)
        for rule in self.active:
            matched = self._matched(rule, events, columns)
            if rule.aggregate is not None and matched.any():
                matched = groups.passing(rule, matched, columns) if groups is not None else _aggregate(rule.aggregate, events, matched, columns)
            hits[rule.id] = matched
        return hits

    def _matched(self, rule: Rule, events: pd.DataFrame | FlagInputs, columns: "_Columns") -> np.ndarray:
        """The rows matching ``rule``'s condition, allow-listed identities removed unless it applies to them."""
        matched = _condition(rule, events, self._compiled(rule), columns)
        if not rule.applies_to_allowlisted and columns.rows:
            matched = matched & ~columns.truth("managed_identity")[0]
        return matched

    @cached_property
    def threshold_flags(self) -> frozenset[str]:
        """The flags the rules with aggregate thresholds read (their conditions', and ``managed_identity`` where
        allow-listed identities are left out), with every flag those read: all a busy hour's first pass, which only
        counts their groups (``AggregateGroups``), computes (``flag_events(only=)``)."""
        names = set()
        for rule in self._thresholds:
            names.update(_columns_read(rule.condition, FLAG_NAMES))
            if not rule.applies_to_allowlisted:
                names.add("managed_identity")
        return with_needs(names)

    @cached_property
    def threshold_columns(self) -> frozenset[str]:
        """The event columns the rules with aggregate thresholds read beside their flags (``threshold_flags``), and
        ``time``."""
        return frozenset({"time"}.union(*map(_rule_columns, self._thresholds)))

    @cached_property
    def event_columns(self) -> frozenset[str]:
        """The event columns (features.events) the active rules can read (``_rule_columns``)."""
        return frozenset(set().union(*map(_rule_columns, self.active)))

    @property
    def _thresholds(self) -> list[Rule]:
        return [rule for rule in self.active if rule.aggregate is not None]

    @staticmethod
    def _compiled(rule: Rule) -> "CompiledCondition | None":
        if rule.condition not in _COMPILED:  # per process, not in the pack: a pack stays picklable for worker processes
            _COMPILED[rule.condition] = compile_condition(rule.condition)
        return _COMPILED[rule.condition]

    def severity(self, rule_id: str) -> str:
        return next(r.severity for r in self.rules if r.id == rule_id)

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}

    def headline(self, hits: list[dict], events: list[Mapping]) -> str | None:
        """A finding's one-line headline: the title of its top rule hit (the first not routine, else the first;
        hits come weightiest first), filled from the earliest of ``events`` (evidence rows, whose ``why`` lists
        ``rule:<id>``) that rule matched, or the rule's fixed ``title`` when no such event was kept."""
        if not hits:
            return None
        top = next((hit for hit in hits if not hit.get("routine")), hits[0])
        rule = self.by_id().get(top["rule"])
        if rule is None:
            return None
        matched = [e for e in events if f"rule:{rule.id}" in (e.get("why") or ())]
        return rule.title_for(min(matched, key=lambda e: str(e.get("time")))) if matched else rule.title


_IDENTIFIER = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\b")
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")


def _columns_read(condition: str, available) -> list[str]:
    """The event columns a condition names (pandas.eval is much faster on just those)."""
    names = set(_IDENTIFIER.findall(_STRING.sub("", condition)))
    return [c for c in available if c in names]


def _rule_columns(rule: Rule) -> set[str]:
    """The event columns a rule can read: those its condition names, and with an aggregate its ``by`` and
    ``distinct`` and, for windows, ``time``."""
    names = set(_columns_read(rule.condition, COLUMN_NAMES))
    if rule.aggregate is not None:
        names.update(name for name in (rule.aggregate.by, rule.aggregate.distinct, "time") if name)
    return names


def _condition(rule: Rule, events: pd.DataFrame | FlagInputs, compiled: "CompiledCondition | None" = None,
               columns: "_Columns | None" = None) -> np.ndarray:
    columns = columns if columns is not None else _Columns(events)
    if not columns.rows:
        return np.zeros(0, dtype=bool)
    if compiled is not None:
        try:
            return compiled(columns)
        except _Unsupported:  # outside the compiled subset for these columns: pandas decides, as always
            pass
    return _reference_condition(rule, columns.frame())


def _reference_condition(rule: Rule, events: pd.DataFrame) -> np.ndarray:
    """The condition as ``DataFrame.eval`` evaluates it: the definition the compiled form must equal."""
    if events.empty:
        return np.zeros(0, dtype=bool)
    try:
        result = events[_columns_read(rule.condition, events.columns)].eval(rule.condition, engine="python")
    except Exception as error:  # pandas raises many types for a bad expression; all mean the rule is broken
        raise RuleError(f"rule {rule.id}: condition cannot be evaluated: {type(error).__name__}: {error}") from None
    if isinstance(result, pd.Series):
        return result.fillna(False).to_numpy(dtype=bool).copy()
    return np.full(len(events), bool(result))


# --------------------------------------------------------------------------- compiled conditions
# ``DataFrame.eval`` re-parses a condition and rebuilds its scope on every call, a fixed cost a rule
# whatever the frame's size, which made the rule pack most of the features stage (every rule x every
# archived hour). A condition is parsed once here into a tree of closures over the columns it names.
# The subset compiled is the one rule packs use: flag names, and/or/not, one comparison of a column
# with a constant (or a list of constants for in / not in), a column with a column, and the
# predicate methods of ``.str``. Each node does what pandas.eval does for it (the same Series
# operation where the result is not a plain boolean array: ``==`` with a string is ``isin``, a
# nullable column compares to NA), with pandas' Kleene logic for NA in and/or/not, and NA counting
# as False at the end. Anything else (other syntax, other dtypes) is evaluated by pandas.

_COMPILED: dict[str, "CompiledCondition | None"] = {}


class _Unsupported(Exception):
    """The compiled subset does not cover this condition (or these columns' dtypes)."""


# A truth value per row: (values, na) where na is None or a boolean mask of NA rows (values False there).
_Truth = tuple[np.ndarray, "np.ndarray | None"]

_STR_PREDICATES = frozenset({
    "startswith", "endswith", "contains", "match", "fullmatch", "isalnum", "isalpha", "isdigit", "isspace",
    "islower", "isupper", "istitle", "isnumeric", "isdecimal",
})
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_REJECTED_TOKENS = re.compile(r"[&|@`]")


class _Columns:
    """The event columns a pack's conditions read, each converted once per frame.

    ``events`` is a flagged DataFrame, or the FlagInputs of features.flags.flag_events plus
    ``truths``: then flags, helper and ``truths`` columns are read as the boolean arrays they are,
    other columns are converted to pandas one at a time, and the whole frame (what add_flags and
    ``truths`` would give) is built only for a condition outside the compiled subset."""

    def __init__(self, events: pd.DataFrame | FlagInputs, truths: dict[str, np.ndarray] | None = None):
        self.events = events
        self.rows = events.rows if isinstance(events, FlagInputs) else len(events)
        self._extra = dict(truths or {})
        if isinstance(events, FlagInputs):
            self._arrays = {**events.helpers, **events.flags, **self._extra}
            self.names = events.names | frozenset(HELPER_COLUMNS) | frozenset(self._arrays)
            self._frame = None
        else:
            self._arrays = self._extra
            self.names = frozenset(events.columns) | frozenset(self._arrays)
            self._frame = events.assign(**self._extra) if self._extra else events
        self._truths: dict[str, _Truth] = {name: (values, None) for name, values in self._arrays.items()}
        self._series: dict[str, pd.Series] = {}
        self._codes: dict[object, np.ndarray | None] = {}

    def series(self, name: str) -> pd.Series:
        if name not in self._series:
            if name not in self.names:
                raise _Unsupported(name)
            if self._frame is not None:
                self._series[name] = self._frame[name]
            elif name in self._arrays:
                self._series[name] = pd.Series(self._arrays[name])
            else:
                self._series[name] = self.events.series(name)
        return self._series[name]

    def values(self, name: str) -> tuple[EventColumns, str] | None:
        """For an event column of an Arrow table (FlagInputs), not shadowed by a flag, helper or truth:
        the column's ``EventColumns`` and its kind, "text" (string, large_string or a dictionary of
        them, a ``str`` Series in pandas) or "int32" (an ``Int32`` Series), so a compiled node can test
        each distinct value once (``EventColumns.where``) instead of converting the column to pandas.
        None for anything else: the node then works on ``series`` as before."""
        if self._frame is not None or name in self._arrays or name not in self.events.names \
                or not isinstance(self.events.events, pa.Table):
            return None
        arrow_type = self.events.events.schema.field(name).type
        if pa.types.is_dictionary(arrow_type):
            arrow_type = arrow_type.value_type
        if arrow_type in (pa.string(), pa.large_string()):
            return self.events, "text"
        if arrow_type == pa.int32():
            return self.events, "int32"
        return None

    def frame(self) -> pd.DataFrame:
        """All columns as one DataFrame (for pandas' own evaluation)."""
        if self._frame is None:
            self._frame = frame_with_flags(self.events).assign(**self._extra)
        return self._frame

    def truth(self, name: str) -> _Truth:
        if name not in self._truths:
            self._truths[name] = _as_truth(self.series(name))
        return self._truths[name]

    def codes(self, name: str) -> np.ndarray:
        """Integer codes of a column's values, -1 where missing (for grouping)."""
        if name not in self._codes:
            if self._frame is None and name in self.events.names:
                codes = self.events.codes(name).astype(np.int64)
                self._codes[name] = np.where(self.events.missing(name), -1, codes)
            else:
                self._codes[name] = pd.factorize(self.series(name), use_na_sentinel=True)[0]
        return self._codes[name]

    def windows(self, minutes: int) -> np.ndarray | None:
        """Integer window numbers of the event times (see ``_window_codes``)."""
        if ("time", minutes) not in self._codes:
            if self._frame is None:
                missing = self.events.missing("time").any()
                self._codes[("time", minutes)] = None if missing else self.events.micros("time") // (minutes * 60_000_000)
            else:
                self._codes[("time", minutes)] = _window_codes(self.series("time"), minutes)
        return self._codes[("time", minutes)]


def _as_truth(result) -> _Truth:
    """A boolean Series or array as (values, na); anything else is not compiled."""
    if isinstance(result, pd.Series):
        dtype = result.dtype
        if dtype == np.bool_:
            return result.to_numpy(), None
        if isinstance(dtype, pd.BooleanDtype):
            na = result.isna().to_numpy()
            return result.fillna(False).to_numpy(dtype=bool), (na if na.any() else None)
    raise _Unsupported(f"not a boolean column: {getattr(result, 'dtype', type(result))}")


def _and(left: _Truth, right: _Truth) -> _Truth:
    (lv, ln), (rv, rn) = left, right
    if ln is None and rn is None:
        return lv & rv, None
    unknown = (ln if rn is None else rn if ln is None else ln | rn)
    known_false = (~lv & (~ln if ln is not None else True)) | (~rv & (~rn if rn is not None else True))
    return lv & rv, unknown & ~known_false


def _or(left: _Truth, right: _Truth) -> _Truth:
    (lv, ln), (rv, rn) = left, right
    values = lv | rv
    if ln is None and rn is None:
        return values, None
    unknown = (ln if rn is None else rn if ln is None else ln | rn)
    return values, unknown & ~values


def _not(truth: _Truth) -> _Truth:
    values, na = truth
    return (~values if na is None else ~values & ~na), na


def _int32(value) -> bool:
    """An integer constant an Int32 column compares with as Python does (no bool, no overflow)."""
    return isinstance(value, int) and not isinstance(value, bool) and -2 ** 31 <= value < 2 ** 31


def _by_value(columns: _Columns, name: str, kind: str, key: tuple, predicate: Callable[[object], bool], na: bool) -> _Truth | None:
    """``predicate`` of event column ``name``'s non-missing values, run once per distinct value, when the
    column is of ``kind`` (``_Columns.values``); missing values are False, and NA too when ``na`` (an Int32
    comparison gives NA there). ``key`` names the test for ``EventColumns.where``, which answers each key
    once (the flags' keys ("==", value) and ("in", values) mean the same tests). None when the column is
    not of that kind: the caller converts it to pandas."""
    found = columns.values(name)
    if found is None or found[1] != kind:
        return None
    events = found[0]
    result = events.where(name, lambda value: value is not None and predicate(value), key)
    missing = events.missing(name) if na else None
    return result, (missing if missing is not None and missing.any() else None)


def _constant(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        return -node.operand.value
    raise _Unsupported(ast.dump(node))


def _comparable(series: pd.Series) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype) or dtype == np.float32:
        raise _Unsupported(f"comparison on {dtype}")  # pandas.eval converts these operands first
    return series


def _compile_node(node: ast.AST) -> Callable[[_Columns], _Truth]:
    if isinstance(node, ast.BoolOp):
        parts = [_compile_node(value) for value in node.values]
        combine = _and if isinstance(node.op, ast.And) else _or

        def boolop(columns: _Columns) -> _Truth:
            result = parts[0](columns)
            for part in parts[1:]:
                result = combine(result, part(columns))
            return result
        return boolop
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
        inner = _compile_node(node.operand)
        return lambda columns: _not(inner(columns))
    if isinstance(node, ast.Name):
        name = node.id
        return lambda columns: columns.truth(name)
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if isinstance(node, ast.Call):
        return _compile_call(node)
    raise _Unsupported(type(node).__name__)


def _compile_compare(node: ast.Compare) -> Callable[[_Columns], _Truth]:
    if len(node.ops) != 1:
        raise _Unsupported("chained comparison")
    op, left, right = node.ops[0], node.left, node.comparators[0]
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(left, ast.Name) or not isinstance(right, (ast.List, ast.Tuple)):
            raise _Unsupported("in")
        name, values, negate = left.id, [_constant(e) for e in right.elts], isinstance(op, ast.NotIn)

        wanted = frozenset(values)
        kind = "text" if all(isinstance(v, str) for v in values) else "int32" if all(_int32(v) for v in values) else None

        def membership(columns: _Columns) -> _Truth:
            # Series.isin: a missing value is in no list of constants
            result = _by_value(columns, name, kind, ("in", wanted), wanted.__contains__, False) if kind else None
            if result is None:
                result = _as_truth(_comparable(columns.series(name)).isin(values))
            return _not(result) if negate else result
        return membership
    if type(op) not in _COMPARE:
        raise _Unsupported(type(op).__name__)
    function = _COMPARE[type(op)]
    if isinstance(left, ast.Name) and isinstance(right, ast.Name):
        a, b = left.id, right.id
        return lambda columns: _as_truth(function(_comparable(columns.series(a)), _comparable(columns.series(b))))
    if isinstance(left, ast.Name):
        name, value, column_left = left.id, _constant(right), True
    elif isinstance(right, ast.Name):
        name, value, column_left = right.id, _constant(left), False
    else:
        raise _Unsupported("comparison without a column")
    if isinstance(value, str) and isinstance(op, (ast.Eq, ast.NotEq)):
        # pandas.eval rewrites ``column == 'text'`` as ``column.isin(['text'])`` (and != as its negation)
        negate = isinstance(op, ast.NotEq)

        def equals_text(columns: _Columns) -> _Truth:
            result = _by_value(columns, name, "text", ("==", value), value.__eq__, False)
            if result is None:
                result = _as_truth(_comparable(columns.series(name)).isin([value]))
            return _not(result) if negate else result
        return equals_text
    test = (lambda v: function(v, value)) if column_left else (lambda v: function(value, v))
    key = ("compare", type(op).__name__, value, column_left)

    def compare(columns: _Columns) -> _Truth:
        # an Int32 column against an integer: NA where the column is missing, as pandas' masked comparison gives
        result = _by_value(columns, name, "int32", key, test, True) if _int32(value) else None
        if result is not None:
            return result
        if column_left:
            return _as_truth(function(_comparable(columns.series(name)), value))
        return _as_truth(function(value, _comparable(columns.series(name))))
    return compare


def _compile_call(node: ast.Call) -> Callable[[_Columns], _Truth]:
    method = node.func
    if not (isinstance(method, ast.Attribute) and method.attr in _STR_PREDICATES and isinstance(method.value, ast.Attribute)
            and method.value.attr == "str" and isinstance(method.value.value, ast.Name)):
        raise _Unsupported("call")
    name, predicate = method.value.value.id, method.attr
    args = [_keyword_value(a) for a in node.args]
    kwargs = {k.arg: _keyword_value(k.value) for k in node.keywords}
    if any(k is None for k in kwargs):
        raise _Unsupported("**kwargs")
    prefix = args[0] if len(args) == 1 else None
    by_value = predicate in ("startswith", "endswith") and kwargs == {"na": False} and kwargs["na"] is False and (
        isinstance(prefix, str) or (isinstance(prefix, tuple) and prefix and all(isinstance(p, str) for p in prefix)))

    def call(columns: _Columns) -> _Truth:
        # str.startswith/endswith(..., na=False) on a str column: False where missing, else Python's answer
        result = _by_value(columns, name, "text", (f"str.{predicate}", prefix), lambda v: getattr(v, predicate)(prefix), False) \
            if by_value else None
        if result is not None:
            return result
        return _as_truth(getattr(columns.series(name).str, predicate)(*args, **kwargs))
    return call


def _keyword_value(node: ast.AST):
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_constant(e) for e in node.elts)
    return _constant(node)


class CompiledCondition:
    """A rule condition parsed once: ``compiled(_Columns(events))`` is the boolean hit array
    ``DataFrame.eval`` gives for it (NA counted False). Raises for columns it does not cover."""

    def __init__(self, condition: str, root: Callable[[_Columns], _Truth]):
        self.condition = condition
        self._root = root

    def __call__(self, columns: _Columns) -> np.ndarray:
        values, _ = self._root(columns)
        return np.array(values, dtype=bool, copy=True)


def compile_condition(condition: str) -> CompiledCondition | None:
    """The compiled form of ``condition``, or None when it is outside the compiled subset
    (``DataFrame.eval`` then evaluates it, as before)."""
    if _REJECTED_TOKENS.search(_STRING.sub("", condition)):
        return None  # & and | (pandas gives them boolean precedence), @locals, `quoted names`
    try:
        tree = ast.parse(condition.strip(), mode="eval")
        return CompiledCondition(condition, _compile_node(tree.body))
    except (SyntaxError, _Unsupported, ValueError, TypeError, RecursionError):
        return None


def _aggregate(aggregate: Aggregate, events: pd.DataFrame | FlagInputs, matched: np.ndarray, columns: "_Columns | None" = None) -> np.ndarray:
    """The matched events whose (``by``, window) group reaches ``min`` events, or ``min`` distinct
    values of ``distinct``; groups are numbered with integer codes, computed once per frame
    (``_aggregate_reference`` is the pandas groupby this equals)."""
    columns = columns if columns is not None else _Columns(events)
    rows = np.flatnonzero(matched)
    windows = columns.windows(aggregate.window_minutes)
    if windows is None:
        return _aggregate_reference(aggregate, columns.frame(), matched)
    by = columns.codes(aggregate.by)[rows]
    keep = by >= 0
    result = np.zeros(columns.rows, dtype=bool)
    if not keep.any():
        return result
    rows = rows[keep]
    buckets = windows[rows] - windows[rows].min()
    _, group = np.unique(by[keep].astype(np.int64) * (int(buckets.max()) + 1) + buckets, return_inverse=True)
    if aggregate.distinct:
        values = columns.codes(aggregate.distinct)[rows].astype(np.int64)
        present = values >= 0
        span = int(values.max()) + 1 if present.any() else 1
        pairs = sorted_distinct(group[present].astype(np.int64) * span + values[present])
        metric = np.bincount(pairs // span, minlength=int(group.max()) + 1)[group]
    else:
        metric = np.bincount(group)[group]
    result[rows[metric >= aggregate.min]] = True
    return result


class AggregateGroups:
    """The groups of a pack's aggregate-threshold rules over an hour read in pieces (each piece's ``add``
    first, then each piece's ``RulePack.hits(..., groups=)``), so a piece's hits are those of the whole
    hour. Per rule and (``by`` value, window) it keeps the matched events' count, or their distinct
    values, only up to the rule's ``min``: once a group reaches it, more cannot change the answer, so
    memory grows with the groups, not with the matched events."""

    def __init__(self, pack: RulePack):
        self.pack = pack
        self.tallies: dict[str, dict[tuple, int | set]] = {rule.id: {} for rule in pack.active if rule.aggregate is not None}

    def add(self, events: pd.DataFrame | FlagInputs, truths: dict[str, np.ndarray] | None = None) -> None:
        """Count one piece's matches of every aggregate rule."""
        columns = _Columns(events, truths)
        for rule in self.pack.active:
            if rule.aggregate is None:
                continue
            matched = self.pack._matched(rule, events, columns)
            if not matched.any():
                continue
            tally, aggregate = self.tallies[rule.id], rule.aggregate
            group, keys, rows = _group_keys(aggregate, columns, np.flatnonzero(matched))
            if not aggregate.distinct:
                for key, count in zip(keys, np.bincount(group, minlength=len(keys)).tolist()):
                    tally[key] = min(tally.get(key, 0) + count, aggregate.min)
                continue
            codes = columns.codes(aggregate.distinct)[rows]
            present = codes >= 0
            span = int(codes.max()) + 1 if present.any() else 1
            pairs = sorted_distinct(group[present].astype(np.int64) * span + codes[present])
            values = _column_values(columns, aggregate.distinct)
            for key in keys:
                tally.setdefault(key, set())
            for owner, code in zip((pairs // span).tolist(), (pairs % span).tolist()):
                seen = tally[keys[owner]]
                if len(seen) < aggregate.min:
                    seen.add(values[code])

    def passing(self, rule: Rule, matched: np.ndarray, columns: "_Columns") -> np.ndarray:
        """``matched`` rows of one piece whose group reached the rule's ``min`` over every piece added."""
        tally, aggregate = self.tallies[rule.id], rule.aggregate
        group, keys, rows = _group_keys(aggregate, columns, np.flatnonzero(matched))
        reached = np.array([(len(tally.get(key, ())) if aggregate.distinct else tally.get(key, 0)) >= aggregate.min for key in keys],
                           dtype=bool)
        result = np.zeros(columns.rows, dtype=bool)
        result[rows[reached[group]]] = True
        return result


def _column_values(columns: "_Columns", name: str) -> np.ndarray:
    """The values ``_Columns.codes`` numbers, as an object array indexed by code."""
    if columns._frame is None and name in columns.events.names:
        return np.array(columns.events.encoded(name)[1], dtype=object)
    return np.asarray(pd.factorize(columns.series(name), use_na_sentinel=True)[1], dtype=object)


def _group_keys(aggregate: Aggregate, columns: "_Columns", rows: np.ndarray) -> tuple[np.ndarray, list[tuple], np.ndarray]:
    """The groups ``_aggregate`` counts among ``rows``, named by value so that the pieces of an hour agree:
    (group per row, (``by`` value, window number) per group, the rows, those without a ``by`` value left out)."""
    windows = columns.windows(aggregate.window_minutes)
    if windows is None:
        raise RuleError("an hour read in pieces needs a time on every event")
    codes = columns.codes(aggregate.by)[rows]
    rows = rows[codes >= 0]
    window_codes, window_values = np.unique(windows[rows], return_inverse=True)[::-1]
    group, keys = combine([(codes[codes >= 0], _column_values(columns, aggregate.by)), (window_codes, window_values)],
                          lambda value, window: (value, int(window)))
    return group, keys, rows


def _window_codes(times: pd.Series, window_minutes: int) -> np.ndarray | None:
    """Integer window numbers equal where ``times.dt.floor(window)`` is equal; None if a time is missing."""
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_localize(None)  # floor works on the wall clock, as dt.floor does
    values = times.to_numpy()
    if values.dtype.kind != "M" or np.isnat(values).any():
        return None
    unit, _ = np.datetime_data(values.dtype)
    step = int(np.timedelta64(window_minutes, "m") / np.timedelta64(1, unit))
    return values.view(np.int64) // step


def _aggregate_reference(aggregate: Aggregate, events: pd.DataFrame, matched: np.ndarray) -> np.ndarray:
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
