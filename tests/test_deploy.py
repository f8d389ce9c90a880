"""The deployment files bind to the code: paths, modules, commands, ports, probes, config keys.

No Docker engine or Kubernetes cluster runs here, so these tests read the Dockerfile, the
compose file and the manifests and hold every name they use against the package itself:
files the image copies exist (and the build context keeps them), commands parse with the
CLI's own parser, configs validate, ports and probe paths are the ones the code serves,
selectors, Secret and ConfigMap references meet, resources cover what the benchmark
measured. The container health check (deploy/healthcheck.py) runs against a real admin
app and a real Redis.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import redis
import yaml
from servers import free_port, serve_app

from common.keys import Keys
from common.settings import Settings, load_settings, settings_from_mapping, split_hostport
from proxy.app import ProxyApp
from proxy.server import GRACE_EXTRA_S
from shadowtrial.cli import build_parser
from shadowtrial.examples.model_server import create_app as model_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hc = _load_module(DEPLOY / "healthcheck.py")


def _admin_paths(settings: Settings) -> set[str]:
    app = ProxyApp(settings, redis_url="redis://127.0.0.1:1/0")
    return {route.path for route in app.admin.routes}


def _parses_as_cli(args: list[str]) -> Any:
    """The arguments are a valid `shadowtrial` invocation (parsed, not run)."""
    parsed = build_parser().parse_args(args)
    assert callable(parsed.run)
    return parsed


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity).groups()
    return float(number) * units[unit]


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# -- Dockerfile -------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _last(instruction: str) -> str:
    return [rest for ins, rest in _dockerfile() if ins == instruction][-1]


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    return [
        (rest.split()[:-1], rest.split()[-1])
        for ins, rest in _dockerfile()
        if ins == "COPY" and "--from" not in rest
    ]


def _image_path(source: str) -> str:
    """Where the Dockerfile puts a file from the build context."""
    return next(dest for sources, dest in _copies() if source in sources)


def _image_uid() -> int:
    return int(_last("USER").split(":")[0])


def test_dockerfile_copies_paths_that_exist_and_the_context_keeps() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for sources, _ in _copies():
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
            for pattern in ignored:
                first = source.split("/")[0]
                assert not fnmatch.fnmatch(source, pattern), (source, pattern)
                assert not fnmatch.fnmatch(first, pattern), (source, pattern)


def test_dockerfile_builds_runtime_dependencies_in_a_builder_from_one_base() -> None:
    froms = [rest for ins, rest in _dockerfile() if ins == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert froms[0].split()[0] == froms[1] == "${PYTHON_IMAGE}"  # the venv's python exists
    base = _last("ARG").partition("=")[2]
    # the official image, pinned by digest (a moved tag never changes a rebuild)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?@sha256:[0-9a-f]{64}", base), base
    runs = " ".join(rest for ins, rest in _dockerfile() if ins == "RUN")
    assert 'pip install -c constraints.txt ".[text]"' in runs  # meaning works in the image
    assert "[demo]" not in runs and "[test]" not in runs
    assert "--from=builder /opt/venv /opt/venv" in " ".join(r for i, r in _dockerfile())
    packages = {s.rstrip("/") for sources, _ in _copies() for s in sources if "/" not in s}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    files = {"pyproject.toml", "README.md", "constraints.txt"}
    assert packages == files | {i.rstrip("*") for i in include}
    assert {"common", "proxy", "control", "analysis", "shadowtrial"} <= packages


def test_the_image_installs_the_versions_the_tests_ran_against() -> None:
    """constraints.txt pins every runtime dependency (transitively) at this virtualenv's
    version, for the image's Python; the Dockerfile copies and uses it."""
    constraints = _load_module(DEPLOY / "constraints.py")
    assert (ROOT / "constraints.txt").read_text() == constraints.render(
        constraints.runtime_pins()
    ), "regenerate: .venv/bin/python deploy/constraints.py > constraints.txt"
    assert any("constraints.txt" in sources for sources, _ in _copies())
    base = _last("ARG").partition("=")[2]
    assert base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-")
    pinned = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", line) for line in pinned)
    text_extra = PYPROJECT["project"]["optional-dependencies"]["text"]
    for dependency in PYPROJECT["project"]["dependencies"] + text_extra:
        name = re.match(r"[A-Za-z0-9_.-]+", dependency).group().lower()
        assert any(line.startswith(f"{name}==") for line in pinned), name


