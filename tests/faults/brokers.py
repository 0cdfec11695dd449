"""The RabbitMQ nodes the fault suite talks to.

`SharedBroker` is the node at 127.0.0.1:5672 that everyone's tests use: the suite only adds and
deletes vhosts of its own there and closes connections in them. It has no way to stop the node.
`PrivateBroker` is a node of our own (own name, ports, cookie, data and log directories), the only
one the suite ever stops, restarts or kills. Given a `TlsListener`, it also takes amqps:// on a port
of its own (tests/integration/test_tls.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from broker import BROKER_HOST, BROKER_PORT
from mlmonitor.topology import DRIFT_QUEUES  # noqa: F401 (declared by drift alone, at its start)
from waiting import wait_until

WORK_QUEUES = ("features", "y_true", "y_pred", "metric_added")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def socket_inodes(pid: int) -> set[str]:
    """The inode numbers of the sockets process `pid` holds, as /proc/net/tcp names them."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process `pid` holds (works while it is SIGSTOPped too)."""
    inodes = socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Broker:
    """rabbitmqctl for one node: vhosts, queue depths, connections."""

    host = "127.0.0.1"

    def __init__(self, port: int, ctl: list[str], env: dict[str, str] | None = None):
        self.port = port
        self._ctl = ctl
        self._env = env

    @property
    def ports(self) -> tuple[int, ...]:
        """The AMQP ports of its nodes: a service's connections may go to any."""
        return (self.port,)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        return subprocess.run([*self._ctl, "-q", *args], check=True, capture_output=True, text=True, timeout=timeout,
                              env=self._env).stdout

    def url(self, vhost: str, query: str = "", port: int | None = None) -> str:
        return f"amqp://guest:guest@{self.host}:{port or self.port}/{vhost}{'?' + query if query else ''}"

    def add_vhost(self) -> str:
        vhost = f"faults-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        self.ctl("delete_vhost", vhost)

    def messages(self, vhost: str) -> dict[str, int]:
        """Ready plus unacked messages of every queue in `vhost`."""
        listing = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages")
        return {name: int(count) for name, count in (line.rsplit(None, 1) for line in listing.splitlines()
                                                      if line.strip())}

    def connections(self, vhost: str) -> list[tuple[str, int]]:
        """(connection pid, client port) of each connection to `vhost`."""
        listing = self.ctl("list_connections", "--no-table-headers", "vhost", "pid", "peer_port")
        return [(pid, int(port)) for name, pid, port in (line.split("\t") for line in listing.splitlines()
                                                         if line.strip()) if name == vhost]

    def connections_of(self, vhost: str, pid: int) -> list[str]:
        """The broker-side ids of the connections process `pid` holds to `vhost`."""
        ports = local_ports(pid)
        return [connection for connection, port in self.connections(vhost) if port in ports]

    def close_connections(self, connections: list[str], reason: str = "fault injection") -> None:
        for connection in connections:
            try:
                self.ctl("close_connection", connection, reason)
            except subprocess.CalledProcessError:
                pass  # already gone


class SharedBroker(Broker):
    def __init__(self):
        super().__init__(BROKER_PORT, ["rabbitmqctl"])
        self.host = BROKER_HOST


def rabbitmq_scripts() -> Path | None:
    """The real scripts, not Debian's /usr/sbin wrappers (they switch to the rabbitmq user and its cookie)."""
    for candidate in (Path("/usr/lib/rabbitmq/bin"), ):
        if (candidate / "rabbitmq-server").exists():
            return candidate
    found = shutil.which("rabbitmq-server")
    return Path(found).resolve().parent if found else None


@dataclass(frozen=True)
class TlsListener:
    """PEM files for a node's TLS listener; the node runs as we do, so it reads them where they are."""

    ca_file: Path  # the CA that client certificates must chain to
    cert_file: Path
    key_file: Path
    require_client_certificate: bool = True

    def config(self, port: int) -> str:
        """rabbitmq.conf lines: amqps on `port`; a client certificate is verified, and required unless told not to."""
        return (f"listeners.ssl.default = 127.0.0.1:{port}\n"
                f"ssl_options.cacertfile = {self.ca_file}\n"
                f"ssl_options.certfile = {self.cert_file}\n"
                f"ssl_options.keyfile = {self.key_file}\n"
                "ssl_options.verify = verify_peer\n"
                f"ssl_options.fail_if_no_peer_cert = {str(self.require_client_certificate).lower()}\n")


