// The live swarm view: polls /dashboard/state.json and redraws.
// Everything in the state can come from a node (its /v1/info claims, its registered endpoint), so it is
// only ever inserted as text (createElement + text nodes), never parsed as markup.
"use strict";

const POLL_MS = 1500;

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(kind, text) {
  // kind is one of our own fixed words; anything else falls back to a neutral class
  const known = ["ok", "thin", "none", "banned", "excluded", "wrong_domain", "unreachable", "slashed"];
  return el("span", "badge " + (known.includes(kind) ? kind : ""), text === undefined ? kind : text);
}

function table(headers, rows, rowClass) {
  const head = el("tr", null, ...headers.map((h) => el("th", null, h)));
  const body = rows.map((cells, i) => {
    const tr = el("tr", rowClass ? rowClass(i) : null);
    for (const cell of cells) tr.append(cell instanceof Node && cell.tagName === "TD" ? cell : el("td", null, cell));
    return tr;
  });
  return el("table", null, el("thead", null, head), el("tbody", null, ...body));
}

function mono(text) { return el("td", "mono", text); }
function empty(text) { return el("div", "empty", text); }
function fmt(value, digits) { return value === null || value === undefined ? "—" : Number(value).toFixed(digits); }
function short(hex) { return typeof hex === "string" && hex.length > 14 ? hex.slice(0, 10) + "…" + hex.slice(-4) : String(hex ?? "—"); }
function ago(seconds) {
  const d = Math.max(0, Date.now() / 1000 - seconds);
  return d < 60 ? d.toFixed(0) + "s ago" : d < 3600 ? (d / 60).toFixed(0) + "m ago" : (d / 3600).toFixed(1) + "h ago";
}
function eth(wei) {
  if (wei === null || wei === undefined) return "—";
  // wei arrive as decimal strings (they exceed 2^53); this is for display only
  try {
    return (Number(BigInt(wei) / 1000000000000n) / 1e6).toString() + " ETH";
  } catch (err) {
    return String(wei) + " wei";
  }
}

function replace(id, ...children) {
  const target = document.getElementById(id);
  target.replaceChildren(...children);
}

function notConfigured(source, what) {
  if (!source || source.configured === false) return empty(what + ": not configured");
  if (source.error) return el("div", "empty failed", what + " unavailable: " + source.error);
  return null;
}

function card(value, label) { return el("div", "card", el("div", "value", value), el("div", "label", label)); }

function renderSummary(s) {
  const nodes = s.shards.flatMap((sh) => sh.nodes);
  const live = nodes.filter((n) => n.state === "ok").length;
  const covered = s.shards.filter((sh) => sh.coverage !== "none").length;
  const tps = s.throughput.tokens_per_s;
  replace("summary",
    card(covered + " / " + s.shards.length, "shards with a live node"),
    card(live + " / " + nodes.length, "nodes live"),
    card(tps === null ? "—" : fmt(tps, 1), "tokens/s (last " + s.throughput.window_s + "s)"),
    card(String(s.throughput.requests), "requests (last " + s.throughput.window_s + "s)"),
    card(String(s.router.bans), "router bans"));
  const reg = s.registry.error ? " — registry error: " + s.registry.error : "";
  replace("meta", s.model + " · manifest " + short(s.manifest_hash) + " · registry " + s.registry.kind + reg);
}

function nodeRows(nodes, showStake) {
  return nodes.map((n) => {
    const ledger = n.ledger || {};
    const stake = n.stake || {};
    const load = n.max_sessions === undefined ? "—" : n.free_sessions + " / " + n.max_sessions + " free";
    const layers = n.layers ? n.layers[0] + "–" + (n.layers[1] - 1) : "—";
    const latency = n.latency_ms === undefined ? "—" : fmt(n.latency_ms, 1) + " ms (" + n.latency_source + ")";
    const state = el("td", null, badge(n.state));
    if (n.banned_s) state.append(" " + n.banned_s + "s");
    if (n.error) state.append(el("div", "muted", n.error));
    if (ledger.excluded_reason) state.append(el("div", "muted", ledger.excluded_reason));
    const row = [state, mono(n.address || "—"), mono(n.url), layers, latency, load,
      ledger.reputation === undefined ? "—" : fmt(ledger.reputation, 3)];
    if (showStake) row.push(stake.error ? "error: " + stake.error : eth(stake.stake_wei));
    row.push(el("td", "muted", n.software ? n.software : ""));
    return row;
  });
}

