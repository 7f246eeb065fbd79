// Tether browser client: one hub connection shared by every same-origin tab.
//
//   import { connect } from "/tether.js";
//   const client = connect(url, { shared: true });   // "worker" or "locks" force a way
//
// Theory of operation
// -------------------
// Each tab keeps a whole TetherClient of its own: its subscriptions and cursors, its
// outbox (with its own message ids), its callbacks, its state and metrics. What is
// shared is the socket. The client is given a *virtual* WebSocket (`SharedSocket`)
// whose frames travel to a `SharedConnection`, which owns the one real WebSocket to the
// hub and multiplexes every tab's virtual socket onto it:
//
// - hub -> tabs: `message` frames go to the sockets subscribed to their topic; replies
//   (`subscribed`, `unsubscribed`, `ack`/`nack`, `authed`, an `error` with a `ref`) go to
//   the socket that asked; the hub's pings are answered here; anything else goes to all.
// - tabs -> hub: frames are forwarded, except that subscriptions are reference-counted
//   (the last tab to leave a topic unsubscribes it at the hub; the others are answered
//   here) and a second subscribe to a topic waits for the first one's reply (the hub
//   answers them in turn, and a re-subscribe replaces the first).
// - A second tab's subscribe replaces the hub's subscription from *its* cursor, so the
//   other tabs may see a replayed message again: their own sessions drop it by offset,
//   exactly as after a reconnect. Loss and duplicates are judged per tab, by the same
//   rules (tether-core.js `Session`) as over a socket of its own.
// - When the real socket closes, every virtual socket closes with the same code and
//   reason, and each tab reconnects by its own backoff (and the close code's rules); the
//   first to reopen reopens the real one. Tabs keep their message ids, so what a tab
//   re-sends after any of this is deduplicated by the hub as after any reconnect.
//
// Where the SharedConnection lives: in a SharedWorker (`tether-worker.js`) where the
// browser has one, which outlives any tab; otherwise in one *leader* tab, elected with
// the Web Locks API, talking to the others over a BroadcastChannel. When the leader tab
// closes, the lock passes to another tab, which announces itself; every tab's virtual
// sockets then close with 1012 and a zero `retry_after_ms`, so each client reconnects at
// once (through the new leader) and resumes from its cursors: no gap, no duplicate.
// A connection is its first socket's user's (the token's `sub`): a socket offering another
// user's token is refused with 1008 while that user's tabs hold it, and gets a fresh
// connection once they have let go (a sign-out then sign-in within the linger time).
// Either way a tab holds a lock named after it for its lifetime, so the connection's
// owner learns when a tab is gone (closed, crashed, navigated away) and drops its share.

import { CloseCode, TOKEN_SUBPROTOCOL_PREFIX } from "./tether-constants.js";
import { Outbox, Session, tokenClaims } from "./tether-core.js";

// More virtual sockets than this on one hub connection is a runaway page (a client
// created in a loop), not tabs a person opened: refuse it rather than grow without bound.
const MAX_SHARED_SOCKETS = 100;
// Hub pings a tab sent, awaiting their pong (to route it back): one per tab per
// heartbeat; past this the oldest is forgotten (its tab then just sees no RTT sample).
const MAX_PENDING_PINGS = 1000;
// Frames a tab sends while it does not yet know its leader (an election in progress):
// a heartbeat's worth at most. Past this the oldest go; the tab's client re-sends what
// matters (its outbox, its subscriptions) when its socket reopens.
const MAX_QUEUED = 1000;
// Keep the hub connection this long after the last tab let go, so a page reload (one
// tab closes, the next opens) reuses it instead of a new handshake and replay.
const LINGER_MS = 2000;
// What a tab's virtual socket closes with when the connection's owner changes: "service
// restart, retry at once". Its client resumes from its cursors through the new owner.
const TAKEOVER_CLOSE = { code: CloseCode.SERVICE_RESTART, reason: JSON.stringify({ retry_after_ms: 0 }) };

