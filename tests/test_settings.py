"""Configuration: TOML then environment, validated once, errors name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import load_settings, settings_from_mapping

EXAMPLE = """
[proxy]
listen = "127.0.0.1:8080"
primary = "http://127.0.0.1:8001"
mirror_concurrency = 64

[redis]
prefix = "st"

[[candidates]]
name = "v2"
url = "http://127.0.0.1:8002"
sample = 0.5

[[candidates]]
name = "v2-onnx"
onnx = "models/v2.onnx"
input = "oip-v2"

[[slices]]
name = "country"
from = "$.inputs[0].country"

[[slices]]
name = "tenant"
from = "header:X-Tenant"
bins = []
"""


def test_loads_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "shadowtrial.toml"
    path.write_text(EXAMPLE)
    settings = load_settings(path, environ={})
    assert settings.proxy.mirror_concurrency == 64
    assert settings.redis.prefix == "st"
    assert settings.redis.url is None
    assert [c.name for c in settings.candidates] == ["v2", "v2-onnx"]
    assert settings.candidate("v2").sample == 0.5
    assert settings.candidate("v2-onnx").onnx == "models/v2.onnx"
    assert settings.slices[0].source == "$.inputs[0].country"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "shadowtrial.toml"
    path.write_text(EXAMPLE)
    env = {
        "SHADOWTRIAL_PROXY_MAX_CAPTURE_BYTES": "2048",
        "SHADOWTRIAL_PROXY_MIRROR_METHODS": "POST, PUT",
        "SHADOWTRIAL_CANDIDATES_0_SAMPLE": "0.25",
        "SHADOWTRIAL_ADMIN_TOKEN": "secret",  # the token variable is not an override
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    settings = load_settings(path, environ=env)
    assert settings.proxy.max_capture_bytes == 2048
    assert settings.proxy.mirror_methods == ("POST", "PUT")
    assert settings.candidate("v2").sample == 0.25
    assert settings.redis.url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({"proxy": {"listen": "nohost"}}, {}, "proxy.listen"),
        ({"proxy": {"mirror_concurrency": 0}}, {}, "proxy.mirror_concurrency"),
        ({"proxy": {"primary": "ftp://x"}}, {}, "proxy.primary"),
        ({"proxy": {"lisen": "1:2"}}, {}, "proxy.lisen"),
        (
            {"candidates": [{"name": "a", "url": "http://x", "sample": 2}]},
            {},
            "candidates[0].sample",
        ),
        ({"candidates": [{"name": "a"}]}, {}, "candidates[0]"),
        ({"candidates": [{"name": "a", "url": "http://x", "onnx": "m.onnx"}]}, {}, "candidates[0]"),
        ({"outputs": {"protocol": "grpc"}}, {}, "outputs.protocol"),
        ({"slices": [{"name": "s", "from": "country"}]}, {}, "slices[0].from"),
        ({}, {"SHADOWTRIAL_PROXY_MIRROR_CONCURRENCY": "many"}, "proxy.mirror_concurrency"),
        ({}, {"SHADOWTRIAL_NOPE_X": "1"}, "SHADOWTRIAL_NOPE_X"),
        ({"redis": {"url": "http://x"}}, {}, "redis.url"),
    ],
)
def test_bad_values_name_the_key(raw: dict, env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, environ=env)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"config error: {key} = ")
    assert "\n" not in message


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[proxy\nlisten=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
