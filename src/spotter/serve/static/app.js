// Spotter's page: plain JavaScript, no build step, no network beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], tab: "patches", patches: [], selected: null, tweets: [], camScale: 4 };
const TASK_OF_TAB = { patches: "histo", slide: "histo", tweets: "tweets" };
const WORD_SCALE = 1.5; // logits at full colour

function token() { return sessionStorage.getItem("spotter-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("token-box").hidden = false; throw new Error("an access token is needed"); }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = Array.isArray(body.detail)  // FastAPI's validation errors: where and what
        ? body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ") : String(body.detail);
    } catch (e) { /* not JSON */ }
    throw new Error(detail + " (HTTP " + response.status + ")");
  }
  return response;
}

function showError(err) { const box = $("error"); box.textContent = err ? String(err.message || err) : ""; box.hidden = !err; }
const pct = (p) => (100 * p).toFixed(1) + "%";

// Elements are built, never parsed from strings: names, error texts, tweets and keywords come from
// requests and files, so they go in as text only (an uploaded file's name must not run as markup).
function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);  // strings become text nodes
  return node;
}

// ------------------------------------------------------------------ models and tabs
function score(m) {
  const v = m.validation || {};
  if (m.task === "tweets") return v.f1 !== undefined ? "F1 " + v.f1.toFixed(3) : "";
  const auc = v.auc_tta !== undefined ? v.auc_tta : v.auc;
  return auc !== undefined ? "AUC " + auc.toFixed(3) + (v.auc_tta !== undefined ? " (TTA)" : "") : "";
}

async function loadModels() {
  try {
    const body = await (await api("/api/models")).json();
    state.models = body.models; state.camScale = body.cam_scale_logits; state.slides = body.slides;
    $("slide-missing").hidden = body.slides; $("slide-run").disabled = !body.slides;
    $("legend-top").textContent = state.camScale + " logits";
    $("token-box").hidden = true; showError(null); fillPicker();
  } catch (err) { showError(err); }
}

