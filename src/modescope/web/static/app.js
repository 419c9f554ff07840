// The modescope playground. Plain JavaScript, no build step. Every piece of model output and user text
// reaches the page through textContent (or an attribute the browser never interprets), never as markup.
(() => {
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const TREE_VERSION = 1;

const state = {
  models: [],          // [{name, preselected, ...}] from /api/models
  limits: {},
  tree: { version: TREE_VERSION, next: 1, nodes: {}, roots: [] },
  focus: null,         // the node selected in the branch tree
  shown: {},           // model name -> branch node id shown in that model's column
  picked: null,        // {nodeId, pos} of the token whose popup is open
  busy: 0,
  sentOpen: false,     // whether the columns' "sent prompt" disclosures are open
  live: new Set(),     // the AbortControllers of the generations streaming now (Cancel aborts them)
  drawing: false,      // a render is scheduled for the next frame
};

// ---- small helpers ----
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function status(message, error) {
  const s = $("status");
  s.textContent = message || "";
  s.classList.toggle("error", !!error);
  s.title = message || "";
}
function pct(p) {
  if (typeof p !== "number" || !isFinite(p)) return "—";
  const v = 100 * p;
  return (v >= 10 ? v.toFixed(1) : v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)) + "%";
}
function prob(logprob) { return typeof logprob === "number" ? Math.exp(logprob) : null; }
// the colour of tokens_html.probability_colour: red (unlikely) through yellow to green (likely)
function colour(p) { return "hsl(" + Math.round(120 * Math.max(0, Math.min(1, p))) + ", 75%, 82%)"; }
function shown(text) { return text.replace(/\n/g, "⏎\n").replace(/\t/g, "⇥"); }
function tokenLabel(t) { return t.special ? "⟨" + t.text + "⟩" : t.text === "" ? "∅" : t.text; }
function num(id, fallback) { const v = Number($(id).value); return Number.isFinite(v) ? v : fallback; }
function setBusy(delta) {
  state.busy += delta;
  document.body.dataset.busy = state.busy > 0 ? "true" : "false";
}

// ---- the API ----
async function errorOf(response) {
  try {
    const body = await response.json();
    return new Error(body.error || response.statusText);
  } catch (_) {
    return new Error(response.status + " " + response.statusText);
  }
}
function headers() {
  const h = { "Content-Type": "application/json" };
  if (token) h["X-Modescope-Token"] = token;
  return h;
}
async function call(path, body) {
  const response = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
// A long call answers with server-sent events: queued, progress..., then result or error. Aborting `signal`
// closes the connection, which stops the work on the server.
async function stream(path, body, onEvent, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const payload = data ? JSON.parse(data) : null;
      if (kind === "result") return payload;
      if (kind === "error") throw new Error(payload.error);
      onEvent(kind, payload);
    }
  }
  throw new Error("the server closed the stream without a result");
}
async function guarded(what, action) {
  setBusy(1);
  status(what + "…");
  try {
    const result = await action();
    status("");
    return result;
  } catch (error) {
    if (error.name === "AbortError") status(what + " cancelled");
    else status(what + " failed: " + error.message, true);
    return null;
  } finally {
    setBusy(-1);
  }
}
// A generation that streams its tokens: Cancel (or leaving the page) aborts it.
async function live(what, action) {
  const controller = new AbortController();
  state.live.add(controller);
  $("cancel").disabled = false;
  try {
    return await guarded(what, () => action(controller.signal));
  } finally {
    state.live.delete(controller);
    $("cancel").disabled = state.live.size === 0;
  }
}
function cancelLive() {
  for (const controller of state.live) controller.abort();
}
// Many tokens arrive per second: draw at most once a frame.
function renderSoon() {
  if (state.drawing) return;
  state.drawing = true;
  requestAnimationFrame(() => { state.drawing = false; render(); });
}

// ---- settings from the form ----
function promptSpec() {
  const chat = $("chat").checked;
  const spec = { text: $("prompt").value, chat };
  if (chat && $("system").value) spec.system = $("system").value;
  return spec;
}
function samplerSpec() {
  return {
    temperature: num("temperature", 1), top_p: num("top_p", 1), top_k: num("top_k", 0), min_p: num("min_p", 0),
    xtc_threshold: num("xtc_threshold", 0.1), xtc_probability: num("xtc_probability", 0),
  };
}
function seedValue() { return $("seed").value === "" ? null : num("seed", 0); }
function chosenModels() {
  const names = [$("model-a").value, $("model-b").value].filter((m) => m);
  return names.filter((m, i) => names.indexOf(m) === i);
}
// The remedy of the Remedy section, or null when it changes nothing (direct prompt, no guide): then the
// request carries none and is answered exactly as without remedies.
function remedySpec() {
  const strategy = $("remedy-strategy").value || "direct";
  const guide = $("remedy-guide").value;
  if (strategy === "direct" && !guide) return null;
  const spec = { strategy };
  if (strategy === "verbalized") spec.k = num("remedy-k", 5);
  if (guide) Object.assign(spec, { guide, guide_alpha: num("remedy-alpha", 0.5), guide_mix: $("remedy-mix").value });
  return spec;
}
function remedyLabel(remedy) {
  if (!remedy) return "none";
  const parts = [];
  if (remedy.strategy && remedy.strategy !== "direct") {
    parts.push(remedy.strategy + (remedy.strategy === "verbalized" ? " (k " + remedy.k + ")" : ""));
  }
  if (remedy.guide) parts.push("guided by " + remedy.guide + " α " + remedy.guide_alpha + " " + remedy.guide_mix);
  return parts.join(" · ") || "direct";
}
function syncRemedy() {
  const guided = !!$("remedy-guide").value;
  $("remedy-k-box").hidden = $("remedy-strategy").value !== "verbalized";
  $("remedy-alpha-box").hidden = !guided;
  $("remedy-mix-box").hidden = !guided;
  $("remedy-summary").textContent = remedyLabel(remedySpec());
}
function fillRemedy(config) {
  const options = config.remedies || { strategies: ["direct"], mixes: ["geometric"], k: { min: 2, max: 20 } };
  const add = (select, value, text) => { select.appendChild(el("option", "", text)).value = value; };
  for (const s of options.strategies) add($("remedy-strategy"), s, s);
  for (const m of options.mixes) add($("remedy-mix"), m, m);
  add($("remedy-guide"), "", "none");
  for (const m of config.models) add($("remedy-guide"), m.name, m.name);
  $("remedy-k").min = String(options.k.min);
  $("remedy-k").max = String(options.k.max);
  syncRemedy();
}

