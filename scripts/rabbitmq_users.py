r"""Gives every service a RabbitMQ user of its own, allowed only what the service does on the broker.

    .venv/bin/python scripts/rabbitmq_users.py --vhost VHOST [--host localhost] [--port 5672] [--tls] \
        [--secrets-dir secrets] [--rotate] [--services features,model,metric,plot,dashboard,drift] \
        [--queue-type classic|quorum]

Run with admin rights on the broker: it imports, in one `rabbitmqctl import_definitions` call, the
vhost, one user `mlmonitor-<service>` per service (learn_model needs none) plus `mlmonitor-producer`
(for course-format producers) and `mlmonitor-operator` (scripts/dead_letters.py, the management UI),
their permissions on VHOST, and the topology the services use (mlmonitor.topology). Then it writes
`secrets/<name>.amqp_url` (mode 0600; secrets/ is git-ignored), the full AMQP URL of each user, for
AMQP_URL_FILE. Every password is random (secrets.token_urlsafe); running it again keeps the
passwords the files hold, unless `--rotate`: then every user gets a new one, and each service needs
a restart with its new file (its connections stay up until then).

Users are global to the broker, permissions are per vhost: two deployments on one broker need
their own `--user-prefix` and `--secrets-dir`. `--rabbitmqctl` names the command, e.g.
"docker compose exec -T rabbitmq rabbitmqctl" to apply new passwords to a running compose broker.

Docker Compose (no broker needed; `docker compose up` loads the result at the broker's start):

    .venv/bin/python scripts/rabbitmq_users.py --vhost / --host rabbitmq \
        --definitions secrets/rabbitmq_users.json

writes the users' definitions (password hashes, never a password) instead of importing them; the
topology comes from the committed rabbitmq/definitions.json, which `--topology PATH` writes again
from mlmonitor.topology. `--queue-type quorum` declares quorum queues (QUEUE_TYPE, docs/scaling.md), as
rabbitmq/definitions.cluster.json does for docker-compose.cluster.yml. The users' file is mode 0644 in
the 0700 secrets/: the broker's container runs as its own uid and Compose mounts files with their host
permissions, and a salted hash of a 256-bit random password gives nothing away.

Permissions (docs/security.md has the table): no user may configure (declare, bind or delete)
anything; the topology is the broker's definitions. A service reads only the queues it consumes
and writes only the exchanges it publishes to, plus `dead_letters` with routing keys restricted
(topic permissions) to the DLQs of its own queues. Only `mlmonitor-producer` and
`mlmonitor-operator` may write to the default exchange, which reaches every queue.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "common" / "src"))  # mlmonitor, also when run without the venv's editable install

from mlmonitor.topology import (CLASSIC, DEAD_LETTERS_EXCHANGE, DEFAULT_EXCHANGE,  # noqa: E402
                                METRIC_PARTITIONS_EXCHANGE, PIPELINE, QUORUM, SERVICE_ACCESS, Access, Topology,
                                metric_topology)

DEFAULT_PREFIX = "mlmonitor-"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"  # RabbitMQ's default
NOTHING = "^$"  # matches no resource: the default exchange is checked as "amq.default", never ""
URL_SUFFIX = ".amqp_url"


@dataclass(frozen=True)
class Grant:
    """One user's permissions on the vhost, as RabbitMQ's regexes, and its topic permissions on dead_letters."""

    name: str  # the service (or client) it is for: the user is <prefix><name>, its file <name>.amqp_url
    configure: str = NOTHING
    write: str = NOTHING
    read: str = NOTHING
    dead_letters_write: str | None = None  # routing keys it may publish to dead_letters with; None: no restriction
    tags: tuple[str, ...] = ()


def exactly(names) -> str:
    """A permission regex matching these names and nothing else."""
    names = sorted(set(names))
    return "^(" + "|".join(re.escape(name) for name in names) + ")$" if names else NOTHING


def dead_letter_queues_of(queues, topology: Topology) -> list[str]:
    return [spec.dlq for spec in topology.queues if spec.name in queues and spec.dead_letters]


def service_grant(service: str, access: Access, topology: Topology) -> Grant:
    dlqs = dead_letter_queues_of(access.consumes, topology)
    writes = access.publishes_to + ((DEAD_LETTERS_EXCHANGE,) if dlqs else ())
    return Grant(service, write=exactly(writes), read=exactly(access.consumes),
                 dead_letters_write=exactly(dlqs))


def client_grants(topology: Topology) -> list[Grant]:
    """Users that aren't services: course-format producers, who publish to `features` and `y_true` through
    the default exchange (and so may publish into any queue: give these credentials only to producers),
    and the operator, who reads the DLQs and replays dead letters through the default exchange."""
    all_dlqs = [spec.dlq for spec in topology.queues if spec.dead_letters]
    return [Grant("producer", write=exactly([DEFAULT_EXCHANGE])),
            Grant("operator", write=exactly([DEFAULT_EXCHANGE]), read=exactly(all_dlqs), tags=("management",))]


def service_access(service: str, metric_partitions: int = 1) -> Access:
    """SERVICE_ACCESS[service]; for metric with K partitions, also the partition queues it consumes and the
    exchange its routers publish them to (mlmonitor.topology.metric_topology)."""
    access = SERVICE_ACCESS[service]
    if service != "metric" or metric_partitions == 1:
        return access
    layout = metric_topology(metric_partitions)
    partition_queues = tuple(spec.name for spec in layout.queues if spec.bind_to == METRIC_PARTITIONS_EXCHANGE)
    return replace(access, consumes=access.consumes + partition_queues,
                   publishes_to=access.publishes_to + (METRIC_PARTITIONS_EXCHANGE,), topology=layout)


def deployed_topology(services: list[str], metric_partitions: int = 1) -> Topology:
    """The layout the given services use: the pipeline, plus the dashboard's and drift's queues if they run,
    and metric's partition queues with K > 1."""
    return reduce(Topology.merged, (service_access(service, metric_partitions).topology for service in services),
                  PIPELINE)


