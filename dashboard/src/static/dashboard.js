// Draws the state pushed on /api/events (Server-Sent Events); the browser reconnects by itself.
// The drift panel polls /api/drift instead: it changes every second and carries every score history.
"use strict";

const threeDecimals = (v) => v.toFixed(3);
const FORMATS = {
  count: (v) => v.toLocaleString("en-US"),
  mae: (v) => v.toFixed(2),
  rmse: (v) => v.toFixed(2),
  r2: threeDecimals,
  mape: (v) => v.toFixed(1) + " %",
  max_error: (v) => v.toFixed(2),
  accuracy: threeDecimals,
  balanced_accuracy: threeDecimals,
  precision_macro: threeDecimals,
  recall_macro: threeDecimals,
  f1_macro: threeDecimals,
  log_loss: threeDecimals,
  brier: threeDecimals,
  roc_auc: threeDecimals,
  score: (v) => v.toFixed(2),
  threshold: (v) => String(Number(v.toFixed(2))),
};
const NAMES = {
  count: "count", mae: "MAE", rmse: "RMSE", r2: "R²", accuracy: "accuracy", balanced_accuracy: "balanced accuracy",
  f1_macro: "macro F1", log_loss: "log loss",
};
const HEADLINE = {
  regression: ["count", "mae", "rmse", "r2"],
  classification: ["count", "accuracy", "balanced_accuracy", "f1_macro", "log_loss"],
};

function format(name, value) {
  return value === null || value === undefined || typeof value !== "number" ? "—" : FORMATS[name](value);
}

function isClassifier(state) {
  return state.task === "classification";
}

function figuresByWindow(state) {
  const card = state.model || {};
  const holdout = isClassifier(state) ? {...(card.holdout || {}), count: card.holdout_rows}
    : {count: card.holdout_rows, mae: card.holdout_mae, rmse: card.holdout_rmse, r2: card.holdout_r2};
  return {all: state, last_1000: state.windows.last_1000, last_100: state.windows.last_100, holdout};
}

function element(tag, text, className) {
  const made = document.createElement(tag);
  made.textContent = text;
  if (className) made.className = className;
  return made;
}

const histogram = new Chart(document.getElementById("histogram"), {
  type: "bar",
  data: {labels: [], datasets: [{label: "events", data: [], backgroundColor: "rgba(47, 111, 223, 0.75)",
                                 barPercentage: 1.0, categoryPercentage: 1.0}]},
  options: {
    animation: false, maintainAspectRatio: false,
    plugins: {legend: {display: false}},
    scales: {
      x: {title: {display: true, text: "absolute error"}, ticks: {maxRotation: 0, autoSkipPadding: 12}},
      y: {title: {display: true, text: "events"}, beginAtZero: true},
    },
  },
});

const overTime = new Chart(document.getElementById("over-time"), {
  type: "scatter",
  data: {datasets: [
    {label: "absolute error", data: [], pointRadius: 1.5, backgroundColor: "rgba(47, 111, 223, 0.45)"},
    {label: "MAE, last 100", data: [], type: "line", showLine: true, pointRadius: 0, borderWidth: 2,
     borderColor: "#c2412d"},
  ]},
  options: {
    animation: false, maintainAspectRatio: false,
    plugins: {legend: {position: "top", align: "end"}},
    scales: {
      x: {type: "linear", title: {display: true, text: "event #"}, ticks: {precision: 0}},
      y: {title: {display: true, text: "absolute error"}, beginAtZero: true},
    },
  },
});

function drawTask(state) {
  const task = isClassifier(state) ? "classification" : "regression";
  for (const part of document.querySelectorAll("[data-task]")) {
    part.hidden = part.dataset.task !== task;
  }
  const errorName = isClassifier(state) ? "1 − p(true class)" : "absolute error";
  document.getElementById("histogram-title").textContent = isClassifier(state)
    ? "Errors 1 − p(true class)" : "Absolute errors |y_true − y_pred|";
  histogram.options.scales.x.title.text = errorName;
  overTime.options.scales.y.title.text = errorName;
  overTime.data.datasets[0].label = errorName;
}

