"""The site's style sheet and its one small script, served from memory.

The script needs no framework: it sends actions to ``/api/act`` (JSON, with the session
cookie), and keeps the page live: an ``EventSource`` on ``/events`` tells it when
something the page shows changed, and it then fetches the page's live part again
(``?partial=1``, HTML made and escaped by the server) and swaps it in. Pages work without
it, minus live updates and buttons.
"""

from __future__ import annotations

import hashlib

__all__ = ["CSS", "JS", "asset_version"]

CSS = """
:root { --fg: #1d2329; --muted: #66707a; --line: #d9dee3; --bg: #f6f7f9; --link: #1f5fa8;
  --RDY: #d9dde2; --RUN: #3fa34d; --DON: #4e79a7; --ERR: #d9453b; --SKP: #9cc3e6; --WD: #a784c9;
  --WT: #c9a0dc; --OFF: #8a8f96; --WRC: #f0a020; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--link); text-decoration: none; }
a:hover { text-decoration: underline; }
header { display: flex; align-items: center; gap: 18px; padding: 8px 18px; background: #20262e; color: #eee; }
header a { color: #dfe6ee; }
header a.current { color: #fff; font-weight: 600; border-bottom: 2px solid #7fb3ff; }
header .brand { font-weight: 700; letter-spacing: .5px; color: #fff; }
header .spacer { flex: 1; }
header form { display: inline; margin: 0; }
header button { background: none; border: 1px solid #667; color: #dfe6ee; border-radius: 4px;
  cursor: pointer; }
#live-status { font-size: 12px; color: #9aa4ae; }
#live-status.on { color: #7fd38a; }
main { padding: 14px 18px 40px; }
h1 { font-size: 20px; margin: 4px 0 12px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #f8fafc; }
.muted { color: var(--muted); }
.state { display: inline-block; min-width: 34px; padding: 0 5px; border-radius: 3px; font-size: 12px;
  font-weight: 600; text-align: center; color: #fff; background: var(--OFF); }
.state.s-RDY { background: var(--RDY); color: #333; } .state.s-RUN { background: var(--RUN); }
.state.s-DON { background: var(--DON); } .state.s-ERR { background: var(--ERR); }
.state.s-SKP { background: var(--SKP); color: #123; } .state.s-WD { background: var(--WD); }
.state.s-WT { background: var(--WT); } .state.s-OFF { background: var(--OFF); }
.state.s-WRC { background: var(--WRC); }
.state.r-offline { background: var(--OFF); } .state.r-busy { background: var(--RUN); }
.state.r-online, .state.r-idle { background: #5b9bd5; } .state.r-sick { background: var(--ERR); }
.state.r-paused, .state.r-NIMBY, .state.r-nimby { background: #b58b00; }
progress { width: 140px; height: 12px; accent-color: var(--RUN); vertical-align: middle; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
  min-width: 120px; }
.card .n { font-size: 22px; font-weight: 700; }
.card .l { color: var(--muted); font-size: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 2px; max-width: 1100px; background: #fff; padding: 6px;
  border: 1px solid var(--line); }
.grid a { display: block; width: 14px; height: 14px; border-radius: 2px; background: var(--RDY); }
.grid a.s-RUN { background: var(--RUN); } .grid a.s-DON { background: var(--DON); }
.grid a.s-ERR { background: var(--ERR); } .grid a.s-SKP { background: var(--SKP); }
.grid a.s-WD { background: var(--WD); } .grid a.s-WT { background: var(--WT); }
.grid a.s-OFF { background: var(--OFF); } .grid a.s-WRC { background: var(--WRC); }
.legend span { margin-right: 10px; font-size: 12px; }
.thumbnails { display: flex; flex-wrap: wrap; gap: 6px; }
.thumbnails img { max-width: 192px; max-height: 128px; border: 1px solid #ccd; background: #222; }
pre.output { background: #11161c; color: #d8dee6; padding: 10px; max-height: 70vh; overflow: auto;
  white-space: pre-wrap; word-break: break-all; font-size: 12px; }
button, .button { font: inherit; font-size: 12px; padding: 2px 8px; border: 1px solid #aab3bd;
  border-radius: 4px; background: #fff; cursor: pointer; color: var(--fg); }
button:hover { background: #eef3f8; }
button.danger { border-color: #d9453b; color: #b3261e; }
.actions { display: flex; flex-wrap: wrap; gap: 4px; }
#flash { position: fixed; right: 16px; bottom: 16px; max-width: 480px; }
#flash div { padding: 8px 12px; margin-top: 6px; border-radius: 5px; background: #2d6a35; color: #fff; }
#flash div.error { background: #a3261e; }
.banner { padding: 10px 14px; border-radius: 6px; background: #fff4d6; border: 1px solid #e7c66b;
  margin: 10px 0; }
.banner.off { background: #fde8e6; border-color: #e5a39d; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; background: #fff;
  padding: 8px 10px;
  border: 1px solid var(--line); margin-bottom: 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input { width: 120px; }
form.login { background: #fff; border: 1px solid var(--line); padding: 18px; max-width: 340px; }
form.login label { display: block; margin-bottom: 10px; }
form.login input { display: block; width: 100%; padding: 5px; margin-top: 3px; }
.error-text { color: #b3261e; }
svg.chart { background: #fff; border: 1px solid var(--line); display: block; margin-bottom: 12px;
  max-width: 100%; height: auto; }
nav.sub { margin: 0 0 12px; display: flex; gap: 14px; }
nav.sub a.current { font-weight: 700; }
dl.info { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; background: #fff;
  border: 1px solid var(--line); padding: 8px 12px; }
dl.info dt { color: var(--muted); } dl.info dd { margin: 0; }
"""

