// The actions a user may take on a job: each one ordinary API call, so RBAC and the
// audit log apply unchanged. Buttons are shown only to roles that may use them.

import { api, errorText, mayActOn } from "./api.js";
import { TERMINAL, h, notice } from "./dom.js";

export function jobActions(identity, job, { onDone, compact = false } = {}) {
  if (!mayActOn(identity, job)) return null;
  const buttons = [];
  const run = async (label, call) => {
    try {
      const answer = await call();
      notice(`${label}: done${answer && answer.cancel_requested ? " (the worker was told)" : ""}`, "info");
      if (onDone) onDone(answer);
    } catch (err) {
      notice(`${label}: ${errorText(err)}`);
    }
  };
  if (!TERMINAL.has(job.status)) {
    buttons.push(h("button", {
      type: "button", class: "danger", "data-action": "cancel",
      "aria-label": `Cancel job ${job.name || job.id}`,
      onclick: () => run("Cancel", () => api(`/jobs/${job.id}/cancel`, { method: "PATCH" })),
    }, "Cancel"));
  }
  if (job.status === "failed" || job.status === "cancelled") {
    buttons.push(h("button", {
      type: "button", "data-action": "retry", "aria-label": `Retry job ${job.name || job.id}`,
      onclick: () => run("Retry", () => api(`/jobs/${job.id}/retry`, { method: "POST" })),
    }, "Retry"));
    if (!compact) {
      buttons.push(h("button", {
        type: "button", class: "secondary", "data-action": "retry-dependents",
        onclick: () => run("Retry with dependents",
          () => api(`/jobs/${job.id}/retry`, { method: "POST", query: { dependents: true } })),
      }, "Retry with dependents"));
    }
  }
  return buttons.length ? h("span", { class: "actions" }, buttons) : null;
}
