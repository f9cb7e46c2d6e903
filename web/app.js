/* dropwatch dashboard: one page, plain DOM, talks to the daemon's JSON API.
 *
 * State lives in the URL (?label=customerX&since=-1h...), so a link can be pasted
 * into an incident channel. Every panel is filled from its own request and
 * renders as soon as that answers; the chart is asked for first.
 */
"use strict";

(function () {
  const FILTER_KEYS = ["label", "side", "reason", "location", "iface", "pop", "source"];
  const SAMPLE_KEYS = ["label", "side", "reason", "pop", "source"]; // what /drops/samples filters on
  const BREAKDOWNS = ["reason", "side", "location", "iface", "pop", "source"];
  const DEFAULTS = {since: "-15m", until: "now", by: "label", mode: "stack", refresh: 10};
  const RANGES = ["-15m", "-1h", "-6h", "-24h"];
  const TOP_SERIES = 10;
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7",
    "#9c755f", "#8cd17d"];
  const TIMEOUT_MS = 15000;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const nf = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => nf.format(n);
  // KPI tiles: exact below ten million, compact above (the exact value is in the title).
  const fmtBig = (n) => n < 1e7 ? nf.format(n) : (n < 1e9 ? (n / 1e6).toFixed(n < 1e8 ? 1 : 0) + "M" :
    (n / 1e9).toFixed(1) + "G");
  function setKpi(id, text, value, title) {
    const e = $(id);
    e.textContent = text;
    if (value !== undefined) e.dataset.value = String(value);
    e.title = title || text;
  }
  const fmtRate = (v) => window.DWChart.fmtRate(v);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(e.dataset, v);
        else e.setAttribute(k, v === true ? "" : v);
      }
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }

  // ------------------------------------------------------------------ state <-> URL

  const state = {filters: {}, since: DEFAULTS.since, until: DEFAULTS.until, by: DEFAULTS.by, mode: DEFAULTS.mode,
    refresh: DEFAULTS.refresh, sort: {key: "drops", dir: -1}, search: ""};

  function split(v) { return (v || "").split(",").map((x) => x.trim()).filter(Boolean); }

  function readURL() {
    const q = new URLSearchParams(location.search);
    state.filters = {};
    for (const k of FILTER_KEYS) {
      const vals = q.getAll(k).flatMap(split);
      if (vals.length) state.filters[k] = Array.from(new Set(vals));
    }
    state.since = q.get("since") || DEFAULTS.since;
    state.until = q.get("until") || DEFAULTS.until;
    state.by = ["label", ...BREAKDOWNS].includes(q.get("by")) ? q.get("by") : DEFAULTS.by;
    state.mode = q.get("mode") === "lines" ? "lines" : DEFAULTS.mode;
    const r = q.get("refresh");
    state.refresh = r !== null && /^\d+$/.test(r) ? Math.min(3600, parseInt(r, 10)) : DEFAULTS.refresh;
  }

  function pageQuery(over) {
    const s = Object.assign({}, state, over || {});
    const q = new URLSearchParams();
    for (const k of FILTER_KEYS) if (s.filters[k] && s.filters[k].length) q.set(k, s.filters[k].join(","));
    if (s.since !== DEFAULTS.since || q.toString()) q.set("since", s.since);
    if (s.until !== DEFAULTS.until) q.set("until", s.until);
    if (s.by !== DEFAULTS.by) q.set("by", s.by);
    if (s.mode !== DEFAULTS.mode) q.set("mode", s.mode);
    if (s.refresh !== DEFAULTS.refresh) q.set("refresh", String(s.refresh));
    const str = q.toString().replace(/%2C/g, ",").replace(/%3A/g, ":");
    return str ? "?" + str : location.pathname;
  }

  function writeURL(push) {
    const url = pageQuery();
    if (url === location.search || (url === location.pathname && !location.search)) return;
    (push ? history.pushState : history.replaceState).call(history, null, "", url);
  }

  function filterParams(keys, except) {
    const p = {};
    for (const k of keys || FILTER_KEYS) {
      if (k === except) continue;
      if (state.filters[k] && state.filters[k].length) p[k] = state.filters[k].join(",");
    }
    return p;
  }

  function setFilter(key, value, {toggle = true} = {}) {
    const cur = state.filters[key] || [];
    if (toggle && cur.length === 1 && cur[0] === value) delete state.filters[key];
    else state.filters[key] = [value];
    changed(true);
  }

  function removeFilter(key, value) {
    const cur = (state.filters[key] || []).filter((v) => v !== value);
    if (cur.length) state.filters[key] = cur; else delete state.filters[key];
    changed(true);
  }

  function changed(push) {
    writeURL(push);
    renderControls();
    load();
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(kind, message, status, body) { super(message); this.kind = kind; this.status = status; this.body = body; }
  }

  // A daemon started with a token (--token-file) wants "Authorization: Bearer" on reads too
  // unless --public-reads; the page asks for it once and keeps it for this tab only.
  const TOKEN_KEY = "dropwatch-token";
  function getToken() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }
  function setToken(t) { try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* private mode */ } }
  function authHeaders(h) {
    const t = getToken();
    if (t) h.authorization = "Bearer " + t;
    return h;
  }

  async function api(path, params) {
    const q = new URLSearchParams(params || {}).toString().replace(/%2C/g, ",");
    const url = path + (q ? "?" + q : "");
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    let resp;
    try {
      resp = await fetch(url, {signal: ctl.signal, headers: authHeaders({accept: "application/json"}), cache: "no-store"});
    } catch (e) {
      throw new ApiError("unreachable", e.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s` :
        String(e.message || e), 0);
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      let msg = body && body.detail !== undefined ? body.detail : resp.statusText;
      if (typeof msg !== "string") msg = (msg && msg.message) || JSON.stringify(msg);
      throw new ApiError("http", `${path}: ${resp.status} ${msg}`, resp.status, body);
    }
    return body;
  }

  // ------------------------------------------------------------------ loading

  let gen = 0;
  let timer = null;
  let lastOk = null;
  let firstChartDone = false;
  let lastSeries = null; // label -> counts, for sparklines
  let lastLabelRows = [];
  const colorOf = new Map();

  const status = {unreachable: null, apiError: null, auth: null, health: null};

  function load() {
    const my = ++gen;
    clearTimeout(timer);
    status.unreachable = null;
    status.apiError = null;
    status.auth = null;
    const isCurrent = () => my === gen;
    const range = {since: state.since, until: state.until};
    const filt = filterParams();
    const tasks = [];
    const track = (p, onOk) => {
      const t = p.then((v) => { if (isCurrent()) onOk(v); }, (e) => { if (isCurrent()) noteError(e); throw e; });
      tasks.push(t);
      return t;
    };

    // The chart first, alone with the cheap health check: it is what a person looks
    // at, and the daemon answers one query faster than nine at once. The other
    // panels are asked for when it has answered.
    const chartReq = api("/drops/timeseries", Object.assign({}, filt, range, {step: "auto", group_by: state.by}));
    track(chartReq, renderChart).catch(() => renderChartError());
    track(api("/healthz").then((b) => ({ok: true, body: b}), (e) => {
      if (e.kind === "http" && e.status === 503 && e.body) return {ok: false, body: e.body};
      throw e;
    }), (h) => { status.health = h; }).catch(() => { status.health = null; });

    const rest = () => {
      if (!isCurrent()) return;
      // Sparklines: per label, the page filters minus the label filter (so every row has one).
      const sparkSame = state.by === "label" && !state.filters.label;
      const sparkReq = sparkSame ? chartReq :
        api("/drops/timeseries", Object.assign({}, filterParams(null, "label"), range, {step: "auto", group_by: "label"}));
      // Packets are counted per label and PoP: a PoP filter applies to them too.
      const labelsReq = api("/labels", Object.assign({}, filterParams(["pop"]), range));
      const labelDropsReq = api("/drops", Object.assign({}, filterParams(null, "label"), range,
        {group_by: "label,reason", limit: 10000}));
      track(Promise.all([labelsReq, labelDropsReq, sparkReq]), renderLabels).catch(() => renderLabelsError());
      track(labelsReq, renderRules).catch(() => {});
      const bds = {};
      for (const key of BREAKDOWNS) {
        bds[key] = api("/drops", Object.assign({}, filt, range, {group_by: key, limit: 50}));
        track(bds[key], (r) => renderBreakdown(key, r)).catch(() => renderBreakdownError(key));
      }
      track(Promise.all([bds.reason, chartReq, labelsReq]), renderKpis).catch(() => {});
      track(api("/drops/samples", Object.assign({}, filterParams(SAMPLE_KEYS), {limit: 100})), renderSamples)
        .catch((e) => renderSamplesError(e));
      return Promise.allSettled(tasks);
    };

    chartReq.then(rest, rest).then(() => {
      if (!isCurrent()) return;
      if (!status.unreachable) {
        lastOk = new Date();
        $("#updated").textContent = "updated " + lastOk.toLocaleTimeString();
      }
      renderStatus();
      schedule();
      document.body.dataset.loaded = String(my);
    });
  }

  function schedule() {
    clearTimeout(timer);
    const live = state.until === "now" || state.until.startsWith("-"); // relative: moves with time
    if (state.refresh > 0 && (live || status.unreachable)) {
      timer = setTimeout(() => { if (!document.hidden) load(); else schedule(); }, state.refresh * 1000);
    }
  }

  function noteError(e) {
    if (!(e instanceof ApiError)) { status.apiError = status.apiError || String(e); return; }
    if (e.kind === "unreachable") status.unreachable = e.message;
    else if (e.status === 401) status.auth = e.message;
    else if (e.status === 503 && e.body && e.body.status) { /* health: handled */ }
    else if (e.status === 404 && /samples/.test(e.message)) { /* optional endpoint */ }
    else status.apiError = status.apiError || e.message;
  }

  // ------------------------------------------------------------------ status / banner

  function renderStatus() {
    const pill = $("#health"), banner = $("#banner");
    banner.textContent = "";
    let kind = null;
    document.body.dataset.api = status.unreachable ? "unreachable" : status.apiError ? "error" : "ok";
    document.body.classList.toggle("stale", !!status.unreachable);
    if (status.unreachable) {
      pill.dataset.state = "unreachable";
      pill.textContent = "API unreachable";
      kind = "error";
      banner.append(el("b", {text: "API unreachable. "}),
        `Cannot reach the dropwatch daemon at ${location.origin} (${status.unreachable}). `,
        lastOk ? `Showing data from ${lastOk.toLocaleTimeString()}. ` : "No data loaded yet. ",
        state.refresh > 0 ? `Retrying every ${state.refresh} s. ` : "",
        el("button", {type: "button", class: "link", text: "retry now", onclick: () => load()}));
    } else if (status.auth) {
      pill.dataset.state = "unhealthy";
      pill.textContent = "token needed";
      kind = "warn";
      const input = el("input", {type: "password", id: "token", placeholder: "API token", autocomplete: "off", size: "28"});
      banner.append(el("b", {text: "API token needed. "}),
        getToken() ? "The daemon refused the token given (401). " : "This daemon requires a token for reads (401). ",
        el("form", {class: "token-form", onsubmit: (e) => { e.preventDefault(); setToken(input.value.trim()); load(); }},
          input, el("button", {type: "submit", text: "use token"})));
    } else {
      const h = status.health;
      if (!h) {
        pill.dataset.state = "unknown";
        pill.textContent = "health unknown";
      } else if (!h.ok) {
        pill.dataset.state = "unhealthy";
        const problems = (h.body.problems || []).join("; ") || h.body.status;
        const notAttached = (h.body.problems || []).some((p) => /attached/.test(p)) ||
          !Object.keys(h.body.attached || {}).length;
        pill.textContent = notAttached ? "not attached" : "unhealthy";
        kind = "warn";
        banner.append(el("b", {text: notAttached ? "Daemon not attached. " : "Daemon unhealthy. "}),
          `GET /healthz answered 503: ${problems}. `,
          notAttached ? "New drops are not being counted; what is shown is history." :
            "Counts may be stale.");
      } else {
        const att = Object.entries(h.body.attached || {}).map(([i, m]) => `${i} (${m})`).join(", ");
        pill.dataset.state = h.body.status === "ok" ? "ok" : "degraded";
        pill.textContent = h.body.status === "ok" ? "attached" : h.body.status;
        pill.title = `attached: ${att || "none"} · reader ${h.body.reader || "none"} · last poll ` +
          `${h.body.poll_age_s}s ago` + ((h.body.problems || []).length ? " · " + h.body.problems.join("; ") : "");
        if (h.body.status !== "ok") {
          kind = "warn";
          banner.append(el("b", {text: "Degraded. "}), (h.body.problems || []).join("; "));
        }
      }
      if (status.apiError) {
        if (kind) banner.append(el("br"));
        kind = "error";
        banner.append(el("b", {text: "API error. "}), status.apiError);
      }
    }
    banner.hidden = !kind;
    banner.dataset.kind = kind || "";
    updateEmptyChartText();
  }

  // ------------------------------------------------------------------ controls

  function renderControls() {
    for (const b of $$(".range button[data-since]")) {
      b.classList.toggle("active", state.until === "now" && b.dataset.since === state.since);
    }
    const custom = !(state.until === "now" && RANGES.includes(state.since));
    $("#custom-toggle").classList.toggle("active", custom);
    $("#custom-since").value = state.since;
    $("#custom-until").value = state.until;
    if (custom) { $("#custom").hidden = false; $("#custom-toggle").setAttribute("aria-expanded", "true"); }
    $("#chart-by").value = state.by;
    for (const b of $$(".seg button")) b.classList.toggle("active", b.dataset.mode === state.mode);
    const sel = $("#refresh");
    if (!Array.from(sel.options).some((o) => o.value === String(state.refresh))) {
      sel.append(el("option", {value: String(state.refresh), text: state.refresh + " s"}));
    }
    sel.value = String(state.refresh);
    const chips = $("#chips");
    chips.textContent = "";
    let any = false;
    for (const k of FILTER_KEYS) {
      for (const v of state.filters[k] || []) {
        any = true;
        chips.append(el("span", {class: "chip", dataset: {key: k, value: v}},
          el("span", {class: "muted", text: k + "="}), v,
          el("button", {type: "button", title: `remove ${k}=${v}`, "aria-label": `remove ${k} ${v}`, text: "\u00d7",
            onclick: () => removeFilter(k, v)})));
      }
    }
    if (!any) chips.append(el("span", {class: "muted", text: "none (all labels)"}));
    $("#clear-filters").hidden = !any;
    const pq = new URLSearchParams(filterParams(SAMPLE_KEYS)).toString().replace(/%2C/g, ",");
    $("#pcap").href = "/drops/samples.pcap" + (pq ? "?" + pq : "");
    const ignored = ["location", "iface"].filter((k) => state.filters[k]);
    $("#samples-note").textContent = ignored.length ? `(samples not filtered by ${ignored.join(", ")})` : "";
  }

  function bindControls() {
    for (const b of $$(".range button[data-since]")) {
      b.addEventListener("click", () => { state.since = b.dataset.since; state.until = "now"; changed(true); });
    }
    $("#custom-toggle").addEventListener("click", () => {
      const f = $("#custom");
      f.hidden = !f.hidden;
      $("#custom-toggle").setAttribute("aria-expanded", String(!f.hidden));
      if (!f.hidden) $("#custom-since").focus();
    });
    $("#custom").addEventListener("submit", (e) => {
      e.preventDefault();
      state.since = $("#custom-since").value.trim() || DEFAULTS.since;
      state.until = $("#custom-until").value.trim() || "now";
      changed(true);
    });
    $("#refresh").addEventListener("change", (e) => { state.refresh = parseInt(e.target.value, 10) || 0; changed(false); });
    $("#reload").addEventListener("click", () => load());
    $("#chart-by").addEventListener("change", (e) => { state.by = e.target.value; changed(true); });
    for (const b of $$(".seg button")) b.addEventListener("click", () => { state.mode = b.dataset.mode; changed(true); });
    $("#clear-filters").addEventListener("click", () => { state.filters = {}; changed(true); });
    $("#label-search").addEventListener("input", (e) => { state.search = e.target.value.trim().toLowerCase(); drawLabelRows(); });
    for (const th of $$("#labels th[data-sort]")) {
      th.addEventListener("click", () => {
        const k = th.dataset.sort;
        state.sort = {key: k, dir: state.sort.key === k ? -state.sort.dir : (k === "label" || k === "reason" ? 1 : -1)};
        drawLabelRows();
      });
    }
    $("#pcap").addEventListener("click", (e) => {
      const a = e.currentTarget;
      if (a.getAttribute("aria-disabled") === "true") { e.preventDefault(); return; }
      if (!getToken()) return; // a plain link downloads it
      e.preventDefault(); // a link cannot carry the Authorization header: fetch, then save the blob
      fetch(a.href, {headers: authHeaders({})}).then((r) => {
        if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
        return r.blob();
      }).then((b) => {
        const u = URL.createObjectURL(b);
        const t = el("a", {href: u, download: "dropwatch-samples.pcapng"});
        document.body.append(t);
        t.click();
        t.remove();
        setTimeout(() => URL.revokeObjectURL(u), 10000);
      }).catch((err) => { status.apiError = "pcap download: " + err.message; renderStatus(); });
    });
    window.addEventListener("popstate", () => { readURL(); renderControls(); load(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden && state.refresh > 0) load(); });
  }

  // ------------------------------------------------------------------ chart

  let chart = null;

  function assignColors(names) {
    const used = new Set();
    const out = new Map();
    for (const n of names) {
      const c = colorOf.get(n);
      if (c && !used.has(c)) { out.set(n, c); used.add(c); }
    }
    for (const n of names) {
      if (out.has(n)) continue;
      const c = PALETTE.find((p) => !used.has(p)) || PALETTE[out.size % PALETTE.length];
      out.set(n, c); used.add(c); colorOf.set(n, c);
    }
    return out;
  }

  function renderChart(ts) {
    const xs = ts.buckets.map((b) => Date.parse(b) / 1000);
    const step = ts.step_s;
    const groupName = (s) => Object.values(s.group).join(" ") || "all";
    let total = 0;
    const all = ts.series.map((s) => {
      const t = s.counts.reduce((a, b) => a + b, 0);
      total += t;
      return {name: groupName(s), total: t, counts: s.counts};
    }).filter((s) => s.total > 0);
    const top = all.slice(0, TOP_SERIES);
    const rest = all.slice(TOP_SERIES);
    const colors = assignColors(top.map((s) => s.name));
    const series = top.map((s) => ({name: s.name, total: s.total, color: colors.get(s.name),
      values: s.counts.map((c) => c / step)}));
    if (rest.length) {
      const vals = new Array(xs.length).fill(0);
      let t = 0;
      for (const s of rest) { for (let i = 0; i < xs.length; i++) vals[i] += s.counts[i] / step; t += s.total; }
      series.push({name: `other (${rest.length})`, total: t, color: getComputedStyle(document.documentElement)
        .getPropertyValue("--other").trim() || "#999", values: vals, pick: false});
    }
    let peak = 0;
    for (let i = 0; i < xs.length; i++) {
      let s = 0;
      for (const x of all) s += x.counts[i];
      peak = Math.max(peak, s / step);
    }
    chartStats = {total, peak, step, seconds: xs.length * step, since: ts.since, until: ts.until};
    const box = $("#chart");
    box.dataset.total = String(total);
    box.dataset.series = String(all.length);
    box.dataset.buckets = String(xs.length);
    box.dataset.step = String(step);
    box.dataset.state = total > 0 ? "ok" : "empty";
    if (!chart) {
      chart = new window.DWChart(box, {
        onZoom: (t0, t1) => {
          state.since = new Date(t0 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
          state.until = new Date(t1 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
          changed(true);
        },
        onPick: (name) => setFilter(state.by, name, {toggle: false}),
      });
    }
    chart.setData({xs, step, series}, state.mode);
    updateEmptyChartText();
    renderLegend(series);
    $("#window").textContent = `${ts.since} \u2192 ${ts.until} \u00b7 ${step >= 60 ? step / 60 + " min" : step + " s"} buckets`;
    if (state.by === "label" && !state.filters.label) lastSeries = seriesByLabel(ts);
    if (!firstChartDone) {
      firstChartDone = true;
      const t = performance.now();
      try { performance.mark("dw-first-chart"); } catch (e) { /* old browsers */ }
      window.dwFirstChartMs = t;
      document.body.dataset.firstChartMs = t.toFixed(1);
    }
  }
  let chartStats = null;

  // When the API goes away, what was shown stays (dimmed, with the banner) rather than blanking the page.
  const keepStale = (has) => !!status.unreachable && has;

  function renderChartError() {
    const box = $("#chart");
    if (keepStale(!!chartStats)) return;
    box.dataset.state = "error";
    if (chart) chart.setData({xs: [], step: 1, series: []}, state.mode);
    $("#legend").textContent = "";
    updateEmptyChartText();
  }

  function rangeText() {
    if (state.until === "now" && /^-\d+[smhd]$/.test(state.since)) {
      const n = parseInt(state.since.slice(1), 10), u = state.since.slice(-1);
      return "in the last " + n + " " + ({s: "s", m: "min", h: "h", d: "days"})[u];
    }
    return "in this time range";
  }

  function updateEmptyChartText() {
    const box = $("#chart"), empty = $("#chart-empty");
    const st = box.dataset.state;
    empty.textContent = "";
    if (st === "ok" || st === "loading") { empty.hidden = true; return; }
    empty.hidden = false;
    if (st === "error") {
      empty.append(el("b", {text: status.unreachable ? "API unreachable" : "Could not load the chart"}),
        el("div", {class: "muted", text: status.unreachable || status.apiError || ""}));
      return;
    }
    const filtered = FILTER_KEYS.some((k) => state.filters[k]);
    const h = status.health;
    empty.append(el("b", {text: filtered ? `No drops match these filters ${rangeText()}` : `No drops yet ${rangeText()}`}));
    let sub;
    if (h && !h.ok) sub = "The daemon is not attached, so no new drops are being counted.";
    else if (h && h.ok) {
      const att = Object.keys(h.body.attached || {}).join(", ");
      sub = `dropwatch is attached${att ? " to " + att : ""} and counting; nothing was dropped here.`;
    }
    if (sub) empty.append(el("div", {class: "muted", text: sub}));
    if (filtered) {
      empty.append(el("button", {type: "button", class: "link", text: "clear filters",
        onclick: () => { state.filters = {}; changed(true); }}));
    }
  }

  function renderLegend(series) {
    const lg = $("#legend");
    lg.textContent = "";
    for (const s of series) {
      const pickable = s.pick !== false;
      const active = (state.filters[state.by] || []).includes(s.name);
      lg.append(el(pickable ? "button" : "span", {type: pickable ? "button" : null,
        class: "lg" + (active ? " active" : ""), title: pickable ? `filter ${state.by}=${s.name}` : null,
        onclick: pickable ? () => setFilter(state.by, s.name) : null},
      el("i", {style: `background:${s.color}`}), s.name, el("span", {class: "muted", text: " " + fmtInt(s.total)})));
    }
  }

  function seriesByLabel(ts) {
    const m = new Map();
    for (const s of ts.series) m.set(s.group.label, s.counts);
    return m;
  }

  // ------------------------------------------------------------------ KPIs

  function renderKpis([reasons, ts, labels]) {
    void ts;
    const total = reasons.total;
    setKpi("#kpi-drops", fmtBig(total), total, fmtInt(total) + " drops");
    const st = chartStats;
    if (st) {
      $("#kpi-rate").textContent = fmtRate(total / Math.max(1, (Date.parse(reasons.until) - Date.parse(reasons.since)) / 1000));
      $("#kpi-peak").textContent = fmtRate(st.peak);
    }
    const lf = state.filters.label;
    const pk = labels.labels.filter((l) => !lf || lf.includes(l.label)).reduce((a, l) => a + l.packets, 0);
    setKpi("#kpi-packets", fmtBig(pk), pk, fmtInt(pk) + " packets labeled at ingress");
    setKpi("#kpi-reason", reasons.groups.length ? `${reasons.groups[0].reason} (${fmtBig(reasons.groups[0].count)})` : "\u2013");
  }

  function fmtPct(r) {
    if (r === null || r === undefined) return "\u2013";
    const p = r * 100;
    if (p === 0) return "0%";
    if (p < 0.01) return "<0.01%";
    return (p >= 10 ? p.toFixed(1) : p.toFixed(2)) + "%";
  }

  // ------------------------------------------------------------------ labels table

  function renderLabels([labels, drops, spark]) {
    const byLabel = new Map();
    for (const g of drops.groups) {
      const r = byLabel.get(g.label) || {drops: 0, top: null, topCount: 0};
      r.drops += g.count;
      if (g.count > r.topCount) { r.top = g.reason; r.topCount = g.count; }
      byLabel.set(g.label, r);
    }
    const sparkMap = seriesByLabel(spark);
    const names = new Set(labels.labels.map((l) => l.label));
    for (const n of byLabel.keys()) names.add(n);
    const pk = new Map(labels.labels.map((l) => [l.label, l.packets]));
    lastLabelRows = Array.from(names).map((n) => {
      const d = byLabel.get(n) || {drops: 0, top: null};
      const p = pk.get(n) || 0;
      return {label: n, packets: p, drops: d.drops, ratio: p ? d.drops / p : null, reason: d.top || "",
        spark: sparkMap.get(n) || null};
    });
    lastSeries = sparkMap;
    const lf = state.filters.label;
    const inScope = lastLabelRows.filter((r) => !lf || lf.includes(r.label));
    // Drop ratio over labeled traffic: "unlabeled" drops include host-local traffic that
    // never passed XDP, so they count against it only when that label is selected.
    const ratioOk = !state.filters.side && !state.filters.location && !state.filters.iface && !state.filters.source;
    const rs = inScope.filter((r) => lf || r.label !== "unlabeled");
    const rp = rs.reduce((a, r) => a + r.packets, 0), rd = rs.reduce((a, r) => a + r.drops, 0);
    setKpi("#kpi-ratio", ratioOk && rp ? fmtPct(rd / rp) : "\u2013", undefined,
      ratioOk ? (lf ? "drops / packets labeled at ingress" : "labeled drops / labeled ingress packets (unlabeled excluded)")
        : "packets are counted per label and PoP, not per side, location, interface or attribution");
    const nDrop = inScope.filter((r) => r.drops > 0).length;
    setKpi("#kpi-labels", `${fmtInt(nDrop)}/${fmtInt(inScope.length)}`, nDrop,
      `${nDrop} of ${inScope.length} labels dropped packets in this window`);
    drawLabelRows();
  }

  function renderLabelsError() {
    if (keepStale(lastLabelRows.length > 0)) return;
    $("#labels tbody").textContent = "";
    const e = $("#labels-empty");
    e.hidden = false;
    e.textContent = status.unreachable ? "API unreachable" : "Could not load labels: " + (status.apiError || "");
  }

  function sparkline(counts, color) {
    const w = 96, h = 20;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("class", "spark");
    if (!counts || !counts.length) return svg;
    const max = Math.max(...counts);
    if (!max) {
      const l = document.createElementNS(ns, "path");
      l.setAttribute("d", `M0 ${h - 1}H${w}`);
      l.setAttribute("class", "flat");
      svg.append(l);
      return svg;
    }
    const dx = w / Math.max(1, counts.length - 1);
    let d = "";
    for (let i = 0; i < counts.length; i++) {
      d += (i ? "L" : "M") + (i * dx).toFixed(1) + " " + (h - 1 - counts[i] / max * (h - 3)).toFixed(1);
    }
    const area = document.createElementNS(ns, "path");
    area.setAttribute("d", d + `L${w} ${h}L0 ${h}Z`);
    area.setAttribute("fill", color);
    area.setAttribute("fill-opacity", "0.2");
    const line = document.createElementNS(ns, "path");
    line.setAttribute("d", d);
    line.setAttribute("stroke", color);
    line.setAttribute("fill", "none");
    svg.append(area, line);
    return svg;
  }

  function drawLabelRows() {
    const tb = $("#labels tbody");
    const {key, dir} = state.sort;
    const rows = lastLabelRows.filter((r) => !state.search || r.label.toLowerCase().includes(state.search));
    rows.sort((a, b) => {
      let x = a[key], y = b[key];
      if (x === null) x = -1;
      if (y === null) y = -1;
      if (x < y) return -dir;
      if (x > y) return dir;
      return b.drops - a.drops || (a.label < b.label ? -1 : 1);
    });
    for (const th of $$("#labels th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === key);
      th.dataset.dir = th.dataset.sort === key ? (dir > 0 ? "asc" : "desc") : "";
    }
    const sel = state.filters.label || [];
    const frag = document.createDocumentFragment();
    const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#36c";
    for (const r of rows) {
      const href = pageQuery({filters: Object.assign({}, state.filters, {label: [r.label]})});
      const tr = el("tr", {dataset: {label: r.label}, class: (sel.includes(r.label) ? "selected " : "") + (r.drops ? "" : "quiet"),
        onclick: (e) => { if (e.target.closest("a") && (e.metaKey || e.ctrlKey || e.shiftKey)) return; e.preventDefault(); setFilter("label", r.label); }},
      el("td", {class: "name"}, el("a", {href, class: r.label === "unlabeled" ? "unl" : null, text: r.label})),
      el("td", {class: "num packets", dataset: {value: r.packets}, text: fmtInt(r.packets)}),
      el("td", {class: "num drops", dataset: {value: r.drops}, text: fmtInt(r.drops)}),
      el("td", {class: "num ratio", text: r.ratio === null ? "\u2013" : fmtPct(r.ratio),
        title: r.label === "unlabeled" ? "unlabeled drops include host-local traffic that never passed XDP" : null}),
      el("td", {class: "reason mono", text: r.reason}),
      el("td", {class: "trend"}, sparkline(r.spark, colorOf.get(r.label) || accent)));
      frag.append(tr);
    }
    tb.textContent = "";
    tb.append(frag);
    const empty = $("#labels-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = lastLabelRows.length ? "No label matches the search." : "No labels: no rules and no traffic seen yet.";
  }

  // ------------------------------------------------------------------ breakdowns

  function renderBreakdown(key, r) {
    const box = $(`.breakdown[data-key="${key}"] .bars`);
    box.textContent = "";
    box.dataset.total = String(r.total);
    if (!r.groups.length) {
      box.append(el("div", {class: "empty small", text: `No drops ${rangeText()}`}));
      return;
    }
    const max = r.groups[0].count;
    const sel = state.filters[key] || [];
    for (const g of r.groups.slice(0, 12)) {
      const name = String(g[key]);
      box.append(el("button", {type: "button", class: "bar" + (sel.includes(name) ? " active" : ""),
        title: `${key}=${name}: ${fmtInt(g.count)} drops (click to filter)`, dataset: {name, count: g.count},
        onclick: () => setFilter(key, name)},
      el("span", {class: "fill", style: `width:${(g.count / max * 100).toFixed(1)}%`}),
      el("span", {class: "bn" + (key === "location" || key === "reason" ? " mono" : ""), text: name}),
      el("span", {class: "bv", text: fmtInt(g.count) + " \u00b7 " + fmtPct(g.count / r.total)})));
    }
    if (r.groups.length > 12) box.append(el("div", {class: "muted small", text: `+${r.groups.length - 12} more`}));
  }

  function renderBreakdownError(key) {
    const box = $(`.breakdown[data-key="${key}"] .bars`);
    if (keepStale(box.dataset.total !== undefined)) return;
    box.textContent = "";
    box.append(el("div", {class: "empty small", text: status.unreachable ? "API unreachable" : "could not load"}));
  }

  // ------------------------------------------------------------------ samples

  function hostport(addr, port) {
    if (!addr) return "";
    const a = addr.includes(":") ? `[${addr}]` : addr;
    return port === null || port === undefined ? addr : `${a}:${port}`;
  }

  function renderSamples(r) {
    const tb = $("#samples tbody");
    tb.textContent = "";
    const samples = r.samples || [];
    const frag = document.createDocumentFragment();
    for (const s of samples) {
      const d = new Date(s.time);
      const t = isNaN(d) ? s.time : d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
      frag.append(el("tr", {dataset: {label: s.label}},
        el("td", {title: s.time, text: t}),
        el("td", {text: s.label}),
        el("td", {text: s.side}),
        el("td", {text: s.proto || s.l3 || ""}),
        el("td", {text: hostport(s.src, s.sport)}),
        el("td", {text: hostport(s.dst, s.dport)}),
        el("td", {class: "num", title: `captured ${s.captured} bytes`, text: String(s.len)}),
        el("td", {text: s.reason}),
        el("td", {text: s.location}),
        el("td", {text: s.iface}),
        el("td", {class: "pop", text: s.pop || ""}),
        el("td", {class: "via", text: s.source || ""})));
    }
    tb.append(frag);
    const empty = $("#samples-empty");
    empty.hidden = samples.length > 0;
    empty.textContent = "No sampled drops match these filters yet (samples are examples, rate-limited in the kernel; counts stay exact).";
    const lost = r.lost || {};
    const parts = [];
    if (r.sample_rate !== undefined) parts.push(`${r.sample_rate}/s per CPU`);
    if (lost.rate_limit) parts.push(`${fmtInt(lost.rate_limit)} skipped by rate limit`);
    if (lost.ring_full) parts.push(`${fmtInt(lost.ring_full)} lost (ring full)`);
    const ignored = ["location", "iface"].filter((k) => state.filters[k]);
    if (ignored.length) parts.push(`not filtered by ${ignored.join(", ")}`);
    $("#samples-note").textContent = parts.join(" \u00b7 ");
    const pcap = $("#pcap");
    pcap.classList.toggle("disabled", samples.length === 0);
    pcap.removeAttribute("aria-disabled");
    $("#samples").dataset.count = String(samples.length);
  }

  function renderSamplesError(e) {
    if (keepStale($("#samples").dataset.count !== undefined && e && e.kind === "unreachable")) return;
    $("#samples tbody").textContent = "";
    const empty = $("#samples-empty");
    empty.hidden = false;
    const pcap = $("#pcap");
    pcap.classList.add("disabled");
    pcap.setAttribute("aria-disabled", "true");
    $("#samples").dataset.count = "0";
    if (e && e.status === 404) empty.textContent = "This daemon does not serve drop samples (GET /drops/samples: 404).";
    else if (e && e.kind === "unreachable") empty.textContent = "API unreachable.";
    else empty.textContent = "Could not load samples: " + (e ? e.message : "");
  }

  // ------------------------------------------------------------------ rules

  function matchText(r) {
    const parts = [];
    if (r.src) parts.push("src " + r.src.join(", "));
    if (r.dst) parts.push("dst " + r.dst.join(", "));
    if (r.proto) parts.push(r.proto);
    if (r.dport) parts.push("dport " + r.dport.join(", "));
    return parts.join(" \u00b7 ") || "(everything)";
  }

  function renderRules(labels) {
    const rules = (labels.rules && labels.rules.rules) || [];
    const counts = new Map((labels.rule_counts || []).map((c) => [c.index, c]));
    const tb = $("#rules tbody");
    tb.textContent = "";
    const MAX = 500;
    const frag = document.createDocumentFragment();
    rules.slice(0, MAX).forEach((r, i) => {
      const c = counts.get(i) || {packets: 0, drops: 0};
      frag.append(el("tr", {dataset: {index: i}},
        el("td", {class: "num", text: String(i)}),
        el("td", {}, r.label ? el("a", {href: pageQuery({filters: Object.assign({}, state.filters, {label: [r.label]})}),
          onclick: (e) => { e.preventDefault(); setFilter("label", r.label); }, text: r.label}) : el("span", {class: "muted", text: "\u2013"})),
        el("td", {text: r.side || "\u2013"}),
        el("td", {class: "mono match", text: matchText(r)}),
        el("td", {class: "num", text: fmtInt(c.packets)}),
        el("td", {class: "num drops", dataset: {value: c.drops}, text: fmtInt(c.drops)})));
    });
    tb.append(frag);
    const note = [];
    if (labels.rules && labels.rules.default_side) note.push(`default side: ${labels.rules.default_side}`);
    const pops = (labels.rules && labels.rules.pops) || [];
    if (pops.length) note.push(`PoPs: ${pops.map((p) => `${p.name} (${p.src.join(", ")})`).join("; ")}`);
    if (rules.length > MAX) note.push(`first ${MAX} of ${fmtInt(rules.length)} rules`);
    note.push("read-only; counts per label/side the rule sets");
    $("#rules-note").textContent = note.join(" \u00b7 ");
    const empty = $("#rules-empty");
    empty.hidden = rules.length > 0;
    empty.textContent = "No rules loaded: every packet is unlabeled.";
  }

  // ------------------------------------------------------------------ start

  function start() {
    readURL();
    writeURL(false);
    bindControls();
    renderControls();
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