// The hub writes every message frame with this start (docs/protocol.md, "Undecodable
// messages"): the topic can be read without parsing the payload.
const MESSAGE_START = /^\{"type":"message","topic":"([A-Za-z0-9_.:/*-]{1,200})"/;

const now = () => performance.now() / 1000;

// Whose a connection is: the `sub` of the token its first socket offered (null: none).
// The hub decides what a connection may see from the token it was opened with, so a
// socket signed in as someone else must never ride on it (a refreshed token keeps `sub`).
function subjectOf(protocols) {
  const offered = (protocols || []).find((p) => p.startsWith(TOKEN_SUBPROTOCOL_PREFIX));
  if (!offered) return null;
  const claims = tokenClaims(offered.slice(TOKEN_SUBPROTOCOL_PREFIX.length));
  return claims && typeof claims.sub === "string" ? claims.sub : "?";
}

function randomId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function push(map, key, value) {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

// --- the owner of the real socket ------------------------------------------------------------

/** One real WebSocket to `url`, shared by many virtual sockets (see the theory above). */
export class SharedConnection {
  constructor(url, { WebSocket = globalThis.WebSocket } = {}) {
    this.url = url;
    this._WebSocket = WebSocket;
    this.sockets = new Map(); // socket id -> { post, live, tab }
    this.watched = new Set(); // tabs whose end is being watched (whenTabGone)
    this._ws = null;
    this._welcome = null; // the hub's welcome frame, handed to every socket that opens
    this._session = null; // heartbeat only: pings, pongs, the late-check rule
    this._heartbeatTimer = null;
    this._lingerTimer = null;
    this._subject = null; // whose the real socket is (subjectOf), while there is one
    this._reset();
  }

  _reset() {
    this.refs = new Map(); // topic -> Set(socket id) subscribed
    this.subscribing = new Map(); // topic -> [{ sock, frame }]: the first was sent
    this.unsubscribing = new Map(); // topic -> [socket id | null]
    this.owners = new Map(); // send/publish id -> socket id
    this.authing = []; // socket ids, in the order their auth frames went
    this.pings = new Map(); // ts -> Set(socket id)
  }

  get connected() {
    return this._welcome !== null;
  }

  open(sock, protocols, post, tab = null) {
    if (this.sockets.size >= MAX_SHARED_SOCKETS) {
      post({ op: "closed", sock, code: CloseCode.TRY_AGAIN_LATER, reason: "too many tabs share this connection" });
      return;
    }
    const subject = subjectOf(protocols);
    if (this._ws !== null && subject !== this._subject) {
      if (this.sockets.size > 0) {
        // Another user's tabs hold this connection: refuse, as the hub would refuse a
        // token for the wrong user, rather than serve one user's tab another's data.
        const reason = "another user's tabs share this browser's connection: sign out there, or connect with shared: false";
        post({ op: "closed", sock, code: CloseCode.POLICY_VIOLATION, reason });
        return;
      }
      this._closeLink(CloseCode.NORMAL, "signed in as someone else"); // lingering after a sign-out
    }
    clearTimeout(this._lingerTimer);
    this.sockets.set(sock, { post, live: false, tab });
    if (this._welcome !== null) this._live(sock);
    else if (this._ws === null) {
      this._subject = subject;
      this._connect(protocols);
    }
  }

  send(sock, text) {
    const entry = this.sockets.get(sock);
    if (!entry || !entry.live || this._ws === null) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this._ws.send(text); // the hub answers it with an error, which goes to every tab
      return;
    }
    switch (frame && frame.type) {
      case "pong":
        return; // the hub's pings are answered here; tabs never see them
      case "ping": {
        if (this.pings.size >= MAX_PENDING_PINGS) this.pings.delete(this.pings.keys().next().value);
        const waiting = this.pings.get(frame.ts) || new Set();
        this.pings.set(frame.ts, waiting.add(sock));
        break;
      }
      case "subscribe": {
        const subs = this.refs.get(frame.topic) || new Set();
        this.refs.set(frame.topic, subs.add(sock));
        const queue = this.subscribing.get(frame.topic);
        if (queue) {
          queue.push({ sock, frame: text }); // sent when the one ahead is answered
          return;
        }
        this.subscribing.set(frame.topic, [{ sock, frame: text }]);
        break;
      }
      case "unsubscribe": {
        const subs = this.refs.get(frame.topic);
        if (subs) subs.delete(sock);
        if (subs && subs.size > 0) {
          entry.post({ op: "frame", sock, data: JSON.stringify({ type: "unsubscribed", topic: frame.topic }) });
          return;
        }
        this.refs.delete(frame.topic);
        push(this.unsubscribing, frame.topic, sock);
        break;
      }
      case "send":
      case "publish":
        this.owners.set(frame.id, sock);
        break;
      case "auth":
        this.authing.push(sock);
        break;
      default:
        break;
    }
    this._ws.send(text);
  }

  close(sock) {
    const entry = this.sockets.get(sock);
    if (!entry) return;
    this.sockets.delete(sock);
    for (const [topic, subs] of this.refs) {
      if (!subs.delete(sock) || subs.size > 0) continue;
      this.refs.delete(topic);
      if (this._welcome !== null) {
        push(this.unsubscribing, topic, null); // nobody waits for this reply
        this._ws.send(JSON.stringify({ type: "unsubscribe", topic }));
      }
    }
    for (const [topic, queue] of this.subscribing) {
      const rest = queue.filter((q, i) => i === 0 || q.sock !== sock);
      if (rest[0].sock === sock) rest[0] = { sock: null, frame: rest[0].frame }; // reply unwanted
      this.subscribing.set(topic, rest);
    }
    for (const [id, owner] of this.owners) if (owner === sock) this.owners.delete(id);
    this.authing = this.authing.map((s) => (s === sock ? null : s));
    for (const waiting of this.pings.values()) waiting.delete(sock);
    if (this.sockets.size === 0) {
      if (this._welcome === null) this._closeLink(CloseCode.NORMAL, "no tab needs it");
      else this._lingerTimer = setTimeout(() => this._closeLink(CloseCode.NORMAL, "no tab needs it"), LINGER_MS);
    }
  }

  /** Every socket of `tab` (a tab that has gone). */
  closeTab(tab) {
    for (const [sock, entry] of [...this.sockets]) if (entry.tab === tab) this.close(sock);
  }

  // --- the real socket ---------------------------------------------------------------------

  _connect(protocols) {
    let ws;
    try {
      ws = protocols && protocols.length ? new this._WebSocket(this.url, protocols) : new this._WebSocket(this.url);
    } catch (err) {
      this._linkClosed(1006, `cannot open: ${err.message}`);
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._received(ws, ev.data);
    ws.onclose = (ev) => {
      if (this._ws === ws) this._linkClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  _closeLink(code, reason) {
    const ws = this._ws;
    if (ws === null) return;
    ws.onmessage = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this._linkClosed(code, reason);
  }

  _linkClosed(code, reason) {
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._lingerTimer);
    this._ws = null;
    this._welcome = null;
    this._session = null;
    this._reset();
    const sockets = [...this.sockets];
    this.sockets.clear();
    for (const [sock, entry] of sockets) entry.post({ op: "closed", sock, code, reason });
  }

  _live(sock) {
    const entry = this.sockets.get(sock);
    entry.live = true;
    entry.post({ op: "frame", sock, data: this._welcome });
  }

  _received(ws, text) {
    if (typeof text !== "string") return this._broadcast(text); // each tab reports it
    const t = now();
    if (this._welcome === null) {
      this._welcome = text; // each tab's own client checks it (type, version)
      this._session = new Session({ outbox: new Outbox(1, "reject-new"), idPrefix: "shared" });
      this._session.connectionOpened(t);
      this._session.receive(text, t);
      this._heartbeat(ws);
      for (const sock of this.sockets.keys()) this._live(sock);
      return;
    }
    const start = MESSAGE_START.exec(text);
    if (start) {
      this._session.heard(t);
      return this._toTopic(start[1], text);
    }
    const { replies } = this._session.receive(text, t); // pongs to the hub's pings
    for (const r of replies) ws.send(r);
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return this._broadcast(text);
    }
    switch (frame && frame.type) {
      case "ping":
        return;
      case "pong": {
        const waiting = this.pings.get(frame.ts);
        this.pings.delete(frame.ts);
        for (const sock of waiting || []) this._to(sock, text);
        return;
      }
      case "message":
        return this._toTopic(frame.topic, text);
      case "subscribed":
        return this._answered(frame.topic, text, false);
      case "unsubscribed": {
        const queue = this.unsubscribing.get(frame.topic);
        const sock = queue ? queue.shift() : null;
        if (queue && queue.length === 0) this.unsubscribing.delete(frame.topic);
        return this._to(sock, text);
      }
      case "ack":
      case "nack": {
        const sock = this.owners.get(frame.id);
        this.owners.delete(frame.id); // a retryable nack: the tab re-sends, with the same id
        return this._to(sock, text);
      }
      case "authed":
        return this._to(this.authing.shift(), text);
      case "error":
        return this._error(frame, text);
      default:
        return this._broadcast(text);
    }
  }

  _error(frame, text) {
    const ref = frame.ref;
    if (typeof ref === "string" && this.owners.has(ref)) return this._to(this.owners.get(ref), text);
    if (typeof ref === "string" && this.subscribing.has(ref)) {
      // Final (no retry_after_ms): the hub holds no subscription for that tab any more.
      return this._answered(ref, text, frame.retry_after_ms === undefined || frame.retry_after_ms === null);
    }
    if (typeof ref === "string" && this.unsubscribing.has(ref)) {
      const queue = this.unsubscribing.get(ref);
      const sock = queue.shift();
      if (queue.length === 0) this.unsubscribing.delete(ref);
      return this._to(sock, text);
    }
    return this._broadcast(text);
  }

  // The hub answered the subscribe at the head of `topic`'s queue: hand it over, send the next.
  _answered(topic, text, refused) {
    const queue = this.subscribing.get(topic);
    if (!queue) return;
    const { sock } = queue.shift();
    if (refused && sock !== null) {
      const subs = this.refs.get(topic);
      if (subs) subs.delete(sock);
      if (subs && subs.size === 0) this.refs.delete(topic);
    }
    this._to(sock, text);
    if (queue.length === 0) this.subscribing.delete(topic);
    else if (this._ws !== null) this._ws.send(queue[0].frame);
  }

  _toTopic(topic, text) {
    for (const sock of this.refs.get(topic) || []) this._to(sock, text);
  }

  _to(sock, text) {
    const entry = sock === null || sock === undefined ? undefined : this.sockets.get(sock);
    if (entry && entry.live) entry.post({ op: "frame", sock, data: text });
  }

  _broadcast(text) {
    for (const sock of this.sockets.keys()) this._to(sock, text);
  }

  // The link's own liveness, by the same rule as every client's (late checks probe first).
  _heartbeat(ws) {
    const check = () => {
      if (this._ws !== ws) return;
      const t = now();
      const poll = this._session.poll(t);
      if (poll.dead) {
        ws.onmessage = ws.onclose = null;
        try {
          ws.close(CloseCode.DROPPED, "heartbeat timeout");
        } catch {
          // already closing
        }
        this._linkClosed(1006, "heartbeat timeout");
        return;
      }
      for (const f of poll.frames) ws.send(f);
      this._heartbeatTimer = setTimeout(check, Math.max(0, (poll.wakeAt - now()) * 1000));
    };
    check();
  }
}

// --- the tab's side ----------------------------------------------------------------------------

// A tab's id for its lifetime, and the lock it holds while it lives (released when the
// tab closes, crashes or navigates away: that is how the connection's owner learns it).
// Nothing is sent to the owner before the lock is *held*: the owner then asks for the
// same lock, and a request of the owner's that reached the lock manager first would be
// granted at once, as if the tab had gone (requests from two contexts race).
const TAB = randomId();
let tabLock = null; // resolves once this tab holds its lock

function holdTabLock() {
  if (tabLock === null) {
    tabLock =
      globalThis.navigator && navigator.locks
        ? new Promise((held) => {
            navigator.locks.request(`tether-tab:${TAB}`, () => {
              held();
              return new Promise(() => {}); // held until the tab goes
            });
          })
        : Promise.resolve();
  }
  return tabLock;
}

/** The owner learns of `tab`'s end by waiting for the lock it holds while alive. */
export function whenTabGone(tab, callback) {
  if (!globalThis.navigator || !navigator.locks) return;
  navigator.locks.request(`tether-tab:${tab}`, () => callback());
}

// A link from this tab to the SharedConnection in a SharedWorker.
class WorkerLink {
  constructor(url) {
    this.url = url;
    this.sockets = new Map(); // socket id -> SharedSocket
    const worker = new SharedWorker(new URL("./tether-worker.js", import.meta.url), {
      type: "module",
      name: "tether",
    });
    // A worker that cannot start (a blocked script, a crash): every socket fails, and
    // each client backs off and retries as after any failed attempt.
    worker.onerror = () => {
      for (const socket of [...this.sockets.values()]) socket._closedByLink(1006, "shared worker failed");
    };
    this.port = worker.port;
    this.port.onmessage = (ev) => deliver(this.sockets, ev.data);
    this.port.start();
    this.ready = holdTabLock();
  }

  post(msg) {
    // In order: each waits on the same promise, and its callbacks run as registered.
    this.ready.then(() => this.port.postMessage({ ...msg, url: this.url, tab: TAB }));
  }
}

// A link from this tab to the SharedConnection in the leader tab (maybe this one).
class LeaderLink {
  constructor(url) {
    this.url = url;
    this.sockets = new Map();
    this.leader = null;
    this.connection = null; // ours, while this tab leads
    this.queue = []; // frames for a leader not known yet
    this.channel = new BroadcastChannel(`tether:${url}`);
    this.channel.onmessage = (ev) => this._heard(ev.data);
    this.ready = holdTabLock();
    navigator.locks.request(`tether-leader:${url}`, () => {
      this.connection = new SharedConnection(url);
      this._leaderIs(TAB);
      this.channel.postMessage({ op: "leader", id: TAB });
      return new Promise(() => {}); // lead until this tab goes
    });
    this.channel.postMessage({ op: "who" });
  }

  post(msg) {
    if (this.leader === null) {
      if (this.queue.length >= MAX_QUEUED) this.queue.shift();
      this.queue.push(msg);
    } else if (this.leader === TAB) {
      // This tab's own sockets: not watched (the connection goes with the tab anyway).
      this._handle(null, msg, (reply) => queueMicrotask(() => deliver(this.sockets, reply)));
    } else {
      const leader = this.leader;
      this.ready.then(() => this.channel.postMessage({ ...msg, to: leader, from: TAB }));
    }
  }

  _heard(msg) {
    if (msg.op === "leader") return this._leaderIs(msg.id);
    if (msg.op === "who") {
      if (this.connection) this.channel.postMessage({ op: "leader", id: TAB });
      return;
    }
    if (msg.to !== TAB) return;
    if (msg.op === "frame" || msg.op === "closed") return deliver(this.sockets, msg);
    if (this.connection) this._handle(msg.from, msg, (reply) => this.channel.postMessage({ ...reply, to: msg.from }));
  }

  _handle(from, msg, post) {
    serve(this.connection, from, msg, post);
  }

  _leaderIs(id) {
    if (id === this.leader) return;
    const changed = this.leader !== null;
    this.leader = id;
    if (changed) {
      // The old leader's connection is gone with it: every socket reconnects, at once.
      for (const socket of [...this.sockets.values()]) socket._closedByLink(TAKEOVER_CLOSE.code, TAKEOVER_CLOSE.reason);
    }
    const queued = this.queue.splice(0);
    for (const msg of queued) if (this.sockets.has(msg.sock)) this.post(msg);
  }
}

// Hand a message from a SharedConnection to the tab's socket it names.
function deliver(sockets, msg) {
  const socket = sockets.get(msg.sock);
  if (!socket) return;
  if (msg.op === "frame") socket._frame(msg.data);
  else if (msg.op === "closed") socket._closedByLink(msg.code, msg.reason);
}

/** Apply a tab's message (`open`/`send`/`close`) to `connection`, watching for the
 *  tab's end. Shared by the worker and the leader tab. */
export function serve(connection, tab, msg, post) {
  if (tab && !connection.watched.has(tab)) {
    connection.watched.add(tab);
    whenTabGone(tab, () => {
      connection.watched.delete(tab);
      connection.closeTab(tab);
    });
  }
  if (msg.op === "open") connection.open(msg.sock, msg.protocols, post, tab);
  else if (msg.op === "send") connection.send(msg.sock, msg.data);
  else if (msg.op === "close") connection.close(msg.sock);
}

const links = new Map(); // `${via}|${url}` -> link, one per page

function linkFor(url, via) {
  const key = `${via}|${url}`;
  let link = links.get(key);
  if (!link) {
    link = via === "worker" ? new WorkerLink(url) : new LeaderLink(url);
    links.set(key, link);
  }
  return link;
}

/** Which way a page can share: "worker" (SharedWorker), "locks" (a leader tab), or null. */
export function sharingSupport() {
  if (typeof SharedWorker === "function") return "worker";
  if (globalThis.navigator && navigator.locks && typeof BroadcastChannel === "function") return "locks";
  return null;
}

let nextSocket = 0;

/**
 * A WebSocket class for TetherClient's `WebSocket` option whose instances share one real
 * connection per hub URL with every same-origin tab. `via`: "worker", "locks", or true /
 * "auto" (a SharedWorker where the browser has one, else a leader tab). Throws where
 * the browser has neither.
 */
export function sharedWebSocket(via = "auto") {
  const way = via === true || via === "auto" ? sharingSupport() : via;
  if (way !== "worker" && way !== "locks") throw new TypeError(`shared: cannot share a connection this way (${via})`);
  if (way === "locks" && !(globalThis.navigator && navigator.locks)) throw new TypeError("shared: this browser has no Web Locks");
  return class SharedSocket {
    constructor(url, protocols = []) {
      this.url = url;
      this.readyState = 0;
      this.onmessage = this.onclose = this.onerror = null;
      this._id = `${TAB}:${++nextSocket}`;
      this._link = linkFor(url, way);
      this._link.sockets.set(this._id, this);
      this._link.post({ op: "open", sock: this._id, protocols: [].concat(protocols) });
    }

    send(data) {
      if (this.readyState !== 1) return;
      this._link.post({ op: "send", sock: this._id, data });
    }

    close(code = CloseCode.NORMAL, reason = "") {
      if (this.readyState >= 2) return;
      this._link.post({ op: "close", sock: this._id });
      this._closedByLink(code, reason);
    }

    _frame(data) {
      if (this.readyState === 0) this.readyState = 1;
      if (this.readyState === 1 && this.onmessage) this.onmessage({ data });
    }

    _closedByLink(code, reason) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this._link.sockets.delete(this._id);
      const onclose = this.onclose;
      // Asynchronously, as a real socket's close event: the client may be mid-call.
      if (onclose) setTimeout(() => onclose({ code, reason, wasClean: false }), 0);
    }
  };
}
