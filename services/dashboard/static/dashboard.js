// lfi dashboard: polls the REST API with the team key kept in this tab's sessionStorage.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const state = { key: sessionStorage.getItem("lfi-key") || "", compare: new Set(), timers: [] };

function notice(text) { document.getElementById("notice").textContent = text || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.key }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = (body && body.error) || { code: "http_" + response.status, message: response.statusText };
    const failure = new Error(error.message);
    failure.detail = error;
    failure.status = response.status;
    throw failure;
  }
  return body;
}

function fmtPct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
function fmtEta(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.appendChild(child);
  return node;
}
const LAYOUT = { margin: { t: 30, r: 10, b: 40, l: 50 }, legend: { orientation: "h" }, height: 280 };
function plot(id, traces, layout) {
  const node = document.getElementById(id);
  if (!node) return;
  const full = Object.assign({}, LAYOUT, layout);
  if (typeof full.title === "string") full.title = { text: full.title, font: { size: 13 } };
  for (const axis of ["xaxis", "yaxis"]) {
    if (full[axis] && typeof full[axis].title === "string") full[axis] = Object.assign({}, full[axis], { title: { text: full[axis].title } });
  }
  Plotly.react(node, traces, full, { displayModeBar: false, responsive: true });
}

// ---- key ------------------------------------------------------------------------------------------
async function useKey(key) {
  state.key = key;
  try {
    const me = await api("/me");
    sessionStorage.setItem("lfi-key", key);
    document.getElementById("whoami").textContent = me.team + (me.admin ? " (admin)" : "");
    notice("");
    return true;
  } catch (e) {
    sessionStorage.removeItem("lfi-key");
    state.key = "";
    document.getElementById("whoami").textContent = "";
    notice("That key was refused: " + e.message);
    return false;
  }
}

function every(ms, fn) {
  const run = async () => { try { await fn(); } catch (e) { notice(e.message); } };
  run();
  state.timers.push(setInterval(run, ms));
}

// ---- jobs page ------------------------------------------------------------------------------------
function specFromForm(form) {
  const data = new FormData(form);
  const spec = {};
  for (const [name, raw] of data.entries()) {
    const value = String(raw).trim();
    if (value === "") continue;
    if (["epochs", "batch_size", "seed", "checkpoint_every", "warmup_steps"].includes(name)) spec[name] = Number(value);
    else if (["lr", "weight_decay", "align_weight", "kl_smoothing", "min_crop_mass"].includes(name)) spec[name] = Number(value);
    else if (name === "eval_domains") spec[name] = value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (name === "align_layers") spec[name] = value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    else spec[name] = value;
  }
  return spec;
}

async function queueJob(event) {
  event.preventDefault();
  const form = event.target;
  const errors = document.getElementById("form-errors");
  form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  errors.textContent = "";
  if (!state.key) { errors.textContent = "Enter your team key first."; return; }
  const send = (path) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                     body: JSON.stringify(specFromForm(form)) });
  const showFields = (fields, message) => {
    const lines = [];
    for (const [name, text] of Object.entries(fields || {})) {
      const input = form.querySelector(`[name="${name.split(".")[0]}"]`);
      if (input) input.classList.add("invalid");
      if (input && input.closest("details")) input.closest("details").open = true;  // show the recipe field at fault
      lines.push(`${name}: ${text}`);
    }
    errors.textContent = lines.length ? lines.join("\n") : message;
  };
  try {
    // the server checks the spec first (a dry run answers 200 either way), then it is queued
    const check = await send("/jobs/validate");
    if (!check.valid) { showFields(check.fields, check.message); return; }
    const record = await send("/jobs");
    notice("queued job " + record.id);
    await refreshJobs();
  } catch (e) {
    showFields(e.detail && e.detail.fields, e.message);
  }
}

async function cancel(jobId) {
  try { await api(`/jobs/${jobId}/cancel`, { method: "POST" }); notice("cancel requested for " + jobId); }
  catch (e) { notice(e.message); }
}

