"""Writes a benchmark's results: results.md (the table), results.json (every figure), results.png (the
plot), and one line appended to history.md, so each optimisation's before and after stay side by side."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

PIPELINE_SERVICES = ("features", "model", "metric", "plot")  # the bare baseline's four hops
SERVICES = PIPELINE_SERVICES + ("drift",)


def _ms(p: dict | None) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f} / {p['p99']:.0f}" if p else "–"


def _figure(values: dict, name: str) -> str:
    value = values.get(name)
    return "–" if value is None or value != value else f"{value:.0f}"


def _deepest(backlog: dict) -> str:
    deepest = max(backlog.items(), key=lambda item: item[1]["max"], default=None)
    return (f"{deepest[1]['max']} ({deepest[0]}; {deepest[1]['max_first_half']} → {deepest[1]['max_second_half']})"
            if deepest else "–")


def _drift(run: dict) -> str:
    if "drift_caught_up_s" not in run:
        return "–"
    return (f"{_deepest(run['drift_backlog'])}; {run['drift_behind_max_events']} rows behind at most, "
            f"caught up {run['drift_caught_up_s']:.1f} s after the last row")


def _load(load: dict) -> str:
    return " ".join(f"{x:.2f}" for x in load["loadavg"])


def table(results: dict) -> str:
    bare = next((r for r in results["runs"] if r["kind"] == "bare"), None)
    lines = [
        "| run | events | sustained ev/s | × bare | to CSV p50 / p95 / p99 ms | to PNG p50 / p95 / p99 ms "
        "| PNG lag behind row, max ms | deepest ready backlog (queue; deepest in 1st → 2nd half of publishing) "
        "| drift: deepest ready backlog of its queues; rows not yet counted; catching up "
        "| peak RSS MB (features / model / metric / plot / drift) "
        "| CPU ms per 1000 events (features / model / metric / plot / drift / broker) | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        ratio = run["sustained_eps"] / bare["sustained_eps"] if bare and not run["rate"] else float("nan")
        rss = " / ".join(_figure(run["peak_rss_mb"], s) for s in SERVICES)
        cpu = " / ".join(_figure(run["cpu_ms_per_1000_events"], s) for s in SERVICES + ("broker",))
        if run["kind"] == "bare":
            latency, png, lag = _ms(run["latency_sink_ms"]) + " (to last hop)", "–", "–"
            name = "bare pika, full speed"
        else:
            latency, png = _ms(run["latency_csv_ms"]), _ms(run["latency_png_ms"])
            lag = f"{run['png_lag_ms']['max']:.0f}" if run["png_lag_ms"] else "–"
            name = run["name"] if run["name"].startswith("pipeline") else (
                "pipeline, full speed" if not run["rate"] else f"pipeline, {run['name']}")
        lines.append(f"| {name} | {run['count']} | {run['sustained_eps']:.0f} | {'–' if ratio != ratio else f'{ratio:.2f}'} | {latency} | {png} "
                     f"| {lag} | {_deepest(run['backlog'])} | {_drift(run)} | {rss} | {cpu} | {_load(run['load_before'])} |")
    return "\n".join(lines)


def replicas_table(results: dict) -> str:
    """One model process against two on the heavy model: each run, and two against the one of its round."""
    runs = results.get("replicas") or []
    if not runs:
        return ""
    one = {run["round"]: run["sustained_eps"] for run in runs if run["model_replicas"] == 1}
    lines = ["| run | model processes | events | sustained ev/s | × one process (same round) "
             "| to CSV p50 / p95 / p99 ms | CPU ms per 1000 events: model processes (each) / rest / broker "
             "| peak RSS MB, model processes | deepest ready backlog | load before |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    for run in runs:
        cpu = run["cpu_ms_per_1000_events"]
        models = sorted(name for name in cpu if name == "model" or name.startswith("model-"))
        rest = sum(value for name, value in cpu.items() if name not in models and name != "broker")
        ratio = run["sustained_eps"] / one[run["round"]] if one.get(run["round"]) else float("nan")
        rss = " / ".join(_figure(run["peak_rss_mb"], name) for name in models)
        lines.append(f"| {run['name']} | {run['model_replicas']} | {run['count']} | {run['sustained_eps']:.0f} "
                     f"| {'–' if ratio != ratio else f'{ratio:.2f}'} | {_ms(run['latency_csv_ms'])} "
                     f"| {' + '.join(_figure(cpu, name) for name in models)} / {rest:.0f} / {_figure(cpu, 'broker')} "
                     f"| {rss} | {_deepest(run['backlog'])} | {_load(run['load_before'])} |")
    return "\n".join(lines)


def compare_table(runs: list[dict]) -> str:
    """A against B, round by round (the cluster's and the partitions' runs): each run, and its
    throughput and p99 against the A run of its round."""
    if not runs:
        return ""
    first = {(run["round"], run["rate"]): run for run in runs if run["variant"] == 0}
    lines = ["| run | events | sustained ev/s | × first (same round and rate) | to CSV p50 / p95 / p99 ms "
             "| p99 × first | CPU ms per 1000 events: services / broker | deepest ready backlog | load before |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for run in runs:
        base = first.get((run["round"], run["rate"]))
        ratio = run["sustained_eps"] / base["sustained_eps"] if base else float("nan")
        p99 = (run["latency_csv_ms"]["p99"] / base["latency_csv_ms"]["p99"]
               if base and run["latency_csv_ms"] and base["latency_csv_ms"] else float("nan"))
        cpu = run["cpu_ms_per_1000_events"]
        services = sum(value for name, value in cpu.items() if name != "broker")
        lines.append(f"| {run['name']} | {run['count']} | {run['sustained_eps']:.0f} "
                     f"| {'–' if ratio != ratio else f'{ratio:.2f}'} | {_ms(run['latency_csv_ms'])} "
                     f"| {'–' if p99 != p99 else f'{p99:.2f}'} | {services:.0f} / {_figure(cpu, 'broker')} "
                     f"| {_deepest(run['backlog'])} | {_load(run['load_before'])} |")
    return "\n".join(lines)


def restore_table(results: dict) -> str:
    if not results["restore"]:
        return ""
    lines = ["| service | rows restored | seconds | peak RSS MB |", "|---|---:|---:|---:|"]
    for item in results["restore"]:
        lines.append(f"| {item['service']} | {item['rows']} | {item['seconds']:.2f} | {item['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    m = results["machine"]
    return "\n".join([
        "# Benchmark results",
        "",
        f"- when: {results['date']}, commit `{results['commit']}`" + (f", {results['label']}" if results["label"]
                                                                     else ""),
        f"- machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM; Python {m['python']}, "
        f"RabbitMQ {m['rabbitmq']}",
        f"- load average (1/5/15 min) at start {_load(results['load_start'])}, at end {_load(results['load_end'])}; "
        f"busiest processes at start: {', '.join(results['load_start']['top'][:3])}",
        f"- command: `{results['command']}`",
        "- guarantees on in every run: durable queues, persistent messages, publisher confirms, acks after "
        "effect, an fsync covering each row before its event is published. The bare baseline keeps the "
        "broker-side ones (durable, persistent, confirms, acks after the downstream confirm) and only decodes "
        "and encodes JSON at each hop.",
        "- latency is from `sent_at` (features creates the event) to the row seen on disk, and to the "
        "`error_distribution.json` written right after the PNG that includes the row.",
        "- drift runs beside the pipeline (at nice 10, as `make run` starts it; the bare baseline has none). "
        "\"rows not yet counted\" is the most rows the CSV had beyond the outcomes drift had made durable "
        "(one snapshot a second); drift's CPU is counted until it has taken in every event, the others' "
        "until the last row is drawn.",
        "",
        table(results) if results["runs"] else "",
        "",
        restore_table(results),
        "",
        *(["One node with classic queues against the three-node cluster with quorum queues:", "",
           compare_table(results["cluster"]), ""] if results.get("cluster") else []),
        *(["metric as one process (K = 1) against two partitions (K = 2):", "",
           compare_table(results["partitions"]), ""] if results.get("partitions") else []),
        *([f"One model process against two, on `{results['replicas'][0]['estimator']}`:", "",
           replicas_table(results), ""] if results.get("replicas") else []),
        "![results](results.png)",
        "",
    ])


def plot(results: dict, path: Path) -> None:
    figure = Figure(figsize=(13, 4.2), dpi=100)
    rows_axes, latency_axes, depth_axes = figure.subplots(1, 3)
    compared = [run for key in ("cluster", "partitions", "replicas") for run in results.get(key) or []]
    for run in results["runs"] + compared:
        if run["rate"] == 0:
            rows = run["timeline"]["rows"]
            step = run["count"] / max(1, len(rows))
            label = ("bare pika" if run["kind"] == "bare" else run["name"]
                     if run["name"].startswith("pipeline") or run in compared else "pipeline")
            rows_axes.plot(rows, [i * step for i in range(len(rows))], label=f"{label}: {run['sustained_eps']:.0f}/s")
        if run["kind"] == "pipeline":
            latencies = sorted(run["timeline"]["latency_csv_s"])
            n = len(latencies)
            latency_axes.plot([x * 1000 for x in latencies], [(i + 1) / n for i in range(n)], label=run["name"])
    rows_axes.set(title="events through the pipeline (full speed)", xlabel="seconds", ylabel="events")
    rows_axes.legend(fontsize=8)
    latency_axes.set(title="latency features → CSV row (CDF)", xlabel="ms", ylabel="fraction", xscale="log")
    latency_axes.legend(fontsize=8)
    saturated = next((r for r in results["runs"] + compared if r["kind"] == "pipeline" and r["rate"] == 0), None)
    if saturated:
        depths = saturated["timeline"]["depths"]
        for queue in ("features", "y_true", "y_pred", "metric_added", "predictions.drift", "prediction_batches.drift",
                      "metric_batches.drift"):
            if depths and queue in depths[0][1]:
                depth_axes.plot([t for t, _ in depths], [d[queue] for _, d in depths], label=queue)
        depth_axes.set(title="ready messages per queue (full speed)", xlabel="seconds", ylabel="messages")
        depth_axes.legend()
    for axes in (rows_axes, latency_axes, depth_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def history_line(results: dict) -> str:
    bare = next((r for r in results["runs"] if r["kind"] == "bare"), None)
    saturated = next((r for r in results["runs"] if r["kind"] == "pipeline" and r["rate"] == 0), None)
    at_500 = next((r for r in results["runs"] if r["kind"] == "pipeline" and r["rate"] == 500), None)
    restore = {item["service"]: item for item in results["restore"]}
    cells = [
        results["date"], results["commit"], results["label"] or "–", _load(results["load_start"]),
        f"{saturated['sustained_eps']:.0f}" if saturated else "–",
        f"{bare['sustained_eps']:.0f}" if bare else "–",
        f"{saturated['sustained_eps'] / bare['sustained_eps']:.2f}" if saturated and bare else "–",
        f"{at_500['latency_csv_ms']['p99']:.0f}" if at_500 and at_500["latency_csv_ms"] else "–",
        f"{max(r['png_lag_ms']['max'] for r in results['runs'] if r.get('png_lag_ms')):.0f}"
        if any(r.get("png_lag_ms") for r in results["runs"]) else "–",
        " / ".join(f"{restore[s]['seconds']:.2f} s {restore[s]['peak_rss_mb']:.0f} MB" for s in ("metric", "plot")
                   if s in restore) or "–",
        _cpu_total(saturated), _cpu_total(bare),
    ]
    return "| " + " | ".join(cells) + " |"


def _cpu_total(run: dict | None) -> str:
    """CPU ms per 1000 events of the four pipeline services together (features includes its start-up),
    then the broker's and drift's apart, so the figure compares with earlier lines and the bare one."""
    if not run or "cpu_ms_per_1000_events" not in run:
        return "–"
    cpu = run["cpu_ms_per_1000_events"]
    drift = f", +{cpu['drift']:.0f} drift" if cpu.get("drift") is not None else ""
    return f"{sum(cpu.get(s, 0) for s in PIPELINE_SERVICES):.0f} (+{cpu.get('broker', float('nan')):.0f} broker{drift})"


HISTORY_HEADER = ("| date | commit | change | load at start | pipeline ev/s | bare ev/s | ratio | p99 to CSV at "
                  "500/s ms | worst PNG lag ms | restore 1M rows: metric / plot | CPU ms per 1000 events, "
                  "full speed: pipeline | same, bare |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|\n")


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "results.png")
    if not results["runs"]:
        return  # the replicas alone (bench/run.py --only replicas): no line for history.md
    history = out / "history.md"
    if not history.exists():
        history.write_text("# Benchmark history\n\nOne line per `make bench` run, newest last.\n\n" + HISTORY_HEADER)
    with open(history, "a") as handle:
        handle.write(history_line(results) + "\n")
