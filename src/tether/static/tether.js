// Tether browser client — protocol v1 (docs/protocol.md). One dependency-free ES module.
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
// Theory of operation
// -------------------
// `Session` is the protocol logic without I/O (frames in, events and frames out),
// a line-by-line twin of tether/client/session.py. `StateMachine` applies the one
// transition table (TRANSITIONS, identical to tether/client/state.py). `TetherClient`
// is the driver: it owns the WebSocket, the timers and the browser signals
// (online/offline, tab visibility), and reports through callbacks and DOM events.

export const PROTOCOL_VERSION = 1;

// Kept equal to tether.config.ClientConfig by tests/browser/test_js_parity.py.
export const DEFAULTS = Object.freeze({
  backoffBase: 1.0,
  backoffFactor: 2.0,
  backoffCap: 30.0,
  jitter: "full",
  jitterRatio: 0.3,
  jitterSeconds: 0.5,
  maxAttempts: 10,
  connectTimeout: 10.0,
  stableAfter: 30.0,
  circuitCooldown: 60.0,
  outboxSize: 1000,
  outboxPolicy: "reject-new",
  outboxTtl: 120.0,
});

// --- state machine (see tether/client/state.py for the theory) -----------------------------

export const State = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  FAILED: "failed",
  CLOSED: "closed",
});

export const Trigger = Object.freeze({
  START: "start",
  OPENED: "opened",
  ATTEMPT_FAILED: "attempt_failed",
  DROPPED: "dropped",
  GAVE_UP: "gave_up",
  PROBE: "probe",
  ENDED: "ended",
  RETRY: "retry",
  CLOSE: "close",
});

export const TRANSITIONS = Object.freeze({
  disconnected: { start: "connecting", retry: "connecting", close: "closed" },
  connecting: {
    opened: "connected",
    attempt_failed: "reconnecting",
    gave_up: "failed",
    retry: "connecting",
    close: "closed",
  },
  connected: {
    dropped: "reconnecting",
    gave_up: "failed",
    ended: "disconnected",
    retry: "reconnecting",
    close: "closed",
  },
  reconnecting: {
    opened: "connected",
    attempt_failed: "reconnecting",
    gave_up: "failed",
    retry: "reconnecting",
    close: "closed",
  },
  failed: { probe: "reconnecting", retry: "reconnecting", close: "closed" },
  closed: {},
});

export class TetherError extends Error {
  constructor(message, code) {
    super(message);
    this.name = this.constructor.name;
    if (code !== undefined) this.code = code;
  }
}
export class IllegalTransition extends TetherError {}
export class NackError extends TetherError {}
export class OutboxFull extends TetherError {}
export class MessageExpired extends TetherError {}
export class MessageDropped extends TetherError {}
// A client message larger than the hub's max_frame_bytes (it would be closed 1009, and re-sent
// after every reconnect).
export class MessageTooBig extends TetherError {}
export class ClientClosed extends TetherError {}

export class StateMachine {
  constructor() {
    this.state = State.DISCONNECTED;
    this.everConnected = false;
    this._listeners = [];
  }
  listen(fn) {
    this._listeners.push(fn);
  }
  can(trigger) {
    return trigger in TRANSITIONS[this.state];
  }
  fire(trigger) {
    const next = TRANSITIONS[this.state][trigger];
    if (next === undefined) {
      throw new IllegalTransition(`'${trigger}' is not allowed in state '${this.state}'`);
    }
    const old = this.state;
    this.state = next;
    if (next === State.CONNECTED) this.everConnected = true;
    if (next !== old) for (const fn of [...this._listeners]) fn(old, next);
    return next;
  }
}

// --- backoff: full jitter by default (tether/backoff.py) ----------------------------------

export const Jitter = Object.freeze({ FULL: "full", PROPORTIONAL: "proportional", ABSOLUTE: "absolute" });

export function checkJitter({ jitter = Jitter.FULL, ratio = 0, seconds = 0 }) {
  if (!Object.values(Jitter).includes(jitter)) throw new RangeError(`jitter must be one of ${Object.values(Jitter).join(", ")}, not ${jitter}`);
  if (!(ratio >= 0 && ratio <= 1)) throw new RangeError(`jitterRatio must be between 0 and 1, not ${ratio}`);
  if (!(seconds >= 0 && seconds < Infinity)) throw new RangeError(`jitterSeconds must be 0 or more, not ${seconds}`);
}

export function backoffCeiling(attempt, { base, factor, cap }) {
  if (attempt < 0) throw new RangeError("attempt must be >= 0");
  if (base <= 0 || cap <= 0) return 0;
  if (factor <= 1) return Math.min(cap, base);
  if (attempt * Math.log(factor) >= Math.log(cap / base)) return cap;
  return Math.min(cap, base * factor ** attempt);
}

