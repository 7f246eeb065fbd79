// Tether browser client, core — protocol v1 (docs/protocol.md). No I/O, no DOM, no timers.
//
// Theory of operation
// -------------------
// Everything the browser client decides lives here, as the Python client's sans-I/O
// core does (tether/client/session.py, lifecycle.py, state.py): `Session` is the protocol
// logic (frames and times in, events and frames out), `Lifecycle` the connection policy
// (attempts, backoff, circuit, close codes, counters), `StateMachine` the one transition
// table. The driver (tether.js) owns the WebSocket, the timers and the browser signals
// and passes `now` (seconds, monotonic) into every call.
//
// Shared values (defaults, codes, the transition table, limits, the hub's frame schema)
// are not typed here: they come from tether-constants.js, generated from the Python
// source. The golden vectors in tests/vectors/ run this module (in Node) and the Python
// core through the same steps, so the two cannot drift apart unnoticed.

import {
  AUTH_FAILURE_CODES,
  DEFAULT_RETRY_MS,
  HINTED_CODES,
  Jitter,
  LATE_BY,
  MAX_COUNT,
  MAX_RETRY_HINT_MS,
  NO_RECONNECT_CODES,
  PACE_BURST_SHARE,
  PACE_RATE_SHARE,
  REFRESH_AT,
  REFRESH_RETRY_MAX,
  REFRESH_RETRY_MIN,
  RETRYABLE as RETRYABLE_CODES,
  SERVER_FRAME_SCHEMA,
  State,
  TRANSITIONS,
  Trigger,
  UNDELIVERABLE,
} from "./tether-constants.js";

const RETRYABLE = new Set(RETRYABLE_CODES);

// --- errors and the state machine (tether/errors.py, tether/client/state.py) ---------------

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

// --- backoff: full jitter by default (tether/backoff.py) ----------------------------------

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


// --- outbox (tether/outbox.py) and pacing (tether/ratelimit.py) ---------------------------