function jobRow(job) {
  const spec = job.spec || {};
  const check = el("input", { type: "checkbox", "aria-label": "compare " + job.id });
  check.checked = state.compare.has(job.id);
  check.addEventListener("change", () => { check.checked ? state.compare.add(job.id) : state.compare.delete(job.id);
                                           refreshCompare(); });
  const bar = el("div", { class: "bar" });
  bar.style.width = (100 * (job.progress || 0)).toFixed(1) + "%";
  const actions = el("td");
  if (!TERMINAL.has(job.status)) {
    const button = el("button", { text: "Cancel", class: "cancel", "data-job": job.id });
    button.addEventListener("click", () => cancel(job.id));
    actions.appendChild(button);
  }
  const metrics = job.metrics || {};
  return el("tr", { "data-job": job.id, "data-status": job.status }, [
    el("td", {}, [check]),
    el("td", {}, [el("a", { href: `/jobs/${job.id}/view`, text: job.id })]),
    el("td", { text: job.team }),
    el("td", { text: spec.group || "" }),
    el("td", { text: `${spec.model || ""} ${spec.student || ""}${spec.ablation && spec.ablation !== "none" ? " " + spec.ablation : ""}` }),
    el("td", {}, [el("span", { class: "status " + job.status, text: job.status })]),
    el("td", {}, [el("div", { class: "progress", title: fmtPct(job.progress) }, [bar])]),
    el("td", { text: fmtEta(job.eta_s) }),
    el("td", { text: fmtPct(valScore(metrics)) }),
    actions,
  ]);
}

async function refreshJobs() {
  if (!state.key) return;
  const { jobs } = await api("/jobs");
  state.jobs = jobs;
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...jobs.map(jobRow));
}

async function refreshTeacher() {
  if (!state.key) return;
  let stats;
  try { stats = await api("/teacher/stats"); }
  catch (e) { document.getElementById("teacher-summary").textContent = "teacher: " + e.message; return; }
  const teams = Object.keys(stats.teams || {});
  const hit = stats.cache && stats.cache.hit_rate;
  document.getElementById("teacher-summary").textContent =
    `model ${stats.model.id} · cache hit rate ${fmtPct(hit)}${stats.cache.degraded ? " (degraded)" : ""} · ` +
    `GPU busy ${fmtPct(stats.gpu_busy_fraction)} · maps computed ${stats.engine_runs}`;
  plot("teacher-queue", [
    { type: "bar", name: "interactive", x: teams, y: teams.map((t) => stats.teams[t].queued.interactive) },
    { type: "bar", name: "bulk", x: teams, y: teams.map((t) => stats.teams[t].queued.bulk) },
  ], { title: "queue depth", barmode: "stack" });
  plot("teacher-usage", [
    { type: "bar", name: "maps today", x: teams, y: teams.map((t) => stats.teams[t].maps_today) },
    { type: "bar", name: "daily quota", x: teams, y: teams.map((t) => stats.teams[t].daily_quota) },
  ], { title: "usage against quota", yaxis: { type: "log" } });
  const recent = stats.batches.recent || [];
  plot("teacher-batches", [{ type: "histogram", x: recent.map((b) => b.size), name: "batch size" }],
       { title: "batch sizes (recent)" });
  plot("teacher-latency", [{ y: recent.map((b) => 1000 * b.seconds), mode: "lines", name: "batch ms" }],
       { title: "batch latency, ms (recent)" });
}

function startJobsPage() {
  document.getElementById("job-form").addEventListener("submit", queueJob);
  every(1000, refreshJobs);
  every(3000, refreshCompare);
  every(2000, refreshTeacher);
}

// A job's headline number: top-1 for classification, COCO AP for detection (its epochs carry val_map)
function valScore(metrics) {
  return metrics.val_map ? metrics.val_map.AP : metrics.val_top1;
}

function heldoutScore(epoch, domain) {
  if (epoch.heldout_map) return (epoch.heldout_map[domain] || {}).AP;
  return (epoch.heldout_top1 || {})[domain];
}

// ---- job page -------------------------------------------------------------------------------------
let samplesCache = null;

// One picture of a map: the map over its image (heat.js: low values leave the image untouched) and,
// beside it, its colour scale from 0 to the scale's top (the map's peak, unless the map is flat)
function mapFigure(image, values, grid, caption) {
  const canvas = el("canvas", { width: 128, height: 128 });
  const top = heatScale(values);
  const draw = () => drawHeat(canvas, image, values, grid, top);
  if (image && !image.complete) image.addEventListener("load", draw, { once: true }); else draw();
  const view = top > 0 ? el("div", { class: "map-view" }, [canvas, heatLegend(top, 128)]) : canvas;
  return el("figure", {}, [view, el("figcaption", { text: caption })]);
}

