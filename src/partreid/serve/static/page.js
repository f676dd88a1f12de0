// partreid pages: the helpers both pages' scripts use (loaded after auth.js, before app.js or
// store.js): element lookup and creation, number format, the status line, the top bar's
// summary, the JSON API.
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