def grants(services: list[str], metric_partitions: int = 1) -> list[Grant]:
    topology = deployed_topology(services, metric_partitions)
    return [service_grant(service, service_access(service, metric_partitions), topology)
            for service in services] + client_grants(topology)


# --------------------------------------------------------------------------- passwords and files


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), 4 random salt bytes."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def new_password() -> str:
    return secrets.token_urlsafe(32)


def secret_file(secrets_dir: Path, name: str) -> Path:
    return secrets_dir / f"{name}{URL_SUFFIX}"


def password_in(path: Path) -> str | None:
    """The password of the AMQP URL in `path`; None if there is no such file or no password in it."""
    try:
        url = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    password = urlsplit(url).password
    return unquote(password) if password else None


def amqp_url(user: str, password: str, host: str, port: int, vhost: str, tls: bool) -> str:
    """The user's AMQP URL; `host` may list a cluster's nodes, comma-separated: then one URL per node, likewise."""
    scheme = "amqps" if tls else "amqp"
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return ",".join(f"{scheme}://{credentials}@{node}:{port}/{quote(vhost, safe='')}" for node in host.split(","))


def write_file(path: Path, text: str, mode: int) -> None:
    """Replaces `path` whole with `text`, created with `mode` from the start (never readable by others
    in between), synced before the rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # the umask may have taken bits off
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def choose_passwords(names: list[str], secrets_dir: Path, rotate: bool) -> dict[str, tuple[str, str]]:
    """{name: (password, what happened)}: the password in its file unless `rotate` or there is none."""
    chosen = {}
    for name in names:
        kept = None if rotate else password_in(secret_file(secrets_dir, name))
        if kept is not None:
            chosen[name] = (kept, "kept")
        else:
            chosen[name] = (new_password(), "rotated" if rotate else "created")
    return chosen


# --------------------------------------------------------------------------- definitions


def users_definitions(user_grants: list[Grant], passwords: dict[str, str], vhost: str, prefix: str) -> dict:
    """The vhost, the users with their password hashes, their permissions and topic permissions."""
    return {
        "vhosts": [{"name": vhost}],
        "users": [{"name": prefix + grant.name, "password_hash": password_hash(passwords[grant.name]),
                   "hashing_algorithm": HASHING_ALGORITHM, "tags": list(grant.tags)} for grant in user_grants],
        "permissions": [{"user": prefix + grant.name, "vhost": vhost, "configure": grant.configure,
                         "write": grant.write, "read": grant.read} for grant in user_grants],
        "topic_permissions": [{"user": prefix + grant.name, "vhost": vhost, "exchange": DEAD_LETTERS_EXCHANGE,
                               "write": grant.dead_letters_write, "read": NOTHING}
                              for grant in user_grants if grant.dead_letters_write is not None],
    }


def topology_definitions(topology: Topology, vhost: str, queue_type: str = CLASSIC) -> dict:
    """The vhost, exchanges, queues and bindings, all durable, as mlmonitor.topology.declare makes them
    with QUEUE_TYPE `queue_type`."""
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [{"name": name, "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}} for name, kind in topology.exchange_types().items()],
        "queues": [{"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
                    "arguments": topology.arguments_of(name, queue_type) or {}} for name in topology.queue_names()],
        "bindings": [{"source": exchange, "vhost": vhost, "destination": queue, "destination_type": "queue",
                      "routing_key": routing_key, "arguments": {}}
                     for exchange, queue, routing_key in topology.bindings()],
    }


def as_json(definitions: dict) -> str:
    return json.dumps(definitions, indent=2) + "\n"


def import_definitions(rabbitmqctl: str, definitions: dict) -> None:
    """One rabbitmqctl call, the definitions on stdin (the broker may run as a user that can't read our files)."""
    command = [*shlex.split(rabbitmqctl), "-q", "import_definitions", "--format", "json"]
    subprocess.run(command, input=json.dumps(definitions), text=True, check=True, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vhost", required=True, help="the vhost the services use ('/' for the default one)")
    parser.add_argument("--host", default="localhost", help="the broker's host name in the URLs (default localhost); "
                                                            "a cluster's nodes comma-separated, e.g. "
                                                            "rabbitmq-1,rabbitmq-2,rabbitmq-3")
    parser.add_argument("--port", type=int, help="the broker's port in the URLs (default 5672, 5671 with --tls)")
    parser.add_argument("--tls", action="store_true", help="amqps:// URLs")
    parser.add_argument("--secrets-dir", type=Path, default=ROOT / "secrets", help="where the URL files go")
    parser.add_argument("--rotate", action="store_true", help="new passwords for every user")
    parser.add_argument("--services", default=",".join(SERVICE_ACCESS),
                        help="comma-separated services to create users for; the topology follows "
                             "(the dashboard's and drift's queues only when they run)")
    parser.add_argument("--user-prefix", default=DEFAULT_PREFIX, help="of every user name (default mlmonitor-)")
    parser.add_argument("--rabbitmqctl", default="rabbitmqctl", help="the command that runs rabbitmqctl")
    parser.add_argument("--definitions", type=Path, metavar="PATH",
                        help="write the users' definitions there (for the broker to load at start) instead of "
                             "importing them")
    parser.add_argument("--topology", type=Path, metavar="PATH",
                        help="only write the topology's definitions for VHOST there (rabbitmq/definitions.json)")
    parser.add_argument("--metric-partitions", type=int, default=1, metavar="K",
                        help="metric's METRIC_PARTITIONS: with K > 1, the partition queues and their grants too")
    parser.add_argument("--queue-type", choices=(CLASSIC, QUORUM), default=CLASSIC,
                        help="the queues' type, as the services' QUEUE_TYPE (default classic; quorum on a cluster)")
    args = parser.parse_args(argv)
    args.services = [name.strip() for name in args.services.split(",") if name.strip()]
    unknown = sorted(set(args.services) - set(SERVICE_ACCESS))
    if unknown:
        parser.error(f"--services: unknown {', '.join(unknown)}; known: {', '.join(SERVICE_ACCESS)}")
    if args.metric_partitions < 1:
        parser.error("--metric-partitions takes a number >= 1")
    if args.port is None:
        args.port = 5671 if args.tls else 5672
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    topology = deployed_topology(args.services, args.metric_partitions)
    if args.topology:
        write_file(args.topology, as_json(topology_definitions(topology, args.vhost, args.queue_type)), 0o644)
        print(f"rabbitmq_users: wrote the topology for vhost {args.vhost!r} to {args.topology}", flush=True)
        return 0
    user_grants = grants(args.services, args.metric_partitions)
    ensure_private_dir(args.secrets_dir)
    chosen = choose_passwords([grant.name for grant in user_grants], args.secrets_dir, args.rotate)
    passwords = {name: password for name, (password, _) in chosen.items()}
    users = users_definitions(user_grants, passwords, args.vhost, args.user_prefix)
    if args.definitions:
        write_file(args.definitions, as_json(users), 0o644)
    else:
        try:
            layout = topology_definitions(topology, args.vhost, args.queue_type)
            import_definitions(args.rabbitmqctl, {**users, **layout})
        except (OSError, subprocess.SubprocessError) as error:
            problem = getattr(error, "stderr", None) or str(error)
            print(f"rabbitmq_users: importing the definitions failed: {' '.join(problem.split())}", file=sys.stderr)
            return 1
    for grant in user_grants:
        user = args.user_prefix + grant.name
        path = secret_file(args.secrets_dir, grant.name)
        write_file(path, amqp_url(user, passwords[grant.name], args.host, args.port, args.vhost, args.tls) + "\n",
                   0o600)
        print(f"rabbitmq_users: {user}: password {chosen[grant.name][1]}; its URL is in {path}", flush=True)
    where = f"in {args.definitions}" if args.definitions else "imported"
    print(f"rabbitmq_users: {len(user_grants)} users for vhost {args.vhost!r} {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
