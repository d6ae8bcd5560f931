"""The deployment kit in deploy/, checked with the tools operators run it with.

- Prometheus: ``promtool check config``, ``promtool check rules`` and ``promtool test
  rules`` (the alert rules' unit tests) -- ``apt-get install prometheus``;
- Grafana: the dashboard is JSON, every panel has a datasource and a query, every query
  parses as PromQL (promtool), and every ``loopd_*`` name in it and in the alert rules is
  one loopd exposes;
- Compose: ``docker-compose config -q`` (Debian's ``docker-compose``, which needs no Docker
  daemon to validate) plus the layout rules compose cannot know (the adapter volume at the
  same path in vLLM and loopd, every mounted repo file present);
- systemd: ``systemd-analyze verify`` and ``systemd-analyze security`` on the units;
- the Dockerfile's torch pin equals pyproject's; deploy/loopd.toml passes ``loopd config
  check``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loopd.metrics import Metrics
from loopd.proxy.metrics import ProxyMetrics
from loopd.store import Store
from loopd.types import AdapterVersion, Completion, Detection, Prompt

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loopd.json"
TOOL_TIMEOUT = 600  # seconds; generous for a slow, shared machine, never asserted on

METRIC_NAME = re.compile(r"\bloopd_[a-zA-Z0-9_]+")
# Compose's short volume syntax, SOURCE:TARGET[:MODE], where SOURCE may be ${VAR:-default}.
VOLUME = re.compile(r"^((?:\$\{[^}]*\}|[^:$])+):([^:]+)(?::(ro|rw))?$")


def metric_names_from_exposition(text: str) -> set[str]:
    """The series names PromQL can select from a Prometheus text exposition (a scrape of
    /metrics). Families are counted by their TYPE line too, so a labelled family that has
    no series yet (nothing counted) still contributes its names."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return {name for name in names if not name.endswith("_created")}  # creation times


