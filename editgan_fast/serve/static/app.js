// The editor page: plain JS over the service's /api/v1 API and its websocket edit stream.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const state = {
  info: null, session: null, socket: null, seq: 0, sentScales: {}, shownSeq: 0,
  labels: null, base: null, undo: [], colour: 1, erasing: false, painting: false, job: null, photoName: null,
};

// ------------------------------------------------------------------------------------------- helpers
async function call(method, path, body, isForm) {
  const options = { method };
  if (body !== undefined) {
    if (isForm) options.body = body;
    else { options.body = JSON.stringify(body); options.headers = { "content-type": "application/json" }; }
  }
  const response = await fetch(API + path, options);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.blob();
}

function showError(error) { $("error").textContent = error ? String(error.message || error) : ""; }

async function guarded(fn) {
  showError(null);
  try { await fn(); } catch (e) { showError(e); }
}

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error("could not decode an image from the server"));
    im.src = src;
  });
}

// ------------------------------------------------------------------------------------------- label map
const colourKey = (r, g, b) => (r << 16) | (g << 8) | b;

async function labelsFromPng(src) {
  // The server's palette PNG drawn into a canvas gives RGB colours: map them back to class ids.
  const im = await loadImage(src);
  const [h, w] = state.info.label_size;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(im, 0, 0);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const lookup = new Map(state.info.palette.map((c, i) => [colourKey(...c), i]));
  const labels = new Uint8Array(w * h);
  for (let i = 0; i < labels.length; i++) labels[i] = lookup.get(colourKey(rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2])) || 0;
  return labels;
}