function drawClassesNote(state) {
  const classes = state.classes;
  const probabilities = classes && classes.with_probabilities ? "with" : "without";
  document.getElementById("classes-note").textContent = classes
    ? `${classes.labels.length}${classes.other ? "+" : ""} classes, ${probabilities} probabilities` : "";
  const note = document.getElementById("brier-note");
  note.hidden = !(classes && classes.with_probabilities && !classes.binary && state.brier_events < state.count);
  note.textContent = `Brier score over the ${(state.brier_events ?? 0).toLocaleString("en-US")} events that carried ` +
    "every class's probability: rows read from the CSV keep only p(true class).";
}

let confusionWindow = "all";
let lastState = null;

function drawConfusion(state) {
  const figures = figuresByWindow(state)[confusionWindow] || {};
  const matrix = figures.confusion_matrix || {labels: [], counts: []};
  const table = document.getElementById("confusion");
  const head = document.createElement("tr");
  head.append(element("th", "true ↓  predicted →"), ...matrix.labels.map((label) => element("th", label)));
  table.tHead.replaceChildren(head);
  const rows = matrix.counts.map((counts, i) => {
    const row = document.createElement("tr");
    row.append(element("th", matrix.labels[i]));
    const total = counts.reduce((sum, count) => sum + count, 0);
    counts.forEach((count, j) => {
      const cell = element("td", count.toLocaleString("en-US"));
      const shade = (total ? 0.5 * count / total : 0).toFixed(3);  // by the share of the true class's events
      cell.style.backgroundColor = `rgba(${i === j ? "29, 138, 78" : "194, 65, 45"}, ${shade})`;
      row.append(cell);
    });
    return row;
  });
  if (!rows.length) {
    const empty = document.createElement("tr");
    empty.append(element("td", "no event yet"));
    rows.push(empty);
  }
  table.tBodies[0].replaceChildren(...rows);
  for (const button of document.querySelectorAll("#confusion-window button")) {
    button.classList.toggle("selected", button.dataset.window === confusionWindow);
  }
}

function drawVersions(state) {
  const card = state.model || {};
  const names = HEADLINE[isClassifier(state) ? "classification" : "regression"];
  const blocks = Object.entries(state.by_version || {}).map(([version, figures]) => {
    const block = element("div", "", "version");
    block.dataset.version = version;
    const title = element("h3", version, "mono");
    if (version === card.version) title.append(element("span", " · on disk", "subtle"));
    if (version === state.events_model_version) title.append(element("span", " · latest events", "subtle"));
    const table = element("table", "", "small");
    const head = document.createElement("tr");
    head.append(element("th", ""), element("th", "all"), element("th", "last 1,000"));
    table.createTHead().append(head);
    const body = table.createTBody();
    for (const name of names) {
      const row = document.createElement("tr");
      row.dataset.versionFigure = name;
      row.append(element("th", NAMES[name]), element("td", format(name, figures.all[name])),
                 element("td", format(name, figures.last_1000[name])));
      body.append(row);
    }
    block.append(title, table);
    return block;
  });
  document.getElementById("versions").replaceChildren(
    ...(blocks.length ? blocks : [element("p", "no event yet", "subtle")]));
}

function drawFigures(state) {
  const windows = figuresByWindow(state);
  for (const cell of document.querySelectorAll("[data-figure]")) {
    const [window, name] = cell.dataset.figure.split(".");
    cell.textContent = format(name, (windows[window] || {})[name]);
  }
}

function drawHistogram(state) {
  const {bin_width: width, counts} = state.histogram;
  const decimals = width < 0.1 ? 3 : width < 1 ? 2 : 0;
  histogram.data.labels = counts.map((_, i) => `${(i * width).toFixed(decimals)}–${((i + 1) * width).toFixed(decimals)}`);
  histogram.data.datasets[0].data = counts;
  histogram.update("none");
  document.getElementById("histogram-note").textContent = `${state.count.toLocaleString("en-US")} events, bins of ${width}`;
}

