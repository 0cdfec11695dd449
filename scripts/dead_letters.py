"""Counts, shows and replays dead letters (the messages a service refused into `<queue>.dlq`).

    .venv/bin/python scripts/dead_letters.py list [--queue features.dlq] [--show 5]
    .venv/bin/python scripts/dead_letters.py replay --queue features.dlq [--grep "expected 10 features"] \\
        [--limit 100] [--dry-run]

`list` leaves every message where it is. `replay` moves the chosen dead letters (reason containing
--grep) back to the queue named by their x-source-queue header, without the rejection headers; each
is acked off the DLQ only once the broker has confirmed its copy. Fix what refused them first (the
model, the producer), or they come straight back. A copy cut short at MAX_MESSAGE_BYTES is never
replayed. `--amqp-url` (or AMQP_URL) names the broker and vhost, as for the services; for an
amqps:// URL, `--amqp-ca-file`, `--amqp-cert-file`, `--amqp-key-file` and `--amqp-server-name` (or
AMQP_CA_FILE …) too.
"""

from __future__ import annotations

import argparse
import ssl
import sys

import pika
from pika.exceptions import AMQPError

from mlmonitor.dead_letters import depth, known_dead_letter_queues, peek, replay
from mlmonitor.settings import ServiceSettings, load_settings
from mlmonitor.tls import connection_candidates, untrusted

CONNECTION_FLAGS = ("amqp_url", "amqp_ca_file", "amqp_cert_file", "amqp_key_file", "amqp_server_name")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    # given before or after the command; SUPPRESS keeps the subcommand's parser from resetting it
    common.add_argument("--amqp-url", default=argparse.SUPPRESS,
                        help="RabbitMQ address, vhost included (default: AMQP_URL, else localhost)")
    for name in CONNECTION_FLAGS[1:]:
        field = ServiceSettings.model_fields[name]
        common.add_argument(f"--{name.replace('_', '-')}", default=argparse.SUPPRESS,
                            metavar="NAME" if name == "amqp_server_name" else "PATH",
                            help=f"{field.description} (default: {name.upper()})")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="count the dead letters of each DLQ")
    listing.add_argument("--queue", action="append", help="a DLQ to look at (repeatable; default: the pipeline's)")
    listing.add_argument("--show", type=int, default=0, metavar="N", help="also show the first N of each")
    replaying = commands.add_parser("replay", parents=[common], help="move dead letters back to their queue")
    replaying.add_argument("--queue", required=True, help="the DLQ, e.g. features.dlq")
    replaying.add_argument("--grep", help="only those whose x-rejection-reason contains this text")
    replaying.add_argument("--limit", type=int, help="at most this many")
    replaying.add_argument("--dry-run", action="store_true", help="say what would be replayed; move nothing")
    args = parser.parse_args(argv)
    if getattr(args, "show", 0) < 0 or (getattr(args, "limit", None) or 0) < 0:
        parser.error("--show and --limit take a number >= 0")
    return args


def list_dead_letters(connection: pika.BlockingConnection, queues: list[str], show: int) -> None:
    for queue in queues:
        count = depth(connection, queue)
        print(f"{queue}: {'not declared' if count is None else count}", flush=True)
        if count and show:
            for number, letter in enumerate(peek(connection, queue, show), start=1):
                print(f"  {number}. {letter.describe()}", flush=True)


def replay_dead_letters(connection: pika.BlockingConnection, args: argparse.Namespace) -> None:
    replayed = 0

    def show(letter) -> None:
        nonlocal replayed
        replayed += 1
        if args.dry_run:
            print(f"  would replay to {letter.source_queue}: {letter.describe()}", flush=True)

    try:
        report = replay(connection, args.queue, grep=args.grep, limit=args.limit, dry_run=args.dry_run,
                        on_replayed=show)
    except AMQPError:
        if not args.dry_run:
            print(f"{args.queue}: replayed {replayed} before stopping", file=sys.stderr, flush=True)
        raise
    print(report.summary(dry_run=args.dry_run), flush=True)


def connection_settings(args: argparse.Namespace) -> ServiceSettings:
    """The URL and TLS settings as a service reads them: the flags given, else the environment; a
    mistake (a CA file with an amqp:// URL, a file that can't be read) exits with one line."""
    flags = [part for name in CONNECTION_FLAGS if hasattr(args, name)
             for part in (f"--{name.replace('_', '-')}", getattr(args, name))]
    return load_settings(ServiceSettings, flags, prog="dead_letters")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = connection_settings(args)
    try:
        connection = pika.BlockingConnection(connection_candidates(settings.amqp_url, settings.amqp_tls))
    except ssl.SSLCertVerificationError as error:
        print(f"dead_letters: RabbitMQ showed a certificate we can't trust: {untrusted(error)}", file=sys.stderr)
        return 2
    except (AMQPError, OSError) as error:
        print(f"dead_letters: can't connect to RabbitMQ: {error!r}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            list_dead_letters(connection, args.queue or known_dead_letter_queues(), args.show)
        else:
            replay_dead_letters(connection, args)
    except AMQPError as error:
        print(f"dead_letters: stopped: {error!r}; every dead letter not yet replayed is still in its queue",
              file=sys.stderr)
        return 1
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
