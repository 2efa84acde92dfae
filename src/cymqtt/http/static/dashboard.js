// The cymqtt dashboard: it polls the broker's REST API (/api/v1/) and shows what it answers.
// No framework, no build step, nothing from the network: the charts are drawn here on <canvas>.
//
// Every second it reads /stats (the tiles; the charts keep the last five minutes, from the
// moment the page opened); every two seconds the open tab's list (one page of it); the
// listeners every ten. It pauses while the tab is hidden. Everything the broker reports
// (client ids, topics, payloads) goes into the page as text, never as HTML.
//
// Token: with an [http] token the API answers 401 and the page shows a token field; the token
// is kept in this tab's sessionStorage. Opening /?token=... does the same and then removes it
// from the address bar.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "cymqtt.token";
  const WINDOW = 300;            // seconds of history in the charts
  const STATS_EVERY = 1000;      // ms between /stats polls
  const LIST_EVERY = 2000;       // ms between polls of the open list
  const LISTENERS_EVERY = 10000;
  const PAGE_SIZE = 50;
  const CONFIRM_FOR = 3000;      // ms a "Confirm" button waits for its second click

  const $ = (id) => document.getElementById(id);

  // -- the token ---------------------------------------------------------------------------

  function takeTokenFromUrl() {
    const params = new URLSearchParams(location.search);
    if (!params.has("token")) return;
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askForToken(message) {
    const bar = $("token-bar");
    $("token-error").textContent = token() ? message || "wrong token" : "";
    if (bar.hidden) {
      bar.hidden = false;
      $("token-input").focus();
    }
  }

  $("token-bar").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("token-bar").hidden = true;
    refreshAll();
  });

  // -- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = {};
    const tok = token();
    if (tok) headers.Authorization = "Bearer " + tok;
    const resp = await fetch(API + path, { ...options, headers, cache: "no-store" });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;                       // not JSON: the status says enough
    }
    const message = (body && body.error) || resp.statusText;
    if (resp.status === 401) {
      askForToken(message);
    }
    if (!resp.ok) throw new ApiError(resp.status, message);
    return body;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    }
    return q.toString() ? "?" + q : "";
  }

  // -- formatting --------------------------------------------------------------------------

  const fmtInt = (n) => Math.round(n).toLocaleString("en-US");

  function fmtRate(x) {
    if (x >= 100) return fmtInt(x);
    if (x >= 10) return x.toFixed(1);
    return x === 0 ? "0" : x.toFixed(x < 1 ? 2 : 1);
  }

  function fmtBytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtDuration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60, sec = Math.floor(s % 60);
    const two = (x) => String(x).padStart(2, "0");
    if (d) return `${d}d ${h}h ${two(m)}m`;
    if (h) return `${h}h ${two(m)}m`;
    if (m) return `${m}m ${two(sec)}s`;
    return `${sec}s`;
  }

  // Control characters of a payload preview as a visible dot.
  const printable = (text) => text.replace(/[\u0000-\u001f\u007f\ufffd]/g, "\u00b7");

  // -- DOM ---------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "title") node.title = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const td = (text, cls = "") => el("td", cls ? { class: cls } : {}, text);
  const num = (n) => td(fmtInt(n), "num");

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  function fillTable(table, rows, emptyText) {
    const body = table.tBodies[0];
    const cols = table.tHead.rows[0].cells.length;
    if (!rows.length) {
      rows = [el("tr", {}, el("td", { class: "empty", colspan: cols }, emptyText))];
    }
    body.replaceChildren(...rows);
  }

  // A button that asks for a second click within CONFIRM_FOR ms before it acts. The lists are
  // redrawn every few seconds, so the first click is remembered by `key`, not by the button.
  const confirming = new Map();  // key -> when its confirmation lapses (Date.now() ms)

  function confirmButton(label, cls, key, action) {
    const button = el("button", { type: "button", class: "danger " + cls }, label);
    const armed = () => (confirming.get(key) || 0) > Date.now();
    const show = () => {
      button.textContent = armed() ? "Confirm" : label;
      button.classList.toggle("confirm", armed());
    };
    show();
    if (armed()) setTimeout(show, confirming.get(key) - Date.now());
    button.addEventListener("click", async () => {
      if (!armed()) {
        confirming.set(key, Date.now() + CONFIRM_FOR);
        show();
        setTimeout(show, CONFIRM_FOR);
        return;
      }
      confirming.delete(key);
      button.disabled = true;
      button.textContent = "…";
      try {
        await action();
      } catch (e) {
        showListError(e);
      }
      refreshList();
      pollStats();
    });
    return button;
  }

  // -- history and the charts ----------------------------------------------------------------

  const samples = [];            // {t, connections, clients, in, out, dropped}
  let previous = null;           // the last /stats answer and when it came

  function addSample(stats) {
    const t = performance.now() / 1000;
    const s = { t, connections: stats.connections, clients: stats.clients_connected,
                in: null, out: null, dropped: null };
    if (previous) {
      const dt = t - previous.t;
      const rate = (key) => Math.max(0, stats[key] - previous.stats[key]) / dt;
      s.in = rate("messages_received");
      s.out = rate("messages_sent");
      s.dropped = rate("messages_dropped");
      s.bytesIn = rate("bytes_received");
      s.bytesOut = rate("bytes_sent");
    }
    previous = { t, stats };
    samples.push(s);
    while (samples.length && samples[0].t < t - WINDOW - 5) samples.shift();
    return s;
  }

  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // A y-axis top at a round number above `max`, and the step between its gridlines.
  function niceScale(max, ticks = 4) {
    if (!(max > 0)) return { top: ticks, step: 1 };
    const raw = max / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    return { top: step * ticks, step };
  }

  function shortNumber(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
    return String(Math.round(v * 100) / 100);
  }

  // series: [{key, color, fill}] over `samples`; the x-axis is the last WINDOW seconds.
  function drawChart(canvas, series) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pad = { left: 46, right: 8, top: 8, bottom: 22 };
    const pw = w - pad.left - pad.right, ph = h - pad.top - pad.bottom;
    const now = performance.now() / 1000;
    const x = (t) => pad.left + pw * (1 - (now - t) / WINDOW);
    let max = 0;
    for (const s of samples) {
      for (const { key } of series) if (s[key] !== null && s[key] > max) max = s[key];
    }
    const { top, step } = niceScale(max);
    const y = (v) => pad.top + ph * (1 - v / top);

    g.font = "11px system-ui, 'DejaVu Sans', sans-serif";
    g.fillStyle = css("--faint");
    g.strokeStyle = css("--border");
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let v = 0; v <= top + step / 2; v += step) {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(pad.left, yy);
      g.lineTo(w - pad.right, yy);
      g.stroke();
      g.fillText(shortNumber(v), pad.left - 8, yy);
    }
    g.textBaseline = "top";
    for (let ago = WINDOW; ago >= 0; ago -= 60) {
      g.textAlign = ago === WINDOW ? "left" : ago === 0 ? "right" : "center";
      g.fillText(ago ? `-${ago / 60}m` : "now", x(now - ago), h - pad.bottom + 6);
    }

    g.save();
    g.beginPath();
    g.rect(pad.left, pad.top - 2, pw, ph + 4);
    g.clip();
    for (const { key, color, fill } of series) {
      const pts = samples.filter((s) => s[key] !== null).map((s) => [x(s.t), y(s[key])]);
      if (!pts.length) continue;
      g.beginPath();
      pts.forEach(([px, py], i) => (i ? g.lineTo(px, py) : g.moveTo(px, py)));
      g.strokeStyle = color;
      g.lineWidth = 1.75;
      g.lineJoin = "round";
      g.stroke();
      if (fill) {
        g.lineTo(pts[pts.length - 1][0], y(0));
        g.lineTo(pts[0][0], y(0));
        g.closePath();
        const grad = g.createLinearGradient(0, pad.top, 0, pad.top + ph);
        grad.addColorStop(0, color + "40");
        grad.addColorStop(1, color + "00");
        g.fillStyle = grad;
        g.fill();
      }
    }
    g.restore();
  }

  function drawCharts() {
    drawChart($("chart-connections"), [
      { key: "connections", color: css("--conn"), fill: true },
      { key: "clients", color: css("--clients"), fill: false },
    ]);
    drawChart($("chart-rates"), [
      { key: "in", color: css("--in"), fill: true },
      { key: "out", color: css("--out"), fill: false },
      { key: "dropped", color: css("--drop"), fill: false },
    ]);
  }

  // -- the stats -----------------------------------------------------------------------------

  function setStatus(live, text) {
    $("status").className = "status " + (live ? "live" : "down");
    setText("status-text", text);
  }

  function showStats(st, s) {
    setText("version", "v" + st.version);
    setText("uptime", fmtDuration(st.uptime));
    setText("stat-connections", fmtInt(st.connections));
    setText("stat-clients", fmtInt(st.clients_connected));
    setText("stat-offline", fmtInt(st.clients_disconnected));
    setText("stat-subscriptions", fmtInt(st.subscriptions));
    setText("stat-sessions", fmtInt(st.sessions));
    setText("stat-retained", fmtInt(st.retained_messages));
    setText("stat-received", fmtInt(st.messages_received));
    setText("stat-sent", fmtInt(st.messages_sent));
    setText("stat-dropped", fmtInt(st.messages_dropped));
    setText("stat-inflight", fmtInt(st.inflight_messages));
    setText("stat-queued", fmtInt(st.queued_messages));
    setText("count-clients", fmtInt(st.clients_connected));
    setText("count-subscriptions", fmtInt(st.subscriptions));
    setText("count-retained", fmtInt(st.retained_messages));
    if (s.in !== null) {
      setText("stat-rate-in", fmtRate(s.in));
      setText("stat-rate-out", fmtRate(s.out));
      setText("stat-rate-dropped", fmtRate(s.dropped));
      setText("stat-bytes-in", fmtBytes(s.bytesIn) + "/s");
      setText("stat-bytes-out", fmtBytes(s.bytesOut) + "/s");
    }
  }

  async function pollStats() {
    try {
      const st = await api("/stats");
      showStats(st, addSample(st));
      setStatus(true, "live");
    } catch (e) {
      setStatus(false, e.status === 401 ? "token needed" : "broker unreachable");
    }
    drawCharts();
  }

  // -- the lists -----------------------------------------------------------------------------

  function clientRow(c) {
    const proto = el("span", { class: "badge" + (c.protocol === "5.0" ? " v5" : "") },
                     "MQTT " + c.protocol);
    const row = el("tr", { "data-client-id": c.client_id },
      td(c.client_id, "id mono"), el("td", {}, proto), td(c.address, "mono"),
      td(c.username ?? "–"), td(c.keepalive ? c.keepalive + " s" : "off", "num"),
      num(c.subscription_count), num(c.inflight), num(c.queued), num(c.received),
      num(c.sent), num(c.dropped),
      el("td", { class: "actions" }, confirmButton("Disconnect", "disconnect",
        "client:" + c.client_id,
        () => api("/clients/" + encodeURIComponent(c.client_id), { method: "DELETE" }))));
    row.cells[0].title = c.client_id;
    return row;
  }

  function subscriptionRow(s) {
    const opts = [s.no_local && "no local", s.retain_as_published && "retain as published",
                  s.retain_handling && `retain handling ${s.retain_handling}`,
                  s.group && `shared: ${s.group}`,
                  s.subscription_identifier && `id ${s.subscription_identifier}`].filter(Boolean);
    return el("tr", {}, td(s.client_id, "id mono"), td(s.topic_filter, "mono"), num(s.qos),
      td(opts.join(", ") || "–"),
      el("td", {}, el("span", { class: "badge " + (s.connected ? "on" : "off") },
                      s.connected ? "connected" : "offline")));
  }

  function retainedRow(r) {
    return el("tr", { "data-topic": r.topic }, td(r.topic, "id mono"), num(r.qos),
      td(fmtBytes(r.size), "num"), td(printable(r.preview) || "–", "payload mono"),
      el("td", { class: "actions" }, confirmButton("Delete", "delete", "retained:" + r.topic, () =>
        api("/retained/" + encodeURIComponent(r.topic), { method: "DELETE" }))));
  }

  const LISTS = {
    clients: { input: "client-search", param: "search", path: "/clients", row: clientRow,
               empty: (q) => (q ? `No connected client id contains “${q}”`
                                : "No clients connected") },
    subscriptions: { input: "subscription-search", param: "search", path: "/subscriptions",
                     row: subscriptionRow,
                     empty: (q) => q ? `No topic filter contains “${q}”` : "No subscriptions" },
    retained: { input: "retained-filter", param: "filter", path: "/retained", row: retainedRow,
                empty: (q) => `No retained messages match “${q || "#"}”` },
  };
  for (const list of Object.values(LISTS)) list.page = 1;

  let activeTab = "clients";

  function showListError(e) {
    setText("list-error", e && e.status !== 401 ? e.message : "");
  }

  function renderPager(name, list, data) {
    const pager = document.querySelector(`.pager[data-list="${name}"]`);
    const first = data.total ? (data.page - 1) * data.limit + 1 : 0;
    const last = Math.min(data.total, data.page * data.limit);
    const prev = el("button", { type: "button" }, "‹ Prev");
    const next = el("button", { type: "button" }, "Next ›");
    prev.disabled = data.page <= 1;
    next.disabled = data.page >= data.pages;
    prev.addEventListener("click", () => { list.page -= 1; refreshList(); });
    next.addEventListener("click", () => { list.page += 1; refreshList(); });
    const range = `${fmtInt(first)}–${fmtInt(last)} of ${fmtInt(data.total)}`;
    pager.replaceChildren(el("span", {}, range), prev, next);
  }

  async function refreshList() {
    const name = activeTab;
    if (name === "listeners") return refreshListeners();
    const list = LISTS[name];
    const q = $(list.input).value.trim();
    const fetchPage = () => api(list.path + query({ [list.param]: q, page: list.page,
                                                     limit: PAGE_SIZE }));
    try {
      let data = await fetchPage();
      if (data.page > Math.max(1, data.pages)) {       // the list shrank under us
        list.page = Math.max(1, data.pages);
        data = await fetchPage();
      }
      if (name !== activeTab) return;
      fillTable($(name + "-table"), data.items.map(list.row), list.empty(q));
      renderPager(name, list, data);
      showListError(null);
    } catch (e) {
      showListError(e);
    }
  }

  async function refreshListeners() {
    try {
      const data = await api("/listeners");
      const rows = data.listeners.map((l) => el("tr", {}, td(l.name, "mono"),
        td(`${l.host}:${l.port}`, "mono"), td(l.protocol.toUpperCase()),
        td(l.tls ? (l.mtls ? "TLS, client certificates" : "TLS") : "–"),
        num(l.clients), td(l.max_connections < 0 ? "no limit" : fmtInt(l.max_connections), "num")));
      const h = data.http;
      rows.push(el("tr", {}, td("http", "mono"), td(`${h.host}:${h.port}`, "mono"),
        td("HTTP API, metrics, dashboard"), td(h.token_required ? "bearer token" : "–"),
        td("–", "num"), td("–", "num")));
      fillTable($("listeners-table"), rows, "No listeners");
      const mqtt = data.listeners.map((l) => `${l.tls ? "MQTTS" : "MQTT"} ${l.host}:${l.port}`);
      setText("listen-summary", mqtt.join(", "));
    } catch (e) {
      showListError(e);
    }
  }

  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      activeTab = tab.dataset.tab;
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "panel-" + activeTab;
      showListError(null);
      refreshList();
    });
  }

  for (const [name, list] of Object.entries(LISTS)) {
    let timer = null;
    $(list.input).addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { list.page = 1; if (activeTab === name) refreshList(); }, 250);
    });
  }

  // -- the polling loop ------------------------------------------------------------------------

  function every(ms, fn) {
    const run = async () => {
      if (!document.hidden) await fn();
      setTimeout(run, ms);
    };
    run();
  }

  function refreshAll() {
    pollStats();
    refreshList();
    refreshListeners();
  }

  takeTokenFromUrl();
  every(STATS_EVERY, pollStats);
  every(LIST_EVERY, refreshList);
  every(LISTENERS_EVERY, refreshListeners);
  window.addEventListener("resize", drawCharts);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshAll(); });
})();
