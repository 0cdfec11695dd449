"""The faults, one function each, and the two profiles: `quick` (CI, in `make test`) and `full` (`make faults`).

Each scenario injects its faults at random moments mid-stream (drawn from the suite's seed, as a
fraction of the events that have rows), heals them, and measures how long the pipeline took to
make progress again.
"""

from __future__ import annotations

import itertools
import signal
import time
from dataclasses import dataclass
from typing import Callable

from harness import CONSUMERS, SERVICES, Fault, ScenarioRun, established_to, wait_for

WATCH = {"features": "confirmed", "model": "rows", "metric": "rows", "plot": "plot", "drift": "drift"}
EVERYTHING = ("confirmed", "rows", "plot", "drift")


def watches(victims) -> tuple[str, ...]:
    return tuple(sorted({WATCH[victim] for victim in victims}))


def no_faults(run: ScenarioRun, repeats: int) -> None:
    pass


def kill(victim: str) -> Callable[[ScenarioRun, int], None]:
    def inject(run: ScenarioRun, repeats: int) -> None:
        for moment in run.random_moments(repeats):
            run.at_fraction(moment)
            run.kill(victim)
            healed = time.monotonic()
            run.start(victim)
            run.recovered(f"SIGKILL {victim}", healed, (victim,), watches([victim]))
    return inject


def kill_a_model_replica(run: ScenarioRun, repeats: int) -> None:
    """Two model processes share `features`; one of them, drawn each time, is SIGKILLed mid-stream and
    restarted. Its unacked features go to the other, which predicts them again: metric drops the
    second prediction of a pair, so nothing is lost or written twice."""
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        victim = run.rng.choice(run.model_processes)
        run.kill(victim)
        killed = time.monotonic()
        run.start(victim)
        # the other replica carries the stream meanwhile: progress counts from the kill, not the restart
        run.recovered(f"SIGKILL {victim} of {len(run.model_processes)} model processes", killed, (), ("rows",))
        if not wait_for(lambda: run.connected(victim), 120, f"{victim} back"):  # both up before the next kill
            run.result.problems.append(f"{victim} not connected again within 120s of its restart")
    for process in run.model_processes:  # competing consumers: each took a share of the stream
        if "predicted " not in run.output(process):
            run.result.problems.append(f"{process} predicted nothing: the replicas did not share features")


def cluster_node_killed(run: ScenarioRun, repeats: int) -> None:
    """On the suite's three-node cluster: a node's beam.smp SIGKILLed mid-stream, first the node leading
    `y_true` at that moment, then another; the services on it move to the others and every quorum queue
    keeps its majority. Recovery counts from the kill. The node is started again, and the next kill waits
    until it is back in `y_true`'s members (two down at once would take the majority)."""
    cluster = run.broker
    killed_before: list[int] = []
    # early moments, in a long stream: a restart took up to a minute on 2 busy cores, and the second kill must
    # still come while the stream flows
    for round_number, moment in enumerate(run.random_moments(repeats, 0.05, 0.3)):
        # asked before the moment: a rabbitmqctl call can take a minute under load, and a quorum queue's
        # leader only moves when its node fails, which nothing does in between
        leader = cluster.leader_of(run.vhost, "y_true")
        followers = [n for n in cluster.NODES if n != leader]
        node = leader if round_number % 2 == 0 else run.rng.choice(
            [n for n in followers if n not in killed_before] or followers)
        killed_before.append(node)
        role = "the leader" if node == leader else "a follower"
        run.at_fraction(moment)
        cluster.kill_node(node)
        killed = time.monotonic()
        run.journal(f"SIGKILLed the beam.smp of node {node}, {role} of y_true, at {run.rows()} rows")
        run.recovered(f"SIGKILL node {node} ({role} of y_true)", killed, run.services, EVERYTHING)
        listening = cluster.start_node(node) - killed
        run.journal(f"node {node} listens again {listening:.1f}s after its kill")
        if not wait_for(lambda: cluster.online_members(run.vhost, "y_true") == len(cluster.NODES), 120,
                        "y_true's members", interval=1):
            run.result.problems.append(f"node {node} not back among y_true's members within 120s")
        back = time.monotonic() - killed
        run.journal(f"node {node} back among y_true's members {back:.1f}s after its kill")
        run.result.notes.append(f"node {node} ({role} of y_true) listened again {listening:.0f}s and was back among "
                                f"y_true's members {back:.0f}s after its kill")


