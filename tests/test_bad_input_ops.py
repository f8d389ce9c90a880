"""Issue 12, the operator's side of bad input: the environment Kubernetes gives a pod
(bug 9) and names and URLs that carry whitespace, CR/LF or control characters (bug 11),
at config load and on admin API writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_harness import ALICE, trial

from common.errors import ConfigError
from common.settings import load_settings, settings_from_mapping

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
CLUSTER_IPS = iter(f"10.96.0.{i}" for i in range(10, 250))


def service_links(service: dict[str, Any], ip: str) -> dict[str, str]:
    """The variables the kubelet injects for a Service (pkg/kubelet/envvars, docker links
    style): NAME_SERVICE_HOST/PORT[_<port name>], NAME_PORT and NAME_PORT_<n>_<PROTO>[_*]."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    ports = service["spec"]["ports"]
    first = ports[0]
    proto0 = first.get("protocol", "TCP")
    env = {
        f"{name}_SERVICE_HOST": ip,
        f"{name}_SERVICE_PORT": str(first["port"]),
        f"{name}_PORT": f"{proto0.lower()}://{ip}:{first['port']}",
    }
    for port in ports:
        proto, number = port.get("protocol", "TCP"), port["port"]
        if port.get("name"):
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
        link = f"{name}_PORT_{number}_{proto}"
        env[link] = f"{proto.lower()}://{ip}:{number}"
        env[f"{link}_PROTO"] = proto.lower()
        env[f"{link}_PORT"] = str(number)
        env[f"{link}_ADDR"] = ip
    return env


def pod_environment() -> dict[str, str]:
    """What a proxy pod of deploy/kubernetes sees: its env entries, the Secret's token,
    SHADOWTRIAL_CONFIG, and the service links of every Service shipped (plus a Service
    that would be named like a setting, and one on an IPv6 cluster)."""
    env = {"SHADOWTRIAL_ADMIN_TOKEN": "t" * 32, "SHADOWTRIAL_CONFIG": "/etc/x.toml"}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Service":
                env.update(service_links(doc, next(CLUSTER_IPS)))
    extra = {"metadata": {"name": "shadowtrial-proxy-listen"},
             "spec": {"ports": [{"name": "x", "port": 81}]}}  # fmt: skip
    env.update(service_links(extra, "fd00::a"))
    return env


def _configmap_toml(tmp_path: Path) -> Path:
    doc = yaml.safe_load((K8S / "configmap.yaml").read_text())
    path = tmp_path / "shadowtrial.toml"
    path.write_text(doc["data"]["shadowtrial.toml"])
    return path


def test_a_pod_from_the_shipped_manifests_loads_its_settings(tmp_path: Path) -> None:
    """Bug 9: SHADOWTRIAL_ADMIN_PORT=tcp://... and friends crash-looped every pod."""
    env = pod_environment()
    assert env["SHADOWTRIAL_ADMIN_PORT"].startswith("tcp://")
    assert "SHADOWTRIAL_PROXY_SERVICE_HOST" in env
    settings = load_settings(_configmap_toml(tmp_path), env)
    assert settings.proxy.admin_listen == "0.0.0.0:9901"


def test_the_pod_environment_starts_a_process(tmp_path: Path) -> None:
    """The same environment through the real command: `worker --check` loads the settings
    (exit 2 on a config error), then finds no healthy worker on a closed port (exit 1)."""
    config = _configmap_toml(tmp_path)
    text = config.read_text().replace(
        "redis://redis.shadowtrial.svc.cluster.local:6379/0", "redis://127.0.0.1:1/0"
    )
    config.write_text(text)
    env = {**os.environ, **pod_environment(), "SHADOWTRIAL_CONFIG": str(config)}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "shadowtrial", "worker", "--check"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "config error" not in done.stderr


@pytest.mark.parametrize(
    "name",
    [
        "SHADOWTRIAL_PROXY_PORT",  # a service link's value is tcp://..., not a number
        "SHADOWTRIAL_PROXY_LISTN",
        "SHADOWTRIAL_PROXY_SERVICE_HOST_X",
        "SHADOWTRIAL_CONFIGG",
    ],
)
def test_a_misspelt_override_still_stops_the_process(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({}, {name: "8080"})
    assert name in str(caught.value), caught.value  # the variable is named
    assert "unknown" in str(caught.value)


def test_shadowtrial_config_is_not_an_override() -> None:
    assert settings_from_mapping({}, {"SHADOWTRIAL_CONFIG": "/etc/shadowtrial/x.toml"})


# -- bug 11: names and URLs --------------------------------------------------------------

BAD_NAMES = ["v2\n", "v2 ", " v2", "v\t2", "v2\r", "v\x1b[2J", "v\x00", "v2\u2028", "", "-v2"]
BAD_URLS = [
    "http://127.0.0.1:8001/\r\nX-Injected: 1",
    "http://127.0.0.1:8001/v2 x",
    "http://127.0.0.1 :8001",
    "http://127.0.0.1:8001\n",
    "http://127.0.0.1:8001/\x1b[2J",
    "http://127.0.0.1:8001/\x7f",
    "http://127.0.0.1:8001/\t",
    "ftp://127.0.0.1/",
    "file:///etc/passwd",
    "http://",
    "http://[::1/",
    "http://h:99999/",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_candidate_and_slice_names_are_strict(name: str) -> None:
    with pytest.raises(ConfigError):
        settings_from_mapping({"candidates": [{"name": name, "url": "http://h:1"}]}, {})
    with pytest.raises(ConfigError):
        settings_from_mapping({"slices": [{"name": name, "from": "$.x"}]}, {})


@pytest.mark.parametrize("url", BAD_URLS)
def test_model_urls_are_strict(url: str) -> None:
    for raw in ({"candidates": [{"name": "c", "url": url}]}, {"proxy": {"primary": url}}):
        with pytest.raises(ConfigError) as caught:
            settings_from_mapping(raw, {})
        assert "\n" not in str(caught.value) and "\r" not in str(caught.value)


def test_the_admin_api_refuses_bad_names_and_urls(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug 11 on the admin API: a name with a trailing newline, URLs with CRLF or spaces."""
    with trial(redis_url, prefix, monkeypatch) as t:
        admin = t.admin() + "/v1/candidates"
        for name in BAD_NAMES:
            answer = t.http.post(admin, json={"name": name, "url": t.candidate_url}, headers=ALICE)
            assert answer.status_code == 400, (name, answer.text)
        for url in BAD_URLS:
            answer = t.http.post(admin, json={"name": "bad", "url": url}, headers=ALICE)
            assert answer.status_code == 400, (url, answer.text)
        listed = t.http.get(admin).json()["candidates"]
        assert [c["name"] for c in listed] == ["v2"]
        assert not t.decisions()  # nothing refused was audited as a change