// ---- the branch tree ----
// A run is one press of Generate: its prompt and settings, with one branch node per model below it. A branch
// node holds the tokens it keeps (`prefix`, edited ones flagged) and its n regenerated `completions`.
function nodeCount() { return Object.keys(state.tree.nodes).length; }
function room(extra) {
  const cap = state.limits.max_branch_nodes || 2000;
  if (nodeCount() + extra > cap) {
    status("the branch tree holds " + nodeCount() + " nodes; the cap is " + cap + " (max_branch_nodes): delete some", true);
    return false;
  }
  return true;
}
function addNode(node) {
  node.id = "n" + state.tree.next++;
  node.children = [];
  node.bookmarked = false;
  state.tree.nodes[node.id] = node;
  if (node.parent) state.tree.nodes[node.parent].children.push(node.id);
  else state.tree.roots.push(node.id);
  return node;
}
function runOf(node) {
  let n = node;
  while (n && n.kind !== "run") n = state.tree.nodes[n.parent];
  return n;
}
function tokensOf(node) {
  const completion = node.completions[node.selected] || { tokens: [] };
  return node.prefix.concat(completion.tokens);
}
function defaultLabel(node) {
  if (node.kind === "run") {
    const remedy = node.settings && node.settings.remedy ? "[" + remedyLabel(node.settings.remedy) + "] " : "";
    return "run: " + remedy + node.prompt.text.replace(/\s+/g, " ").slice(0, 40);
  }
  const completion = node.completions[node.selected];
  const start = node.prefix.length ? "…" + node.prefix.slice(-3).map((t) => t.text).join("") : "";
  const text = completion ? completion.tokens.slice(0, 8).map((t) => t.text).join("") : "";
  const how = node.auto ? node.auto + (node.mode ? " (" + node.mode + ")" : "") + ": " : "";
  return (how + start + " ▸ " + text).replace(/\s+/g, " ").slice(0, 60);
}
function order() {
  const out = [];
  const walk = (id) => { out.push(id); for (const c of state.tree.nodes[id].children) walk(c); };
  state.tree.roots.forEach(walk);
  return out;
}
function focusNode(id) {
  const node = state.tree.nodes[id];
  if (!node) return;
  state.focus = id;
  const run = runOf(node);
  // the columns show the run's models; this node replaces its model's column, the others keep theirs if
  // they belong to the same run
  for (const childId of run.children) {
    const child = state.tree.nodes[childId];
    if (!state.shown[child.model] || runOf(state.tree.nodes[state.shown[child.model]]) !== run) {
      state.shown[child.model] = childId;
    }
  }
  if (node.kind === "branch") state.shown[node.model] = id;
  closePopup();
  render();
}
function moveFocus(step) {
  const ids = order();
  if (!ids.length) return;
  const at = ids.indexOf(state.focus);
  focusNode(ids[Math.max(0, Math.min(ids.length - 1, at < 0 ? 0 : at + step))]);
}

function renderTree() {
  const list = $("tree");
  list.replaceChildren();
  const visibleIds = new Set(Object.values(state.shown));
  const item = (id) => {
    const node = state.tree.nodes[id];
    const li = el("li");
    li.dataset.id = id;
    const row = el("span", "item");
    row.dataset.id = id;
    if (id === state.focus) row.classList.add("focus");
    if (visibleIds.has(id)) row.classList.add("shown");
    if (node.bookmarked) row.appendChild(el("span", "star", "★ "));
    if (node.kind === "branch") row.appendChild(el("span", "model", node.model + " "));
    row.appendChild(el("span", "label", node.label || defaultLabel(node)));
    row.title = node.label || defaultLabel(node);
    row.addEventListener("click", () => focusNode(id));
    li.appendChild(row);
    if (node.children.length) {
      const ul = el("ul");
      for (const c of node.children) ul.appendChild(item(c));
      li.appendChild(ul);
    }
    return li;
  };
  for (const id of state.tree.roots) list.appendChild(item(id));
  $("tree-count").textContent = nodeCount() ? "(" + nodeCount() + ")" : "";
  for (const b of ["rename", "bookmark", "delete"]) $(b).disabled = !state.focus;
  $("export").disabled = !nodeCount();
}