export class Outbox {
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


export class TokenBucket {
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


// --- session: protocol logic without I/O (tether/client/session.py) ------------------------

const utf8 = new TextEncoder();

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
  constructor({ outbox, heartbeatInterval = 25, heartbeatTimeout = 20, idPrefix = null }) {
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
    this.idPrefix = idPrefix || randomHex(8);
    this.nextId = 0;
    this.lastReceived = 0;
    this.nextPing = 0;
    this.pollDue = null; // when the last poll() asked to run next (to tell a late check)
    this.probeSent = 0; // a late check's probe: sent at, and dead if nothing arrives by
    this.probeDeadline = null;
    this.maxFrameBytes = null; // the hub's, from welcome
    this.sessionId = null; // the hub's id for this connection (welcome.session): its logs' name for us
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

  // Where the application is in `topic`: the last message (or reported gap) handed to
  // it, else where its subscription starts. What to persist and resume from.
  appCursor(topic) {
    const sub = this.subs.get(topic);
    if (!sub) return null;
    return sub.handed || sub.cursor;
  }
  // The driver handed `event` to the application: its cursor moves.
  handedToApp(event) {
    const topic = event.kind === "delivery" ? event.message.topic : event.topic;
    const sub = topic === undefined ? undefined : this.subs.get(topic);
    if (!sub) return;
    if (event.kind === "delivery") sub.handed = { epoch: event.message.epoch, offset: event.message.offset };
    else if (event.kind === "resync" && event.cursor) sub.handed = event.cursor;
    else if (event.kind === "confirmed" && !sub.handed) sub.handed = event.cursor;
  }
  // Every subscription's app cursor that has one: [topic, cursor] pairs.
  *appCursors() {
    for (const topic of this.subs.keys()) {
      const cursor = this.appCursor(topic);
      if (cursor) yield [topic, cursor];
    }
  }

  subscribe(topic, resume = null, rewind = 0) {
    if (!Number.isSafeInteger(rewind) || rewind < 0 || rewind > MAX_COUNT) {
      throw new RangeError(`rewind must be a whole number from 0 to ${MAX_COUNT}, not ${rewind}`);
    }
    let sub = this.subs.get(topic);
    if (!sub) {
      sub = { topic, cursor: resume, rewind, replayHead: 0, replayEpoch: "", confirmed: false, handed: null };
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
    this.pollDue = this.probeDeadline = null;
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
    this.sessionId = null;
    this.paced = []; // never written: connectionOpened rebuilds what is needed
    for (const sub of this.subs.values()) sub.confirmed = false;
    this.outbox.markAllUnsent();
  }

  // Heartbeat check: ping when due; declare the link dead past its deadline. Call it again
  // at wakeAt. A check that runs more than LATE_BY after that (a throttled background tab,
  // a laptop that slept) and finds the deadline passed sends a probe ping and waits
  // heartbeatTimeout for any frame first: the silence may be the check's own, not the hub's.
  poll(now) {
    const late = this.pollDue !== null && now > this.pollDue + LATE_BY;
    const deadline = this.lastReceived + this.heartbeatInterval + this.heartbeatTimeout;
    if (this.probeDeadline !== null) {
      if (this.lastReceived >= this.probeSent) this.probeDeadline = null; // alive
      else if (now >= this.probeDeadline) return { frames: [], dead: true, wakeAt: now };
    }
    const result = { frames: [], dead: false, wakeAt: 0 };
    if (now >= deadline && this.probeDeadline === null) {
      if (!late) return { frames: [], dead: true, wakeAt: now };
      this.probeSent = now;
      this.probeDeadline = now + this.heartbeatTimeout;
      this.nextPing = now; // the probe is this check's ping
    }
    if (now >= this.nextPing) {
      result.frames.push(pingFrame(now));
      this.nextPing = now + this.heartbeatInterval;
    }
    result.wakeAt = Math.min(this.nextPing, this.probeDeadline ?? deadline);
    this.pollDue = result.wakeAt;
    return result;
  }

  // An explicit liveness check (the tab became visible, the network came back): ping, and
  // the link is dead if nothing arrives within heartbeatTimeout. Returns the frames to write.
  probe(now) {
    if (!this.connected) return [];
    this.probeSent = now;
    this.probeDeadline = now + this.heartbeatTimeout;
    this.nextPing = now + this.heartbeatInterval;
    return [pingFrame(now)];
  }

  // A frame arrived that the caller handles itself (a shared connection routes message
  // frames to tabs unread): for the heartbeat, the link is alive.
  heard(now) {
    this.lastReceived = now;
  }

  receive(text, now) {
    this.lastReceived = now;
    const { frame, code, message } = decodeServerFrame(text);
    if (frame === null) {
      this.counters.protocolErrors += 1;
      const envelope = messageEnvelope(text);
      if (envelope) return this._onUndeliverable(envelope, message);
      // A hub that speaks garbage is a bug worth surfacing, not a reason to drop data.
      return { events: [{ kind: "error", code, message, ref: null }], replies: [] };
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
        this.sessionId = frame.session;
        this.heartbeatInterval = frame.heartbeat_ms / 1000;
        this.heartbeatTimeout = frame.heartbeat_timeout_ms / 1000;
        this.maxFrameBytes = frame.limits.max_frame_bytes;
        this.bucket = null;
        if (frame.limits.inbound_rate > 0 && frame.limits.inbound_burst > 0) {
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
          this._repaceRefused(frame.ref);
          return { events: [], replies: [] };
        }
        if (frame.ref !== null && this.subs.has(frame.ref)) {
          // Final: the hub holds no subscription to this topic; re-subscribing on every
          // reconnect would only be refused again (tether/client/session.py: the same rule).
          this.subs.delete(frame.ref);
          return { events: [{ kind: "refused", topic: frame.ref, code: frame.code, message: frame.message }], replies: [] };
        }
        return {
          events: [{ kind: "error", code: frame.code, message: frame.message, ref: frame.ref }],
          replies: [],
        };
      case "unsubscribed":
        this.unsubscribing.delete(frame.topic);
        return { events: [], replies: [] };
      default: // authed: nothing to do (the hub took the fresh token)
        return { events: [], replies: [] };
    }
  }

  _onSubscribed(reply) {
    const sub = this.subs.get(reply.topic);
    if (!sub) return [];
    const resume = sub.cursor;
    let offset = resume && resume.epoch === reply.epoch ? resume.offset : 0;
    if (!resume) offset = Math.max(0, reply.head - reply.rewound); // a rewind's replay follows the cursor
    const missing = reply.missing;
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
      if (offset > cursor.offset + 1) return [{ epoch, from: cursor.offset + 1, to: offset - 1, reason: null }];
      return [];
    }
    const missing = [{ epoch: cursor.epoch, from: cursor.offset + 1, to: null, reason: null }];
    if (offset > 1) missing.push({ epoch, from: 1, to: offset - 1, reason: null });
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

function pingFrame(now) {
  return JSON.stringify({ type: "ping", ts: Math.floor(now * 1000) });
}

// --- the hub's frames, checked against the schema the Python client decodes with ----------

// A frame from the hub, parsed and checked against SERVER_FRAME_SCHEMA (msgspec's schema of
// tether.protocol.ServerFrame) with its defaults filled in: { frame } on success, else
// { frame: null, code, message } with the error code the Python client reports for it.
export function decodeServerFrame(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { frame: null, code: "invalid_json", message: String(err.message || err) };
  }
  try {
    return { frame: conform(value, SERVER_FRAME_SCHEMA, "$"), code: null, message: null };
  } catch (err) {
    if (!(err instanceof FrameInvalid)) throw err;
    return { frame: null, code: "invalid_frame", message: err.message };
  }
}

class FrameInvalid extends Error {}

const DEFS = SERVER_FRAME_SCHEMA.$defs;
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const TYPE_CHECKS = {
  integer: (v) => Number.isSafeInteger(v),
  number: (v) => typeof v === "number" && Number.isFinite(v),
  string: (v) => typeof v === "string",
  boolean: (v) => typeof v === "boolean",
  null: (v) => v === null,
  array: Array.isArray,
  object: isObject,
};

// The subset of JSON Schema msgspec emits for our frames: $ref, anyOf (with a
// discriminator), enum, type, properties/required/default, items. Unknown fields are kept,
// as msgspec ignores them: a newer hub may add optional fields within a version.
function conform(value, schema, path) {
  if (schema.$ref) return conform(value, DEFS[schema.$ref.slice("#/$defs/".length)], path);
  if (schema.discriminator) {
    const { propertyName, mapping } = schema.discriminator;
    if (!isObject(value)) throw new FrameInvalid(`Expected \`object\`, got \`${kind(value)}\` - at \`${path}\``);
    const ref = mapping[value[propertyName]];
    if (ref === undefined) throw new FrameInvalid(`Invalid value ${JSON.stringify(value[propertyName])} - at \`${path}.${propertyName}\``);
    return conform(value, { $ref: ref }, path);
  }
  if (schema.anyOf) {
    for (const option of schema.anyOf) {
      try {
        return conform(value, option, path);
      } catch (err) {
        if (!(err instanceof FrameInvalid)) throw err;
      }
    }
    throw new FrameInvalid(`Expected ${schema.anyOf.map((o) => `\`${o.type}\``).join(" | ")}, got \`${kind(value)}\` - at \`${path}\``);
  }
  if (schema.enum) {
    if (!schema.enum.includes(value)) throw new FrameInvalid(`Invalid value ${JSON.stringify(value)} - at \`${path}\``);
    return value;
  }
  if (schema.type === undefined) return value; // any JSON value (a message's data)
  if (!TYPE_CHECKS[schema.type](value)) {
    throw new FrameInvalid(`Expected \`${schema.type}\`, got \`${kind(value)}\` - at \`${path}\``);
  }
  if (schema.type === "array") return value.map((item, i) => conform(item, schema.items, `${path}[${i}]`));
  if (schema.type !== "object") return value;
  const out = { ...value };
  for (const name of schema.required || []) {
    if (!(name in value)) throw new FrameInvalid(`Object missing required field \`${name}\` - at \`${path}\``);
  }
  for (const [name, sub] of Object.entries(schema.properties || {})) {
    if (name in value) out[name] = conform(value[name], sub, `${path}.${name}`);
    else if ("default" in sub) out[name] = structuredClone(sub.default);
  }
  return out;
}

function kind(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (Number.isInteger(v)) return "int";
  return typeof v === "number" ? "float" : typeof v === "string" ? "str" : typeof v;
}

// --- connection policy without I/O (tether/client/lifecycle.py has the theory) ------------

// The retry_after_ms hint of a 1012/1013 close reason, in seconds (null: none).
export function parseCloseHint(reason) {
  let body;
  try {
    body = JSON.parse(reason);
  } catch {
    return null; // not a hint: a plain human reason
  }
  const ms = isObject(body) ? body.retry_after_ms : undefined;
  return typeof ms === "number" && ms >= 0 && ms <= MAX_RETRY_HINT_MS ? ms / 1000 : null;
}

// Why an attempt did not produce a session: `hint` overrides backoff, `fatal` opens the
// circuit at once (retrying could only fail the same way).
export function failure(reason, { hint = null, fatal = false } = {}) {
  return Object.freeze({ reason, hint, fatal });
}

// The hub closed the socket before `welcome` (refused the session).
export function handshakeClosed(code, reason, { canRefresh }) {
  const hint = HINTED_CODES.includes(code) ? parseCloseHint(reason) : null;
  // With a token source an auth failure is retried (with backoff and a fresh token).
  const fatal = AUTH_FAILURE_CODES.includes(code) && !canRefresh;
  return failure(`closed during handshake: ${code} ${reason || ""}`.trim(), { hint, fatal });
}

// The HTTP upgrade (or request) was answered with `status` (and maybe a Retry-After).
export function handshakeRefused(status, retryAfter, { canRefresh }) {
  const hint = retryAfter && /^[0-9]+$/.test(retryAfter) ? Number(retryAfter) : null;
  const fatal = (status === 401 || status === 403) && !canRefresh;
  return failure(`handshake refused: HTTP ${status}`, { hint, fatal });
}

// Seconds until the next token refresh, for a token expiring at `expiresAt` (both
// wall-clock seconds). `failed`: the last refresh failed, try again soon (never a busy loop).
export function refreshDelay(expiresAt, now, { failed = false } = {}) {
  const remaining = Math.max(0, expiresAt - now);
  if (failed) return Math.min(REFRESH_RETRY_MAX, Math.max(REFRESH_RETRY_MIN, remaining / 4));
  return remaining * REFRESH_AT;
}

// Attempts, backoff, circuit and health counters of one client; the twin of
// tether.client.lifecycle.Lifecycle, method for method. Pure: pass `now` in.
export class Lifecycle {
  constructor(config, { canRefresh = false, rand = Math.random } = {}) {
    this.config = config;
    this.canRefresh = canRefresh;
    this._rand = rand;
    this.machine = new StateMachine();
    this.attempts = 0; // since the last stable connection: what backoff and the circuit count
    this.totalReconnects = 0;
    this.failedReconnects = 0;
    this.successfulConnects = 0;
    this.heartbeatFailures = 0;
    this.circuitTrips = 0;
    this.lastError = null;
    this.connectedAt = null;
    this.retryRequested = false; // set by requestRetry(), consumed by wake()
  }

