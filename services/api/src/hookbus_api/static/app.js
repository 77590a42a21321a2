// The hookbus dashboard: plain DOM, no build step. Every value from the API is written as
// text (never as HTML). The token lives in sessionStorage and goes out as a bearer header.

const TOKEN_KEY = "hookbus.token";
const main = document.getElementById("main");
const statusBox = document.getElementById("status");
let me = null;
let live = null;
const liveListeners = new Set();

// ------------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function say(text) {
  statusBox.textContent = text;
  if (text) setTimeout(() => { if (statusBox.textContent === text) statusBox.textContent = ""; }, 4000);
}

const short = (type) => type.replace(/^io\.hookbus\./, "").replace(/\.v\d+$/, "");
const when = (t) => (t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "");
const link = (href, text) => h("a", { href }, text);
const statusClass = (s) => ({ succeeded: "ok", failed: "bad", dead: "bad", interrupted: "warn", retrying: "warn" }[s] || "");
const badge = (s) => h("span", { class: `badge ${statusClass(s)}` }, s);

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { accept: "application/json", ...(options.headers || {}) };
  if (token) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { ...options, headers });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) {
    // Signed in, a 401 means the token was revoked meanwhile; while signing in, the form
    // says why itself.
    if (res.status === 401 && me) signOut("Your token is not valid any more; sign in again.");
    throw new ApiError(res.status, body || {});
  }
  return body;
}

function table(caption, columns, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map(([label, , cls]) => h("th", { scope: "col", class: cls }, label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map(([, cell, cls]) => h("td", { class: cls }, cell(r)))))));
}

function page(title, ...content) {
  main.replaceChildren(h("h1", { tabindex: "-1", id: "page-title" }, title), ...content);
  document.title = `${title} · hookbus`;
}

function focusTitle() {
  document.getElementById("page-title")?.focus();
}

function query() {
  const [, q = ""] = location.hash.split("?");
  return new URLSearchParams(q);
}

function field(label, name, value = "", attrs = {}) {
  return h("label", {}, label, h("input", { name, value: value || "", ...attrs }));
}

// ------------------------------------------------------------------ sign-in

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  stopLive();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "token-help" });
  const error = h("p", { class: "error", role: "alert", id: "signin-error" }, message || "");
  const form = h("form", { class: "signin", onsubmit: async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await start();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = e.status === 401 ? "That token is not valid." : `Cannot sign in: ${e.message}`;
      input.focus();
    }
  } },
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" }, "Make one with: hookbus tokens create --name <you> --scope read|operate|admin"),
    h("button", { type: "submit" }, "Sign in"),
    error);
  page("Sign in", h("div", { class: "signin" }, form));
  input.focus();
}

async function start() {
  me = await api("/api/whoami");
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `${me.name} (${me.scope})`;
  startLive();
  await route();
  focusTitle();
}

const canOperate = () => me && (me.scope === "operate" || me.scope === "admin");

// ------------------------------------------------------------------ live (SSE)

function stopLive() {
  if (live) live.abort();
  live = null;
  document.getElementById("live-state").textContent = "live: off";
}