function drawBoxes(canvas, image, size, truth, predicted) {
  const ctx = canvas.getContext("2d");
  const scale = canvas.width / size;
  const draw = () => {
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    ctx.font = "10px sans-serif";
    for (const [boxes, colour] of [[truth, "#1db954"], [predicted, "#ff2d55"]]) {
      for (const b of boxes) {
        const [x, y, w, h] = b.box.map((v) => v * scale);
        ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.strokeRect(x, y, w, h);
        ctx.fillStyle = colour;
        ctx.fillText(b.score === undefined ? b.label : `${b.label} ${b.score.toFixed(2)}`, x + 1, Math.max(9, y - 1));
      }
    }
  };
  if (!image.complete) image.addEventListener("load", draw, { once: true }); else draw();
}

// Detection samples: the image with true (green) and predicted (red) boxes, then per true object its
// instance map from the teacher and, for I-DETR, the matched query's cross-attention (last decoder layer)
function renderDetections(data, box) {
  document.getElementById("layer").hidden = true;
  document.getElementById("layer-value").textContent = `epoch ${data.epoch}`;
  box.replaceChildren(...data.samples.map((s) => {
    const image = new Image();
    image.src = "data:image/png;base64," + s.image;
    const main = el("canvas", { width: 128, height: 128 });
    drawBoxes(main, image, s.size, s.truth, s.predicted);
    const figures = [el("figure", {}, [main, el("figcaption", { text: `${s.truth.length} true, ${s.predicted.length} found` })])];
    for (const object of s.truth) {
      for (const [title, values] of [["C_VLM", object.map], ["query attention", object.attention]]) {
        if (values === undefined) continue;
        figures.push(mapFigure(image, values, data.grid, `${object.label}: ${values ? title : title + " (none)"}`));
      }
    }
    return el("div", { class: "sample" }, figures);
  }));
}

function renderSamples() {
  const data = samplesCache;
  const box = document.getElementById("samples");
  if (!data || !data.samples.length) { box.textContent = "No sample maps yet (drawn at each epoch's end)."; return; }
  if (data.task === "detection") { renderDetections(data, box); return; }
  const slider = document.getElementById("layer");
  const layers = data.samples[0].vfm.length;
  slider.max = String(layers - 1);
  const layer = Math.min(Number(slider.value), layers - 1);
  document.getElementById("layer-value").textContent = `${layer} (epoch ${data.epoch + 0})`;
  box.replaceChildren(...data.samples.map((s) => {
    const image = new Image();
    image.src = "data:image/png;base64," + s.image;
    const panels = [["image", null], ["C_VLM", s.vlm], ["C_AGT", s.agt ? s.agt[layer] : null], ["C_VFM", s.vfm[layer]]];
    return el("div", { class: "sample" }, panels.map(([title, values]) => {
      const caption = title === "image" ? `${s.label} → ${s.predicted}` : (values ? title : title + " (none)");
      return mapFigure(image, values, data.grid, caption);
    }));
  }));
}

async function refreshJob(jobId) {
  if (!state.key) return;
  const job = await api(`/jobs/${jobId}`);
  const status = document.getElementById("job-status");
  status.textContent = job.status; status.className = "status " + job.status;
  document.getElementById("job-progress").style.width = (100 * (job.progress || 0)).toFixed(1) + "%";
  const spec = job.spec;
  document.getElementById("job-summary").textContent =
    `${spec.model} ${spec.student} (${spec.ablation}) on ${spec.dataset} · team ${job.team}` +
    (spec.group ? ` · group ${spec.group}` : "") + " · " +
    `epoch ${job.epoch || 0}/${spec.epochs} · step ${job.global_step || 0}/${job.total_steps || "?"} · ETA ${fmtEta(job.eta_s)}` +
    (job.starts > 1 ? ` · started ${job.starts} times (resumed)` : "") +
    (job.metrics && job.metrics.maps_degenerate ? ` · ${job.metrics.maps_degenerate} degenerate maps skipped in epoch ${job.metrics.epoch}` : "");
  document.getElementById("job-error").textContent = job.error || job.reason || "";
  const button = document.getElementById("cancel");
  button.hidden = TERMINAL.has(job.status);
  const metrics = await api(`/jobs/${jobId}/metrics`);
  const steps = metrics.steps;
  plot("loss", [
    { x: steps.map((s) => s.global_step), y: steps.map((s) => s.task_loss), name: "task loss", mode: "lines" },
    { x: steps.map((s) => s.global_step), y: steps.map((s) => s.align_loss), name: "alignment loss", mode: "lines" },
  ], { title: "loss per step", xaxis: { title: "step" } });
  const epochs = metrics.epochs;
  const x = epochs.map((e) => e.epoch);
  if (epochs.some((e) => e.val_map)) plotDetection(epochs, x); else plotTop1(epochs, x);
  plotMapCounts(epochs, x);
  const last = epochs.length ? epochs[epochs.length - 1] : null;
  if (last && last.gates && last.gates.some((g) => g)) {
    const layers = last.gates.map((_, i) => "layer " + i);
    const node = document.getElementById("gates");
    if (!node.data) node.textContent = "";  // the "no gates yet" note, written before the first epoch
    plot("gates", [
      { type: "bar", name: "g (C_AGT)", x: layers, y: last.gates.map((g) => (g ? g[0] : null)) },
      { type: "bar", name: "g (C_VFM)", x: layers, y: last.gates.map((g) => (g ? g[1] : null)) },
    ], { title: `mean gate per layer, epoch ${last.epoch}`, yaxis: { range: [0, 1] } });
  } else {
    document.getElementById("gates").textContent = "No gates in this model (plain ViT or no-gate ablation), or no epoch yet.";
  }
}

