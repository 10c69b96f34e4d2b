// rollgate dashboard sign-in: the token is sent once, in a POST; the server answers with a session
// cookie (HttpOnly, Secure, SameSite=Strict) and the page goes to the dashboard.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;

async function signIn() {
  const status = document.getElementById("login-status");
  const r = await fetch("/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ token: document.getElementById("token").value }),
  });
  if (r.ok) { location.replace("/"); return; }
  status.textContent = (await r.json()).error;
}

document.getElementById("sign-in").addEventListener("click", signIn);
document.getElementById("token").addEventListener("keydown", e => { if (e.key === "Enter") signIn(); });
