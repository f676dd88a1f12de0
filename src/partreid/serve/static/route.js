// partreid store page: a result's person (site identity, `partreid link`): its route, one row
// per camera on a shared time axis with a crop per tracklet; search with the route, or forget
// the person (the server asks for the token). Uses page.js's $, el, api, setStatus and
// store.js's state, run.
"use strict";

(function () {
  const iso = (t) => new Date(t * 1000).toISOString();

  function addButtons() {
    for (const fig of document.querySelectorAll("#results figure.tcard")) {
      const cap = fig.querySelector("figcaption");
      if (!cap || cap.querySelector(".route-btn")) continue;
      const b = el("button", "route-btn linkish", "route");
      b.type = "button";
      b.title = "this person's route across the cameras";
      b.addEventListener("click", (e) => { e.stopPropagation(); openRoute(fig.dataset.tracklet); });
      cap.appendChild(b);
    }
  }

  async function openRoute(tracklet) {
    setStatus("loading the route…", "busy");
    try {
      const r = await api("/api/store/route?" + new URLSearchParams({ tracklet }));
      show(r);
      setStatus("");
    } catch (err) {
      setStatus(err.message, "error");
    }
  }

  function dialog() {
    let d = $("route-dialog");
    if (!d) {
      d = el("dialog", "route-dialog");
      d.id = "route-dialog";
      d.addEventListener("click", (e) => { if (e.target === d) d.close(); });
      document.body.appendChild(d);
    }
    return d;
  }

  // one row per camera (in the order the person reached them), items placed on [t0, t1]
  function rows(r) {
    const t0 = secs(r.start), t1 = Math.max(secs(r.end), t0 + 1), w = t1 - t0;
    const pct = (t) => (100 * (t - t0)) / w;
    const cams = [...new Set(r.route.map((s) => s.camera))];
    const box = el("div", "route-rows");
    for (const cam of cams) {
      const row = el("div", "route-row");
      row.dataset.camera = cam;
      row.appendChild(el("div", "route-cam", `camera ${cam}`));
      const lane = el("div", "route-lane");
      for (const s of r.route.filter((x) => x.camera === cam)) {
        const item = el("figure", "route-item");
        item.dataset.tracklet = s.tracklet;
        item.style.left = pct(secs(s.start)) + "%";
        const img = el("img");
        img.alt = `a crop of tracklet ${s.tracklet}`;
        if (s.image_url) img.src = s.image_url;
        item.appendChild(img);
        item.appendChild(el("figcaption", null, `${clock(s.start)} · ${s.tracklet}`));
        item.title = `${s.tracklet}: ${span(s.start, s.end)} UTC, ${s.n_crops} crops`;
        const bar = el("span", "route-span");
        bar.style.left = pct(secs(s.start)) + "%";
        bar.style.width = Math.max(0.6, pct(secs(s.end)) - pct(secs(s.start))) + "%";
        lane.append(bar, item);
      }
      row.appendChild(lane);
      box.appendChild(row);
    }
    const axis = el("div", "route-axis");
    axis.append(el("span", null, clock(iso(t0))), el("span", null, clock(iso(t1))));
    box.appendChild(axis);
    return box;
  }

  function show(r) {
    const d = dialog();
    d.replaceChildren();
    const who = r.identity === null ? `tracklet ${r.tracklet} (not linked yet)` : `identity ${r.identity}`;
    d.appendChild(el("h2", null, `Route of ${who}`));
    const n = r.route.length;
    d.appendChild(el("p", "muted", `${n} tracklet${n === 1 ? "" : "s"} · cameras ${r.cameras.join(" → ")} · ${span(r.start, r.end)} UTC`));
    d.appendChild(rows(r));
    const bar = el("div", "row gap");
    if (r.identity !== null) {
      const go = el("button", "primary", "Search with this route");
      go.type = "button";
      go.addEventListener("click", () => { d.close(); searchRoute(r); });
      const forget = el("button", "danger", "Forget this person");
      forget.type = "button";
      forget.addEventListener("click", () => forgetPerson(r, d));
      bar.append(go, forget);
    }
    const close = el("button", "ghost", "Close");
    close.type = "button";
    close.addEventListener("click", () => d.close());
    bar.appendChild(close);
    d.appendChild(bar);
    if (!d.open) d.showModal();
  }

  function searchRoute(r) {
    state.query = { kind: "route", identity: r.identity, id: r.tracklet };
    const first = r.route.find((s) => s.image_url);
    showQuery(first ? first.image_url : null, `the route of identity ${r.identity} (${r.route.length} tracklets)`);
    run();
  }

  async function forgetPerson(r, d) {
    const n = r.route.reduce((a, s) => a + s.n_crops, 0);
    if (!confirm(`Forget identity ${r.identity} everywhere: ${n} crops in ${r.route.length} tracklets? This cannot be undone.`)) return;
    setStatus("deleting…", "busy");
    try {
      const res = await api("/api/store/delete_identity?" + new URLSearchParams({ identity: r.identity }), { method: "POST" });
      d.close();
      const gone = new Set(r.route.map((s) => s.tracklet));
      const q = state.query;
      if (q && ((q.kind === "route" && q.identity === r.identity) || (q.kind === "tracklet" && gone.has(q.id)))) {
        state.query = null;
        state.last = null;
        $("results").replaceChildren(el("div", "empty", `identity ${r.identity} was forgotten`));
        showQuery(null, "");
      } else if (q) {
        await run(); // the results without the person
      }
      setStatus(`forgot identity ${r.identity}: ${res.deleted} crops deleted`);
    } catch (err) {
      setStatus(err.message, "error");
    }
  }

  new MutationObserver(addButtons).observe($("results"), { childList: true });
})();
