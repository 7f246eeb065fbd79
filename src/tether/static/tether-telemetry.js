// Tether browser client: optional telemetry (docs/protocol.md, POST /telemetry).
//
// With `telemetry: true` (the hub's /telemetry) or a URL, a client records its
// lifecycle events (state changes, reconnects, resyncs, errors, heartbeat failures) in a
// bounded buffer and posts them with a metrics snapshot every `telemetryInterval`
// seconds, and with sendBeacon when the page goes. Best-effort: a batch that cannot be
// posted for a network reason waits for the next one (the buffer still bounded); one
// the endpoint refuses is dropped. Nothing here ever delays or fails the client itself.

// Events held between posts: minutes of a flapping connection. Past it the oldest go,
// and the report says how many (`dropped`), so loss here is not silent either.
const MAX_EVENTS = 100;

/** The hub's telemetry URL beside its WebSocket URL: ws://host/rt/ws -> http://host/rt/ws/telemetry. */
export function telemetryUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.replace(/\/$/, "") + "/telemetry"; // beside the socket, like the fallback
  url.search = "";
  return url;
}

export class Telemetry {
  constructor(url, { interval = 30, metrics = () => null } = {}) {
    this.url = String(url);
    this.events = [];
    this.dropped = 0;
    this.failures = 0; // posts that did not get through (for debugging the telemetry itself)
    this._metrics = metrics;
    this._timer = setInterval(() => this.flush(), interval * 1000);
  }

  record(kind, detail = {}) {
    if (this.events.length >= MAX_EVENTS) {
      this.events.shift();
      this.dropped += 1;
    }
    this.events.push({ kind, at: Date.now(), ...detail });
  }

  _take() {
    const report = { events: this.events, dropped: this.dropped, metrics: safe(this._metrics) };
    this.events = [];
    this.dropped = 0;
    return report;
  }

  // As text/plain: a cross-origin hub needs no CORS preflight, and sendBeacon sends that.
  async flush({ beacon = false } = {}) {
    if (this.events.length === 0 && this.dropped === 0) return;
    const report = this._take();
    const body = JSON.stringify(report);
    if (beacon && typeof navigator !== "undefined" && navigator.sendBeacon) {
      if (!navigator.sendBeacon(this.url, body)) this.failures += 1;
      return;
    }
    try {
      const response = await fetch(this.url, { method: "POST", body, keepalive: true, headers: { "Content-Type": "text/plain" } });
      if (!response.ok) this.failures += 1; // refused: dropped, never retried in a loop
    } catch {
      this.failures += 1;
      this._putBack(report); // the network: try again with the next batch
    }
  }

  _putBack(report) {
    const events = [...report.events, ...this.events];
    const over = Math.max(0, events.length - MAX_EVENTS);
    this.events = events.slice(over);
    this.dropped += report.dropped + over;
  }

  stop() {
    clearInterval(this._timer);
    this.flush({ beacon: true });
  }
}

function safe(fn) {
  try {
    return fn();
  } catch {
    return null;
  }
}