  get state() {
    return this.machine.state;
  }

  start() {
    this.machine.fire(Trigger.START);
  }

  beginAttempt() {
    this.attempts += 1;
  }

  // An attempt failed: the delay before wake() (null: wait for an explicit reconnect).
  attemptFailed(why) {
    this.lastError = why.reason;
    if (this.state === State.CLOSED) return null;
    if (this.retryRequested) return 0;
    this.failedReconnects += 1;
    if (why.fatal || this.attempts >= this.config.maxAttempts) return this._trip();
    this.machine.fire(Trigger.ATTEMPT_FAILED);
    return why.hint !== null ? why.hint : this.backoff();
  }

  // The hub welcomed us; returns whether this is a *re*connect (onReconnect).
  opened(now) {
    const reconnect = this.machine.everConnected;
    this.connectedAt = now;
    this.retryRequested = false; // a reconnect() during this attempt: it has happened
    this.successfulConnects += 1;
    if (reconnect) this.totalReconnects += 1;
    // The first connection is not a reconnect: nothing to back off from yet.
    else this.attempts = 0;
    this.machine.fire(Trigger.OPENED);
    return reconnect;
  }

  // Reset the retry counter once connected for stableAfter; returns when to call again
  // (null: nothing left to reset).
  stable(now) {
    if (!this.attempts || this.connectedAt === null || this.state !== State.CONNECTED) return null;
    const due = this.connectedAt + this.config.stableAfter;
    if (now >= due) {
      this.attempts = 0;
      return null;
    }
    return due;
  }

