// weir dashboard. Talks only to the public API (/v1/…, documented in
// /openapi.json), logged in by a session cookie; changes carry the CSRF
// token. Data is always put into the page as text (never as HTML).

const POLL_MS = 2000;
const SPARK_SAMPLES = 60;

const session = { caller: null, csrf: null, auth: true };
let current = null; // the mounted view: { refresh(), unmount() }
let timer = null;
const rateHistory = new Map(); // "tenant/pipeline" → [{t, received}]

// ---------------------------------------------------------------- helpers

/** An element: h("td", {class: "num"}, "12"). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    // Through the CSSOM: the CSP forbids style attributes.
    else if (key === "style") Object.assign(el.style, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child);
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the API; throws ApiError with the server's message. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["x-csrf-token"] = session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && path !== "/v1/session") showLogin(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

const enc = encodeURIComponent;
const tenantBase = (tenant) => `/v1/tenants/${enc(tenant)}`;
const pipelinePath = (tenant, name) => `${tenantBase(tenant)}/pipelines/${enc(name)}`;

const fmt = new Intl.NumberFormat();
const compactFmt = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
/** Large counts (fuel) in short form: 20B, 1.9M. */
function compact(n) { return n === null || n === undefined ? "–" : compactFmt.format(n); }
const plural = (n, one, many) => `${num(n)} ${n === 1 ? one : many}`;
function num(n) { return n === null || n === undefined ? "–" : fmt.format(Math.round(n)); }
function rate(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 100) return fmt.format(Math.round(n));
  return n.toFixed(n >= 10 ? 1 : 2);
}
function ms(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 60000) return `${(n / 60000).toFixed(1)} min`;
  if (n >= 1000) return `${(n / 1000).toFixed(2)} s`;
  return `${n < 10 ? n.toFixed(2) : Math.round(n)} ms`;
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  const ago = seconds < 0 ? `in ${human(-seconds)}` : `${human(seconds)} ago`;
  return h("time", { datetime: iso, title: date.toLocaleString() }, ago);
}
function human(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
const short = (sha) => (sha ? sha.slice(0, 12) : "–");
function pct(part, whole) { return whole ? `${((100 * part) / whole).toFixed(1)}%` : "–"; }

function badge(text, kind) { return h("span", { class: `badge ${kind}` }, text); }
function stateBadge(state) {
  return badge(state, state === "running" ? "ok" : state === "paused" ? "warn" : "idle");
}
function statusBadge(status) {
  const kind = { succeeded: "ok", running: "idle", failed: "bad", aborted: "warn", ok: "ok", fail: "bad", warn: "warn" }[status] || "idle";
  return badge(status, kind);
}
function healthBadge(health) {
  if (!health) return badge("unknown", "idle");
  const label = { closed: "healthy", open: "open (resting)", half_open: "half-open (probing)" }[health.state] || health.state;
  return badge(label, health.healthy ? "ok" : "bad");
}

function table(headers, rows, { empty = "Nothing yet.", label } = {}) {
  if (!rows.length) return h("div", { class: "table-wrap" }, h("p", { class: "empty" }, empty));
  return h("div", { class: "table-wrap" },
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, headers.map((col) =>
        typeof col === "string" ? h("th", { scope: "col" }, col) : h("th", { scope: "col", class: col.class }, col.text)))),
      h("tbody", {}, rows)));
}

function card(label, value, attrs = {}) {
  return h("div", { class: "card", ...attrs }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

/** A sparkline of `values` (numbers, oldest first) as inline SVG. */
function spark(values, { width = 120, height = 26, label = "" } = {}) {
  const box = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  if (values.length < 2) return box;
  const max = Math.max(...values, 1e-9);
  const step = width / (SPARK_SAMPLES - 1);
  const offset = width - step * (values.length - 1);
  const points = values.map((v, i) => [offset + i * step, height - 2 - (v / max) * (height - 4)]);
  const line = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  box.append(svg("path", { d: `M${points[0][0]},${height} L${line.replaceAll(" ", " L")} L${points.at(-1)[0]},${height} Z` }));
  box.append(svg("polyline", { points: line }));
  return box;
}

/** Records/s of a pipeline from the change in `received` between polls. */
function sampleRate(key, received) {
  const now = performance.now();
  const history = rateHistory.get(key) || [];
  history.push({ t: now, received });
  while (history.length > SPARK_SAMPLES + 1) history.shift();
  rateHistory.set(key, history);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i].t - history[i - 1].t) / 1000;
    rates.push(dt > 0 ? Math.max(0, history[i].received - history[i - 1].received) / dt : 0);
  }
  return rates;
}

function toast(message, bad = false) {
  const box = document.getElementById("toast");
  const msg = h("div", { class: `msg${bad ? " bad" : ""}` }, message);
  box.append(msg);
  setTimeout(() => msg.remove(), bad ? 9000 : 5000);
}

/** Asks for confirmation in a modal dialog; resolves true on OK. */
function confirmAction(title, text, ok) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

