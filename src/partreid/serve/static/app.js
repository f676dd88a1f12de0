// partreid search page: plain JavaScript, talks only to this server's /api (helpers: page.js).
"use strict";

const state = {
  info: null,
  query: null,        // {kind: "upload", file, name} | {kind: "item", item}
  page: 1,
  pageSize: 48,
  total: 0,
  requestId: 0,
};
const MARKET_NAME = /^(-?\d+)_c(\d+)/; // Market-1501 style: 0001_c2s1_000151_01.jpg

// ---------------------------------------------------------------- cards
function card(item, opts) {
  const fig = el("figure", "card");
  fig.dataset.index = item.index;
  if (item.match === true) fig.classList.add("match");
  if (item.match === false) fig.classList.add("nomatch");
  const thumb = el("div", "thumb");
  const img = el("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.src = item.image_url;
  img.alt = item.path;
  img.title = `${item.path}\nclick to search with this image`;
  img.addEventListener("error", () => {
    fig.classList.add("missing");
    thumb.replaceChildren(el("span", "missing-note", "image unavailable"));
    thumb.title = `${item.path}: the server does not serve this file`;
  });
  thumb.appendChild(img);
  fig.appendChild(thumb);
  const cap = el("figcaption");
  if (opts.ranked) {
    cap.appendChild(el("span", "rank", `#${item.rank}`));
    cap.appendChild(el("span", "dist", item.distance.toFixed(3)));
  }
  cap.appendChild(el("span", "cam", item.camid >= 0 ? `cam ${item.camid}` : "cam ?"));
  cap.appendChild(el("span", "pid", item.pid >= 0 ? `id ${item.pid}` : "id ?"));
  fig.appendChild(cap);
  fig.addEventListener("click", () => searchItem(item));
  return fig;
}

function fill(grid, nodes, emptyText) {
  grid.replaceChildren(...nodes);
  if (!nodes.length) grid.appendChild(el("div", "empty", emptyText));
}

// ---------------------------------------------------------------- info
async function loadInfo() {
  const info = await api("/api/health");
  state.info = info;
  const m = info.model, g = info.gallery;
  showMeta([
    ["model ", `${m.name}${m.backbone ? " · " + m.backbone : ""}`, ` ${m.input[0]}×${m.input[1]}, ${m.feature_dim}-d${m.runtime === "onnxruntime" ? ", ONNX Runtime" : ""}`],
    ["  ·  gallery ", fmt(g.size), ` items, ${g.cameras.length} cameras, ${g.metric} (${g.kind}/${g.backend})`],
  ]);
  $("gallery-count").textContent = fmt(g.size);
  state.pageSize = info.limits.default_page_size;
  const topk = $("topk");
  for (const opt of [...topk.options]) if (+opt.value > info.limits.max_topk) opt.remove();
  const cam = $("f-cam");
  for (const c of g.cameras) cam.appendChild(new Option(`camera ${c}`, c));
  if (!m.heatmap) {
    $("heat").disabled = true;
    $("heat-switch").classList.add("disabled");
    $("heat-switch").title = "this model has no activation maps";
  }
}

// ---------------------------------------------------------------- gallery
async function loadGallery() {
  const params = new URLSearchParams({ offset: (state.page - 1) * state.pageSize, limit: state.pageSize });
  const cam = $("f-cam").value, pid = $("f-pid").value.trim();
  if (cam !== "") params.set("camid", cam);
  if (pid !== "") params.set("pid", pid);
  setStatus("loading gallery…", "busy");
  try {
    const page = await api("/api/gallery?" + params);
    state.total = page.total;
    const pages = Math.max(1, Math.ceil(page.total / state.pageSize));
    $("pages").textContent = fmt(pages);
    $("page").max = pages;
    $("page").value = state.page;
    $("prev").disabled = state.page <= 1;
    $("next").disabled = state.page >= pages;
    fill($("gallery"), page.items.map((it) => card(it, { ranked: false })), "no gallery item matches these filters");
    setStatus(`${fmt(page.total)} items`);
  } catch (err) {
    setStatus(err.message, "error");
  }
}

function goPage(p) {
  const pages = Math.max(1, Math.ceil(state.total / state.pageSize));
  state.page = Math.min(Math.max(1, p), pages);
  loadGallery();
}

// ---------------------------------------------------------------- search
function options() {
  const p = new URLSearchParams({ topk: $("topk").value, rerank: $("rerank").checked });
  return p;
}

function showQueryImage(src, label) {
  $("drop-empty").hidden = true;
  $("query-view").hidden = false;
  $("query-img").src = src;
  $("query-heat").hidden = true;
  $("query-heat").removeAttribute("src");
  $("query-meta").textContent = label;
}

function showResults(res, label) {
  const results = res.results;
  const known = results.filter((r) => r.match !== null);
  const hits = results.filter((r) => r.match === true).length;
  const sum = $("results-summary");
  sum.replaceChildren();
  sum.append(`Top ${results.length} for `);
  sum.appendChild(el("b", null, label));
  sum.append(` among ${fmt(state.info.gallery.size)} gallery items · ${res.took_ms} ms`);
  if (known.length) sum.append(` · ${hits} of ${known.length} share the query's identity`);
  if (res.rerank) sum.appendChild(el("span", "tag", "re-ranked"));
  fill($("results"), results.map((it) => card(it, { ranked: true })), "no results");
}

function selectTab(name) {
  const results = name === "results";
  $("tab-results").classList.toggle("active", results);
  $("tab-gallery").classList.toggle("active", !results);
  $("tab-results").setAttribute("aria-selected", results);
  $("tab-gallery").setAttribute("aria-selected", !results);
  $("results-view").hidden = !results;
  $("gallery-view").hidden = results;
  if (!results && !$("gallery").children.length) loadGallery();
}

async function run() {
  const q = state.query;
  if (!q) return;
  const id = ++state.requestId;
  selectTab("results");
  setStatus("searching…", "busy");
  try {
    let res, label;
    const wantHeat = $("heat").checked && !$("heat").disabled;
    if (q.kind === "upload") {
      const params = options();
      const pid = $("qpid").value.trim();
      if (pid !== "") params.set("pid", pid);
      if (wantHeat) params.set("heatmap", "true");
      const form = new FormData();
      form.append("image", q.file, q.name);
      res = await api("/api/search?" + params, { method: "POST", body: form });
      label = q.name;
    } else {
      res = await api(`/api/search/item/${q.item.index}?` + options());
      label = q.item.path;
      if (wantHeat) res.heatmap = await itemHeatmap(q.item);
    }
    if (id !== state.requestId) return; // a newer query won
    showResults(res, label);
    const heat = $("query-heat");
    if (res.heatmap) { heat.src = res.heatmap; heat.hidden = false; } else { heat.hidden = true; }
    setStatus("");
  } catch (err) {
    if (id === state.requestId) setStatus(err.message, "error");
  }
}

async function itemHeatmap(item) {
  const blob = await (await partreidAuth.authFetch(item.image_url)).blob();
  const form = new FormData();
  form.append("image", blob, item.path.split("/").pop());
  const res = await partreidAuth.authFetch("/api/heatmap", { method: "POST", body: form });
  if (!res.ok) throw new Error((await res.json()).detail);
  return URL.createObjectURL(await res.blob());
}

function searchUpload(file) {
  const m = MARKET_NAME.exec(file.name);
  $("qpid").value = m ? String(parseInt(m[1], 10)) : "";
  state.query = { kind: "upload", file, name: file.name };
  const url = URL.createObjectURL(file);
  showQueryImage(url, `${file.name} · ${fmt(file.size)} bytes`);
  run();
}

function searchItem(item) {
  state.query = { kind: "item", item };
  $("qpid").value = item.pid >= 0 ? item.pid : "";
  showQueryImage(item.image_url, `gallery #${item.index} · ${item.path} · cam ${item.camid} · id ${item.pid}`);
  run();
}

// ---------------------------------------------------------------- wiring
function wire() {
  wireDropZone(searchUpload);
  $("topk").addEventListener("change", run);
  $("rerank").addEventListener("change", run);
  $("heat").addEventListener("change", run);
  $("qpid").addEventListener("change", () => { if (state.query && state.query.kind === "upload") run(); });
  $("tab-results").addEventListener("click", () => selectTab("results"));
  $("tab-gallery").addEventListener("click", () => selectTab("gallery"));
  $("prev").addEventListener("click", () => goPage(state.page - 1));
  $("next").addEventListener("click", () => goPage(state.page + 1));
  $("page").addEventListener("change", (e) => goPage(parseInt(e.target.value, 10) || 1));
  $("f-cam").addEventListener("change", () => goPage(1));
  $("f-pid").addEventListener("change", () => goPage(1));
  $("f-clear").addEventListener("click", () => { $("f-cam").value = ""; $("f-pid").value = ""; goPage(1); });
}

wire();
loadInfo().catch((err) => setStatus("cannot reach the server: " + err.message, "error"));
