#!/usr/bin/env bash
# A local three-node RabbitMQ cluster from the installed rabbitmq-server, for running and testing on quorum queues.
#
#   scripts/rabbitmq_cluster.sh up       start whichever node is down and form the cluster; the last line printed
#                                        is the AMQP_URL of all three nodes, comma-separated
#   scripts/rabbitmq_cluster.sh status   one line per node: <node name> <AMQP port> <OS pid, or down>
#   scripts/rabbitmq_cluster.sh down     stop the nodes and remove their folders
#   scripts/rabbitmq_cluster.sh ctl N ARGS...   rabbitmqctl ARGS against node N (1-3), with the cluster's cookie
#
# Each node has its own name (mlmonitor-N@localhost), AMQP port (5681-5683), distribution port (25681-25683),
# data, logs, config and enabled-plugins files (none enabled, so no 15672 clash) under MLMONITOR_CLUSTER_DIR
# (default /tmp/mlmonitor-cluster). MLMONITOR_CLUSTER_PORT (the first AMQP port) and MLMONITOR_CLUSTER_NAME (the
# node names' prefix) set apart a second cluster beside it (the fault suite's). Everything listens on 127.0.0.1.
# The nodes never read /etc/rabbitmq (its config pins 5672) and never talk to the node at 5672: the cluster's
# Erlang cookie is its own, in
# MLMONITOR_CLUSTER_DIR/.erlang.cookie, found through HOME by the nodes and by this script's rabbitmqctl calls.
# The nodes run as the calling user, from /usr/lib/rabbitmq/bin: the /usr/sbin wrappers would switch root to the
# rabbitmq user, with the 5672 node's cookie and startup log.
set -euo pipefail

BASE=${MLMONITOR_CLUSTER_DIR:-/tmp/mlmonitor-cluster}
FIRST_PORT=${MLMONITOR_CLUSTER_PORT:-5681}
NAME=${MLMONITOR_CLUSTER_NAME:-mlmonitor}  # node names NAME-N@localhost: another cluster on this host needs its own
NODES=(1 2 3)
WAL_MAX_BYTES=$((64 * 1024 * 1024))  # RabbitMQ's default is 512 MiB per node
BOOT_TIMEOUT=${MLMONITOR_CLUSTER_BOOT_TIMEOUT:-180}

server_script=$(readlink -f "$(command -v rabbitmq-server 2>/dev/null || echo /usr/lib/rabbitmq/bin/rabbitmq-server)")
BIN=$(dirname "$server_script")
if [ ! -x "$BIN/rabbitmq-server" ] || [ ! -x "$BIN/rabbitmqctl" ]; then
  echo "rabbitmq_cluster: no rabbitmq-server installed here (looked in $BIN)" >&2
  exit 1
fi

node_name() { echo "$NAME-$1@localhost"; }
amqp_port() { echo $((FIRST_PORT + $1 - 1)); }
node_dir() { echo "$BASE/node-$1"; }

# rabbitmqctl against node $1, with the cluster's cookie; CLI distribution ports apart from other rabbitmqctl calls
ctl() {
  local node=$1
  shift
  HOME="$BASE" RABBITMQ_CONF_ENV_FILE="$(node_dir "$node")/rabbitmq-env.conf" \
    RABBITMQ_CTL_DIST_PORT_MIN=$((FIRST_PORT + 30100)) RABBITMQ_CTL_DIST_PORT_MAX=$((FIRST_PORT + 30130)) \
    "$BIN/rabbitmqctl" -n "$(node_name "$node")" "$@"
}

# The node's OS pid if it runs, else nothing: the Erlang VM whose environment names the node's env file
node_pid() {
  local wanted proc
  wanted="RABBITMQ_CONF_ENV_FILE=$(node_dir "$1")/rabbitmq-env.conf"
  for proc in /proc/[0-9]*; do
    [[ "$(readlink "$proc/exe" 2>/dev/null)" == */beam* ]] || continue
    if tr '\0' '\n' <"$proc/environ" 2>/dev/null | grep -qxF "$wanted"; then
      echo "${proc#/proc/}"
      return 0
    fi
  done
}