function errorBox(error) {
  return h("div", { class: "error", role: "alert" }, error.message || String(error));
}

/** Tenants this session may see. */
async function visibleTenants() {
  if (session.caller.role === "tenant") return [session.caller.tenant];
  const { tenants } = await api("/v1/tenants");
  return tenants.map((t) => t.name);
}

// ---------------------------------------------------------------- views

const views = {};

views.overview = () => {
  const body = h("div");
  const main = h("section", {},
    h("h1", {}, "Pipelines"),
    h("p", { class: "sub" }, "Every served pipeline, live. Records/s is measured between refreshes (every 2 s)."),
    body);
  async function refresh() {
    const tenants = await visibleTenants();
    const rows = [];
    let totalRate = 0, totalQuarantined = 0, unhealthy = 0, count = 0;
    for (const tenant of tenants) {
      const [{ pipelines }, { plugins }] = await Promise.all([
        api(`${tenantBase(tenant)}/pipelines`), api(`${tenantBase(tenant)}/plugins`)]);
      for (const p of pipelines) {
        count++;
        const key = `${tenant}/${p.name}`;
        const rates = sampleRate(key, p.received);
        const now = rates.length ? rates.at(-1) : p.records_per_second;
        totalRate += now;
        totalQuarantined += p.quarantined;
        const stages = plugins.filter((s) => s.pipeline === p.name);
        const sick = stages.filter((s) => !s.health.healthy).length;
        unhealthy += sick;
        const waiting = p.stream ? `${num(p.stream.pending)} pending` : `${num(p.queued_records)} queued`;
        rows.push(h("tr", { dataset: { pipeline: p.name, tenant } },
          h("td", {}, h("a", { href: `#/t/${enc(tenant)}/p/${enc(p.name)}` }, p.name)),
          h("td", {}, tenant),
          h("td", {}, stateBadge(p.state)),
          h("td", { class: "num" }, spark(rates, { label: `${p.name}: records per second, last ${rates.length} samples` }), " ",
            h("span", { class: "rate" }, rate(now))),
          h("td", { class: "num received" }, num(p.received)),
          h("td", { class: "num written" }, num(p.written)),
          h("td", { class: "num" }, h("a", { href: `#/t/${enc(tenant)}/p/${enc(p.name)}/quarantine` }, num(p.quarantined)),
            " ", h("span", { class: "muted" }, `(${pct(p.quarantined, p.received)})`)),
          h("td", { class: "num hide-narrow" }, waiting),
          h("td", {}, sick ? badge(`${sick} of ${stages.length} unhealthy`, "bad") : badge(`${stages.length} healthy`, "ok"))));
      }
    }
    body.replaceChildren(
      h("div", { class: "cards" },
        card("Pipelines", num(count)),
        card("Records/s", rate(totalRate)),
        card("Quarantined", num(totalQuarantined)),
        card("Unhealthy plugins", num(unhealthy))),
      table(["Pipeline", "Tenant", "State", { text: "Records/s", class: "num" }, { text: "Received", class: "num" },
        { text: "Written", class: "num" }, { text: "Quarantined", class: "num" }, { text: "Waiting", class: "num hide-narrow" }, "Plugins"],
        rows, { label: "Pipelines", empty: "No pipelines. Add [[pipelines]] (or tenants) to the service file and restart weir serve." }));
  }
  return { node: main, refresh };
};

