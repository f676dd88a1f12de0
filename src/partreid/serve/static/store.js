// partreid store search page: plain JavaScript, talks only to this server's /api/store
// (helpers: page.js).
"use strict";

const state = {
  info: null,       // /api/health
  query: null,      // {kind: "upload", file, name} | {kind: "tracklet", id, image}
  last: null,       // the last answer, re-drawn when the sort changes
  sort: "distance",
  requestId: 0,
};

// ISO "2026-12-03T14:00:01.000Z" -> seconds; shown as "2026-12-03 14:00:01"
const secs = (iso) => Date.parse(iso) / 1000;
const day = (iso) => iso.slice(0, 10);
const clock = (iso) => iso.slice(11, 19);
function span(a, b) {
  return day(a) === day(b) ? `${day(a)} ${clock(a)}–${clock(b)}` : `${day(a)} ${clock(a)} – ${day(b)} ${clock(b)}`;
}

// ---------------------------------------------------------------- store summary
async function loadInfo() {
  const info = await api("/api/health");
  state.info = info;
  const s = info.store, m = info.model;
  const when = s.first ? span(s.first, s.last) + " UTC" : "empty";
  const meta = showMeta([
    ["store ", fmt(s.crops), " crops in "], ["", fmt(s.tracklets), " tracklets · "],
    ["", String(s.cameras.length), " cameras · "], ["", when, " · model "],
    ["", `${m.name} ${m.feature_dim}-d`, ""],
  ]);
  meta.title = `${s.uri} (${s.backend})`;
  const chips = $("cam-chips");
  chips.replaceChildren(...s.cameras.map((c) => {
    const b = el("button", "chip", `cam ${c.camera}`);
    b.type = "button";
    b.dataset.camera = c.camera;
    b.title = `${fmt(c.crops)} crops`;
    b.addEventListener("click", () => { b.classList.toggle("on"); camerasFromChips(); });
    return b;
  }));
  for (const opt of [...$("topk").options]) if (+opt.value > info.limits.max_topk) opt.remove();
  if (s.first) for (const id of ["after", "before"]) { $(id).min = s.first.slice(0, 16); }
  $("logout").hidden = !info.auth;
}

function camerasFromChips() {
  const on = [...document.querySelectorAll("#cam-chips .chip.on")].map((b) => b.dataset.camera);
  $("cameras").value = on.join(",");
}
function chipsFromCameras() {
  const spans = [];  // [first, last] ranges, never expanded ("1-300000000" is one range)
  for (const part of $("cameras").value.split(",")) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+))?\s*$/.exec(part);
    if (!m) continue;
    const a = +m[1], b = m[2] === undefined ? a : +m[2];
    spans.push([Math.min(a, b), Math.max(a, b)]);
  }
  for (const b of document.querySelectorAll("#cam-chips .chip")) {
    const c = +b.dataset.camera;
    b.classList.toggle("on", spans.some(([x, y]) => x <= c && c <= y));
  }
}

// ---------------------------------------------------------------- search
function filters() {
  const p = new URLSearchParams({ topk: $("topk").value, by: $("by").value });
  const cams = $("cameras").value.trim();
  if (cams) p.set("cameras", cams);
  for (const id of ["after", "before"]) if ($(id).value) p.set(id, $(id).value);
  return p;
}

async function run() {
  const q = state.query;
  if (!q) return;
  const id = ++state.requestId;
  setStatus("searching…", "busy");
  try {
    let res;
    if (q.kind === "upload") {
      const form = new FormData();
      form.append("image", q.file, q.name);
      res = await api("/api/store/search?" + filters(), { method: "POST", body: form });
    } else if (q.kind === "route") { // a person's route (route.js)
      const p = filters();
      p.set("identity", q.identity);
      res = await api("/api/store/search_route?" + p);
    } else {
      const p = filters();
      p.set("tracklet", q.id);
      res = await api("/api/store/search_tracklet?" + p);
    }
    if (id !== state.requestId) return; // a newer query won
    state.last = res;
    draw();
    setStatus("");
  } catch (err) {
    if (id === state.requestId) setStatus(err.message, "error");
  }
}

// crop results grouped by tracklet, in the order of their best crop
function groups(res) {
  if (res.filters.by === "tracklet") {
    return res.results.map((r) => ({
      rank: r.rank, tracklet: r.tracklet, camera: r.camera, start: r.start, end: r.end,
      n: r.n_crops, label: "crop", distance: r.distance, image: r.image_url, times: [r.best_time],
    }));
  }
  const by = new Map();
  for (const r of res.results) {
    let g = by.get(r.tracklet);
    if (!g) {
      g = { rank: r.rank, tracklet: r.tracklet, camera: r.camera, start: r.time, end: r.time, n: 0,
            label: "matching crop", distance: r.distance, image: r.image_url, times: [] };
      by.set(r.tracklet, g);
    }
    g.n += 1;
    g.times.push(r.time);
    if (r.time < g.start) g.start = r.time;
    if (r.time > g.end) g.end = r.time;
  }
  return [...by.values()];
}

function windowOf(res) {
  const s = state.info.store;
  let a = res.filters.after ? secs(res.filters.after) : secs(s.first);
  let b = res.filters.before ? secs(res.filters.before) : secs(s.last);
  if (!(b > a)) b = a + 1;
  return [a, b];
}