function fillPicker() {
  const task = TASK_OF_TAB[state.tab];
  const select = $("model"), previous = select.value;
  select.replaceChildren();
  for (const m of state.models.filter((m) => m.task === task)) {
    const option = new Option(m.name + " · " + m.kind + (score(m) ? " · validation " + score(m) : ""), m.name);
    select.add(option);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  select.disabled = !select.options.length;
  describeModel();
}

function currentModel() { return state.models.find((m) => m.name === $("model").value); }

function describeModel() {
  const m = currentModel();
  if (!m) { $("model-info").textContent = "no " + TASK_OF_TAB[state.tab] + " model loaded"; return; }
  const parts = ["threshold " + m.threshold.toFixed(3)];
  if (m.ensemble) parts.push("ensemble of " + m.members.join(", "));
  if (m.settings && m.settings.epochs) parts.push(m.settings.epochs + " epochs");
  if (!m.explanation) parts.push("no word shading for this model");
  $("model-info").textContent = parts.join(" · ");
}

function selectTab(name) {
  state.tab = name; showError(null);
  for (const t of ["patches", "slide", "tweets"]) {
    const tab = $("tab-" + t), on = t === name;
    tab.setAttribute("aria-selected", on); tab.tabIndex = on ? 0 : -1; $("panel-" + t).hidden = !on;
  }
  fillPicker();
}

document.querySelectorAll("[role=tab]").forEach((tab, i, tabs) => {
  tab.addEventListener("click", () => selectTab(tab.id.slice(4)));
  tab.addEventListener("keydown", (e) => {  // arrow keys move between tabs
    const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
    if (!step) return;
    const next = tabs[(i + step + tabs.length) % tabs.length]; next.focus(); selectTab(next.id.slice(4));
  });
});
$("model").addEventListener("change", describeModel);
$("token-save").addEventListener("click", () => { sessionStorage.setItem("spotter-token", $("token").value); loadModels(); });

// ------------------------------------------------------------------ patches
async function predictPatch(entry) {
  const form = new FormData();
  form.append("files", entry.file, entry.file.name);
  form.append("thumbnail", "true");
  form.append("tta", $("tta").checked ? "true" : "false");
  try {
    const body = await (await api("/api/histo/" + encodeURIComponent(entry.model) + "/predict", { method: "POST", body: form })).json();
    Object.assign(entry, body.results[0], { threshold: body.threshold, status: "done" });
  } catch (err) { entry.status = "error"; entry.error = err.message; }
}

async function addPatches(files) {
  const m = currentModel();
  if (!m) { showError("load a histology model first"); return; }
  showError(null);
  const start = state.patches.length;
  const added = [...files].map((file, i) => ({ file, name: file.name, order: start + i, model: m.name, status: "waiting" }));
  state.patches.push(...added);
  render();
  // Several requests at once: the server batches them into shared forward passes.
  let next = 0;
  const worker = async () => { while (next < added.length) { await predictPatch(added[next++]); renderSoon(); } };
  await Promise.all(Array.from({ length: 8 }, worker));
  render();
}

let pending = null;
function renderSoon() { if (!pending) pending = requestAnimationFrame(() => { pending = null; render(); }); }

function sorted() {
  const list = [...state.patches], how = $("sort").value;
  const p = (e) => (e.probability === undefined ? -1 : e.probability);
  if (how === "prob-desc") list.sort((a, b) => p(b) - p(a));
  if (how === "prob-asc") list.sort((a, b) => p(a) - p(b));
  if (how === "name") list.sort((a, b) => a.name.localeCompare(b.name));
  if (how === "order") list.sort((a, b) => a.order - b.order);
  return list;
}

function render() {
  const grid = $("grid");
  grid.replaceChildren();
  for (const e of sorted()) {
    const li = document.createElement("li"), card = document.createElement("button");
    card.type = "button"; card.className = "card"; card.setAttribute("aria-pressed", state.selected === e);
    if (e.status === "done") {
      const tumour = e.label === 1, cls = tumour ? "t" : "n";
      const img = el("img", { alt: "", src: "data:image/png;base64," + e.thumbnail_png });
      const fill = el("span", { className: cls }); fill.style.width = pct(e.probability);
      const bar = el("div", { className: "bar" }, fill); bar.setAttribute("aria-hidden", "true");
      card.append(img, bar, el("div", { className: "prob" }, el("b", { className: cls }, pct(e.probability)),
        " " + (tumour ? "tumour" : "normal")), el("div", { className: "name" }));
      card.setAttribute("aria-label", `${e.name}: ${pct(e.probability)} tumour, ${tumour ? "above" : "below"} threshold. Show Grad-CAM`);
      card.dataset.probability = e.probability;
    } else {
      card.append(el("div", { className: "prob" }, e.status === "error" ? "⚠ " + e.error : "…"), el("div", { className: "name" }));
      card.disabled = e.status !== "error";
    }
    card.querySelector(".name").textContent = e.name; card.title = e.name;
    card.addEventListener("click", () => e.status === "done" && showDetail(e));
    li.appendChild(card); grid.appendChild(li);
  }
  const done = state.patches.filter((e) => e.status === "done");
  const tumours = done.filter((e) => e.label === 1).length;
  $("patch-status").textContent = state.patches.length
    ? `${done.length} of ${state.patches.length} scored · ${tumours} above the threshold` : "";
}

async function showDetail(e) {
  state.selected = e; render();
  const panel = $("detail"); panel.hidden = false;
  $("detail-title").textContent = e.name;
  $("detail-text").textContent = "computing Grad-CAM…";
  $("detail-img").removeAttribute("src");
  if (!e.overlay) {
    const form = new FormData();
    form.append("files", e.file, e.file.name); form.append("explain", "true");
    try {
      const body = await (await api("/api/histo/" + encodeURIComponent(e.model) + "/predict", { method: "POST", body: form })).json();
      e.overlay = body.results[0].explanation;
    } catch (err) { $("detail-text").textContent = err.message; return; }
  }
  if (state.selected !== e) return;
  $("detail-img").src = "data:image/png;base64," + e.overlay.overlay_png;
  $("detail-img").alt = "Grad-CAM overlay of " + e.name;
  $("detail-text").textContent = `${pct(e.probability)} tumour (threshold ${e.threshold}) · strongest location ${e.overlay.max_logit.toFixed(2)} logits · ${pct(e.overlay.centre_share)} of the map in the centre square`
    + (e.overlay.crop && e.overlay.crop < 96 ? ` · the model sees the centre ${e.overlay.crop}x${e.overlay.crop}` : "") + (e.note ? " · " + e.note : "");
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addPatches(e.dataTransfer.files); });
$("patch-files").addEventListener("change", (e) => { addPatches(e.target.files); e.target.value = ""; });
$("sort").addEventListener("change", render);
$("patch-clear").addEventListener("click", () => { state.patches = []; state.selected = null; $("detail").hidden = true; render(); });