def test_what_the_image_runs_needs_no_demo_extra() -> None:
    """The runtime image lacks scikit-learn and skl2onnx: none of its commands import them."""
    blocked = "import sys; sys.modules.update(sklearn=None, skl2onnx=None); "
    modules = (
        "import proxy.app, analysis.worker, shadowtrial.cli, shadowtrial.examples.model_server"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked + modules], cwd=ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_dockerfile_runs_the_cli_as_non_root_with_a_valid_config() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    assert yaml.safe_load(_last("ENTRYPOINT")) == ["shadowtrial"] and "shadowtrial" in scripts
    args = yaml.safe_load(_last("CMD"))
    parsed = _parses_as_cli(args)
    source = next(s for sources, dest in _copies() for s in sources if dest == parsed.config)
    settings = load_settings(ROOT / source, environ={})
    assert _image_uid() >= 10000 and _last("USER") not in {"root", "0"}
    admin_host, admin_port = split_hostport(settings.proxy.admin_listen)
    assert admin_host == "0.0.0.0", "inside a container the admin port must bind all addresses"
    exposed = {int(p) for ins, rest in _dockerfile() if ins == "EXPOSE" for p in rest.split()}
    assert exposed == {split_hostport(settings.proxy.listen)[1], admin_port}


def test_the_healthcheck_runs_the_file_the_image_copies() -> None:
    health = _last("HEALTHCHECK")
    command = yaml.safe_load(health.partition("CMD")[2].strip())
    assert command == ["python", _image_path("deploy/healthcheck.py")]


# -- the health check script ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "args"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/shadowtrial", "serve", "-c", "x"],
         ["serve", "-c", "x"]),
        (["shadowtrial", "worker"], ["worker"]),
        (["/usr/bin/python3", "-m", "shadowtrial", "worker", "--id", "w"], ["worker", "--id", "w"]),
        (["/sbin/docker-init", "--", "shadowtrial", "serve"], ["serve"]),
        (["python", "/opt/shadowtrial/healthcheck.py"], None),
        (["redis-server", "*:6379"], None),
    ],
)  # fmt: skip
def test_healthcheck_finds_the_shadowtrial_arguments(argv: list[str], args: Any) -> None:
    assert hc.shadowtrial_args(argv) == args


def test_healthcheck_reads_the_lowest_pid_running_serve_or_worker(tmp_path: Path) -> None:
    for pid, argv in (
        (7, ["python", "-m", "shadowtrial", "worker", "--id", "late"]),
        (1, ["/sbin/tini", "--", "sh"]),
        (3, ["shadowtrial", "report", "v2"]),  # a one-off command is not what the container runs
        (5, ["shadowtrial", "worker", "--id", "w1"]),
    ):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))
    assert hc.running_command(tmp_path) == ["worker", "--id", "w1"]
    assert hc.healthy(None) is False


