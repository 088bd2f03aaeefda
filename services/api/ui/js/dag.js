// DAG: a job's dependencies (followed recursively by their ids) and its dependents.
//
// The API has no "dependents of" filter, so dependents are found by reading the jobs
// created from one second before the root onwards (newest first, at most SCAN_LIMIT)
// and keeping those that depend, directly or not, on a node of the graph. A batch's
// jobs share their creation time, so a batch is drawn whole. Nodes are coloured by
// status and change live.

import { api, errorText } from "./api.js";
import { fmtTime, h, notice, shortId, svg, setChildren } from "./dom.js";
import { LiveStream, latestStates } from "./live.js";

const MAX_NODES = 300;
const SCAN_LIMIT = 2000;

export function dagPage(main, rootId) {
  const nodes = new Map(); // id → job
  const info = h("p", { class: "muted", "aria-live": "polite" }, "Reading the graph…");
  const host = h("div", { class: "dag-host" });
  const legend = h("p", { class: "legend" });
  main.append(h("h1", {}, "Dependency graph of ", h("a", { href: `#/job/${rootId}`, class: "mono" }, shortId(rootId))),
    info, legend, host);
  let stream = null;
  let closed = false;

  async function build() {
    const root = await api(`/jobs/${rootId}`);
    nodes.set(root.id, root);
    // Dependencies, breadth first.
    let frontier = [...root.depends_on];
    while (frontier.length && nodes.size < MAX_NODES) {
      const batch = frontier.filter((id) => !nodes.has(id)).slice(0, 20);
      frontier = frontier.filter((id) => !batch.includes(id) && !nodes.has(id));
      const found = await Promise.all(batch.map((id) => api(`/jobs/${id}`).catch(() => null)));
      for (const job of found) {
        if (!job) continue;
        nodes.set(job.id, job);
        frontier.push(...job.depends_on.filter((d) => !nodes.has(d)));
      }
    }
    // Dependents: among the jobs created since just before the root.
    const since = new Date(Date.parse(root.created_at) - 1000).toISOString();
    const later = [];
    let cursor;
    let scanned = 0;
    do {
      const page = await api("/jobs", { query: { created_after: since, limit: 500, cursor } });
      later.push(...page.items);
      scanned += page.items.length;
      cursor = page.next_cursor;
    } while (cursor && scanned < SCAN_LIMIT);
    let grew = true;
    while (grew && nodes.size < MAX_NODES) {
      grew = false;
      for (const job of later) {
        if (!nodes.has(job.id) && job.depends_on.some((d) => nodes.has(d) && isAbove(d, job))) {
          nodes.set(job.id, job);
          grew = true;
        }
      }
    }
    info.textContent = `${nodes.size} job${nodes.size === 1 ? "" : "s"}: dependencies followed `
      + `by id; dependents found among the ${scanned} jobs created since ${fmtTime(since)}`
      + `${cursor ? " (more exist: the scan stopped there)" : ""}. Click a node to open the job.`;
  }

  // Only dependents of the root's side of the graph: a dependent of a mere dependency
  // of the root (a sibling) belongs to the picture only when it is also below the root.
  function isAbove(depId) {
    return depId === rootId || descendsFromRoot(depId);
  }

  function descendsFromRoot(id, seen = new Set()) {
    if (id === rootId) return true;
    if (seen.has(id)) return false;
    seen.add(id);
    const job = nodes.get(id);
    return Boolean(job) && job.depends_on.some((d) => descendsFromRoot(d, seen));
  }

  function render() {
    const layer = new Map();
    const depth = (id, trail = new Set()) => {
      if (layer.has(id)) return layer.get(id);
      if (trail.has(id)) return 0;
      trail.add(id);
      const job = nodes.get(id);
      const deps = job.depends_on.filter((d) => nodes.has(d));
      const value = deps.length ? 1 + Math.max(...deps.map((d) => depth(d, trail))) : 0;
      layer.set(id, value);
      return value;
    };
    for (const id of nodes.keys()) depth(id);
    const columns = [];
    for (const [id, l] of layer) (columns[l] ||= []).push(id);
    columns.forEach((col) => col.sort((a, b) => nodes.get(a).created_at.localeCompare(nodes.get(b).created_at)));
    const NODE_W = 170;
    const NODE_H = 44;
    const GAP_X = 70;
    const GAP_Y = 16;
    const pos = new Map();
    columns.forEach((col, c) => col.forEach((id, r) => pos.set(id, {
      x: 10 + c * (NODE_W + GAP_X), y: 10 + r * (NODE_H + GAP_Y),
    })));
    const width = 20 + columns.length * (NODE_W + GAP_X) - GAP_X;
    const height = 20 + Math.max(...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
    const edges = [];
    for (const [id, job] of nodes) {
      for (const dep of job.depends_on) {
        if (!pos.has(dep)) continue;
        const a = pos.get(dep);
        const b = pos.get(id);
        const x1 = a.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const x2 = b.x;
        const y2 = b.y + NODE_H / 2;
        const mid = (x1 + x2) / 2;
        edges.push(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 6},${y2}`,
          class: "edge", "marker-end": "url(#arrow)" }));
      }
    }
    const boxes = [...nodes.values()].map((job) => {
      const p = pos.get(job.id);
      const label = (job.name || job.type).slice(0, 22);
      const link = svg("a", { href: `#/job/${job.id}`, class: "node", "data-job-id": job.id,
        "data-status": job.status, "aria-label": `${label}: ${job.status}` },
      svg("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6,
        class: `node-box status-${job.status}${job.id === rootId ? " root" : ""}` }),
      svg("text", { x: p.x + 8, y: p.y + 18, class: "node-title" }, label),
      svg("text", { x: p.x + 8, y: p.y + 35, class: "node-sub" }, `${shortId(job.id)} · ${job.status}`));
      return link;
    });
    setChildren(host, svg("svg", {
      viewBox: `0 0 ${Math.max(width, 200)} ${Math.max(height, 60)}`, width: Math.max(width, 200),
      height: Math.max(height, 60), class: "dag", role: "group", "aria-label": "Dependency graph",
    },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))),
    edges, boxes));
    const counts = {};
    for (const job of nodes.values()) counts[job.status] = (counts[job.status] || 0) + 1;
    setChildren(legend, ...Object.entries(counts).map(([s, n]) => h("span", { class: `badge status-${s}` }, `${s} ${n}`)));
  }

  async function reread() {
    const fresh = await Promise.all([...nodes.keys()].map((id) => api(`/jobs/${id}`).catch(() => null)));
    for (const job of fresh) if (job) nodes.set(job.id, job);
    render();
  }

  build().then(() => {
    if (closed) return;
    render();
    // Up to 100 nodes the socket carries only theirs; a bigger graph (a long URL)
    // takes every event and keeps its own.
    const query = nodes.size <= 100 ? { job_id: [...nodes.keys()] } : {};
    stream = new LiveStream(query, (events, { dropped }) => {
      if (dropped) {
        reread();
        return;
      }
      let changed = false;
      for (const [id, ev] of latestStates(events)) {
        const job = nodes.get(id);
        if (job && job.status !== ev.data.new_status) {
          job.status = ev.data.new_status;
          changed = true;
        }
      }
      if (changed) render();
    }, { onReconnect: reread });
  }).catch((err) => {
    info.textContent = "";
    notice(`Graph: ${errorText(err)}`);
  });
  return () => {
    closed = true;
    if (stream) stream.close();
  };
}
