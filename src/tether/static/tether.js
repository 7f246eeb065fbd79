// Tether browser client — protocol v1 (docs/protocol.md). Dependency-free ES modules.
//
//   import { connect } from "/tether.js";
//   const client = connect("ws://127.0.0.1:8765/ws", { onResync: (topic, missing) => refetch(topic) });
//   client.subscribe("prices", (msg) => render(msg.data));
//   client.subscribe("odds", (msg) => render(msg.data), { rewind: 1 });  // current value first
//   await client.send("orders.create", { sku: "tea" });   // acked once, even across retries
//
// Same protocol, state machine, defaults, callbacks and metrics as the Python client
// (tether.client). Options use the Python names in camelCase and the same units
// (seconds); docs/configuration.md lists them with the reason for each default.
//
// DOM events (client.addEventListener, each with a `detail`): `statechange` {from, to};
// `connected` {sessionId, reconnect} on every welcome (sessionId is the hub's id for the
// connection, as in its logs); `disconnected` {code, reason, wasConnected} on every close
// of the socket, a refused attempt's too (code 1008: the token was refused); `reconnect`
// {} after a drop, never on the first connect;
// `resync` {topic, missing}; `message` (the message); `retry` {in} (seconds until the
// next attempt); `topicstate` {topic, live}.
//
// Theory of operation
// -------------------
// Three modules, no build step. tether-constants.js is generated from the Python source
// (defaults, codes, the transition table, the hub's frame schema). tether-core.js holds
// every decision without I/O: `Session` (frames in, events and frames out), `Lifecycle`
// (attempts, backoff, circuit, close codes, counters) and `StateMachine`, twins of
// tether/client/session.py, lifecycle.py and state.py, checked against the same golden
// vectors (tests/vectors/). This module is the driver: it owns the WebSocket, the timers
// and the browser signals (online/offline, tab visibility), follows the loop in
// tether/client/lifecycle.py's theory of operation, and reports through callbacks and
// DOM events. It re-exports both modules, so `import ... from "/tether.js"` is all a page needs.

import {
  CLIENT_ERROR,
  CloseCode,
  DEFAULTS,
  INBOX_SIZE,
  PROTOCOL_VERSION,
  State,
  SUBPROTOCOL,
  TOKEN_SUBPROTOCOL_PREFIX,
} from "./tether-constants.js";
import {
  ClientClosed,
  Lifecycle,
  MessageDropped,
  MessageExpired,
  MessageTooBig,
  NackError,
  Outbox,
  Session,
  checkJitter,
  failure,
  handshakeClosed,
  refreshDelay,
  tokenClaims,
} from "./tether-core.js";
import { SseSocket } from "./tether-sse.js";
import { Telemetry, telemetryUrl } from "./tether-telemetry.js";
import { sharedWebSocket, sharingSupport } from "./tether-shared.js";

export * from "./tether-constants.js";
export * from "./tether-core.js";
export { sharedWebSocket, sharingSupport } from "./tether-shared.js";
export { SseSocket, eventsUrl } from "./tether-sse.js";
export { Telemetry, telemetryUrl } from "./tether-telemetry.js";


// --- the driver ----------------------------------------------------------------------------

