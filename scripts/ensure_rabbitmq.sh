#!/usr/bin/env bash
# Makes sure a RabbitMQ answers at 127.0.0.1:5672, starting the local server if it is down.
set -euo pipefail
host=${TEST_RABBITMQ_HOST:-127.0.0.1}
port=${TEST_RABBITMQ_PORT:-5672}

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if answers && rabbitmqctl -q status >/dev/null 2>&1; then
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null; then
  echo "ensure_rabbitmq: no RabbitMQ at $host:$port and no rabbitmq-server here; start one (docker compose up -d rabbitmq)" >&2
  exit 1
fi
echo "ensure_rabbitmq: starting rabbitmq-server" >&2
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if answers && rabbitmqctl -q status >/dev/null 2>&1; then
    echo "ensure_rabbitmq: RabbitMQ is up" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure_rabbitmq: RabbitMQ did not come up within 120s" >&2
exit 1