function drawOverTime(state) {
  const {seq, absolute_error: errors, rolling_mae: mae, rolling_window: window} = state.recent;
  overTime.data.datasets[0].data = seq.map((x, i) => ({x, y: errors[i]}));
  overTime.data.datasets[1].data = seq.map((x, i) => ({x, y: mae[i]}));
  overTime.data.datasets[1].label = `${isClassifier(state) ? "mean error" : "MAE"}, last ${window}`;
  overTime.options.scales.x.min = seq.length ? seq[0] : undefined;
  overTime.options.scales.x.max = seq.length ? seq[seq.length - 1] : undefined;
  overTime.update("none");
}

function drawModel(state) {
  const card = state.model || {};
  const facts = {
    version: card.version, estimator: card.estimator, trained_at: card.trained_at,
    rows: card.train_rows === undefined ? undefined : `${card.train_rows} / ${card.holdout_rows}`,
    events_model_version: state.events_model_version,
  };
  for (const cell of document.querySelectorAll("[data-model]")) {
    cell.textContent = facts[cell.dataset.model] ?? "—";
  }
  document.getElementById("model-version").textContent = card.version ?? "—";
  const warning = document.getElementById("model-warning");
  warning.hidden = !card.error && !(card.version && state.events_model_version &&
                                    card.version !== state.events_model_version);
  warning.textContent = card.error ||
    `The latest events were predicted by ${state.events_model_version}, not by the model on disk.`;
}