const now = () => performance.now() / 1000;
const CURSOR_KEY = (url) => `tether:cursors:${url}`;
// The hub URLs whose cursors a tab keeps, most recently saved last. A page that talks to
// a new URL each time (a dev server on a random port) would otherwise add an entry per
// run; 8 covers every hub one dashboard plausibly uses at once.
const CURSOR_INDEX = "tether:cursors";
// Options of the browser client only (the rest are the Python client's, in DEFAULTS).
export const BROWSER_DEFAULTS = Object.freeze({
  // "auto": WebSocket, and the HTTP fallback (server-sent events and POST) when upgrades
  // are refused; "websocket" / "sse" force one (docs/protocol.md, Fallback transport).
  transport: "auto",
  // WebSocket attempts that fail in a row before "auto" falls back: with the default
  // backoff about 7 s of a network that refuses upgrades, yet a hub restart that fails
  // one or two attempts does not leave WebSocket for nothing.
  fallbackAfter: 3,
  // While on the fallback, a WebSocket is tried this often (s), and used again (through
  // a resume: no gap) as soon as one opens. One cheap handshake per half minute.
  wsProbeInterval: 30,
  // Lifecycle events and metrics posted to the hub (true: its /telemetry) or a URL;
  // off by default (the hub's client_telemetry is off too). docs/protocol.md.
  telemetry: null,
  // How often (s) a telemetry batch goes: a flapping connection shows within a minute,
  // and a steady one costs one small POST per half minute at most (none when idle).
  telemetryInterval: 30,
});
const TRANSPORTS = new Set(["auto", "websocket", "sse"]);
// Close codes only a hub sends: an attempt that ends with one reached the hub, so it
// is no sign of a network that refuses WebSocket upgrades (and no reason to fall back).
const HUB_ANSWERED = new Set([
  CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG,
  CloseCode.INTERNAL_ERROR, CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER, CloseCode.SLOW_CONSUMER,
]);
const MAX_CURSOR_SETS = 8;
// Deliveries wait in an inbox of INBOX_SIZE, in order, while an async handler runs.
// Browsers offer no read backpressure on a WebSocket, so that is a hard bound instead: past
// it the connection is dropped and resumed from the cursor (the hub replays; nothing is lost).

