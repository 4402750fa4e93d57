"""The files of ``deploy/``, checked by the tools that will read them.

systemd units with ``systemd-analyze verify`` (it works offline, with no systemd as PID 1), the
Prometheus configuration and alert rules with ``promtool check config``, ``check rules`` and
``test rules``, every PromQL expression of the alerts and the dashboard parsed by ``promtool``
(each wrapped as a recording rule) and naming only metrics of the contract, the Grafana
dashboard's essentials, and the Kubernetes manifests with ``kubernetes-validate --strict``. Each
checker is also shown a broken file once, so a checker that checks nothing cannot pass.

The container image cannot be built here (no container engine runs); its test checks what the
Containerfile names.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from activator import cli

CHECKOUT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = CHECKOUT / "deploy"

#: The metric names of the shared contract (issue 7), and Prometheus's own ``up``.
CONTRACT: Final = frozenset(
    {
        "activator_uid_pool_size",
        "activator_uid_leases",
        "activator_uid_pool_utilization_ratio",
        "activator_uid_pool_free",
        "activator_uid_pool_uids",
        "activator_uid_allocations_total",
        "activator_uid_allocation_failures_total",
        "activator_uid_candidates_skipped_total",
        "activator_uid_allocation_seconds",
        "activator_uid_wait_queue_length",
        "activator_uid_wait_seconds",
        "activator_uid_lease_duration_seconds",
        "activator_uid_chown_total",
        "activator_uid_chown_files_total",
        "activator_uid_chown_seconds_total",
        "activator_connections_accepted_total",
        "activator_connections_rejected_total",
        "activator_invocations_active",
        "activator_invocations_total",
        "activator_handler_exits_total",
        "activator_spawn_failures_total",
        "activator_spawn_seconds",
        "activator_handler_duration_seconds",
        "activator_spawner_up",
        "activator_spawner_restarts_total",
        "activator_userdb_up",
        "activator_build_info",
        "up",
    }
)
_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


def tool(name: str) -> str:
    """The path of a command the test needs; a skip when it is missing, except under CI=true,
    where a missing checker is a failure (the Makefile installs it)."""
    path = shutil.which(name) or (
        str(CHECKOUT / ".venv" / "bin" / name)
        if (CHECKOUT / ".venv" / "bin" / name).exists()
        else None
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (histogram series as their family's name)."""
    names = set()
    for name in re.findall(r"\b(activator_[a-z_]+|up)\b", expr):
        for suffix in _HISTOGRAM_SUFFIXES:
            family = name.removesuffix(suffix)
            if family != name and family in CONTRACT:
                name = family
        names.add(name)
    return names


# --- systemd -------------------------------------------------------------------------------------


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """deploy/systemd's units in tmp_path, ExecStart= pointing at this checkout's activator
    (``verify`` checks that the command exists; /usr/local/bin/activator does not, here)."""
    for name in ("activator.service", "activator.socket"):
        text = (DEPLOY / "systemd" / name).read_text(encoding="utf-8")
        text = text.replace("/usr/local/bin/activator", str(CHECKOUT / ".venv/bin/activator"))
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_systemd_units_verify_without_a_word(units: Path) -> None:
    analyze = tool("systemd-analyze")
    names = [str(units / "activator.service"), str(units / "activator.socket")]
    done = run(analyze, "verify", "--man=no", *names)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # The control: verify exits 0 on an unknown key too, and says so; the test reads the words.
    broken = units / "activator.service"
    broken.write_text(broken.read_text().replace("Type=notify", "Type=notfy"), encoding="utf-8")
    done = run(analyze, "verify", "--man=no", *names)
    assert "Failed to parse service type" in done.stdout + done.stderr


def test_the_service_is_what_activator_needs_from_systemd() -> None:
    text = (DEPLOY / "systemd" / "activator.service").read_text(encoding="utf-8")
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "mixed"
    # activator's cgroups are at <hierarchy>/activator, not below the service's: nothing to
    # delegate (deploy/README.md says so).
    assert "Delegate" not in settings
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["ExecStart"].startswith("/usr/local/bin/activator serve ")
    assert "--daemon" not in settings["ExecStart"]
    assert "DynamicUser" not in settings


def test_the_socket_unit_hands_over_the_address_of_the_example_echo_unit() -> None:
    """activator takes a passed socket for the socket unit with the same address (listener.
    matches): the two files must agree, address for address."""

    def listens(path: Path) -> list[str]:
        return [
            line.split("=", 1)[1]
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("ListenStream=")
        ]

    handed = listens(DEPLOY / "systemd" / "activator.socket")
    assert handed == listens(CHECKOUT / "examples" / "units" / "echo.socket")
    text = (DEPLOY / "systemd" / "activator.socket").read_text(encoding="utf-8")
    assert "\nAccept=no\n" in text
    assert "\nService=activator.service\n" in text


