"""The broker's limit for our topology: a bare pika pipeline with the same queues, messages and hops.

    features ─► inputs ─► [features] ─► model ─► model_predictions ─► [y_pred] ─┐
                   └────► [y_true] ───────────────────────────────────────────┴─► metric ─► metric_events
                                                                                      ─► [metric_added] ─► plot

Each hop only decodes and encodes JSON: no schema validation, no model, no CSV, no PNG. It keeps the
broker-side guarantees our services keep, so the ratio compares like with like: the same durable
queues and exchanges (declared by mlmonitor.topology; our services publish through named exchanges,
never the default one, for least privilege), persistent mandatory messages, pipelined publisher
confirms, manual acks only once the downstream publish is confirmed (coalesced with multiple=True),
the same prefetch and window, and messages of the same size. One process per role, one connection
per process. Plain pika: it must not import mlmonitor.amqp, whose import makes pika join buffered
writes into one send(2) for our services (coalesce_socket_writes); a bare run with that is 20-30 %
faster, and is not the baseline the ratios have been measured against.

    python bench/bare.py ROLE --amqp-url URL [--count N] [--rate R] [--stats FILE]

URL may list a cluster's nodes, comma-separated, as AMQP_URL does: the role uses the first that answers,
and declares the queues with QUEUE_TYPE (classic or quorum), as the services do.

ROLE is `features` (exits after N confirmed events), `model`, `metric` (run until killed) or `plot`
(exits after N distinct events, writing arrival times to --stats).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

import pika

from mlmonitor.settings import queue_type_from_environment
from mlmonitor.tls import connection_candidates
from mlmonitor.topology import (FEATURES, INPUTS_EXCHANGE, METRIC_ADDED, METRIC_EVENTS_EXCHANGE,
                                MODEL_PREDICTIONS_EXCHANGE, PIPELINE, Y_PRED, Y_TRUE, declare)

PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")
PREFETCH = {FEATURES: 500, Y_TRUE: 1000, Y_PRED: 1000, METRIC_ADDED: 5000}  # as the services' defaults
MAX_UNCONFIRMED_EVENTS = 2000  # as features' default
MODEL_VERSION = "2cc7fe18d5bd"


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class OrderedAcks:
    """Acks the finished prefix of a channel's deliveries with one multiple=True ack per loop turn."""

    def __init__(self, node: Node, channel):
        self._node = node
        self._channel = channel
        self._outstanding: dict[int, bool] = {}
        self._scheduled = False

    def received(self, tag: int) -> None:
        self._outstanding[tag] = False

    def done(self, tag: int) -> None:
        self._outstanding[tag] = True
        if not self._scheduled:
            self._scheduled = True
            self._node.connection.ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        last = None
        for tag, finished in self._outstanding.items():
            if not finished:
                break
            last = tag
        if last is None:
            return
        while self._outstanding and next(iter(self._outstanding)) <= last:
            del self._outstanding[next(iter(self._outstanding))]
        self._channel.basic_ack(last, multiple=True)


