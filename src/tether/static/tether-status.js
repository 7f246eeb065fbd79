// <tether-status>, <tether-banner> and stale marking for a TetherClient. No dependencies.
//
//   import { connect } from "/tether.js";
//   import { bindStale } from "/tether-status.js";   // also defines the two elements
//   const client = connect(url);
//   document.querySelector("tether-status").client = client;
//   document.querySelector("tether-banner").client = client;
//   bindStale(client);   // [data-tether-topic] elements get data-stale while their topic is not live
//
// <tether-banner debounce="5" message="Live updates paused, attempting to reconnect…">: the
// banner's own words (the default: "Live updates paused — reconnecting in N s…"), with the
// retry countdown appended after them ("Next attempt in N s.").
//
// Both elements reflect the client's state in a `state` attribute (connected, connecting,
// reconnecting, disconnected, failed, closed) so CSS and tests can read it.

const COLORS = {
  connected: "#16a34a",
  connecting: "#eab308",
  reconnecting: "#eab308",
  disconnected: "#9ca3af",
  failed: "#dc2626",
  closed: "#9ca3af",
};
const LABELS = {
  connected: "Live",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  disconnected: "Disconnected",
  failed: "Connection failed",
  closed: "Closed",
};

function seconds(value) {
  return value === null || value === undefined ? null : Math.max(0, Math.ceil(value));
}

// Shared plumbing: attach to a client, re-render on its events and on a 250 ms tick
// while a countdown is showing.
class ClientBound extends HTMLElement {
  constructor() {
    super();
    this._client = null;
    this._off = [];
    this._tick = null;
    this.attachShadow({ mode: "open" });
  }
  get client() {
    return this._client;
  }
  set client(client) {
    for (const off of this._off) off();
    this._off = [];
    this._client = client;
    if (client) {
      for (const type of ["statechange", "retry", "reconnect", "resync"]) {
        const fn = () => this._update();
        client.addEventListener(type, fn);
        this._off.push(() => client.removeEventListener(type, fn));
      }
    }
    this._update();
  }
  connectedCallback() {
    this._update();
  }
  disconnectedCallback() {
    clearInterval(this._tick);
    this._tick = null;
  }
  _ticking(on) {
    if (on && this._tick === null) this._tick = setInterval(() => this._update(), 250);
    if (!on && this._tick !== null) {
      clearInterval(this._tick);
      this._tick = null;
    }
  }
}

// show="degraded": hidden while connected, shown in every other state, and always in debug
// mode (the client's `debug`: its option, or ?debug=true on the page): an overlay stays clean while
// healthy. The default (show="always") is always visible.
export class TetherStatus extends ClientBound {
  static get observedAttributes() {
    return ["label", "show"];
  }
  attributeChangedCallback() {
    this._update();
  }
  _update() {
    const client = this._client;
    const state = client ? client.state : "disconnected";
    const m = client ? client.metrics() : null;
    this.setAttribute("state", state);
    const retryIn = m ? seconds(m.nextRetryIn) : null;
    let tip = LABELS[state];
    if ((state === "reconnecting" || state === "connecting") && retryIn !== null) {
      tip = `Reconnecting — next attempt in ${retryIn} s`;
    } else if (state === "failed") {
      tip = `Connection failed${m && m.lastError ? `: ${m.lastError}` : ""}. Retrying automatically${
        retryIn !== null ? ` in ${retryIn} s` : ""
      }.`;
    }
    this._ticking(state === "reconnecting" || state === "connecting" || state === "failed");
    const hide = this.getAttribute("show") === "degraded" && state === "connected" && !client.debug;
    this.toggleAttribute("hidden", hide);
    const showLabel = this.hasAttribute("label");
    const text = this.getAttribute("label") || LABELS[state];
    this.shadowRoot.innerHTML = `
      <style>
        :host { display: inline-flex; align-items: center; gap: 6px; font: inherit; }
        :host([hidden]) { display: none; }
        .dot { width: 8px; height: 8px; border-radius: 50%; background: ${COLORS[state]}; flex: none; }
        :host([state="connecting"]) .dot, :host([state="reconnecting"]) .dot {
          animation: pulse 1s ease-in-out infinite; }
        @keyframes pulse { 50% { opacity: 0.35; transform: scale(0.8); } }
        button { font: inherit; font-size: 0.85em; padding: 1px 8px; border-radius: 4px;
          border: 1px solid #dc2626; background: #fff; color: #b91c1c; cursor: pointer; }
        button:focus-visible { outline: 2px solid #2563eb; outline-offset: 2px; }
        .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
      </style>
      <span class="dot" part="dot" aria-hidden="true"></span>
      ${showLabel ? `<span part="label">${escapeHtml(state === "connected" ? text : LABELS[state])}</span>`
                  : `<span class="sr">${escapeHtml(LABELS[state])}</span>`}
      ${state === "failed" ? `<button type="button" part="retry">Retry</button>` : ""}`;
    this.setAttribute("title", tip);
    this.setAttribute("role", "status");
    this.setAttribute("aria-label", tip);
    const button = this.shadowRoot.querySelector("button");
    if (button) button.addEventListener("click", () => this._client && this._client.reconnect());
  }
}