write_cookie() {
  mkdir -p "$BASE"
  chmod 700 "$BASE"
  if [ ! -s "$BASE/.erlang.cookie" ]; then
    (umask 077 && head -c 30 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$BASE/.erlang.cookie")
  fi
  chmod 400 "$BASE/.erlang.cookie"
}

write_node_files() {
  local node=$1 dir peer
  dir=$(node_dir "$node")
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$node")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$(amqp_port "$node")
DIST_PORT=$(($(amqp_port "$node") + 20000))
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
PID_FILE=$dir/rabbitmq.pid
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  {
    echo "listeners.tcp.1 = 127.0.0.1:$(amqp_port "$node")"
    echo "cluster_name = $NAME"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    for peer in "${NODES[@]}"; do
      echo "cluster_formation.classic_config.nodes.$peer = $(node_name "$peer")"
    done
    echo "raft.wal_max_size_bytes = $WAL_MAX_BYTES"
    echo "log.console = false"
    echo "log.file.level = info"
  } >"$dir/rabbitmq.conf"
  echo "[]." >"$dir/enabled_plugins"
}

start_node() {
  local node=$1 dir
  dir=$(node_dir "$node")
  echo "rabbitmq_cluster: starting $(node_name "$node") on 127.0.0.1:$(amqp_port "$node")" >&2
  (cd "$dir" && HOME="$BASE" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
    exec setsid "$BIN/rabbitmq-server" >"$dir/log/startup.log" 2>&1 </dev/null) &
}

# await_startup fails at once while the node is not yet registered with epmd, hence the retries
await_node() {
  local node=$1 started=$SECONDS
  until ctl "$node" -q await_startup --timeout 10 >/dev/null 2>&1; do
    # a VM that is gone 15 s after the start has failed to boot
    if [ $((SECONDS - started)) -ge "$BOOT_TIMEOUT" ] || { [ $((SECONDS - started)) -ge 15 ] && [ -z "$(node_pid "$node")" ]; }; then
      echo "rabbitmq_cluster: $(node_name "$node") did not start within ${BOOT_TIMEOUT}s; see $(node_dir "$node")/log" >&2
      exit 1
    fi
    sleep 1
  done
}

# The nodes running in node 1's cluster, as Erlang prints them: ['mlmonitor-1@localhost',...]
running_in_cluster() { ctl 1 -q eval 'rabbit_nodes:all_running().' 2>/dev/null || true; }

all_clustered() {
  local node running
  running=$(running_in_cluster)
  for node in "${NODES[@]}"; do
    [[ "$running" == *"'$(node_name "$node")'"* ]] || return 1
  done
}

# Joins node $1 to node 1's cluster if it is running on its own (e.g. it booted while node 1 was down)
ensure_clustered() {
  local node=$1
  if [[ "$(running_in_cluster)" == *"'$(node_name "$node")'"* ]]; then
    return 0
  fi
  echo "rabbitmq_cluster: joining $(node_name "$node") to $(node_name 1)" >&2
  ctl "$node" -q stop_app >/dev/null
  ctl "$node" -q reset >/dev/null
  ctl "$node" -q join_cluster "$(node_name 1)" >/dev/null
  ctl "$node" -q start_app >/dev/null
}

amqp_urls() {
  local node urls=()
  for node in "${NODES[@]}"; do
    urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$node")/")
  done
  (IFS=,; echo "${urls[*]}")
}

up() {
  local node down=() fresh
  write_cookie
  for node in "${NODES[@]}"; do
    write_node_files "$node"
    [ -n "$(node_pid "$node")" ] || down+=("$node")
  done
  if [ "${#down[@]}" = 0 ] && all_clustered; then  # one rabbitmqctl call (seconds each) when all is well
    amqp_urls
    return 0
  fi
  # A fresh cluster forms around node 1: the others, started once it runs, find it through classic_config.
  # Nodes that were clustered before start together, as each waits for its peers' tables.
  fresh=$(find "$(node_dir 1)/mnesia" -mindepth 1 -maxdepth 1 -type d -name "$(node_name 1)" | wc -l)
  if [ "${#down[@]}" -gt 0 ] && [ "${down[0]}" = 1 ] && [ "$fresh" = 0 ]; then
    start_node 1
    await_node 1
    down=("${down[@]:1}")
  fi
  for node in "${down[@]}"; do
    start_node "$node"
  done
  for node in "${NODES[@]}"; do
    if [[ " ${down[*]} " != *" $node "* ]]; then
      ctl "$node" -q start_app >/dev/null 2>&1 || true  # its VM runs, but `rabbitmqctl stop_app` may have stopped it
    fi
    await_node "$node"
  done
  for node in "${NODES[@]:1}"; do
    ensure_clustered "$node"
  done
  amqp_urls
}

status() {
  local node pid
  for node in "${NODES[@]}"; do
    pid=$(node_pid "$node")
    echo "$(node_name "$node") $(amqp_port "$node") ${pid:-down}"
  done
}

down() {
  local node pid
  for node in "${NODES[@]}"; do
    pid=$(node_pid "$node")
    [ -n "$pid" ] || continue
    echo "rabbitmq_cluster: stopping $(node_name "$node")" >&2
    ctl "$node" -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$BASE"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  ctl)
    [ $# -ge 3 ] || { echo "usage: $0 ctl N RABBITMQCTL-ARGS..." >&2; exit 2; }
    node=$2
    shift 2
    ctl "$node" "$@"
    ;;
  *)
    echo "usage: $0 up|status|down|ctl N ARGS..." >&2
    exit 2
    ;;
esac
