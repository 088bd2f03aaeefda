// Workers: the capacity map. Per worker, CPU units, memory and slots allocated vs free
// as bars, the jobs running in it (with each process attempt's CPU and RSS when the
// worker reports them), heartbeat age and state.

import { api, errorText } from "./api.js";
import { fmtAge, fmtNumber, h, jobLink, meter, notice, table, setChildren } from "./dom.js";

const POLL_MS = 2000;

export function workersPage(main) {
  let workers = [];
  const summary = h("p", { class: "muted", "aria-live": "polite" });
  const grid = h("div", { class: "workers", id: "workers" });
  main.append(h("h1", {}, "Workers"), summary, grid);

  function render() {
    const alive = workers.filter((w) => w.state !== "dead");
    const sum = (f) => alive.reduce((a, w) => a + f(w), 0);
    summary.textContent = `${alive.length} live worker${alive.length === 1 ? "" : "s"} `
      + `(${workers.length - alive.length} dead in the last hour): `
      + `${fmtNumber(sum((w) => w.allocated.cpu_units))} / ${fmtNumber(sum((w) => w.capacity.cpu_units))} CPU units, `
      + `${fmtNumber(sum((w) => w.allocated.memory_mb))} / ${fmtNumber(sum((w) => w.capacity.memory_mb))} MB, `
      + `${sum((w) => w.allocated.slots)} / ${sum((w) => w.capacity.slots)} slots allocated.`;
    setChildren(grid, ...workers.map(card));
  }

  function card(w) {
    const age = (Date.now() - Date.parse(w.last_heartbeat_at)) / 1000;
    const usage = (w.attempts || []).map((a) => h("tr", {},
      h("td", {}, jobLink(a.job_id)), h("td", { class: "num" }, String(a.attempt)),
      h("td", { class: "num" }, String(a.pid)),
      h("td", { class: "num" }, `${fmtNumber(a.cpu_percent, 1)} %`),
      h("td", { class: "num" }, `${fmtNumber(a.rss_mb, 1)} MB`)));
    return h("article", { class: `worker-card state-${w.state}`, dataset: { workerId: w.id },
      "aria-labelledby": `w-${cssId(w.id)}` },
    h("header", {},
      h("h2", { id: `w-${cssId(w.id)}`, class: "mono" }, w.id),
      h("span", { class: `badge state-${w.state}` }, w.state),
      h("span", { class: "muted heartbeat", dataset: { heartbeat: w.last_heartbeat_at } },
        `heartbeat ${fmtAge(Math.max(0, age))} ago`)),
    h("div", { class: "meters" },
      h("div", { dataset: { resource: "cpu_units" } }, meter("CPU", w.allocated.cpu_units, w.capacity.cpu_units, "units")),
      h("div", { dataset: { resource: "memory_mb" } }, meter("Memory", w.allocated.memory_mb, w.capacity.memory_mb, "MB")),
      h("div", { dataset: { resource: "slots" } }, meter("Slots", w.allocated.slots, w.capacity.slots, ""))),
    h("p", { class: "muted small" },
      `host usage: CPU ${w.cpu_percent === null ? "–" : `${fmtNumber(w.cpu_percent, 1)} %`}, `
      + `memory ${w.memory_percent === null ? "–" : `${fmtNumber(w.memory_percent, 1)} %`}; `
      + `types: ${w.task_types.join(", ") || "none"}`),
    h("div", { class: "running" }, h("span", {}, `Running (${w.running.length}): `),
      w.running.length ? w.running.map((id) => [jobLink(id), " "]) : h("span", { class: "muted" }, "nothing")),
    usage.length ? table(["Job", "Attempt", "PID", "CPU", "RSS"], usage, { class: "data compact" }) : null);
  }

  async function poll() {
    try {
      workers = await api("/workers");
      render();
    } catch (err) {
      notice(`Workers: ${errorText(err)}`);
    }
  }

  poll();
  const timer = setInterval(poll, POLL_MS);
  return () => clearInterval(timer);
}

function cssId(text) {
  return String(text).replace(/[^A-Za-z0-9_-]/g, "_");
}
