// Live events from WS /jobs/stream, coalesced.
//
// A burst of 500 events/s must not re-render the page 500 times: messages are only
// pushed into a buffer as they arrive; at most every FLUSH_MS the buffer is handed to
// the page in one call, inside requestAnimationFrame (so a hidden tab does no work, and
// the DOM is touched once per frame). The socket is read as fast as it sends, so the
// API never waits on this tab (a slow client would only get "dropped" notices, which
// pages answer by re-reading over REST). A closed socket reconnects with backoff.

import { getKey } from "./api.js";

const FLUSH_MS = 250;
const MAX_BUFFERED = 20_000; // beyond: keep the newest, count the rest as dropped
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const POLICY_VIOLATION = 1008;

const indicator = () => document.getElementById("live");
// What every stream of this tab received and how often it was applied: shown on
// nothing, read by the browser test (and by a curious user in the console).
export const liveCounters = { events: 0, flushes: 0 };
const openStreams = new Set();

function showState() {
  const el = indicator();
  if (!el) return;
  if (openStreams.size === 0) {
    el.textContent = "";
    el.className = "live";
    return;
  }
  const connected = [...openStreams].every((s) => s.connected);
  el.textContent = connected ? "live" : "reconnecting…";
  el.className = `live ${connected ? "on" : "off"}`;
}

export class LiveStream {
  // query: {job_id: [...], type, status: [...], replay}; onEvents(events, {dropped})
  constructor(query, onEvents, { onReconnect } = {}) {
    this.query = query;
    this.onEvents = onEvents;
    this.onReconnect = onReconnect;
    this.buffer = [];
    this.dropped = 0;
    this.timer = null;
    this.frame = null;
    this.lastFlush = 0;
    this.failures = 0;
    this.closed = false;
    this.connected = false;
    this.everOpened = false;
    openStreams.add(this);
    this.connect();
  }

  url() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(this.query || {})) {
      if (value === undefined || value === null || value === "") continue;
      for (const one of Array.isArray(value) ? value : [value]) params.append(name, one);
    }
    // A browser's WebSocket cannot send an Authorization header: the stream takes the
    // key as ?token= (the API's log lines show it as token=[redacted]).
    const key = getKey();
    if (key) params.set("token", key);
    return `${scheme}//${window.location.host}/jobs/stream?${params}`;
  }

  connect() {
    if (this.closed) return;
    const socket = new WebSocket(this.url());
    this.socket = socket;
    socket.onopen = () => {
      this.connected = true;
      showState();
    };
    socket.onmessage = (message) => {
      this.failures = 0;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (this.buffer.length >= MAX_BUFFERED) {
        this.buffer.shift();
        this.dropped += 1;
      }
      this.buffer.push(event);
      liveCounters.events += 1;
      this.schedule();
    };
    socket.onclose = (close) => {
      this.connected = false;
      showState();
      if (this.closed) return;
      if (close.code === POLICY_VIOLATION && /key/i.test(close.reason || "")) {
        window.dispatchEvent(new CustomEvent("switchyard:unauthorized"));
        return;
      }
      const wait = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      this.failures += 1;
      this.retryTimer = setTimeout(() => {
        if (this.closed) return;
        // Events may have been missed while away: the page re-reads over REST.
        if (this.onReconnect) this.onReconnect();
        this.connect();
      }, wait * (0.8 + Math.random() * 0.4));
    };
  }

  schedule() {
    if (this.timer !== null || this.frame !== null) return;
    const wait = Math.max(0, FLUSH_MS - (performance.now() - this.lastFlush));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.frame = requestAnimationFrame(() => this.flush());
    }, wait);
  }

  flush() {
    this.frame = null;
    this.lastFlush = performance.now();
    if (this.closed || this.buffer.length === 0) return;
    const events = this.buffer;
    this.buffer = [];
    liveCounters.flushes += 1;
    let dropped = this.dropped;
    this.dropped = 0;
    for (const ev of events) if (ev.event === "dropped" && !ev.data?.replay) dropped += 1;
    try {
      this.onEvents(events, { dropped });
    } catch (err) {
      console.error("switchyard: a live update failed", err);
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.retryTimer);
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    openStreams.delete(this);
    if (this.socket) this.socket.close(1000);
    showState();
  }
}

// The latest state per job in a batch of events (a burst may move a job several times).
export function latestStates(events) {
  const states = new Map();
  for (const ev of events) if (ev.event === "state" && ev.job_id) states.set(ev.job_id, ev);
  return states;
}