def cluster_node_stopped(run: ScenarioRun, repeats: int) -> None:
    """On the suite's cluster: `rabbitmqctl stop` on a node mid-stream, and it stays down to the end (the
    checks run on the two left). Recovery counts from the moment its AMQP port stopped answering."""
    cluster = run.broker
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        node = run.rng.choice(cluster.NODES)
        run.journal(f"rabbitmqctl stop node {node} at {run.rows()} rows")
        closed, stopping = cluster.stop_node(node)
        run.journal(f"node {node} no longer listens, at {run.rows()} rows")
        run.recovered(f"node {node} stopped for good", closed, run.services, EVERYTHING)
        if stopping.wait(180) != 0:
            run.result.problems.append(f"rabbitmqctl stop failed on node {node}: {stopping.stderr.read()[-300:]!r}")
        run.journal(f"node {node} stopped {time.monotonic() - closed:.1f}s after it stopped listening, for good")


TAKEOVER_SECONDS = 5  # issue 12: a standby takes over within 5 s


def kill_an_active_metric(run: ScenarioRun, repeats: int) -> None:
    """K = 2, each partition with a hot standby: the active metric of a partition (the holder of its
    shard's lock), drawn each time, is SIGKILLed mid-stream; its standby must take the lock and write
    the shard on. The fault's time is the takeover: from the kill to the first row in that shard, which
    only the standby can write. The killed process is started again and becomes the standby."""
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        partition = run.rng.randrange(run.metric_partitions)
        victim = run.active_metric(partition)
        if victim is None:
            run.result.problems.append(f"no metric held partition {partition}'s lock")
            continue
        shard = run.logs_dir / f"metric_log-{partition}.csv"
        if run.stream_done():  # the standby would have nothing left to write
            run.result.notes.append(f"the kill of {victim} would have come after the stream had ended; not made")
            continue
        run.kill(victim)
        killed = time.monotonic()
        rows_at_kill = run.rows(shard)
        fault = Fault(f"SIGKILL {victim}, the active of partition {partition}")
        run.result.faults.append(fault)
        if wait_for(lambda: run.rows(shard) > rows_at_kill, 60, "the standby's first row", interval=0.02):
            fault.recovery_seconds = time.monotonic() - killed
            run.journal(f"{fault.description}: the standby's first row {fault.recovery_seconds:.2f}s after the kill")
            if fault.recovery_seconds > TAKEOVER_SECONDS:
                run.result.notes.append(f"the takeover of partition {partition} took {fault.recovery_seconds:.1f}s, "
                                        f"over issue 12's {TAKEOVER_SECONDS}s")
        else:
            run.result.problems.append(f"no row in {shard.name} within 60s of {fault.description}")
        successor = run.active_metric(partition)
        if successor in (None, victim):
            run.result.problems.append(f"partition {partition}'s lock is held by {successor} after the kill")
        before_restart = len(run.output(victim))
        run.start(victim)
        if not wait_for(lambda: run.connected(victim), 120, f"{victim} back"):
            run.result.problems.append(f"{victim} not connected again within 120s of its restart")
        elif not wait_for(lambda: "standby for" in run.output(victim)[before_restart:], 60, f"{victim} on standby"):
            run.result.problems.append(f"{victim} did not say it is the standby after its restart")


def pairs_hitting_each(rng, services, count: int) -> list[tuple[str, str]]:
    """`count` random pairs of distinct services, drawn from shuffled rounds of all of them, so that
    every service is in one once there are enough pairs (2 * count >= len(services))."""
    pairs, order = [], []
    while len(pairs) < count:
        if len(order) < 2:
            order += rng.sample(services, len(services))
        first = order.pop(0)
        second = next(service for service in order if service != first)
        order.remove(second)
        pairs.append((first, second))
    return pairs


def kill_two_at_once(run: ScenarioRun, repeats: int) -> None:
    for moment, pair in zip(run.random_moments(repeats), pairs_hitting_each(run.rng, SERVICES, repeats)):
        run.at_fraction(moment)
        run.kill(*pair)
        healed = time.monotonic()
        for victim in pair:
            run.start(victim)
        run.recovered(f"SIGKILL {' + '.join(pair)}", healed, pair, watches(pair))


