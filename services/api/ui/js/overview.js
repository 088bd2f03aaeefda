// Overview: counts by status and priority, queue depth, throughput and submit→start
// latency as live charts, and the failures of the last hour.

import { api, errorText } from "./api.js";
import { barList, lineChart } from "./charts.js";
import { STATUSES, fmtTime, h, jobLink, notice, table, setChildren } from "./dom.js";
import { LiveStream } from "./live.js";

const STATS_EVERY_MS = 2000;
const WINDOW_MS = 5 * 60_000;

export function overviewPage(main) {
  const finishedPerSecond = []; // {t, v}: jobs that reached a final state, per second
  const latency = []; // {t, v}: mean submit→start seconds of jobs started lately
  const seenStarts = new Map(); // job id → started_at, to count each start once
  let finishedSince = 0;
  let stats = null;
  let failures = [];

  const countsEl = h("section", { class: "panel", "aria-labelledby": "counts-h" });
  const chartsEl = h("section", { class: "panel charts", "aria-label": "Live charts" });
  const failuresEl = h("section", { class: "panel", "aria-labelledby": "failures-h" });
  main.append(h("h1", {}, "Overview"), h("div", { class: "grid2" }, countsEl, chartsEl), failuresEl);

  function renderCounts() {
    if (!stats) return;
    const byStatus = STATUSES.map((s) => [s, stats.by_status[s] || 0]);
    const byPriority = Object.entries(stats.by_priority);
    const depth = Object.values(stats.queue_depth).reduce((a, b) => a + b, 0);
    setChildren(countsEl,
      h("h2", { id: "counts-h" }, "Jobs"),
      h("p", { class: "big" }, h("span", { id: "queue-depth" }, String(depth)), " waiting ",
        h("span", { class: "muted" },
          `(${Object.entries(stats.queue_depth).map(([k, v]) => `${k} ${v}`).join(", ")})`)),
      h("div", { class: "grid2 tight" },
        h("div", {}, h("h3", {}, "By status"), barList(byStatus, { classPrefix: "status-" })),
        h("div", {}, h("h3", {}, "By priority"), barList(byPriority, { classPrefix: "prio-" }))),
      historyNote());
  }

  // A large history is read again every so often, not for every answer.
  function historyNote() {
    const age = (Date.now() - Date.parse(stats.history_read_at)) / 1000;
    if (!(age >= 5)) return null;
    return h("p", { class: "muted", id: "history-read" },
      `Finished jobs, throughput and durations as read ${Math.round(age)} s ago (a large history is read again in the background).`);
  }

  function renderCharts() {
    const throughput = stats ? stats.throughput.completed : null;
    setChildren(chartsEl,
      h("h2", {}, "Live"),
      lineChart(finishedPerSecond, { label: "Finished jobs per second", unit: "/s", windowMs: WINDOW_MS }),
      lineChart(latency, { label: "Submit → start latency", unit: "s", windowMs: WINDOW_MS }),
      throughput ? h("p", { class: "muted" },
        `Completed in the last minute: ${throughput.last_minute}; mean per minute over `
        + `${Math.round(stats.window_seconds / 60)} min: ${throughput.per_minute}`) : null);
  }

  function renderFailures() {
    const rows = failures.map((job) => h("tr", {},
      h("td", {}, jobLink(job.id)), h("td", {}, job.name || ""), h("td", {}, job.type),
      h("td", {}, fmtTime(job.finished_at)), h("td", { class: "error-text" }, job.error || "")));
    setChildren(failuresEl,
      h("h2", { id: "failures-h" }, `Failures of the last hour (${failures.length})`),
      failures.length
        ? table(["Job", "Name", "Type", "Failed at", "Error"], rows, { class: "data" })
        : h("p", { class: "muted" }, "No job failed in the last hour."));
  }

  async function refresh() {
    try {
      const hourAgo = Date.now() - 3600_000;
      const [s, failed, started] = await Promise.all([
        api("/stats"),
        api("/jobs", { query: { status: "failed", limit: 100 } }),
        api("/jobs", { query: { status: ["running", "completed"], limit: 100 } }),
      ]);
      stats = s;
      failures = failed.items.filter((j) => j.finished_at && Date.parse(j.finished_at) >= hourAgo);
      const fresh = [];
      for (const job of started.items) {
        if (!job.started_at || seenStarts.has(job.id)) continue;
        if (Date.parse(job.started_at) < Date.now() - 60_000) continue; // not a fresh start
        seenStarts.set(job.id, job.started_at);
        fresh.push((Date.parse(job.started_at) - Date.parse(job.created_at)) / 1000);
      }
      if (seenStarts.size > 5000) seenStarts.clear();
      if (fresh.length) {
        latency.push({ t: Date.now(), v: fresh.reduce((a, b) => a + b, 0) / fresh.length });
      }
      renderCounts();
      renderFailures();
    } catch (err) {
      notice(`Overview: ${errorText(err)}`);
    }
  }

  const stream = new LiveStream({}, (events) => {
    for (const ev of events) {
      if (ev.event === "state" && ["completed", "failed", "cancelled"].includes(ev.data.new_status)) {
        finishedSince += 1;
      }
    }
  });
  const tick = setInterval(() => {
    const now = Date.now();
    finishedPerSecond.push({ t: now, v: finishedSince / (STATS_EVERY_MS / 1000) });
    finishedSince = 0;
    while (finishedPerSecond.length && finishedPerSecond[0].t < now - WINDOW_MS) finishedPerSecond.shift();
    while (latency.length && latency[0].t < now - WINDOW_MS) latency.shift();
    refresh().then(renderCharts);
  }, STATS_EVERY_MS);
  refresh().then(renderCharts);
  return () => {
    clearInterval(tick);
    stream.close();
  };
}
