// shadowtrial web page: live refresh of #live and the promote / reject / canary buttons.
// No libraries. Server answers are shown with textContent only, never as HTML, and the
// admin token lives in one local variable for one request: it is never stored.
"use strict";

(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("status");
  const every = Math.max(1, Number(document.body.dataset.refresh || 5)) * 1000;
  let busy = false;

  function setStatus(text, warn) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("warn", Boolean(warn));
  }

  async function refresh() {
    if (busy || document.hidden || !live) return;
    busy = true;
    try {
      const res = await fetch(window.location.href, {
        headers: { Accept: "text/html" },
        cache: "no-store",
        credentials: "same-origin",
      });
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (!res.ok || !fresh) {
        setStatus("refresh failed (HTTP " + res.status + "), retrying", true);
        return;
      }
      live.replaceChildren(...Array.from(fresh.childNodes, (n) => document.importNode(n, true)));
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    } catch (err) {
      setStatus("refresh failed (" + err.message + "), retrying", true);
    } finally {
      busy = false;
    }
  }

  function item(text) {
    const li = document.createElement("li");
    li.textContent = String(text);
    return li;
  }

  function show(kind, headline, reasons) {
    const box = document.getElementById("decision");
    if (!box) return;
    const head = document.createElement("strong");
    head.textContent = headline;
    const children = [head];
    if (reasons && reasons.length) {
      const list = document.createElement("ul");
      reasons.forEach((r) => list.appendChild(item(r)));
      children.push(list);
    }
    box.replaceChildren(...children);
    box.className = "decision " + kind;
    box.hidden = false;
  }

  function reasonsOf(body) {
    if (!body || typeof body !== "object") return [];
    const gate = body.gate && typeof body.gate === "object" ? body.gate : {};
    const reasons = body.reasons || gate.reasons;
    if (Array.isArray(reasons)) return reasons;
    if (Array.isArray(body.detail)) return body.detail;
    if (body.detail && typeof body.detail === "object" && Array.isArray(body.detail.reasons)) {
      return body.detail.reasons;
    }
    return body.detail ? [typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)] : [];
  }

  function verdictOf(body) {
    if (!body || typeof body !== "object") return "";
    if (body.verdict) return String(body.verdict);
    if (body.gate && body.gate.verdict) return String(body.gate.verdict);
    if (body.detail && body.detail.verdict) return String(body.detail.verdict);
    return "";
  }

  function numberIn(id) {
    const input = document.getElementById(id);
    return input ? Number(input.value) : NaN;
  }

  // The canary request body: the server validates it (a bad value is a 400 shown as such).
  function canaryBody(kind) {
    if (kind === "end") return { weight: 0 };
    if (kind === "weight") return { weight: numberIn("canary-weight") };
    const steps = (document.getElementById("canary-steps") || { value: "" }).value;
    const body = {
      steps: steps.split(",").map((w) => Number(w.trim())),
      step_s: numberIn("canary-step-s"),
    };
    const minPairs = numberIn("canary-min-pairs");
    if (minPairs > 0) body.min_pairs = minPairs;
    return body;
  }

  async function decide(button) {
    const action = button.dataset.action;
    const name = button.dataset.name;
    const token = window.prompt("Admin token to " + action + " " + name + " (sent once, not stored):");
    if (token === null) {
      show("info", action + " cancelled", []);
      return;
    }
    let url = button.dataset.url;
    const force = document.getElementById("force");
    if (action !== "reject" && force && force.checked) url += "?force=true";
    const headers = { Accept: "application/json" };
    if (token.trim()) headers.Authorization = "Bearer " + token.trim();
    const init = { method: "POST", headers, cache: "no-store", credentials: "omit" };
    if (button.dataset.body) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(canaryBody(button.dataset.body));
    }
    button.disabled = true;
    // The previous answer must not read as this one's while the request is in flight.
    show("pending", action + " " + name + ": sending\u2026", []);
    try {
      const res = await fetch(url, init);
      let body = null;
      try {
        body = await res.json();
      } catch (parseError) {
        body = null;
      }
      const verdict = verdictOf(body);
      const suffix = verdict ? " (gate: " + verdict + ")" : "";
      if (res.ok) {
        show("ok", action + " " + name + ": done" + suffix, reasonsOf(body));
        refresh();
      } else {
        const why = body && body.error ? ": " + body.error : "";
        show("refused", action + " " + name + " refused, HTTP " + res.status + why + suffix, reasonsOf(body));
      }
    } catch (err) {
      show("refused", action + " " + name + " failed: " + err.message, []);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) decide(button);
  });
  if (live) window.setInterval(refresh, every);
})();
