"""prometheus/prometheus.yml scrapes every service that serves /metrics in docker-compose.yml, on
the port that service listens on, and nothing that isn't there; it loads the alert rules beside it,
which alert on dead letters left waiting."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RABBITMQ_PROMETHEUS_PORT = "15692"  # the rabbitmq_prometheus plugin, enabled in the official image


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def scrape_targets() -> dict[str, list[str]]:
    """Job -> host:port targets, static or found by DNS (every replica of a compose service)."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"]: [target for static in job.get("static_configs", []) for target in static["targets"]]
            + [f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
            for job in config["scrape_configs"]}


def metrics_ports() -> dict[str, str]:
    """Service -> port of its /metrics, from its environment."""
    ports = {}
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        port = environment.get("METRICS_PORT") or environment.get("DASHBOARD_PORT")
        if port and str(port) != "0":
            ports[name] = str(port)
    return ports


def test_every_service_with_metrics_is_scraped_on_its_port():
    targets = {target for job in scrape_targets().values() for target in job}
    expected = {f"{name}:{port}" for name, port in metrics_ports().items()}
    assert expected >= {"features:9101", "model:9102", "metric:9103", "plot:9104", "dashboard:8000"}
    assert expected <= targets, f"not scraped: {sorted(expected - targets)}"


def test_every_target_is_a_compose_service_on_a_port_it_serves():
    services = compose()["services"]
    ports = {**metrics_ports(), "rabbitmq": RABBITMQ_PROMETHEUS_PORT}
    for job, targets in scrape_targets().items():
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in services, f"job {job}: {host} is not a compose service"
            assert ports.get(host) == port, f"job {job}: {host} serves /metrics on {ports.get(host)}, not {port}"


def test_replicated_services_are_scraped_on_every_replica():
    jobs = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    found_by_dns = {name for job in jobs for dns in job.get("dns_sd_configs", []) if dns.get("type") == "A"
                    for name in dns["names"]}
    replicated = {name for name, service in compose()["services"].items() if "replicas" in (service.get("deploy") or {})}
    assert "model" in replicated
    assert replicated <= found_by_dns, f"scraped on one replica only: {sorted(replicated - found_by_dns)}"


def test_prometheus_service_mounts_this_config():
    compose_file = compose()
    service = compose_file["services"]["prometheus"]
    assert service["image"].startswith("prom/prometheus:")
    (config,) = [config for config in service["configs"] if config["target"] == "/etc/prometheus/prometheus.yml"]
    assert compose_file["configs"][config["source"]]["file"] == "./prometheus/prometheus.yml"


def prometheus_config() -> dict:
    return yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())


def alert_rules() -> list[dict]:
    rules = []
    for rule_file in prometheus_config().get("rule_files", []):
        groups = yaml.safe_load((ROOT / "prometheus" / rule_file).read_text())["groups"]
        rules += [rule for group in groups for rule in group["rules"]]
    return rules


def test_the_config_loads_alert_rules_from_files_beside_it():
    rule_files = prometheus_config().get("rule_files", [])
    assert rule_files, "no rule_files in prometheus.yml"
    for rule_file in rule_files:
        assert "/" not in rule_file and (ROOT / "prometheus" / rule_file).is_file(), rule_file


def test_dead_letters_waiting_raise_an_alert_on_the_gauge_the_runtime_exports():
    from mlmonitor.observability import DEAD_LETTER_QUEUE_MESSAGES

    alerts = {rule["alert"]: rule for rule in alert_rules() if "alert" in rule}
    rule = alerts["DeadLettersWaiting"]
    assert DEAD_LETTER_QUEUE_MESSAGES._name in rule["expr"] and rule["expr"].rstrip().endswith("> 0")
    assert rule["for"] == "5m"
    assert rule["labels"]["severity"] and "scripts/dead_letters.py" in rule["annotations"]["description"]


def test_drift_falling_behind_raises_an_alert_on_the_gauge_drift_exports():
    from drift import BACKLOG

    alerts = {rule["alert"]: rule for rule in alert_rules() if "alert" in rule}
    rule = alerts["DriftFallingBehind"]
    assert BACKLOG._name in rule["expr"] and "by (queue)" in rule["expr"]
    assert rule["for"] == "10m" and "{{ $labels.queue }}" in rule["annotations"]["summary"]


def test_compose_mounts_every_rule_file_beside_the_config():
    compose_file = compose()
    targets = {config["target"]: compose_file["configs"][config["source"]]["file"]
               for config in compose_file["services"]["prometheus"]["configs"]}
    for rule_file in prometheus_config()["rule_files"]:
        assert targets.get(f"/etc/prometheus/{rule_file}") == f"./prometheus/{rule_file}", rule_file