views.pipeline = ({ tenant, name }) => {
  const head = h("div");
  const body = h("div");
  const main = h("section", {}, h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Pipelines"), " / ", tenant), head, body);
  async function act(action) {
    try {
      await api(`${pipelinePath(tenant, name)}/${action}`, { method: "POST" });
      toast(`${name}: ${action === "pause" ? "paused" : "resumed"}`);
      await refresh();
    } catch (e) { toast(e.message, true); }
  }
  async function refresh() {
    const [report, { plugins }] = await Promise.all([
      api(`${pipelinePath(tenant, name)}/report`), api(`${tenantBase(tenant)}/plugins`)]);
    const s = report.status;
    const rates = sampleRate(`${tenant}/${name}`, s.received);
    head.replaceChildren(
      h("h1", {}, name, " ", stateBadge(s.state)),
      h("p", { class: "sub" }, `Tenant ${s.tenant} · ${s.file}`),
      h("div", { class: "toolbar" },
        s.state === "running"
          ? h("button", { type: "button", onclick: () => act("pause") }, "Pause")
          : h("button", { type: "button", onclick: () => act("resume"), disabled: s.state === "draining" }, "Resume"),
        h("a", { class: "button", href: `#/t/${enc(tenant)}/p/${enc(name)}/quarantine` }, "Quarantine"),
        h("a", { class: "button", href: `#/runs?tenant=${enc(tenant)}&pipeline=${enc(name)}` }, "Runs")));
    const byStage = new Map(plugins.filter((p) => p.pipeline === name).map((p) => [p.stage, p]));
    const source = s.stream ? `stream ${s.stream.stream}` : s.drop_dir ? "HTTP + drop directory" : "HTTP";
    const nodes = [
      h("div", { class: "node", dataset: { node: "source" } },
        h("h3", {}, "source"),
        h("div", { class: "muted" }, source),
        h("dl", {}, h("dt", {}, "received"), h("dd", { class: "received" }, num(s.received)),
          h("dt", {}, "records/s"), h("dd", {}, rate(rates.at(-1) ?? s.records_per_second)),
          h("dt", {}, s.stream ? "pending" : "queued"), h("dd", {}, num(s.stream ? s.stream.pending : s.queued_records)))),
    ];
    for (const stage of report.stages) {
      const plugin = byStage.get(stage.name);
      const healthy = !plugin || plugin.health.healthy;
      nodes.push(h("div", { class: "arrow", "aria-hidden": "true" }, "→"));
      nodes.push(h("div", { class: `node${healthy ? "" : " unhealthy"}`, dataset: { stage: stage.name } },
        h("h3", {}, stage.name, plugin ? healthBadge(plugin.health) : null),
        h("div", { class: "muted" }, `${stage.kind || ""} · ${stage.plugin}`),
        h("dl", {},
          h("dt", {}, "version"), h("dd", { class: "mono version", title: stage.plugin_sha256 }, short(stage.plugin_sha256)),
          h("dt", {}, "in / out"), h("dd", {}, `${num(stage.records_in)} / ${num(stage.records_out)}`),
          h("dt", {}, "quarantined"), h("dd", {}, num(stage.quarantined)),
          h("dt", {}, "calls"), h("dd", {}, num(stage.calls)),
          h("dt", {}, "fuel"), h("dd", { title: num(stage.fuel_consumed) }, compact(stage.fuel_consumed)),
          h("dt", {}, "p99 call"), h("dd", {}, ms(stage.call_times?.p99_ms)),
          plugin ? [h("dt", {}, "loaded"), h("dd", {}, when(plugin.loaded_at))] : null)));
    }
    nodes.push(h("div", { class: "arrow", "aria-hidden": "true" }, "→"));
    nodes.push(h("div", { class: "node", dataset: { node: "sink" } },
      h("h3", {}, "sink"),
      h("div", { class: "muted mono" }, String(s.sink_dir)),
      h("dl", {}, h("dt", {}, "written"), h("dd", { class: "written" }, num(s.written)),
        h("dt", {}, "filtered"), h("dd", {}, num(s.filtered)),
        h("dt", {}, "quarantined"), h("dd", {}, h("a", { href: `#/t/${enc(tenant)}/p/${enc(name)}/quarantine` }, num(s.quarantined))))));
    const batches = report.batches.slice(0, 15).map((b) => h("tr", {},
      h("td", { class: "mono" }, b.part), h("td", {}, when(b.committed_at)),
      h("td", { class: "num" }, num(b.received)), h("td", { class: "num" }, num(b.written)),
      h("td", { class: "num" }, num(b.quarantined)), h("td", { class: "num" }, ms(b.latency_ms))));
    body.replaceChildren(
      h("div", { class: "cards" },
        card("Received", num(s.received)), card("Written", num(s.written), { id: "sink-written" }),
        card("Quarantined", `${num(s.quarantined)} (${pct(s.quarantined, s.received)})`),
        card("Micro-batches", num(s.batches)), card("Failed batches", num(s.failed_batches)),
        card("Last commit", when(s.delivery.last_commit_at))),
      h("h2", {}, "Stages"),
      h("div", { class: "graph", role: "list", "aria-label": "Stage graph" }, nodes),
      h("h2", {}, "Recent micro-batches"),
      table(["Part", "Committed", { text: "Received", class: "num" }, { text: "Written", class: "num" },
        { text: "Quarantined", class: "num" }, { text: "Latency", class: "num" }], batches,
      { label: "Recent micro-batches", empty: "No micro-batch yet: post records to this pipeline." }));
  }
  return { node: main, refresh };
};

views.quarantine = ({ tenant, name }) => {
  const filter = { include_replayed: false };
  const counts = h("div", { class: "cards" });
  const results = h("div");
  const detail = h("div");
  const outcome = h("div", { role: "status", "aria-live": "polite", id: "replay-result" });
  const selected = new Set();
  const PAGE = 100;
  let shown = PAGE; // rows listed; "Show more" lists another page
  let rows = [];
  let stages = [];
  const field = (label, input) => h("label", {}, label, input);
  const stageSelect = h("select", { name: "stage" }, h("option", { value: "" }, "any stage"));
  const kindSelect = h("select", { name: "error_kind" }, h("option", { value: "" }, "any error kind"),
    ["validation", "parse", "trap", "timeout", "fuel", "memory", "plugin_error", "malformed_output"].map((k) => h("option", { value: k }, k)));
  const form = h("form", { class: "filters", "aria-label": "Quarantine filter" },
    field("Stage", stageSelect),
    field("Error kind", kindSelect),
    field("Rule", h("input", { name: "rule", placeholder: "rule id" })),
    field("Plugin version", h("input", { name: "plugin_sha256", placeholder: "SHA-256 prefix" })),
    field("Since", h("input", { name: "since", type: "datetime-local", step: "1" })),
    field("Until", h("input", { name: "until", type: "datetime-local", step: "1" })),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "include_replayed" }), "include replayed"),
    h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Apply filter")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const key of ["stage", "error_kind", "rule", "plugin_sha256"]) filter[key] = data.get(key) || undefined;
    for (const key of ["since", "until"]) {
      const value = data.get(key);
      filter[key] = value ? new Date(value).toISOString() : undefined;
    }
    filter.include_replayed = data.get("include_replayed") === "on";
    selected.clear();
    shown = PAGE;
    load();
  });
  const replayButton = h("button", { type: "button", class: "primary", disabled: true, onclick: replay }, "Replay selected");
  const main = h("section", {},
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Pipelines"), " / ", h("a", { href: `#/t/${enc(tenant)}/p/${enc(name)}` }, name)),
    h("h1", {}, `Quarantine of ${name}`),
    h("p", { class: "sub" }, "Rows a stage rejected, with the reason. Replaying re-submits a row through the plugins serving now; a row is replayed at most once."),
    counts, form,
    h("div", { class: "toolbar" }, replayButton,
      h("button", { type: "button", onclick: () => load() }, "Refresh list"), outcome),
    results, detail);

  function updateButton() {
    replayButton.disabled = selected.size === 0;
    replayButton.textContent = selected.size ? `Replay selected (${selected.size})` : "Replay selected";
  }
  function show(row) {
    detail.replaceChildren(h("div", { class: "detail", "aria-label": `Quarantined row ${row.id}` },
      h("h2", {}, `Row ${row.id}`),
      h("p", {}, h("strong", {}, row.error_kind), row.rule ? ` · rule ${row.rule}` : "", ` · stage ${row.stage} · plugin ${short(row.plugin_sha256)} · `, when(row.quarantined_at)),
      h("p", { class: "message" }, row.message),
      h("div", { class: "muted" }, `Source: ${row.source_file} · micro-batch ${row.run_id}`),
      h("pre", { class: "record" }, JSON.stringify(row.record, null, 2))));
  }
  async function load() {
    const query = new URLSearchParams({ limit: String(shown) });
    for (const [key, value] of Object.entries(filter)) if (value) query.set(key, String(value));
    try {
      const answer = await api(`${pipelinePath(tenant, name)}/quarantine?${query}`);
      rows = answer.rows;
      const body = rows.map((row) => {
        const box = h("input", { type: "checkbox", "aria-label": `Select row ${row.id}`, disabled: row.replayed || row.stage === "source" });
        box.checked = selected.has(row.id);
        const tr = h("tr", { dataset: { id: row.id, errorKind: row.error_kind }, class: box.checked ? "selected" : "" },
          h("td", {}, box),
          h("td", { class: "mono" }, h("button", { type: "button", class: "quiet mono", onclick: () => show(row) }, row.id)),
          h("td", { class: "hide-narrow" }, when(row.quarantined_at)),
          h("td", {}, row.stage),
          h("td", { class: "kind" }, row.error_kind),
          h("td", {}, row.rule || "–"),
          h("td", {}, row.message.length > 120 ? `${row.message.slice(0, 120)}…` : row.message),
          h("td", { class: "mono hide-narrow" }, short(row.plugin_sha256)),
          h("td", {}, row.replayed ? badge("replayed", "idle") : ""));
        box.addEventListener("change", () => {
          if (box.checked) selected.add(row.id); else selected.delete(row.id);
          tr.classList.toggle("selected", box.checked);
          updateButton();
        });
        return tr;
      });
      const more = answer.matched > rows.length
        ? h("div", { class: "toolbar" }, h("button", {
          type: "button",
          onclick: () => { shown += PAGE; load(); },
        }, `Show ${Math.min(PAGE, answer.matched - rows.length)} more`))
        : null;
      results.replaceChildren(
        h("p", { class: "muted", id: "matched" }, `${plural(answer.matched, "row matches", "rows match")}${answer.matched > rows.length ? `; showing the first ${rows.length}` : ""}.`),
        table(["", "Id", { text: "Quarantined", class: "hide-narrow" }, "Stage", "Error kind", "Rule", "Reason", { text: "Plugin", class: "hide-narrow" }, ""],
          body, { label: "Quarantined rows", empty: "No quarantined row matches this filter." }),
        more);
      updateButton();
    } catch (e) { results.replaceChildren(errorBox(e)); }
  }
  async function replay() {
    const ids = [...selected];
    replayButton.disabled = true;
    try {
      const answer = await api(`${pipelinePath(tenant, name)}/quarantine/replay`, { method: "POST", body: { ids } });
      const r = answer.result || {};
      outcome.replaceChildren(h("span", { class: "badge ok" },
        `Replayed ${answer.replayed}: ${num(r.written || 0)} written, ${num(r.quarantined || 0)} quarantined again, ${num(r.filtered || 0)} filtered`));
      selected.clear();
      await Promise.all([load(), refresh()]);
    } catch (e) {
      outcome.replaceChildren(errorBox(e));
      updateButton();
    }
  }
  async function refresh() {
    const report = await api(`${pipelinePath(tenant, name)}/report`);
    const s = report.status;
    const names = ["source", ...report.stages.map((st) => st.name)];
    if (names.join() !== stages.join()) {
      stages = names;
      stageSelect.replaceChildren(h("option", { value: "" }, "any stage"), names.map((n) => h("option", { value: n }, n)));
    }
    counts.replaceChildren(
      card("Received", num(s.received)),
      card("Written to the sink", num(s.written), { id: "sink-written" }),
      card("Quarantined", `${num(s.quarantined)} (${pct(s.quarantined, s.received)})`));
  }
  load();
  return { node: main, refresh };
};