def broker_stop_app(run: ScenarioRun, repeats: int) -> None:
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        run.broker.stop_app()
        run.journal(f"rabbitmqctl stop_app done at {run.rows()} rows")
        wait_for(lambda: not any(run.connected(service) for service in CONSUMERS), 30, "services to notice")
        time.sleep(run.rng.uniform(0.5, 3.0))  # the outage itself; correctness waits on conditions
        healed = run.broker.start_app()
        run.recovered("rabbitmqctl stop_app / start_app", healed, SERVICES, EVERYTHING)


def broker_kill(run: ScenarioRun, repeats: int) -> None:
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        run.broker.kill()
        run.journal(f"SIGKILLed beam.smp of {run.broker.node} at {run.rows()} rows")
        healed = run.broker.start()
        run.recovered("SIGKILL beam.smp, start the node", healed, SERVICES, EVERYTHING)


def services_before_broker(run: ScenarioRun, repeats: int) -> None:
    # drift's queues as an earlier run left them: on a vhost that never had them, model could publish
    # before drift has declared them, and drift would miss those predictions (see docs/faults.md)
    run.declare_drift_queues()
    run.journal("rabbitmqctl stop: the node is down")
    run.broker.stop()
    run.start_all(wait_for_drift=False)
    for service in SERVICES:
        if not wait_for(lambda: "waiting for RabbitMQ" in run.output(service), 60, f"{service} to wait"):
            run.result.problems.append(f"{service} did not say it is waiting for RabbitMQ")
    healed = run.broker.start()
    run.recovered("services up 'waiting for RabbitMQ', then the node starts", healed, SERVICES, EVERYTHING)


def malformed(run: ScenarioRun, repeats: int) -> None:
    for round_number, moment in enumerate(run.random_moments(repeats)):
        run.at_fraction(moment)
        run.inject_malformed(round_number)


def consumer_hangs(run: ScenarioRun, repeats: int) -> None:
    """SIGSTOPs a consumer until the broker drops it for missed heartbeats (URL ?heartbeat=2), then SIGCONT."""
    victims = itertools.cycle(run.rng.sample(CONSUMERS, len(CONSUMERS)))
    for moment, victim in zip(run.random_moments(repeats), victims):
        run.at_fraction(moment)
        pid = run.process(victim).pid
        stopped = time.monotonic()
        run.signal([victim], signal.SIGSTOP)
        dropped = wait_for(lambda: established_to(pid, run.broker.port) == 0, 60, "the broker to drop it")
        hung = time.monotonic() - stopped
        run.signal([victim], signal.SIGCONT)
        if not dropped:
            run.result.problems.append(f"the broker kept {victim}'s connections for 60s without heartbeats")
        run.recovered(f"{victim} hung {hung:.0f}s (past 2 heartbeats)", time.monotonic(), (victim,),
                      watches([victim]))


def network_blip(run: ScenarioRun, repeats: int) -> None:
    """Resets one service's TCP connections at its proxy, refusing new ones for up to 2 s."""
    victims = itertools.cycle(run.rng.sample(SERVICES, len(SERVICES)))
    for moment, victim in zip(run.random_moments(repeats), victims):
        run.at_fraction(moment)
        down = run.rng.uniform(0.0, 2.0)
        cut = run.proxies[victim].cut(down)
        run.journal(f"cut {cut} connections of {victim} for {down:.1f}s at {run.rows()} rows")
        healed = time.monotonic() + down
        run.recovered(f"network cut under {victim} ({cut} connections, {down:.1f}s down)", healed, (victim,),
                      watches([victim]))


def closed_by_broker(run: ScenarioRun, repeats: int) -> None:
    """rabbitmqctl close_connection on one service's connections (found by their client ports)."""
    victims = itertools.cycle(run.rng.sample(SERVICES, len(SERVICES)))
    for moment, victim in zip(run.random_moments(repeats), victims):
        run.at_fraction(moment)
        connections = run.broker.connections_of(run.vhost, run.process(victim).pid)
        run.journal(f"close_connection {' '.join(connections)} of {victim} at {run.rows()} rows")
        run.broker.close_connections(connections)
        run.recovered(f"broker closed {victim}'s {len(connections)} connections", time.monotonic(), (victim,),
                      watches([victim]))


BACKLOG_SCENARIO_MAX = 300