# --- Prometheus ----------------------------------------------------------------------------------


def test_promtool_accepts_the_scrape_config_and_the_rules_and_their_tests() -> None:
    promtool = tool("promtool")
    directory = DEPLOY / "prometheus"
    config = run(promtool, "check", "config", "prometheus.yml", cwd=directory)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: prometheus.yml is valid" in config.stdout
    rules = run(promtool, "check", "rules", "alerts.yml", cwd=directory)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 7 rules found" in rules.stdout
    tested = run(promtool, "test", "rules", "alerts_test.yml", cwd=directory)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    targets = json.loads((directory / "activator-targets.example.json").read_text())
    assert all(":" in target for group in targets for target in group["targets"])


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml (read with promtool's own parser: ``check rules`` passed)."""
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    # A YAML parser is no dependency of the project; the rules' shape is fixed: one line each.
    alerts = re.findall(r"^\s+- alert: (\S+)$", text, re.MULTILINE)
    exprs = re.findall(r"^\s+expr: (.+)$", text, re.MULTILINE)
    assert len(alerts) == len(exprs)
    return [{"alert": a, "expr": e} for a, e in zip(alerts, exprs, strict=True)]


def test_the_alerts_cover_what_the_issue_asks_with_contract_metrics_only() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert set(rules) == {
        "ActivatorDown",
        "ActivatorUIDPoolNearlyExhausted",
        "ActivatorUIDPoolExhausted",
        "ActivatorSpawnFailures",
        "ActivatorSpawnerDown",
        "ActivatorSpawnerRestarted",
        "ActivatorUserdbDown",
    }
    assert "activator_uid_pool_utilization_ratio > 0.8" in rules["ActivatorUIDPoolNearlyExhausted"]
    assert 'reason=~"exhausted|queue_full|wait_timeout"' in rules["ActivatorUIDPoolExhausted"]
    assert rules["ActivatorUserdbDown"] == "activator_userdb_up == 0"
    for name, expr in rules.items():
        assert metric_names(expr) <= CONTRACT, f"{name}: {expr}"


# --- Grafana -------------------------------------------------------------------------------------


@pytest.fixture
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "activator.json").read_text())
    return data


def panel_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_the_dashboard_has_what_grafana_needs_and_what_the_issue_asks(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["title"] == "activator"
    assert dashboard["uid"] == "activator-overview"
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
    # No two panels overlap on the grid.
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))
    used = set().union(*(metric_names(expr) for _, expr in panel_exprs(dashboard)))
    for wanted in (
        "activator_uid_pool_utilization_ratio",
        "activator_uid_leases",
        "activator_uid_allocations_total",
        "activator_uid_allocation_failures_total",
        "activator_connections_rejected_total",
        "activator_spawn_seconds",
        "activator_invocations_active",
    ):
        assert wanted in used
    assert any("histogram_quantile(0.99" in expr for _, expr in panel_exprs(dashboard))


def quantity(expr: str) -> str:
    """What a panel's expression measures, for its unit: seconds (a latency quantile), a share
    of time (a rate of seconds), a rate of events, or a count."""
    if "histogram_quantile(" in expr:
        return "seconds"
    if "rate(" in expr:
        return "share of time" if "_seconds_total" in expr else "per second"
    return "count"


def test_every_panel_shows_one_quantity_per_unit(dashboard: dict[str, Any]) -> None:
    """Series of different quantities on one panel each have a unit of their own (an override
    for their query), never the panel's one unit for all."""
    for panel in dashboard["panels"]:
        overridden = {
            override["matcher"]["options"]
            for override in panel["fieldConfig"].get("overrides", [])
            if override["matcher"]["id"] == "byFrameRefID"
            and any(prop["id"] == "unit" for prop in override["properties"])
        }
        shared = {
            quantity(target["expr"])
            for target in panel["targets"]
            if target["refId"] not in overridden
        }
        assert len(shared) <= 1, (panel["title"], shared)