views.plugins = () => {
  const body = h("div");
  const main = h("section", {}, h("h1", {}, "Plugins"),
    h("p", { class: "sub" }, "The version each stage serves, the versions kept for rollback, rejected candidates and the circuit breaker."), body);
  async function act(tenant, plugin, action) {
    const verb = action === "rollback" ? "Roll back" : "Reload";
    const text = action === "rollback"
      ? `Stage ${plugin.stage} of ${plugin.pipeline} will serve its previous version ${short(plugin.history[0])} instead of ${short(plugin.current_sha256)}. Batches in flight finish on the current one.`
      : `Stage ${plugin.stage} of ${plugin.pipeline} will load ${plugin.file} again; a broken file is rejected and the current version keeps serving.`;
    if (!(await confirmAction(`${verb} ${plugin.pipeline} / ${plugin.stage}?`, text, verb))) return;
    try {
      const answer = await api(`${pipelinePath(tenant, plugin.pipeline)}/stages/${enc(plugin.stage)}/${action}`, { method: "POST" });
      toast(`${plugin.pipeline} / ${plugin.stage} now serves ${short(answer.sha256)}${answer.unchanged ? " (unchanged)" : ""}`);
    } catch (e) { toast(e.message, true); }
    await refresh();
  }
  async function refresh() {
    const sections = [];
    for (const tenant of await visibleTenants()) {
      const { plugins } = await api(`${tenantBase(tenant)}/plugins`);
      const rows = plugins.map((p) => {
        const builtin = p.plugin.startsWith("builtin:");
        return h("tr", { dataset: { pipeline: p.pipeline, stage: p.stage } },
          h("td", {}, h("a", { href: `#/t/${enc(tenant)}/p/${enc(p.pipeline)}` }, p.pipeline), " / ", h("strong", {}, p.stage)),
          h("td", {}, p.kind),
          h("td", { class: "mono" }, p.plugin),
          h("td", {}, h("span", { class: "mono version", title: p.current_sha256 }, short(p.current_sha256)), h("br"), h("span", { class: "muted" }, "loaded "), when(p.loaded_at)),
          h("td", { class: "mono hide-narrow" }, p.history.length ? p.history.slice(0, 3).map(short).join(", ") : "–"),
          h("td", { class: "num" }, `${num(p.reloads)} / ${num(p.rejections)}`),
          h("td", { class: "hide-narrow" }, p.last_rejection
            ? h("details", {}, h("summary", {}, `${short(p.last_rejection.sha256)} `, when(p.last_rejection.at)), h("pre", {}, p.last_rejection.error))
            : "–"),
          h("td", {}, healthBadge(p.health), p.health.trips ? h("div", { class: "muted" }, `${p.health.trips} trips`) : null),
          h("td", {}, builtin ? h("span", { class: "muted" }, "built in") : h("div", { class: "actions" },
            h("button", { type: "button", onclick: () => act(tenant, p, "reload") }, "Reload"),
            h("button", { type: "button", class: "danger", disabled: !p.history.length, onclick: () => act(tenant, p, "rollback") }, "Roll back"))));
      });
      sections.push(h("h2", {}, `Tenant ${tenant}`),
        table(["Stage", "Kind", "Plugin", "Serving", { text: "Previous", class: "hide-narrow" }, { text: "Reloads / rejections", class: "num" },
          { text: "Last rejection", class: "hide-narrow" }, "Breaker", ""], rows, { label: `Plugins of tenant ${tenant}`, empty: "No plugin stages." }));
    }
    body.replaceChildren(...sections);
  }
  return { node: main, refresh };
};

