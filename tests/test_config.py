from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tether.cli import build_parser, config_doc
from tether.config import ClientConfig, HubConfig, OutboxPolicy, env_name, from_env

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


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