def consumer_stopped_past_the_backlog(run: ScenarioRun, repeats: int) -> None:
    """SIGSTOPs model or metric until its queue holds --max-backlog messages, then checks for a few
    seconds that features holds back instead of publishing on, and SIGCONTs it."""
    victims = itertools.cycle(run.rng.sample(("model", "metric"), 2))
    queue_of = {"model": "features", "metric": "y_true"}
    bound = BACKLOG_SCENARIO_MAX + run.rate  # plus what features has in flight: at most a second's worth
    # early enough that the rest of the stream fills the victim's prefetch (500 or 1000) and the backlog
    for moment, victim in zip(run.random_moments(repeats, 0.1, 0.4), victims):
        run.at_fraction(moment)
        queue = queue_of[victim]
        pauses_before = run.output("features").count("paused ")
        run.signal([victim], signal.SIGSTOP)
        stopped = time.monotonic()
        if not wait_for(lambda: run.queue_depth(queue) >= BACKLOG_SCENARIO_MAX, 60, f"{queue} to fill"):
            run.result.problems.append(f"{queue} never reached --max-backlog {BACKLOG_SCENARIO_MAX} with {victim} stopped")
        confirmed_when_full = run.confirmed()
        held_until = time.monotonic() + run.rng.uniform(2.0, 4.0)
        deepest = 0
        while time.monotonic() < held_until:  # the outage itself; the check is on every poll within it
            deepest = max(deepest, run.queue_depth(queue))
            time.sleep(0.1)
        published_meanwhile = run.confirmed() - confirmed_when_full
        run.signal([victim], signal.SIGCONT)
        run.journal(f"{victim} stopped {time.monotonic() - stopped:.1f}s; {queue} at most {deepest}, "
                    f"{published_meanwhile} events confirmed while it was full")
        if deepest > bound or published_meanwhile > bound:
            run.result.problems.append(f"features did not hold back: {queue} reached {deepest}, "
                                       f"{published_meanwhile} events confirmed while it was full")
        run.recovered(f"{victim} stopped until {queue} held {BACKLOG_SCENARIO_MAX}", time.monotonic(), (victim,),
                      watches([victim, "features"]))
        if not wait_for(lambda: run.output("features").count("paused ") > pauses_before, 30, "features' pause line"):
            run.result.problems.append("features logged no pause")


DRIFT_SAVE_FAILED = "can't save the drift state"


def disk_full(run: ScenarioRun, repeats: int) -> None:
    """Fills the tmpfs under logs/ until metric and drift have each retried twice; checks that no row
    was written and no drift snapshot made meanwhile, that drift acked nothing (its queues never
    shrank), and that both said so clearly (one error line per retry, not one per batch); frees it."""
    for moment in run.random_moments(repeats):
        run.at_fraction(moment)
        seen = {service: len(run.output(service)) for service in ("metric", "drift")}
        filler = run.fill_disk()
        full_since = time.monotonic()
        run.journal(f"filled logs/ at {run.rows()} rows")

        def errors(service: str) -> list[str]:
            return [line for line in run.output(service)[seen[service]:].splitlines()
                    if "No space left on device" in line]

        def drift_retries() -> int:
            return sum(DRIFT_SAVE_FAILED in line for line in errors("drift"))

        for service in ("metric", "drift"):
            if not wait_for(lambda: errors(service), 60, f"{service} to report the full disk"):
                run.result.problems.append(f"{service} wrote no error about the full disk within 60s")
        rows_while_full = run.rows()
        snapshot_while_full = run.drift_snapshot()
        depths = [run.drift_queues()]  # an ack would make them shrink: nothing but the stream comes in
        retries_before = drift_retries()

        def retried() -> bool:  # twice more under watch, for drift
            depths.append(run.drift_queues())
            return len(errors("metric")) >= 3 and drift_retries() >= max(3, retries_before + 2)

        wait_for(retried, 30, "metric and drift to retry", interval=0.2)
        held = time.monotonic() - full_since
        run.journal(f"while full: drift's queues held {' → '.join(map(str, depths))} messages")
        if run.rows() != rows_while_full:
            run.result.problems.append("rows were written while the disk was full")
        if run.drift_snapshot() != snapshot_while_full:
            run.result.problems.append("drift made a snapshot while the disk was full")
        if any(later < earlier for earlier, later in zip(depths, depths[1:])):
            run.result.problems.append(f"drift's queues shrank while the disk was full (acks without a durable "
                                       f"snapshot): {depths}")
        lines = errors("metric")
        if lines and "can't write" not in lines[0]:
            run.result.problems.append(f"unclear disk error: {lines[0]}")
        for service, lines in (("metric", lines), ("drift", errors("drift"))):
            if len(lines) > held + 3:  # drift: plus one line for its summary file
                run.result.problems.append(f"{service} logged {len(lines)} disk errors in {held:.1f}s, "
                                           "not one per retry")
        if drift_retries() < 3:
            run.result.problems.append(f"drift said '{DRIFT_SAVE_FAILED}' {drift_retries()} times in {held:.0f}s, "
                                       "not once per retry")
        filler.unlink()
        run.journal(f"freed logs/ after {held:.1f}s")
        run.recovered(f"logs/ full for {held:.0f}s", time.monotonic(), ("metric", "plot", "drift"),
                      ("plot", "rows", "drift"))


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[ScenarioRun, int], None]
    repeats: int = 3
    quick_repeats: int = 0  # 0: not in the quick profile
    private_broker: bool = False
    url_query: str = ""
    proxied: bool = False
    logs_on_tmpfs: str | None = None
    starts_services: bool = False  # the scenario starts them itself
    events_scale: float = 1.0  # a longer stream, for faults that take long to inject (rabbitmqctl)
    max_backlog: int | None = None  # features' --max-backlog, when the scenario needs it low
    model_replicas: int = 1  # model processes sharing `features` (model, model-2, ...)
    cluster: bool = False  # on the suite's own three-node cluster, QUEUE_TYPE=quorum, every node in AMQP_URL
    metric_partitions: int = 1  # metric --partitions K
    metric_standby: bool = False  # a hot standby beside each metric