views.runs = (_, query) => {
  const body = h("div");
  const main = h("section", {}, h("h1", {}, "Runs"),
    h("p", { class: "sub" }, "Scheduled runs, backfills and, for served pipelines, one row per interval of micro-batches; newest first."), body);
  async function refresh() {
    const sections = [];
    let tenants = await visibleTenants();
    if (query.get("tenant")) tenants = tenants.filter((t) => t === query.get("tenant"));
    for (const tenant of tenants) {
      const [{ pipelines }, { schedules }] = await Promise.all([
        api(`${tenantBase(tenant)}/pipelines`), api(`${tenantBase(tenant)}/schedules`)]);
      const runs = [];
      for (const p of pipelines) {
        if (query.get("pipeline") && p.name !== query.get("pipeline")) continue;
        const answer = await api(`${pipelinePath(tenant, p.name)}/runs?limit=30`);
        runs.push(...answer.runs.map((r) => ({ ...r, owner: ["pipeline", p.name] })));
      }
      for (const s of schedules) {
        if (query.get("pipeline")) continue;
        const answer = await api(`${tenantBase(tenant)}/schedules/${enc(s.name)}/runs?limit=30`);
        runs.push(...answer.runs.map((r) => ({ ...r, owner: ["schedule", s.name] })));
      }
      runs.sort((a, b) => (b.started_at || "").localeCompare(a.started_at || ""));
      const rows = runs.slice(0, 60).map((r) => h("tr", { dataset: { run: r.run_id } },
        h("td", { class: "mono" }, h("a", { href: `#/t/${enc(tenant)}/runs/${r.owner[0]}/${enc(r.owner[1])}/${enc(r.run_id)}` }, r.run_id)),
        h("td", {}, r.pipeline), h("td", {}, r.kind), h("td", { class: "hide-narrow" }, r.partition || "–"),
        h("td", {}, statusBadge(r.status)), h("td", {}, when(r.started_at)), h("td", { class: "num" }, ms(r.duration_ms)),
        h("td", { class: "num hide-narrow" }, num(r.read)), h("td", { class: "num" }, num(r.written)), h("td", { class: "num" }, num(r.quarantined)),
        h("td", {}, checksSummary(r.checks))));
      // A schedule's status and its latest API backfill, in one object.
      const scheduleRows = schedules.map((s) => h("tr", { dataset: { schedule: s.name } },
        h("td", {}, s.name), h("td", { class: "mono" }, s.cron), h("td", {}, s.timezone),
        h("td", {}, when(s.next)), h("td", {}, s.running ? badge(`running ${s.running}`, "idle") : s.last_status ? statusBadge(s.last_status) : "–"),
        h("td", { class: "num" }, `${num(s.succeeded)} / ${num(s.failed)}`),
        h("td", { class: "hide-narrow" }, s.backfill ? `${s.backfill.state} ${s.backfill.from}…${s.backfill.to}${s.backfill.failed ? `, ${s.backfill.failed} failed` : ""}` : "–")));
      sections.push(h("h2", {}, `Tenant ${tenant}`));
      if (schedules.length) {
        sections.push(table(["Schedule", "Cron", "Time zone", "Next", "Last", { text: "Succeeded / failed", class: "num" }, { text: "Backfill", class: "hide-narrow" }],
          scheduleRows, { label: `Schedules of tenant ${tenant}` }));
      }
      sections.push(h("div", { class: "gap" }), table(["Run", "Pipeline", "Kind", { text: "Partition", class: "hide-narrow" }, "Status", "Started",
        { text: "Duration", class: "num" }, { text: "Read", class: "num hide-narrow" }, { text: "Written", class: "num" }, { text: "Quarantined", class: "num" }, "Checks"],
      rows, { label: `Runs of tenant ${tenant}`, empty: "No runs yet. A served pipeline records one row per history interval (default 1 minute) once records arrive." }));
    }
    body.replaceChildren(...sections);
  }
  // Each refresh reads every pipeline's and schedule's history database.
  return { node: main, refresh, every: 5 };
};

