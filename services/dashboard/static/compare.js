// lfi dashboard: the jobs page's comparison chart (uses dashboard.js's api, plot, state, valScore and
// heldoutScore; loaded before it, called only once the page runs).
"use strict";

// With nothing ticked, compare the jobs queued together most recently: the newest job's group (the demo
// queues its ViT and I-ViT as one), or, for a job without a group, the newest jobs on its dataset.
const DEFAULT_COMPARED = 4;
function defaultComparison(jobs) {
  if (!jobs.length) return { ids: [], what: "" };
  const spec = jobs[0].spec || {};  // GET /jobs lists the newest first
  if (spec.group) {
    const ids = jobs.filter((j) => (j.spec || {}).group === spec.group).map((j) => j.id);
    return { ids: ids.slice(0, 2 * DEFAULT_COMPARED), what: `group ${spec.group}` };
  }
  const same = jobs.filter((j) => (j.spec || {}).dataset === spec.dataset && (j.spec || {}).task === spec.task);
  return { ids: same.slice(0, DEFAULT_COMPARED).map((j) => j.id), what: `the latest jobs on ${spec.dataset}` };
}

const STUDENTS = { vit: "ViT", ivit: "I-ViT", detr: "DETR", idetr: "I-DETR" };
function jobLabel(spec) {
  const parts = [STUDENTS[spec.student] || spec.student];
  if (spec.ablation && spec.ablation !== "none") parts.push(spec.ablation);
  if (spec.init && spec.init !== "scratch") parts.push(`from ${spec.init}`);
  return parts.join(" ");
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const DASHES = ["dot", "dash", "dashdot", "longdash"];

async function refreshCompare() {
  if (!state.key) return;
  if (!state.jobs) await refreshJobs();
  const ticked = state.compare.size > 0;
  const chosen = ticked ? { ids: [...state.compare], what: "" } : defaultComparison(state.jobs || []);
  document.getElementById("compare-what").textContent = ticked
    ? `Comparing the ${chosen.ids.length} ticked job(s); untick all to see the jobs queued together most recently.`
    : chosen.ids.length ? `Comparing ${chosen.what}, queued most recently (tick jobs to choose others).` : "No jobs yet.";
  const known = new Map((state.jobs || []).map((j) => [j.id, j]));
  const loaded = await Promise.all(chosen.ids.map(async (id) =>
    [id, known.get(id) || await api(`/jobs/${id}`), await api(`/jobs/${id}/metrics`)]));
  const traces = [];
  loaded.forEach(([id, job, metrics], n) => {
    const name = `${jobLabel(job.spec)} · ${id.slice(0, 6)}`;
    const line = { color: PALETTE[n % PALETTE.length] };
    const x = metrics.epochs.map((e) => e.epoch);
    traces.push({ x, y: metrics.epochs.map(valScore), name: `${name} val`, legendgroup: id, mode: "lines+markers", line });
    const domains = [...new Set(metrics.epochs.flatMap((e) => Object.keys(e.heldout_top1 || e.heldout_map || {})))].sort();
    domains.forEach((d, k) => traces.push({ x, y: metrics.epochs.map((e) => heldoutScore(e, d)), name: `${name} ${d}`,
                                           legendgroup: id, mode: "lines+markers",
                                           line: Object.assign({ dash: DASHES[k % DASHES.length] }, line) }));
  });
  plot("compare", traces, { title: "top-1 (classification) or COCO AP (detection) per epoch: val solid, held-out dotted",
                            xaxis: { title: "epoch", dtick: 1 }, yaxis: { range: [0, 1] }, height: 340 });
}
