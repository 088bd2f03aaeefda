// The REST client of the dashboard, and who the user is.
//
// The key lives in this tab's sessionStorage only: never in a cookie (no request is
// authenticated behind the user's back) and never in the URL after the first load
// (`?token=` is moved to sessionStorage and erased from the address bar at once).

const KEY_SLOT = "switchyard.key";
const IDENTITY_SLOT = "switchyard.identity";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export function adoptTokenFromUrl() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  url.searchParams.delete("token");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  if (token) setKey(token);
}

export function getKey() {
  return sessionStorage.getItem(KEY_SLOT);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_SLOT, key);
  sessionStorage.removeItem(IDENTITY_SLOT);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_SLOT);
  sessionStorage.removeItem(IDENTITY_SLOT);
}

function queryString(query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) params.append(name, one);
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

export async function api(path, { method = "GET", query, body } = {}) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path + queryString(query), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, `the API did not answer (${err.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    if (response.status === 401) window.dispatchEvent(new CustomEvent("switchyard:unauthorized"));
    throw new ApiError(response.status, data && data.detail !== undefined ? data.detail : data);
  }
  return data;
}

export function errorText(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const detail = err.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return `${err.status || ""} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`.trim();
}

// Who the key belongs to: {role, keyId, label}. The API has no "who am I" route in the
// contract, so a route meant for it is asked first (GET /api-keys/me, when a release
// has it), then the role is learnt from what the key may do, with requests that change
// nothing: GET /audit answers admins only; a dry-run bulk cancel of no job answers 403
// to a viewer. Learnt once per tab and key.
export async function identify() {
  const cached = sessionStorage.getItem(IDENTITY_SLOT);
  if (cached) return JSON.parse(cached);
  await api("/stats"); // a bad key: 401 here, nothing else asked
  let identity = null;
  try {
    const me = await api("/api-keys/me");
    if (me && me.role) identity = { role: me.role, keyId: me.id || null, label: me.label || null };
  } catch (err) {
    if (err.status === 401) throw err;
  }
  if (!identity) identity = { role: await probeRole(), keyId: null, label: null };
  sessionStorage.setItem(IDENTITY_SLOT, JSON.stringify(identity));
  return identity;
}

const NO_JOB = "00000000-0000-0000-0000-000000000000"; // matches no job

async function probeRole() {
  try {
    await api("/audit", { query: { limit: 1 } });
    return "admin";
  } catch (err) {
    if (err.status !== 403) throw err;
  }
  try {
    await api("/jobs/bulk", {
      method: "POST",
      body: { action: "cancel", filter: { ids: [NO_JOB] }, dry_run: true },
    });
    return "submitter";
  } catch (err) {
    if (err.status === 403) return "viewer";
    if (err.status === 404 || err.status === 405) return probeRoleBySubmit();
    return "submitter"; // 422: it was let in, and refused only the (empty) input
  }
}

async function probeRoleBySubmit() {
  // Without POST /jobs/bulk: an empty submission is refused 403 to a viewer before its
  // body is read, 422 (no job made) to a submitter.
  try {
    await api("/jobs", { method: "POST", body: {} });
    return "submitter";
  } catch (err) {
    return err.status === 403 ? "viewer" : "submitter";
  }
}

// May this identity act on (cancel, retry) this job? The API decides in the end
// (403); this only hides buttons that could not work.
export function mayActOn(identity, job) {
  if (!identity) return false;
  if (identity.role === "admin") return true;
  if (identity.role !== "submitter") return false;
  // Without its key id (no /api-keys/me) a submitter sees the buttons and the API
  // answers 403 on other keys' jobs.
  return !identity.keyId || !job || job.created_by === identity.keyId;
}

export function mayBulk(identity) {
  return Boolean(identity) && (identity.role === "admin" || identity.role === "submitter");
}
