// poold's web console. Everything that comes from the server (what a module
// printed, artifact names, errors, ids) is put on the page with textContent,
// never as HTML. The token lives in sessionStorage and travels only in the
// Authorization header (see api.js).

import { ApiError, call, clearToken, events, lines, setToken, token } from "./api.js";
import { PoolChart } from "./chart.js";

const STATES = ["queued", "assigned", "running", "succeeded", "failed", "timed_out",
  "cancelled", "error"];
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "error"]);
const MAX_CONSOLE_LINES = 20000;
const POLL_MS = 1000;

const $ = (id) => document.getElementById(id);

// -- small DOM helpers ---------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) {
    node.textContent = String(text);
  }
  if (className) {
    node.className = className;
  }
  return node;
}

function short(hash) {
  return typeof hash === "string" ? hash.slice(0, 12) : "";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function ms(value) {
  return typeof value === "number" ? value.toFixed(value < 10 ? 1 : 0) : "–";
}

function bytes(n) {
  if (typeof n !== "number") {
    return "–";
  }
  if (n < 1024) {
    return `${n} B`;
  }
  if (n < 1024 * 1024) {
    return `${(n / 1024).toFixed(1)} KiB`;
  }
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function stateClass(state) {
  return STATES.includes(state) ? `state state-${state}` : "state";
}

// -- errors ----------------------------------------------------------------------

// The poller whose failure is shown ("pool", "jobs"), or null: only that poller's
// next good answer clears it. Another poller answering says nothing about the
// request that failed, and clearing on it made the report flicker away within
// a second while the pool was still unreachable.
let pollError = null;

function showError(message, { fromPoll = null } = {}) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  pollError = fromPoll;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
  pollError = null;
}

function polled(poller) {
  if (pollError === poller) {
    clearError();
  }
}

// An API failure: a rejected token signs out; anything else is shown.
function failed(e, { fromPoll = null } = {}) {
  if (e.name === "AbortError") {
    return;
  }
  if (e instanceof ApiError && e.status === 401) {
    signOut();
  }
  showError(e.message, { fromPoll });
}

// -- sign in -----------------------------------------------------------------------

async function signIn(value) {
  setToken(value);
  try {
    await call("GET", "/v1/jobs?limit=1");
  } catch (e) {
    clearToken();
    if (e instanceof ApiError && e.status === 401) {
      showError(`That token was not accepted: ${e.message}`);
    } else {
      showError(e.message);
    }
    return;
  }
  clearError();
  $("token").value = "";
  start();
}

function signOut() {
  sessionStorage.clear(); // the token and the inputs kept for "run again"
  stop();
  $("app").hidden = true;
  $("signin").hidden = false;
  $("sign-out").hidden = true;
  $("signed-in").hidden = true;
}

// -- polling -------------------------------------------------------------------

const timers = [];
let chart = null;

// Calls fn every ms while the tab is visible, never twice at once (a slow
// server gets one request at a time from each poller, not a pile-up).
function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden || !token()) {
      return;
    }
    busy = true;
    try {
      await fn();
    } finally {
      busy = false;
    }
  };
  tick();
  timers.push(setInterval(tick, ms));
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("signed-in").hidden = false;
  chart = chart ?? new PoolChart($("pool-chart"));
  every(POLL_MS, refreshPool);
  every(POLL_MS, refreshJobs);
  refreshModules();
  route();
}

function stop() {
  while (timers.length) {
    clearInterval(timers.pop());
  }
  closeJob();
}

// -- pool ----------------------------------------------------------------------

async function refreshPool() {
  let figures;
  try {
    figures = await call("GET", "/v1/pool");
  } catch (e) {
    failed(e, { fromPoll: "pool" });
    return;
  }
  polled("pool");
  for (const key of ["idle", "busy", "starting", "target", "max", "hot", "deleting"]) {
    $(`pool-${key}`).textContent = String(figures[key] ?? "–");
  }
  chart.add({
    idle: figures.idle ?? 0, busy: figures.busy ?? 0, starting: figures.starting ?? 0,
    target: figures.target ?? 0, max: figures.max ?? 0,
  });
}

// -- jobs list -----------------------------------------------------------------

let lastJobs = [];

async function refreshJobs() {
  try {
    lastJobs = (await call("GET", "/v1/jobs?limit=100")).jobs;
  } catch (e) {
    failed(e, { fromPoll: "jobs" });
    return;
  }
  polled("jobs");
  renderJobs();
}

