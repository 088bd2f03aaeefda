// A job: its fields, payload and result, the attempts as a timeline, its log lines
// streaming live, a progress bar, and why it waits (GET /jobs/{id}/why).

import { api, errorText } from "./api.js";
import { jobActions } from "./actions.js";
import {
  TERMINAL, fmtAge, fmtNumber, fmtTime, h, jobLink, jsonBlock, notice, statusBadge, svg, table, setChildren,
} from "./dom.js";
import { LiveStream } from "./live.js";

const MAX_LINES_SHOWN = 5000;
const REFRESH_AT_MOST_MS = 1000;

export function jobPage(main, jobId, identity) {
  let job = null;
  let refreshTimer = null;
  let whyTimer = null;
  let lastRefresh = 0;
  const lineKeys = new Set();

  const head = h("div", { class: "job-head" });
  const progress = h("div", { class: "progress-host" });
  const fields = h("section", { class: "panel", "aria-labelledby": "fields-h" });
  const why = h("section", { class: "panel why", id: "why", "aria-labelledby": "why-h" });
  const attempts = h("section", { class: "panel", "aria-labelledby": "attempts-h" });
  const logList = h("ol", { class: "log", id: "log-lines", "aria-live": "off", tabindex: "0",
    "aria-label": "Log lines" });
  const logNote = h("p", { class: "muted small" });
  const logs = h("section", { class: "panel", "aria-labelledby": "logs-h" },
    h("h2", { id: "logs-h" }, "Log"), logNote, logList);
  main.append(head, progress, h("div", { class: "grid2" }, fields, why), attempts, logs);

  async function refresh() {
    lastRefresh = performance.now();
    try {
      job = await api(`/jobs/${jobId}`);
      renderHead();
      renderFields();
      renderProgress(job.progress);
    } catch (err) {
      setChildren(head, h("h1", {}, "Job ", jobId));
      notice(`Job: ${errorText(err)}`);
      return;
    }
    await Promise.all([loadAttempts(), loadWhy()]);
  }

  function scheduleRefresh() {
    if (refreshTimer !== null) return;
    const wait = Math.max(0, REFRESH_AT_MOST_MS - (performance.now() - lastRefresh));
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refresh();
    }, wait);
  }

  function renderHead() {
    setChildren(head,
      h("h1", {}, job.name || job.type, " ", statusBadge(job.status)),
      h("p", { class: "muted mono" }, job.id),
      h("p", {}, h("a", { href: `#/dag/${job.id}` }, "Dependency graph"), " ",
        jobActions(identity, job, { onDone: scheduleRefresh })));
  }

  function renderFields() {
    const row = (name, value) => h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, value));
    const res = job.resources || {};
    setChildren(fields,
      h("h2", { id: "fields-h" }, "Fields"),
      h("table", { class: "fields" }, h("tbody", {},
        row("Type", job.type),
        row("Status", statusBadge(job.status)),
        row("Priority", job.priority),
        row("Resources", `${fmtNumber(res.cpu_units)} CPU units, ${fmtNumber(res.memory_mb)} MB`),
        row("Attempts", `${job.attempts} of ${job.retry ? job.retry.max_attempts : "?"}`),
        row("Worker", job.worker_id || "–"),
        row("Depends on", job.depends_on.length ? job.depends_on.map((d) => [jobLink(d), " "]) : "–"),
        row("Created", `${fmtTime(job.created_at)}${job.created_by ? ` by ${job.created_by}` : ""}`),
        row("Run at", fmtTime(job.run_at) || "–"),
        row("Started", fmtTime(job.started_at) || "–"),
        row("Finished", fmtTime(job.finished_at) || "–"),
        row("Timeout", job.timeout_seconds ? `${job.timeout_seconds} s` : "–"),
        job.waiting_reason ? row("Waiting", job.waiting_reason) : null,
        job.error ? row("Error", h("span", { class: "error-text" }, job.error)) : null)),
      h("h3", {}, "Payload"), jsonBlock(job.payload, "Payload"),
      h("h3", {}, "Result"), job.result === null || job.result === undefined
        ? h("p", { class: "muted" }, "none yet") : jsonBlock(job.result, "Result"));
  }

  function renderProgress(p) {
    if (!p || p.done === null || p.done === undefined) {
      setChildren(progress);
      return;
    }
    const total = p.total || null;
    const value = total ? Math.min(p.done, total) : p.done;
    setChildren(progress, h("label", { class: "progress-label" },
      `Progress ${total ? `${fmtNumber(p.done)} / ${fmtNumber(total)}` : fmtNumber(p.done)}`
      + `${p.message ? ` — ${p.message}` : ""}`,
      h("progress", { id: "job-progress", max: total || undefined, value })));
  }

  // The logger writes executions in batches, a moment after the state changes: while
  // the job's attempts are not all there (or a finished job's last one is open), read
  // them again shortly.
  let attemptsTimer = null;
  let attemptsRetries = 0;
  async function loadAttempts() {
    clearTimeout(attemptsTimer);
    try {
      const answer = await api(`/jobs/${jobId}/logs`, { query: { limit: 1 } });
      renderAttempts(answer.executions);
      const last = answer.executions[answer.executions.length - 1];
      const behind = job && (answer.executions.length < job.attempts
        || (TERMINAL.has(job.status) && last && !last.finished_at));
      if (behind && attemptsRetries < 20) {
        attemptsRetries += 1;
        attemptsTimer = setTimeout(loadAttempts, 1000);
      } else if (!behind) {
        attemptsRetries = 0;
      }
    } catch (err) {
      setChildren(attempts, h("h2", { id: "attempts-h" }, "Attempts"),
        h("p", { class: "error-text" }, errorText(err)));
    }
  }

  function renderAttempts(executions) {
    const rows = executions.map((ex) => h("tr", { dataset: { attempt: ex.attempt } },
      h("td", { class: "num" }, String(ex.attempt)),
      h("td", { class: "mono" }, ex.worker_id || ""),
      h("td", {}, fmtTime(ex.started_at)),
      h("td", {}, fmtTime(ex.finished_at)),
      h("td", { class: "num" }, ex.duration_seconds === null || ex.duration_seconds === undefined
        ? "" : `${fmtNumber(ex.duration_seconds)} s`),
      h("td", {}, ex.status ? statusBadge(ex.status) : ""),
      h("td", {}, ex.error ? errorDetails(ex.error) : "")));
    setChildren(attempts, h("h2", { id: "attempts-h" }, "Attempts"),
      executions.length ? timeline(executions) : null,
      executions.length
        ? table(["#", "Worker", "Start", "End", "Duration", "Outcome", "Error"], rows,
          { class: "data", id: "attempts-table" })
        : h("p", { class: "muted" }, "No attempt yet."));
  }

  async function loadWhy() {
    clearTimeout(whyTimer);
    try {
      renderWhy(await api(`/jobs/${jobId}/why`));
    } catch (err) {
      setChildren(why, h("h2", { id: "why-h" }, "Why is it waiting?"),
        h("p", { class: "muted" }, errorText(err)));
    }
    // While it waits, the answer changes without an event of this job (workers come
    // and go, other jobs finish): re-ask now and then.
    if (job && !TERMINAL.has(job.status) && job.status !== "running") {
      whyTimer = setTimeout(loadWhy, 3000);
    }
  }

  function renderWhy(w) {
    const res = (r) => `${fmtNumber(r.cpu_units)} CPU, ${fmtNumber(r.memory_mb)} MB, ${r.slots} slot${r.slots === 1 ? "" : "s"}`;
    const workerRows = (w.workers || []).map((wk) => h("tr", {
      dataset: { worker: wk.id, fits: wk.fits_now }, class: wk.fits_now ? "fits" : "no-fit",
    },
    h("td", { class: "mono" }, wk.id),
    h("td", {}, wk.state),
    h("td", {}, wk.has_task_type ? "yes" : "no"),
    h("td", { class: "free" }, res(wk.free)),
    h("td", { class: "needed" }, res(wk.needed)),
    h("td", {}, wk.fits_now ? "yes" : wk.fits_ever ? "later" : "never"),
    h("td", {}, wk.why_not || "")));
    const priority = w.effective_priority !== w.priority
      ? `${w.effective_priority} (aged from ${w.priority} after ${fmtAge(w.waited_seconds)})`
      : w.priority;
    const waiting = !["running", "cancelling", "terminal"].includes(w.reason);
    setChildren(why,
      h("h2", { id: "why-h" }, waiting ? "Why is it waiting?" : "Where it stands"),
      h("p", { class: "reason" }, h("code", { id: "why-reason", class: `reason-${w.reason}` }, w.reason),
        " ", w.message),
      h("p", {}, "Effective priority: ", h("strong", {}, priority),
        w.position === null || w.position === undefined ? null
          : [`; ${w.position}${w.position_capped ? "+" : ""} ready job${w.position === 1 ? "" : "s"} placed before it`]),
      w.dependencies.length ? [h("h3", {}, "Dependencies"),
        h("ul", { class: "deps" }, w.dependencies.map((d) => h("li", {},
          jobLink(d.id), " ", d.name || d.type || "", " ", statusBadge(d.status))))] : null,
      workerRows.length ? [h("h3", {}, "Live workers"),
        table(["Worker", "State", "Task type", "Free", "Needed", "Fits", "Missing"], workerRows,
          { class: "data compact", id: "why-workers" })]
        : h("p", { class: "muted" }, "No live worker."));
  }

  function appendLines(events) {
    const atBottom = logList.scrollHeight - logList.scrollTop - logList.clientHeight < 40;
    const fragment = document.createDocumentFragment();
    for (const ev of events) {
      const key = `${ev.attempt}:${ev.data.seq}`;
      if (lineKeys.has(key)) continue;
      lineKeys.add(key);
      fragment.append(h("li", { class: `level-${ev.data.level}` },
        h("span", { class: "ts" }, fmtTime(ev.ts)), " ",
        h("span", { class: "attempt" }, `#${ev.attempt}`), " ",
        h("span", { class: "lvl" }, ev.data.level), " ",
        h("span", { class: "msg" }, ev.data.message)));
    }
    logList.append(fragment);
    while (logList.childElementCount > MAX_LINES_SHOWN) logList.firstElementChild.remove();
    if (atBottom) logList.scrollTop = logList.scrollHeight;
  }

  const stream = new LiveStream({ job_id: jobId, replay: "true" }, (events, { dropped }) => {
    const lines = events.filter((ev) => ev.event === "log");
    if (lines.length) appendLines(lines);
    const replayGap = events.find((ev) => ev.event === "dropped" && ev.data.replay);
    if (replayGap) {
      logNote.textContent = `${replayGap.data.count} earlier lines are not shown: `
        + `read them with GET /jobs/${jobId}/logs (the CLI: switchyard logs ${jobId}).`;
    }
    const latestProgress = events.filter((ev) => ev.event === "progress").pop();
    if (latestProgress) renderProgress(latestProgress.data);
    const state = events.filter((ev) => ev.event === "state").pop();
    if (state && job && state.data.new_status !== job.status) {
      job.status = state.data.new_status;
      renderHead();
    }
    if (state || dropped) scheduleRefresh();
  }, { onReconnect: scheduleRefresh });

  refresh();
  return () => {
    clearTimeout(refreshTimer);
    clearTimeout(whyTimer);
    clearTimeout(attemptsTimer);
    stream.close();
  };
}

