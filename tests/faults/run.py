"""The fault-injection suite: runs the pipeline under each fault and checks it lost and duplicated nothing.

    .venv/bin/python tests/faults/run.py                 # the full run (make faults)
    .venv/bin/python tests/faults/run.py --profile quick # the subset `make test` runs
    .venv/bin/python tests/faults/run.py --only "SIGKILL metric" --events 2000 --seed 7

Non-broker scenarios use a vhost of their own on the shared RabbitMQ (127.0.0.1:5672, or
TEST_RABBITMQ_HOST/PORT); scenarios that stop, kill or precede RabbitMQ use a private node the
suite starts on free loopback ports and stops at the end. Exit code 0 only if every scenario that
ran is valid: 0 lost, 0 duplicated, and every other check passed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (HERE, ROOT / "tests", ROOT / "scripts"):
    sys.path.insert(0, str(path))

from scenarios import PROFILES, SCENARIOS  # noqa: E402
from suite import Suite, machine, table  # noqa: E402


def interrupt(*_) -> None:
    raise KeyboardInterrupt  # so every `finally` stops the services and the private node


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started in the background, where it is ignored
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", action="append", metavar="SCENARIO", help="run only this scenario (repeatable)")
    parser.add_argument("--events", type=int, help="events per scenario (default: the profile's)")
    parser.add_argument("--rate", type=float, help="features' events per second (default: the profile's)")
    parser.add_argument("--seed", type=int, help="seed for the fault moments and victims (default: random)")
    parser.add_argument("--workdir", type=Path, help="keep every scenario's logs here (default: a temporary "
                        "directory, deleted unless a scenario fails)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)

    events, rate, selected = PROFILES[args.profile]
    if args.list:
        for scenario in SCENARIOS:
            print(scenario.name)
        return 0
    if args.only:
        by_name = {scenario.name: scenario for scenario in SCENARIOS}
        unknown = [name for name in args.only if name not in by_name]
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; --list shows them")
        selected = [(by_name[name], dict(selected).get(by_name[name]) or by_name[name].repeats or 0)
                    for name in args.only]
    events = args.events or events
    rate = args.rate if args.rate is not None else rate
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"fault suite: profile {args.profile}, {len(selected)} scenarios, {events} events at {rate:g}/s each, "
          f"seed {seed}, work in {workdir}", flush=True)
    started = time.monotonic()
    suite = Suite(workdir, events, rate, seed, log=lambda line: print(line, flush=True))
    try:
        for scenario, repeats in selected:
            print(f"- {scenario.name} ...", flush=True)
            result = suite.run(scenario, repeats)
            print(f"  {'skipped: ' + result.skipped if result.skipped else 'valid' if result.valid else 'INVALID'}"
                  f" ({result.seconds:.0f}s)", flush=True)
    finally:
        suite.close()
    print()
    print(table(suite.results))
    print(f"\n{machine()}; seed {seed}; {time.monotonic() - started:.0f}s in all")
    failed = [result for result in suite.results if not result.valid and not result.skipped]
    if failed or args.workdir:
        print(f"logs of every service: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