function renderJobs() {
  const wanted = $("state-filter").value;
  const rows = [];
  for (const job of lastJobs) {
    if (wanted && job.state !== wanted) {
      continue;
    }
    const row = el("tr");
    row.dataset.jobId = job.id;
    row.tabIndex = 0;
    row.append(el("td", short(job.id.replace(/^j-/, "")), "mono"));
    const state = el("td");
    // a queued job waiting for its runtime: the reason beside the state, the sentence on hover
    const shown = job.waiting ? `${job.state} (${job.waiting.reason})` : job.state;
    const badge = el("span", shown, stateClass(job.state));
    if (job.waiting) {
      badge.title = job.waiting.message;
    }
    state.append(badge);
    row.append(state, el("td", short(job.module), "mono"), el("td", ms(job.wait_ms), "num"),
      el("td", ms(job.run_ms), "num"), el("td", when(job.started_at)));
    if (current && current.id === job.id) {
      row.classList.add("selected");
    }
    rows.push(row);
  }
  $("jobs-list").replaceChildren(...rows);
}

function openFromRow(event) {
  const row = event.target.closest("tr[data-job-id]");
  if (row) {
    location.hash = `#/job/${encodeURIComponent(row.dataset.jobId)}`;
  }
}

// -- modules -------------------------------------------------------------------

async function refreshModules(select) {
  let modules;
  try {
    modules = (await call("GET", "/v1/modules")).modules;
  } catch (e) {
    failed(e);
    return;
  }
  const picker = $("module-select");
  const chosen = select ?? picker.value;
  const options = [picker.options[0]];
  const rows = [];
  for (const m of modules) {
    const option = el("option", `${short(m.sha256)}… (${bytes(m.size)})`);
    option.value = m.sha256;
    options.push(option);
    const row = el("tr");
    const use = el("button", "Use", "small");
    use.type = "button";
    use.addEventListener("click", () => {
      picker.value = m.sha256;
    });
    const hash = el("td", short(m.sha256), "mono");
    hash.title = m.sha256;
    const action = el("td");
    action.append(use);
    row.append(hash, el("td", bytes(m.size), "num"), el("td", when(m.uploaded_at)),
      el("td", when(m.last_used_at)), action);
    rows.push(row);
  }
  picker.replaceChildren(...options);
  picker.value = chosen;
  $("modules-list").replaceChildren(...rows);
}

async function upload(file) {
  if (!file) {
    return;
  }
  const status = $("upload-status");
  status.textContent = `uploading ${file.name} (${bytes(file.size)})…`;
  try {
    const stored = await call("PUT", "/v1/modules", {
      body: file, headers: { "Content-Type": "application/wasm" },
    });
    status.textContent = `${file.name}: stored as ${stored.sha256}`;
    clearError();
    await refreshModules(stored.sha256);
  } catch (e) {
    status.textContent = `${file.name} was refused`;
    failed(e);
  }
}

// -- submit ----------------------------------------------------------------------

function nonEmptyLines(text) {
  return text.split("\n").map((l) => l.replace(/\r$/, "")).filter((l) => l !== "");
}

function records(text) {
  const all = text.split("\n").map((l) => l.replace(/\r$/, ""));
  if (all.length && all[all.length - 1] === "") {
    all.pop();
  }
  return all;
}

async function readForm() {
  const env = {};
  for (const line of nonEmptyLines($("env").value)) {
    const cut = line.indexOf("=");
    if (cut <= 0) {
      throw new Error(`environment line "${line}" is not KEY=VALUE`);
    }
    env[line.slice(0, cut)] = line.slice(cut + 1);
  }
  const file = $("input-file").files[0];
  const input = file ? records(await file.text()) : records($("input-text").value);
  const limits = {};
  const timeout = $("limit-timeout").value;
  const memory = $("limit-memory").value;
  const fuel = $("limit-fuel").value;
  if (timeout !== "") {
    limits.timeout_s = Number(timeout);
  }
  if (memory !== "") {
    limits.memory_mb = Number(memory);
  }
  if (fuel !== "") {
    limits.fuel = Number(fuel);
  }
  return { module: $("module-select").value, args: nonEmptyLines($("args").value), env, input,
    limits };
}

// Inputs of jobs submitted from this tab, so "run again" can send them again
// (the API does not hand a job's input back). Kept in sessionStorage so a
// reload keeps them; an input too large for the tab's quota is not kept.
const INPUT_KEY = "poold.input.";

function keepInput(jobId, input) {
  try {
    sessionStorage.setItem(INPUT_KEY + jobId, JSON.stringify(input));
  } catch {
    // over the storage quota: "run again" will ask for the input instead
  }
}

function keptInput(jobId) {
  const kept = sessionStorage.getItem(INPUT_KEY + jobId);
  return kept === null ? undefined : JSON.parse(kept);
}

