"""pipeline.config: the one typed configuration. A typo stops the run with the key's name; paths in a config
file are read relative to that file; overrides from the command line win over the file."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config, load_config, parse_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "auditsift.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_config_loads_and_matches_the_defaults_it_documents():
    config = load_config(ROOT / "configs" / "local.yaml")
    assert isinstance(config, Config)
    assert config.model.backend in ("iforest", "rcf-local", "sagemaker-rcf")
    assert config.rules_pack_path().exists()


@pytest.mark.parametrize("text, named", [
    ("features:\n  window_minuts: 15\n", "unknown key 'features.window_minuts'"),
    ("clutser: prod\n", "unknown key 'clutser'"),
    ("model:\n  backend: lof\n", "'model.backend'"),
    ("archive:\n  workers: many\n", "'archive.workers'"),
])
def test_a_typo_or_a_bad_value_stops_with_the_key_named(tmp_path, text, named):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert named in error.value.message and "\n" not in error.value.message
    assert error.value.hint


def test_yaml_that_does_not_parse_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"auditsift.yaml line \d+: not valid YAML"):
        load_config(write(tmp_path, "cluster: prod\nfeatures: [\n"))


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- cluster\n- prod\n"))


def test_a_missing_file_is_one_line_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as error:
        load_config(tmp_path / "nope.yaml")
    assert "--config" in error.value.hint


def test_file_paths_are_relative_to_the_config_file_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "threats.txt").write_text("203.0.113.7\n", encoding="utf-8")
    path = write(tmp_path, "features:\n  threat_list_file: intel/threats.txt\n")
    monkeypatch.chdir(ROOT)
    assert load_config(path).features.threat_list_file == str(tmp_path / "intel" / "threats.txt")


def test_overrides_win_over_the_file_and_merge_into_sections(tmp_path):
    path = write(tmp_path, "cluster: staging\nmodel:\n  backend: rcf-local\n  seed: 5\n")
    config = load_config(path, {"cluster": "prod", "model": {"backend": "iforest"}})
    assert (config.cluster, config.model.backend, config.model.seed) == ("prod", "iforest", 5)


def test_parse_config_validates_like_a_file():
    assert parse_config({"cluster": "prod"}).cluster == "prod"
    with pytest.raises(ConfigError, match="<test>: unknown key 'report.topp'"):
        parse_config({"report": {"topp": 3}}, "<test>")


def test_the_resolved_config_round_trips():
    """run.json and every model keep ``resolved()``: reading it back gives the same configuration."""
    config = parse_config({"cluster": "prod", "model": {"backend": "rcf-local"}})
    assert parse_config(config.resolved()) == config
