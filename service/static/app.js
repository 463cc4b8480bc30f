// The nanoinspect page: a client of the JSON API like any other. No build step, no deps.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, base: null, heat: null, mask: null, result: null, model: null, seq: 0, touched: new Set() };
const sliders = { alpha: "alpha", pixel: "pixel_threshold", image: "image_threshold" };

function headers() {
  const key = sessionStorage.getItem("nanoinspect-key");
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (res.status === 401) $("key-row").hidden = false;
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try { const body = await res.json(); message = `${body.error.code}: ${body.error.message}`; } catch (_) {}
    throw new Error(message);
  }
  return res;
}

function status(text, kind = "") {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

const fmt = (x, digits = 4) => Number(x).toPrecision(digits);

async function loadModel() {
  try {
    const m = await (await api("/v1/model")).json();
    state.model = m;
    $("model").textContent = `${m.name} · ${m.provider.replace("ExecutionProvider", "")} · ${m.sha256.slice(0, 12)}`;
    for (const [id, key] of [["pixel", "pixel_threshold"], ["image", "image_threshold"]]) {
      $(id).min = 0;
      $(id).max = Math.max(2 * m[key], 1e-6);
      $(id).step = $(id).max / 1000;
    }
    resetSliders();
  } catch (e) {
    $("model").textContent = `model unavailable (${e.message})`;
  }
}

function resetSliders() {
  const m = state.model;
  if (!m) return;
  $("alpha").value = m.alpha;
  $("pixel").value = m.pixel_threshold;
  $("image").value = m.image_threshold;
  showSliderValues();
}

function showSliderValues() {
  for (const id of ["alpha", "pixel", "image", "opacity"]) $(`${id}-out`).textContent = fmt($(id).value, 4);
}

// Decoded here, not fetched as a data: URL: the Content-Security-Policy allows connect-src 'self' only.
function bitmapFromBase64(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type: "image/png" }));
}

// The browser shows the upload itself when it can (PNG, JPEG, GIF...); TIFF and anything whose
// decoded size differs (EXIF, crops) is rendered by the server: the overlay route, layers off.
async function baseImage(result) {
  try {
    const bmp = await createImageBitmap(state.file);
    if (bmp.width === result.width && bmp.height === result.height) return bmp;
  } catch (_) { /* not displayable here */ }
  const form = new FormData();
  form.append("file", state.file);
  const res = await api("/v1/score/overlay?heatmap=false&contours=false&boxes=false", { method: "POST", body: form });
  return createImageBitmap(await res.blob());
}

function maskLayer(bitmap) {
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const g = c.getContext("2d");
  g.drawImage(bitmap, 0, 0);
  const { width: w, height: h } = c;
  const px = g.getImageData(0, 0, w, h);
  const on = (x, y) => x >= 0 && y >= 0 && x < w && y < h && px.data[4 * (y * w + x)] > 127;
  const out = g.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!on(x, y)) continue;
      const edge = !on(x - 1, y) || !on(x + 1, y) || !on(x, y - 1) || !on(x, y + 1);
      out.data.set([255, 48, 48, edge ? 255 : 70], 4 * (y * w + x)); // outline, light fill
    }
  }
  g.putImageData(out, 0, 0);
  return c;
}

function draw() {
  const r = state.result;
  if (!r || !state.base) return;
  const canvas = $("view");
  canvas.width = r.width;
  canvas.height = r.height;
  const g = canvas.getContext("2d");
  g.drawImage(state.base, 0, 0, r.width, r.height);
  if ($("show-heatmap").checked && state.heat) {
    g.globalAlpha = Number($("opacity").value);
    g.drawImage(state.heat, 0, 0);
    g.globalAlpha = 1;
  }
  if ($("show-mask").checked && state.mask) g.drawImage(state.mask, 0, 0);
  if ($("show-boxes").checked) {
    g.strokeStyle = "#00e5ff";
    g.lineWidth = Math.max(1, Math.min(r.width, r.height) / 256);
    for (const reg of r.regions) g.strokeRect(reg.bbox[0] + 0.5, reg.bbox[1] + 0.5, reg.bbox[2] - 1, reg.bbox[3] - 1);
  }
}

