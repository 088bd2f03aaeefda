// Schedules (next fires; pause and resume for admins) and the audit log (admins).

import { api, errorText } from "./api.js";
import { fmtTime, h, jobLink, notice, table, setChildren } from "./dom.js";

export function schedulesPage(main, identity) {
  const host = h("div", {});
  main.append(h("h1", {}, "Schedules"), host);
  const isAdmin = identity.role === "admin";

  async function load() {
    try {
      const schedules = await api("/schedules");
      const rows = schedules.map((s) => h("tr", { dataset: { scheduleId: s.id } },
        h("td", {}, s.name),
        h("td", { class: "mono" }, s.cron),
        h("td", {}, s.timezone),
        h("td", {}, s.job && s.job.type ? s.job.type : ""),
        h("td", {}, s.paused ? h("span", { class: "badge status-cancelled" }, "paused") : fmtTime(s.next_run_at)),
        h("td", {}, fmtTime(s.last_run_at)),
        h("td", {}, s.last_job_id ? jobLink(s.last_job_id) : ""),
        h("td", {}, isAdmin ? h("button", {
          type: "button", class: "secondary", "data-action": s.paused ? "resume" : "pause",
          onclick: () => setPaused(s, !s.paused),
        }, s.paused ? "Resume" : "Pause") : null)));
      setChildren(host, schedules.length
        ? table(["Name", "Cron", "Time zone", "Job type", "Next fire", "Last fire", "Last job", ""], rows, { class: "data" })
        : h("p", { class: "muted" }, "No schedule. Create one with POST /schedules (admin)."));
    } catch (err) {
      notice(`Schedules: ${errorText(err)}`);
    }
  }

  async function setPaused(schedule, paused) {
    try {
      await api(`/schedules/${schedule.id}`, { method: "PATCH", body: { paused } });
      load();
    } catch (err) {
      notice(`${paused ? "Pause" : "Resume"}: ${errorText(err)}`);
    }
  }

  load();
  const timer = setInterval(load, 10_000);
  return () => clearInterval(timer);
}

export function auditPage(main, identity) {
  if (identity.role !== "admin") {
    main.append(h("h1", {}, "Audit"), h("p", {}, "The audit log is for admins only."));
    return () => {};
  }
  const cursors = [null];
  let page = 0;
  let nextCursor = null;
  const filters = { actor: "", action: "", job_id: "" };
  const host = h("div", {});
  const form = h("form", { class: "filters row", role: "search", "aria-label": "Filter the audit log" },
    ["actor", "action", "job_id"].map((name) => [
      h("label", { for: `a-${name}` }, name.replace("_", " ")),
      h("input", { id: `a-${name}`, name, placeholder: name === "action" ? "e.g. job.cancel" : "" })]),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    for (const name of Object.keys(filters)) filters[name] = data.get(name).trim();
    cursors.length = 1;
    page = 0;
    load();
  });
  const prev = h("button", { type: "button", class: "secondary", onclick: () => { page -= 1; load(); } }, "← Newer");
  const next = h("button", { type: "button", class: "secondary", onclick: () => { page += 1; load(); } }, "Older →");
  main.append(h("h1", {}, "Audit"), form, host, h("nav", { class: "pager", "aria-label": "Pages" }, prev, next));

  async function load() {
    try {
      const answer = await api("/audit", { query: { ...filters, limit: 50, cursor: cursors[page] || undefined } });
      nextCursor = answer.next_cursor;
      cursors[page + 1] = nextCursor;
      prev.disabled = page === 0;
      next.disabled = !nextCursor;
      const rows = answer.items.map((a) => h("tr", {},
        h("td", {}, fmtTime(a.at)), h("td", { class: "mono" }, a.actor || ""), h("td", {}, a.role || ""),
        h("td", {}, a.action), h("td", {}, a.job_id ? jobLink(a.job_id) : ""),
        h("td", {}, a.outcome), h("td", { class: "num" }, a.status_code ?? ""),
        h("td", { class: "mono small" }, a.detail ? JSON.stringify(a.detail).slice(0, 160) : "")));
      setChildren(host, table(["At", "Actor", "Role", "Action", "Job", "Outcome", "Code", "Detail"], rows, { class: "data" }));
    } catch (err) {
      notice(`Audit: ${errorText(err)}`);
    }
  }
  load();
  return () => {};
}
