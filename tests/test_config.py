from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tether.cli import build_parser, config_doc
from tether.config import (
    ClientConfig,
    HubConfig,
    OutboxPolicy,
    browser_options,
    env_name,
    from_env,
)
from tether.jsgen import TARGET

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
JS_DEFAULTS = re.compile(r"export const DEFAULTS = deepFreeze\((\{.*?\})\);", re.S)


def test_every_field_has_a_reason() -> None:
    for cls in (HubConfig, ClientConfig):
        for field in dataclasses.fields(cls):
            assert len(field.metadata["reason"]) > 20, field.name


def test_docs_configuration_matches_the_code() -> None:
    assert DOC.read_text() == config_doc() + "\n", (
        "docs/configuration.md is stale: run `tether config-doc > docs/configuration.md`"
    )


def test_env_then_keyword_precedence() -> None:
    env = {env_name("max_attempts"): "7", env_name("outbox_policy"): "drop-oldest"}
    config = from_env(ClientConfig, environ=env)
    assert config.max_attempts == 7 and config.outbox_policy is OutboxPolicy.DROP_OLDEST
    assert from_env(ClientConfig, environ=env, max_attempts=3).max_attempts == 3


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="TETHER_HISTORY_SIZE"):
        from_env(HubConfig, environ={"TETHER_HISTORY_SIZE": "lots"})


def test_every_field_is_a_cli_flag() -> None:
    args = build_parser().parse_args(["serve", "--history-size", "5", "--heartbeat-interval", "2"])
    assert args.history_size == 5 and args.heartbeat_interval == 2.0
    args = build_parser().parse_args(["listen", "ws://x/ws", "--topic", "t", "--max-attempts", "4"])
    assert args.max_attempts == 4 and args.topic == ["t"]


def test_an_apps_defaults_lose_to_env_and_keywords() -> None:
    # A team's numbers as the app's defaults: an operator's TETHER_* variable still wins.
    plan = {"backoff_cap": 16.0, "max_attempts": 5, "jitter": "proportional"}
    env = {env_name("backoff_cap"): "60"}
    config = from_env(ClientConfig, environ=env, defaults=plan, max_attempts=7)
    assert (config.backoff_cap, config.max_attempts) == (60.0, 7)
    assert config.jitter.value == "proportional" and config.backoff_base == 1.0


def test_browser_options_are_the_js_clients_names_and_json_values() -> None:
    config = ClientConfig(backoff_cap=16.0, outbox_policy=OutboxPolicy.DROP_OLDEST)
    options = browser_options(config)
    # Exactly the options tether-constants.js DEFAULTS has (generated from the same fields).
    assert set(options) == set(json.loads(JS_DEFAULTS.search(TARGET.read_text())[1]))
    assert options["backoffCap"] == 16.0 and options["outboxPolicy"] == "drop-oldest"
    assert browser_options(config, ["jitter_ratio"]) == {"jitterRatio": 0.3}


@pytest.mark.parametrize("value", [-0.001, 1.5])
def test_fanout_yield_max_out_of_range_is_refused_with_its_reason(value: float) -> None:
    with pytest.raises(ValueError, match="fanout_yield_max must be between 0 and 1 s"):
        HubConfig(fanout_yield_max=value)
