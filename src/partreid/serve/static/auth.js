// partreid pages: the access token prompt (shared by index.html and store.html).
// A server started with --token-file answers 401 to /api/* without the token. The page then
// asks for it once and posts it to /api/login, which sets an HttpOnly cookie: later requests,
// <img> crops included, carry it without this script ever storing the token.
"use strict";

const partreidAuth = (() => {
  let pending = null;

  function dialog() {
    return new Promise((resolve) => {
      const back = document.createElement("div");
      back.className = "login-backdrop";
      const form = document.createElement("form");
      form.className = "login panel";
      form.innerHTML = `<h2>Access token</h2>
        <p class="muted">This server holds biometric data and needs its access token.</p>
        <input id="login-token" type="password" autocomplete="current-password" placeholder="token" required>
        <div class="login-error" id="login-error" role="alert"></div>
        <button type="submit" class="primary">Sign in</button>`;
      back.appendChild(form);
      document.body.appendChild(back);
      const input = form.querySelector("#login-token");
      input.focus();
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const res = await fetch("/api/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token: input.value }),
        });
        if (res.ok) { back.remove(); resolve(); return; }
        const why = res.status === 429
          ? `too many wrong tokens: try again in ${res.headers.get("Retry-After") || "a few"} s`
          : "wrong token";
        form.querySelector("#login-error").textContent = why;
        input.select();
      });
    });
  }

  function login() {
    if (!pending) pending = dialog().finally(() => { pending = null; });
    return pending;
  }

  // fetch, asking for the token (once, shared by concurrent requests) while the answer is 401
  async function authFetch(url, options) {
    let res = await fetch(url, options);
    while (res.status === 401 && url !== "/api/login") {
      await login();
      res = await fetch(url, options);
    }
    return res;
  }

  async function logout() {
    await fetch("/api/logout", { method: "POST" });
    location.reload();
  }

  return { authFetch, login, logout };
})();