// opts: { base, factor, cap, jitter, ratio, seconds }, as backoff_delay's keywords.
export function backoffDelay(attempt, opts, rand = Math.random()) {
  if (!(rand >= 0 && rand < 1)) throw new RangeError("rand must be in [0, 1)");
  checkJitter(opts);
  const ceiling = backoffCeiling(attempt, opts);
  const jitter = opts.jitter || Jitter.FULL;
  if (jitter === Jitter.FULL) return rand * ceiling;
  const spread = jitter === Jitter.PROPORTIONAL ? ceiling * opts.ratio : opts.seconds;
  return Math.min(Math.max(opts.cap, 0), Math.max(0, ceiling + spread * (2 * rand - 1)));
}

// --- outbox (tether/outbox.py) -------------------------------------------------------------

class Outbox {
  constructor(maxSize, policy) {
    this.maxSize = maxSize;
    this.policy = policy;
    this.items = new Map(); // id -> item, insertion order = send order
  }
  get size() {
    return this.items.size;
  }
  add(item) {
    const displaced = [];
    if (this.policy === "coalesce-by-key" && item.key != null) {
      for (const old of this.items.values()) {
        // Never written only: once written the hub may have run it (an ack lost with
        // the connection), so dropping it would report a loss that did not happen.
        if (old.key === item.key && !old.written) {
          displaced.push(old);
          this.items.delete(old.id);
          break;
        }
      }
    }
    if (this.items.size >= this.maxSize) {
      if (this.policy === "drop-oldest") {
        const oldest = this.items.values().next().value;
        this.items.delete(oldest.id);
        displaced.push(oldest);
      } else {
        throw new OutboxFull(`outbox full (${this.maxSize} messages, policy ${this.policy})`);
      }
    }
    this.items.set(item.id, item);
    return displaced;
  }
  resolve(id) {
    const item = this.items.get(id);
    if (item) this.items.delete(id);
    return item;
  }
  expire(now) {
    const dead = [...this.items.values()].filter((i) => i.expiresAt <= now);
    for (const item of dead) this.items.delete(item.id);
    return dead;
  }
  unsent() {
    return [...this.items.values()].filter((i) => !i.sent);
  }
  markAllUnsent() {
    for (const item of this.items.values()) item.sent = false;
  }
  removeIf(predicate) {
    const removed = [...this.items.values()].filter(predicate);
    for (const item of removed) this.items.delete(item.id);
    return removed;
  }
  clear() {
    const all = [...this.items.values()];
    this.items.clear();
    return all;
  }
  nextExpiry() {
    let min = Infinity;
    for (const item of this.items.values()) min = Math.min(min, item.expiresAt);
    return min === Infinity ? null : min;
  }
}

// --- session: protocol logic without I/O (tether/client/session.py) ------------------------

const utf8 = new TextEncoder();

// Pacing to the hub's advertised inbound rate (tether/client/session.py has the reasons).
const PACE_RATE_SHARE = 0.9;
const PACE_BURST_SHARE = 0.5;
const RETRYABLE = new Set(["rate_limited", "overloaded", "unavailable", "in_progress"]);
const DEFAULT_RETRY_MS = 1000;

class TokenBucket {
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.updated = now;
  }
  take(now) {
    this.tokens = Math.min(this.burst, this.tokens + (now - this.updated) * this.rate);
    this.updated = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }
  wait() {
    return this.tokens >= 1 || this.rate <= 0 ? 0 : (1 - this.tokens) / this.rate;
  }
}

// Gap reason of a message that arrived but could not be decoded (docs/protocol.md).
export const UNDELIVERABLE = "undeliverable";
// onError code for a bug inside the client itself (tether/client/aio.py: CLIENT_ERROR).
export const CLIENT_ERROR = "client_error";

// The hub writes a message frame's envelope first, in a fixed order (docs/protocol.md,
// "Undecodable messages"), so the offset of one whose data can't be parsed is still known.
const ENVELOPE = /^\{"type":"message","topic":"([A-Za-z0-9_.:\/*-]{1,200})","epoch":"([^"\\]{1,64})","offset":([1-9][0-9]{0,15}),/;