function checksSummary(checks) {
  if (!Array.isArray(checks) || !checks.length) return h("span", { class: "muted" }, "–");
  const failed = checks.filter((c) => c.status === "fail" || c.status === "failed").length;
  return failed ? badge(`${failed} of ${checks.length} failed`, "bad") : badge(`${checks.length} passed`, "ok");
}

views.run = ({ tenant, source, owner, run }) => {
  const body = h("div");
  const main = h("section", {}, h("div", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / ", tenant, " / ", owner), body);
  let loaded = false;
  async function refresh() {
    if (loaded) return; // a finished run does not change
    const path = source === "schedule"
      ? `${tenantBase(tenant)}/schedules/${enc(owner)}/runs/${enc(run)}`
      : `${pipelinePath(tenant, owner)}/runs/${enc(run)}`;
    const r = await api(path);
    const report = r.report || {};
    const checks = Array.isArray(r.checks) ? r.checks : [];
    const served = r.kind === "serve";
    const stageRows = Array.isArray(report.stages)
      ? report.stages.map((st) => h("tr", {}, h("td", {}, st.name), h("td", { class: "mono" }, (st.plugin_versions || [st.plugin_sha256]).map(short).join(", ")),
        h("td", { class: "num" }, num(st.records_in)), h("td", { class: "num" }, num(st.records_out)), h("td", { class: "num" }, num(st.quarantined)),
        h("td", { class: "num", title: num(st.fuel_consumed) }, compact(st.fuel_consumed)), h("td", { class: "num" }, ms(st.call_times?.p99_ms))))
      : (report.plugin_versions || []).map((entry) => {
        const [stage, sha] = String(entry).split("=");
        return h("tr", {}, h("td", {}, stage), h("td", { class: "mono" }, short(sha)), h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"),
          h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"), h("td", { class: "num" }, "–"));
      });
    const files = [
      ...(Array.isArray(report.inputs) ? report.inputs : []).map((i) => h("tr", {}, h("td", {}, "input"), h("td", { class: "mono" }, String(i.path)), h("td", { class: "num" }, bytes(i.bytes)))),
      ...(Array.isArray(report.outputs) ? report.outputs : []).map((o) => h("tr", {}, h("td", {}, "output"), h("td", { class: "mono" }, String(o.path)), h("td", { class: "num" }, `${num(o.rows)} rows`))),
    ];
    body.replaceChildren(
      h("h1", {}, `Run ${r.run_id}`, " ", statusBadge(r.status)),
      h("p", { class: "sub" }, `${r.pipeline} · ${served ? "one interval of a served pipeline" : r.kind}${r.partition ? ` · partition ${r.partition}` : ""}`),
      r.error ? errorBox(new Error(r.error)) : null,
      h("div", { class: "cards" },
        card("Started", when(r.started_at)), card("Duration", ms(r.duration_ms)), card("Read", num(r.read)),
        card("Written", num(r.written)), card("Quarantined", num(r.quarantined)), card("Filtered", num(r.filtered)),
        served ? [card("Micro-batches", num(report.batches)), card("Failed batches", num(report.failed_batches)), card("Slowest commit", ms(report.max_latency_ms))] : null),
      h("h2", {}, "Checks"),
      table(["Check", "Status", "Detail"], checks.map((c) => h("tr", {},
        h("td", {}, c.check || "–"), h("td", {}, statusBadge(c.status || "–")), h("td", {}, c.message || ""))),
      { label: "Check results", empty: "No data checks configured for this pipeline." }),
      h("h2", {}, "Stages"),
      table(["Stage", "Plugin version", { text: "In", class: "num" }, { text: "Out", class: "num" }, { text: "Quarantined", class: "num" }, { text: "Fuel", class: "num" }, { text: "p99 call", class: "num" }],
        stageRows, { label: "Stages", empty: "This run has no per-stage report." }),
      h("h2", {}, "Inputs and outputs (lineage)"),
      table(["Direction", "Path", { text: "Size", class: "num" }], files,
        { label: "Inputs and outputs", empty: served ? `${num(report.outputs)} files written by this interval's micro-batches; see the pipeline's recent micro-batches.` : "No files recorded." }),
      h("details", {}, h("summary", {}, "Whole record (JSON)"), h("div", { class: "detail" }, h("pre", {}, JSON.stringify(r, null, 2)))));
    // A finished run does not change: stop asking once it is shown.
    loaded = r.status !== "running";
  }
  return { node: main, refresh };
};

views.tenants = () => {
  const body = h("div");
  const main = h("section", {}, h("h1", {}, "Tenants"),
    h("p", { class: "sub" }, "Quotas, what each tenant uses now, its share of the batch slots and what it was refused since the service started."), body);
  const meter = (used, limit) => {
    const share = limit ? Math.min(1, Math.max(0, used / limit)) : 0;
    return h("span", { class: `bar${share > 0.9 ? " hot" : ""}`, role: "meter", "aria-valuenow": String(used), "aria-valuemin": "0", "aria-valuemax": String(limit || 0) },
      h("span", { style: { width: `${(share * 100).toFixed(1)}%` } }));
  };
  async function refresh() {
    if (session.caller.role !== "operator") {
      body.replaceChildren(errorBox(new Error("Only the operator sees every tenant.")));
      return;
    }
    const { tenants } = await api("/v1/tenants");
    const rows = tenants.map((t) => {
      const q = t.quotas;
      const share = t.scheduler;
      const fuelLimited = q.fuel_per_second > 0;
      return h("tr", { dataset: { tenant: t.name } },
        h("td", {}, h("strong", {}, t.name), h("div", { class: "muted" }, `${plural(t.pipelines.length, "pipeline", "pipelines")}, ${plural(t.schedules.length, "schedule", "schedules")}`)),
        h("td", { class: "meter-cell" }, meter(t.running_batches, q.max_concurrent_batches), ` ${t.running_batches} / ${q.max_concurrent_batches}`),
        h("td", { class: "meter-cell" }, fuelLimited ? [meter(q.fuel_per_second - Math.max(0, t.fuel_available), q.fuel_per_second), ` ${compact(t.fuel_available)} left of ${compact(q.fuel_per_second)}/s`] : "unlimited",
          h("div", { class: "muted" }, `${compact(t.usage.fuel_consumed)} burned`)),
        h("td", { class: "meter-cell" }, q.max_memory_bytes ? [meter(t.memory_used_bytes, q.max_memory_bytes), ` ${bytes(t.memory_used_bytes)} / ${bytes(q.max_memory_bytes)}`] : bytes(t.memory_used_bytes)),
        h("td", { class: "hide-narrow" }, share ? `weight ${share.weight} · ${share.running} running · ${share.waiting} waiting · ${share.slot_seconds.toFixed(1)} slot-s` : "–"),
        h("td", {}, `${rate(q.ingest_requests_per_second)} req/s (burst ${q.ingest_burst})`),
        h("td", {}, (t.usage.requests_throttled || t.usage.uploads_throttled || t.usage.fuel_wait_ms)
          ? badge(`${num(t.usage.requests_throttled)} requests, ${num(t.usage.uploads_throttled)} uploads, ${ms(t.usage.fuel_wait_ms)} fuel wait`, "warn")
          : badge("never throttled", "ok")));
    });
    body.replaceChildren(table(["Tenant", "Batches", "Fuel", "Memory", { text: "Fair share", class: "hide-narrow" }, "Ingest quota", "Throttled"],
      rows, { label: "Tenants", empty: "No tenants." }));
  }
  return { node: main, refresh };
};

// ---------------------------------------------------------------- login and routing

function showLogin(message) {
  stop();
  session.caller = null;
  session.csrf = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const error = h("div");
  if (message && message !== "no session: log in with a token") error.append(errorBox(new Error(message)));
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, placeholder: "weir_…", spellcheck: "false" });
  const form = h("form", {},
    h("label", { for: "token" }, "API token (the operator's or a tenant's)", input),
    error,
    h("button", { class: "primary", type: "submit" }, "Log in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("/v1/session", { method: "POST", body: { token: input.value } });
      input.value = "";
      start(answer);
    } catch (e) { error.replaceChildren(errorBox(e)); input.focus(); }
  });
  const main = document.getElementById("main");
  main.replaceChildren(h("div", { class: "login" },
    h("h1", {}, "Log in to weir"),
    h("p", { class: "muted" }, "Paste an API token. The token is exchanged for a session cookie and not kept in the browser."),
    form));
  input.focus();
}

