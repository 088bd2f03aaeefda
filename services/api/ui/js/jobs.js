// Jobs: the list with every filter of GET /jobs plus name search, keyset pages, rows
// updating live, and bulk cancel / retry by the current filter (dry run first).

import { api, errorText, mayBulk } from "./api.js";
import { jobActions } from "./actions.js";
import {
  PRIORITIES, STATUSES, fmtTime, h, jobLink, notice, statusBadge, table, setChildren, append,
} from "./dom.js";
import { LiveStream, latestStates } from "./live.js";

const PAGE_SIZE = 50;
const RELOAD_AT_MOST_MS = 1500;

function toIso(local) {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function jobsPage(main, params, identity, navigate) {
  const filter = {
    status: params.getAll("status").filter((s) => STATUSES.includes(s)),
    type: params.get("type") || "",
    priority: params.get("priority") || "",
    name: params.get("name") || "",
    created_after: params.get("created_after") || "",
    created_before: params.get("created_before") || "",
  };
  const cursors = [null]; // cursors of the pages seen, for "newer"
  let page = 0;
  let jobs = [];
  let nextCursor = null;
  let reloadTimer = null;
  let lastLoad = 0;

  const form = filterForm(filter, (next) => navigate(next));
  const info = h("p", { class: "muted", "aria-live": "polite" });
  const tableHost = h("div", { class: "table-host" });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => go(page - 1) }, "← Newer");
  const next = h("button", { type: "button", class: "secondary", onclick: () => go(page + 1) }, "Older →");
  const bulk = mayBulk(identity) ? bulkPanel(filter, () => load()) : null;
  append(main, [h("h1", {}, "Jobs"), form, bulk, info, tableHost,
    h("nav", { class: "pager", "aria-label": "Pages of jobs" }, prev, next)]);

  function query() {
    return {
      status: filter.status, type: filter.type, priority: filter.priority, name: filter.name,
      created_after: filter.created_after, created_before: filter.created_before,
      limit: PAGE_SIZE, cursor: cursors[page] || undefined,
    };
  }

  async function load() {
    lastLoad = performance.now();
    const started = performance.now();
    try {
      const answer = await api("/jobs", { query: query() });
      jobs = answer.items;
      nextCursor = answer.next_cursor;
      cursors[page + 1] = nextCursor;
      info.textContent = `Page ${page + 1}: ${jobs.length} job${jobs.length === 1 ? "" : "s"}, `
        + `newest first (answered in ${Math.round(performance.now() - started)} ms)`;
      render();
    } catch (err) {
      info.textContent = "";
      notice(`Jobs: ${errorText(err)}`);
    }
  }

  function go(to) {
    if (to < 0 || (to > page && !nextCursor)) return;
    page = to;
    load();
  }

  function render() {
    prev.disabled = page === 0;
    next.disabled = !nextCursor;
    const rows = jobs.map((job) => h("tr", { dataset: { jobId: job.id } },
      h("td", {}, jobLink(job.id)),
      h("td", { class: "name" }, job.name || ""),
      h("td", {}, job.type),
      h("td", { class: "status-cell" }, statusBadge(job.status)),
      h("td", {}, job.priority),
      h("td", { class: "num" }, String(job.attempts)),
      h("td", { class: "progress-cell" }, progressText(job.progress)),
      h("td", { class: "mono" }, job.worker_id || ""),
      h("td", {}, fmtTime(job.created_at)),
      h("td", {}, h("a", { href: `#/dag/${job.id}`, "aria-label": `Graph of ${job.id}` }, "graph"),
        " ", jobActions(identity, job, { onDone: () => scheduleReload(), compact: true }))));
    setChildren(tableHost, jobs.length
      ? table(["Job", "Name", "Type", "Status", "Priority", "Attempts", "Progress", "Worker",
        "Created", ""], rows, { class: "data", id: "jobs-table" })
      : h("p", { class: "muted" }, "No job matches."));
  }

  function scheduleReload() {
    if (reloadTimer !== null) return;
    const wait = Math.max(0, RELOAD_AT_MOST_MS - (performance.now() - lastLoad));
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      load();
    }, wait);
  }

  // Live: a known row changes in place; a new job (or one that may now match or stop
  // matching the filter) re-reads the page, at most every RELOAD_AT_MOST_MS.
  const stream = new LiveStream({ type: filter.type || undefined }, (events, { dropped }) => {
    const states = latestStates(events);
    let changed = false;
    let reload = dropped > 0;
    for (const [id, ev] of states) {
      const job = jobs.find((j) => j.id === id);
      if (job) {
        job.status = ev.data.new_status;
        job.worker_id = ev.data.worker_id ?? job.worker_id;
        job.attempts = Math.max(job.attempts, ev.attempt || 0);
        changed = true;
        if (filter.status.length && !filter.status.includes(job.status)) reload = true;
      } else if (page === 0 && (!filter.status.length || filter.status.includes(ev.data.new_status))) {
        reload = true;
      }
    }
    for (const ev of events) {
      if (ev.event !== "progress") continue;
      const job = jobs.find((j) => j.id === ev.job_id);
      if (job) {
        job.progress = ev.data;
        changed = true;
      }
    }
    if (changed) render();
    if (reload) scheduleReload();
  }, { onReconnect: () => scheduleReload() });

  load();
  return () => {
    clearTimeout(reloadTimer);
    stream.close();
  };
}

