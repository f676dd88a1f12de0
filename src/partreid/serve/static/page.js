// partreid pages: the helpers both pages' scripts use (loaded after auth.js, before app.js or
// store.js): element lookup and creation, number format, the status line, the top bar's
// summary, the JSON API, the query drop zone.
"use strict";

const $ = (id) => document.getElementById(id);

function fmt(n) { return Number(n).toLocaleString("en-US"); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text || "";
  s.className = "status" + (kind ? " " + kind : "");
}

// the top bar's summary (#meta) from [plain, bold, plain] pieces
function showMeta(parts) {
  const meta = $("meta");
  meta.replaceChildren();
  for (const [a, b, c] of parts) {
    meta.append(a);
    meta.appendChild(el("b", null, b));
    meta.append(c);
  }
  return meta;
}

// the JSON answer of an /api route (asking for the token on a 401); a failure throws its detail
async function api(url, options) {
  const res = await partreidAuth.authFetch(url, options);
  const type = res.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await res.json() : null;
  if (!res.ok) throw new Error(body && body.detail ? body.detail : `${res.status} ${res.statusText}`);
  return body;
}

// the query drop zone (#drop, its #file input): a file chosen, dropped, or picked with Enter or
// Space on the focused zone goes to onImage(file); a file that says it is no image is refused
// in the status line
function wireDropZone(onImage) {
  const drop = $("drop");
  const take = (file) => {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(`${file.name} is not an image (${file.type})`, "error");
      return;
    }
    onImage(file);
  };
  $("file").addEventListener("change", (e) => take(e.target.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => take(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
}
