"""run_pipeline's model replicas: the first is the model of a run without replicas, the others get
a name, a log name and a /metrics port of their own, which the dashboard reads too."""

from __future__ import annotations

import pytest

import run_pipeline
from run_pipeline import METRICS_PORTS, dashboard_upstreams, metric_processes, model_replicas, parse_args


def test_one_replica_is_the_model_of_a_run_without_replicas():
    assert model_replicas(1) == [("model", {})]
    assert parse_args([]).model_replicas == 1
    assert dashboard_upstreams(model_replicas(1)) == {}


def test_each_further_replica_has_a_name_a_log_name_and_a_metrics_port_of_its_own():
    replicas = model_replicas(3)
    assert [name for name, _ in replicas] == ["model", "model-2", "model-3"]
    assert [env.get("LOG_NAME") for _, env in replicas] == [None, "model-2", "model-3"]
    ports = [METRICS_PORTS["model"]] + [env["METRICS_PORT"] for _, env in replicas[1:]]
    assert len(set(ports)) == 3 and not set(ports[1:]) & set(METRICS_PORTS.values())


def test_the_dashboard_reads_every_replica(monkeypatch):
    monkeypatch.delenv("UPSTREAM_METRICS", raising=False)
    urls = dashboard_upstreams(model_replicas(2))["UPSTREAM_METRICS"].split(",")
    assert "http://localhost:9102/metrics" in urls and "http://localhost:9122/metrics" in urls
    monkeypatch.setenv("UPSTREAM_METRICS", "none")
    assert dashboard_upstreams(model_replicas(2)) == {}  # the user's choice wins


def test_the_dashboard_reads_every_metric_process_too(monkeypatch):
    """Partitions and standbys each count their join buffer and expired halves."""
    monkeypatch.delenv("UPSTREAM_METRICS", raising=False)
    processes = metric_processes(2, standby=True)
    urls = dashboard_upstreams(model_replicas(1) + processes)["UPSTREAM_METRICS"].split(",")
    assert "http://localhost:9103/metrics" in urls  # metric-0 keeps metric's port
    assert {f"http://localhost:{env['METRICS_PORT']}/metrics" for _, env in processes if "METRICS_PORT" in env} \
        <= set(urls)
    assert len(urls) == len(METRICS_PORTS) + len(processes) - 1


def test_at_least_one_replica(monkeypatch, capsys):
    assert parse_args(["--model-replicas", "2"]).model_replicas == 2
    monkeypatch.setenv("MODEL_REPLICAS", "3")
    assert parse_args([]).model_replicas == 3
    with pytest.raises(SystemExit):
        parse_args(["--model-replicas", "0"])
    assert "at least 1" in capsys.readouterr().err
    assert run_pipeline.MODEL_REPLICA_PORT_BASE + 2 == 9122