// ------------------------------------------------------------------ slide
let zoom = 1;
function applyZoom() { const img = $("slide-img"); img.style.width = Math.round(img.naturalWidth * zoom) + "px"; }
$("zoom-in").addEventListener("click", () => { zoom = Math.min(zoom * 1.5, 16); applyZoom(); });
$("zoom-out").addEventListener("click", () => { zoom = Math.max(zoom / 1.5, 0.05); applyZoom(); });
$("zoom-fit").addEventListener("click", () => {
  const img = $("slide-img"), view = $("slide-view");
  zoom = Math.min(1, view.clientWidth / img.naturalWidth, (window.innerHeight * 0.7) / img.naturalHeight); applyZoom();
});
$("slide-view").addEventListener("keydown", (e) => { if (e.key === "+") $("zoom-in").click(); if (e.key === "-") $("zoom-out").click(); });

$("slide-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("slide-file").files[0], m = currentModel();
  if (!file || !m) { showError(!file ? "choose a slide file first" : "load a histology model first"); return; }
  showError(null); $("slide-result").hidden = true;
  const form = new FormData(); form.append("file", file, file.name);
  if ($("slide-mpp").value) form.append("mpp", $("slide-mpp").value);
  if ($("slide-stride").value) form.append("stride", $("slide-stride").value);
  try {
    const job = await (await api("/api/histo/" + encodeURIComponent(m.name) + "/slides", { method: "POST", body: form })).json();
    $("slide-progress").hidden = false;
    for (;;) {
      const s = await (await api(job.status_url)).json();
      $("slide-progress").value = s.progress;
      $("slide-status").textContent = `${s.status} · ${pct(s.progress)} · ${s.seconds} s`;
      if (s.status === "failed") throw new Error("slide failed: " + s.message);
      if (s.status === "cancelled") throw new Error("the slide job was cancelled");
      if (s.status === "done") { await showSlide(s); break; }
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (err) { showError(err); $("slide-status").textContent = ""; }
});

async function download(url, name) {
  const blob = await (await api(url)).blob();
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = name; a.click();
}

async function showSlide(s) {
  const links = $("slide-links"); links.replaceChildren();
  for (const [name, url] of Object.entries(s.files)) {
    const b = document.createElement("button"); b.type = "button"; b.textContent = "⤓ " + name;
    b.addEventListener("click", () => download(url, name)); links.appendChild(b);
  }
  if (s.files["overlay.png"]) {
    const blob = await (await api(s.files["overlay.png"])).blob();
    const img = $("slide-img");
    img.onload = () => { $("slide-result").hidden = false; $("zoom-fit").click(); };
    img.src = URL.createObjectURL(blob);
  }
  const t = s.summary || {}, parts = ["done in " + s.seconds + " s"];
  if (t.tiles_scored !== undefined) parts.push(t.tiles_scored + " patches scored");
  if (t.max_prob !== undefined) parts.push("highest probability " + pct(t.max_prob));
  if (t.tumour_area_mm2 !== undefined) parts.push(t.tumour_area_mm2.toFixed(2) + " mm² above the threshold");
  $("slide-status").textContent = parts.join(" · ");
}

// ------------------------------------------------------------------ tweets
function parseCsv(text) {
  // RFC 4180: quoted fields may hold commas, quotes ("") and line breaks.
  const rows = []; let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) { if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c; }
    else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") { if (c === "\r" && text[i + 1] === "\n") i++; row.push(field); rows.push(row); row = []; field = ""; }
    else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.some((f) => f.trim()));
}

