"""Two model processes share `features` as competing consumers: each takes a share of the stream,
every id is predicted exactly once, and a retrain reaches both, each swapping on its own."""

from __future__ import annotations

import time

import pytest

from mlmonitor.topology import FEATURES
from run_pipeline import model_replicas
from service_harness import (assert_no_dead_letters, consumers_on, declare_topology, free_port, output_of,
                             wait_for_output, wait_until_drained)
from test_model_versions import (DIABETES, SWAP_WITHIN_SECONDS, FeatureStream, Predictions, ridge, save, scrape,
                                 served_versions)
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

    stream, predictions = FeatureStream(amqp_url), Predictions(amqp_url)
    stream.start()
    try:
        predictions.wait_for(lambda got: len(got) >= 200, message="200 predictions of the old version")
        new = save(models_dir, estimators["new"])
        swapped_at = time.time()
        predictions.wait_for(lambda got: sum(item["sent_at"] > swapped_at + SWAP_WITHIN_SECONDS + 0.5
                                             for item in got) >= 50,
                             message="predictions of features sent well after the swap")
    finally:
        stream.stop()
    predictions.wait_for(lambda got: len(got) >= len(stream.published), message="a prediction for every id")

    got = predictions.messages
    assert sorted(item["id"] for item in got) == sorted(stream.published), "each id exactly once"
    estimator_of = {old.version: estimators["old"], new.version: estimators["new"]}
    for item in got:  # each by exactly the version it names
        row = DIABETES.data[stream.published[item["id"]]]
        assert item["body"] == pytest.approx(estimator_of[item["model_version"]].predict([row])[0], rel=1e-12)
    late_old = [item["id"] for item in got if item["sent_at"] > swapped_at + SWAP_WITHIN_SECONDS
                and item["model_version"] == old.version]
    assert not late_old, f"features sent more than 2 s after the swap predicted by the old version: {late_old[:3]}"

    for name, port in ports.items():
        wait_for_output(pipeline, name, f"now serving version {new.version} (was {old.version})")
        log = output_of(pipeline, name)
        assert log.count("now serving version") == 1, log
        assert f" {name} INFO predicted " in log, f"{name} took no share of the stream:\n{log}"
        assert served_versions(scrape(port)) == [new.version]
    assert_no_dead_letters(amqp_url, FEATURES)
    wait_until_drained(vhost, FEATURES)