function renderShards(s) {
  const showStake = s.stake.configured;
  const headers = ["state", "address", "URL", "layers", "latency", "load", "reputation"]
    .concat(showStake ? ["stake"] : [], ["software"]);
  const blocks = s.shards.map((sh) => {
    const label = sh.coverage === "none" ? "no live node" : sh.coverage === "thin" ? "thin: " + sh.live + " live" : sh.live + " live";
    const title = el("h3", null, "shard " + sh.index + " ", el("span", "muted", "layers " + sh.layers[0] + "–" + (sh.layers[1] - 1) + " "),
      badge(sh.coverage, label));
    const nodes = sh.nodes;
    const body = nodes.length ? table(headers, nodeRows(nodes, showStake), (i) => nodes[i].state === "slashed" ? "slashed" : null)
      : empty("no node registered for this shard");
    return el("div", "shard " + (sh.coverage === "ok" ? "" : sh.coverage), title, body);
  });
  if (s.unplaced.length) {
    blocks.push(el("div", "shard none", el("h3", null, "registered, shard unknown"),
      table(headers, nodeRows(s.unplaced, showStake))));
  }
  if (s.stake.configured === false) blocks.push(empty("stake: not configured (the gateway does not use the on-chain registry)"));
  replace("shards", ...blocks);
}

function renderVerdicts(s) {
  const missing = notConfigured(s.verifier, "verifier");
  if (missing) return replace("verdicts", missing);
  const rows = s.verifier.verdicts.map((v) => [ago(v.time), el("td", v.passed ? "passed" : "failed", v.passed ? "pass" : "FAIL"),
    mono(short(v.node)), String(v.shard), v.summary]);
  replace("verdicts", rows.length ? table(["when", "verdict", "node", "shard", "summary"], rows) : empty("no verdicts yet"));
}

function renderSlashes(s) {
  const missing = notConfigured(s.ledger, "ledger");
  if (missing) return replace("slashes", missing);
  const rows = s.ledger.slashes.map((x) => [String(x.id), mono(x.node_address), x.kind, x.status,
    x.amount === null ? "—" : eth(x.amount), mono(short(x.tx_hash || "—"))]);
  replace("slashes", rows.length ? table(["id", "node", "kind", "status", "amount", "tx"], rows) : empty("no slashes"));
}

function renderEpochs(s) {
  const missing = notConfigured(s.ledger, "ledger");
  if (missing) return replace("epochs", missing);
  const blocks = s.ledger.epochs.map((e) => el("div", null,
    el("div", null, "epoch " + e.epoch + " · " + e.status + " · " + eth(e.total) + " of " + eth(e.pool)),
    table(["node", "reward"], Object.entries(e.amounts).map(([a, v]) => [mono(a), eth(v)]))));
  replace("epochs", ...(blocks.length ? blocks : [empty("no epoch allocated yet")]));
}

function renderRequests(s) {
  const rows = s.throughput.recent.map((r) => [ago(r.time), String(r.tokens), fmt(r.seconds, 2) + " s", fmt(r.tokens_per_s, 1)]);
  replace("requests", rows.length ? table(["when", "tokens", "time", "tokens/s"], rows) : empty("no requests yet"));
}

function renderEvents(s) {
  const rows = s.router.events.map((e) => [e]);
  replace("events", rows.length ? table(["event"], rows) : empty("no bans or failovers"));
}

function render(s) {
  renderSummary(s);
  renderShards(s);
  renderVerdicts(s);
  renderSlashes(s);
  renderEpochs(s);
  renderRequests(s);
  renderEvents(s);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/dashboard/state.json", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    status.className = "status muted";
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "1";  // tests wait for this
  } catch (err) {
    status.className = "status error";
    status.textContent = "cannot reach the gateway: " + err.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