async function startLive() {
  stopLive();
  const controller = new AbortController();
  live = controller;
  const state = document.getElementById("live-state");
  while (live === controller) {
    try {
      const res = await fetch("/api/live", {
        headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`, accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      state.textContent = "live: on";
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) {
            const event = JSON.parse(data);
            for (const listener of liveListeners) listener(event);
          }
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    state.textContent = "live: reconnecting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ------------------------------------------------------------------ pages

async function overview() {
  const o = await api("/api/overview");
  const card = (n, l, cls = "") => h("div", { class: "card" }, h("div", { class: `n ${cls}` }, n), h("div", { class: "l" }, l));
  const f = o.failures_24h;
  page("Overview",
    h("section", { "aria-labelledby": "fail-h" },
      h("h2", { id: "fail-h" }, "Failures, last 24 hours"),
      h("div", { class: "cards" },
        card(f.jobs_failed, "jobs failed", f.jobs_failed ? "bad" : ""),
        card(f.jobs_interrupted, "jobs interrupted", f.jobs_interrupted ? "warn" : ""),
        card(f.deliveries_failed, "deliveries failed", f.deliveries_failed ? "bad" : ""),
        card(f.deliveries_dead, "deliveries dead", f.deliveries_dead ? "bad" : ""),
        card(f.messages_deadlettered, "messages dead-lettered", f.messages_deadlettered ? "bad" : ""),
        card(o.last_seq, "events in the log"))),
    h("section", { "aria-labelledby": "rate-h" },
      h("h2", { id: "rate-h" }, "Rates"),
      table("Events recorded lately, by type", [
        ["Type", (r) => r.type],
        ["Last 5 minutes", (r) => r.last_5m, "num"],
        ["Per minute (5 min)", (r) => (r.last_5m / 5).toFixed(1), "num"],
        ["Last hour", (r) => r.last_hour, "num"],
      ], o.rates, "No events in the last hour.")),
    h("section", { "aria-labelledby": "lag-h" },
      h("h2", { id: "lag-h" }, "Consumer lag"),
      table("Each service's durable consumer on the bus", [
        ["Service", (c) => c.service],
        ["Pending", (c) => (c.found ? c.pending : "not running yet"), "num"],
        ["Being handled", (c) => c.ack_pending, "num"],
        ["Redelivered", (c) => c.redelivered, "num"],
      ], o.consumers)),
    h("section", { "aria-labelledby": "rm-h" },
      h("h2", { id: "rm-h" }, "Jobs and deliveries"),
      table("By status", [["Status", (r) => badge(r[0])], ["Jobs", (r) => r[1], "num"], ["Deliveries", (r) => r[2], "num"]],
        [...new Set([...Object.keys(o.jobs_by_status), ...Object.keys(o.deliveries_by_status)])].sort()
          .map((s) => [s, o.jobs_by_status[s] || 0, o.deliveries_by_status[s] || 0]))));
}

const EVENT_FILTERS = [
  ["Type (glob)", "type", "job.*"], ["Source", "source", "github"], ["Event (glob)", "event", "push"],
  ["Tenant", "tenant", ""], ["Since", "since", "2h or 2026-11-22T07:00Z"], ["Until", "until", ""],
  ["Correlation id", "correlation", "evt_…"],
];

async function events() {
  const q = query();
  const params = new URLSearchParams();
  for (const [, name] of EVENT_FILTERS) if (q.get(name)) params.set(name, q.get(name));
  if (q.get("before")) params.set("before", q.get("before"));
  params.set("limit", "50");
  const form = h("form", { class: "filters", role: "search", "aria-label": "Event filters", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) p.set(k, v);
    location.hash = `#/events?${p}`;
  } },
    EVENT_FILTERS.map(([label, name, placeholder]) => field(label, name, q.get(name), { placeholder })),
    h("button", { type: "submit" }, "Search"));
  let result;
  try {
    result = await api(`/api/events?${params}`);
  } catch (e) {
    page("Events", form, h("p", { class: "error", role: "alert" }, e.message));
    return;
  }
  const columns = [
    ["Seq", (e) => e.seq, "num"],
    ["Time", (e) => when(e.time)],
    ["Type", (e) => link(`#/events/${e.id}`, short(e.type))],
    ["Tenant", (e) => e.tenant],
    ["Chain", (e) => link(`#/chains/${e.id}`, "timeline")],
  ];
  const list = table("Newest first", columns, result.items, "No events match.");
  const more = result.next_before
    ? h("p", {}, link(`#/events?${new URLSearchParams({ ...Object.fromEntries(params), before: result.next_before })}`, "Older events"))
    : null;
  const fresh = h("p", { class: "muted", "aria-live": "polite" });
  let newCount = 0;
  const onLive = (e) => {
    if (!location.hash.startsWith("#/events") || location.hash.startsWith("#/events/")) return;
    newCount += 1;
    fresh.replaceChildren(`${newCount} new event${newCount === 1 ? "" : "s"} since this page loaded (latest: ${short(e.type)}). `,
      h("button", { type: "button", class: "secondary", onclick: () => route() }, "Show them"));
  };
  liveListeners.add(onLive);
  page("Events", form, fresh, list, more);
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function eventPage(id) {
  const d = await api(`/api/events/${encodeURIComponent(id)}`);
  const e = d.event;
  const headers = Object.entries(d.headers || {});
  page(short(e.type),
    kv([["Id", h("code", {}, e.id)], ["Time", when(e.time)], ["Source", e.source], ["Tenant", e.tenant],
      ["Subject", e.subject], ["Bus subject", h("code", {}, e.bus_subject)], ["Log sequence", e.seq],
      ["Chain", link(`#/chains/${e.id}`, e.correlationid)], ["Caused by", e.causationid ? link(`#/events/${e.causationid}`, e.causationid) : null]]),
    h("h2", {}, "Headers"),
    table("Headers as recorded (credentials redacted)", [["Name", (r) => r[0]], ["Value", (r) => h("code", {}, r[1])]], headers, "No headers recorded."),
    h("h2", {}, "Raw body"),
    d.raw_body !== null ? h("pre", { "aria-label": "Raw body" }, d.raw_body)
      : h("p", { class: "muted" }, d.raw_body_base64 ? `${d.raw_body_bytes} bytes, not UTF-8 (base64 in the API)` : "Only inbound webhooks keep a raw body."),
    h("h2", {}, "Data"),
    h("pre", { "aria-label": "Event data" }, JSON.stringify(e.data, null, 2)));
}

function describe(e) {
  const d = e.data || {};
  const t = short(e.type);
  if (t === "webhook.routed") {
    return h("div", {},
      h("p", {}, `${d.source} ${d.event_type}: ${d.matched?.length ? `matched ${d.matched.join(", ")}` : "no rule matched"}`),
      table("Rule decisions", [["Rule", (r) => r.rule], ["Matched", (r) => (r.matched ? "yes" : "no")], ["Why", (r) => r.reason]],
        // Rules passed over by the webhook's source, event type or repository are recorded together.
        (d.evaluations || []).concat((d.passed_over || []).map((g) => ({ rule: g.rules.join(", "), matched: false, reason: g.reason }))),
        "No rule decisions recorded."));
  }
  if (t.startsWith("webhook.")) {
    const w = d.webhook || d;
    return h("p", {}, `${w.source} ${w.event_type}`, w.repository ? ` · ${w.repository}` : "", w.branch ? ` @ ${w.branch}` : "");
  }
  if (t.startsWith("job.")) {
    return h("p", {}, link(`#/jobs/${d.job_id}`, d.job_id), ` ${d.kind || ""} (rule ${d.rule})`,
      d.exit_code !== undefined && d.exit_code !== null ? ` exit ${d.exit_code}` : "", d.error ? ` — ${d.error}` : "");
  }
  if (t.startsWith("delivery.")) {
    return h("p", {}, link(`#/deliveries/${d.delivery_id}`, d.delivery_id), d.attempt ? ` attempt ${d.attempt}` : "",
      d.status_code ? ` → ${d.status_code}` : "", d.error ? ` — ${d.error}` : "");
  }
  return null;
}

async function chainPage(id) {
  const c = await api(`/api/chains/${encodeURIComponent(id)}`);
  const t0 = new Date(c.events[0].time).getTime();
  const cls = (e) => (/failed|dead|deadlettered/.test(e.type) ? "bad" : /succeeded/.test(e.type) ? "ok" : "");
  page("Chain",
    kv([["Correlation id", h("code", {}, c.correlationid)], ["Events", c.events.length]]),
    h("ol", { class: "timeline", "aria-label": "Events of this chain, in order" },
      c.events.map((e) => h("li", { class: cls(e) },
        h("strong", {}, link(`#/events/${e.id}`, short(e.type))),
        h("span", { class: "muted" }, ` +${((new Date(e.time).getTime() - t0) / 1000).toFixed(3)} s · ${when(e.time)}`),
        describe(e)))));
}

function older(base, params, next) {
  if (!next) return null;
  const p = new URLSearchParams(params);
  p.delete("limit");
  p.set("before", next);
  return h("p", {}, link(`${base}?${p}`, "Older"));
}

function listParams(q) {
  const params = new URLSearchParams({ limit: "100" });
  for (const name of ["status", "before"]) if (q.get(name)) params.set(name, q.get(name));
  return params;
}

async function jobs() {
  const q = query();
  const params = listParams(q);
  const r = await api(`/api/jobs?${params}`);
  page("Jobs", statusFilter("#/jobs", q.get("status"), ["requested", "running", "succeeded", "failed", "interrupted"]),
    table("Most recently changed first", [
      ["Job", (j) => link(`#/jobs/${j.job_id}`, j.job_id)], ["Rule", (j) => j.rule], ["Kind", (j) => j.kind],
      ["Status", (j) => badge(j.status)], ["Attempts", (j) => j.attempts, "num"], ["Exit", (j) => j.exit_code ?? "", "num"],
      ["Updated", (j) => when(j.updated_at)],
    ], r.items, "No jobs."),
    older("#/jobs", params, r.next_before));
}

function statusFilter(base, current, choices) {
  return h("form", { class: "filters", "aria-label": "Filter by status", onsubmit: (ev) => {
    ev.preventDefault();
    const v = new FormData(ev.target).get("status");
    location.hash = v ? `${base}?status=${v}` : base;
  } },
    h("label", {}, "Status", h("select", { name: "status" }, h("option", { value: "" }, "any"),
      choices.map((c) => h("option", { value: c, selected: c === current }, c)))),
    h("button", { type: "submit" }, "Filter"));
}

async function jobPage(id) {
  const d = await api(`/api/jobs/${encodeURIComponent(id)}`);
  const j = d.job;
  page(`Job ${j.job_id}`,
    kv([["Rule", j.rule], ["Kind", j.kind], ["Status", badge(j.status)], ["Attempts", j.attempts], ["Exit code", j.exit_code],
      ["Duration", j.duration_ms !== null ? `${j.duration_ms.toFixed(0)} ms` : null], ["Chain", link(`#/chains/${j.correlation_id}`, j.correlation_id)],
      ["Error", d.error]]),
    h("h2", {}, "Output"),
    d.output !== null ? h("pre", { "aria-label": "Job output" }, d.output || "(no output)") : h("p", { class: "muted" }, "Not finished yet."),
    d.truncated ? h("p", { class: "muted" }, `Truncated: ${d.output_bytes} bytes in all.`) : null);
}

async function deliveries() {
  const q = query();
  const params = listParams(q);
  const r = await api(`/api/deliveries?${params}`);
  page("Deliveries", statusFilter("#/deliveries", q.get("status"), ["requested", "retrying", "succeeded", "failed", "dead"]),
    deliveryTable(r.items), older("#/deliveries", params, r.next_before));
}

function deliveryTable(items) {
  return table("Most recently changed first", [
    ["Delivery", (d) => link(`#/deliveries/${d.delivery_id}`, d.delivery_id)], ["URL", (d) => h("code", {}, d.url)],
    ["Rule", (d) => d.rule], ["Status", (d) => badge(d.status)], ["Attempts", (d) => d.attempts, "num"],
    ["Last answer", (d) => d.last_status_code ?? d.last_error ?? ""], ["Updated", (d) => when(d.updated_at)],
  ], items, "No deliveries.");
}

async function replayChain(correlation, button, note) {
  button.disabled = true;
  try {
    const r = await api("/api/replays", {
      method: "POST",
      body: JSON.stringify({ mode: "redrive", correlation, reason: `dashboard: replay of ${correlation}` }),
    });
    const text = r.replay ? `Replay ${r.replay.replay_id} started: ${r.selected} webhook${r.selected === 1 ? "" : "s"} to redrive.` : "Nothing to replay.";
    note.replaceChildren(text, " ", r.replay ? link(`#/replays`, "See replays") : "");
    say(text);
  } catch (e) {
    note.textContent = `Cannot replay: ${e.message}`;
    button.disabled = false;
  }
}

const DEAD_LETTER = (d) => d.status === "dead" || d.status === "failed";

// A dead or failed delivery sent again (a new delivery, the same webhook-id); answers the
// new delivery's id, or null after saying why not.
async function replayDelivery(id, button, note) {
  button.disabled = true;
  try {
    const r = await api(`/api/dlq/${encodeURIComponent(id)}/replay`, {
      method: "POST", body: JSON.stringify({ reason: `dashboard: replay of ${id}` }),
    });
    const fresh = r.replayed[0].delivery_id;
    const text = `Delivery ${id} requested again as ${fresh}.`;
    if (note) note.replaceChildren(text, " ", link(`#/deliveries/${fresh}`, "See it"));
    say(text);
    return fresh;
  } catch (e) {
    const text = `Cannot replay ${id}: ${e.message}`;
    if (note) note.textContent = text;
    say(text);
    button.disabled = false;
    return null;
  }
}

async function deliveryPage(id) {
  const d = await api(`/api/deliveries/${encodeURIComponent(id)}`);
  const x = d.delivery;
  const note = h("p", { role: "status", id: "replay-note" });
  const button = h("button", { type: "button", id: "replay", onclick: () => replayChain(x.correlation_id, button, note),
    "aria-describedby": "replay-help" }, "Replay this webhook");
  const again = DEAD_LETTER(x)
    ? h("button", { type: "button", id: "replay-delivery", class: "secondary", "aria-describedby": "replay-delivery-help",
      onclick: () => replayDelivery(x.delivery_id, again, note) }, "Replay this delivery")
    : null;
  const replay = canOperate()
    ? h("section", { "aria-labelledby": "replay-h" }, h("h2", { id: "replay-h" }, "Replay"),
      h("p", { id: "replay-help", class: "muted" }, "Routes the webhook that started this chain again, through the current rules: a new chain, and a new delivery."),
      again ? h("p", { id: "replay-delivery-help", class: "muted" }, "Sends only this delivery again, with its original webhook-id; no job runs again.") : null,
      button, again ? " " : null, again, note)
    : h("p", { class: "muted" }, "Replaying needs a token with the operate scope.");
  page(`Delivery ${x.delivery_id}`,
    kv([["URL", h("code", {}, x.url)], ["Rule", x.rule], ["Tenant", x.tenant], ["Status", badge(x.status)], ["Attempts", x.attempts],
      ["Chain", link(`#/chains/${x.correlation_id}`, x.correlation_id)]]),
    h("h2", {}, "Attempts"),
    table("Each attempt and its answer", [
      ["#", (a) => a.attempt, "num"], ["Time", (a) => when(a.time)], ["Status", (a) => a.status_code ?? ""],
      ["Error", (a) => a.error ?? ""], ["Took", (a) => `${a.duration_ms.toFixed(0)} ms`, "num"],
      ["Answer", (a) => (a.response_body ? h("code", {}, a.response_body.slice(0, 200)) : "")],
    ], d.attempts, "No attempt yet."),
    replay);
}

function replayRowButton(d) {
  const button = h("button", { type: "button", id: `replay-${d.delivery_id}`, class: "secondary",
    "aria-label": `Replay delivery ${d.delivery_id}`,
    onclick: async () => {
      if (await replayDelivery(d.delivery_id, button, null)) {
        button.replaceWith(h("span", { class: "muted", tabindex: "-1", id: `replayed-${d.delivery_id}` }, "replayed"));
        document.getElementById(`replayed-${d.delivery_id}`)?.focus();
      }
    } }, "Replay delivery");
  return button;
}

// "Replay all shown": the dry run's count first, then a confirmation.
function bulkReplay() {
  const box = h("div", { id: "bulk-replay" });
  const note = h("p", { role: "status", id: "bulk-note" });
  const start = h("button", { type: "button", id: "bulk-start", "aria-describedby": "bulk-help", onclick: async () => {
    start.disabled = true;
    try {
      const dry = await api("/api/dlq/replay", { method: "POST", body: JSON.stringify({ all: true, dry_run: true }) });
      if (!dry.selected) {
        note.textContent = "Nothing to replay: every dead letter was replayed before.";
        start.disabled = false;
        return;
      }
      const plural = `${dry.selected} deliver${dry.selected === 1 ? "y" : "ies"}`;
      const go = h("button", { type: "button", id: "bulk-confirm", onclick: async () => {
        go.disabled = true;
        try {
          const r = await api("/api/dlq/replay", {
            method: "POST", body: JSON.stringify({ all: true, reason: "dashboard: replay all shown" }),
          });
          const text = `${r.replayed.length} deliver${r.replayed.length === 1 ? "y" : "ies"} requested again.`;
          say(text);
          await route();
          document.getElementById("bulk-note").textContent = text;
          document.getElementById("page-title")?.focus();
        } catch (e) {
          note.textContent = `Cannot replay: ${e.message}`;
          go.disabled = false;
        }
      } }, `Replay ${plural}`);
      const cancel = h("button", { type: "button", class: "secondary", id: "bulk-cancel", onclick: () => {
        confirm.remove();
        note.textContent = "";
        start.disabled = false;
        start.focus();
      } }, "Cancel");
      const confirm = h("div", { role: "group", "aria-labelledby": "bulk-question" },
        h("p", { id: "bulk-question" }, `Send ${plural} again (every dead or failed one not replayed before)?`),
        go, " ", cancel);
      box.append(confirm);
      go.focus();
    } catch (e) {
      note.textContent = `Cannot count: ${e.message}`;
      start.disabled = false;
    }
  } }, "Replay all shown");
  box.append(h("p", { id: "bulk-help", class: "muted" },
    "Sends each dead delivery again with its original webhook-id (jobs do not run again); you confirm the count first."),
  start, note);
  return box;
}

async function deadLetters() {
  const r = await api("/api/dead-letters?limit=100");
  const operate = canOperate();
  const columns = [
    ["Delivery", (d) => link(`#/deliveries/${d.delivery_id}`, d.delivery_id)], ["URL", (d) => h("code", {}, d.url)],
    ["Rule", (d) => d.rule], ["Status", (d) => badge(d.status)], ["Attempts", (d) => d.attempts, "num"],
    ["Last answer", (d) => d.last_status_code ?? d.last_error ?? ""], ["Updated", (d) => when(d.updated_at)],
  ];
  if (operate) columns.push(["Action", replayRowButton]);
  page("Dead letters",
    h("h2", {}, "Dead deliveries"),
    operate ? (r.deliveries.length ? bulkReplay() : null)
      : h("p", { class: "muted" }, "Replaying a delivery needs a token with the operate scope."),
    table("Most recently changed first", columns, r.deliveries, "No deliveries."),
    h("h2", {}, "Dead-lettered messages"),
    table("Bus messages no service could handle", [
      ["Time", (e) => when(e.time)], ["Service", (e) => e.data.service], ["Error", (e) => e.data.error],
      ["Event", (e) => link(`#/events/${e.id}`, e.id)],
    ], r.messages, "None."));
}

async function replaysPage() {
  const r = await api("/api/replays?limit=100");
  page("Replays", table("Oldest first", [
    ["Replay", (j) => h("code", {}, j.replay_id)], ["Status", (j) => badge(j.status)], ["Mode", (j) => j.mode],
    ["Done", (j) => `${j.done}/${j.selected}`, "num"], ["By", (j) => j.requested_by ?? ""], ["Reason", (j) => j.reason ?? ""],
    ["Started", (j) => when(j.created_at)],
  ], r.items, "No replays yet."));
}

const STATE_CLASS = { active: "ok", paused: "warn", disabled: "bad" };
const KIND_TEXT = { config: "config file", runtime: "added at run time", unconfigured: "not configured" };

function endpointState(x) {
  const why = [x.reason, x.since ? `since ${when(x.since)}` : "", x.changed_by ? `by ${x.changed_by}` : ""]
    .filter(Boolean).join(" · ");
  return [h("span", { class: `badge ${STATE_CLASS[x.state] || ""}` }, x.state), why ? h("div", { class: "muted" }, why) : null];
}

function endpointHealth(x) {
  const d = x.health.deliveries;
  return `${d.succeeded} ok · ${d.failed} failed · ${d.dead} dead (${d.attempts} attempts, ${d.failed_attempts} failed)`;
}

function seenAttempt(a, cls) {
  if (!a) return h("span", { class: "muted" }, "none");
  return [link(`#/deliveries/${a.delivery_id}`, when(a.at)),
    a.status_code || a.error ? h("div", { class: cls }, [a.status_code, a.error].filter((v) => v !== null && v !== undefined).join(" — ")) : null];
}

async function changeEndpoint(name, enable, button) {
  button.disabled = true;
  const verb = enable ? "enable" : "disable";
  try {
    const x = await api(`/api/endpoints/${encodeURIComponent(name)}/${verb}`, {
      method: "POST", body: JSON.stringify({}),
    });
    say(`Endpoint ${x.name} is ${x.state}.`);
    await route();
    // Keep the keyboard where it was: on the same endpoint's button, now the other one.
    document.getElementById(`endpoint-toggle-${name}`)?.focus();
  } catch (e) {
    say(`Cannot ${verb} ${name}: ${e.message}`);
    button.disabled = false;
  }
}

function endpointAction(x) {
  if (!canOperate()) return "";
  const enable = x.state === "disabled";
  const button = h("button", { type: "button", id: `endpoint-toggle-${x.name}`, class: enable ? "" : "secondary",
    "aria-label": `${enable ? "Enable" : "Disable"} ${x.name}`, onclick: () => changeEndpoint(x.name, enable, button) },
  enable ? "Enable" : "Disable");
  return button;
}

async function endpointsPage() {
  const [e, r] = await Promise.all([api("/api/endpoints"), api("/api/rules")]);
  const columns = [
    ["Name", (x) => x.name], ["State", endpointState], ["Tenant", (x) => x.tenant],
    ["Defined", (x) => KIND_TEXT[x.kind] || x.kind], ["URL", (x) => h("code", {}, x.url)],
    ["Events", (x) => x.events.join(", ")], ["Signing", (x) => (x.signed ? x.signing : "unsigned")],
    ["Last 24 hours", endpointHealth], ["Last success", (x) => seenAttempt(x.health.last_success, "ok")],
    ["Last failure", (x) => seenAttempt(x.health.last_failure, "bad")],
  ];
  if (canOperate()) columns.push(["Action", endpointAction]);
  page("Endpoints & rules",
    h("h2", {}, "Endpoints"),
    canOperate() ? null : h("p", { class: "muted" }, "Disabling or enabling an endpoint needs a token with the operate scope."),
    table("State and health of each endpoint (no secrets)", columns, e.items, "No endpoints."),
    h("h2", {}, "Rules"),
    table("The router's rules", [
      ["Rule", (x) => x.name], ["Source", (x) => x.source], ["Event", (x) => x.event], ["Branch", (x) => x.branch],
      ["Enabled", (x) => (x.enabled ? "yes" : "no")], ["Actions", (x) => x.actions.map((a) => a.target ? `${a.kind} → ${a.target}` : a.kind).join("; ")],
    ], r.items, "No rules configured."));
}

async function projectsPage() {
  const r = await api("/api/projects");
  if (!r.items.length) {
    page("Projects", h("p", { class: "muted" },
      "No projects yet: a project shows once a stage of it deployed, or once an image push made it."));
    return;
  }
  const deployed = (s) => (s.deployed ? [h("code", {}, s.deployed.image || "?"),
    s.deployed.rolled_back ? " (rolled back)" : ""] : h("span", { class: "muted" }, "nothing yet"));
  page("Projects", ...r.items.map((p) => h("section", { "aria-labelledby": `project-${p.project}` },
    h("h2", { id: `project-${p.project}` }, p.project),
    p.made_from_image ? h("p", { class: "muted" },
      `Made from ${p.image}`, p.host_port ? ` · port ${p.port} on 127.0.0.1:${p.host_port}` : "") : null,
    table(`Stages of ${p.project}: what each runs`, [
      ["Stage", (s) => s.stage],
      ["Running", deployed],
      ["Container", (s) => s.deployed?.container || ""],
      ["Health", (s) => s.deployed?.health || ""],
      ["Deployed", (s) => (s.deployed ? link(`#/jobs/${s.deployed.job_id}`, when(s.deployed.at)) : "")],
      ["Last job", (s) => (s.last_job ? [badge(s.last_job.status), " ", link(`#/jobs/${s.last_job.job_id}`, when(s.last_job.at))] : "")],
    ], p.stages, "No stage has deployed yet."))));
}

async function partnersPage() {
  const r = await api("/api/partners");
  page("Partners", table("Senders with their own URL", [
    ["Partner", (p) => h("code", {}, p.partner_id)], ["Name", (p) => p.name], ["Tenant", (p) => p.tenant],
    ["Status", (p) => p.status], ["Created", (p) => when(p.created_at)],
  ], r, "No partners."));
}

// ------------------------------------------------------------------ router

const ROUTES = [
  [/^#\/?$/, overview, "#/"],
  [/^#\/events\/([^/?]+)$/, eventPage, "#/events"],
  [/^#\/events(\?.*)?$/, events, "#/events"],
  [/^#\/chains\/([^/?]+)$/, chainPage, "#/events"],
  [/^#\/jobs\/([^/?]+)$/, jobPage, "#/jobs"],
  [/^#\/jobs(\?.*)?$/, jobs, "#/jobs"],
  [/^#\/deliveries\/([^/?]+)$/, deliveryPage, "#/deliveries"],
  [/^#\/deliveries(\?.*)?$/, deliveries, "#/deliveries"],
  [/^#\/dead-letters$/, deadLetters, "#/dead-letters"],
  [/^#\/replays$/, replaysPage, "#/replays"],
  [/^#\/endpoints$/, endpointsPage, "#/endpoints"],
  [/^#\/projects$/, projectsPage, "#/projects"],
  [/^#\/partners$/, partnersPage, "#/partners"],
];

async function route() {
  if (!me) return;
  liveListeners.clear();
  const hash = location.hash || "#/";
  for (const [re, view, nav] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.getAttribute("href") === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    try {
      await view(m[1] && !m[1].startsWith("?") ? decodeURIComponent(m[1]) : undefined);
    } catch (e) {
      if (e.status !== 401) page("Something went wrong", h("p", { class: "error", role: "alert" }, e.message));
    }
    return;
  }
  page("Not found", h("p", {}, "No such page. "), link("#/", "Overview"));
}

window.addEventListener("hashchange", async () => {
  await route();
  focusTitle();
});
document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));

if (sessionStorage.getItem(TOKEN_KEY)) {
  start().catch(() => signOut());
} else {
  showSignIn();
}