export class TetherClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    const known = new Set([
      ...Object.keys(DEFAULTS),
      "onStateChange", "onReconnect", "onResync", "onError",
      ...Object.keys(BROWSER_DEFAULTS),
      "persistCursors", "storage", "debug", "helpers", "WebSocket", "token", "getToken", "shared",
    ]);
    for (const key of Object.keys(options)) {
      if (!known.has(key)) throw new TypeError(`unknown Tether option '${key}'`);
    }
    this.url = url;
    this.config = Object.freeze({ ...DEFAULTS, ...pick(options, Object.keys(DEFAULTS)) });
    const c = this.config;
    checkJitter({ jitter: c.jitter, ratio: c.jitterRatio, seconds: c.jitterSeconds });
    const b = { ...BROWSER_DEFAULTS, ...pick(options, Object.keys(BROWSER_DEFAULTS)) };
    if (!TRANSPORTS.has(b.transport)) throw new TypeError(`transport must be auto, websocket or sse, not '${b.transport}'`);
    this.transport = b.transport;
    this.fallbackAfter = b.fallbackAfter;
    this.wsProbeInterval = b.wsProbeInterval;
    this._wsFailures = 0; // WebSocket attempts failed in a row (for transport "auto")
    this._via = null; // the transport of the current (or last) attempt
    this._wsProbeTimer = null;
    this.telemetry = null;
    if (b.telemetry) {
      const target = b.telemetry === true ? telemetryUrl(url) : b.telemetry;
      this.telemetry = new Telemetry(target, { interval: b.telemetryInterval, metrics: () => this.metrics() });
    }
    this.onStateChange = options.onStateChange || null;
    this.onReconnect = options.onReconnect || null;
    this.onResync = options.onResync || null;
    this.onError = options.onError || null;
    // shared: one hub connection for every same-origin tab (tether-shared.js); true picks
    // a SharedWorker where the browser has one, else a leader tab; "worker" / "locks" force.
    this.shared = options.shared ? (options.shared === true ? sharingSupport() : options.shared) : null;
    this._WebSocket = options.WebSocket || (this.shared ? sharedWebSocket(this.shared) : globalThis.WebSocket);
    // The token travels in the subprotocol list: the only header a browser can set, and
    // not part of the URL (so not in access logs). getToken() supplies fresh ones.
    this._token = options.token || null;
    this.getToken = options.getToken || null;
    this._refreshTimer = null;
    this._storage = options.persistCursors === false ? null : options.storage || safeSessionStorage();
    this._life = new Lifecycle(this.config, { canRefresh: !!this.getToken });
    this._life.machine.listen((from, to) => this._stateChanged(from, to));
    this._session = new Session({
      outbox: new Outbox(this.config.outboxSize, this.config.outboxPolicy),
    });
    this._handlers = new Map();
    this._inbox = [];
    this._draining = false;
    this._ws = null;
    this._timer = null;
    this._nextAttemptAt = null;
    this._heartbeatTimer = null;
    this._expiryTimer = null;
    this._saveTimer = null;
    this._opening = false;
    this._started = false;
    // debug: true (helpers at window.tether), a name (helpers at window[name]) or false;
    // left out, the page decides: ?debug=true turns it on, as the overlays' teams expect.
    const debug = options.debug === undefined ? pageDebug() : options.debug;
    /** Whether this client runs in debug mode (verbose logs, window helpers, indicator shown). */
    this.debug = !!debug;
    this._verbose = this.debug;
    this._clientError = null; // the last bug inside the client, shown as lastError
    this._onOnline = () => this._networkBack();
    this._onOffline = () => this._networkGone();
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._networkBack();
    };
    this._onPageHide = () => {
      this._saveCursors();
      if (this.telemetry) this.telemetry.flush({ beacon: true });
    };
    this._stored = this._loadCursors();
    if (debug) this._installDebug(debug);
    // helpers: a name: the same helpers at window[name] in every mode, for pages (an
    // overlay) that are driven from the console or a test while not in debug mode.
    if (options.helpers) this._installDebug(options.helpers);
  }

  // --- public API ------------------------------------------------------------------------

  get state() {
    return this._life.state;
  }

  /** The hub's id for the current connection (`welcome.session`, as in its logs); null while offline. */
  get sessionId() {
    return this._session.sessionId;
  }

  metrics() {
    const c = this._session.counters;
    const t = now();
    return {
      state: this.state,
      reconnectAttempts: this._life.attempts,
      totalReconnects: this._life.totalReconnects,
      failedReconnects: this._life.failedReconnects,
      successfulConnects: this._life.successfulConnects,
      heartbeatFailures: this._life.heartbeatFailures,
      circuitBreakerTrips: this._life.circuitTrips,
      lastHeartbeat: c.lastHeartbeat === null ? null : Date.now() - (t - c.lastHeartbeat) * 1000,
      isCircuitOpen: this.state === State.FAILED,
      messagesReceived: c.messagesReceived,
      messagesRecovered: c.messagesRecovered,
      duplicatesDropped: c.duplicatesDropped,
      resyncs: c.resyncs,
      undeliverable: c.undeliverable,
      outboxSize: this._session.outbox.size,
      transport: this._via,
      rtt: c.rtt,
      nextRetryIn: this._nextAttemptAt === null ? null : Math.max(0, this._nextAttemptAt - t),
      lastError: this._clientError || this._life.lastError,
    };
  }

  cursor(topic) {
    return this._session.appCursor(topic);
  }

  isLive(topic) {
    return this._session.isLive(topic);
  }

  start() {
    if (this._started) return this;
    this._started = true;
    this._life.start();
    if (typeof window !== "undefined") {
      window.addEventListener("online", this._onOnline);
      window.addEventListener("offline", this._onOffline);
      window.addEventListener("pagehide", this._onPageHide);
      document.addEventListener("visibilitychange", this._onVisible);
    }
    this._attempt();
    return this;
  }

  subscribe(topic, handler, { rewind = 0 } = {}) {
    if (!Number.isSafeInteger(rewind) || rewind < 0) throw new RangeError(`rewind must be a whole number >= 0, not ${rewind}`);
    this._handlers.set(topic, handler);
    // A rewind rebuilds the page's state from the topic's last messages: a cursor stored by
    // an earlier page (whose state is gone) is not used for it. Reconnects still resume.
    const stored = rewind ? null : this._stored[topic] || null;
    const frame = this._session.subscribe(topic, stored, rewind);
    if (frame) this._pace([frame]);
    this._emit("topicstate", { topic, live: this.isLive(topic) });
    return () => this.unsubscribe(topic);
  }

  unsubscribe(topic) {
    this._handlers.delete(topic);
    const frame = this._session.unsubscribe(topic);
    if (frame) this._pace([frame]);
  }

  send(event, data, { key = null, ttl = null, waitAck = true } = {}) {
    const item = this._session.makeSend(event, data, this._expiry(ttl), key);
    return this._submit(item, waitAck);
  }

  publish(topic, data, { ttl = null, waitAck = true } = {}) {
    const item = this._session.makePublish(topic, data, this._expiry(ttl));
    return this._submit(item, waitAck);
  }

  reconnect() {
    if (this.state === State.CLOSED) throw new ClientClosed("client is closed");
    this._life.requestRetry();
    this._wsFailures = 0; // a retry asked for by hand tries WebSocket first
    if (this._ws) this._drop(this._ws, "reconnect requested");
    else if (!this._opening) this._schedule(0);
  }

  disconnect() {
    // Drop the connection as if the network failed (for testing recovery).
    if (this._ws) this._drop(this._ws, "disconnected by the app");
  }

  close() {
    if (this.state === State.CLOSED) return;
    this._life.close();
    clearTimeout(this._timer);
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._expiryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._wsProbeTimer);
    if (this.telemetry) this.telemetry.stop();
    this._saveCursors();
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this._onOnline);
      window.removeEventListener("offline", this._onOffline);
      window.removeEventListener("pagehide", this._onPageHide);
      document.removeEventListener("visibilitychange", this._onVisible);
    }
    const ws = this._ws;
    this._ws = null;
    if (this._session.connected) this._session.connectionLost(); // as the Python driver's
    if (ws) {
      detach(ws);
      try {
        ws.close(CloseCode.NORMAL, "client closed");
      } catch {
        // already closing
      }
    }
    for (const item of this._session.outbox.clear()) {
      item.reject(new ClientClosed("client closed before the hub acknowledged"));
    }
  }

  // --- outbox ------------------------------------------------------------------------------

  _expiry(ttl) {
    return now() + (ttl === null ? this.config.outboxTtl : ttl);
  }

  _submit(item, waitAck) {
    if (this.state === State.CLOSED) return Promise.reject(new ClientClosed("client is closed"));
    if (!this._session.fits(item)) {
      return Promise.reject(new MessageTooBig(`message is larger than the hub takes (${this._session.maxFrameBytes} bytes)`));
    }
    const promise = new Promise((resolve, reject) => {
      item.resolve = resolve;
      item.reject = reject;
    });
    let displaced;
    try {
      displaced = this._session.outbox.add(item);
    } catch (err) {
      return Promise.reject(err);
    }
    for (const old of displaced) old.reject(new MessageDropped(`message ${old.id} displaced by policy`));
    this._scheduleExpiry();
    this._pump();
    if (!waitAck) {
      promise.catch((err) => this._log("warn", "unacknowledged send failed", err));
      return Promise.resolve(item.id);
    }
    return promise;
  }

  _scheduleExpiry() {
    clearTimeout(this._expiryTimer);
    const when = this._session.outbox.nextExpiry();
    if (when === null) return;
    this._expiryTimer = setTimeout(() => {
      for (const item of this._session.outbox.expire(now())) {
        item.reject(new MessageExpired(`message ${item.id} expired before it was acked`));
      }
      this._scheduleExpiry();
    }, Math.max(0, (when - now()) * 1000));
  }

  // --- connection loop ---------------------------------------------------------------------

  _stateChanged(from, to) {
    this._log("info", `state ${from} -> ${to}`);
    if (this.telemetry) this.telemetry.record(to);
    if (this.onStateChange) safeCall(this.onStateChange, from, to);
    this._emit("statechange", { from, to });
    for (const topic of this._handlers.keys()) this._emit("topicstate", { topic, live: this.isLive(topic) });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // Wait `delay` seconds (null: until reconnect()), then wake the lifecycle and attempt if
  // it says so. reconnect() and the network coming back cut the wait short.
  _schedule(delay) {
    clearTimeout(this._timer);
    this._timer = null;
    this._nextAttemptAt = null;
    if (delay === null || this.state === State.CLOSED) return;
    this._nextAttemptAt = now() + delay;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._nextAttemptAt = null;
      if (this._life.wake()) this._attempt();
    }, delay * 1000);
    this._emit("retry", { in: delay });
  }

  // getToken() is app code (often a fetch): bounded by connectTimeout, as in the Python
  // client, so a hung one fails this attempt instead of blocking every later one.
  async _freshToken() {
    if (!this.getToken) return this._token;
    let timer;
    const limit = this.config.connectTimeout;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`getToken did not answer within ${limit} s`)), limit * 1000);
    });
    try {
      this._token = await Promise.race([Promise.resolve().then(() => this.getToken()), late]);
    } finally {
      clearTimeout(timer);
    }
    return this._token;
  }

  async _attempt() {
    if (this._ws || this._opening) return;
    this._life.beginAttempt();
    this._opening = true;
    // No transport until a socket is made: a token that could not be had is not a
    // WebSocket failure, and must not count toward the HTTP fallback.
    this._via = null;
    let ws;
    try {
      const token = await this._freshToken();
      if (this.state === State.CLOSED) return;
      this._via = this._fallingBack() ? "sse" : "websocket";
      ws = this._open(this._via === "sse" ? SseSocket : this._WebSocket, token);
    } catch (err) {
      this._attemptFailed(failure(`cannot open: ${err.message}`));
      return;
    } finally {
      this._opening = false;
    }
    this._ws = ws;
    let welcomed = false;
    const timeout = setTimeout(() => {
      if (!welcomed) this._drop(ws, "connect timeout");
    }, this.config.connectTimeout * 1000);
    ws.onmessage = (ev) => {
      try {
        onFrame(ev);
      } catch (err) {
        this._internalError(ws, "reader", err);
      }
    };
    const onFrame = (ev) => {
      const t = now();
      if (!welcomed) {
        const { events } = this._session.receive(ev.data, t);
        const welcome = events.find((e) => e.kind === "welcome");
        if (!welcome) return this._drop(ws, "hub did not start with a welcome frame");
        if (welcome.welcome.version !== PROTOCOL_VERSION) {
          // Not _drop: the close must reach the hub (and then counts as a failed attempt).
          ws.close(CloseCode.PROTOCOL_MISMATCH, "unsupported protocol version");
          return;
        }
        welcomed = true;
        clearTimeout(timeout);
        this._opened(ws);
        return;
      }
      this._frame(ws, ev.data, t);
    };
    ws.onclose = (ev) => {
      clearTimeout(timeout);
      this._closed(ws, ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  _open(Socket, token) {
    return token ? new Socket(this.url, [SUBPROTOCOL, `${TOKEN_SUBPROTOCOL_PREFIX}${token}`]) : new Socket(this.url);
  }

  _fallingBack() {
    if (this.transport === "sse") return true;
    return this.transport === "auto" && this._wsFailures >= this.fallbackAfter && typeof fetch === "function";
  }

  // On the fallback: try a WebSocket now and then; once one opens, leave the fallback
  // the way a restarting hub is left (1012, retry at once), resuming from the cursors.
  _probeWebSocket(ws) {
    clearTimeout(this._wsProbeTimer);
    this._wsProbeTimer = setTimeout(() => {
      if (this._ws !== ws) return;
      let probe;
      try {
        probe = this._open(this._WebSocket, this._token);
      } catch {
        this._probeWebSocket(ws);
        return;
      }
      const done = (ok) => {
        detach(probe);
        try {
          probe.close(CloseCode.NORMAL, "probe");
        } catch {
          // already closing
        }
        if (this._ws !== ws) return;
        if (!ok) return this._probeWebSocket(ws);
        this._log("info", "WebSockets get through again: leaving the fallback transport");
        this._wsFailures = 0;
        detach(ws);
        ws.close(CloseCode.NORMAL, "back to WebSocket");
        this._closed(ws, CloseCode.SERVICE_RESTART, JSON.stringify({ retry_after_ms: 0 }));
      };
      probe.onmessage = () => done(true); // the hub's welcome
      probe.onclose = () => done(false);
      probe.onerror = () => {};
    }, this.wsProbeInterval * 1000);
  }

  _attemptFailed(why, code = 1006) {
    if (this._via === "websocket" && !HUB_ANSWERED.has(code)) this._wsFailures += 1;
    // The fallback cannot reach the hub either: the hub is down, not the upgrade
    // refused. WebSocket first again, so a fleet does not come back on the fallback.
    else if (this._via === "sse" && code === 1006 && this.transport === "auto") this._wsFailures = 0;
    this._log("info", `connect attempt ${this._life.attempts} failed: ${why.reason}`);
    this._schedule(this._life.attemptFailed(why));
  }

  _opened(ws) {
    if (this._via === "websocket") this._wsFailures = 0;
    else if (this.transport === "auto") this._probeWebSocket(ws);
    const reconnect = this._life.opened(now());
    const frames = this._session.connectionOpened(now());
    for (const item of this._session.refused.splice(0)) {
      item.reject(new MessageTooBig(`message ${item.id} is larger than the hub takes`));
    }
    for (const f of frames) ws.send(f);
    this._pump(); // schedules what the hub's rate makes wait
    if (reconnect) this._enqueue({ kind: "reconnected" });
    // Every welcome, first or not, with the hub's id for this connection (its logs' name).
    this._emit("connected", { sessionId: this._session.sessionId, reconnect });
    this._heartbeat(ws);
    this._scheduleRefresh(ws);
  }

  // Send a fresh token before the current one expires, inside the live connection.
  _scheduleRefresh(ws, failed = false) {
    clearTimeout(this._refreshTimer);
    const exp = tokenExpiry(this._token);
    if (!this.getToken || exp === null) return;
    const delay = refreshDelay(exp, Date.now() / 1000, { failed });
    this._refreshTimer = setTimeout(async () => {
      if (this._ws !== ws) return;
      let ok = true;
      try {
        const token = await this._freshToken();
        if (this._ws === ws && token) ws.send(JSON.stringify({ type: "auth", token }));
      } catch (err) {
        ok = false;
        this._log("warn", "getToken failed; retrying in a moment", err);
      }
      this._scheduleRefresh(ws, !ok);
    }, delay * 1000);
  }

  _frame(ws, data, t) {
    const { events, replies } = this._session.receive(data, t);
    for (const r of replies) ws.send(r);
    if (this._session.repace) {
      this._session.repace = false; // a refusal: what it held back goes later
      this._pump();
    }
    for (const event of events) {
      if (event.kind === "delivery" || event.kind === "resync" || event.kind === "confirmed") {
        this._enqueue(event);
      } else if (event.kind === "resolved") {
        const item = event.item;
        if (event.ok) item.resolve(event.result);
        else item.reject(new NackError(`${event.code}: ${event.message}`, event.code));
        this._scheduleExpiry();
      } else if (event.kind === "refused") {
        this._log("warn", `hub refused ${event.topic}: ${event.code} ${event.message}`);
        this._handlers.delete(event.topic);
        this._emit("topicstate", { topic: event.topic, live: false });
        this._reportError(event.code, `${event.topic}: ${event.message}`);
      } else if (event.kind === "error") {
        this._log("warn", `hub error ${event.code}: ${event.message}`);
        this._reportError(event.code, event.message);
      }
    }
    if (this._inbox.length > INBOX_SIZE) {
      this._drop(ws, "app cannot keep up: resuming from cursor");
    }
  }

  // onError may be async; its failure is logged, never thrown.
  _reportError(code, message) {
    if (this.telemetry) this.telemetry.record("error", { code });
    if (this.onError) safeCallAsync(this.onError, code, message);
  }

  // A bug in the client itself: log it, tell the app, and fail the connection so that no
  // dead part hides behind a "connected" state (it reconnects and resumes from cursors).
  _internalError(ws, where, err) {
    console.error(`[tether] internal error in the ${where}; failing the connection`, err);
    this._clientError = `internal error in the ${where} (see the console)`;
    this._reportError(CLIENT_ERROR, this._clientError);
    if (ws) this._drop(ws, `internal error in the ${where}`);
  }

  _enqueue(event) {
    this._inbox.push(event);
    if (!this._draining) this._drain();
  }

  async _drain() {
    this._draining = true;
    try {
      while (this._inbox.length) {
        const event = this._inbox.shift();
        if (this.state === State.CLOSED) return;
        try {
          await this._dispatch(event);
        } catch (err) {
          this._internalError(this._ws, "dispatcher", err);
        }
      }
    } finally {
      this._draining = false;
    }
  }

  async _dispatch(event) {
    if (event.kind === "reconnected") {
      if (this.telemetry) this.telemetry.record("reconnect");
      if (this.onReconnect) await safeCallAsync(this.onReconnect);
      this._emit("reconnect", {});
      return;
    }
    this._session.handedToApp(event); // the app's cursor: what is persisted
    if (event.kind === "delivery") {
      const msg = event.message;
      this._scheduleSave();
      const handler = this._handlers.get(msg.topic);
      if (handler) await safeCallAsync(handler, msg);
      this._emit("message", msg);
    } else if (event.kind === "resync") {
      this._scheduleSave();
      this._log("warn", `resync ${event.topic}: missing ${JSON.stringify(event.missing)}`);
      if (this.telemetry) this.telemetry.record("resync", { topic: event.topic, gaps: event.missing.length });
      if (this.onResync) await safeCallAsync(this.onResync, event.topic, event.missing);
      this._emit("resync", { topic: event.topic, missing: event.missing });
    } else if (event.kind === "confirmed") {
      this._scheduleSave();
      this._emit("topicstate", { topic: event.topic, live: this.isLive(event.topic) });
    }
  }

  // The session's heartbeat check and the lifecycle's stable-period reset, each run when it
  // asked to be: a throttled tab's timer fires late, and the session's late rule handles it.
  _heartbeat(ws) {
    clearTimeout(this._heartbeatTimer);
    const check = () => {
      try {
        checkOnce();
      } catch (err) {
        this._internalError(ws, "heartbeat", err);
      }
    };
    const checkOnce = () => {
      if (this._ws !== ws) return;
      const t = now();
      const stableAt = this._life.stable(t);
      const poll = this._session.poll(t);
      if (poll.dead) {
        this._life.heartbeatFailed();
        if (this.telemetry) this.telemetry.record("heartbeat_failure");
        this._log("warn", "heartbeat deadline passed: connection presumed dead");
        this._drop(ws, "heartbeat timeout");
        return;
      }
      for (const f of poll.frames) ws.send(f);
      const wakeAt = stableAt === null ? poll.wakeAt : Math.min(poll.wakeAt, stableAt);
      this._heartbeatTimer = setTimeout(check, Math.max(0, (wakeAt - now()) * 1000));
    };
    check();
  }

  // End a socket now, from our side, without waiting for the close handshake (which a
  // dead network never completes), and carry on as if it had closed abnormally.
  _drop(ws, reason) {
    if (this._ws !== ws) return;
    detach(ws);
    try {
      ws.close(CloseCode.DROPPED, reason.slice(0, 120));
    } catch {
      // already closing
    }
    this._closed(ws, 1006, reason);
  }

  _closed(ws, code, reason) {
    if (this._ws !== ws) return;
    this._ws = null;
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._wsProbeTimer);
    clearTimeout(this._pumpTimer);
    const wasConnected = this.state === State.CONNECTED;
    if (wasConnected) this._session.connectionLost();
    this._log("info", `connection closed: ${code} ${reason || ""}`);
    // Before the state changes, so a listener can tell why it will (1008: sign in again).
    this._emit("disconnected", { code, reason: reason || "", wasConnected });
    if (!wasConnected) {
      this._attemptFailed(handshakeClosed(code, reason, { canRefresh: !!this.getToken }), code);
      return;
    }
    this._schedule(this._life.closed(code, reason, now()));
  }

  _pace(frames) {
    if (!this._ws || this.state !== State.CONNECTED) return;
    this._session.pace(frames);
    this._pump();
  }

  // Write what the session's pacing allows now; set a timer for the rest.
  _pump() {
    clearTimeout(this._pumpTimer);
    const ws = this._ws;
    if (!ws || this.state !== State.CONNECTED) return;
    const { frames, wakeAt } = this._session.due(now());
    for (const f of frames) ws.send(f);
    if (wakeAt !== null) {
      this._pumpTimer = setTimeout(() => {
        try {
          this._pump();
        } catch (err) {
          this._internalError(this._ws, "paced writer", err);
        }
      }, Math.max(0, (wakeAt - now()) * 1000));
    }
  }

  // --- browser signals ---------------------------------------------------------------------

  _networkBack() {
    // The network (or the tab) is back: check the link now instead of waiting for a timer.
    if (this.state === State.CONNECTED && this._ws) {
      for (const f of this._session.probe(now())) this._ws.send(f);
      this._heartbeat(this._ws); // the probe's deadline is sooner than the pending check
    } else if (!this._ws && !this._opening && this._life.networkBack()) {
      this._schedule(0);
    }
  }

  _networkGone() {
    if (this._ws) this._drop(this._ws, "browser went offline");
  }

  // --- resume cursor across page reloads -----------------------------------------------------

  _loadCursors() {
    if (!this._storage) return {};
    try {
      const raw = this._storage.getItem(CURSOR_KEY(this.url));
      const parsed = raw ? JSON.parse(raw) : {};
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch {
      return {};
    }
  }

  _scheduleSave() {
    if (!this._storage || this._saveTimer !== null) return;
    // Writing sessionStorage per message would cost more than the message; pagehide also
    // saves, so a reload loses nothing even inside the 250 ms window.
    this._saveTimer = setTimeout(() => this._saveCursors(), 250);
  }

  _saveCursors() {
    if (this._saveTimer !== null) clearTimeout(this._saveTimer);
    this._saveTimer = null;
    if (!this._storage) return;
    const out = {};
    for (const [topic, cursor] of this._session.appCursors()) out[topic] = cursor;
    try {
      this._storage.setItem(CURSOR_KEY(this.url), JSON.stringify(out));
      this._indexCursors();
    } catch (err) {
      this._log("warn", "could not persist cursors", err);
    }
  }

  _indexCursors() {
    let urls = [];
    try {
      const parsed = JSON.parse(this._storage.getItem(CURSOR_INDEX) || "[]");
      if (Array.isArray(parsed)) urls = parsed.filter((u) => typeof u === "string");
    } catch {
      urls = [];
    }
    urls = [...urls.filter((u) => u !== this.url), this.url];
    while (urls.length > MAX_CURSOR_SETS) this._storage.removeItem(CURSOR_KEY(urls.shift()));
    this._storage.setItem(CURSOR_INDEX, JSON.stringify(urls));
  }

  // --- debug ----------------------------------------------------------------------------------

  _installDebug(name) {
    const key = typeof name === "string" ? name : "tether";
    globalThis[key] = {
      client: this,
      getMetrics: () => this.metrics(),
      getState: () => this.state,
      reconnect: () => this.reconnect(),
      disconnect: () => this.disconnect(),
    };
  }

  _log(level, ...args) {
    if (level === "info" && !this._verbose) return;
    (console[level] || console.log)("[tether]", ...args);
  }
}

export function connect(url, options = {}) {
  return new TetherClient(url, options).start();
}

// True when the page's URL asks for debug mode: ?debug=true (or 1).
export function pageDebug() {
  if (typeof location === "undefined") return false;
  const value = new URLSearchParams(location.search).get("debug");
  return value === "true" || value === "1";
}

// The hub's own WebSocket URL for a page it serves.
export function defaultUrl(path = "/ws") {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

// A JWT's exp (seconds), read without verification: the hub verifies.
export function tokenExpiry(token) {
  const claims = tokenClaims(token);
  return claims !== null && typeof claims.exp === "number" ? claims.exp : null;
}

function pick(obj, keys) {
  const out = {};
  for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
  return out;
}

function detach(ws) {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
}

function safeSessionStorage() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null;
  }
}

function safeCall(fn, ...args) {
  try {
    return fn(...args);
  } catch (err) {
    console.error("[tether] callback failed", err);
    return undefined;
  }
}

async function safeCallAsync(fn, ...args) {
  try {
    await fn(...args);
  } catch (err) {
    // An app callback's bug must not stop delivery or lose the cursor.
    console.error("[tether] callback failed", err);
  }
}