CLUSTER_DEPLOYMENT = {"cluster": True, "model_replicas": 2, "metric_partitions": 2, "metric_standby": True}

SCENARIOS = (
    Scenario("no faults", no_faults, repeats=0, quick_repeats=0),
    Scenario("SIGKILL features", kill("features")),
    Scenario("SIGKILL model", kill("model")),
    Scenario("SIGKILL a model replica", kill_a_model_replica, model_replicas=2, events_scale=2),  # room for restarts
    Scenario("SIGKILL metric", kill("metric")),
    Scenario("SIGKILL plot", kill("plot")),
    Scenario("SIGKILL drift", kill("drift"), quick_repeats=2),
    Scenario("SIGKILL two at once", kill_two_at_once, repeats=4, quick_repeats=3),
    Scenario("broker stop_app/start_app", broker_stop_app, repeats=2, private_broker=True, events_scale=2),
    Scenario("broker killed, restarted", broker_kill, repeats=2, quick_repeats=1, private_broker=True,
             events_scale=2),
    Scenario("services before broker", services_before_broker, repeats=1, private_broker=True,
             starts_services=True),
    Scenario("malformed into every queue", malformed, quick_repeats=1),
    Scenario("consumer hangs past heartbeat", consumer_hangs, repeats=4, quick_repeats=1, url_query="heartbeat=2"),
    Scenario("network blip (proxy cut)", network_blip, repeats=5, quick_repeats=2, proxied=True),
    Scenario("connection closed by broker", closed_by_broker, repeats=5, events_scale=2),
    Scenario("consumer stopped past the backlog", consumer_stopped_past_the_backlog, repeats=2, quick_repeats=1,
             max_backlog=BACKLOG_SCENARIO_MAX, events_scale=2.5),
    Scenario("logs/ disk full", disk_full, repeats=2, quick_repeats=1, logs_on_tmpfs="16m"),
    # issue 12's deployment: quorum queues on the suite's own three-node cluster, two model replicas, metric
    # as two partitions each with a hot standby
    Scenario("cluster: node SIGKILLed, restarted", cluster_node_killed, repeats=2, events_scale=6,
             **CLUSTER_DEPLOYMENT),
    Scenario("cluster: node stopped for good", cluster_node_stopped, repeats=1, events_scale=3, **CLUSTER_DEPLOYMENT),
    Scenario("cluster: SIGKILL an active metric", kill_an_active_metric, repeats=3, events_scale=3,
             **CLUSTER_DEPLOYMENT),
    Scenario("cluster: SIGKILL a model replica", kill_a_model_replica, repeats=3, events_scale=3,
             **CLUSTER_DEPLOYMENT),
)

PROFILES = {
    # name: (events, rate per second, scenarios with their repeats)
    "quick": (1200, 120, [(s, s.quick_repeats) for s in SCENARIOS if s.quick_repeats]),
    "full": (5000, 150, [(s, s.repeats) for s in SCENARIOS]),
}