function timeline(g, win) {
  const [a, b] = win, w = b - a;
  const bar = el("div", "timeline");
  bar.title = `${span(g.start, g.end)} UTC within ${new Date(a * 1000).toISOString().slice(0, 19)}Z – ${new Date(b * 1000).toISOString().slice(0, 19)}Z`;
  const pct = (t) => Math.min(100, Math.max(0, (100 * (t - a)) / w));
  const seg = el("span", "seg-span");
  seg.style.left = pct(secs(g.start)) + "%";
  seg.style.width = Math.max(0.8, pct(secs(g.end)) - pct(secs(g.start))) + "%";
  bar.appendChild(seg);
  for (const t of g.times) {
    const tick = el("span", "tick");
    tick.style.left = pct(secs(t)) + "%";
    bar.appendChild(tick);
  }
  return bar;
}

function tcard(g, win) {
  const fig = el("figure", "tcard");
  fig.dataset.tracklet = g.tracklet;
  const thumb = el("div", "thumb");
  const img = el("img");
  img.alt = `best crop of tracklet ${g.tracklet}`;
  img.decoding = "async";
  if (g.image) img.src = g.image;
  img.addEventListener("error", () => { fig.classList.add("missing"); thumb.replaceChildren(el("span", "missing-note", "image unavailable")); });
  thumb.appendChild(img);
  fig.appendChild(thumb);
  const body = el("figcaption");
  const head = el("div", "thead");
  head.append(el("span", "rank", `#${g.rank}`), el("span", "dist", g.distance.toFixed(3)));
  body.appendChild(head);
  body.appendChild(el("div", "cam", `camera ${g.camera} · ${g.tracklet}`));
  body.appendChild(el("div", "when", span(g.start, g.end)));
  body.appendChild(el("div", "ncrops", `${g.n} ${g.label}${g.n === 1 ? "" : "s"}`));
  body.appendChild(timeline(g, win));
  const axis = el("div", "tl-axis");
  const iso = (t) => new Date(t * 1000).toISOString();
  axis.append(el("span", null, clock(iso(win[0]))), el("span", null, clock(iso(win[1]))));
  body.appendChild(axis);
  fig.appendChild(body);
  fig.title = "click to search with this tracklet";
  fig.addEventListener("click", () => searchTracklet(g.tracklet, g.image));
  return fig;
}

function draw() {
  const res = state.last;
  const gs = groups(res);
  if (state.sort === "time") gs.sort((x, y) => secs(x.start) - secs(y.start) || x.rank - y.rank);
  const win = windowOf(res);
  const grid = $("results");
  grid.replaceChildren(...gs.map((g) => tcard(g, win)));
  if (!gs.length) grid.appendChild(el("div", "empty", "nothing in the store matches these filters"));
  const f = res.filters, sum = $("results-summary");
  sum.replaceChildren();
  const q = state.query;
  const what = q.kind === "upload" ? q.name : q.kind === "route" ? `the route of identity ${q.identity}` : `tracklet ${q.id}`;
  sum.append(`${gs.length} tracklet${gs.length === 1 ? "" : "s"} for `);
  sum.appendChild(el("b", null, what));
  const cams = f.cameras
    ? `cameras ${f.cameras.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ")}`
    : "all cameras";
  const t0 = f.after ? f.after.replace("T", " ").slice(0, 19) : "start";
  const t1 = f.before ? f.before.replace("T", " ").slice(0, 19) : "the latest";
  sum.append(` · ${cams} · ${t0} → ${t1} UTC · by ${f.by} · ${res.took_ms} ms`);
  sum.appendChild(el("span", "tag", state.sort === "time" ? "sorted by time" : "sorted by distance"));
}

function setSort(kind) {
  state.sort = kind;
  for (const k of ["distance", "time"]) {
    $(`sort-${k}`).classList.toggle("active", k === kind);
    $(`sort-${k}`).setAttribute("aria-pressed", k === kind);
  }
  if (state.last) draw();
}

function showQuery(src, label) {
  $("drop-empty").hidden = !!src;
  $("query-view").hidden = !src;
  if (src) $("query-img").src = src;
  $("query-meta").textContent = label;
}

function searchUpload(file) {
  state.query = { kind: "upload", file, name: file.name };
  showQuery(URL.createObjectURL(file), `${file.name} · ${fmt(file.size)} bytes`);
  run();
}

function searchTracklet(id, image) {
  if (!id) return;
  state.query = { kind: "tracklet", id };
  $("tracklet").value = id;
  showQuery(image || null, `tracklet ${id}`);
  run();
}

// ---------------------------------------------------------------- wiring
function wire() {
  wireDropZone(searchUpload);
  $("tracklet-form").addEventListener("submit", (e) => { e.preventDefault(); searchTracklet($("tracklet").value.trim()); });
  $("cameras").addEventListener("input", chipsFromCameras);
  $("run").addEventListener("click", run);
  $("clear").addEventListener("click", () => {
    for (const id of ["cameras", "after", "before"]) $(id).value = "";
    chipsFromCameras();
    run();
  });
  $("by").addEventListener("change", run);
  $("topk").addEventListener("change", run);
  $("sort-distance").addEventListener("click", () => setSort("distance"));
  $("sort-time").addEventListener("click", () => setSort("time"));
  $("logout").addEventListener("click", () => partreidAuth.logout());
}

wire();
loadInfo().catch((err) => setStatus("cannot reach the server: " + err.message, "error"));