function messageEnvelope(text) {
  const match = typeof text === "string" ? ENVELOPE.exec(text) : null;
  return match ? { topic: match[1], epoch: match[2], offset: Number(match[3]) } : null;
}

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return [...a].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class Session {
  constructor({ outbox, heartbeatInterval = 25, heartbeatTimeout = 20 }) {
    this.outbox = outbox;
    this.heartbeatInterval = heartbeatInterval;
    this.heartbeatTimeout = heartbeatTimeout;
    this.connected = false;
    this.subs = new Map(); // topic -> {topic, cursor, replayHead, replayEpoch, confirmed}
    this.counters = {
      messagesReceived: 0,
      messagesRecovered: 0,
      duplicatesDropped: 0,
      resyncs: 0,
      undeliverable: 0,
      protocolErrors: 0,
      rtt: null,
      lastHeartbeat: null,
    };
    this.idPrefix = randomHex(8);
    this.nextId = 0;
    this.lastReceived = 0;
    this.nextPing = 0;
    this.lastPoll = null;
    this.probeDeadline = null;
    this.maxFrameBytes = null; // the hub's, from welcome
    this.refused = []; // outbox items too big for the hub, removed at connect
    this.bucket = null; // the hub's inbound rate, scaled by the PACE_* shares
    this.paced = []; // subscribe/unsubscribe frames waiting for the bucket, in order
    this.holdUntil = 0; // after a refusal nothing paced goes before this
    this.unsubscribing = new Set(); // unsubscribed here, not yet confirmed
    this.repace = false; // a refusal changed what due() gives; the driver clears it
  }

  cursor(topic) {
    const sub = this.subs.get(topic);
    return sub ? sub.cursor : null;
  }
  isLive(topic) {
    const sub = this.subs.get(topic);
    return this.connected && !!sub && sub.confirmed;
  }

  subscribe(topic, resume = null, rewind = 0) {
    let sub = this.subs.get(topic);
    if (!sub) {
      sub = { topic, cursor: resume, rewind, replayHead: 0, replayEpoch: "", confirmed: false };
      this.subs.set(topic, sub);
    }
    return this.connected ? this._subscribeFrame(sub) : null;
  }
  unsubscribe(topic) {
    if (!this.subs.delete(topic) || !this.connected) return null;
    this.unsubscribing.add(topic);
    return JSON.stringify({ type: "unsubscribe", topic });
  }
  _subscribeFrame(sub) {
    sub.confirmed = false;
    const frame = { type: "subscribe", topic: sub.topic };
    if (sub.cursor) frame.resume = { epoch: sub.cursor.epoch, offset: sub.cursor.offset };
    else if (sub.rewind) frame.rewind = sub.rewind; // only until the hub gives a cursor
    return JSON.stringify(frame);
  }

  newId() {
    this.nextId += 1;
    return `${this.idPrefix}-${this.nextId}`;
  }
  makeSend(event, data, expiresAt, key = null) {
    const id = this.newId();
    const frame = JSON.stringify({ type: "send", id, event, data: data === undefined ? null : data });
    return { id, frame, expiresAt, key, sent: false, written: false, resolve: null, reject: null };
  }
  makePublish(topic, data, expiresAt) {
    const id = this.newId();
    const frame = JSON.stringify({ type: "publish", id, topic, data: data === undefined ? null : data });
    return { id, frame, expiresAt, key: null, sent: false, written: false, resolve: null, reject: null };
  }
  // --- pacing (tether/client/session.py: pace, due) ---
  pace(frames) {
    if (this.connected) this.paced.push(...frames);
  }
  // The paced frames, then the unsent outbox items, that may be written now (marked
  // written), and when to ask again if some must wait (null: nothing waits).
  due(now) {
    if (!this.connected) return { frames: [], wakeAt: null };
    if (now < this.holdUntil) return { frames: [], wakeAt: this.holdUntil };
    const frames = [];
    let unsent = null;
    for (;;) {
      let item = null;
      if (!this.paced.length) {
        if (unsent === null) unsent = this.outbox.unsent();
        if (!unsent.length) return { frames, wakeAt: null };
        item = unsent[0];
      }
      if (this.bucket && !this.bucket.take(now)) return { frames, wakeAt: now + this.bucket.wait() };
      if (item === null) {
        frames.push(this.paced.shift());
      } else {
        unsent.shift();
        item.sent = item.written = true;
        frames.push(item.frame);
      }
    }
  }
  _hold(now, retryAfterMs) {
    const wait = (retryAfterMs == null ? DEFAULT_RETRY_MS : retryAfterMs) / 1000;
    this.holdUntil = Math.max(this.holdUntil, now + wait);
    this.repace = true;
  }
  _repaceRefused(topic) {
    if (topic == null) return;
    const sub = this.subs.get(topic);
    if (sub && !sub.confirmed) this.paced.push(this._subscribeFrame(sub));
    else if (this.unsubscribing.has(topic)) this.paced.push(JSON.stringify({ type: "unsubscribe", topic }));
  }

  connectionOpened(now) {
    this.connected = true;
    this.lastReceived = now;
    this.nextPing = now + this.heartbeatInterval;
    this.lastPoll = null;
    this.probeDeadline = null;
    this.outbox.markAllUnsent();
    if (this.maxFrameBytes != null) this.refused.push(...this.outbox.removeIf((i) => !this.fits(i)));
    this.paced = [...this.subs.values()].map((s) => this._subscribeFrame(s));
    this.unsubscribing.clear();
    this.holdUntil = 0;
    return this.due(now).frames;
  }
  // Whether the hub takes this item's frame (UTF-8 bytes against its max_frame_bytes).
  fits(item) {
    const limit = this.maxFrameBytes;
    if (limit == null || item.frame.length * 3 <= limit) return true; // can't exceed: skip encoding
    return utf8.encode(item.frame).length <= limit;
  }
  connectionLost() {
    this.connected = false;
    this.paced = []; // never written: connectionOpened rebuilds what is needed
    for (const sub of this.subs.values()) sub.confirmed = false;
    this.outbox.markAllUnsent();
  }

  // Liveness, judged by what arrived. A check that runs late (a throttled background tab)
  // does not declare the link dead on the spot: it pings and waits heartbeatTimeout for
  // any frame, because the frames may simply not have been processed yet.
  poll(now, tick) {
    const late = this.lastPoll !== null && now - this.lastPoll > 3 * tick;
    this.lastPoll = now;
    const result = { frames: [], dead: false };
    const deadline = this.lastReceived + this.heartbeatInterval + this.heartbeatTimeout;
    if (this.probeDeadline !== null) {
      if (this.lastReceived >= this.probeDeadline - this.heartbeatTimeout) {
        this.probeDeadline = null; // something arrived after the probe: alive
      } else if (now >= this.probeDeadline) {
        result.dead = true;
        return result;
      }
    }
    if (now >= deadline && this.probeDeadline === null) {
      if (late) {
        this.probeDeadline = now + this.heartbeatTimeout;
        result.frames.push(JSON.stringify({ type: "ping", ts: Math.round(now * 1000) }));
        this.nextPing = now + this.heartbeatInterval;
        return result;
      }
      result.dead = true;
      return result;
    }
    if (now >= this.nextPing) {
      result.frames.push(JSON.stringify({ type: "ping", ts: Math.round(now * 1000) }));
      this.nextPing = now + this.heartbeatInterval;
    }
    return result;
  }

  probe(now) {
    // An explicit liveness check (tab became visible, network came back).
    if (!this.connected) return [];
    this.probeDeadline = now + this.heartbeatTimeout;
    this.lastReceived = Math.min(this.lastReceived, now - 1e-3);
    return [JSON.stringify({ type: "ping", ts: Math.round(now * 1000) })];
  }

  receive(text, now) {
    this.lastReceived = now;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (err) {
      this.counters.protocolErrors += 1;
      const envelope = messageEnvelope(text);
      if (envelope) return this._onUndeliverable(envelope, String(err));
      return { events: [{ kind: "error", code: "invalid_json", message: String(err) }], replies: [] };
    }
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
      this.counters.protocolErrors += 1;
      return { events: [{ kind: "error", code: "invalid_frame", message: "not a frame" }], replies: [] };
    }
    switch (frame.type) {
      case "message":
        return { events: this._onMessage(frame), replies: [] };
      case "ping":
        this.counters.lastHeartbeat = now;
        return { events: [], replies: [JSON.stringify({ type: "pong", ts: frame.ts })] };
      case "pong":
        this.counters.rtt = Math.max(0, now - frame.ts / 1000);
        this.counters.lastHeartbeat = now;
        return { events: [], replies: [] };
      case "subscribed":
        return { events: this._onSubscribed(frame), replies: [] };
      case "ack":
      case "nack": {
        if (frame.type === "nack" && RETRYABLE.has(frame.code)) {
          const held = this.outbox.items.get(frame.id);
          if (held) {
            held.sent = false; // not final: it goes again when the hub says
            this._hold(now, frame.retry_after_ms);
          }
          return { events: [], replies: [] };
        }
        const item = this.outbox.resolve(frame.id);
        if (!item) return { events: [], replies: [] };
        return {
          events: [
            frame.type === "ack"
              ? { kind: "resolved", item, ok: true, result: frame.result === undefined ? null : frame.result }
              : { kind: "resolved", item, ok: false, code: frame.code, message: frame.message },
          ],
          replies: [],
        };
      }
      case "welcome":
        this.heartbeatInterval = frame.heartbeat_ms / 1000;
        this.heartbeatTimeout = frame.heartbeat_timeout_ms / 1000;
        this.maxFrameBytes = frame.limits ? frame.limits.max_frame_bytes : null;
        this.bucket = null;
        if (frame.limits && frame.limits.inbound_rate > 0 && frame.limits.inbound_burst > 0) {
          this.bucket = new TokenBucket(
            frame.limits.inbound_rate * PACE_RATE_SHARE,
            Math.max(1, Math.floor(frame.limits.inbound_burst * PACE_BURST_SHARE)),
            now,
          );
        }
        this.nextPing = now + this.heartbeatInterval;
        this.counters.lastHeartbeat = now;
        return { events: [{ kind: "welcome", welcome: frame }], replies: [] };
      case "error":
        if (RETRYABLE.has(frame.code)) {
          this._hold(now, frame.retry_after_ms);
          this._repaceRefused(frame.ref ?? null);
          return { events: [], replies: [] };
        }
        if (frame.ref != null && this.subs.has(frame.ref)) {
          // Final: the hub holds no subscription to this topic; re-subscribing on every
          // reconnect would only be refused again (tether/client/session.py: the same rule).
          this.subs.delete(frame.ref);
          return { events: [{ kind: "refused", topic: frame.ref, code: frame.code, message: frame.message }], replies: [] };
        }
        return {
          events: [{ kind: "error", code: frame.code, message: frame.message, ref: frame.ref ?? null }],
          replies: [],
        };
      case "unsubscribed":
        this.unsubscribing.delete(frame.topic);
        return { events: [], replies: [] };
      case "authed":
        return { events: [], replies: [] };
      default:
        this.counters.protocolErrors += 1;
        return { events: [{ kind: "error", code: "invalid_frame", message: `unknown type ${frame.type}` }], replies: [] };
    }
  }

  _onSubscribed(reply) {
    const sub = this.subs.get(reply.topic);
    if (!sub) return [];
    const resume = sub.cursor;
    let offset = resume && resume.epoch === reply.epoch ? resume.offset : 0;
    if (!resume) offset = Math.max(0, reply.head - (reply.rewound || 0)); // a rewind's replay follows the cursor
    const missing = reply.missing || [];
    for (const gap of missing) {
      if (gap.epoch === reply.epoch && gap.from === offset + 1 && gap.to !== null) offset = gap.to;
    }
    sub.cursor = { epoch: reply.epoch, offset: Math.min(offset, reply.head) };
    sub.replayEpoch = reply.epoch;
    // What a resume replays was recovered; what a rewind replays was never missed.
    sub.replayHead = resume ? reply.head : sub.cursor.offset;
    sub.confirmed = true;
    const events = [{ kind: "confirmed", topic: reply.topic, recovered: reply.recovered, cursor: sub.cursor }];
    if (missing.length) {
      this.counters.resyncs += 1;
      events.push({ kind: "resync", topic: reply.topic, missing, cursor: sub.cursor });
    }
    return events;
  }

  // What is lost between the cursor and `offset` of `epoch`; null: a duplicate.
  static gapsBefore(cursor, epoch, offset) {
    if (epoch === cursor.epoch) {
      if (offset <= cursor.offset) return null;
      if (offset > cursor.offset + 1) return [{ epoch, from: cursor.offset + 1, to: offset - 1 }];
      return [];
    }
    const missing = [{ epoch: cursor.epoch, from: cursor.offset + 1, to: null }];
    if (offset > 1) missing.push({ epoch, from: 1, to: offset - 1 });
    return missing;
  }

  // A message that arrived but can't be decoded: waiting for it would wait for ever (a
  // replay brings the same bytes), so report it lost, step over it and tell the hub.
  _onUndeliverable({ topic, epoch, offset }, why) {
    const sub = this.subs.get(topic);
    if (!sub || !sub.cursor) return { events: [], replies: [] };
    const missing = Session.gapsBefore(sub.cursor, epoch, offset);
    if (missing === null) {
      this.counters.duplicatesDropped += 1;
      return { events: [], replies: [] };
    }
    missing.push({ epoch, from: offset, to: offset, reason: UNDELIVERABLE });
    sub.cursor = { epoch, offset };
    this.counters.resyncs += 1;
    this.counters.undeliverable += 1;
    const report = { type: "undeliverable", topic, epoch, offset, reason: why.slice(0, 200) };
    return { events: [{ kind: "resync", topic, missing, cursor: sub.cursor }], replies: [JSON.stringify(report)] };
  }

  _onMessage(msg) {
    const sub = this.subs.get(msg.topic);
    if (!sub || !sub.cursor) return [];
    const missing = Session.gapsBefore(sub.cursor, msg.epoch, msg.offset);
    if (missing === null) {
      this.counters.duplicatesDropped += 1;
      return [];
    }
    const events = [];
    if (missing.length) {
      this.counters.resyncs += 1;
      events.push({ kind: "resync", topic: msg.topic, missing, cursor: { epoch: msg.epoch, offset: msg.offset - 1 } });
    }
    sub.cursor = { epoch: msg.epoch, offset: msg.offset };
    const recovered = msg.epoch === sub.replayEpoch && msg.offset <= sub.replayHead;
    this.counters.messagesReceived += 1;
    if (recovered) this.counters.messagesRecovered += 1;
    events.push({
      kind: "delivery",
      message: { topic: msg.topic, epoch: msg.epoch, offset: msg.offset, ts: msg.ts, data: msg.data, recovered },
    });
    return events;
  }
}

