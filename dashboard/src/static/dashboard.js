// Draws the state pushed on /api/events (Server-Sent Events); the browser reconnects by itself.
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
  document.getElementById("sources").textContent = `read from ${reachable} of ${pipeline.sources.length} services' /metrics` +
    (unreachable.length ? `; not answering: ${unreachable.join(", ")}` : "");
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

window.dashboard = {histogram, overTime};
setInterval(drawLastEvent, 1000);
connect();
