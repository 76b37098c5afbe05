"""StreamConfig and RegistryConfig: defaults, validation, from_dict."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import streamkit as sk


def test_seed_defaults() -> None:
    stream = sk.StreamConfig()
    assert (
        stream.chunk_size,
        stream.stream_delay,
        stream.max_stream_time,
        stream.enable_progressive,
        stream.enable_metadata,
        stream.compression_enabled,
        stream.heartbeat_interval,
    ) == (5, 0.02, 600, True, True, True, 30)
    registry = sk.RegistryConfig()
    assert (
        registry.max_sessions,
        registry.session_timeout,
        registry.cleanup_interval,
        registry.heartbeat_interval,
    ) == (100, 600, 60, 30)


@pytest.mark.parametrize("cls", [sk.StreamConfig, sk.RegistryConfig])
def test_round_trip_through_dict(cls: Any) -> None:
    config = cls()
    assert cls.from_dict(config.to_dict()) == config
    assert cls.from_dict({}) == config


@pytest.mark.parametrize("cls", [sk.StreamConfig, sk.RegistryConfig])
def test_configs_are_frozen(cls: Any) -> None:
    config = cls()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.heartbeat_interval = 1


@pytest.mark.parametrize(
    ("cls", "data", "field"),
    [
        (sk.StreamConfig, {"chunk_size": 0}, "chunk_size"),
        (sk.StreamConfig, {"chunk_size": 2.5}, "chunk_size"),
        (sk.StreamConfig, {"chunk_size": True}, "chunk_size"),
        (sk.StreamConfig, {"stream_delay": -0.1}, "stream_delay"),
        (sk.StreamConfig, {"stream_delay": "fast"}, "stream_delay"),
        (sk.StreamConfig, {"max_stream_time": 0}, "max_stream_time"),
        (sk.StreamConfig, {"max_stream_time": float("inf")}, "max_stream_time"),
        (sk.StreamConfig, {"enable_progressive": 1}, "enable_progressive"),
        (sk.StreamConfig, {"heartbeat_interval": 0}, "heartbeat_interval"),
        (sk.StreamConfig, {"chunk_by": "sentence"}, "chunk_by"),
        (sk.StreamConfig, {"flush_interval": -1}, "flush_interval"),
        (sk.StreamConfig, {"stall_timeout": -1}, "stall_timeout"),
        (sk.StreamConfig, {"chunk_sise": 3}, "chunk_sise"),
        (sk.RegistryConfig, {"max_sessions": 0}, "max_sessions"),
        (sk.RegistryConfig, {"session_timeout": -1}, "session_timeout"),
        (sk.RegistryConfig, {"cleanup_interval": 0}, "cleanup_interval"),
        (sk.RegistryConfig, {"slow_consumer_policy": "drop"}, "slow_consumer_policy"),
        (sk.RegistryConfig, {"max_lag": 0}, "max_lag"),
        (sk.RegistryConfig, {"max_sessions_per_user": 0}, "max_sessions_per_user"),
        (sk.RegistryConfig, {"unknown": 1}, "unknown"),
    ],
)
def test_bad_values_name_the_field(cls: Any, data: dict[str, Any], field: str) -> None:
    with pytest.raises(sk.ValidationError) as info:
        cls.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_optional_settings_accept_none() -> None:
    config = sk.StreamConfig(max_stream_time=None, heartbeat_interval=None, stall_timeout=None)
    assert config.max_stream_time is None
    assert sk.RegistryConfig(heartbeat_interval=None).heartbeat_interval is None


def test_replace_checks_changes() -> None:
    config = sk.StreamConfig().replace(chunk_size=1, stream_delay=0)
    assert config.chunk_size == 1
    assert config.stream_delay == 0
    with pytest.raises(sk.ValidationError, match="chunk_size"):
        config.replace(chunk_size=-3)


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(sk.ValidationError, match="mapping"):
        sk.StreamConfig.from_dict([("chunk_size", 1)])  # type: ignore[arg-type]