// --- close codes (docs/protocol.md) --------------------------------------------------------

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  SLOW_CONSUMER: 4008,
});

export function parseCloseHint(reason) {
  try {
    const body = JSON.parse(reason);
    const ms = body && body.retry_after_ms;
    if (typeof ms === "number" && ms >= 0 && ms <= 3_600_000) return ms / 1000;
  } catch {
    // not a hint: a plain human reason
  }
  return null;
}

// --- the driver ----------------------------------------------------------------------------

const now = () => performance.now() / 1000;
const CURSOR_KEY = (url) => `tether:cursors:${url}`;
// The hub URLs whose cursors a tab keeps, most recently saved last. A page that talks to
// a new URL each time (a dev server on a random port) would otherwise add an entry per
// run; 8 covers every hub one dashboard plausibly uses at once.
const CURSOR_INDEX = "tether:cursors";
const MAX_CURSOR_SETS = 8;
// Deliveries wait here, in order, while an async handler runs. Browsers offer no read
// backpressure on a WebSocket, so this is a hard bound instead: past it the connection is
// dropped and resumed from the cursor (the hub replays; nothing is lost). Same size as
// INBOX_SIZE in the Python client.
const INBOX_SIZE = 1024;

export class TetherClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    const known = new Set([
      ...Object.keys(DEFAULTS),
      "onStateChange", "onReconnect", "onResync", "onError",
      "persistCursors", "storage", "debug", "WebSocket", "token", "getToken",
    ]);
    for (const key of Object.keys(options)) {
      if (!known.has(key)) throw new TypeError(`unknown Tether option '${key}'`);
    }
    this.url = url;
    this.config = Object.freeze({ ...DEFAULTS, ...pick(options, Object.keys(DEFAULTS)) });
    const c = this.config;
    checkJitter({ jitter: c.jitter, ratio: c.jitterRatio, seconds: c.jitterSeconds });
    this.onStateChange = options.onStateChange || null;
    this.onReconnect = options.onReconnect || null;
    this.onResync = options.onResync || null;
    this.onError = options.onError || null;
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    // The token travels in the subprotocol list: the only header a browser can set, and
    // not part of the URL (so not in access logs). getToken() supplies fresh ones.
    this._token = options.token || null;
    this.getToken = options.getToken || null;
    this._refreshTimer = null;
    this._storage = options.persistCursors === false ? null : options.storage || safeSessionStorage();
    this._machine = new StateMachine();
    this._machine.listen((from, to) => this._stateChanged(from, to));
    this._session = new Session({
      outbox: new Outbox(this.config.outboxSize, this.config.outboxPolicy),
    });
    this._handlers = new Map();
    this._delivered = new Map();
    this._inbox = [];
    this._draining = false;
    this._ws = null;
    this._attempts = 0;
    this._connectedAt = 0;
    this._timer = null;
    this._nextAttemptAt = null;
    this._heartbeatTimer = null;
    this._expiryTimer = null;
    this._saveTimer = null;
    this._retryRequested = false;
    this._opening = false;
    this._started = false;
    // debug: true (helpers at window.tether), a name (helpers at window[name]) or false;
    // left out, the page decides: ?debug=true turns it on, as the overlays' teams expect.
    const debug = options.debug === undefined ? pageDebug() : options.debug;
    /** Whether this client runs in debug mode (verbose logs, window helpers, indicator shown). */
    this.debug = !!debug;
    this._verbose = this.debug;
    this._lastError = null;
    this._m = {
      totalReconnects: 0,
      failedReconnects: 0,
      successfulConnects: 0,
      heartbeatFailures: 0,
      circuitBreakerTrips: 0,
    };
    this._onOnline = () => this._networkBack();
    this._onOffline = () => this._networkGone();
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._networkBack();
    };
    this._onPageHide = () => this._saveCursors();
    this._stored = this._loadCursors();
    if (debug) this._installDebug(debug);
  }

  // --- public API ------------------------------------------------------------------------

  get state() {
    return this._machine.state;
  }

  metrics() {
    const c = this._session.counters;
    const t = now();
    return {
      state: this.state,
      reconnectAttempts: this._attempts,
      totalReconnects: this._m.totalReconnects,
      failedReconnects: this._m.failedReconnects,
      successfulConnects: this._m.successfulConnects,
      heartbeatFailures: this._m.heartbeatFailures,
      circuitBreakerTrips: this._m.circuitBreakerTrips,
      lastHeartbeat: c.lastHeartbeat === null ? null : Date.now() - (t - c.lastHeartbeat) * 1000,
      isCircuitOpen: this.state === State.FAILED,
      messagesReceived: c.messagesReceived,
      messagesRecovered: c.messagesRecovered,
      duplicatesDropped: c.duplicatesDropped,
      resyncs: c.resyncs,
      undeliverable: c.undeliverable,
      outboxSize: this._session.outbox.size,
      rtt: c.rtt,
      nextRetryIn: this._nextAttemptAt === null ? null : Math.max(0, this._nextAttemptAt - t),
      lastError: this._lastError,
    };
  }

  cursor(topic) {
    return this._delivered.get(topic) || this._session.cursor(topic);
  }

  isLive(topic) {
    return this._session.isLive(topic);
  }

  start() {
    if (this._started) return this;
    this._started = true;
    this._machine.fire(Trigger.START);
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
    this._delivered.delete(topic);
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
    this._retryRequested = true;
    if (this._ws) this._drop(this._ws, "reconnect requested");
    else this._runNext();
  }

  disconnect() {
    // Drop the connection as if the network failed (for testing recovery).
    if (this._ws) this._drop(this._ws, "disconnected by the app");
  }

  close() {
    if (this.state === State.CLOSED) return;
    this._machine.fire(Trigger.CLOSE);
    clearTimeout(this._timer);
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._expiryTimer);
    clearTimeout(this._refreshTimer);
    this._saveCursors();
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this._onOnline);
      window.removeEventListener("offline", this._onOffline);
      window.removeEventListener("pagehide", this._onPageHide);
      document.removeEventListener("visibilitychange", this._onVisible);
    }
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client closed");
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
    if (this.onStateChange) safeCall(this.onStateChange, from, to);
    this._emit("statechange", { from, to });
    for (const topic of this._handlers.keys()) this._emit("topicstate", { topic, live: this.isLive(topic) });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _runNext(delay = 0) {
    clearTimeout(this._timer);
    this._nextAttemptAt = now() + delay;
    this._timer = setTimeout(() => {
      this._nextAttemptAt = null;
      if (this._retryRequested) {
        this._retryRequested = false;
        this._attempts = 0;
        if (this._machine.can(Trigger.RETRY)) this._machine.fire(Trigger.RETRY);
      } else if (this.state === State.FAILED) {
        this._machine.fire(Trigger.PROBE);
      }
      if (this.state === State.CONNECTING || this.state === State.RECONNECTING) this._attempt();
    }, delay * 1000);
    this._emit("retry", { in: delay });
  }

  async _freshToken() {
    if (this.getToken) this._token = await this.getToken();
    return this._token;
  }

  async _attempt() {
    if (this._ws || this._opening) return;
    this._attempts += 1;
    this._opening = true;
    let ws;
    try {
      const token = await this._freshToken();
      if (this.state === State.CLOSED) return;
      ws = token
        ? new this._WebSocket(this.url, ["tether.v1", `tether.token.${token}`])
        : new this._WebSocket(this.url);
    } catch (err) {
      this._attemptFailed(`cannot open: ${err.message}`, null, false);
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
          ws.close(1002, "unsupported protocol version");
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

  _attemptFailed(reason, hint, fatal) {
    this._lastError = reason;
    this._log("info", `connect attempt ${this._attempts} failed: ${reason}`);
    if (this.state === State.CLOSED) return;
    if (this._retryRequested) return this._runNext(0);
    this._m.failedReconnects += 1;
    if (fatal || this._attempts >= this.config.maxAttempts) {
      this._m.circuitBreakerTrips += 1;
      this._machine.fire(Trigger.GAVE_UP);
      this._runNext(this.config.circuitCooldown);
      return;
    }
    this._machine.fire(Trigger.ATTEMPT_FAILED);
    this._runNext(hint !== null ? hint : this._backoff());
  }

  _backoff() {
    const c = this.config;
    return backoffDelay(this._attempts, {
      base: c.backoffBase, factor: c.backoffFactor, cap: c.backoffCap,
      jitter: c.jitter, ratio: c.jitterRatio, seconds: c.jitterSeconds,
    });
  }

  _opened(ws) {
    const reconnect = this._machine.everConnected;
    this._connectedAt = now();
    this._m.successfulConnects += 1;
    if (reconnect) this._m.totalReconnects += 1;
    // The first connection is not a reconnect: nothing to back off from yet (the
    // stable-period rule guards reconnects to a hub that accepts, then crashes).
    else this._attempts = 0;
    this._machine.fire(Trigger.OPENED);
    const frames = this._session.connectionOpened(now());
    for (const item of this._session.refused.splice(0)) {
      item.reject(new MessageTooBig(`message ${item.id} is larger than the hub takes`));
    }
    for (const f of frames) ws.send(f);
    this._pump(); // schedules what the hub's rate makes wait
    if (reconnect) this._enqueue({ kind: "reconnected" });
    this._heartbeat(ws);
    this._scheduleRefresh(ws);
  }

  // Send a fresh token at 80% of the current one's lifetime, inside the live connection.
  _scheduleRefresh(ws) {
    clearTimeout(this._refreshTimer);
    const exp = tokenExpiry(this._token);
    if (!this.getToken || exp === null) return;
    const delay = Math.max(0, (exp - Date.now() / 1000) * 0.8);
    this._refreshTimer = setTimeout(async () => {
      if (this._ws !== ws) return;
      try {
        const token = await this._freshToken();
        if (this._ws === ws && token) ws.send(JSON.stringify({ type: "auth", token }));
      } catch (err) {
        this._log("warn", "getToken failed", err);
      }
      this._scheduleRefresh(ws);
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
        this._delivered.delete(event.topic);
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
    if (this.onError) safeCallAsync(this.onError, code, message);
  }

  // A bug in the client itself: log it, tell the app, and fail the connection so that no
  // dead part hides behind a "connected" state (it reconnects and resumes from cursors).
  _internalError(ws, where, err) {
    console.error(`[tether] internal error in the ${where}; failing the connection`, err);
    this._lastError = `internal error in the ${where} (see the console)`;
    this._reportError(CLIENT_ERROR, this._lastError);
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
      if (this.onReconnect) await safeCallAsync(this.onReconnect);
      this._emit("reconnect", {});
    } else if (event.kind === "delivery") {
      const msg = event.message;
      this._delivered.set(msg.topic, { epoch: msg.epoch, offset: msg.offset });
      this._scheduleSave();
      const handler = this._handlers.get(msg.topic);
      if (handler) await safeCallAsync(handler, msg);
      this._emit("message", msg);
    } else if (event.kind === "resync") {
      if (event.cursor) this._delivered.set(event.topic, event.cursor);
      this._scheduleSave();
      this._log("warn", `resync ${event.topic}: missing ${JSON.stringify(event.missing)}`);
      if (this.onResync) await safeCallAsync(this.onResync, event.topic, event.missing);
      this._emit("resync", { topic: event.topic, missing: event.missing });
    } else if (event.kind === "confirmed") {
      if (event.cursor && !this._delivered.has(event.topic) && this._handlers.has(event.topic)) {
        this._delivered.set(event.topic, event.cursor);
        this._scheduleSave();
      }
      this._emit("topicstate", { topic: event.topic, live: this.isLive(event.topic) });
    }
  }

  _heartbeat(ws) {
    const tick = Math.max(0.05, Math.min(this._session.heartbeatInterval, this._session.heartbeatTimeout) / 4);
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
      if (this._attempts && t - this._connectedAt >= this.config.stableAfter) this._attempts = 0;
      const poll = this._session.poll(t, tick);
      if (poll.dead) {
        this._m.heartbeatFailures += 1;
        this._log("warn", "heartbeat deadline passed: connection presumed dead");
        this._drop(ws, "heartbeat timeout");
        return;
      }
      for (const f of poll.frames) ws.send(f);
      this._heartbeatTimer = setTimeout(check, tick * 1000);
    };
    this._heartbeatTimer = setTimeout(check, tick * 1000);
  }

  // End a socket now, from our side, without waiting for the close handshake (which a
  // dead network never completes), and carry on as if it had closed abnormally.
  _drop(ws, reason) {
    if (this._ws !== ws) return;
    detach(ws);
    try {
      ws.close(4000, reason.slice(0, 120));
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
    clearTimeout(this._pumpTimer);
    const wasConnected = this.state === State.CONNECTED;
    if (wasConnected) this._session.connectionLost();
    this._lastError = `${code} ${reason || ""}`.trim();
    this._log("info", `connection closed: ${this._lastError}`);
    if (this.state === State.CLOSED) return;
    if (!wasConnected) {
      const hinted = code === CloseCode.SERVICE_RESTART || code === CloseCode.TRY_AGAIN_LATER;
      // An auth failure is retried (with a fresh token, after backoff) only with getToken.
      const fatal = code === CloseCode.POLICY_VIOLATION && !this.getToken;
      this._attemptFailed(this._lastError, hinted ? parseCloseHint(reason) : null, fatal);
      return;
    }
    if (this._retryRequested) return this._runNext(0);
    if (now() - this._connectedAt >= this.config.stableAfter) this._attempts = 0;
    if (code === CloseCode.POLICY_VIOLATION && !this.getToken) {
      this._m.circuitBreakerTrips += 1;
      this._machine.fire(Trigger.GAVE_UP);
      this._runNext(this.config.circuitCooldown);
      return;
    }
    if (code === CloseCode.NORMAL) {
      this._machine.fire(Trigger.ENDED);
      return;
    }
    this._machine.fire(Trigger.DROPPED);
    const hint =
      code === CloseCode.SERVICE_RESTART || code === CloseCode.TRY_AGAIN_LATER ? parseCloseHint(reason) : null;
    this._runNext(hint !== null ? hint : this._backoff());
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
    } else if (this.state === State.RECONNECTING || this.state === State.FAILED) {
      if (!this._ws) {
        this._attempts = Math.min(this._attempts, this.config.maxAttempts - 1);
        this._runNext(0);
      }
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
    for (const [topic, cursor] of this._delivered) out[topic] = cursor;
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
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
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