function drawLabels() {
  const canvas = $("labels");
  const [h, w] = state.info.label_size;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  for (let i = 0; i < state.labels.length; i++) {
    const [r, g, b] = state.info.palette[state.labels[i]];
    image.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
}

function labelsPng() {
  // Palette colours, exact (no smoothing): the server reads an RGB PNG back into class ids.
  drawLabels();
  return $("labels").toDataURL("image/png");
}

function paintAt(event) {
  const canvas = $("labels");
  const rect = canvas.getBoundingClientRect();
  const [h, w] = state.info.label_size;
  const cx = Math.floor((event.clientX - rect.left) / rect.width * w);
  const cy = Math.floor((event.clientY - rect.top) / rect.height * h);
  const radius = Number($("brush").value) - 0.5;
  for (let y = Math.max(0, Math.floor(cy - radius)); y <= Math.min(h - 1, cy + radius); y++) {
    for (let x = Math.max(0, Math.floor(cx - radius)); x <= Math.min(w - 1, cx + radius); x++) {
      if ((x - cx) ** 2 + (y - cy) ** 2 <= radius * radius) {
        const i = y * w + x;
        state.labels[i] = state.erasing ? state.base[i] : state.colour;
      }
    }
  }
  drawLabels();
}

function setupPainting() {
  const canvas = $("labels");
  canvas.addEventListener("pointerdown", async (event) => {
    if (!state.labels) return;
    if (currentScalesNonZero()) { zeroSliders(); await showBase(); }  // paint edits of the unedited image
    state.undo.push(state.labels.slice());
    state.painting = true;
    canvas.setPointerCapture(event.pointerId);
    paintAt(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (state.painting) paintAt(event); });
  const stop = () => { state.painting = false; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("undo-paint").onclick = () => { if (state.undo.length) { state.labels = state.undo.pop(); drawLabels(); } };
  $("reset-paint").onclick = () => { state.undo.push(state.labels.slice()); state.labels = state.base.slice(); drawLabels(); };
  $("eraser").onclick = () => { state.erasing = !state.erasing; $("eraser").classList.toggle("active", state.erasing); };
}

const className = (c) => (state.info.class_names ? state.info.class_names[c] : `class ${c}`);

function buildPalette() {
  const box = $("palette");
  box.innerHTML = "";
  const name = document.createElement("small");
  name.id = "brush-name";
  state.info.palette.forEach(([r, g, b], c) => {
    const swatch = document.createElement("div");
    swatch.className = "swatch" + (c === state.colour ? " active" : "");
    swatch.style.background = `rgb(${r},${g},${b})`;
    swatch.title = `${c}: ${className(c)}`;
    swatch.dataset.cls = c;
    swatch.onclick = () => {
      state.colour = c; state.erasing = false;
      $("eraser").classList.remove("active");
      box.querySelectorAll(".swatch").forEach((s) => s.classList.toggle("active", Number(s.dataset.cls) === c));
      name.textContent = className(c);
    };
    box.appendChild(swatch);
  });
  name.textContent = className(state.colour);
  box.appendChild(name);
}

// ------------------------------------------------------------------------------------------- session and stream
async function showBase() {
  const frame = (await call("POST", `/sessions/${state.session.id}/apply`, { scales: {} })).frames[0];
  await showFrame(frame, {}, true);
}

async function showFrame(frame, scales, resetPainting) {
  const image = $("image");
  image.src = "data:image/png;base64," + frame.image;
  image.dataset.scales = JSON.stringify(scales);
  image.dataset.labelled = frame.labels ? "1" : "0";
  if (!frame.labels) return;  // an image-only frame (slider moving): the label map follows when it settles
  const labels = await labelsFromPng("data:image/png;base64," + frame.labels);
  if (resetPainting || !state.undo.length) {
    state.labels = labels;
    if (resetPainting) { state.base = labels.slice(); state.undo = []; }
    drawLabels();
  }
}

async function useSession(session) {
  if (state.socket) state.socket.close();
  state.session = session;
  $("paste-row").hidden = !session.photo;
  $("composite-box").hidden = true;
  zeroSliders();
  await showBase();
  openStream();
}

function openStream() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${API}/sessions/${state.session.id}/stream`;
  const socket = new WebSocket(url);
  state.socket = socket;
  socket.onopen = () => { $("status").textContent = "live"; sendScales(); };
  socket.onclose = () => { if (state.socket === socket) $("status").textContent = "stream closed"; };
  socket.onmessage = async (message) => {
    const frame = JSON.parse(message.data);
    if (frame.error) { showError(frame.message); return; }
    if (frame.seq < state.shownSeq) return;  // an older frame overtaken by a newer one
    state.shownSeq = frame.seq;
    await showFrame(frame, state.sentScales[frame.seq] || {}, false);
    delete state.sentScales[frame.seq];
    $("status").textContent = `live · ${frame.server_ms.toFixed(0)} ms · batch ${frame.batch_rows}`;
  };
}

function currentScales() {
  const scales = {};
  document.querySelectorAll("#vectors input[type=range]").forEach((s) => { scales[s.dataset.name] = Number(s.value); });
  return scales;
}

const currentScalesNonZero = () => Object.values(currentScales()).some((v) => v !== 0);

function sendScales(labels = true) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  const scales = currentScales();
  state.seq += 1;
  state.sentScales[state.seq] = scales;
  state.socket.send(JSON.stringify({ seq: state.seq, scales, labels }));
}

async function roll() {
  const old = state.session;
  const session = await call("POST", "/sessions", { seed: Math.floor(Math.random() * 2 ** 31) });
  await useSession(session);
  if (old) call("DELETE", `/sessions/${old.id}`).catch(() => {});
}

// ------------------------------------------------------------------------------------------- vectors
async function refreshVectors() {
  const keep = currentScales();
  const { vectors } = await call("GET", "/vectors");
  const box = $("vectors");
  box.innerHTML = "";
  for (const v of vectors) {
    const row = document.createElement("div");
    row.className = "vector";
    row.innerHTML = `<div class="row"><b></b><small>classes ${v.classes.join(", ") || "-"}</small></div>
      <div class="row"><input type="range" min="-3" max="3" step="0.05" value="0"><span class="value">0</span>
      <a class="download">download</a><button class="delete">delete</button></div>`;
    row.querySelector("b").textContent = v.name;
    const slider = row.querySelector("input");
    slider.dataset.name = v.name;
    slider.value = keep[v.name] || 0;
    row.querySelector(".value").textContent = Number(slider.value).toFixed(2);
    slider.addEventListener("input", () => {
      row.querySelector(".value").textContent = Number(slider.value).toFixed(2);
      sendScales(false);  // image-only frames while dragging: the segmentation is most of a frame's cost
    });
    slider.addEventListener("change", () => sendScales(true));
    const link = row.querySelector(".download");
    link.href = `${API}/vectors/${encodeURIComponent(v.name)}`;
    link.download = `${v.name}.npz`;
    row.querySelector(".delete").onclick = () => guarded(async () => {
      await call("DELETE", `/vectors/${encodeURIComponent(v.name)}`);
      await refreshVectors();
      sendScales();
    });
    box.appendChild(row);
  }
}

function zeroSliders() {
  document.querySelectorAll("#vectors input[type=range]").forEach((s) => {
    s.value = 0;
    s.parentElement.querySelector(".value").textContent = "0.00";
  });
}

async function uploadVector() {
  const file = $("vector-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  if ($("vector-classes").value) form.append("classes", $("vector-classes").value);
  try { await call("POST", "/vectors", form, true); } finally { $("vector-file").value = ""; }
  await refreshVectors();
}

// ------------------------------------------------------------------------------------------- jobs
async function runJob(job) {
  // Poll the job's events: progress bar, loss, preview frame; resolves with the finished job.
  state.job = job.id;
  $("cancel").hidden = false;
  let after = -1;
  try {
    for (;;) {
      const now = await call("GET", `/jobs/${job.id}?after=${after}`);
      for (const event of now.events) {
        after = event.index;
        $("progress").value = now.steps ? event.step / now.steps : 1;
        const loss = event.terms.total !== undefined ? event.terms.total : event.terms.reconstruction;
        $("job-status").textContent = `${now.kind}: step ${event.step}/${now.steps}` + (loss !== undefined ? ` · loss ${loss.toFixed(4)}` : "");
        if (event.preview) $("preview").src = "data:image/png;base64," + event.preview;
      }
      if (now.state === "done") { $("progress").value = 1; return now; }
      if (now.state === "failed") throw new Error(now.error.message);
      if (now.state === "cancelled") { $("job-status").textContent = `${now.kind}: cancelled`; return null; }
      await new Promise((r) => setTimeout(r, 150));
    }
  } finally {
    state.job = null;
    $("cancel").hidden = true;
  }
}

async function learn() {
  const job = await call("POST", `/sessions/${state.session.id}/learn`, {
    labels_png: labelsPng(), name: $("vector-name").value, steps: Number($("learn-steps").value),
  });
  const done = await runJob(job);
  if (!done) return;
  state.undo = [];  // the painting is learned: frames show their own label maps again
  await refreshVectors();
  $("job-status").textContent = `learned ${done.result.vector.name}`;
  const next = $("vector-name").value.match(/^(.*?)(\d+)$/);
  if (next) $("vector-name").value = next[1] + (Number(next[2]) + 1);
}

async function refine() {
  const scales = Object.fromEntries(Object.entries(currentScales()).filter(([, v]) => v !== 0));
  const job = await call("POST", `/sessions/${state.session.id}/refine`, { scales, steps: Number($("refine-steps").value) });
  const done = await runJob(job);
  if (done) await useSession(done.result.session);  // the refined latent holds the edit: sliders back to 0
}

// ------------------------------------------------------------------------------------------- photo: crop, embed, paste back
const crop = { image: null, file: null, scale: 1, box: [0, 0, 0], drag: null };

function drawCrop() {
  const canvas = $("crop-canvas");
  const ctx = canvas.getContext("2d");
  ctx.drawImage(crop.image, 0, 0, canvas.width, canvas.height);
  const [x, y, side] = crop.box.map((v) => v * crop.scale);
  ctx.fillStyle = "#0008";
  ctx.fillRect(0, 0, canvas.width, y); ctx.fillRect(0, y + side, canvas.width, canvas.height - y - side);
  ctx.fillRect(0, y, x, side); ctx.fillRect(x + side, y, canvas.width - x - side, side);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.strokeRect(x, y, side, side);
}

function clampBox(x, y, side) {
  const w = crop.image.naturalWidth, h = crop.image.naturalHeight;
  side = Math.max(8, Math.min(side, w, h));
  return [Math.round(Math.max(0, Math.min(x, w - side))), Math.round(Math.max(0, Math.min(y, h - side))), Math.round(side)];
}

async function openCrop() {
  const file = $("photo-file").files[0];
  if (!file) return;
  crop.file = file;
  crop.image = await loadImage(URL.createObjectURL(file));
  const w = crop.image.naturalWidth, h = crop.image.naturalHeight;
  crop.scale = Math.min(1, 480 / Math.max(w, h));
  const canvas = $("crop-canvas");
  canvas.width = Math.round(w * crop.scale); canvas.height = Math.round(h * crop.scale);
  const side = Math.min(w, h);
  crop.box = clampBox((w - side) / 2, (h - side) / 2, side);
  $("crop-size").max = side; $("crop-size").value = side;
  drawCrop();
  $("crop-dialog").showModal();
}

function setupCrop() {
  const canvas = $("crop-canvas");
  canvas.addEventListener("pointerdown", (e) => { crop.drag = [e.clientX, e.clientY, ...crop.box]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!crop.drag) return;
    const [sx, sy, x, y, side] = crop.drag;
    crop.box = clampBox(x + (e.clientX - sx) / crop.scale, y + (e.clientY - sy) / crop.scale, side);
    drawCrop();
  });
  canvas.addEventListener("pointerup", () => { crop.drag = null; });
  $("crop-size").addEventListener("input", () => {
    const [x, y, side] = crop.box, next = Number($("crop-size").value);
    crop.box = clampBox(x + (side - next) / 2, y + (side - next) / 2, next);
    drawCrop();
  });
  $("crop-cancel").onclick = () => { $("crop-dialog").close(); $("photo-file").value = ""; };
  $("embed").onclick = () => guarded(async () => {
    $("crop-dialog").close();
    const form = new FormData();
    form.append("file", crop.file);
    form.append("box", crop.box.join(","));
    form.append("steps", $("embed-steps").value);
    $("photo-file").value = "";
    const done = await runJob(await call("POST", "/sessions/photo", form, true));
    if (done) await useSession(done.result.session);
  });
}

async function pasteBack() {
  const blob = await call("POST", `/sessions/${state.session.id}/composite.png`, { scales: currentScales() });
  const url = URL.createObjectURL(blob);
  $("composite").src = url;
  $("composite-download").href = url;
  $("composite-box").hidden = false;
}

// ------------------------------------------------------------------------------------------- start
async function start() {
  state.info = await call("GET", "/info");
  const [h, w] = state.info.label_size;
  $("labels").width = w; $("labels").height = h;
  buildPalette();
  setupPainting();
  setupCrop();
  $("roll").onclick = () => guarded(roll);
  $("learn").onclick = () => guarded(learn);
  $("cancel").onclick = () => guarded(() => state.job && call("DELETE", `/jobs/${state.job}`));
  $("refine").onclick = () => guarded(refine);
  $("undo-refine").onclick = () => guarded(async () => useSession(await call("POST", `/sessions/${state.session.id}/undo`)));
  $("zero").onclick = () => { zeroSliders(); sendScales(); };
  $("vector-file").onchange = () => guarded(uploadVector);
  $("photo-file").onchange = () => guarded(openCrop);
  $("paste").onclick = () => guarded(pasteBack);
  $("download-image").onclick = () => guarded(async () => saveBlob(
    await call("POST", `/sessions/${state.session.id}/result.png`, { scales: currentScales() }), "edited.png"));
  $("download-latent").onclick = () => guarded(async () => saveBlob(
    await call("GET", `/sessions/${state.session.id}/latent.npy`), "latent.npy"));
  await refreshVectors();
  await roll();
  document.body.dataset.ready = "1";
}

guarded(start);