JS = r"""
(function () {
  "use strict";
  var REFRESH_MS = 700;
  function $(id) { return document.getElementById(id); }

  function flash(text, kind) {
    var box = $("flash");
    if (!box) return;
    var item = document.createElement("div");
    item.className = kind || "";
    item.textContent = text;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, kind === "error" ? 9000 : 3000);
  }

  var refreshing = false, again = false, timer = null, lastRefresh = 0;

  function refresh() {
    var live = $("live");
    if (!live) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url.toString(), { credentials: "same-origin", headers: { "X-Requested-With": "farmnet" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var holder = document.createElement("div");
        holder.innerHTML = text;
        var fresh = holder.querySelector("#live");
        var current = $("live");
        if (fresh && current) current.replaceWith(fresh);
      })
      .catch(function () {})
      .then(function () {
        refreshing = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() {
    if (timer) return;
    var wait = Math.max(0, REFRESH_MS - (Date.now() - lastRefresh));
    timer = setTimeout(function () { timer = null; refresh(); }, wait);
  }

  function relevant(watch, e) {
    if (!watch) return false;
    if (watch === "all") return true;
    var parts = watch.split(":");
    var jobId = e.job_id !== undefined ? e.job_id : (e.job ? e.job.id : undefined);
    switch (parts[0]) {
      case "jobs": return e.kind === "job" || e.kind === "job_deleted" || e.kind === "task";
      case "job": return String(jobId) === parts[1];
      case "task": return String(jobId) === parts[1] && (e.kind === "job" ||
        (String(e.block) === parts[2] && String(e.task) === parts[3]));
      case "renders": return e.kind.indexOf("render") === 0 || e.kind === "task";
      case "users": return e.kind === "user" || e.kind === "job" || e.kind === "task";
      default: return false;
    }
  }

  function watchEvents() {
    var live = $("live");
    var status = $("live-status");
    if (!live || !live.dataset.watch || !window.EventSource) return;
    var source = new EventSource("/events?after=" + encodeURIComponent(live.dataset.seq || "-1"));
    source.onopen = function () { if (status) { status.textContent = "live"; status.className = "on"; } };
    source.onerror = function () {
      if (status) { status.textContent = "reconnecting…"; status.className = ""; }
    };
    source.onmessage = function (m) {
      var e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      var current = $("live");
      if (current && relevant(current.dataset.watch, e)) schedule();
    };
    source.addEventListener("reset", schedule);
  }

  function poll() {
    setInterval(function () {
      var live = $("live");
      if (live && live.dataset.poll && Date.now() - lastRefresh >= Number(live.dataset.poll)) refresh();
    }, 1000);
  }

  function act(button) {
    var body;
    try { body = JSON.parse(button.dataset.act); } catch (err) { flash("bad action", "error"); return; }
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    if (button.dataset.prompt) {
      var answer = window.prompt(button.dataset.prompt, button.dataset.default || "");
      if (answer === null) return;
      var n = Number(answer);
      body.values = (answer.trim() !== "" && !isNaN(n)) ? n : answer;
    }
    button.disabled = true;
    fetch("/api/act", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "farmnet" },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401) {
          window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
          return;
        }
        if (!r.ok) {
          flash((data.error && data.error.message) || r.statusText, "error");
        } else {
          flash(body.item + " " + body.action + ": done", "ok");
          schedule();
        }
      });
    }).catch(function (err) { flash(String(err), "error"); })
      .then(function () { button.disabled = false; });
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("[data-act]") : null;
    if (!button) return;
    ev.preventDefault();
    act(button);
  });

  watchEvents();
  poll();
  window.farmnet = { refresh: refresh, flash: flash };
})();
"""


def asset_version(text: str) -> str:
    """A short digest of an asset, for cache-busting URLs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