function progressText(progress) {
  if (!progress || progress.done === undefined || progress.done === null) return "";
  if (progress.total) return `${Math.round((100 * progress.done) / progress.total)} %`;
  return String(progress.done);
}

function filterForm(filter, apply) {
  const statusBoxes = STATUSES.map((s) => h("label", { class: "chip" },
    h("input", { type: "checkbox", name: "status", value: s, checked: filter.status.includes(s) }),
    " ", s));
  const select = (name, options, value) => h("select", { name, id: `f-${name}` },
    h("option", { value: "" }, "any"),
    options.map((o) => h("option", { value: o, selected: o === value }, o)));
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" },
    h("fieldset", {}, h("legend", {}, "Status"), statusBoxes),
    h("div", { class: "row" },
      h("label", { for: "f-name" }, "Name"),
      h("input", { id: "f-name", name: "name", type: "search", value: filter.name, placeholder: "name starts with…" }),
      h("label", { for: "f-type" }, "Type"),
      h("input", { id: "f-type", name: "type", value: filter.type, placeholder: "e.g. demo.sleep" }),
      h("label", { for: "f-priority" }, "Priority"),
      select("priority", PRIORITIES, filter.priority),
      h("label", { for: "f-created_after" }, "Created after"),
      h("input", { id: "f-created_after", name: "created_after", type: "datetime-local", value: toLocalInput(filter.created_after) }),
      h("label", { for: "f-created_before" }, "before"),
      h("input", { id: "f-created_before", name: "created_before", type: "datetime-local", value: toLocalInput(filter.created_before) }),
      h("button", { type: "submit" }, "Apply"),
      h("button", { type: "button", class: "secondary", onclick: () => apply({}) }, "Clear")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    apply({
      status: data.getAll("status"),
      name: data.get("name").trim(),
      type: data.get("type").trim(),
      priority: data.get("priority"),
      created_after: toIso(data.get("created_after")),
      created_before: toIso(data.get("created_before")),
    });
  });
  // A status chip or the priority applies at once; text fields on Enter / Apply.
  form.addEventListener("change", (e) => {
    if (e.target.name === "status" || e.target.name === "priority") form.requestSubmit();
  });
  return form;
}

function bulkFilter(filter) {
  const out = {};
  if (filter.status.length) out.status = filter.status;
  if (filter.type) out.type = filter.type;
  if (filter.priority) out.priority = filter.priority;
  if (filter.created_after) out.created_after = filter.created_after;
  if (filter.created_before) out.created_before = filter.created_before;
  if (filter.name) out.name = filter.name;
  return out;
}

// Bulk cancel / retry of every job the current filter selects: first a dry run shows
// how many match and would change, then the user confirms.
function bulkPanel(filter, reload) {
  const host = h("section", { class: "bulk", "aria-label": "Bulk actions" });
  const output = h("div", { class: "bulk-output", "aria-live": "polite" });
  const criteria = bulkFilter(filter);
  const usable = Object.keys(criteria).length > 0;
  const why = "Choose a filter first (status, type, priority, name or time): bulk actions never take every job.";

  async function dryRun(action) {
    setChildren(output, h("span", { class: "muted" }, "Counting…"));
    try {
      const answer = await api("/jobs/bulk", {
        method: "POST", body: { action, filter: criteria, dry_run: true },
      });
      const confirm = h("button", {
        type: "button", class: action === "cancel" ? "danger" : "", "data-action": `bulk-${action}-confirm`,
        onclick: () => act(action),
      }, `Yes, ${action} ${answer.changed}`);
      setChildren(output,
        h("p", { id: "bulk-count", dataset: { matched: answer.matched, changed: answer.changed } },
          `${answer.matched} job${answer.matched === 1 ? "" : "s"} match; ${answer.changed} would be `
          + `${action === "cancel" ? "cancelled" : "retried"}, ${answer.skipped} skipped`
          + `${answer.truncated ? " (more match than one bulk action takes)" : ""}.`),
        answer.changed ? confirm : null,
        h("button", { type: "button", class: "secondary", onclick: () => setChildren(output) }, "Never mind"));
      if (answer.changed) confirm.focus();
    } catch (err) {
      setChildren(output, h("p", { class: "error-text" }, errorText(err)));
    }
  }

  async function act(action) {
    setChildren(output, h("span", { class: "muted" }, "Working…"));
    try {
      const answer = await api("/jobs/bulk", {
        method: "POST", body: { action, filter: criteria, dry_run: false },
      });
      setChildren(output, h("p", { id: "bulk-result" },
        `${answer.changed} job${answer.changed === 1 ? "" : "s"} ${action === "cancel" ? "cancelled" : "retried"}, `
        + `${answer.skipped} skipped of ${answer.matched} matched.`));
      reload();
    } catch (err) {
      setChildren(output, h("p", { class: "error-text" }, errorText(err)));
    }
  }

  append(host, [
    h("span", { class: "muted" }, "All jobs of this filter:"),
    h("button", { type: "button", class: "secondary", disabled: !usable, "data-action": "bulk-cancel",
      title: usable ? "" : why, onclick: () => dryRun("cancel") }, "Cancel matching…"),
    h("button", { type: "button", class: "secondary", disabled: !usable, "data-action": "bulk-retry",
      title: usable ? "" : why, onclick: () => dryRun("retry") }, "Retry matching…"),
    usable ? null : h("span", { class: "muted small" }, why),
    output]);
  return host;
}
