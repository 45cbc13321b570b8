"""Per-algorithm site settings: operating point per scanner, shadow mode, concurrency, models."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, parse_config
from config.schema import AlgorithmSettings, effective_threshold

SETTINGS = """\
model_dirs: [/opt/radrouter/models]
algorithms:
  lung_nodule:
    device: cpu
    max_concurrent: 2
    threshold: 0.6
    thresholds_by_model:
      "SOMATOM Force": 0.7
      Revolution CT: 0.55
    shadow: true
"""


def test_site_settings_load_with_their_values() -> None:
    config = parse_config(SETTINGS, "site.yaml")
    settings = config.algorithms["lung_nodule"]
    assert (settings.device, settings.max_concurrent, settings.shadow) == ("cpu", 2, True)
    assert settings.threshold == 0.6
    assert [str(p) for p in config.model_dirs] == ["/opt/radrouter/models"]


def test_defaults_run_one_at_a_time_with_the_plugin_s_own_threshold() -> None:
    settings = AlgorithmSettings()
    assert settings.max_concurrent == 1 and settings.shadow is False
    assert effective_threshold(settings, {"ManufacturerModelName": "X"}) is None
    assert effective_threshold(None, {}) is None
    assert parse_config("rules: []\n").model_dirs == []


@pytest.mark.parametrize(
    ("scanner", "expected"),
    [
        ("SOMATOM Force", 0.7),
        (" somatom force ", 0.7),  # case and surrounding spaces do not matter
        ("Revolution CT", 0.55),
        ("Aquilion ONE", 0.6),  # not listed: the site threshold
        ("", 0.6),
    ],
)
def test_the_scanner_s_threshold_wins_over_the_site_threshold(
    scanner: str, expected: float
) -> None:
    settings = parse_config(SETTINGS).algorithms["lung_nodule"]
    header = {"Modality": "CT", "ManufacturerModelName": scanner}
    assert effective_threshold(settings, header) == expected


def test_thresholds_by_model_without_a_site_threshold_leaves_others_to_the_plugin() -> None:
    settings = AlgorithmSettings(thresholds_by_model={"SOMATOM Force": 0.7})
    assert effective_threshold(settings, {"ManufacturerModelName": "Other"}) is None
    assert effective_threshold(settings, {}) is None


@pytest.mark.parametrize(
    ("yaml_text", "key", "message"),
    [
        (
            "algorithms: {x: {threshold: 1.5}}\n",
            "algorithms.x.threshold",
            "less than or equal to 1",
        ),
        (
            "algorithms: {x: {thresholds_by_model: {A: -0.1}}}\n",
            "algorithms.x.thresholds_by_model.A",
            "greater than or equal to 0",
        ),
        (
            "algorithms: {x: {thresholds_by_model: {Force: 0.7, ' FORCE': 0.8}}}\n",
            "algorithms.x.thresholds_by_model.Force",
            "are the same name",
        ),
        (
            "algorithms: {x: {max_concurrent: 0}}\n",
            "algorithms.x.max_concurrent",
            "greater than or equal to 1",
        ),
        ("algorithms: {x: {shadow: maybe}}\n", "algorithms.x.shadow", "boolean"),
        ("model_dirs: /opt/models\n", "model_dirs", "list"),
    ],
)
def test_invalid_settings_name_their_key(yaml_text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml_text, "site.yaml")
    (issue,) = caught.value.issues
    assert issue.key == key and issue.line == 1, str(issue)
    assert message in issue.message, str(issue)