function errorDetails(error) {
  const text = String(error);
  const [first, ...rest] = text.split("\n");
  if (!rest.length) return h("span", { class: "error-text" }, text);
  return h("details", {}, h("summary", { class: "error-text" }, first),
    h("pre", { class: "traceback" }, rest.join("\n")));
}

// The attempts on one time axis: a bar per attempt from start to end, coloured by outcome.
function timeline(executions) {
  const starts = executions.map((e) => Date.parse(e.started_at)).filter(Number.isFinite);
  if (!starts.length) return null;
  const now = Date.now();
  const ends = executions.map((e) => (e.finished_at ? Date.parse(e.finished_at) : now));
  const t0 = Math.min(...starts);
  const t1 = Math.max(t0 + 1, ...ends);
  const W = 1200;
  const rowH = 22;
  const left = 70;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 10);
  const bars = executions.map((e, i) => {
    const s = Date.parse(e.started_at);
    const end = e.finished_at ? Date.parse(e.finished_at) : now;
    const y = 4 + i * rowH;
    return svg("g", {},
      svg("text", { x: 4, y: y + 14, class: "axis" }, `attempt ${e.attempt}`),
      svg("rect", { x: x(s), y, width: Math.max(2, x(end) - x(s)), height: rowH - 6, rx: 3,
        class: `bar-${e.status || "running"}` },
      svg("title", {}, `attempt ${e.attempt} on ${e.worker_id}: ${e.status || "running"}`)));
  });
  const height = 8 + executions.length * rowH + 14;
  return svg("svg", { viewBox: `0 0 ${W} ${height}`, class: "timeline", role: "img",
    "aria-label": `Timeline of ${executions.length} attempts over ${fmtAge((t1 - t0) / 1000)}` },
  bars,
  svg("text", { x: left, y: height - 2, class: "axis" }, fmtTime(new Date(t0).toISOString())),
  svg("text", { x: W - 10, y: height - 2, class: "axis", "text-anchor": "end" },
    fmtTime(new Date(t1).toISOString())));
}
