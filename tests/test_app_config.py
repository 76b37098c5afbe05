"""StreamAppConfig: StreamApp's options as one frozen, checked value."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import streamkit as sk
from streamkit.asgi import StreamApp, StreamAppConfig


def test_defaults_are_the_apps() -> None:
    config = StreamAppConfig()
    assert config.allow_anonymous is False
    assert config.write_timeout == 30.0
    assert config.max_connections_per_user == 128
    assert config.stream_config == sk.StreamConfig()
    assert config.registry_config is None
    assert "chunk_size" in config.client_config_fields
    app = StreamApp()
    assert app.config == config


def test_the_app_takes_a_config_and_keywords_override_it() -> None:
    config = StreamAppConfig(allow_anonymous=True, write_timeout=5.0, expose_stats=False)
    app = StreamApp(config=config)
    assert app.config is config
    app = StreamApp(config=config, write_timeout=7.5)
    assert app.config == attrs.evolve(config, write_timeout=7.5)
    # The keywords alone, as before.
    app = StreamApp(allow_anonymous=True, max_body_bytes=10)
    assert (app.config.allow_anonymous, app.config.max_body_bytes) == (True, 10)


def test_the_app_takes_a_mapping_for_from_dict() -> None:
    app = StreamApp(config={"stream_config": {"chunk_size": 2}, "retry_ms": None})
    assert app.config.stream_config.chunk_size == 2
    assert app.config.retry_ms is None
    with pytest.raises(sk.ValidationError) as caught:
        StreamApp(config=3)  # type: ignore[arg-type]
    assert caught.value.field == "config"
    with pytest.raises(sk.ValidationError) as caught:
        StreamApp(config=StreamAppConfig(), bad_option=1)  # type: ignore[call-arg]
    assert caught.value.field == "bad_option"


def test_from_dict_and_to_dict_round_trip() -> None:
    data: dict[str, Any] = {
        "allow_anonymous": True,
        "stream_config": {"chunk_size": 3, "chunk_by": "word"},
        "registry_config": {"max_sessions": 7},
        "client_config_fields": ["chunk_size"],
        "compression": False,
        "heartbeat_interval": None,
        "max_ws_subscriptions": 4,
    }
    config = StreamAppConfig.from_dict(data)
    assert config.stream_config == sk.StreamConfig(chunk_size=3, chunk_by="word")
    assert config.registry_config == sk.RegistryConfig(max_sessions=7)
    assert config.client_config_fields == frozenset({"chunk_size"})
    assert StreamAppConfig.from_dict(config.to_dict()) == config
    assert config.replace() is config
    assert config.replace(max_ws_subscriptions=9).max_ws_subscriptions == 9


def test_it_is_frozen_and_keyword_only() -> None:
    config = StreamAppConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.write_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        StreamAppConfig(False)  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nope": 1}, "nope"),
        ({"allow_anonymous": 1}, "allow_anonymous"),
        ({"compression": "yes"}, "compression"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"write_timeout": -1}, "write_timeout"),
        ({"body_timeout": "3"}, "body_timeout"),
        ({"retry_ms": -5}, "retry_ms"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_ws_message_bytes": 1.5}, "max_ws_message_bytes"),
        ({"max_ws_subscriptions": 0}, "max_ws_subscriptions"),
        ({"max_connections_per_user": 0}, "max_connections_per_user"),
        ({"expose_stats": None}, "expose_stats"),
        ({"client_config_fields": "chunk_size"}, "client_config_fields"),
        ({"client_config_fields": [1]}, "client_config_fields"),
        ({"client_config_fields": ["no_such_field"]}, "client_config_fields"),
        ({"stream_config": 5}, "stream_config"),
        ({"stream_config": {"chunk_size": 0}}, "stream_config.chunk_size"),
        ({"registry_config": {"max_sessions": "many"}}, "registry_config.max_sessions"),
        ({"registry_config": []}, "registry_config"),
    ],
)
def test_bad_values_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(sk.ValidationError) as caught:
        StreamAppConfig.from_dict(data)
    assert caught.value.field == field
    assert field.rsplit(".", maxsplit=1)[-1] in str(caught.value)


def test_ws_send_queue_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="ws_send_queue"):
        config = StreamAppConfig(ws_send_queue=16)
    assert config.ws_send_queue == 16


def test_registry_and_registry_config_exclude_each_other() -> None:
    with pytest.raises(sk.ValidationError) as caught:
        StreamApp(object(), config={"registry_config": {}})  # type: ignore[arg-type]
    assert caught.value.field == "registry_config"