function deleteFocused() {
  const node = state.tree.nodes[state.focus];
  if (!node) return;
  removeNode(node);
  state.focus = null;
  const next = node.parent || state.tree.roots[state.tree.roots.length - 1];
  if (next) focusNode(next);
  else render();
}
// Take a node and everything below it out of the tree.
function removeNode(node) {
  const gone = new Set();
  const walk = (id) => { gone.add(id); state.tree.nodes[id].children.forEach(walk); };
  walk(node.id);
  if (node.parent) {
    const parent = state.tree.nodes[node.parent];
    parent.children = parent.children.filter((c) => c !== node.id);
  } else {
    state.tree.roots = state.tree.roots.filter((r) => r !== node.id);
  }
  for (const id of gone) delete state.tree.nodes[id];
  for (const [model, id] of Object.entries(state.shown)) if (gone.has(id)) delete state.shown[model];
  return gone;
}
// A generation that failed or was cancelled leaves nothing behind; the focus goes back where it was.
function dropLive(node, focusBefore) {
  if (!node || !state.tree.nodes[node.id]) return;
  const gone = removeNode(node);
  if (gone.has(state.focus)) {
    state.focus = null;
    if (focusBefore && state.tree.nodes[focusBefore]) { focusNode(focusBefore); return; }
    const last = state.tree.roots[state.tree.roots.length - 1];
    if (last) { focusNode(last); return; }
  }
  render();
}