  heartbeatFailed() {
    this.heartbeatFailures += 1;
  }

  // A connection that had been opened has ended with `code`: the delay before wake(), or
  // null to stay down until an explicit reconnect.
  closed(code, reason, now) {
    this.lastError = `${code} ${reason || ""}`.trim();
    const connectedAt = this.connectedAt;
    this.connectedAt = null;
    if (this.state === State.CLOSED) return null;
    if (this.retryRequested) return 0;
    if (connectedAt !== null && now - connectedAt >= this.config.stableAfter) this.attempts = 0;
    if (AUTH_FAILURE_CODES.includes(code) && !this.canRefresh) return this._trip();
    if (NO_RECONNECT_CODES.includes(code)) {
      this.machine.fire(Trigger.ENDED);
      return null;
    }
    this.machine.fire(Trigger.DROPPED);
    const hint = HINTED_CODES.includes(code) ? parseCloseHint(reason) : null;
    return hint !== null ? hint : this.backoff();
  }

  // A bug inside the driver ended an attempt: count it as a failed one.
  crashed() {
    if (this.state === State.CLOSED) return null;
    if (this.retryRequested) return 0;
    if (this.state === State.CONNECTED) {
      this.connectedAt = null;
      this.machine.fire(Trigger.DROPPED);
      return this.backoff();
    }
    return this.attemptFailed(failure("internal error"));
  }

