"""Keeps `logs/error_distribution.png`, the histogram of absolute errors, current.

The errors are metric's: |y_true − y_pred| for a regressor, 1 − p(true class) (or 0/1) for a
classifier, so the same drawing serves both.

Beside it, `logs/error_distribution.json` holds the same histogram as numbers.

At start it restores its data from every shard of the metric log (`logs/metric_log.csv`, and
`logs/metric_log-<I>.csv` of each partition); then each `metric_added` event adds one
error. The histogram is updated in place (O(1) per event, whatever the history), redraws are
coalesced to at most one per `--redraw-seconds` (0.25 s; the first event after a quiet spell is
drawn at once), and the PNG is replaced atomically. An event is acked once a PNG that includes it
is in place. Ids already counted are skipped, so a redelivered event is never counted twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from prometheus_client import Histogram  # noqa: E402
from pydantic import Field  # noqa: E402

from mlmonitor.amqp import Delivery, Session, decode_or_dead_letter, run_worker  # noqa: E402
from mlmonitor.histogram import ErrorHistogram  # noqa: E402
from mlmonitor.logs import EventLog  # noqa: E402
from mlmonitor.messages import MetricAdded  # noqa: E402
from mlmonitor.ids import IdSet  # noqa: E402
from mlmonitor.metric_log import metric_log_shards, read_ids_and_errors  # noqa: E402
from mlmonitor.service import start_service  # noqa: E402
from mlmonitor.settings import ConsumerSettings  # noqa: E402
from mlmonitor.topology import METRIC_ADDED  # noqa: E402

log = logging.getLogger("plot")

REDRAW_DURATION = Histogram(
    "mlmonitor_plot_redraw_seconds", "Time to draw the histogram and replace the PNG and its JSON.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5),
)
EVENT_WAIT = Histogram(
    "mlmonitor_plot_event_wait_seconds",
    "Per redraw, how long the oldest event it includes waited in plot: from delivery to the PNG in place.",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0),
)


class Settings(ConsumerSettings):
    logs_dir: Path = Field(Path("logs"), description="Folder of metric_log.csv and error_distribution.png.")
    redraw_seconds: float = Field(0.25, gt=0, description="Shortest time between two redraws.")
    prefetch: int = Field(5000, ge=1, le=65535, description="Unacked events; must cover one redraw interval.")


TITLE = "Distribution of absolute errors"
ERROR_LABEL = "absolute error (|y_true − y_pred|, or 1 − p(true class) for a classifier)"


class HistogramFigure:
    """The PNG's figure, built once and redrawn by blitting.

    Title, axes, ticks, grid and legend change only with the axis limits; the x limit moves by ten
    bins and the y limit grows by half or more when it moves, so they are drawn rarely (about 30 times
    over a million events) and kept as a background. A redraw restores it, draws the bars and the
    mean on top, writes the figures' box with Pillow (matplotlib's text layout took 5.6 of a
    redraw's 13 ms, Pillow takes under 1) and encodes the PNG: about a sixth of a new figure's CPU.
    """

    def __init__(self):
        self.figure = Figure(figsize=(8, 5), dpi=100)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.bars = self.axes.stairs(np.zeros(1), [0, 1], fill=True, color="tab:blue", alpha=0.8, animated=True)
        self.mean_line = self.axes.axvline(0, color="tab:red", linestyle="--", label="mean absolute error",
                                           animated=True)
        self.axes.set_title(TITLE)
        self.axes.set_xlabel(ERROR_LABEL, fontsize="small")
        self.axes.set_ylabel("events")
        self.axes.grid(alpha=0.3)
        self.axes.legend(loc="upper right")
        self._limits: tuple[float, float] | None = None
        self._background = None

    def render(self, histogram: ErrorHistogram, path: Path) -> None:
        """Draws the histogram and replaces `path` atomically: readers see the old PNG or the new one."""
        bins = len(histogram.counts)
        last_used = int(np.flatnonzero(histogram.counts)[-1]) + 1 if histogram.count else 1
        shown = min(bins, -(-last_used // 10) * 10)  # whole tens of bins, so the x limit rarely moves
        right = float(histogram.edges[shown])
        highest = max(1, int(histogram.counts.max())) * 1.3  # headroom for the text box
        top = self._limits[1] if self._limits and highest <= self._limits[1] else nice_ceiling(1.5 * highest)
        if (right, top) != self._limits:
            self.axes.set_xlim(-0.05 * right, 1.05 * right)
            self.axes.set_ylim(0, top)
            self.canvas.draw()  # everything but the animated artists
            self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self._limits = (right, top)
        else:
            self.canvas.restore_region(self._background)
        self.bars.set_data(histogram.counts[:shown], histogram.edges[:shown + 1])
        self.mean_line.set_xdata([histogram.mean, histogram.mean])
        self.mean_line.set_visible(histogram.count > 0)
        for artist in (self.bars, self.mean_line):
            self.axes.draw_artist(artist)
        width, height = self.canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
        right, top = self.axes.transAxes.transform((0.98, 0.86))
        draw_text_box(image, (right, height - top),
                      f"events: {histogram.count}\nmean: {histogram.mean:.2f}\nmax: {histogram.maximum:.2f}\n"
                      f"updated {datetime.now():%Y-%m-%d %H:%M:%S}")
        # A 256-colour palette looks the same (a few flat colours and their anti-aliasing) and halves
        # both the encoding's CPU and the file: 5.7 against 9.7 ms, 18 against 41 kB.
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE)
        temporary = path.with_name(f".{path.name}.tmp")
        image.save(temporary, format="png", compress_level=1)  # level 6 costs 60 % more for 15 % less size
        os.replace(temporary, path)
        write_summary(histogram, path.with_suffix(".json"))


# matplotlib's own font at the size of its default 10 pt text at the figure's 100 dpi
TEXT_FONT = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 14)
TEXT_PAD = 5  # pixels between the text and its box, as matplotlib's "round" box at 10 pt


def draw_text_box(image: Image.Image, top_right: tuple[float, float], text: str) -> None:
    """`text`, left-aligned, its top right corner at `top_right` (pixels from the top left), in a
    rounded box of 80 % white with an 80 % black edge, as a matplotlib text with a "round" bbox looks."""
    x, y = round(top_right[0]), round(top_right[1])
    draw = ImageDraw.Draw(image)
    left, upper, right, lower = map(round, draw.multiline_textbbox((x, y), text, font=TEXT_FONT, anchor="ra",
                                                                   spacing=4))
    box = (left - TEXT_PAD, upper - TEXT_PAD, right + TEXT_PAD + 1, lower + TEXT_PAD + 1)
    behind = image.crop(box)
    image.paste(Image.blend(behind, Image.new("RGB", behind.size, "white"), 0.8), box[:2])  # drawn on in place
    draw.rounded_rectangle((box[0], box[1], box[2] - 1, box[3] - 1), radius=TEXT_PAD, outline=(51, 51, 51))
    draw.multiline_text((x, y), text, font=TEXT_FONT, fill="black", anchor="ra", align="left", spacing=4)


NICE_STEPS = (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.25, 1.5, 2 … 8 times a power of ten that is >= value."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in NICE_STEPS if step * power >= value)


def render_histogram(histogram: ErrorHistogram, path: Path) -> None:
    """One-off drawing; the plotter keeps one HistogramFigure and redraws it."""
    HistogramFigure().render(histogram, path)


def write_summary(histogram: ErrorHistogram, path: Path) -> None:
    """The drawn histogram as JSON beside the PNG, for scripts and tests; replaced atomically too."""
    summary = {"count": histogram.count, "mean": histogram.mean, "max": histogram.maximum,
               "bin_width": histogram.width, "counts": histogram.counts.tolist(),
               "updated_at": datetime.now().isoformat(timespec="seconds")}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(summary))
    os.replace(temporary, path)


class HistogramPlotter:
    def __init__(self, settings: Settings, render=None):
        self._settings = settings
        self._render = render or HistogramFigure().render
        self.png_path = settings.logs_dir / "error_distribution.png"
        self.histogram = ErrorHistogram()
        self.counted_ids = IdSet()  # compact: ~16 bytes per UUID
        self._waiting_for_redraw: list[Delivery] = []
        self._waiting_since: float | None = None  # time.monotonic() of the oldest waiting delivery
        self._changed = False
        self._redraw_scheduled = False
        self._last_redraw = 0.0  # time.monotonic() of the last scheduled redraw
        self._session: Session | None = None
        self._redraws = EventLog(log, "redraws")

    def restore(self, csv_paths: Path | list[Path]) -> None:
        """At start: counts each id of the log (or of all its shards) once (vectorised: about a second
        per million rows)."""
        started = time.perf_counter()
        self.counted_ids, errors = read_ids_and_errors(csv_paths)
        self.histogram.add_many(errors)
        self._settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self._render(self.histogram, self.png_path)
        shown = csv_paths if isinstance(csv_paths, Path) else ", ".join(map(str, csv_paths)) or "no metric log"
        log.info("restored %d errors from %s in %.2fs; drew %s", self.histogram.count, shown,
                 time.perf_counter() - started, self.png_path)

    def on_connected(self, session: Session) -> None:
        self._session = session
        self._redraw_scheduled = False
        session.consume(METRIC_ADDED, self.on_batch, self._settings.prefetch)
        session.every(1.0, self._redraws.flush)

    def on_disconnected(self) -> None:
        self._session = None
        self._redraw_scheduled = False
        self._waiting_for_redraw.clear()
        self._waiting_since = None

    def on_batch(self, deliveries: list[Delivery]) -> None:
        errors = []
        for delivery in deliveries:
            event = decode_or_dead_letter(self._session, MetricAdded, delivery)
            if event is None:
                continue
            if self.counted_ids.add_if_new(event.id):
                errors.append(event.absolute_error)
            self._waiting_for_redraw.append(delivery)
        if self._waiting_for_redraw and self._waiting_since is None:
            self._waiting_since = time.monotonic()
        if errors:
            self.histogram.add_many(np.array(errors, dtype=float))
            self._changed = True
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        """At most one redraw per redraw_seconds, and the earliest that allows once events wait: an
        event after a quiet spell is drawn at once, a steady stream every redraw_seconds."""
        if self._redraw_scheduled or not self._waiting_for_redraw or self._session is None:
            return
        self._redraw_scheduled = True
        delay = max(0.0, self._last_redraw + self._settings.redraw_seconds - time.monotonic())
        self._session.call_later(delay, self._scheduled_redraw)

    def _scheduled_redraw(self) -> None:
        self._redraw_scheduled = False
        self._last_redraw = time.monotonic()
        self.redraw_if_changed()
        self._redraw_soon()  # a failed redraw keeps its events waiting: try again after redraw_seconds

    def redraw_if_changed(self) -> None:
        if not self._waiting_for_redraw:
            return
        if self._changed:
            started = time.monotonic()
            try:
                self._render(self.histogram, self.png_path)
            except OSError as error:
                log.error("can't write %s: %s; keeping %d events unacked until it works", self.png_path, error,
                          len(self._waiting_for_redraw))
                return
            self._changed = False
            REDRAW_DURATION.observe(time.monotonic() - started)
            self._redraws.event("redrew %s: %d events, mean absolute error %.2f", self.png_path,
                                self.histogram.count, self.histogram.mean)
        EVENT_WAIT.observe(time.monotonic() - self._waiting_since)
        acked, self._waiting_for_redraw, self._waiting_since = self._waiting_for_redraw, [], None
        for delivery in acked:
            delivery.ack()


def main(argv: list[str] | None = None) -> int:
    settings = start_service("plot", Settings, argv)
    plotter = HistogramPlotter(settings)
    plotter.restore(metric_log_shards(settings.logs_dir))
    return run_worker(plotter, settings.amqp_url, max_message_bytes=settings.max_message_bytes,
                      tls=settings.amqp_tls, queue_type=settings.queue_type)


if __name__ == "__main__":
    sys.exit(main())