class PrivateBroker(Broker):
    """A RabbitMQ node of our own on free loopback ports, with its data in `directory`; with `tls`, it
    also listens for amqps:// on `tls_port`."""

    def __init__(self, directory: Path, tls: TlsListener | None = None):
        scripts = rabbitmq_scripts()
        if scripts is None:
            raise RuntimeError("rabbitmq-server is not installed here; can't run a private node")
        self.directory = directory
        self.node = f"faults-{uuid.uuid4().hex[:8]}@localhost"
        port, dist_port = free_port(), free_port()
        directory.mkdir(parents=True, exist_ok=True)
        cookie = directory / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        self.tls_port = free_port() if tls else None
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\n"
                                                 "disk_free_limit.absolute = 50MB\n"
                                                 + (tls.config(self.tls_port) if tls else ""))
        env = {**os.environ, "HOME": str(directory), "RABBITMQ_NODENAME": self.node,
               "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
               "RABBITMQ_DIST_PORT": str(dist_port), "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
               "RABBITMQ_LOG_BASE": str(directory / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
               "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
               "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
               "RABBITMQ_PID_FILE": str(directory / "beam.pid"),
               "ERL_EPMD_ADDRESS": "127.0.0.1",
               "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}"}
        super().__init__(port, [str(scripts / "rabbitmqctl"), "-n", self.node], env)
        self._server_script = str(scripts / "rabbitmq-server")
        self._server: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> float:
        """Starts the node and waits until it has booted; returns when (monotonic) it began to accept
        connections."""
        assert self._server is None or self._server.poll() is not None, "the node is already running"
        (self.directory / "beam.pid").unlink(missing_ok=True)
        with open(self.directory / "server.out", "ab") as output:
            self._server = subprocess.Popen([self._server_script], cwd=self.directory, env=self._env, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        listening_at = self._wait_until_listening(timeout)
        wait_until(self._booted, timeout, interval=0.5, message=f"RabbitMQ node {self.node} to boot")
        return listening_at

    def _wait_until_listening(self, timeout: float) -> float:
        def listening() -> bool:
            if self._server.poll() is not None:
                raise AssertionError(f"rabbitmq-server exited with {self._server.returncode}; "
                                     f"see {self.directory / 'server.out'}")
            return answers(self.port)

        wait_until(listening, timeout, interval=0.05, message=f"RabbitMQ node {self.node} to listen")
        return time.monotonic()

    def ensure_up(self) -> None:
        """Starts the node, or its app, if a scenario left it down."""
        if self._server is None or self._server.poll() is not None:
            self.start()
        elif not answers(self.port):
            self.start_app()

    def _booted(self) -> bool:
        if self._server.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited with {self._server.returncode}; "
                                 f"see {self.directory / 'server.out'}")
        return answers(self.port) and self._ctl_succeeds("await_startup", "--timeout", "5")

    def _ctl_succeeds(self, *args: str) -> bool:
        try:
            self.ctl(*args, timeout=30)
            return True
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> float:
        """Starts the app again; returns when (monotonic) the node listened again."""
        starting = subprocess.Popen([*self._ctl, "-q", "start_app"], env=self._env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        listening_at = self._wait_until_listening(120)
        if starting.wait(120) != 0:
            raise RuntimeError(f"rabbitmqctl start_app failed: {starting.stderr.read().decode()}")
        return listening_at

    def beam_pid(self) -> int:
        """The beam.smp process of this node: the pid file's, checked against its name and node name."""
        pid = int((self.directory / "beam.pid").read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if comm != "beam.smp" or f"RABBITMQ_NODENAME={self.node}".encode() not in environ:
            raise RuntimeError(f"pid {pid} is not the beam.smp of {self.node}; not touching it")
        return pid

    def kill(self) -> None:
        """SIGKILLs this node's beam.smp, as a crash or OOM kill would."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        self._server.wait(60)

    def stop(self) -> None:
        """Stops the node cleanly, or kills its beam.smp if it doesn't go within a minute."""
        if self._server is None or self._server.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=60)
            self._server.wait(60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            try:
                self.kill()
            except (OSError, RuntimeError, ValueError):
                self._server.kill()
                self._server.wait(30)


CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rabbitmq_cluster.sh"


def free_port_block(candidates=range(5700, 6000, 10)) -> int:
    """A first AMQP port for the suite's cluster: its three AMQP ports, their distribution ports (+20000) and the
    script's rabbitmqctl ports (+30100 …) all free, and none of them the integration tests' cluster's (5681-5683)."""
    def free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    for first in candidates:
        if all(free(first + offset) for offset in (0, 1, 2, 20000, 20001, 20002, 30100, 30101)):
            return first
    raise RuntimeError("no free ports for the fault suite's cluster")


class ClusterBroker(Broker):
    """A three-node cluster of the suite's own (scripts/rabbitmq_cluster.sh with its own folder, node names and
    ports), apart from the integration tests' cluster at 5681-5683: the only cluster the suite kills nodes of.
    `url` names every node; rabbitmqctl goes to a node that runs."""

    NODES = (1, 2, 3)

    def __init__(self, directory: Path):
        self.directory = directory
        self.name = f"faults-{uuid.uuid4().hex[:6]}"
        self.first_port = free_port_block()
        super().__init__(self.first_port, [str(CLUSTER_SCRIPT), "ctl"],
                         {**os.environ, "MLMONITOR_CLUSTER_DIR": str(directory),
                          "MLMONITOR_CLUSTER_PORT": str(self.first_port), "MLMONITOR_CLUSTER_NAME": self.name})

    def script(self, *args: str, timeout: float = 300) -> str:
        return subprocess.run([str(CLUSTER_SCRIPT), *args], check=True, capture_output=True, text=True,
                              timeout=timeout, env=self._env).stdout

    def up(self) -> float:
        """Starts whichever node is down and waits until all three are clustered; returns when (monotonic)."""
        self.script("up")
        return time.monotonic()

    def down(self) -> None:
        self.script("down")

    def node_pids(self) -> dict[int, int | None]:
        """Node number -> its beam.smp's OS pid, or None while it is down."""
        lines = self.script("status", timeout=60).splitlines()
        return {number: None if line.split()[2] == "down" else int(line.split()[2])
                for number, line in zip(self.NODES, lines)}

    def node_name(self, node: int) -> str:
        return f"{self.name}-{node}@localhost"

    # each rabbitmqctl call boots an Erlang VM: a minute is not always enough on 2 busy cores
    def ctl_on(self, node: int, *args: str, timeout: float = 180) -> str:
        return self.script("ctl", str(node), "-q", *args, timeout=timeout)

    def ctl(self, *args: str, timeout: float = 180) -> str:
        running = [node for node, pid in self.node_pids().items() if pid is not None]
        if not running:
            raise RuntimeError(f"every node of the cluster {self.name} is down")
        return self.ctl_on(running[0], *args, timeout=timeout)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.first_port + node - 1 for node in self.NODES)

    def url(self, vhost: str, query: str = "", port: int | None = None) -> str:
        suffix = f"/{vhost}{'?' + query if query else ''}"
        return ",".join(f"amqp://guest:guest@{self.host}:{node_port}{suffix}" for node_port in self.ports)

    def leader_of(self, vhost: str, queue: str) -> int:
        """The number of the node leading quorum queue `queue`."""
        listing = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "leader")
        leaders = dict(line.split() for line in listing.splitlines() if line.strip())
        return next(node for node in self.NODES if self.node_name(node) == leaders[queue])

    def online_members(self, vhost: str, queue: str) -> int:
        """How many of the queue's members run (its `online` list)."""
        listing = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "online")
        for line in listing.splitlines():
            name, _, online = line.partition("\t")
            if name == queue:
                return online.count("@")
        return 0

    def kill_node(self, node: int) -> None:
        """SIGKILLs the node's beam.smp, as a crash or OOM kill would, and waits until it is gone."""
        pid = self.node_pids()[node]
        if pid is None:
            raise RuntimeError(f"{self.node_name(node)} is already down")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 60, interval=0.05,
                   message=f"{self.node_name(node)} to die")

    def start_node(self, node: int) -> float:
        """Starts one node that was clustered before, as the script's `up` does, without `up`'s rabbitmqctl
        checks of the other nodes (a minute or more on 2 busy cores); returns when (monotonic) it listens."""
        node_dir = self.directory / f"node-{node}"
        server = rabbitmq_scripts() / "rabbitmq-server"  # not /usr/sbin's wrapper, which would switch users
        with open(node_dir / "log" / "startup.log", "ab") as output:
            subprocess.Popen([str(server)], cwd=node_dir, stdin=subprocess.DEVNULL, stdout=output,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**self._env, "HOME": str(self.directory),
                                  "RABBITMQ_CONF_ENV_FILE": str(node_dir / "rabbitmq-env.conf")})
        wait_until(lambda: answers(self.ports[node - 1]), 180, interval=0.05,
                   message=f"{self.node_name(node)} to listen")
        return time.monotonic()

    def stop_node(self, node: int) -> tuple[float, subprocess.Popen]:
        """Starts `rabbitmqctl stop` on the node; returns when (monotonic) its AMQP port stopped answering
        (the node closes its clients' connections first, then stops its queues) and the stop command, to wait for."""
        stopping = subprocess.Popen([str(CLUSTER_SCRIPT), "ctl", str(node), "-q", "stop"], env=self._env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = self.ports[node - 1]
        wait_until(lambda: not answers(port), 180, interval=0.05, message=f"{self.node_name(node)} to stop listening")
        return time.monotonic(), stopping


def _alive(pid: int) -> bool:
    """Runs, neither gone nor a zombie nobody reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
