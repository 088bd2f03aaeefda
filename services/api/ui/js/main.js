// The dashboard's entry: sign-in, the hash router and the page frame.

import { adoptTokenFromUrl, errorText, forgetKey, getKey, identify, setKey } from "./api.js";
import { auditPage, schedulesPage } from "./admin.js";
import { dagPage } from "./dag.js";
import { h, notice, setChildren } from "./dom.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { overviewPage } from "./overview.js";
import { liveCounters } from "./live.js";
import { workersPage } from "./workers.js";

const main = document.getElementById("main");
let identity = null;
let leavePage = () => {};

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { page: parts[0] || "overview", arg: parts[1], params: new URLSearchParams(query) };
}

function jobsHash(filter) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(filter)) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) params.append(name, one);
  }
  const text = params.toString();
  return `#/jobs${text ? `?${text}` : ""}`;
}

function route() {
  leavePage();
  leavePage = () => {};
  notice(null);
  setChildren(main);
  if (!identity) {
    loginPage();
    return;
  }
  const { page, arg, params } = parseHash();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const pages = {
    overview: () => overviewPage(main),
    jobs: () => jobsPage(main, params, identity, (filter) => { window.location.hash = jobsHash(filter); }),
    job: () => jobPage(main, arg, identity),
    dag: () => dagPage(main, arg),
    workers: () => workersPage(main),
    schedules: () => schedulesPage(main, identity),
    audit: () => auditPage(main, identity),
  };
  const open = pages[page] || pages.overview;
  leavePage = open() || (() => {});
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · Switchyard`;
  main.focus({ preventScroll: true });
}

function showFrame() {
  const signedIn = Boolean(identity);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn || !getKey();
  for (const link of document.querySelectorAll("[data-admin]")) {
    link.hidden = !identity || identity.role !== "admin";
  }
  const who = document.getElementById("who");
  setChildren(who, signedIn ? h("span", { class: `badge role-${identity.role}`, id: "role" },
    identity.label ? `${identity.label} (${identity.role})` : identity.role) : "");
}

function loginPage(message) {
  const input = h("input", { id: "key", name: "key", type: "password", autocomplete: "off",
    required: true, spellcheck: "false", "aria-describedby": "key-help" });
  const error = h("p", { class: "error-text", role: "alert", id: "login-error" }, message || "");
  const form = h("form", { class: "login panel", "aria-labelledby": "login-h" },
    h("h1", { id: "login-h" }, "Sign in"),
    h("label", { for: "key" }, "API key"), input,
    h("p", { id: "key-help", class: "muted small" },
      "The key is kept for this tab only (sessionStorage): never in a cookie, gone when the tab closes."),
    error,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    await signIn(error);
  });
  setChildren(main, form);
  input.focus();
}

async function signIn(errorEl) {
  try {
    identity = await identify();
  } catch (err) {
    identity = null;
    showFrame();
    const hadKey = Boolean(getKey());
    forgetKey();
    let text = errorText(err);
    if (err.status === 401) text = hadKey ? "This key is not valid (or was revoked)." : "";
    if (errorEl) errorEl.textContent = text;
    else loginPage(text);
    return;
  }
  showFrame();
  if (!window.location.hash || window.location.hash === "#/login") window.location.hash = "#/overview";
  else route();
}

function signOut() {
  forgetKey();
  identity = null;
  leavePage();
  leavePage = () => {};
  showFrame();
  loginPage();
}

window.switchyard = Object.freeze({ live: liveCounters });
window.addEventListener("hashchange", route);
window.addEventListener("switchyard:unauthorized", () => {
  if (!identity) return;
  forgetKey();
  identity = null;
  leavePage();
  leavePage = () => {};
  showFrame();
  loginPage("The API refused the key (revoked?): sign in again.");
});
document.getElementById("signout").addEventListener("click", signOut);

adoptTokenFromUrl();
// With a key in this tab, or on a dev API that takes no key: go straight in.
signIn(null).catch(() => loginPage());