async function submit(request) {
  try {
    const job = await call("POST", "/v1/jobs", { body: request });
    keepInput(job.id, request.input);
    clearError();
    location.hash = `#/job/${encodeURIComponent(job.id)}`;
    refreshJobs();
  } catch (e) {
    failed(e);
  }
}

async function submitForm(event) {
  event.preventDefault();
  let request;
  try {
    request = await readForm();
  } catch (e) {
    showError(e.message);
    return;
  }
  if (!request.module) {
    showError("choose a module first: upload a .wasm file or pick one of your modules");
    return;
  }
  await submit(request);
}

// -- job view ----------------------------------------------------------------------

let current = null; // {id, abort, record}

function route() {
  const match = /^#\/job\/(.+)$/.exec(location.hash);
  if (match) {
    openJob(decodeURIComponent(match[1]));
  } else {
    closeJob();
  }
}

function closeJob() {
  if (current) {
    current.abort.abort();
    current = null;
  }
  $("job").hidden = true;
}

function openJob(id) {
  if (current && current.id === id) {
    return;
  }
  closeJob();
  current = { id, abort: new AbortController(), record: null };
  $("job").hidden = false;
  $("job-id").textContent = id;
  $("job-state").textContent = "…";
  $("job-state").className = "state";
  $("job-output").replaceChildren();
  $("job-log").replaceChildren();
  $("job-artifacts").replaceChildren();
  $("job-fields").replaceChildren();
  $("job-error").hidden = true;
  $("job-waiting").hidden = true;
  $("cancel-job").hidden = true;
  $("output-follow").textContent = "";
  const view = current;
  watchRecord(view);
  streamOutput(view);
  streamLog(view);
  renderJobs();
}

function showRecord(view, job) {
  if (current !== view) {
    return;
  }
  view.record = job;
  $("job-state").textContent = job.state;
  $("job-state").className = stateClass(job.state);
  $("cancel-job").hidden = TERMINAL.has(job.state);
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error ?? "";
  $("job-waiting").hidden = !job.waiting;
  $("job-waiting").textContent = job.waiting?.message ?? "";
  const fields = [
    ["module", job.module], ["args", JSON.stringify(job.args)],
    ["env", JSON.stringify(job.env)], ["limits", JSON.stringify(job.limits)],
    ["exit code", job.exit_code], ["worker", job.pod], ["partition", job.partition],
    ["warm", job.warm], ["start", job.start], ["submitted", job.submitted_at], ["started", job.started_at],
    ["finished", job.finished_at], ["wait ms", ms(job.wait_ms)], ["run ms", ms(job.run_ms)],
  ];
  // what the job consumed (set once it ended; null values were not measured)
  for (const [key, value] of Object.entries(job.usage ?? {})) {
    let shown = value;
    if (typeof value === "number" && key.endsWith("_bytes")) {
      shown = bytes(value);
    } else if (typeof value === "number" && key.endsWith("_ms")) {
      shown = ms(value);
    }
    fields.push([key.replace(/_/g, " "), shown]);
  }
  const nodes = [];
  for (const [name, value] of fields) {
    const row = el("div");
    row.append(el("dt", name), el("dd", value ?? "–"));
    nodes.push(row);
  }
  $("job-fields").replaceChildren(...nodes);
}

async function watchRecord(view) {
  const signal = view.abort.signal;
  while (!signal.aborted) {
    let job;
    try {
      job = await call("GET", `/v1/jobs/${encodeURIComponent(view.id)}`, { signal });
    } catch (e) {
      failed(e);
      return;
    }
    showRecord(view, job);
    if (TERMINAL.has(job.state)) {
      await showArtifacts(view);
      return;
    }
    await new Promise((resolve) => {
      setTimeout(resolve, POLL_MS);
    });
  }
}

// Appends text to a console <pre>, keeping it scrolled to the end only while
// the reader is at the end: scrolling up stops the auto-scroll, scrolling back
// down resumes it.
function append(pre, text) {
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(document.createTextNode(text));
  while (pre.childNodes.length > MAX_CONSOLE_LINES) {
    pre.firstChild.remove();
  }
  if (atEnd) {
    pre.scrollTop = pre.scrollHeight;
  }
}

async function streamOutput(view) {
  const signal = view.abort.signal;
  const path = `/v1/jobs/${encodeURIComponent(view.id)}/output?follow=true`;
  try {
    $("output-follow").textContent = "— following";
    const response = await call("GET", path, { signal, raw: true });
    for await (const line of lines(response)) {
      if (current !== view) {
        return;
      }
      append($("job-output"), `${line}\n`);
    }
    if (current === view) {
      $("output-follow").textContent = "— complete";
    }
  } catch (e) {
    if (current === view) {
      $("output-follow").textContent = "";
    }
    failed(e);
  }
}