def test_every_expression_parses_and_names_only_contract_metrics(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    promtool = tool("promtool")
    exprs = [expr for _, expr in panel_exprs(dashboard)] + [r["expr"] for r in alert_rules()]
    lines = ["groups:", "  - name: parse", "    rules:"]
    for index, expr in enumerate(exprs):
        # Grafana's variables, as Grafana fills them in.
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        lines += [f"      - record: parsed:expr{index}", f"        expr: {json.dumps(concrete)}"]
        assert metric_names(expr) <= CONTRACT, expr
    rules = tmp_path / "parsed.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run(promtool, "check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
    # The control: a broken expression is refused.
    broken = [*lines[:3], "      - record: parsed:broken", "        expr: sum by (le (rate(x[1m]))"]
    rules.write_text("\n".join(broken) + "\n", encoding="utf-8")
    assert run(promtool, "check", "rules", str(rules)).returncode != 0


# --- Kubernetes ----------------------------------------------------------------------------------


def test_the_kubernetes_manifests_validate_strictly(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    manifests = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    done = run(validate, "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    for kind in ("daemonset/activator", "configmap/activator", "service/activator-echo"):
        assert f"passed for resource {kind}" in out
    # PodMonitor is a CRD of the Prometheus operator: no schema ships for it, said as a warning.
    assert "Couldn't find schema for kind PodMonitor" in out
    # The control: an unknown field fails strict validation.
    broken = tmp_path / "daemonset.yaml"
    text = (DEPLOY / "kubernetes" / "daemonset.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"))
    assert run(validate, "--strict", str(broken)).returncode != 0


def test_the_podmonitor_scrapes_the_port_and_pods_the_daemonset_makes() -> None:
    """What no schema checks for a CRD: its selector and port name match the DaemonSet."""
    kube = DEPLOY / "kubernetes"
    monitor = (kube / "podmonitor.yaml").read_text(encoding="utf-8")
    daemonset = (kube / "daemonset.yaml").read_text(encoding="utf-8")
    assert "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\n" in monitor
    assert "app.kubernetes.io/name: activator" in monitor
    assert "    - port: metrics\n      path: /metrics\n" in monitor
    assert "            - name: metrics\n              containerPort: 9464\n" in daemonset
    config = (kube / "configmap.yaml").read_text(encoding="utf-8")
    assert 'listen = "0.0.0.0:9464"' in config


# --- container -----------------------------------------------------------------------------------


def test_the_containerfile_copies_what_exists_and_serves_the_mounted_settings() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM \S+debian:bookworm", text, re.MULTILINE)
    for sources in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for source in sources.split():
            assert (CHECKOUT / source).exists(), source
    assert containerfile_argv() == [
        "/usr/local/bin/activator",
        "serve",
        "--config",
        "/etc/activator/activator.toml",
    ]
    assert "\nUSER root\n" in text


def containerfile_argv(args: list[str] | None = None) -> list[str]:
    """The command a container of the image runs: ENTRYPOINT, then ``args`` (a Kubernetes
    ``args:``, ``podman run IMAGE ARGS``) or else CMD, as the runtimes join them."""
    text = (DEPLOY / "container" / "Containerfile").read_text(encoding="utf-8")
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE)
    cmd = re.search(r"^CMD (.+)$", text, re.MULTILINE)
    assert entry is not None
    argv: list[str] = json.loads(entry.group(1))
    if args is not None:
        return argv + args
    return argv + (json.loads(cmd.group(1)) if cmd is not None else [])


def kubernetes(name: str) -> Any:
    """A manifest of deploy/kubernetes, parsed (PyYAML comes with kubernetes-validate)."""
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("PyYAML is not installed (it comes with kubernetes-validate)")
        pytest.skip("PyYAML is not installed")
    return yaml.safe_load((DEPLOY / "kubernetes" / name).read_text(encoding="utf-8"))


def test_the_daemonset_runs_a_command_activator_parses() -> None:
    """The DaemonSet's args replace the image's CMD after its ENTRYPOINT: what the pod runs must
    be a command line activator accepts (an ENTRYPOINT that held the arguments too once made
    ``activator serve --config X serve --config X``: exit 2, a crash loop)."""
    (container,) = kubernetes("daemonset.yaml")["spec"]["template"]["spec"]["containers"]
    argv = containerfile_argv(container.get("args"))
    assert argv[0] == "/usr/local/bin/activator"
    args = cli._parser().parse_args(argv[1:])
    assert (args.command, args.config, args.daemon) == (
        "serve",
        "/etc/activator/activator.toml",
        False,
    )
    # The control: the doubled command line is refused, as activator refuses it.
    with pytest.raises(SystemExit):
        cli._parser().parse_args([*argv[1:], *argv[1:]])


def test_the_configmap_settings_and_units_pass_activator_check(tmp_path: Path) -> None:
    """The files the DaemonSet projects from the ConfigMap, checked by ``activator check``."""
    data = kubernetes("configmap.yaml")["data"]
    volumes = kubernetes("daemonset.yaml")["spec"]["template"]["spec"]["volumes"]
    (config,) = [volume["configMap"] for volume in volumes if "configMap" in volume]
    for item in config["items"]:
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]], encoding="utf-8")
    assert sorted(item["key"] for item in config["items"]) == sorted(data)
    done = run(
        str(CHECKOUT / ".venv" / "bin" / "activator"),
        "check",
        "--config",
        str(tmp_path / "activator.toml"),
        "--units",
        str(tmp_path / "units"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "echo.socket" in done.stdout + done.stderr