function drawPipeline(state) {
  const pipeline = state.pipeline;
  for (const cell of document.querySelectorAll("[data-pipeline]")) {
    const value = pipeline[cell.dataset.pipeline];
    cell.textContent = value === null || value === undefined ? "—" : value.toLocaleString("en-US");
  }
  const queues = [...new Set([...Object.keys(pipeline.dead_lettered), ...Object.keys(pipeline.expired_halves)])].sort();
  const rows = queues.map((queue) => [queue, pipeline.dead_lettered[queue] ?? 0, pipeline.expired_halves[queue] ?? 0]);
  document.querySelector("#dead-letters tbody").replaceChildren(
    ...(rows.length ? rows : [["no queue has dead-lettered a message", "", ""]]).map((texts) => {
      const row = document.createElement("tr");
      for (const text of texts) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
  const reachable = pipeline.sources.filter((source) => source.reachable).length;
  const unreachable = pipeline.sources.filter((source) => !source.reachable).map((source) => source.url);
  const replicated = pipeline.sources.filter((source) => (source.instances || 1) > 1)
    .map((source) => `${source.url} (${source.instances} replicas, summed)`);
  document.getElementById("sources").textContent = `read from ${reachable} of ${pipeline.sources.length} services' /metrics` +
    (replicated.length ? `; ${replicated.join(", ")}` : "") +
    (unreachable.length ? `; not answering: ${unreachable.join(", ")}` : "");
}

// ---------------------------------------------------------------- drift

const DRIFT_POLL_MS = 2000;
const HIGHLIGHTED = 6;  // detectors drawn in colour: the raised ones, then the highest scores; the rest in grey
const PALETTE = ["#c2412d", "#2f6fdf", "#1d8a4e", "#b7791f", "#7b4fc9", "#0f8a9d"];
const GREY = "rgba(107, 116, 131, 0.35)";

const driftChart = new Chart(document.getElementById("drift-chart"), {
  type: "line",
  data: {datasets: []},
  options: {
    animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
    interaction: {mode: "nearest", intersect: false},
    elements: {point: {radius: 0}, line: {borderWidth: 1.5}},
    plugins: {
      legend: {position: "top", align: "end", labels: {filter: (item, data) => !data.datasets[item.datasetIndex].grey}},
      tooltip: {callbacks: {label: (item) => `${item.dataset.label}: ${item.parsed.y.toFixed(2)}`}},
    },
    scales: {
      x: {type: "linear", title: {display: true, text: "seconds before the latest score"}, ticks: {precision: 0}},
      y: {beginAtZero: true, suggestedMax: 1.2, title: {display: true, text: "score ÷ threshold (alert at 1)"}},
    },
  },
});

function detectorName(detector) {
  return detector.feature ?? detector.detector;
}

function ratio(score, threshold) {
  return typeof score === "number" && typeof threshold === "number" && threshold > 0 ? score / threshold : null;
}

function byUrgency(detectors) {  // raised first, then the highest score over threshold
  return [...detectors].sort((a, b) => (b.state === "raised") - (a.state === "raised")
    || (ratio(b.score, b.threshold) ?? 0) - (ratio(a.score, a.threshold) ?? 0));
}

function highlighted(detectors) {
  return new Set(byUrgency(detectors).slice(0, HIGHLIGHTED).map((detector) => detector.detector));
}

function drawDriftChart(drift) {
  const detectors = drift.detectors;
  const latest = Math.max(0, ...detectors.map((d) => (d.history.length ? d.history[d.history.length - 1][0] : 0)));
  const oldest = Math.min(latest, ...detectors.map((d) => (d.history.length ? d.history[0][0] : latest)));
  const coloured = highlighted(detectors);
  let colour = 0;
  const lines = detectors.map((detector) => {
    const grey = !coloured.has(detector.detector);
    return {
      label: detectorName(detector), grey,
      borderColor: grey ? GREY : PALETTE[colour++ % PALETTE.length],
      borderWidth: grey ? 1 : 2,
      data: detector.history.map(([second, score]) => ({x: second - latest, y: ratio(score, detector.threshold)})),
    };
  });
  const threshold = {label: "threshold", borderColor: "#c2412d", borderDash: [6, 4], borderWidth: 1.5,
                     data: [{x: oldest - latest, y: 1}, {x: 0, y: 1}]};
  // grey first, so that the coloured lines are drawn over them
  driftChart.data.datasets = [...lines.filter((line) => line.grey), ...lines.filter((line) => !line.grey), threshold];
  driftChart.options.scales.x.min = oldest - latest;
  driftChart.options.scales.x.max = 0;
  driftChart.update("none");
  const greyCount = lines.filter((line) => line.grey).length;
  document.getElementById("drift-chart-note").textContent = detectors.length
    ? `${detectors.length} detectors` +
      (greyCount ? `: ${detectors.length - greyCount} in colour (raised first, then the highest scores), ` +
                   `${greyCount} in grey (hover for names)` : "")
    : "no detector yet";
}

// A raised detector's score stays near its threshold until it falls below half of it: red all that time.
function scoreCell(score, threshold, raised) {
  const cell = element("td", "", "score");
  const value = ratio(score, threshold);
  const bar = element("span", "", "bar");
  const fill = element("span", "", raised || (value !== null && value >= 1) ? "fill over" : "fill");
  fill.style.width = `${Math.min(100, 100 * (value ?? 0) / 1.2).toFixed(1)}%`;  // CSSOM: allowed by the policy
  bar.append(fill);
  cell.append(element("span", `${format("score", score)} / ${format("threshold", threshold)}`, "figure"), bar);
  return cell;
}

function drawDetectors(drift) {
  const rows = byUrgency(drift.detectors).map((detector) => {
    const row = document.createElement("tr");
    row.dataset.detector = detector.detector;
    const state = detector.state === "raised" ? "raised" : "ok";
    const stateCell = element("td", state, `state ${state}`);
    stateCell.dataset.field = "state";
    row.append(element("td", detectorName(detector)), element("td", detector.kind, "text"),
               scoreCell(detector.score, detector.threshold, state === "raised"), stateCell);
    return row;
  });
  if (!rows.length) {
    const empty = document.createElement("tr");
    empty.append(element("td", "no detector yet", "subtle"));
    rows.push(empty);
  }
  document.querySelector("#detectors tbody").replaceChildren(...rows);
}

function localTime(text) {
  const time = new Date(text);
  if (Number.isNaN(time.getTime())) return text ?? "—";
  const pad = (n) => String(n).padStart(2, "0");
  return `${time.getFullYear()}-${pad(time.getMonth() + 1)}-${pad(time.getDate())} ` +
    `${pad(time.getHours())}:${pad(time.getMinutes())}:${pad(time.getSeconds())}`;
}

function alertRow(alert, withState) {
  const row = document.createElement("tr");
  row.dataset.episode = alert.episode;
  row.dataset.state = alert.state;
  row.dataset.detector = alert.detector;
  row.append(element("td", localTime(alert.time), "time"));
  if (withState) row.append(element("td", alert.state, `text state ${alert.state}`));
  row.append(element("td", alert.kind, "text"), element("td", alert.feature ?? "—", "text"),
             element("td", format("count", alert.events)), scoreCell(alert.score, alert.threshold, false),
             element("td", alert.model_version, "text mono"), element("td", alert.why, "text why"));
  return row;
}

function drawAlerts(selector, alerts, withState, empty) {
  const rows = alerts.map((alert) => alertRow(alert, withState));
  if (!rows.length) {
    const row = document.createElement("tr");
    row.append(element("td", empty, "subtle"));
    rows.push(row);
  }
  document.querySelector(`${selector} tbody`).replaceChildren(...rows);
}

function drawDriftStatus(drift) {
  const status = document.getElementById("drift-status");
  const open = drift.open_alerts.length;
  if (!drift.available) {
    status.className = "drift-status unknown";
    status.textContent = drift.stale ? "drift: stale" : "drift: not running";
  } else {
    status.className = `drift-status ${open ? "raised" : "ok"}`;
    status.textContent = open ? `drift: ${open} alert${open === 1 ? "" : "s"} open` : "drift: no alert";
  }
  const problem = document.getElementById("drift-problem");
  problem.hidden = drift.available;
  problem.textContent = drift.reason ?? "";
  const events = drift.events || {};
  document.getElementById("drift-note").textContent = drift.model_version
    ? `model ${drift.model_version}, ${format("count", events.predictions)} predictions and ` +
      `${format("count", events.outcomes)} outcomes seen, at most ${drift.false_alarms_per_100k ?? "—"} false alarms ` +
      "per 100,000 events" + (drift.age_seconds === null ? "" : `; updated ${Math.round(drift.age_seconds)} s ago`)
    : "";
}

function drawDrift(drift) {
  document.getElementById("drift").classList.toggle("stale", !drift.available);
  drawDriftStatus(drift);
  drawDriftChart(drift);
  drawDetectors(drift);
  drawAlerts("#open-alerts", drift.open_alerts, false, "no alert open");
  drawAlerts("#recent-alerts", drift.recent_alerts, true, "no alert yet");
}

async function pollDrift() {
  let drift;
  try {
    const response = await fetch("/api/drift", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    drift = await response.json();
  } catch (error) {
    const status = document.getElementById("drift-status");
    status.className = "drift-status unknown";
    status.textContent = "drift: unreachable";
    document.getElementById("drift-note").textContent = `/api/drift did not answer (${error.message}); trying again`;
    return;
  } finally {
    setTimeout(pollDrift, DRIFT_POLL_MS);
  }
  drawDrift(drift);  // outside the try: a drawing bug shows in the console, not as "unreachable"
}

let lastEventAt = null;

function drawLastEvent() {
  const element = document.getElementById("last-event");
  if (lastEventAt === null) {
    element.textContent = "no event since start";
    return;
  }
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - lastEventAt));
  element.textContent = `last event ${seconds < 2 ? "just now" : seconds + " s ago"}`;
}

function draw(state) {
  lastState = state;
  drawTask(state);
  drawFigures(state);
  drawClassesNote(state);
  drawConfusion(state);
  drawVersions(state);
  drawHistogram(state);
  drawOverTime(state);
  drawModel(state);
  drawPipeline(state);
  lastEventAt = state.last_event_at;
  drawLastEvent();
}

function connect() {
  const connection = document.getElementById("connection");
  const source = new EventSource("/api/events");
  source.onopen = () => { connection.className = "connection live"; connection.textContent = "live"; };
  source.onerror = () => { connection.className = "connection lost"; connection.textContent = "reconnecting…"; };
  source.onmessage = (message) => draw(JSON.parse(message.data));
}

for (const button of document.querySelectorAll("#confusion-window button")) {
  button.addEventListener("click", () => {
    confusionWindow = button.dataset.window;
    if (lastState) drawConfusion(lastState);
  });
}

window.dashboard = {histogram, overTime, driftChart};
setInterval(drawLastEvent, 1000);
connect();
pollDrift();