  // reconnect(): retry now, with the counter and the circuit reset.
  requestRetry() {
    this.retryRequested = true;
  }

  // The network (or the tab) is back while waiting: retry now, as a last attempt at most,
  // so a failure right away does not skip the circuit. Returns whether to.
  networkBack() {
    if (this.state !== State.RECONNECTING && this.state !== State.FAILED) return false;
    this.attempts = Math.min(this.attempts, this.config.maxAttempts - 1);
    return true;
  }

  // The wait is over: fire RETRY (if asked) or PROBE (circuit half-open); returns whether
  // to start an attempt.
  wake() {
    if (this.retryRequested) {
      this.retryRequested = false;
      this.attempts = 0;
      if (this.machine.can(Trigger.RETRY)) this.machine.fire(Trigger.RETRY);
    } else if (this.state === State.FAILED) {
      this.machine.fire(Trigger.PROBE);
    }
    return this.state === State.CONNECTING || this.state === State.RECONNECTING;
  }

  close() {
    if (this.state !== State.CLOSED) this.machine.fire(Trigger.CLOSE);
  }

  // The delay before the next attempt: ceiling by attempts so far, jittered.
  backoff() {
    const c = this.config;
    return backoffDelay(
      this.attempts,
      { base: c.backoffBase, factor: c.backoffFactor, cap: c.backoffCap, jitter: c.jitter, ratio: c.jitterRatio, seconds: c.jitterSeconds },
      this._rand(),
    );
  }

  _trip() {
    this.circuitTrips += 1;
    this.machine.fire(Trigger.GAVE_UP);
    return this.config.circuitCooldown;
  }
}

// A JWT's claims, read without verifying it (the hub verifies): null if it is not one.
// Clients read `exp` (when to refresh) and `sub` (whose a shared connection is).
export function tokenClaims(token) {
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}
