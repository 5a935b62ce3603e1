"""The two HTML pages: shells that load plotly (from the installed package) and dashboard.js.

No data is rendered on the server: the pages read the REST API with the team key the user enters,
so a page is the same for everyone and a key never sits in HTML or a cookie.
"""

from __future__ import annotations

import html

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{title}</title><link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/plotly.min.js"></script><script src="/static/heat.js" defer></script>
<script src="/static/compare.js" defer></script><script src="/static/dashboard.js" defer></script></head>
<body data-page="{page}" data-job="{job}">
<header><a href="/" class="brand">lfi</a><span class="sub">{title}</span>
<form id="key-form" autocomplete="off"><input id="key" type="password" placeholder="team key" aria-label="team key">
<button type="submit">Use key</button><span id="whoami"></span></form></header>
<div id="notice" role="status"></div>
"""

_JOBS = """<main>
<section class="card"><h2>Queue a training job</h2>
<form id="job-form" novalidate>
 <label>dataset <input name="dataset" required placeholder="synth" title="folder below LFI_DATA_ROOT"></label>
 <label>task <select name="task"><option>classification</option><option>detection</option></select></label>
 <label>model <select name="model"><option>vit-tiny</option><option>vit-s16</option><option>vit-b16</option>
  <option>vit-l16</option><option>cdetr-tiny</option><option>detr-tiny</option><option>cdetr-r50</option>
  <option>detr-r50</option></select></label>
 <label>student <select name="student"><option value="ivit">I-ViT</option>
  <option value="vit">ViT</option><option value="idetr">I-DETR</option>
  <option value="detr">DETR</option></select></label>
 <label>ablation <select name="ablation"><option>none</option><option>no-constraint</option>
  <option>constraint-on-original</option><option>no-gate</option></select></label>
 <label>init <input name="init" value="scratch" list="init-choices"
  title="scratch, a shipped backbone (builtin:...), or a pretrained ViT hub id or folder"></label>
 <datalist id="init-choices"><option value="scratch"><option value="builtin:vit-tiny-synth"></datalist>
 <label>epochs <input name="epochs" type="number" value="5"></label>
 <label>batch size <input name="batch_size" type="number" value="32"></label>
 <label>learning rate <input name="lr" value="0.0005"></label>
 <label>seed <input name="seed" type="number" value="0"></label>
 <label>held-out domains <input name="eval_domains" placeholder="shifted"></label>
 <label>checkpoint every <input name="checkpoint_every" type="number" value="50"></label>
 <label>teacher prompt <input name="prompt" placeholder="default"></label>
 <label>group <input name="group" placeholder="optional"
  title="a label shared by jobs queued together: the chart below compares the latest group"></label>
 <details id="recipe" class="recipe"><summary>recipe (defaults; the paper's: 50 epochs from a pretrained init)</summary>
 <div class="recipe-fields">
 <label>weight decay <input name="weight_decay" value="0.05"></label>
 <label>warmup steps <input name="warmup_steps" type="number" placeholder="5% of all steps"></label>
 <label>align weight <input name="align_weight" value="1.0"></label>
 <label>aligned layers <input name="align_layers" placeholder="all, or e.g. 0,3"></label>
 <label>aligned rows <select name="align_rows"><option value="cls">CLS row</option>
  <option value="mean">mean of patch rows</option><option value="each">each patch row</option></select></label>
 <label>aligned heads <select name="align_heads"><option>mean</option><option>each</option></select></label>
 <label>KL direction <select name="kl_direction"><option>target-first</option>
  <option value="model-first">model-first (paper)</option></select></label>
 <label>KL smoothing <input name="kl_smoothing" value="0"></label>
 <label>min crop mass <input name="min_crop_mass" value="0.25"></label>
 <label>pretrained layers <select name="freeze"><option value="true">frozen (paper)</option>
  <option value="false">fine-tuned</option></select></label>
 </div></details>
 <button type="submit" id="queue">Queue</button>
</form><div id="form-errors" class="errors"></div></section>
<section class="card"><h2>Jobs</h2><table id="jobs"><thead><tr><th></th><th>job</th><th>team</th><th>group</th>
<th>model</th><th>status</th><th>progress</th><th>ETA</th><th>val top-1 / AP</th><th></th></tr></thead>
<tbody></tbody></table>
<p class="hint" id="compare-what"></p><div id="compare" class="chart"></div></section>
<section class="card"><h2>Teacher</h2><div id="teacher-summary"></div>
<div class="row"><div id="teacher-queue" class="chart half"></div>
<div id="teacher-usage" class="chart half"></div></div>
<div class="row"><div id="teacher-batches" class="chart half"></div>
<div id="teacher-latency" class="chart half"></div></div>
</section></main></body></html>"""

_JOB = """<main>
<section class="card"><h2>Job <code id="job-id">{job}</code> <span id="job-status" class="status"></span></h2>
<div class="progress"><div id="job-progress" class="bar"></div></div><div id="job-summary"></div>
<button id="cancel" hidden>Cancel</button><div id="job-error" class="errors"></div></section>
<section class="card"><h2>Learning</h2><div class="row"><div id="loss" class="chart half"></div>
<div id="top1" class="chart half"></div></div>
<div id="map-counts" class="chart"></div></section>
<section class="card"><h2>Gates per layer (g·C_AGT + g·C_VFM)</h2><div id="gates" class="chart"></div></section>
<section class="card"><h2>Where it looks: C_VLM, C_AGT, C_VFM (CLS row)</h2>
<p class="hint">Each map over its image: below a tenth of the scale's top nothing is drawn, above it colour and
opacity grow with the value. The scale beside each map runs from 0 to its peak (at least 3× its mean, so a flat
map, which singles nothing out, stays faint).</p>
<label>layer <input id="layer" type="range" min="0" max="0" value="0"> <span id="layer-value">0</span></label>
<div id="samples"></div></section></main></body></html>"""


def jobs_page() -> str:
    return _HEAD.format(title="jobs", page="jobs", job="") + _JOBS


def job_page(job_id: str) -> str:
    safe = html.escape(job_id, quote=True)
    return _HEAD.format(title=f"job {safe}", page="job", job=safe) + _JOB.format(job=safe)
