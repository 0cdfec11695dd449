"""Times one service's start-up restore from a metric log and reports its peak RSS, as one JSON line.

    python bench/restore.py metric|plot CSV

metric: opening the log for append (reads back every id it holds); plot: restoring the histogram and
the counted ids, including the first redraw. Run in a fresh process so RSS is the service's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def restore_metric(csv_path: Path) -> int:
    from mlmonitor.metric_log import MetricLogWriter

    writer = MetricLogWriter(csv_path)
    try:
        return len(writer.written_ids)
    finally:
        writer.close()


def restore_plot(csv_path: Path) -> int:
    sys.path.insert(0, str(ROOT / "plot" / "src"))
    from plot import HistogramPlotter, Settings

    with tempfile.TemporaryDirectory() as logs_dir:
        plotter = HistogramPlotter(Settings(_cli_parse_args=[], logs_dir=Path(logs_dir)))
        plotter.restore(csv_path)
        return plotter.histogram.count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=("metric", "plot"))
    parser.add_argument("csv_path", type=Path, help="a metric log, e.g. one bench/run.py generated")
    args = parser.parse_args()
    service, csv_path = args.service, args.csv_path
    restore = {"metric": restore_metric, "plot": restore_plot}[service]
    if service == "plot":
        sys.path.insert(0, str(ROOT / "plot" / "src"))
        import plot  # noqa: F401  (imported before the clock starts: the restore is what we time)
    else:
        import mlmonitor.metric_log  # noqa: F401
    started = time.perf_counter()
    rows = restore(csv_path)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"service": service, "rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