function exportTree() {
  const blob = new Blob([JSON.stringify({ format: "modescope-playground-tree", ...state.tree }, null, 1)],
    { type: "application/json" });
  const link = el("a");
  link.href = URL.createObjectURL(blob);
  link.download = "modescope-tree.json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
// An imported file is untrusted: check its shape before it replaces the tree (it is only ever shown as text).
function validTree(data) {
  if (!data || data.format !== "modescope-playground-tree" || data.version !== TREE_VERSION) return "not a tree exported by this playground";
  if (typeof data.nodes !== "object" || !Array.isArray(data.roots)) return "the file has no nodes";
  const ids = Object.keys(data.nodes);
  const cap = state.limits.max_branch_nodes || 2000;
  if (ids.length > cap) return ids.length + " nodes is more than the cap of " + cap + " (max_branch_nodes)";
  for (const id of ids) {
    const n = data.nodes[id];
    if (!n || n.id !== id || !Array.isArray(n.children) || !["run", "branch"].includes(n.kind)) return "node " + id + " is malformed";
    if (n.children.some((c) => !data.nodes[c])) return "node " + id + " lists a missing child";
    if (n.kind === "branch" && (!Array.isArray(n.prefix) || !Array.isArray(n.completions))) return "node " + id + " has no tokens";
    if (n.kind === "run" && (!n.prompt || typeof n.prompt.text !== "string")) return "run " + id + " has no prompt";
  }
  if (data.roots.some((r) => !data.nodes[r])) return "a root is missing";
  return null;
}
async function importTree(file) {
  let data;
  try {
    data = JSON.parse(await file.text());
  } catch (error) {
    status("import failed: the file is not JSON", true);
    return;
  }
  const problem = validTree(data);
  if (problem) { status("import failed: " + problem, true); return; }
  // a branch exported while it was decoding comes back as it was then, finished
  for (const n of Object.values(data.nodes)) delete n.live;
  state.tree = { version: TREE_VERSION, next: data.next, nodes: data.nodes, roots: data.roots };
  state.shown = {};
  state.focus = null;
  status("imported " + nodeCount() + " nodes");
  if (data.roots.length) focusNode(data.roots[data.roots.length - 1]);
  else render();
}

// ---- columns: one per model, the selected completion token by token and its alternates ----
function tokenSpan(t, nodeId, pos) {
  const span = el("span", "tok", shown(tokenLabel(t)));
  span.dataset.id = String(t.id);
  if (t.special) span.classList.add("special");
  if (t.edited) span.classList.add("edited");
  else if (typeof t.raw_logprob === "number") span.style.background = colour(Math.exp(t.raw_logprob));
  if (nodeId) {
    span.dataset.node = nodeId;
    span.dataset.pos = String(pos);
  }
  if (state.picked && state.picked.nodeId === nodeId && state.picked.pos === pos) span.classList.add("picked");
  return span;
}
function renderColumns() {
  const box = $("columns");
  const focus = state.tree.nodes[state.focus];
  if (!focus) {
    box.replaceChildren(el("p", "empty", "Type a prompt, choose one or two models, and generate."));
    box.style.setProperty("--columns", "1");
    return;
  }
  const run = runOf(focus);
  const columns = run.children.map((id) => state.tree.nodes[id].model);
  box.style.setProperty("--columns", String(columns.length));
  box.replaceChildren();
  for (const model of columns) {
    const node = state.tree.nodes[state.shown[model]];
    const column = el("section", "column");
    column.dataset.model = model;
    if (node.live) column.classList.add("live");
    const title = el("h2", "", model);
    const depth = node.at !== undefined ? " · branched at token " + node.at : "";
    title.appendChild(el("span", "faint", (node.label || "") + depth));
    column.appendChild(title);
    if (typeof node.sentPrompt === "string") column.append(...remedyParts(run, node));
    const main = el("div", "main text");
    main.appendChild(el("span", "prompt-part", shown(run.prompt.text)));
    tokensOf(node).forEach((t, i) => main.appendChild(tokenSpan(t, node.id, i)));
    column.appendChild(main);
    const completion = node.completions[node.selected];
    if (completion && node.live && !completion.finish_reason) {
      column.appendChild(el("div", "finish", "decoding… · " + completion.tokens.length + " tokens"));
    } else if (completion) {
      const p = completion.tokens.reduce((s, t) => s + (t.raw_logprob || 0), 0);
      column.appendChild(el("div", "finish", "ends by " + completion.finish_reason + " · " + completion.tokens.length +
        " tokens · log p = " + p.toFixed(2) + " nats"));
      if (completion.verbalized) column.appendChild(verbalizedBox(completion.verbalized));
    }
    if (node.completions.length > 1) {
      const alternates = el("div", "alternates");
      alternates.appendChild(el("span", "head", node.completions.length + " completions of this branch (click to show)"));
      const ol = el("ol");
      node.completions.forEach((c, k) => {
        const li = el("li", k === node.selected ? "selected" : "");
        li.dataset.index = String(k);
        const text = el("div", "text");
        c.tokens.forEach((t) => text.appendChild(tokenSpan(t, null, 0)));
        li.appendChild(text);
        li.addEventListener("click", () => { node.selected = k; closePopup(); render(); });
        ol.appendChild(li);
      });
      alternates.appendChild(ol);
      column.appendChild(alternates);
    }
    box.appendChild(column);
  }
  $("mv-prefix").textContent = prefixText(focus) || "(the prompt)";
}
// What a remedy did to a column: its label, and the prompt the model actually saw (a disclosure).
function remedyParts(run, node) {
  const remedy = run.settings && run.settings.remedy;
  const tag = el("div", "remedy-tag", "remedy: " + remedyLabel(remedy));
  if (node.sampledFrom) tag.title = "sampled from " + node.sampledFrom;
  const sent = el("details", "sent-prompt");
  sent.open = state.sentOpen;
  sent.appendChild(el("summary", "", "sent prompt (" + node.sentPrompt.length + " characters)"));
  sent.appendChild(el("div", "text", shown(node.sentPrompt)));
  sent.addEventListener("toggle", () => { state.sentOpen = sent.open; });
  return [tag, sent];
}
// A verbalized completion read: each response with the probability the model stated, and what was not read.
function verbalizedBox(v) {
  const responses = Array.isArray(v.responses) ? v.responses : [];
  const box = el("div", "verbalized");
  const problem = v.problem ? " · " + v.problem : "";
  box.appendChild(el("div", "head", responses.length + " parsed response" + (responses.length === 1 ? "" : "s") +
    " · " + (Number(v.unparsed) || 0) + " unparsed" + problem));
  const list = el("ol");
  for (const r of responses) {
    const li = el("li", r.duplicate ? "duplicate" : "");
    const stated = typeof r.stated === "number" && isFinite(r.stated) ? r.stated.toFixed(2) : "—";
    li.append(el("span", "stated", "p " + stated), el("span", "rtext", String(r.text)));
    if (r.duplicate) li.title = "given more than once";
    list.appendChild(li);
  }
  box.appendChild(list);
  return box;
}
function render() {
  renderTree();
  renderColumns();
}

// ---- generating and branching ----
async function generateRun() {
  const models = chosenModels();
  if (!models.length) { status("choose at least one model", true); return; }
  if (!$("prompt").value) { status("type a prompt first", true); return; }
  if (!room(1 + models.length)) return;
  const body = { models, prompt: promptSpec(), n: num("n", 1), max_tokens: num("max_tokens", 32),
    sampler: samplerSpec(), seed: seedValue(), top_k: 10 };
  const remedy = remedySpec();
  if (remedy) body.remedy = remedy;
  const focusBefore = state.focus;
  let run = null;
  const branches = {};  // model -> its branch node, filled as the tokens arrive
  const onEvent = (kind, data) => {
    if (kind === "queued") {
      status(data.ahead ? "generating… (" + data.ahead + " requests ahead)" : "generating…");
      if (run) return;
      // the stream is open (a refused request never gets here): the run and its columns appear now
      run = addNode({ kind: "run", parent: null, prompt: body.prompt, settings: body, models });
      for (const model of models) {
        branches[model] = addNode({ kind: "branch", parent: run.id, model, prefix: [], completions: liveCompletions(body.n),
          selected: 0, live: true });
        state.shown[model] = branches[model].id;
      }
      focusNode(branches[models[0]].id);
    } else if (kind === "progress" && branches[data.model]) {
      addTokens(branches[data.model], data.tokens);
    }
  };
  const result = await live("generating", (signal) => stream("/api/generate/stream", body, onEvent, signal));
  if (!result) { dropLive(run, focusBefore); return; }
  for (const r of result.results) {
    Object.assign(branches[r.model], { completions: r.completions, ...remedied(r) });
    delete branches[r.model].live;
  }
  render();
}
// The n completions of a branch being decoded, filled by `addTokens`.
function liveCompletions(n) {
  return Array.from({ length: n }, () => ({ text: "", tokens: [], finish_reason: null }));
}
// One step's tokens of a streamed generation: each goes to its completion, coloured like any other.
function addTokens(node, tokens) {
  for (const t of tokens) {
    const completion = node.completions[t.completion];
    if (!completion) continue;
    const { completion: _, finish_reason, ...record } = t;
    completion.tokens.push(record);
    if (!record.special) completion.text += record.text;
    if (finish_reason) completion.finish_reason = finish_reason;
  }
  renderSoon();
}

// What the server says a remedy did to one model's result (nothing without a remedy).
function remedied(result) {
  return typeof result.sent_prompt === "string" ? { sentPrompt: result.sent_prompt, sampledFrom: result.sampled_from } : {};
}
// Branch at position `pos` of a node's shown tokens: keep the tokens before it, then either a chosen
// alternative token or typed text (both shown as edited), and regenerate from there.
async function branch(node, pos, replacement, mode) {
  if (!room(1)) return;
  const run = runOf(node);
  const kept = tokensOf(node).slice(0, pos).map((t) => ({ ...t }));
  const ids = kept.map((t) => t.id);
  let edit = "";
  const edited = [];
  if (replacement.token) {
    ids.push(replacement.token.id);
    edited.push({ id: replacement.token.id, text: replacement.token.text, raw_logprob: replacement.token.logprob,
      special: !!replacement.token.special, edited: true });
  } else if (replacement.text !== undefined) {
    edit = replacement.text;
  }
  await regenerate(node, run, kept, ids, edit, edited, mode, "branch at " + pos);
}
async function regenerate(parent, run, kept, ids, edit, edited, mode, label) {
  const sampled = mode === "sampled";
  const body = { model: parent.model, prompt: run.prompt, prefix_ids: ids, edit,
    n: sampled ? num("n", 1) : 1, max_tokens: num("max_tokens", 32),
    sampler: sampled ? samplerSpec() : { temperature: 0 }, seed: seedValue(), top_k: 10 };
  // a branch of a remedied run continues the same remedied prompt and model
  if (run.settings && run.settings.remedy) body.remedy = run.settings.remedy;
  const focusBefore = state.focus;
  let node = null;
  const onEvent = (kind, data) => {
    if (kind === "queued" && !node) {
      // until the answer names the edit's tokens, the typed text stands in for them
      const typed = edit ? [{ id: -1, text: edit, edited: true }] : [];
      node = addNode({ kind: "branch", parent: parent.id, model: parent.model, prefix: kept.concat(edited, typed),
        completions: liveCompletions(body.n), selected: 0, mode: sampled ? "sampled" : "greedy", live: true });
      node.auto = label;
      node.at = kept.length;
      state.shown[node.model] = node.id;
      focusNode(node.id);
    } else if (kind === "progress" && node) {
      addTokens(node, data.tokens);
    }
  };
  const result = await live("regenerating", (signal) => stream("/api/regenerate/stream", body, onEvent, signal));
  if (!result) { dropLive(node, focusBefore); return; }
  for (const t of result.edit_tokens) edited.push({ id: t.id, text: t.text, edited: true });
  Object.assign(node, { prefix: kept.concat(edited), completions: result.completions, ...remedied(result) });
  delete node.live;
  render();
}
// Expand: continue the focused branch's shown text by another max tokens.
async function expandFocused() {
  const node = state.tree.nodes[state.focus];
  if (!node || node.kind !== "branch") { status("select a branch to expand", true); return; }
  if (!room(1)) return;
  const tokens = tokensOf(node);
  const kept = tokens.filter((t) => !t.special).map((t) => ({ ...t }));
  await regenerate(node, runOf(node), kept, kept.map((t) => t.id), "", [], currentMode(), "expand");
}
function currentMode() {
  const checked = document.querySelector("input[name=branch-mode]:checked");
  return checked ? checked.value : "greedy";
}

// ---- the token popup ----
function openPopup(span) {
  const node = state.tree.nodes[span.dataset.node];
  const pos = Number(span.dataset.pos);
  const t = tokensOf(node)[pos];
  state.picked = { nodeId: node.id, pos };
  for (const s of document.querySelectorAll(".tok.picked")) s.classList.remove("picked");
  span.classList.add("picked");
  $("popup-title").textContent = "token " + pos + ": " + JSON.stringify(tokenLabel(t));
  const p = prob(t.raw_logprob);
  $("popup-stats").textContent = t.edited ? "edited token" :
    "p = " + pct(p) + (typeof t.logprob === "number" ? " (sampled from: " + pct(prob(t.logprob)) + ")" : "") +
    (typeof t.entropy_bits === "number" ? " · entropy " + t.entropy_bits.toFixed(2) + " bits" : "");
  $("popup-edit").value = "";
  showAlternatives(t.top || [], t.id);
  if (!t.top || !t.top.length) moreAlternatives();
  const popup = $("popup");
  popup.hidden = false;
  const r = span.getBoundingClientRect();
  const w = popup.offsetWidth, h = popup.offsetHeight;
  popup.style.left = Math.max(4, Math.min(window.innerWidth - w - 4, r.left)) + "px";
  popup.style.top = (r.bottom + h + 6 > window.innerHeight ? Math.max(4, r.top - h - 6) : r.bottom + 6) + "px";
}
function showAlternatives(top, currentId) {
  const list = $("popup-alts");
  list.replaceChildren();
  for (const a of top) {
    const li = el("li");
    const b = el("button", "alt" + (a.id === currentId ? " current" : ""));
    b.type = "button";
    b.dataset.id = String(a.id);
    const p = prob(a.logprob) || 0;
    const bar = el("span", "pbar");
    const fill = el("span");
    fill.style.width = Math.round(100 * p) + "%";
    fill.style.background = colour(p);
    bar.appendChild(fill);
    b.append(bar, el("span", "pv", pct(p)), el("span", "tx", JSON.stringify(tokenLabel(a))));
    b.title = a.id === currentId ? "the token shown" : "branch here with this token";
    b.addEventListener("click", () => {
      const { nodeId, pos } = state.picked;
      closePopup();
      branch(state.tree.nodes[nodeId], pos, { token: a }, currentMode());
    });
    li.appendChild(b);
    list.appendChild(li);
  }
}
async function moreAlternatives() {
  if (!state.picked) return;
  const node = state.tree.nodes[state.picked.nodeId];
  const pos = state.picked.pos;
  const tokens = tokensOf(node);
  const body = { model: node.model, prompt: runOf(node).prompt, prefix_ids: tokens.slice(0, pos).map((t) => t.id),
    top_k: Math.min(40, state.limits.max_top_k || 40) };
  const result = await guarded("loading alternatives", () => call("/api/next", body));
  if (result && state.picked && state.picked.nodeId === node.id && state.picked.pos === pos) {
    showAlternatives(result.top, tokens[pos].id);
  }
}
function closePopup() {
  $("popup").hidden = true;
  state.picked = null;
  for (const s of document.querySelectorAll(".tok.picked")) s.classList.remove("picked");
}

// ---- panels ----
function openPanel(name) {
  for (const b of document.querySelectorAll("#panel-tabs button")) b.classList.toggle("active", b.dataset.panel === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "panel-" + name;
}
function prefixText(node, upTo) {
  if (!node || node.kind !== "branch") return "";
  const tokens = upTo === undefined ? node.prefix : tokensOf(node).slice(0, upTo);
  return tokens.filter((t) => !t.special).map((t) => t.text).join("");
}
async function runMultiverse(node, upTo) {
  openPanel("multiverse");
  const focus = node || state.tree.nodes[state.focus];
  if (!focus) { status("generate first: the multiverse starts from the selected branch", true); return; }
  const run = runOf(focus);
  const prefix = prefixText(focus, upTo);
  $("mv-prefix").textContent = prefix || "(the prompt)";
  const body = { models: run.models, prompt: run.prompt, prefix, depth: num("mv-depth", 3),
    cutoff: num("mv-cutoff", 0.02), max_nodes: num("mv-nodes", 300) };
  // the branch's own token ids when it is one model's, so the tree starts exactly where the branch is
  if (focus.kind === "branch" && run.models.length === 1) {
    const tokens = upTo === undefined ? focus.prefix : tokensOf(focus).slice(0, upTo);
    body.prefix_paths = [tokens.map((t) => t.id)];
  }
  const progress = $("mv-progress");
  const result = await guarded("expanding the multiverse", () => stream("/api/multiverse", body, (kind, data) => {
    progress.textContent = kind === "queued" ? "queued (" + data.ahead + " ahead)" : data.expanded + " nodes expanded";
  }));
  if (!result) { progress.textContent = ""; return; }
  progress.textContent = result.size + " nodes" + (result.tree.truncated ? " (truncated at max nodes)" : "");
  // the page of modescope.viz.multiverse_html, unchanged, in a sandboxed frame (scripts only, no same origin)
  $("mv-frame").srcdoc = result.html;
}

async function runDistribution() {
  openPanel("distribution");
  const focus = state.tree.nodes[state.focus];
  const models = focus ? runOf(focus).models : chosenModels();
  const prompt = focus ? runOf(focus).prompt : promptSpec();
  const kind = document.querySelector("input[name=dist-kind]:checked").value;
  const body = { models, prompt };
  if (kind === "integers") body.integers = [num("dist-lo", 0), num("dist-hi", 10)];
  else body.choices = $("dist-choices").value.split("\n").map((s) => s.trim()).filter((s) => s);
  // a branch's prefix continues the prompt: the probe asks about the answer after it
  if (focus && focus.kind === "branch" && prefixText(focus) && !prompt.chat) body.prompt = { text: prompt.text + prefixText(focus) };
  const progress = $("dist-progress");
  const result = await guarded("running the probe", () => stream("/api/distribution", body, (k, data) => {
    progress.textContent = k === "queued" ? "queued" : data.model + ": " + data.done + " / " + data.total + " nodes";
  }));
  progress.textContent = "";
  if (result) drawDistribution(result);
}
function coverageUpper(r) {
  return r.outcomes.reduce((total, o) => total + (o.mass_upper ?? o.mass ?? 0), 0);
}
// each outcome's share of the set given every outcome's mass interval [mass, mass_upper]: smallest at its
// lower bound with the others at their upper bounds, largest the other way round (viz.distribution_plot)
function shareBounds(outcomes) {
  const lows = outcomes.map((o) => o.mass ?? 0);
  const highs = outcomes.map((o) => o.mass_upper ?? o.mass ?? 0);
  const low = lows.reduce((a, b) => a + b, 0);
  const high = highs.reduce((a, b) => a + b, 0);
  return lows.map((_, i) => [
    lows[i] > 0 ? Math.min(1, lows[i] / (lows[i] + high - highs[i])) : 0,
    highs[i] > 0 ? Math.min(1, highs[i] / (highs[i] + low - lows[i])) : 0,
  ]);
}
function drawDistribution(result) {
  const box = $("dist-chart");
  box.replaceChildren();
  result.results.forEach((r, m) => {
    const section = el("div", "dist-model model-" + (m % 2));
    section.dataset.model = r.model;
    const heading = el("h3", "", r.model);
    // a model behind a top-k server: masses are [mass, mass_upper] bounds, the numbers within the set come
    // from the lower bounds, and each bar carries the interval its share of the set can take
    const bounded = typeof r.bounds === "string" && r.bounds !== "";
    const shares = bounded ? shareBounds(r.outcomes) : null;
    if (bounded) {
      const tag = el("span", "bounds-tag", r.bounds);
      tag.title = "masses are [lower, upper] bounds; entropy and top share come from the lower bounds";
      heading.appendChild(tag);
      section.dataset.bounds = r.bounds;
    }
    section.appendChild(heading);
    const coverage = bounded ? "coverage [" + pct(r.coverage) + ", " + pct(coverageUpper(r)) + "]" : "coverage " + pct(r.coverage);
    section.appendChild(el("div", "faint", coverage + " · entropy " + (r.entropy_bits ?? 0).toFixed(2) +
      " bits · top: " + JSON.stringify(r.top1) + " " + pct(r.top1_share) + (bounded ? " (from the lower bounds; " : " (") +
      "bars: probability within the set)"));
    const bars = el("div", "bars");
    const labels = el("div", "bar-labels");
    const peak = Math.max(...r.outcomes.map((o) => o.prob || 0), ...(shares ? shares.map((s) => s[1]) : []), 1e-12);
    r.outcomes.forEach((o, i) => {
      const bar = el("div", "bar");
      bar.style.height = (100 * (o.prob || 0) / peak).toFixed(2) + "%";
      bar.title = o.text + ": " + pct(o.prob) + " of the set (absolute " + pct(o.mass) + ")";
      if (shares) {
        const [lo, hi] = shares[i];
        bar.title = o.text + ": absolute mass [" + pct(o.mass) + ", " + pct(o.mass_upper ?? o.mass) + "], " +
          "within the set [" + pct(lo) + ", " + pct(hi) + "] (" + r.bounds + ")";
        const range = el("div", "bar-range");  // the interval of the share, on the bars' scale
        // in units of the bars' height (the bar itself may be 0 tall): the bar's bottom is the axis
        range.style.bottom = "calc(var(--bars-height) * " + (lo / peak).toFixed(5) + ")";
        range.style.height = "calc(var(--bars-height) * " + ((hi - lo) / peak).toFixed(5) + ")";
        bar.appendChild(range);
      }
      bar.dataset.text = o.text;
      bars.appendChild(bar);
      labels.appendChild(el("span", "", r.outcomes.length <= 40 ? o.text : ""));
    });
    section.append(bars, labels);
    box.appendChild(section);
  });
  const boundedModels = new Set(result.results.filter((r) => typeof r.bounds === "string" && r.bounds !== "").map((r) => r.model));
  const fromBounds = (c) => boundedModels.has(c.a) || boundedModels.has(c.b);
  for (const c of result.comparisons) {
    box.appendChild(el("div", "dist-compare", c.a + " vs " + c.b + ": JS " + (c.js_bits ?? 0).toFixed(3) + " bits · TV " +
      (c.tv ?? 0).toFixed(3) + " · KL " + (c.kl_ab_bits ?? NaN).toFixed(2) + " / " + (c.kl_ba_bits ?? NaN).toFixed(2) +
      " bits · Spearman " + (c.spearman === null ? "—" : c.spearman.toFixed(2)) + (fromBounds(c) ? " (from the lower bounds)" : "")));
  }
}

async function runAttractor() {
  openPanel("attractor");
  const focus = state.tree.nodes[state.focus];
  const run = focus ? runOf(focus) : null;
  const body = { models: run ? run.models : chosenModels(), prompt: run ? run.prompt : promptSpec(),
    swap_positions: num("att-swaps", 3), alternatives: num("att-alts", 2), max_tokens: num("att-tokens", 24) };
  const progress = $("att-progress");
  const result = await guarded("running the attractor experiment", () => stream("/api/attractor", body, (k, data) => {
    progress.textContent = k === "queued" ? "queued" : "model " + (data.done + 1) + " of " + data.total;
  }));
  progress.textContent = "";
  if (!result) return;
  const box = $("att-result");
  box.replaceChildren();
  for (const r of result.results) {
    box.appendChild(el("h3", "", r.model + ": basin share " + pct(r.basin_share) + ", ending converged " +
      pct(r.ending_share) + ", median distance " + (r.median_distance_tokens ?? "—") + " tokens"));
    const main = el("div", "text");
    r.mainline_tokens.forEach((t) => main.appendChild(tokenSpan(t, null, 0)));
    box.appendChild(main);
    const table = el("table", "att");
    const head = el("tr");
    for (const h of ["perturbation", "continuation (greedy)", "rejoins after"]) head.appendChild(el("th", "", h));
    table.appendChild(head);
    for (const run of r.runs) {
      const tr = el("tr");
      tr.appendChild(el("td", "", run.label));
      const td = el("td", "mono");
      td.append(el("span", "inserted", run.inserted), el("span", "", run.continuation));
      tr.appendChild(td);
      tr.appendChild(el("td", "", run.reconvergence_tokens === null ? "never" : run.reconvergence_tokens + " tokens"));
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
}

// ---- wiring ----
function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}
function toggleHelp(show) { $("help").hidden = !(show === undefined ? $("help").hidden : show); }
function startRename() {
  const node = state.tree.nodes[state.focus];
  if (!node) return;
  $("rename-box").hidden = false;
  $("rename-input").value = node.label || defaultLabel(node);
  $("rename-input").focus();
  $("rename-input").select();
}
function finishRename() {
  const node = state.tree.nodes[state.focus];
  if (node) node.label = $("rename-input").value.trim();
  $("rename-box").hidden = true;
  render();
}
function toggleBookmark() {
  const node = state.tree.nodes[state.focus];
  if (node) { node.bookmarked = !node.bookmarked; render(); }
}

function wire() {
  $("generate").addEventListener("click", generateRun);
  $("chat").addEventListener("change", () => { $("system").hidden = !$("chat").checked; });
  for (const id of ["remedy-strategy", "remedy-guide", "remedy-mix", "remedy-k"]) $(id).addEventListener("change", syncRemedy);
  $("remedy-alpha-range").addEventListener("input", () => { $("remedy-alpha").value = $("remedy-alpha-range").value; syncRemedy(); });
  $("remedy-alpha").addEventListener("input", () => { $("remedy-alpha-range").value = $("remedy-alpha").value; syncRemedy(); });
  $("help-button").addEventListener("click", () => toggleHelp(true));
  $("help-close").addEventListener("click", () => toggleHelp(false));
  $("help").addEventListener("click", (ev) => { if (ev.target === $("help")) toggleHelp(false); });
  $("rename").addEventListener("click", startRename);
  $("rename-ok").addEventListener("click", finishRename);
  $("rename-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") finishRename();
    else if (ev.key === "Escape") { $("rename-box").hidden = true; }
  });
  $("bookmark").addEventListener("click", toggleBookmark);
  $("delete").addEventListener("click", deleteFocused);
  $("export").addEventListener("click", exportTree);
  $("import").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (file) importTree(file);
    ev.target.value = "";
  });
  $("columns").addEventListener("click", (ev) => {
    const span = ev.target.closest(".main .tok");
    const node = span && state.tree.nodes[span.dataset.node];
    if (node && !node.live) { ev.stopPropagation(); openPopup(span); }  // a branch still decoding has no popup yet
  });
  $("cancel").addEventListener("click", cancelLive);
  window.addEventListener("pagehide", cancelLive);
  $("popup-close").addEventListener("click", closePopup);
  $("popup-more").addEventListener("click", moreAlternatives);
  const branchOnEdit = () => {
    if (!state.picked) return;
    const text = $("popup-edit").value;
    if (!text) { status("type the replacement text first", true); return; }
    const { nodeId, pos } = state.picked;
    closePopup();
    branch(state.tree.nodes[nodeId], pos, { text }, currentMode());
  };
  $("popup-branch").addEventListener("click", branchOnEdit);
  $("popup-edit").addEventListener("keydown", (ev) => { if (ev.key === "Enter") branchOnEdit(); });
  $("popup-multiverse").addEventListener("click", () => {
    const { nodeId, pos } = state.picked;
    closePopup();
    runMultiverse(state.tree.nodes[nodeId], pos);
  });
  document.addEventListener("click", (ev) => {
    if (!$("popup").hidden && !ev.target.closest("#popup") && !ev.target.closest(".tok")) closePopup();
  });
  for (const b of document.querySelectorAll("#panel-tabs button")) b.addEventListener("click", () => openPanel(b.dataset.panel));
  $("mv-run").addEventListener("click", () => runMultiverse());
  $("dist-run").addEventListener("click", runDistribution);
  $("att-run").addEventListener("click", runAttractor);
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); generateRun(); return; }
    if (ev.key === "Escape" && state.live.size && $("popup").hidden && $("help").hidden && !typing(ev.target)) {
      cancelLive();
      return;
    }
    if (ev.key === "Escape") { closePopup(); toggleHelp(false); return; }
    if (typing(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const keys = {
      j: () => moveFocus(1), ArrowDown: () => moveFocus(1), k: () => moveFocus(-1), ArrowUp: () => moveFocus(-1),
      e: expandFocused, m: () => runMultiverse(), d: () => openPanel("distribution"), b: toggleBookmark,
      r: startRename, "?": () => toggleHelp(),
    };
    const action = keys[ev.key];
    if (action) { ev.preventDefault(); action(); }
  });
}

async function start() {
  wire();
  openPanel("multiverse");
  const config = await guarded("loading the models", () => call("/api/models"));
  if (config) {
    state.models = config.models;
    state.limits = config.limits;
    const a = $("model-a"), b = $("model-b");
    b.appendChild(el("option", "", "(none)")).value = "";
    for (const m of config.models) {
      a.appendChild(el("option", "", m.name)).value = m.name;
      b.appendChild(el("option", "", m.name)).value = m.name;
    }
    const pre = config.models.filter((m) => m.preselected).map((m) => m.name);
    if (pre[0]) a.value = pre[0];
    b.value = pre[1] || "";
    fillRemedy(config);
    $("n").max = String(config.limits.max_n);
    $("max_tokens").max = String(config.limits.max_tokens);
  }
  render();
  window.playgroundReady = true;
}
start();
})();