function plotTop1(epochs, x) {
  const top1 = [
    { x, y: epochs.map((e) => e.train_top1), name: "train", mode: "lines+markers" },
    { x, y: epochs.map((e) => e.val_top1), name: "validation", mode: "lines+markers" },
  ];
  const domains = new Set(epochs.flatMap((e) => Object.keys(e.heldout_top1 || {})));
  for (const d of domains) top1.push({ x, y: epochs.map((e) => (e.heldout_top1 || {})[d]), name: d, mode: "lines+markers" });
  plot("top1", top1, { title: "top-1", xaxis: { title: "epoch", dtick: 1 }, yaxis: { range: [0, 1] } });
}

// training images per epoch that added no alignment term, by reason (docs/method.md)
function plotMapCounts(epochs, x) {
  const reasons = [["maps_degenerate", "degenerate (teacher)"], ["maps_missing", "no map"], ["maps_weak_crop", "crop kept too little"]];
  plot("map-counts", reasons.map(([key, name]) => ({ type: "bar", name, x, y: epochs.map((e) => e[key] || 0) })),
       { title: "images without an alignment target per epoch", barmode: "stack", xaxis: { title: "epoch", dtick: 1 } });
}

// COCO AP and AP50 per epoch on the validation split and each held-out split (detection jobs)
function plotDetection(epochs, x) {
  const traces = [];
  const splits = [["validation", (e) => e.val_map]];
  const domains = new Set(epochs.flatMap((e) => Object.keys(e.heldout_map || {})));
  for (const d of domains) splits.push([d, (e) => (e.heldout_map || {})[d]]);
  for (const [name, pick] of splits) {
    traces.push({ x, y: epochs.map((e) => (pick(e) || {}).AP), name: `${name} AP`, mode: "lines+markers" });
    traces.push({ x, y: epochs.map((e) => (pick(e) || {}).AP50), name: `${name} AP50`, mode: "lines+markers",
                  line: { dash: "dot" } });
  }
  plot("top1", traces, { title: "COCO mAP", xaxis: { title: "epoch", dtick: 1 }, yaxis: { range: [0, 1] } });
}

async function refreshSamples(jobId) {
  if (!state.key) return;
  samplesCache = await api(`/jobs/${jobId}/samples`);
  renderSamples();
}

function startJobPage(jobId) {
  document.getElementById("cancel").addEventListener("click", () => cancel(jobId));
  document.getElementById("layer").addEventListener("input", renderSamples);
  every(1000, () => refreshJob(jobId));
  every(4000, () => refreshSamples(jobId));
}

// ---- start ----------------------------------------------------------------------------------------
async function start() {
  const page = document.body.dataset.page;
  const begin = () => (page === "jobs" ? startJobsPage() : startJobPage(document.body.dataset.job));
  document.getElementById("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("key").value.trim();
    if (key && (await useKey(key))) {
      state.timers.forEach(clearInterval);
      state.timers = [];
      begin();
    }
  });
  if (state.key && (await useKey(state.key))) begin();
  else notice("Enter your team key to see your team's jobs.");
}

start();