async function tweetInputs() {
  const file = $("tweet-csv").files[0];
  if (file) {
    const rows = parseCsv(await file.text()), head = rows.shift().map((h) => h.trim().toLowerCase());
    const t = head.indexOf("text"), k = head.indexOf("keyword");
    if (t < 0) throw new Error(file.name + ": no 'text' column");
    return { texts: rows.map((r) => r[t] || ""), keywords: rows.map((r) => (k >= 0 ? r[k] || "" : "")) };
  }
  const texts = $("tweet-text").value.split("\n").map((s) => s.trim()).filter(Boolean);
  return { texts, keywords: texts.map(() => "") };
}

$("tweet-run").addEventListener("click", async () => {
  const m = currentModel();
  showError(null);
  try {
    if (!m) throw new Error("load a tweets model first");
    const { texts, keywords } = await tweetInputs();
    if (!texts.length) throw new Error("type or paste some tweets first, one per line");
    const explain = $("tweet-explain").checked && !!m.explanation;
    state.tweets = []; $("tweet-status").textContent = "classifying " + texts.length + " tweets…";
    const chunk = 64;  // the server caps texts per request
    for (let i = 0; i < texts.length; i += chunk) {
      const body = await (await api("/api/tweets/" + encodeURIComponent(m.name) + "/predict", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ texts: texts.slice(i, i + chunk), keywords: keywords.slice(i, i + chunk), explain }) })).json();
      state.tweets.push(...body.results.map((r) => Object.assign(r, { threshold: body.threshold })));
      renderTweets();
    }
    const yes = state.tweets.filter((r) => r.label === 1).length;
    $("tweet-status").textContent = `${state.tweets.length} tweets · ${yes} about a disaster (threshold ${state.tweets[0].threshold.toFixed(3)})`;
    $("tweet-legend").hidden = !explain;
  } catch (err) { showError(err); $("tweet-status").textContent = ""; }
});

function shade(a) {
  const s = Math.min(Math.abs(a) / WORD_SCALE, 1) * 0.75;
  return a >= 0 ? `rgba(214, 48, 49, ${s})` : `rgba(41, 98, 255, ${s})`;
}

function renderTweets() {
  const body = $("tweet-table").querySelector("tbody"); body.replaceChildren();
  state.tweets.forEach((r, i) => {
    const tr = document.createElement("tr"), yes = r.label === 1;
    const cell = el("td", { className: "text" });
    tr.append(el("td", { className: "num" }, String(i + 1)), cell, el("td", { className: "kw" }),
      el("td", { className: "num" }, pct(r.probability)),
      el("td", {}, el("span", { className: "tag " + (yes ? "t" : "n") }, yes ? "disaster" : "not a disaster")));
    if (r.explanation) {
      r.explanation.words.forEach((w, j) => {
        const span = document.createElement("span"); span.className = "word"; span.textContent = w.text;
        span.style.background = shade(w.attribution); span.title = (w.attribution >= 0 ? "+" : "") + w.attribution.toFixed(3) + " logits";
        if (j) cell.append(" "); cell.appendChild(span);
      });
    } else cell.textContent = r.text;
    tr.querySelector(".kw").textContent = r.keyword;
    body.appendChild(tr);
  });
  $("tweet-table").hidden = !state.tweets.length; $("tweet-download").disabled = !state.tweets.length;
}

$("tweet-download").addEventListener("click", () => {
  const q = (s) => '"' + String(s).replace(/"/g, '""') + '"';
  const lines = ["text,keyword,probability,label"].concat(state.tweets.map((r) => [q(r.text), q(r.keyword), r.probability, r.label].join(",")));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  a.download = "spotter-tweets.csv"; a.click();
});

loadModels();
