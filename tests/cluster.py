"""The local three-node RabbitMQ cluster (scripts/rabbitmq_cluster.sh) for the tests that need one. `up` is
idempotent and the nodes outlive the test run, so only the first run pays for their start."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rabbitmq_cluster.sh"


@dataclass(frozen=True)
class Node:
    number: int  # 1-3, as `rabbitmq_cluster.sh ctl N` takes it
    name: str
    port: int
    pid: int | None  # None: down


def cluster_up(timeout: float = 300) -> list[str]:
    """Starts whatever node is down; the nodes' base URLs (vhost /), from the script's last line."""
    done = subprocess.run([str(SCRIPT), "up"], check=True, capture_output=True, text=True, timeout=timeout)
    return done.stdout.strip().splitlines()[-1].split(",")


def nodes() -> list[Node]:
    listing = subprocess.run([str(SCRIPT), "status"], check=True, capture_output=True, text=True, timeout=30).stdout
    found = []
    for number, line in enumerate(listing.splitlines(), 1):
        name, port, pid = line.split()
        found.append(Node(number, name, int(port), None if pid == "down" else int(pid)))
    return found


def cluster_ctl(node: int, *args: str, input: str | None = None, timeout: float = 60) -> str:
    """rabbitmqctl ARGS against node `node`, with the cluster's cookie."""
    return subprocess.run([str(SCRIPT), "ctl", str(node), "-q", *args], input=input, check=True, capture_output=True,
                          text=True, timeout=timeout).stdout


def create_cluster_vhost(name: str) -> None:
    definitions = {"vhosts": [{"name": name}],
                   "permissions": [{"user": "guest", "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}]}
    cluster_ctl(1, "import_definitions", "--format", "json", input=json.dumps(definitions))


def delete_cluster_vhost(name: str) -> subprocess.Popen:
    """In the background: every rabbitmqctl call boots an Erlang VM."""
    return subprocess.Popen([str(SCRIPT), "ctl", "1", "-q", "delete_vhost", name], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def url_for(base_url: str, vhost: str) -> str:
    return base_url.rstrip("/") + "/" + quote(vhost, safe="")


def cluster_url_for(base_urls: list[str], vhost: str) -> str:
    """AMQP_URL naming every node, on `vhost`."""
    return ",".join(url_for(url, vhost) for url in base_urls)


def queue_types(vhost: str) -> dict[str, str]:
    listing = cluster_ctl(1, "list_queues", "-p", vhost, "--no-table-headers", "name", "type")
    return dict(line.split() for line in listing.splitlines() if line.strip())