function showResult(r) {
  $("result").hidden = false;
  $("score").textContent = fmt(r.score, 6);
  $("verdict").textContent = r.is_anomalous ? "ANOMALOUS" : "normal";
  $("verdict").className = `badge ${r.is_anomalous ? "bad" : "good"}`;
  $("reason").textContent = r.reason;
  for (const [id, key] of [["pixel", "pixel_threshold"], ["image", "image_threshold"]]) {
    if (!state.touched.has(id)) $(id).value = r[key]; // the thresholds this answer used
  }
  showSliderValues();
  $("r-image").textContent = fmt(r.image_threshold, 6);
  $("r-pixel").textContent = fmt(r.pixel_threshold, 6);
  $("r-alpha").textContent = fmt(r.alpha, 3);
  $("r-size").textContent = `${r.width} × ${r.height} px, ${r.format} ${r.bit_depth}-bit`;
  $("r-area").textContent = `${(100 * r.anomalous_area_fraction).toFixed(2)} %`;
  const t = r.timings;
  $("r-timings").textContent = `decode ${t.decode.toFixed(1)}, queue ${t.queue.toFixed(1)}, inference ${t.inference.toFixed(1)} (batch ${t.batch_size}), post ${t.post.toFixed(1)}`;
  $("notes").replaceChildren(...r.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
  $("regions-count").textContent = r.regions_total > r.regions.length ? `(${r.regions.length} of ${r.regions_total})` : `(${r.regions_total})`;
  const rows = r.regions.map((reg, i) => {
    const tr = document.createElement("tr");
    for (const v of [i + 1, reg.bbox.join(", "), reg.area, fmt(reg.peak_score), fmt(reg.mean_score), reg.counts ? "yes" : "no"]) {
      tr.appendChild(Object.assign(document.createElement("td"), { textContent: v }));
    }
    return tr;
  });
  $("regions").tBodies[0].replaceChildren(...rows);
}

// A failed request leaves no earlier picture or verdict behind to be read as its answer.
function clearResult() {
  Object.assign(state, { result: null, heat: null, mask: null, base: null });
  $("result").hidden = true;
  $("view").width = 0;
  $("view").height = 0;
}

async function score(newFile = false) {
  if (!state.file) return;
  const seq = ++state.seq;
  document.body.dataset.state = "scoring";
  status(`Scoring ${state.file.name}…`);
  const params = new URLSearchParams({ mask_format: "png", heatmap: "true" });
  // Only what the user moved: the server picks the thresholds calibrated for an alpha.
  for (const [id, key] of Object.entries(sliders)) if (state.touched.has(id)) params.set(key, $(id).value);
  const form = new FormData();
  form.append("file", state.file);
  try {
    const r = await (await api(`/v1/score?${params}`, { method: "POST", body: form })).json();
    const [heat, maskBmp] = await Promise.all([
      r.heatmap ? bitmapFromBase64(r.heatmap.data) : null,
      r.mask ? bitmapFromBase64(r.mask.data) : null,
    ]);
    const base = newFile || !state.base ? await baseImage(r) : state.base;
    if (seq !== state.seq) return; // a newer request superseded this one
    Object.assign(state, { result: r, heat, mask: maskBmp ? maskLayer(maskBmp) : null, base });
    showResult(r);
    draw();
    status(`${state.file.name}: ${r.is_anomalous ? "anomalous" : "normal"} (model ${r.model.name})`, r.is_anomalous ? "bad" : "good");
    document.body.dataset.state = "scored";
  } catch (e) {
    if (seq !== state.seq) return;
    clearResult();
    status(e.message, "error");
    document.body.dataset.state = "error";
  }
}

let timer = 0;
function rescoreSoon() {
  showSliderValues();
  clearTimeout(timer);
  timer = setTimeout(() => score(false), 250);
}

function choose(file) {
  if (!file) return;
  state.file = file;
  clearResult();
  score(true);
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
  for (const id of Object.keys(sliders)) $(id).addEventListener("input", () => { state.touched.add(id); rescoreSoon(); });
  $("opacity").addEventListener("input", () => { showSliderValues(); draw(); });
  for (const id of ["show-heatmap", "show-mask", "show-boxes"]) $(id).addEventListener("change", draw);
  $("reset").addEventListener("click", () => { state.touched.clear(); resetSliders(); score(false); });
  $("key").addEventListener("change", (e) => { sessionStorage.setItem("nanoinspect-key", e.target.value); loadModel(); score(true); });
  showSliderValues();
  loadModel();
});
