"""The one typed configuration object, loaded once at the entry point.

Every section rejects unknown keys so a typo stops the run with the key's name
instead of silently falling back to a default. The resolved configuration is
saved beside every model and report (``resolved()``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PACKAGE_ROOT / "configs" / "local.yaml"
DEFAULT_RULES = PACKAGE_ROOT / "configs" / "rules.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Section):
    """Where the workdir lives, how S3 objects are encrypted, and when a workdir lock expires."""

    sse: Literal["none", "AES256", "aws:kms"] = "none"
    kms_key_id: str | None = None
    lock_expire_minutes: int = Field(360, ge=1, le=7 * 24 * 60, description=(
        "a workdir lock older than this is taken over even when its pid exists (a reused pid, a lock from another host): "
        "longer than a daily run, including an in-process SageMaker training job (model.sagemaker.max_runtime_seconds), "
        "and short enough that a stuck lock costs at most one daily run"))


class AwsConfig(Section):
    """Region and profile; the endpoint comes from AWS_ENDPOINT_URL, never from code."""

    region: str | None = None
    profile: str | None = None
    max_attempts: int = Field(10, ge=1, le=50)


class ArchiveConfig(Section):
    """Archive behaviour: which CloudWatch streams are audit streams and how late events may arrive."""

    audit_stream_prefix: str = "kube-apiserver-audit"
    grace_minutes: int = Field(15, ge=0, le=24 * 60)
    future_skew_minutes: int = Field(15, ge=0, le=24 * 60, description=(
        "events stamped later than the run's clock (--now, default the current time) plus this are quarantined as "
        "future_timestamp: API servers' clocks may run a little ahead of this host's, but not by more"))
    chunk_lines: int = Field(50_000, ge=1_000, le=2_000_000)
    max_line_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_decompression_ratio: int = Field(250, ge=10, le=1100, description=(
        "a gzip input stops being read (counted as decompression_ratio, the events before it kept) once it has "
        "decompressed to more than this many times its size: the sample's audit gzip is 9.4x, so 250 leaves 26x "
        "headroom, and a gzip bomb (deflate's ceiling is about 1,030x) stops at a quarter of its expansion"))
    workers: int = Field(2, ge=1, le=64, description=(
        "processes that read and normalise input files in parallel (at most one per file and per core; 1 reads them in "
        "the archive process); the archive is byte-identical for any value"))
    merge_rows: int = Field(32_768, ge=1_000, le=2_000_000, description=(
        "rows a process holds while merging an hour into its archive file: a busier hour is merged from its sorted staged "
        "parts, written to a temporary file (TMPDIR) in row groups of this many rows; the rows are the same for any value"))


class FeaturesConfig(Section):
    """Feature extraction: window length, entity types and address intelligence files."""

    window_minutes: int = Field(60, ge=5, le=1440)
    entity_types: tuple[Literal["user", "source_ip"], ...] = ("user", "source_ip")
    ip_ranges_file: str | None = None
    threat_list_file: str | None = None
    evidence_per_window: int = Field(50, ge=1, le=500)
    batch_rows: int = Field(262_144, ge=1_000, le=10_000_000, description=(
        "rows of an archived hour the features map and the score stage hold at once: a busier hour is read in batches "
        "of this many rows, its rule thresholds counted over the whole hour first; the results are the same for any value"))
    workers: int = Field(2, ge=1, le=64, description=(
        "processes that map archived hours to window partials and rule hits, and score the scored day's events, in "
        "parallel (at most one per core, and only with at least 100,000 events each, uncached ones for the map; 1 does it "
        "in the stage's own process); the feature table and the findings are identical for any value"))

    @field_validator("window_minutes")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 1440 % value:
            raise ValueError("must divide a day evenly (e.g. 15, 30, 60, 120)")
        return value


class ThresholdConfig(Section):
    method: Literal["mean+3std", "quantile"] = "quantile"
    quantile: float = Field(0.998, gt=0.5, lt=1.0)


class IForestParams(Section):
    """scikit-learn IsolationForest (training/iforest.py)."""

    n_estimators: int = Field(200, ge=10, le=5000)
    max_samples: int = Field(256, ge=16, le=100_000)
    max_features: float = Field(1.0, gt=0.0, le=1.0)
    max_train_rows: int = Field(32768, ge=100)


class RcfLocalParams(Section):
    """Open-source Random Cut Forest, krcf (training/rcf.py)."""

    num_trees: int = Field(50, ge=10, le=1000)
    sample_size: int = Field(256, ge=16, le=4096)
    max_train_rows: int = Field(100_000, ge=100)


class SageMakerConfig(Section):
    """SageMaker built-in Random Cut Forest: training job and batch transform settings."""

    region: str | None = None
    role_arn: str | None = None
    image_uri: str | None = None
    instance_type: str = "ml.m5.large"
    instance_count: int = Field(1, ge=1, le=20)
    transform_instance_type: str = "ml.m5.large"
    num_trees: int = Field(100, ge=50, le=1000)
    num_samples_per_tree: int = Field(256, ge=1, le=2048)
    kms_key_id: str | None = None
    max_runtime_seconds: int = Field(3600, ge=60, le=5 * 24 * 3600)
    poll_seconds: float = Field(30.0, ge=0.0)
    train_files: int = Field(4, ge=1, le=256)


class ModelConfig(Section):
    """Which detector backend runs and its parameters. Higher score = more anomalous, always."""

    backend: Literal["iforest", "rcf-local", "sagemaker-rcf"] = "iforest"
    seed: int = 0
    threshold: ThresholdConfig = ThresholdConfig()
    iforest: IForestParams = IForestParams()
    rcf_local: RcfLocalParams = RcfLocalParams()
    sagemaker: SageMakerConfig = SageMakerConfig()
    min_train_rows: int = Field(20, ge=1)


class RulesConfig(Section):
    """The declarative rule pack, the rules switched off, and the identities no rule fires on."""

    pack: str | None = None
    allow_identities: tuple[str, ...] = Field((), description=(
        "usernames no rule fires on (except rules with applies_to_allowlisted); empty by default: a username is only "
        "a claim (aws-auth can map any IAM role to eks:addon-manager), so routine is learned per identity instead"))
    disabled: tuple[str, ...] = ()


class ScoringConfig(Section):
    """How rule hits and the model score combine into one rank (docs/detection.md)."""

    severity_weights: dict[str, float] = {"info": 0.0, "low": 0.25, "medium": 0.5, "high": 1.0, "critical": 1.5}
    model_weight: float = Field(1.0, ge=0.0)
    repeat_factor: float = Field(0.6, gt=0.0, le=1.0, description=(
        "a record whose evidence is mostly a higher-ranked record's (the same requests seen as identity and as "
        "address) ranks at this fraction of its score (lowered by 1 - factor of its magnitude); 1 ranks by score alone"))


class Suppression(Section):
    """A known-benign pattern: matching findings leave `flagged` but stay listed as suppressed.

    It always names an entity (or a glob pattern). ``rules`` and ``reasons`` narrow it: a
    finding matches when its rule hits and top reasons are among them. Empty means "any"
    unless ``exact`` (what triage writes): then empty means "none", so a later finding with
    a new rule or a new kind of deviation is never hidden, and a finding with neither rule
    hits nor reasons (nothing to compare) is never hidden. ``ranges`` bound the values of the
    reasons it names; ``expires`` ends it for windows starting at or after that time.
    Matching: ``pipeline.triage.suppression_for``.
    """

    id: str | None = None
    entity: str | None = None
    entity_pattern: str | None = None
    entity_type: Literal["user", "source_ip"] | None = None
    rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    ranges: dict[str, tuple[float, float]] = Field({}, description=(
        "feature -> [low, high]: a finding whose reason on that feature has a value outside it is not suppressed "
        "(triage writes 0 up to twice the reviewed finding's value)"))
    exact: bool = False
    note: str = ""
    created: str | None = Field(None, description="when it was added (UTC, ISO 8601); triage sets it")
    reviewer: str | None = Field(None, description="who added it; triage sets it from --reviewer")
    expires: str | None = Field(None, description=(
        "UTC ISO 8601 time: windows starting at or after it are not suppressed (by window time, so a rerun is reproducible)"))


class ReportConfig(Section):
    """How much the report shows, and what its pivot queries name."""

    top_n: int = Field(200, ge=1)
    athena_table: str = "auditsift.audit_events"
    log_group: str | None = None
    terminal_top: int = Field(10, ge=1)
    events_top: int = Field(500, ge=1)
    explain_top: int = Field(200, ge=1)
    quiet_per_entity_type: int = Field(10_000, ge=0, description=(
        "quiet (unflagged) entity windows kept per entity type, best ranked first, in findings.json, anomalies.jsonl, "
        "findings.csv and the report; every flagged window (suppressed or not) is always kept and the report says how many "
        "quiet ones were left out. 10,000 keeps a whole day of hourly windows for about 400 identities and 400 "
        "addresses (a large cluster's day); beyond that the quiet tail is read by nobody and an hour of many identities "
        "made it grow without bound"))


class ScheduleConfig(Section):
    """Scheduled operation: retrain cadence and the EventBridge schedule expression."""

    expression: str = "cron(15 6 * * ? *)"
    retrain_every_days: int = Field(7, ge=1)
    train_days: int = Field(14, ge=1, description=(
        "days of history before the scored day that training reads, in scheduled and manual runs alike: two weeks hold "
        "two of every weekday; older archived events are kept but never move a range"))


class SecurityHubConfig(Section):
    enabled: bool = False
    product_arn: str | None = None
    account_id: str | None = None
    min_score: float = 0.0


class SnsConfig(Section):
    enabled: bool = False
    topic_arn: str | None = None


class FindingsConfig(Section):
    securityhub: SecurityHubConfig = SecurityHubConfig()
    sns: SnsConfig = SnsConfig()


class DeployConfig(Section):
    """What the Step Functions / Processing definitions refer to."""

    bucket: str | None = None
    log_group: str | None = None
    state_machine_role_arn: str | None = None
    job_role_arn: str | None = None
    processing_image_uri: str | None = None
    processing_instance_type: str = "ml.m5.xlarge"
    processing_instance_count: int = Field(2, ge=1, le=100)
    notify_topic_arn: str | None = None


class Config(Section):
    cluster: str = "default"
    storage: StorageConfig = StorageConfig()
    aws: AwsConfig = AwsConfig()
    archive: ArchiveConfig = ArchiveConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    rules: RulesConfig = RulesConfig()
    scoring: ScoringConfig = ScoringConfig()
    suppressions: tuple[Suppression, ...] = ()
    report: ReportConfig = ReportConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    findings: FindingsConfig = FindingsConfig()
    deploy: DeployConfig = DeployConfig()

    @field_validator("cluster")
    @classmethod
    def _safe_cluster(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value) or value.startswith("."):
            raise ValueError("must be letters, digits, '-', '_' or '.'")
        return value

    @model_validator(mode="after")
    def _lock_outlives_training(self) -> "Config":
        """`auditsift train` holds the workdir lock while it waits on a SageMaker training job: a lock expiring
        first would let the next scheduled run in beside it."""
        if self.model.backend == "sagemaker-rcf" and self.storage.lock_expire_minutes * 60 <= self.model.sagemaker.max_runtime_seconds:
            raise ValueError("storage.lock_expire_minutes must be longer than model.sagemaker.max_runtime_seconds")
        return self

    def resolved(self) -> dict:
        """The full configuration with defaults filled in, for run.json and model manifests."""
        return self.model_dump(mode="json")

    def rules_pack_path(self) -> Path:
        return Path(self.rules.pack) if self.rules.pack else DEFAULT_RULES


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    return f"'{where}': {first['msg']}"


def parse_config(data: dict | None, source: str = "<config>", overrides: dict | None = None) -> Config:
    """Validate a mapping into a Config; errors become one line naming the key."""
    merged = _deep_merge(data or {}, overrides or {})
    try:
        return Config.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}", hint="see configs/local.yaml for every key and its default") from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load the YAML config at ``path`` (default configs/local.yaml, else built-in defaults)."""
    target = Path(path) if path else DEFAULT_CONFIG
    if path is None and not target.exists():
        return parse_config({}, "<defaults>", overrides)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {target}", hint="pass --config PATH to an existing YAML file") from None
    data = parse_yaml(text, target)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{target}: top level must be a mapping of sections", hint="see configs/local.yaml")
    return parse_config(_resolve_paths(data or {}, target.parent), str(target), overrides)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, source) -> object:
    """YAML text as Python values, through libyaml's C loader when PyYAML has it (the rule pack: 11 ms
    against the pure-Python loader's 108, same values); a syntax error becomes a ConfigError naming the line."""
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: not valid YAML", hint="check indentation and quoting") from None


_PATH_KEYS = (("features", "ip_ranges_file"), ("features", "threat_list_file"), ("rules", "pack"))


def _resolve_paths(data: dict, base: Path) -> dict:
    """File paths in a config file are relative to that file, so a config works from any directory."""
    resolved = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for section, key in _PATH_KEYS:
        value = resolved.get(section, {}).get(key) if isinstance(resolved.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute() and "://" not in value:
            resolved[section][key] = str((base / value).resolve())
    return resolved


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