class Node:
    """One connection: a confirmed publishing channel plus a consuming channel per input queue."""

    inputs: tuple[str, ...] = ()

    def __init__(self, parameters: pika.URLParameters):
        self.connection = pika.SelectConnection(parameters, on_open_callback=self._on_open,
                                                on_close_callback=lambda *_: self.connection.ioloop.stop())
        self.publisher = None
        self._sequence = 0
        self._pending: dict[int, object] = {}

    def run(self) -> None:
        self.connection.ioloop.start()

    def stop(self) -> None:
        self.connection.close()

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_publish_channel)

    def _on_publish_channel(self, channel) -> None:
        self.publisher = channel
        channel.confirm_delivery(self._on_confirm)
        for queue in self.inputs:
            self.connection.channel(on_open_callback=lambda ch, queue=queue: self._consume(ch, queue))
        self.started()

    def _consume(self, channel, queue: str) -> None:
        acks = OrderedAcks(self, channel)

        def on_message(_channel, method, _properties, body):
            acks.received(method.delivery_tag)
            self.handle(queue, body, lambda: acks.done(method.delivery_tag))

        channel.basic_qos(prefetch_count=PREFETCH[queue],
                          callback=lambda _frame: channel.basic_consume(queue, on_message))

    def publish(self, exchange: str, routing_key: str, body: bytes, on_confirmed) -> None:
        self.publisher.basic_publish(exchange, routing_key, body, PERSISTENT, mandatory=True)
        self._sequence += 1
        self._pending[self._sequence] = on_confirmed

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if method.multiple:
            tags = [tag for tag in self._pending if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            callback = self._pending.pop(tag)
            if isinstance(method, pika.spec.Basic.Nack):
                raise RuntimeError("the broker refused a message")
            callback()

    def started(self) -> None:
        pass

    def handle(self, queue: str, body: bytes, ack) -> None:
        raise NotImplementedError


class Features(Node):
    def __init__(self, parameters: pika.URLParameters, count: int, rate: float):
        super().__init__(parameters)
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        self._samples = [(row.tolist(), float(target)) for row, target in zip(data.data, data.target)]
        self._count, self._rate = count, rate
        self._created = self._confirmed = self._in_flight = 0
        self._next_due = time.monotonic()
        self._scheduled = False

    def started(self) -> None:
        self._pump()

    def _pump(self) -> None:
        self._scheduled = False
        now = time.monotonic()
        while self._created < self._count and self._in_flight < MAX_UNCONFIRMED_EVENTS:
            if self._rate and self._next_due > now:
                break
            self._publish_event()
            if self._rate:
                self._next_due = max(self._next_due + 1 / self._rate, now - 1.0)
        if self._created < self._count and self._in_flight < MAX_UNCONFIRMED_EVENTS:
            self._scheduled = True
            self.connection.ioloop.call_later(max(0.0, self._next_due - time.monotonic()) if self._rate else 0,
                                              self._pump)

    def _publish_event(self) -> None:
        features, target = self._samples[self._created % len(self._samples)]
        event_id, sent_at = str(uuid.uuid4()), time.time()
        self._created += 1
        self._in_flight += 1
        parts = [2]

        def part_confirmed():
            parts[0] -= 1
            if parts[0] == 0:
                self._in_flight -= 1
                self._confirmed += 1
                if self._confirmed == self._count:
                    self.stop()
                elif not self._scheduled:
                    self._pump()

        self.publish(INPUTS_EXCHANGE, FEATURES, dumps({"id": event_id, "body": features, "sent_at": sent_at}),
                     part_confirmed)
        self.publish(INPUTS_EXCHANGE, Y_TRUE, dumps({"id": event_id, "body": target, "sent_at": sent_at}),
                     part_confirmed)


class Model(Node):
    inputs = (FEATURES,)

    def handle(self, queue: str, body: bytes, ack) -> None:
        message = json.loads(body)
        prediction = 150.0 + 100.0 * sum(message["body"])  # a number of the same size as a real prediction
        self.publish(MODEL_PREDICTIONS_EXCHANGE, Y_PRED, dumps({
            "id": message["id"], "body": prediction, "model_version": MODEL_VERSION,
            "sent_at": message.get("sent_at")}), ack)


class Metric(Node):
    inputs = (Y_TRUE, Y_PRED)

    def __init__(self, parameters: pika.URLParameters):
        super().__init__(parameters)
        self._waiting: dict[str, dict[str, tuple[dict, object]]] = {Y_TRUE: {}, Y_PRED: {}}

    def handle(self, queue: str, body: bytes, ack) -> None:
        message = json.loads(body)
        partner_queue = Y_PRED if queue == Y_TRUE else Y_TRUE
        partner = self._waiting[partner_queue].pop(message["id"], None)
        if partner is None:
            self._waiting[queue][message["id"]] = (message, ack)
            return
        partner_message, partner_ack = partner
        y_true, y_pred = (message, partner_message) if queue == Y_TRUE else (partner_message, message)

        def acked():
            ack()
            partner_ack()

        self.publish(METRIC_EVENTS_EXCHANGE, METRIC_ADDED, dumps({
            "id": message["id"], "y_true": y_true["body"], "y_pred": y_pred["body"],
            "absolute_error": abs(y_true["body"] - y_pred["body"]), "model_version": y_pred.get("model_version"),
            "sent_at": y_true.get("sent_at")}), acked)


class Plot(Node):
    inputs = (METRIC_ADDED,)

    def __init__(self, parameters: pika.URLParameters, count: int, stats_path: str):
        super().__init__(parameters)
        self._count, self._stats_path = count, stats_path
        self._seen: set[str] = set()
        self.arrived_at: list[float] = []
        self.sent_at: list[float] = []

    def handle(self, queue: str, body: bytes, ack) -> None:
        message = json.loads(body)
        ack()
        if message["id"] in self._seen:
            return
        self._seen.add(message["id"])
        self.arrived_at.append(time.time())
        self.sent_at.append(message.get("sent_at"))
        if len(self._seen) == self._count:
            temporary = f"{self._stats_path}.tmp"
            with open(temporary, "w") as handle:
                json.dump({"arrived_at": self.arrived_at, "sent_at": self.sent_at}, handle)
            os.replace(temporary, self._stats_path)  # the bench waits for the file: never show it half written
            self.connection.ioloop.call_later(0.2, self.stop)  # let the last acks out


def declare_on_a_node(amqp_url: str) -> pika.URLParameters:
    """Declares the topology on the first node of AMQP_URL that answers, and returns that node's parameters."""
    candidates = connection_candidates(amqp_url)
    for position, parameters in enumerate(candidates, 1):
        try:
            connection = pika.BlockingConnection(parameters)
        except pika.exceptions.AMQPConnectionError:
            if position == len(candidates):
                raise
            continue
        declare(connection.channel(), PIPELINE, queue_type_from_environment())
        connection.close()
        return parameters
    raise AssertionError("connection_candidates returns at least one URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("features", "model", "metric", "plot"))
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--stats", default="bare_stats.json")
    args = parser.parse_args(argv)
    parameters = declare_on_a_node(args.amqp_url)
    node = {"features": lambda: Features(parameters, args.count, args.rate),
            "model": lambda: Model(parameters),
            "metric": lambda: Metric(parameters),
            "plot": lambda: Plot(parameters, args.count, args.stats)}[args.role]()
    node.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