def test_healthcheck_of_serve_asks_the_admin_port(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    config = tmp_path / "st.toml"
    config.write_text(f'[proxy]\nadmin_listen = "0.0.0.0:{port}"\n[redis]\nurl = "{redis_url}"\n')
    args = ["serve", "-c", str(config)]
    assert hc.healthy(args) is False  # nothing listens yet
    app = ProxyApp(load_settings(config, environ={}), redis_url)
    with serve_app(app.admin, port=port):
        assert hc.healthy(args) is True


def test_healthcheck_of_a_worker_reads_its_own_health_key(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    config = tmp_path / "st.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n')
    keys = Keys(prefix)
    redis_client.set(keys.worker_health("box-41-a1b2c3"), orjson.dumps({"ts": 1}), ex=30)
    parsed = hc.parse(["worker", "-c", str(config)])
    assert hc.worker_healthy(parsed, hostname="box") is True  # default name: host-pid-random
    assert hc.worker_healthy(parsed, hostname="other") is False  # another container's worker
    assert hc.healthy(["worker", "-c", str(config), "--id", "box-41-a1b2c3"]) is True
    assert hc.healthy(["worker", "-c", str(config), "--id", "box-41"]) is False


# -- docker-compose ---------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _compose_settings() -> Settings:
    return load_settings(DEPLOY / "config" / "shadowtrial.toml", environ={})


def test_compose_services_run_real_commands_and_mount_the_config() -> None:
    services = _compose()["services"]
    assert {"redis", "proxy-1", "proxy-2", "worker-1", "worker-2", "model-v1", "model-v2"} <= set(
        services
    )
    for name, service in services.items():
        if name == "redis":
            continue
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        entrypoint = service.get("entrypoint")
        if entrypoint:
            assert entrypoint[:2] == ["python", "-m"]
            assert importlib.util.find_spec(entrypoint[2]) is not None, entrypoint
            continue
        parsed = _parses_as_cli(service["command"])
        mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in service["volumes"]}
        assert mounts[parsed.config].resolve().exists(), name
        assert service["environment"]["SHADOWTRIAL_ADMIN_TOKEN"].startswith("${")


def test_compose_ports_and_model_servers_match_the_config() -> None:
    services = _compose()["services"]
    settings = _compose_settings()
    data, admin = (
        split_hostport(settings.proxy.listen)[1],
        split_hostport(settings.proxy.admin_listen)[1],
    )
    for name in ("proxy-1", "proxy-2"):
        assert {int(p.split(":")[-1]) for p in services[name]["ports"]} == {data, admin}
        # open reads show request bodies: the admin port is published on loopback only
        [published] = [p for p in services[name]["ports"] if p.endswith(f":{admin}")]
        assert published.startswith("127.0.0.1:"), published
    wanted = {
        re.match(r"http://([^:/]+):(\d+)", u).groups()
        for u in (settings.proxy.primary, *(c.url for c in settings.candidates))
    }
    served = {
        (name, s["command"][s["command"].index("--port") + 1])
        for name, s in services.items()
        if s.get("entrypoint", [None])[-1] == "shadowtrial.examples.model_server"
    }
    assert served == wanted
    routes = {r.path for r in model_app("v1").routes}
    for name, port in served:
        test = " ".join(services[name]["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", test)
        assert url.group(1) == port and url.group(2) in routes


def test_compose_waits_for_healthy_dependencies_and_lets_processes_drain() -> None:
    services = _compose()["services"]
    settings = _compose_settings()
    for name in ("proxy-1", "proxy-2", "worker-1", "worker-2"):
        service = services[name]
        for dependency, rule in service["depends_on"].items():
            assert rule["condition"] == "service_healthy"
            assert "test" in services[dependency]["healthcheck"], dependency
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace >= settings.proxy.primary_timeout_ms / 1000 + GRACE_EXTRA_S
        assert "healthcheck" not in service  # the image's own (deploy/healthcheck.py)


def test_shlex_roundtrip_of_compose_commands_is_plain() -> None:
    """Commands are lists of plain words (no shell), so nothing is re-parsed by a shell."""
    for service in _compose()["services"].values():
        command = service.get("command")
        if isinstance(command, list):
            assert shlex.split(shlex.join(command)) == command


# -- Kubernetes -------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s_docs() if d["kind"] == kind]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _by_kind("Deployment")}


def _configmap_settings() -> Settings:
    [configmap] = _by_kind("ConfigMap")
    raw = tomllib.loads(configmap["data"]["shadowtrial.toml"])
    return settings_from_mapping(raw, environ={})


def _containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every Deployment."""
    return [
        (dep["spec"]["template"]["spec"], c)
        for dep in _deployments().values()
        for c in dep["spec"]["template"]["spec"]["containers"]
    ]


def test_every_manifest_parses_and_kustomize_lists_all_but_the_secret_template() -> None:
    kinds = {d["kind"] for d in _k8s_docs()}
    wanted = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert wanted | {"ConfigMap", "Secret"} <= kinds
    assert all(doc["metadata"]["name"] for doc in _k8s_docs())
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {"secret.yaml"}  # a placeholder token never gets applied
    images = {c["image"].split(":")[0] for _, c in _containers()}
    assert {i["name"] for i in kustomization["images"]} == images == {"shadowtrial"}
    version = PYPROJECT["project"]["version"]
    assert {c["image"] for _, c in _containers()} == {f"shadowtrial:{version}"}
    assert {i["newTag"] for i in kustomization["images"]} == {version}


def test_selectors_bind_services_hpa_and_pdb_to_the_proxy() -> None:
    deployments = _deployments()
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    proxy = deployments["shadowtrial-proxy"]
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    worker_labels = deployments["shadowtrial-worker"]["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in proxy["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for service in _by_kind("Service"):
        selector = service["spec"]["selector"]
        assert selector.items() <= proxy_labels.items()
        assert not selector.items() <= worker_labels.items()  # workers serve no port
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    [hpa] = _by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "shadowtrial-proxy"
    pdbs = {p["metadata"]["name"]: p for p in _by_kind("PodDisruptionBudget")}
    assert set(pdbs) == set(deployments)  # one budget per Deployment
    pdb = pdbs["shadowtrial-proxy"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= proxy_labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    worker_pdb = pdbs["shadowtrial-worker"]["spec"]
    assert worker_pdb["selector"]["matchLabels"].items() <= worker_labels.items()
    assert not worker_pdb["selector"]["matchLabels"].items() <= proxy_labels.items()
    replicas = deployments["shadowtrial-worker"]["spec"]["replicas"]
    assert worker_pdb["maxUnavailable"] < replicas  # a drain never stops every worker
    assert proxy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_containers_run_the_cli_on_the_configmap() -> None:
    [configmap] = _by_kind("ConfigMap")
    for spec, container in _containers():
        parsed = _parses_as_cli(container["args"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        mount = next(
            m for m in container["volumeMounts"] if parsed.config.startswith(m["mountPath"] + "/")
        )
        assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
        assert Path(parsed.config).name in configmap["data"]
        env = {e["name"] for e in container.get("env", [])}
        for ref in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
            assert ref in env, f"{ref} is not defined for {container['name']}"


def test_ports_probes_and_secret_match_the_code() -> None:
    settings = _configmap_settings()
    admin_paths = _admin_paths(settings)
    [secret] = _by_kind("Secret")
    ports = {
        "data": split_hostport(settings.proxy.listen)[1],
        "admin": split_hostport(settings.proxy.admin_listen)[1],
    }
    assert split_hostport(settings.proxy.admin_listen)[0] == "0.0.0.0"  # probes reach it
    for _, container in _containers():
        for port in container.get("ports", []):
            assert ports[port["name"]] == port["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http:
                assert http["path"] in admin_paths and http["port"] == "admin"
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                assert command == ["python", _image_path("deploy/healthcheck.py")]
        for env in container.get("env", []):
            ref = env["valueFrom"].get("secretKeyRef")
            if ref is not None:
                assert env["name"] == settings.admin.token_env
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
    proxy = _deployments()["shadowtrial-proxy"]["spec"]["template"]
    assert proxy["metadata"]["annotations"]["prometheus.io/port"] == str(ports["admin"])
    assert "/metrics" in admin_paths


def test_the_worker_probe_checks_the_worker_the_pod_names() -> None:
    spec = _deployments()["shadowtrial-worker"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    parsed = _parses_as_cli(container["args"])
    assert parsed.id == "$(POD_NAME)"
    [env] = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # the probe allows for the health key's TTL before calling the worker dead
    probe = container["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30


def test_pods_run_as_the_image_user_read_only_with_a_writable_tmp() -> None:
    for spec, container in _containers():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == _image_uid()
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])


def test_the_proxy_drains_before_it_is_killed() -> None:
    settings = _configmap_settings()
    spec = _deployments()["shadowtrial-proxy"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = int(sleep[1]) + settings.proxy.primary_timeout_ms / 1000 + GRACE_EXTRA_S
    assert spec["terminationGracePeriodSeconds"] >= drain


def _measured_rss_mib() -> dict[str, float]:
    """Peak RSS per process from the scale_bench section of benchmarks/RESULTS.md."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    section = text.partition("<!-- scale_bench:start -->")[2].partition("<!-- scale_bench:end")[0]
    found: dict[str, float] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "serve --workers 1":
            found["proxy"] = float(cells[7])
        elif cells[0] in ("1", "2", "4") and len(cells) == 10:
            found["worker"] = max(found.get("worker", 0.0), float(cells[7]))
    return found


def test_resources_cover_what_the_benchmark_measured() -> None:
    measured = _measured_rss_mib()
    assert set(measured) == {"proxy", "worker"}, "run benchmarks/scale_bench.py"
    for name, dep in _deployments().items():
        [container] = dep["spec"]["template"]["spec"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert _cpu(requests["cpu"]) <= _cpu(limits["cpu"])
        assert _mib(requests["memory"]) <= _mib(limits["memory"])
        component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "dispatcher":  # not measured by scale_bench yet (issue #14)
            continue
        peak = measured[component]
        assert _mib(requests["memory"]) >= 1.5 * peak, (name, peak)
        assert _mib(limits["memory"]) >= 3 * peak, (name, peak)


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.toml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    settings_from_mapping(tomllib.loads(path.read_text()), environ={})


def test_the_configmap_config_validates() -> None:
    settings = _configmap_settings()
    assert settings.redis.url and settings.candidates


# -- issue 12: operator safety of the manifests ----------------------------------------


def test_every_pod_has_a_startup_probe_and_no_service_links() -> None:
    """startupProbe: liveness never kills a pod still loading; enableServiceLinks: false
    keeps SHADOWTRIAL_*_PORT=tcp://... out of the environment (bug 9 of issue 12)."""
    for spec, container in _containers():
        assert spec["enableServiceLinks"] is False
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
        assert "initialDelaySeconds" not in container["livenessProbe"]


def test_a_config_change_rolls_every_pod() -> None:
    checksum = _load_module(DEPLOY / "config_checksum.py")
    digest = checksum.checksum()
    for name, dep in _deployments().items():
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations[checksum.ANNOTATION] == digest, (
            f"{name}: run python3 deploy/config_checksum.py --write"
        )


def test_the_admin_port_is_reachable_only_from_admin_clients() -> None:
    [policy] = _by_kind("NetworkPolicy")
    proxy = _deployments()["shadowtrial-proxy"]["spec"]["template"]
    labels = proxy["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    [container] = proxy["spec"]["containers"]
    assert set(rules) == {p["name"] for p in container["ports"]}  # no port left unlisted
    assert "from" not in rules["data"]  # clients anywhere
    assert rules["admin"]["from"] and all(
        "podSelector" in peer or "namespaceSelector" in peer for peer in rules["admin"]["from"]
    )


def test_the_configmap_admin_answers_its_service_names() -> None:
    from control.admin_guard import host_allowed

    settings = _configmap_settings()
    [admin] = [s for s in _by_kind("Service") if s["metadata"]["name"] == "shadowtrial-admin"]
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    name = admin["metadata"]["name"]
    for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc.cluster.local"):
        assert host_allowed(f"{host}:9901", settings.admin.allowed_hosts), host
    assert not host_allowed("evil.example", settings.admin.allowed_hosts)