def tool(name: str, install: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `apt-get install {install}`"
    return path


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def data_panels(board: dict) -> list[dict]:
    """Every panel that shows data: rows (``type: row``) only group the panels below them."""
    panels = []
    for panel in board["panels"]:
        panels.extend(panel.get("panels", []))  # panels inside a collapsed row
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def dashboard_queries(board: dict) -> list[str]:
    queries = [target["expr"] for panel in data_panels(board) for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "loopd-alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- Prometheus ---------------------------------------------------------------------------


def test_prometheus_config_passes_promtool_with_its_rule_files() -> None:
    promtool = tool("promtool", "prometheus")
    # rule_files are relative to the config's own folder: run from elsewhere on purpose.
    result = run(
        promtool, "check", "config", PROMETHEUS / "prometheus.yml", cwd=DEPLOY.parent.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout, result.stdout
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {scrape["job_name"] for scrape in config["scrape_configs"]}
    assert {"loopd", "vllm"} <= jobs


def test_alert_rules_pass_promtool_check() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "check", "rules", PROMETHEUS / "loopd-alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "test", "rules", PROMETHEUS / "loopd-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_is_actionable_and_unit_tested() -> None:
    tests = yaml.safe_load((PROMETHEUS / "loopd-alerts.test.yml").read_text())
    cases = [case for group in tests["tests"] for case in group.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = set()
    for rule in alert_rules():
        name = rule["alert"]
        names.add(name)
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, name  # says what to do
    expected = {
        "LoopdDown",
        "LoopdServingDown",
        "LoopdDegenerationRateHigh",
        "LoopdRoundsFailing",
        "LoopdNoSuccessfulRound",
        "LoopdNoDeployment",
        "LoopdConfigReloadFailed",
        "LoopdJobFailing",
    }
    assert expected <= names
    # promtool compares exp_alerts exactly, so a firing case also shows the healthy series
    # in its input staying quiet; a quiet case shows the `for:` or the volume holding it back.
    assert names <= firing, f"alerts never shown firing in a test: {names - firing}"
    assert names <= quiet, f"alerts never shown quiet in a test: {names - quiet}"


# --- metric names ---------------------------------------------------------------------------


def test_exposition_parser_gives_the_names_promql_sees() -> None:
    text = (
        "# TYPE loopd_samples counter\n"
        'loopd_samples_total{adapter="base",outcome="clean"} 3\n'
        "# TYPE loopd_backend_errors counter\n"  # a labelled counter, nothing counted yet
        "# TYPE loopd_training_seconds histogram\n"
        'loopd_training_seconds_bucket{le="+Inf"} 1\n'
        "loopd_training_seconds_count 1\n"
        "loopd_training_seconds_sum 2.5\n"
    )
    assert metric_names_from_exposition(text) == {
        "loopd_samples_total",
        "loopd_backend_errors_total",
        "loopd_training_seconds_bucket",
        "loopd_training_seconds_count",
        "loopd_training_seconds_sum",
    }


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every series name a real loopd registry exposes, over a store that has trained,
    deployed and sampled (gauges such as ``loopd_last_*`` are absent until then)."""
    store = Store(tmp_path_factory.mktemp("exposed") / "loopd.db")
    prompt = Prompt(id="p", text="doc: a text:", kind="copy")
    store.add_samples([(prompt, Completion("p", " a a a a", "length"), Detection(True, "cycle"))])
    round_id = store.start_round(parent_version=None)
    metrics = {"loss": 0.6, "rewards_margins": 0.2, "rewards_accuracies": 0.9}
    store.add_adapter_version(
        AdapterVersion(1, Path("v0001"), parent=None, created_at=1.7e9, round_id=round_id)
    )
    store.finish_round(round_id, "promoted", candidate_version=1, train_metrics=metrics)
    store.record_decision("gate", True, "fixed 9", candidate_version=1, checks=[])
    store.record_event("deployed", version=1, round_id=round_id, source="gate")
    registry = Metrics(store).registry
    ProxyMetrics(registry)  # the proxy's families live on the daemon's registry too
    return metric_names_from_exposition(generate_latest(registry).decode())


def test_dashboard_and_alerts_use_only_metrics_loopd_exposes(exposed: set[str]) -> None:
    known = exposed
    used_by_dashboard = {
        name for query in dashboard_queries(dashboard()) for name in METRIC_NAME.findall(query)
    }
    used_by_rules = {
        name
        for rule in alert_rules()
        for text in (rule["expr"], *rule["annotations"].values())
        for name in METRIC_NAME.findall(text)
    }
    assert used_by_dashboard - known == set()
    assert used_by_rules - known == set()
    assert len(used_by_dashboard) >= 25  # the dashboard covers loopd, not a corner of it


# --- Grafana --------------------------------------------------------------------------------


def test_dashboard_panels_each_have_a_datasource_and_a_query() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panels = data_panels(board)
    assert panels
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool has no "check expression": each query becomes a recording rule it parses."""
    promtool = tool("promtool", "prometheus")
    substitutions = {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$__interval": "1m",
        "$instance": ".*",
    }
    rules = []
    for number, query in enumerate(dashboard_queries(dashboard())):
        if query.startswith("label_values("):  # Grafana's own function, not PromQL
            query = query.removeprefix("label_values(").rsplit(",", 1)[0]
        for variable, value in substitutions.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "loopd.yml").read_text())
    (provider,) = providers["providers"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = {
        match[1]: match[2]
        for match in map(VOLUME.match, compose["services"]["grafana"]["volumes"])
        if match[1].startswith("./")
    }
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --- docker compose -------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    compose = tool("docker-compose", "docker-compose")
    result = run(
        compose, "--project-directory", DEPLOY, "-f", DEPLOY / "docker-compose.yml", "config", "-q"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_layout() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"vllm", "loopd", "prometheus", "grafana"} <= set(services)

    def mounts(service: str) -> dict[str, str]:
        """Container path -> source, for every volume of a service."""
        parsed = [VOLUME.match(volume) for volume in services[service]["volumes"]]
        assert all(parsed), services[service]["volumes"]
        return {match[2]: match[1] for match in parsed}

    # loopd sends vLLM each adapter's folder: the state volume at the same path in both.
    state_dir = tomllib.loads((DEPLOY / "loopd.toml").read_text())["state_dir"]
    assert mounts("loopd")[state_dir] == mounts("vllm")[state_dir] == "loopd-state"
    assert mounts("loopd")["/models/base"] == mounts("vllm")["/models/base"]
    # vLLM: runtime LoRA on, and never published (its LoRA API loads any path it is given).
    assert services["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in (DEPLOY / "vllm.env").read_text()
    assert "ports" not in services["vllm"]
    assert compose["networks"][services["vllm"]["networks"][0]]["internal"] is True
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # Prometheus reads this folder's config (its rule_files resolve beside it).
    assert mounts("prometheus")["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    # Every repo file a service mounts or reads exists.
    for name, service in services.items():
        for source in mounts(name).values() if "volumes" in service else []:
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        for env_file in [service["env_file"]] if "env_file" in service else []:
            assert (DEPLOY / env_file).is_file(), f"{name}: {env_file}"
    build = services["loopd"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_pins_pyprojects_torch_and_runs_loopd_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [dep for dep in dependencies if dep.startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}\n" in text
    (install,) = [line for line in text.splitlines() if "pip install" in line]
    assert '"torch==${TORCH_VERSION}" .' in install  # torch pinned in loopd's own install
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert re.search(r"^EXPOSE 9464 8100$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    assert 'ENTRYPOINT ["loopd"]' in text
    assert 'CMD ["run", "--config", "/etc/loopd/loopd.toml"]' in text
    assert 'VOLUME ["/var/lib/loopd"]' in text


def test_deploy_config_passes_loopd_config_check() -> None:
    result = run(sys.executable, "-m", "loopd", "config", "check", DEPLOY / "loopd.toml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd --------------------------------------------------------------------------------

HARDENING = (
    "User=loopd",
    "ProtectSystem=strict",
    "ReadWritePaths=/var/lib/loopd",
    "ProtectHome=yes",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "CapabilityBoundingSet=\n",
    "Restart=on-failure",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "EnvironmentFile=/etc/loopd/loopd.env",
)
# The binaries the units start live on the target host, not here; systemd-analyze verify
# reports each missing one ("Command ... is not executable") and exits 1. That is the only
# complaint tolerated. (It does not resolve User=, so a missing `loopd` user is silent.)
ABSENT_HERE = re.compile(
    r"^\S+\.service: Command (/opt/loopd/venv/bin/loopd|/opt/loopd/vllm-serve\.sh) "
    r"is not executable: No such file or directory$"
)


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: `apt-get install systemd` (Debian's image has it)"
    return path


def test_loopd_unit_is_hardened() -> None:
    text = (DEPLOY / "loopd.service").read_text()
    for line in HARDENING:
        assert line in text, line
    assert "loopd run --config /etc/loopd/loopd.toml" in text


@pytest.mark.parametrize("unit", ["loopd.service", "vllm.service"])
def test_units_pass_systemd_analyze_verify(unit: str) -> None:
    analyze = systemd_analyze()
    result = run(analyze, "verify", DEPLOY / unit)
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not ABSENT_HERE.match(line)
    ]
    assert complaints == [], result.stdout + result.stderr


def test_loopd_unit_exposure_is_low() -> None:
    analyze = systemd_analyze()
    # Exposure 0.0 (locked down) .. 10.0 (unprotected); --threshold is in tenths.
    result = run(analyze, "security", "--offline=yes", "--threshold=40", DEPLOY / "loopd.service")
    assert result.returncode == 0, result.stdout + result.stderr
