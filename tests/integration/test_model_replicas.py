"""Two model processes share `features` as competing consumers: each takes a share of the stream,
every id is predicted exactly once, and a retrain reaches both, each swapping on its own."""

from __future__ import annotations

import pytest

from mlmonitor.topology import FEATURES
from run_pipeline import model_replicas
from service_harness import (assert_no_dead_letters, consumers_on, declare_topology, free_port, output_of,
                             wait_for_output, wait_until_drained)
from test_model_versions import (assert_each_id_once_by_the_version_it_names, predict_across_a_swap, ridge, save,
                                 scrape, served_versions)
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


def test_two_replicas_share_the_stream_predict_each_id_once_and_each_swaps_to_a_new_version(
        pipeline, amqp_url, vhost, models_dir):
    estimators = {"old": ridge(alpha=0.1), "new": ridge(alpha=10.0)}
    old = save(models_dir, estimators["old"])
    declare_topology(amqp_url)
    ports = {}
    for name, env in model_replicas(2):
        ports[name] = free_port()
        pipeline.start("model", env={**env, "METRICS_PORT": str(ports[name])}, name=name)
    wait_until(lambda: consumers_on(amqp_url, FEATURES) == 2, 120, interval=0.2, message="two consumers on features")

    new, swapped_at, stream, got = predict_across_a_swap(amqp_url, models_dir, estimators["new"], before=200, after=50)
    assert_each_id_once_by_the_version_it_names(
        got, stream, {old.version: estimators["old"], new.version: estimators["new"]}, old.version, swapped_at)

    for name, port in ports.items():
        wait_for_output(pipeline, name, f"now serving version {new.version} (was {old.version})")
        log = output_of(pipeline, name)
        assert log.count("now serving version") == 1, log
        assert f" {name} INFO predicted " in log, f"{name} took no share of the stream:\n{log}"
        assert served_versions(scrape(port)) == [new.version]
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)