export class TetherBanner extends ClientBound {
  // Shown only when an outage outlasts `debounce` seconds (default 5), so a blip that
  // heals by itself never flashes a banner; hidden again the moment the link is back.
  // `message` replaces the default wording; the countdown follows it (part="countdown").
  static get observedAttributes() {
    return ["debounce", "message"];
  }
  constructor() {
    super();
    this._downSince = null;
    this._debounceTimer = null;
  }
  attributeChangedCallback() {
    this._update();
  }
  get debounce() {
    const v = parseFloat(this.getAttribute("debounce"));
    return Number.isFinite(v) && v >= 0 ? v : 5;
  }
  _update() {
    const client = this._client;
    const state = client ? client.state : "disconnected";
    this.setAttribute("state", state);
    const down = client && (state === "reconnecting" || state === "failed" || state === "connecting")
      && client.metrics().successfulConnects + client.metrics().failedReconnects > 0;
    if (!down) {
      this._downSince = null;
      clearTimeout(this._debounceTimer);
      this._debounceTimer = null;
      this._ticking(false);
      this._render(false);
      return;
    }
    const t = performance.now() / 1000;
    if (this._downSince === null) this._downSince = t;
    const elapsed = t - this._downSince;
    if (elapsed < this.debounce) {
      if (this._debounceTimer === null) {
        this._debounceTimer = setTimeout(() => {
          this._debounceTimer = null;
          this._update();
        }, (this.debounce - elapsed) * 1000 + 10);
      }
      this._render(false);
      return;
    }
    this._ticking(true);
    this._render(true);
  }
  _render(visible) {
    this.toggleAttribute("visible", visible);
    if (!visible) {
      this.shadowRoot.innerHTML = `<div role="status" aria-live="polite"></div>`;
      return;
    }
    const m = this._client.metrics();
    const retryIn = seconds(m.nextRetryIn);
    const failed = this._client.state === "failed";
    const waiting = retryIn !== null && retryIn > 0;
    const message = this.getAttribute("message");
    let text = "Live updates paused — ";
    let countdown = "";
    if (message) {
      text = message;
      if (!failed) countdown = waiting ? `Next attempt in ${retryIn} s.` : "Trying now…";
      else countdown = `Connection failed${retryIn !== null ? `; next attempt in ${retryIn} s` : ""}.`;
    } else if (!failed) {
      text += waiting ? `reconnecting in ${retryIn} s…` : "reconnecting…";
    } else {
      text += `connection failed${retryIn !== null ? `; trying again in ${retryIn} s` : ""}.`;
    }
    this.shadowRoot.innerHTML = `
      <style>
        .bar { display: flex; align-items: center; justify-content: center; gap: 12px;
          padding: 8px 16px; background: ${failed ? "#fef2f2" : "#fefce8"};
          color: ${failed ? "#991b1b" : "#713f12"};
          border-bottom: 1px solid ${failed ? "#fecaca" : "#fde68a"}; font: inherit; }
        button { font: inherit; padding: 2px 10px; border-radius: 4px; cursor: pointer;
          border: 1px solid currentColor; background: transparent; color: inherit; }
        button:focus-visible { outline: 2px solid #2563eb; outline-offset: 2px; }
      </style>
      <div class="bar" role="status" aria-live="polite" part="bar">
        <span part="text">${escapeHtml(text)}</span>${
          countdown ? ` <span part="countdown">${escapeHtml(countdown)}</span>` : ""}
        <button type="button" part="retry">Retry now</button>
      </div>`;
    this.shadowRoot.querySelector("button").addEventListener("click", () => this._client.reconnect());
  }
}

// Mark elements bound to a topic (data-tether-topic="odds") stale while it is not live:
// attribute data-stale and class tether-stale, removed on recovery or resync.
export function bindStale(client, root = document) {
  const apply = (topic, live) => {
    for (const el of root.querySelectorAll(`[data-tether-topic="${CSS.escape(topic)}"]`)) {
      el.toggleAttribute("data-stale", !live);
      el.classList.toggle("tether-stale", !live);
    }
  };
  const onTopic = (ev) => apply(ev.detail.topic, ev.detail.live);
  const onAny = () => {
    const topics = new Set([...root.querySelectorAll("[data-tether-topic]")].map((el) => el.dataset.tetherTopic));
    for (const topic of topics) apply(topic, client.isLive(topic));
  };
  client.addEventListener("topicstate", onTopic);
  client.addEventListener("statechange", onAny);
  onAny();
  return () => {
    client.removeEventListener("topicstate", onTopic);
    client.removeEventListener("statechange", onAny);
  };
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

if (!customElements.get("tether-status")) customElements.define("tether-status", TetherStatus);
if (!customElements.get("tether-banner")) customElements.define("tether-banner", TetherBanner);
