"""The deployment files bind to the code: paths, modules, commands, ports, probes, config keys.

No Docker engine or Kubernetes cluster runs here, so these checks read the files and hold
every name they use against the package itself.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import Settings, settings_from_mapping, split_hostport
from proxy.app import ProxyApp
from shadowtrial.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"


def _admin_paths(settings: Settings) -> set[str]:
    app = ProxyApp(settings, redis_url="redis://127.0.0.1:1/0")
    return {route.path for route in app.admin.routes}


def _parses_as_cli(args: list[str]) -> None:
    """The arguments are a valid `shadowtrial` invocation (parsed, not run)."""
    parsed = build_parser().parse_args(args)
    assert callable(parsed.run)


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def _configmap_settings() -> Settings:
    [configmap] = _by_kind("ConfigMap")
    raw = tomllib.loads(configmap["data"]["shadowtrial.toml"])
    return settings_from_mapping(raw, environ={})


# -- Dockerfile -------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_copies_paths_that_exist() -> None:
    for instruction, rest in _dockerfile():
        if instruction == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_runs_the_cli_as_non_root_with_a_valid_config() -> None:
    instructions = _dockerfile()
    entry = next(rest for ins, rest in instructions if ins == "ENTRYPOINT")
    cmd = next(rest for ins, rest in instructions if ins == "CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert yaml.safe_load(entry) == ["shadowtrial"] and "shadowtrial" in scripts
    args = yaml.safe_load(cmd)
    _parses_as_cli(args)
    config = args[args.index("-c") + 1]
    copied = next(rest for ins, rest in instructions if ins == "COPY" and config in rest)
    settings = settings_from_mapping(
        tomllib.loads((ROOT / copied.split()[0]).read_text()), environ={}
    )
    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users and users[-1] not in {"root", "0"}
    admin_host, admin_port = split_hostport(settings.proxy.admin_listen)
    assert admin_host == "0.0.0.0", "inside a container the admin port must bind all addresses"
    health = next(rest for ins, rest in instructions if ins == "HEALTHCHECK")
    assert f":{admin_port}/healthz" in health and "/healthz" in _admin_paths(settings)
    exposed = {int(p) for ins, rest in instructions if ins == "EXPOSE" for p in rest.split()}
    assert exposed == {split_hostport(settings.proxy.listen)[1], admin_port}


# -- docker-compose ---------------------------------------------------------------------


def test_compose_services_run_real_commands_and_mount_the_config() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "proxy-1", "proxy-2", "worker-1", "worker-2"} <= set(services)
    settings = settings_from_mapping(
        tomllib.loads((DEPLOY / "config" / "shadowtrial.toml").read_text()), environ={}
    )
    for name, service in services.items():
        if name == "redis":
            continue
        entrypoint = service.get("entrypoint")
        if entrypoint:
            assert entrypoint[:2] == ["python", "-m"]
            assert importlib.util.find_spec(entrypoint[2]) is not None, entrypoint
        else:
            _parses_as_cli(service["command"])
        for volume in service.get("volumes", []):
            assert (DEPLOY / volume.split(":")[0]).resolve().exists(), volume
    data_port = split_hostport(settings.proxy.listen)[1]
    assert services["proxy-1"]["ports"][0].endswith(f":{data_port}")
    model_ports = {
        int(s["command"][s["command"].index("--port") + 1])
        for s in (services["model-v1"], services["model-v2"])
    }
    wanted = {
        int(re.search(r":(\d+)", u).group(1))
        for u in (settings.proxy.primary, *(c.url for c in settings.candidates))
    }
    assert model_ports == wanted


# -- Kubernetes -------------------------------------------------------------------------


def test_every_manifest_parses_with_kind_and_name() -> None:
    docs = _k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    } <= kinds
    for doc in docs:
        assert doc["metadata"]["name"]


def test_selectors_bind_services_hpa_and_pdb_to_deployments() -> None:
    deployments = {d["metadata"]["name"]: d for d in _by_kind("Deployment")}
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    proxy = deployments["shadowtrial-proxy"]
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in proxy["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for service in _by_kind("Service"):
        assert service["spec"]["selector"].items() <= proxy_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    [hpa] = _by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    [pdb] = _by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= proxy_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_containers_match_the_configmap_cli_probes_and_secret() -> None:
    settings = _configmap_settings()
    admin_paths = _admin_paths(settings)
    [secret] = _by_kind("Secret")
    [configmap] = _by_kind("ConfigMap")
    ports = {
        "data": split_hostport(settings.proxy.listen)[1],
        "admin": split_hostport(settings.proxy.admin_listen)[1],
    }
    for dep in _by_kind("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            _parses_as_cli(container["args"])
            config = container["args"][container["args"].index("-c") + 1]
            mount = next(m for m in container["volumeMounts"] if config.startswith(m["mountPath"]))
            assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
            assert Path(config).name in configmap["data"]
            for port in container.get("ports", []):
                assert ports[port["name"]] == port["containerPort"]
            for probe in ("readinessProbe", "livenessProbe"):
                http = container.get(probe, {}).get("httpGet")
                if http:
                    assert http["path"] in admin_paths and http["port"] == "admin"
                command = container.get(probe, {}).get("exec", {}).get("command")
                if command:
                    _parses_as_cli(command[1:])
            for env in container.get("env", []):
                ref = env["valueFrom"]["secretKeyRef"]
                assert env["name"] == settings.admin.token_env
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
            assert {"requests", "limits"} <= set(container["resources"])


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.toml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    settings_from_mapping(tomllib.loads(path.read_text()), environ={})


def test_shlex_roundtrip_of_compose_commands_is_plain() -> None:
    """Commands are lists of plain words (no shell), so nothing is re-parsed by a shell."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        command = service.get("command")
        if isinstance(command, list):
            assert shlex.split(shlex.join(command)) == command
