// Draws the state pushed on /api/events (Server-Sent Events); the browser reconnects by itself.
"use strict";

const FORMATS = {
  count: (v) => v.toLocaleString("en-US"),
  mae: (v) => v.toFixed(2),
  rmse: (v) => v.toFixed(2),
  r2: (v) => v.toFixed(3),
  mape: (v) => v.toFixed(1) + " %",
  max_error: (v) => v.toFixed(2),
};

function format(name, value) {
  return value === null || value === undefined ? "—" : FORMATS[name](value);
}

function figuresByWindow(state) {
  const card = state.model || {};
  return {
    all: state,
    last_1000: state.windows.last_1000,
    last_100: state.windows.last_100,
    holdout: {count: card.holdout_rows, mae: card.holdout_mae, rmse: card.holdout_rmse, r2: card.holdout_r2},
  };
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

function drawFigures(state) {
  const windows = figuresByWindow(state);
  for (const cell of document.querySelectorAll("[data-figure]")) {
    const [window, name] = cell.dataset.figure.split(".");
    cell.textContent = format(name, (windows[window] || {})[name]);
  }
}

function drawHistogram(state) {
  const {bin_width: width, counts} = state.histogram;
  const decimals = width < 1 ? 2 : 0;
  histogram.data.labels = counts.map((_, i) => `${(i * width).toFixed(decimals)}–${((i + 1) * width).toFixed(decimals)}`);
  histogram.data.datasets[0].data = counts;
  histogram.update("none");
  document.getElementById("histogram-note").textContent = `${state.count.toLocaleString("en-US")} events, bins of ${width}`;
}

function drawOverTime(state) {
  const {seq, absolute_error: errors, rolling_mae: mae, rolling_window: window} = state.recent;
  overTime.data.datasets[0].data = seq.map((x, i) => ({x, y: errors[i]}));
  overTime.data.datasets[1].data = seq.map((x, i) => ({x, y: mae[i]}));
  overTime.data.datasets[1].label = `MAE, last ${window}`;
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
  drawFigures(state);
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

window.dashboard = {histogram, overTime};
setInterval(drawLastEvent, 1000);
connect();