async function streamLog(view) {
  const signal = view.abort.signal;
  const path = `/v1/jobs/${encodeURIComponent(view.id)}/logs`;
  try {
    const response = await call("GET", path, {
      signal, raw: true, headers: { Accept: "text/event-stream" },
    });
    for await (const { event, data } of events(response)) {
      if (current !== view) {
        return;
      }
      if (event === "log") {
        append($("job-log"), data);
      }
    }
  } catch (e) {
    failed(e);
  }
}

async function showArtifacts(view) {
  let listing;
  try {
    listing = await call("GET", `/v1/jobs/${encodeURIComponent(view.id)}/artifacts`, {
      signal: view.abort.signal,
    });
  } catch (e) {
    failed(e);
    return;
  }
  if (current !== view) {
    return;
  }
  const items = listing.artifacts.map((artifact) => {
    const item = el("li");
    const link = el("button", artifact.name, "link");
    link.type = "button";
    link.addEventListener("click", () => download(view.id, artifact));
    item.append(link, el("span", ` ${bytes(artifact.size)}`, "muted"));
    return item;
  });
  for (const dropped of view.record?.artifacts_dropped ?? []) {
    const item = el("li", dropped.name, "dropped");
    item.append(el("span", ` not kept: ${dropped.reason}`, "muted"));
    items.push(item);
  }
  if (!items.length) {
    items.push(el("li", "none", "muted"));
  }
  $("job-artifacts").replaceChildren(...items);
}

// Downloads need the Authorization header too, so a plain link cannot do:
// fetch the file, then hand the browser a Blob under the artifact's name.
async function download(jobId, artifact) {
  try {
    // built here rather than taken from the listing's "url", which is not
    // percent-encoded: a name may hold "#", "?" or "%"
    const path = `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/`
      + artifact.name.split("/").map(encodeURIComponent).join("/");
    const response = await call("GET", path, { raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = artifact.name.split("/").pop();
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    failed(e);
  }
}

async function cancelJob() {
  if (!current) {
    return;
  }
  const view = current;
  try {
    const job = await call("DELETE", `/v1/jobs/${encodeURIComponent(view.id)}`);
    showRecord(view, job);
  } catch (e) {
    failed(e);
  }
}

// Submits the job again with the same module, args, env and limits; its input
// too when this tab submitted it (else the form is filled in to complete).
async function runAgain() {
  const job = current?.record;
  if (!job) {
    return;
  }
  const limits = {};
  for (const key of ["timeout_s", "memory_mb", "fuel"]) {
    if (job.limits?.[key] !== null && job.limits?.[key] !== undefined) {
      limits[key] = job.limits[key];
    }
  }
  // null when the record does not tell (the input range is set once the job
  // leaves the queue): then the input is asked for rather than assumed empty
  const count = job.input && job.input.end !== null ? job.input.end - job.input.start : null;
  const input = keptInput(job.id) ?? (count === 0 ? [] : null);
  const request = { module: job.module, args: job.args, env: job.env, input, limits };
  if (input !== null) {
    await submit(request);
    return;
  }
  await refreshModules(job.module);
  $("args").value = job.args.join("\n");
  $("env").value = Object.entries(job.env).map(([k, v]) => `${k}=${v}`).join("\n");
  $("limit-timeout").value = limits.timeout_s ?? "";
  $("limit-memory").value = limits.memory_mb ?? "";
  $("limit-fuel").value = limits.fuel ?? "";
  const had = count === null ? "may have had input records" : `had ${count} input records`;
  showError(`job ${job.id} ${had}, which the API does not hand back: `
    + "the form is filled in with everything else; add the input and submit");
  $("input-text").focus();
}

// -- wiring ----------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) {
      showError("paste your tenant token first");
      return;
    }
    signIn(value);
  });
  $("sign-out").addEventListener("click", signOut);
  $("error-close").addEventListener("click", clearError);
  $("upload").addEventListener("change", (event) => upload(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
  $("submit-form").addEventListener("submit", submitForm);
  $("state-filter").addEventListener("change", renderJobs);
  $("jobs-list").addEventListener("click", openFromRow);
  $("jobs-list").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      openFromRow(event);
    }
  });
  $("cancel-job").addEventListener("click", cancelJob);
  $("run-again").addEventListener("click", runAgain);
  $("close-job").addEventListener("click", () => {
    location.hash = "";
  });
  window.addEventListener("hashchange", () => {
    if (token()) {
      route();
    }
  });
  if (token()) {
    start();
  }
}

wire();
