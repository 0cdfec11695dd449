"""Names of every queue and exchange, who uses which, and the declarations every service makes at connect.

Work queues are durable. Our own services publish into them through named exchanges, never the
default one: RabbitMQ's write permission on the default exchange is a write into every queue, so a
service whose broker user may write only to its own exchanges can't reach any other queue
(scripts/rabbitmq_users.py, docs/security.md). features publishes to the direct exchange `inputs`,
routing keys `features` and `y_true`; course producers may still publish straight to those queues
through the default exchange, as the course convention expects. Our model's predictions go through
the fanout exchange `model_predictions`, bound to `y_pred`; a model served elsewhere publishes to the
fanout exchange `predictions`, bound to `y_pred` and to drift's queue; a course producer may still
publish straight to the `y_pred` queue. Events go through the fanout exchange `metric_events`, so any
number of services can subscribe; plot's queue keeps the seed's name `metric_added`. The drift
monitor's copies of our model's predictions and of metric's events come in batches, many events a
message, through `prediction_batches` and `metric_batches`: the broker's cost is per message.
Each work queue has a dead-letter queue `<queue>.dlq` holding rejected messages with their reason,
reached through the topic exchange `dead_letters` with the DLQ's name as routing key: a topic
exchange, so that the broker can hold each service to the DLQs of its own queues (topic permissions).

The drift service declares its own part (DRIFT): its queues for the
predictions and the joined events, and the topic exchange `monitor_alerts` it announces alerts
on, with routing keys `<kind>.<state>` (e.g. `feature_drift.raised`), for notifiers to bind to.

Who declares: every service declares its whole topology at connect, so they start in any order.
A service whose broker user may not declare (least privilege: the broker's definitions hold the
layout) checks instead, passively, that everything is there, and waits until it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

FEATURES = "features"
Y_TRUE = "y_true"
Y_PRED = "y_pred"
INPUTS_EXCHANGE = "inputs"  # direct: features → the `features` and `y_true` queues, routing key = queue name
PREDICTIONS_EXCHANGE = "predictions"  # a model served elsewhere → y_pred, drift and any other bound queue
MODEL_PREDICTIONS_EXCHANGE = "model_predictions"  # our model's predictions, one a message → y_pred
# Batches for drift, many events a message (the broker's cost is per message): model's predictions with their
# inputs, and metric's joined pairs. Published unmandatory: no queue is bound until drift has started once.
PREDICTION_BATCHES_EXCHANGE = "prediction_batches"
METRIC_BATCHES_EXCHANGE = "metric_batches"
METRIC_EVENTS_EXCHANGE = "metric_events"
METRIC_ADDED = "metric_added"
DASHBOARD_EVENTS = "metric_added.dashboard"  # the dashboard's own queue on metric_events, declared by it alone
DASHBOARD_QUEUE_MAX_LENGTH = 10_000  # the dashboard's default QUEUE_MAX_LENGTH
# drift's queues, declared by it alone: a copy of every prediction (with its inputs) and of every joined pair
DRIFT_PREDICTIONS = "predictions.drift"  # on `predictions`: a model served elsewhere's, one a message
DRIFT_PREDICTION_BATCHES = "prediction_batches.drift"  # on `prediction_batches`: our model's
DRIFT_EVENTS = "metric_batches.drift"  # on `metric_batches`: every joined pair
DRIFT_QUEUES = (DRIFT_PREDICTIONS, DRIFT_PREDICTION_BATCHES, DRIFT_EVENTS)
RETIRED_DRIFT_QUEUES = ("metric_added.drift",)  # on metric_events, one event a message, before the batches
MONITOR_ALERTS_EXCHANGE = "monitor_alerts"  # topic: routing key <kind>.<state>
# Bound to monitor_alerts with "#" so that an alert is routable while no notifier listens (publishes are
# mandatory); it keeps the latest alerts for a look in the management UI. Notifiers bind queues of their own.
RECENT_ALERTS = "monitor_alerts.recent"
RECENT_ALERTS_KEPT = 1000
DEAD_LETTERS_EXCHANGE = "dead_letters"  # topic: routing key = the DLQ's name; declared with any queue that has one
DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ's permissions give the default exchange ""

REASON_HEADER = "x-rejection-reason"
SOURCE_QUEUE_HEADER = "x-source-queue"

# QUEUE_TYPE: classic (one node, as ever) or quorum (replicated over a cluster's nodes)
CLASSIC = "classic"
QUORUM = "quorum"
# Deliveries of one message a quorum work queue makes before the broker dead-letters it into its DLQ (x-death
# reason delivery_limit): a poison message that keeps killing its consumer. RabbitMQ 3.10 counts every return,
# a consumer's lost connection too, so this leaves room for the redeliveries of crashes and node failures.
DELIVERY_LIMIT = 20


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    bind_to: str | None = None  # exchange whose messages this queue receives
    dead_letters: bool = True
    arguments: tuple[tuple[str, object], ...] = ()  # x-arguments, e.g. (("x-max-length", 10000),)
    routing_key: str | None = None  # of the binding, for a direct or topic exchange (a fanout ignores it)
    also_bound_to: tuple[str, ...] = ()  # more exchanges, bound with the same routing key

    @property
    def dlq(self) -> str:
        return dead_letter_queue(self.name)

    @property
    def binding_key(self) -> str:
        """The binding's routing key: the given one, else the queue's name (as pika binds by default)."""
        return self.routing_key if self.routing_key is not None else self.name


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[str, ...]  # fanout
    queues: tuple[QueueSpec, ...]
    topic_exchanges: tuple[str, ...] = ()
    direct_exchanges: tuple[str, ...] = ()

    def with_queue(self, queue: QueueSpec) -> Topology:
        return replace(self, queues=self.queues + (queue,))

    def merged(self, other: Topology) -> Topology:
        """Both layouts in one, each exchange and queue once (the first spec of a name wins)."""
        names = {queue.name for queue in self.queues}
        return Topology(
            exchanges=_distinct(self.exchanges + other.exchanges),
            queues=self.queues + tuple(queue for queue in other.queues if queue.name not in names),
            topic_exchanges=_distinct(self.topic_exchanges + other.topic_exchanges),
            direct_exchanges=_distinct(self.direct_exchanges + other.direct_exchanges))

    @property
    def has_dead_letters(self) -> bool:
        return any(queue.dead_letters for queue in self.queues)

    def exchange_types(self) -> dict[str, str]:
        """{exchange: type} of every exchange declared, the dead-letter exchange included when a queue needs it."""
        types = {name: "fanout" for name in self.exchanges}
        types.update((name, "direct") for name in self.direct_exchanges)
        types.update((name, "topic") for name in self.topic_exchanges)
        if self.has_dead_letters:
            types[DEAD_LETTERS_EXCHANGE] = "topic"
        return types

    def queue_names(self) -> list[str]:
        """Every queue declared, DLQs included, each after its work queue."""
        return [name for queue in self.queues for name in ((queue.name, queue.dlq) if queue.dead_letters
                                                           else (queue.name,))]

    def bindings(self) -> list[tuple[str, str, str]]:
        """(exchange, queue, routing key) of every binding: the queues' own and each DLQ's to dead_letters."""
        bindings = []
        for queue in self.queues:
            for exchange in (queue.bind_to, *queue.also_bound_to) if queue.bind_to else ():
                bindings.append((exchange, queue.name, queue.binding_key))
            if queue.dead_letters:
                bindings.append((DEAD_LETTERS_EXCHANGE, queue.dlq, queue.dlq))
        return bindings

    def arguments_of(self, queue_name: str, queue_type: str = CLASSIC) -> dict | None:
        """The x-arguments of a queue (a work queue or a DLQ) of this layout, for QUEUE_TYPE `queue_type`."""
        spec = next((queue for queue in self.queues if queue.name == queue_name), None)
        arguments = dict(spec.arguments) if spec is not None else {}
        if queue_type == QUORUM:
            arguments.update(quorum_arguments(spec))
        return arguments or None


def quorum_arguments(spec: QueueSpec | None) -> dict:
    """A quorum queue's own x-arguments; `spec` None for a DLQ, which only the operator reads.

    A work queue gets the delivery limit and at-least-once dead-lettering into its DLQ: the broker keeps a
    poison message until the DLQ has confirmed it, which needs x-overflow reject-publish (the queues have
    no length limit, so it never rejects). A bounded drop-head queue (the dashboard's, monitor_alerts.recent)
    can't have that: reject-publish would refuse metric's and drift's publishes while its reader is away,
    and dead-lettering what drop-head drops would flood the DLQ. It keeps drop-head and the delivery limit
    without a dead-letter exchange, so the broker drops a poison message: these queues hold copies, the
    record stays in logs/metric_log.csv and logs/alerts.jsonl."""
    arguments: dict = {"x-queue-type": QUORUM}
    if spec is None:
        return arguments
    arguments["x-delivery-limit"] = DELIVERY_LIMIT
    if spec.dead_letters and dict(spec.arguments).get("x-overflow") != "drop-head":
        arguments.update({"x-dead-letter-exchange": DEAD_LETTERS_EXCHANGE, "x-dead-letter-routing-key": spec.dlq,
                          "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return arguments


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


PIPELINE = Topology(
    exchanges=(PREDICTIONS_EXCHANGE, MODEL_PREDICTIONS_EXCHANGE, METRIC_EVENTS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE,
               METRIC_BATCHES_EXCHANGE),
    queues=(
        QueueSpec(FEATURES, bind_to=INPUTS_EXCHANGE),
        QueueSpec(Y_TRUE, bind_to=INPUTS_EXCHANGE),
        QueueSpec(Y_PRED, bind_to=PREDICTIONS_EXCHANGE, also_bound_to=(MODEL_PREDICTIONS_EXCHANGE,)),
        QueueSpec(METRIC_ADDED, bind_to=METRIC_EVENTS_EXCHANGE),
    ),
    direct_exchanges=(INPUTS_EXCHANGE,),
)


def dashboard_events_queue(max_length: int = DASHBOARD_QUEUE_MAX_LENGTH) -> QueueSpec:
    """The dashboard's queue: bounded, the oldest events dropped (they are in the CSV)."""
    return QueueSpec(DASHBOARD_EVENTS, bind_to=METRIC_EVENTS_EXCHANGE,
                     arguments=(("x-max-length", max_length), ("x-overflow", "drop-head")))


DASHBOARD = PIPELINE.with_queue(dashboard_events_queue())


DRIFT = replace(
    PIPELINE,
    queues=PIPELINE.queues + (
        QueueSpec(DRIFT_PREDICTIONS, bind_to=PREDICTIONS_EXCHANGE),
        QueueSpec(DRIFT_PREDICTION_BATCHES, bind_to=PREDICTION_BATCHES_EXCHANGE),
        QueueSpec(DRIFT_EVENTS, bind_to=METRIC_BATCHES_EXCHANGE),
        QueueSpec(RECENT_ALERTS, bind_to=MONITOR_ALERTS_EXCHANGE, dead_letters=False, routing_key="#",
                  arguments=(("x-max-length", RECENT_ALERTS_KEPT), ("x-overflow", "drop-head"))),
    ),
    topic_exchanges=PIPELINE.topic_exchanges + (MONITOR_ALERTS_EXCHANGE,),
)


METRIC_PARTITIONS_EXCHANGE = "metric_partitions"  # direct: metric's routers → the partition queues, key = queue name


def partition_queue(queue: str, partition: int, partitions: int) -> str:
    """A partition's own copy of `y_true` or `y_pred`, e.g. `y_true.partition-0-of-2`: K is in the name, so
    metrics started with different K never share a queue."""
    return f"{queue}.partition-{partition}-of-{partitions}"


def metric_topology(partitions: int) -> Topology:
    """What metric declares: the pipeline and, with K > 1, every partition's two queues (with their DLQs) on
    the metric_partitions exchange, so that a router can reach each partition before its joiner runs."""
    if partitions == 1:
        return PIPELINE
    queues = tuple(QueueSpec(partition_queue(queue, partition, partitions), bind_to=METRIC_PARTITIONS_EXCHANGE)
                   for partition in range(partitions) for queue in (Y_TRUE, Y_PRED))
    return replace(PIPELINE, queues=PIPELINE.queues + queues,
                   direct_exchanges=PIPELINE.direct_exchanges + (METRIC_PARTITIONS_EXCHANGE,))


@dataclass(frozen=True)
class Access:
    """What a service does on the broker, from which its user's permissions follow (scripts/rabbitmq_users.py):
    the queues it consumes (and dead-letters into their DLQs) and the exchanges it publishes to.
    Passive declares (checking that something exists, reading a queue's depth) need no permission."""

    consumes: tuple[str, ...] = ()
    publishes_to: tuple[str, ...] = ()
    topology: Topology = PIPELINE  # the layout the service declares, which must exist for it to run


SERVICE_ACCESS = {
    "features": Access(publishes_to=(INPUTS_EXCHANGE,)),
    "model": Access(consumes=(FEATURES,), publishes_to=(MODEL_PREDICTIONS_EXCHANGE, PREDICTION_BATCHES_EXCHANGE)),
    "metric": Access(consumes=(Y_TRUE, Y_PRED), publishes_to=(METRIC_EVENTS_EXCHANGE, METRIC_BATCHES_EXCHANGE)),
    "plot": Access(consumes=(METRIC_ADDED,)),
    "dashboard": Access(consumes=(DASHBOARD_EVENTS,), topology=DASHBOARD),
    "drift": Access(consumes=DRIFT_QUEUES, publishes_to=(MONITOR_ALERTS_EXCHANGE,),
                    topology=DRIFT),
}


def declare(channel, topology: Topology = PIPELINE, queue_type: str = CLASSIC) -> None:
    """Declares everything on a pika BlockingChannel. Idempotent, so every service does it at connect.
    A queue that exists with other arguments (another QUEUE_TYPE) closes the channel with 406
    PRECONDITION_FAILED (pika's ChannelClosedByBroker)."""
    for exchange, kind in topology.exchange_types().items():
        channel.exchange_declare(exchange, exchange_type=kind, durable=True)
    for queue in topology.queue_names():
        channel.queue_declare(queue, durable=True, arguments=topology.arguments_of(queue, queue_type))
    for exchange, queue, routing_key in topology.bindings():
        channel.queue_bind(queue, exchange, routing_key=routing_key)


def check_declared(channel, topology: Topology = PIPELINE) -> None:
    """Checks, with passive declares (which need no permission), that every exchange and queue of the
    topology exists; a missing one closes the channel with 404 NOT_FOUND (pika's ChannelClosedByBroker).
    Bindings and queue types can't be checked this way: whoever declared the queues chose them."""
    for exchange in topology.exchange_types():
        channel.exchange_declare(exchange, passive=True)
    for queue in topology.queue_names():
        channel.queue_declare(queue, passive=True)
