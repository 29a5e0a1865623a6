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
progress { width: 110px; height: 12px; vertical-align: middle; -webkit-appearance: none; appearance: none;
  border: 1px solid #c5ccd3; border-radius: 3px; background: #eef1f4; }
progress::-webkit-progress-bar { background: #eef1f4; border-radius: 3px; }
progress::-webkit-progress-value { background: var(--RUN); border-radius: 3px; }
progress::-moz-progress-bar { background: var(--RUN); }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 14px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
  min-width: 120px; }
.card .n { font-size: 22px; font-weight: 700; }
.card .l { color: var(--muted); font-size: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 2px; max-width: 1100px; background: #fff; padding: 6px;
  border: 1px solid var(--line); }
.grid a { display: block; min-width: 30px; height: 18px; padding: 0 3px; border-radius: 2px;
  background: var(--RDY); color: #223; font-size: 10px; line-height: 18px; text-align: center;
  font-variant-numeric: tabular-nums; }
.grid a.s-RUN, .grid a.s-DON, .grid a.s-ERR, .grid a.s-OFF { color: #fff; }
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
.table-wrap { max-width: 100%; overflow-x: auto; }
table.list td, table.list th { white-space: nowrap; }
table.list td a.job-name { white-space: normal; }
table.blocks code { display: inline-block; max-width: 420px; word-break: break-all; }
details { margin: 6px 0; } form.inline { display: inline; } form.inline input { width: 80px; }
details summary { cursor: pointer; color: var(--link); }
th a.sorted { color: var(--fg); }
td.pick, th.pick { width: 24px; }
.pager { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 8px; margin: 6px 0;
  font-size: 13px; }
.pager a.current { font-weight: 700; color: var(--fg); }
.bulk { position: sticky; top: 0; z-index: 2; background: var(--bg); padding: 6px 0; align-items: center; }
.bulk .picked { font-size: 12px; color: var(--muted); margin-right: 6px; min-width: 74px; }
.bulk button:disabled { opacity: .45; cursor: default; }
#bulk-results div { font-size: 12px; } #bulk-results .error { color: #b3261e; }
#bulk-results .ok { color: #2d6a35; }
#live-status.off { color: #f0a020; }
form.block-edit { display: grid; grid-template-columns: repeat(2, max-content); gap: 4px 10px;
  padding: 6px; background: #f8fafc; }
form.block-edit label { display: contents; font-size: 12px; }
form.block-edit input { width: 150px; }
header { flex-wrap: wrap; }
@media (max-width: 1280px) { table.list td, table.list th { padding: 3px 6px; } progress { width: 70px; } }
@media (max-width: 1100px) {
  table.jobs th:nth-child(5), table.jobs td:nth-child(5), table.jobs th:nth-child(13),
  table.jobs td:nth-child(13) { display: none; }
}
@media (max-width: 700px) {
  body { font-size: 13px; } main { padding: 8px; } header { gap: 8px; padding: 6px 8px; }
  .card { min-width: 90px; padding: 6px 8px; }
  table.jobs th:nth-child(n+4):nth-child(-n+5), table.jobs td:nth-child(n+4):nth-child(-n+5),
  table.jobs th:nth-child(n+9), table.jobs td:nth-child(n+9),
  table.renders th:nth-child(n+6), table.renders td:nth-child(n+6) { display: none; }
  form.filters input { width: 100px; }
}
"""

JS = r"""
(function () {
  "use strict";
  var REFRESH_MS = 700, ROWS_MS = 250, MEMBERS_MS = 3000, MOVED_MS = 15000, TAIL_MS = 1500;
  function $(id) { return document.getElementById(id); }
  function live() { return $("live"); }

  function flash(text, kind) {
    var box = $("flash");
    if (!box) return;
    var item = document.createElement("div");
    item.className = kind || "";
    item.textContent = text;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, kind === "error" ? 9000 : 4000);
  }

  function get(url) {
    return fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "farmnet" } })
      .then(function (r) { return r.ok ? r.text() : null; });
  }

  // --- the live part fetched again whole (a page's head, a small page) ---------------
  var refreshing = false, again = false, timer = null, lastRefresh = 0;

  function refresh() {
    if (!live()) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    get(url.toString()).then(function (text) {
      if (text === null) return;
      var holder = document.createElement("div");
      holder.innerHTML = text;
      var fresh = holder.querySelector("#live");
      var current = live();
      if (fresh && current) { current.replaceWith(fresh); applySelection(); remember(); }
    }).catch(function () {}).then(function () {
      refreshing = false;
      if (again) { again = false; schedule(); }
    });
  }

  var due = 0;
  function schedule(wait) {  // the live part again, at the earliest time asked for
    var current = live(), least = current && current.dataset.refresh ? Number(current.dataset.refresh) : 0;
    var delay = Math.max(0, Math.max(wait || REFRESH_MS, least) - (Date.now() - lastRefresh));
    if (timer && Date.now() + delay >= due) return;
    if (timer) clearTimeout(timer);
    due = Date.now() + delay;
    timer = setTimeout(function () { timer = null; refresh(); }, delay);
  }

  // --- rows patched one by one (lists) ------------------------------------------------
  var pending = {}, rowsTimer = null;

  function rowParam(key) {  // job:7 -> 7, task:7:0:3 -> 0:3, render:r1 -> r1
    var parts = key.split(":");
    return parts[0] === "task" ? parts[2] + ":" + parts[3] : parts.slice(1).join(":");
  }

  function onScreen(key) {
    return document.querySelector('#live tr[data-key="' + CSS.escape(key) + '"]');
  }

  function fetchRows() {
    rowsTimer = null;
    var keys = Object.keys(pending);
    pending = {};
    if (!keys.length) return;
    var url = new URL(window.location.href);
    url.searchParams.set("rows", keys.map(rowParam).join(","));
    get(url.toString()).then(function (text) {
      if (text === null) return;
      var holder = document.createElement("div");
      holder.innerHTML = text;
      holder.querySelectorAll("tr[data-key]").forEach(function (row) {
        var old = onScreen(row.dataset.key);
        if (old) old.replaceWith(row);
      });
      applySelection();
    }).catch(function () {});
  }

  function patchRow(key) {
    pending[key] = true;
    if (!rowsTimer) rowsTimer = setTimeout(fetchRows, ROWS_MS);
  }

  function eventKeys(e) {
    switch (e.kind) {
      case "job": return ["job:" + e.job.id];
      case "job_deleted": return ["job:" + e.job_id];
      case "task": case "progress":
        var keys = ["job:" + e.job_id, "task:" + e.job_id + ":" + e.block + ":" + e.task];
        if (e.host) keys.push("render:" + e.host);
        return keys;
      case "render": return ["render:" + e.render.name];
      case "render_deleted": case "render_zombie": return ["render:" + e.name];
      case "user": return ["user:" + e.user.name];
      case "user_deleted": return ["user:" + e.name];
      default: return [];
    }
  }

  function patchCell(e) {  // a job's grid: the cell of the task, from the event itself
    var key = "task:" + e.job_id + ":" + e.block + ":" + e.task;
    var cell = document.querySelector('#grids [data-key="' + key + '"]');
    if (!cell) return;
    if (e.kind === "task") {
      cell.className = "t s-" + e.state;
      cell.dataset.state = e.state;
      cell.title = cell.title.split(":")[0] + ": " + e.state + (e.host ? " on " + e.host : "");
    } else {
      cell.title = cell.title.replace(/, \d+%$/, "") + ", " + e.progress + "%";
    }
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
      case "pools": return e.kind.indexOf("pool") === 0 || e.kind.indexOf("branch") === 0 ||
        e.kind.indexOf("render") === 0 || e.kind.indexOf("job") === 0;
      case "render": return (e.render && e.render.name === parts[1]) || e.name === parts[1] ||
        (e.kind === "task" && e.host === parts[1]);
      case "users": return e.kind === "user" || e.kind === "job" || e.kind === "task";
      default: return false;
    }
  }

  function onEvent(e) {
    var current = live();
    if (!current) return;
    if (e.kind === "task" || e.kind === "progress") patchCell(e);
    var rows = current.dataset.rows;
    if (!rows) {
      if (relevant(current.dataset.watch, e)) schedule();
      return;
    }
    var keys = eventKeys(e), members = false, moved = false;
    keys.forEach(function (key) {
      if (key.indexOf(rows + ":") !== 0) return;
      if (onScreen(key)) { patchRow(key); return; }
      if (e.kind === "task" || e.kind === "progress") return;
      if (known[key]) moved = true;  // changed elsewhere: may move into this page's order
      else { known[key] = true; members = true; }  // new: may join the page
    });
    if (e.kind.indexOf("deleted") > 0) members = true;
    if (members) schedule(MEMBERS_MS);
    else if (moved) schedule(MOVED_MS);
  }

  var known = {};  // rows seen (on screen or in events): a new one may join the page
  function remember() {
    document.querySelectorAll("#live tr[data-key]").forEach(function (r) { known[r.dataset.key] = true; });
  }

  function setStatus(text, on) {
    var status = $("live-status");
    if (status) { status.textContent = text; status.className = on ? "on" : "off"; }
  }

  function watchEvents() {
    var current = live();
    if (!current || !current.dataset.watch || !window.EventSource) return;
    var source = new EventSource("/events?after=" + encodeURIComponent(current.dataset.seq || "-1"));
    var down = null;
    source.onopen = function () {
      setStatus("live", true);
      if (down) { down = null; schedule(); }  // back after a gap: catch up
    };
    source.onerror = function () {
      if (!down) down = new Date();
      setStatus("reconnecting… (since " + down.toLocaleTimeString() + ")", false);
    };
    source.onmessage = function (m) {
      var e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      onEvent(e);
    };
    source.addEventListener("reset", function () { schedule(); });  // the server forgot: reload the part
  }

  function poll() {
    setInterval(function () {
      var current = live();
      var every = current && current.dataset.poll ? Number(current.dataset.poll) : 0;
      if (every && Date.now() - lastRefresh >= every) refresh();
    }, 1000);
  }

  // --- actions ------------------------------------------------------------------------
  function post(body) {
    return fetch("/api/act", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "farmnet" },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401) {
          window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
          return null;
        }
        if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
        return data.result;
      });
    });
  }

  function describe(result) {
    if (Array.isArray(result)) return result.length ? ": done for " + result.join(", ") : ": nothing to do";
    if (result && result.job_id !== undefined) return ": job " + result.job_id;
    return ": done";
  }

  function ask(element, n, body) {
    var confirmText = element.dataset.confirm;
    if (confirmText && !window.confirm(confirmText.replace("{n}", n))) return false;
    if (element.dataset.prompt) {
      var answer = window.prompt(element.dataset.prompt.replace("{n}", n), element.dataset.default || "");
      if (answer === null) return false;
      var number = Number(answer);
      body.values = (answer.trim() !== "" && !isNaN(number)) ? number : answer;
    }
    return true;
  }

  function act(button) {
    var body;
    try { body = JSON.parse(button.dataset.act); } catch (err) { flash("bad action", "error"); return; }
    if (!ask(button, 1, body)) return;
    button.disabled = true;
    post(body).then(function (result) {
      if (result !== null) { flash(body.item + " " + body.action + describe(result), "ok"); schedule(); }
    }).catch(function (err) { flash(err.message || String(err), "error"); })
      .then(function () { button.disabled = false; });
  }

  // --- selection and bulk actions -----------------------------------------------------
  var selected = {};

  function selectedKeys() { return Object.keys(selected); }

  function applySelection() {
    document.querySelectorAll("#live tr[data-key] input.pick").forEach(function (box) {
      box.checked = !!selected[box.closest("tr").dataset.key];
    });
    var bar = document.querySelector(".bulk");
    if (!bar) return;
    var n = selectedKeys().length;
    bar.querySelector(".picked").textContent = n + " selected";
    bar.querySelectorAll("button[data-bulk]").forEach(function (b) { b.disabled = n === 0; });
  }

  function pick(box) {
    var key = box.closest("tr").dataset.key;
    if (box.checked) selected[key] = true; else delete selected[key];
    applySelection();
  }

  function pickAll(box) {
    document.querySelectorAll("#live tr[data-key] input.pick").forEach(function (other) {
      var key = other.closest("tr").dataset.key;
      if (box.checked) selected[key] = true; else delete selected[key];
    });
    applySelection();
  }

  function bulkBodies(item, action, keys) {
    if (item === "jobs") {
      var ids = keys.map(function (k) { return Number(k.split(":")[1]); });
      return [{ item: item, action: action, filters: { id: ids } }];
    }
    if (item === "renders") {
      var names = keys.map(function (k) { return k.slice("render:".length); });
      return [{ item: item, action: action, filters: { name: names } }];
    }
    var groups = {};
    keys.forEach(function (k) {
      var p = k.split(":"), g = p[1] + ":" + p[2];
      groups[g] = groups[g] || { job_id: Number(p[1]), block: Number(p[2]), task: [] };
      groups[g].task.push(Number(p[3]));
    });
    return Object.keys(groups).map(function (g) {
      return { item: item, action: action, filters: groups[g] };
    });
  }

  function bulk(button) {
    var spec = JSON.parse(button.dataset.bulk), keys = selectedKeys();
    if (!keys.length) return;
    var probe = {};
    if (!ask(button, keys.length, probe)) return;
    var bodies = bulkBodies(spec.item, spec.action, keys);
    button.disabled = true;
    var results = $("bulk-results");
    Promise.all(bodies.map(function (body) {
      if (probe.values !== undefined) body.values = probe.values;
      return post(body).then(function (result) {
        var text = spec.item + " " + spec.action + describe(result);
        flash(text, "ok");
        return { ok: true, text: text };
      }).catch(function (err) {
        var text = spec.item + " " + spec.action + ": " + (err.message || String(err));
        flash(text, "error");
        return { ok: false, text: text };
      });
    })).then(function (outcomes) {
      if (results) {
        results.textContent = "";
        outcomes.forEach(function (o) {
          var line = document.createElement("div");
          line.className = o.ok ? "ok" : "error";
          line.textContent = o.text;
          results.appendChild(line);
        });
      }
      button.disabled = false;
      Object.keys(pending).length || keys.forEach(patchRow);
      if (spec.action === "delete") { selected = {}; schedule(); }
      applySelection();
    });
  }

  function saveBlock(form) {
    var body = JSON.parse(form.dataset.edit), values = {}, any = false;
    form.querySelectorAll("input[name]").forEach(function (input) {
      if (input.value === input.defaultValue) return;
      any = true;
      var number = input.dataset.kind === "number" && input.value.trim() !== "";
      values[input.name] = number ? Number(input.value) : input.value;
    });
    if (!any) { flash("nothing changed", "ok"); return; }
    body.values = values;
    post(body).then(function (result) {
      if (result !== null) { flash("block " + body.filters.block + " updated", "ok"); schedule(); }
    }).catch(function (err) { flash(err.message || String(err), "error"); });
  }

  // --- a running task's output, followed ----------------------------------------------
  function followTail() {
    var pre = document.querySelector("pre.output[data-tail]");
    if (!pre) return;
    var url = pre.dataset.tail + "&offset=" + pre.dataset.offset;
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "farmnet" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        if (!answer) return;
        var result = answer.result, atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        if (result.data) pre.appendChild(document.createTextNode(result.data));
        pre.dataset.offset = result.next_offset;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
        if (result.complete) delete pre.dataset.tail;
      }).catch(function () {});
  }

  document.addEventListener("click", function (ev) {
    var target = ev.target;
    if (!target.closest) return;
    var button = target.closest("[data-act]");
    if (button) { ev.preventDefault(); act(button); return; }
    var many = target.closest("[data-bulk]");
    if (many) { ev.preventDefault(); bulk(many); }
  });
  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t.classList && t.classList.contains("pick")) pick(t);
    else if (t.classList && t.classList.contains("pick-all")) pickAll(t);
  });
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset && form.dataset.edit) { ev.preventDefault(); saveBlock(form); }
  });

  remember();
  watchEvents();
  poll();
  setInterval(followTail, TAIL_MS);
  applySelection();
  window.farmnet = { refresh: refresh, flash: flash, selected: selectedKeys };
})();
"""


def asset_version(text: str) -> str:
    """A short digest of an asset, for cache-busting URLs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
