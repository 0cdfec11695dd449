"""Names of every queue and exchange, and the declarations every service makes at connect.

Work queues are durable and reached through the default exchange (routing key = queue name),
as the course convention expects. Predictions go through the fanout exchange `predictions`, bound
to `y_pred`, so a drift monitor can take a copy of each; a course producer may still publish
straight to the `y_pred` queue. Events go through the fanout exchange `metric_events`, so any
number of services can subscribe; plot's queue keeps the seed's name `metric_added`.
Each work queue has a dead-letter queue `<queue>.dlq` holding rejected messages with their reason.

The drift service declares its own part (DRIFT): its copies of the
predictions and of the joined events, and the topic exchange `monitor_alerts` it announces alerts
on, with routing keys `<kind>.<state>` (e.g. `feature_drift.raised`), for notifiers to bind to.
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURES = "features"
Y_TRUE = "y_true"
Y_PRED = "y_pred"
PREDICTIONS_EXCHANGE = "predictions"  # model (or a model served elsewhere) → y_pred and any other bound queue
METRIC_EVENTS_EXCHANGE = "metric_events"
METRIC_ADDED = "metric_added"
DASHBOARD_EVENTS = "metric_added.dashboard"  # the dashboard's own queue on metric_events, declared by it alone
DRIFT_PREDICTIONS = "predictions.drift"  # drift's copy of every prediction (with its inputs), declared by it alone
DRIFT_EVENTS = "metric_added.drift"  # drift's copy of every joined pair, declared by it alone
MONITOR_ALERTS_EXCHANGE = "monitor_alerts"  # topic: routing key <kind>.<state>
# Bound to monitor_alerts with "#" so that an alert is routable while no notifier listens (publishes are
# mandatory); it keeps the latest alerts for a look in the management UI. Notifiers bind queues of their own.
RECENT_ALERTS = "monitor_alerts.recent"
RECENT_ALERTS_KEPT = 1000

REASON_HEADER = "x-rejection-reason"
SOURCE_QUEUE_HEADER = "x-source-queue"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    bind_to: str | None = None  # exchange whose messages this queue receives
    dead_letters: bool = True
    arguments: tuple[tuple[str, object], ...] = ()  # x-arguments, e.g. (("x-max-length", 10000),)
    routing_key: str | None = None  # of the binding, for a topic exchange (a fanout ignores it)

    @property
    def dlq(self) -> str:
        return dead_letter_queue(self.name)


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[str, ...]  # fanout
    queues: tuple[QueueSpec, ...]
    topic_exchanges: tuple[str, ...] = ()

    def with_queue(self, queue: QueueSpec) -> Topology:
        return Topology(self.exchanges, self.queues + (queue,), self.topic_exchanges)


PIPELINE = Topology(
    exchanges=(PREDICTIONS_EXCHANGE, METRIC_EVENTS_EXCHANGE),
    queues=(
        QueueSpec(FEATURES),
        QueueSpec(Y_TRUE),
        QueueSpec(Y_PRED, bind_to=PREDICTIONS_EXCHANGE),
        QueueSpec(METRIC_ADDED, bind_to=METRIC_EVENTS_EXCHANGE),
    ),
)


DRIFT = Topology(
    exchanges=PIPELINE.exchanges,
    queues=PIPELINE.queues + (
        QueueSpec(DRIFT_PREDICTIONS, bind_to=PREDICTIONS_EXCHANGE),
        QueueSpec(DRIFT_EVENTS, bind_to=METRIC_EVENTS_EXCHANGE),
        QueueSpec(RECENT_ALERTS, bind_to=MONITOR_ALERTS_EXCHANGE, dead_letters=False, routing_key="#",
                  arguments=(("x-max-length", RECENT_ALERTS_KEPT), ("x-overflow", "drop-head"))),
    ),
    topic_exchanges=(MONITOR_ALERTS_EXCHANGE,),
)


def declare(channel, topology: Topology = PIPELINE) -> None:
    """Declares everything on a pika BlockingChannel. Idempotent, so every service does it at connect."""
    for exchange in topology.exchanges:
        channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
    for exchange in topology.topic_exchanges:
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue in topology.queues:
        channel.queue_declare(queue.name, durable=True, arguments=dict(queue.arguments) or None)
        if queue.dead_letters:
            channel.queue_declare(queue.dlq, durable=True)
        if queue.bind_to:
            channel.queue_bind(queue.name, queue.bind_to, routing_key=queue.routing_key)