function start(answer) {
  session.caller = answer.caller;
  session.csrf = answer.csrf_token;
  session.auth = answer.auth;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-tenants").hidden = answer.caller.role !== "operator";
  document.getElementById("who").hidden = false;
  document.getElementById("logout").hidden = !answer.auth;
  document.getElementById("who-name").textContent = answer.caller.role === "operator" ? "operator" : `tenant ${answer.caller.tenant}`;
  route();
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  current = null;
}

function parseRoute() {
  const [path, search] = (location.hash.replace(/^#/, "") || "/").split("?");
  const query = new URLSearchParams(search || "");
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = []; // a malformed link: the overview
  }
  if (parts[0] === "t" && parts[2] === "p" && parts[4] === "quarantine") return ["quarantine", { tenant: parts[1], name: parts[3] }, query];
  if (parts[0] === "t" && parts[2] === "p") return ["pipeline", { tenant: parts[1], name: parts[3] }, query];
  if (parts[0] === "t" && parts[2] === "runs") return ["run", { tenant: parts[1], source: parts[3], owner: parts[4], run: parts[5] }, query];
  if (["plugins", "runs", "tenants"].includes(parts[0])) return [parts[0], {}, query];
  return ["overview", {}, query];
}

async function route() {
  if (!session.caller) return;
  stop();
  const [name, params, query] = parseRoute();
  const nav = { overview: "overview", pipeline: "overview", quarantine: "overview", plugins: "plugins", runs: "runs", run: "runs", tenants: "tenants" }[name];
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === nav) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const view = views[name](params, query);
  const error = h("div");
  const main = document.getElementById("main");
  main.replaceChildren(error, view.node);
  current = view;
  document.title = `weir · ${name}`;
  // One refresh at a time: a slow answer is not overtaken by the next.
  let busy = false;
  let ticks = 0;
  const tick = async () => {
    if (current !== view || busy || ticks++ % (view.every || 1) !== 0) return;
    busy = true;
    try {
      await view.refresh();
      error.replaceChildren();
    } catch (e) {
      if (current === view) error.replaceChildren(errorBox(e));
    } finally {
      busy = false;
    }
  };
  await tick();
  main.focus({ preventScroll: true });
  timer = setInterval(tick, POLL_MS);
}

async function boot() {
  window.addEventListener("hashchange", route);
  // The skip link moves focus; following its `#main` would route away.
  document.querySelector("a.skip").addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("/v1/session", { method: "DELETE" }); } catch { /* ended anyway */ }
    showLogin();
  });
  try {
    start(await api("/v1/session"));
  } catch (e) {
    if (e.status === 401) showLogin(e.message);
    else document.getElementById("main").replaceChildren(errorBox(e));
  }
}

boot();
