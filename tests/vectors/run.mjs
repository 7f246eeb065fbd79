// Runs golden vectors on the browser client's core (src/tether/static/tether-core.js) and
// prints what each step produced, as JSON: { "<file name>": [step results] }, or
// { "<file name>": { step, error } } if the core threw. tests/client/test_vectors.py runs
// this, runs the Python core on the same files, and compares both with the expectations.
// Canonical shapes are described there; this file only executes and converts names.
//
//   node tests/vectors/run.mjs tests/vectors/*.json

import { readFileSync } from "node:fs";
import { basename } from "node:path";

import { IllegalTransition, Lifecycle, Outbox, OutboxFull, Session, failure, handshakeClosed, handshakeRefused, parseCloseHint, refreshDelay } from "../../src/tether/static/tether-core.js";
import { DEFAULTS } from "../../src/tether/static/tether-constants.js";

const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
const cursor = (c) => (c ? { epoch: c.epoch, offset: c.offset } : null);
const gap = (g) => ({ epoch: g.epoch, from: g.from, to: g.to, reason: g.reason ?? null });
const frames = (list) => list.map((f) => JSON.parse(f));

function event(e) {
  switch (e.kind) {
    case "delivery": {
      const m = e.message;
      return { kind: "delivery", topic: m.topic, epoch: m.epoch, offset: m.offset, ts: m.ts, data: m.data, recovered: m.recovered };
    }
    case "resync":
      return { kind: "resync", topic: e.topic, missing: e.missing.map(gap), cursor: cursor(e.cursor) };
    case "confirmed":
      return { kind: "confirmed", topic: e.topic, recovered: e.recovered, cursor: cursor(e.cursor) };
    case "resolved":
      return e.ok
        ? { kind: "resolved", id: e.item.id, ok: true, result: e.result }
        : { kind: "resolved", id: e.item.id, ok: false, code: e.code, message: e.message };
    case "welcome":
      return { kind: "welcome", session: e.welcome.session };
    case "error":
      return { kind: "error", code: e.code, ref: e.ref };
    case "refused":
      return { kind: "refused", topic: e.topic, code: e.code, message: e.message };
    default:
      throw new Error(`unknown event ${e.kind}`);
  }
}

function runSession(vector) {
  const o = vector.session;
  const session = new Session({
    outbox: new Outbox(o.outbox_size ?? 1000, o.outbox_policy ?? "reject-new"),
    heartbeatInterval: o.heartbeat_interval ?? 25,
    heartbeatTimeout: o.heartbeat_timeout ?? 20,
    idPrefix: o.id_prefix ?? "c",
  });
  return vector.steps.map((step) => {
    const out = {};
    switch (step.do) {
      case "subscribe": {
        const frame = session.subscribe(step.topic, step.resume ?? null, step.rewind ?? 0);
        out.frames = frame === null ? [] : frames([frame]);
        break;
      }
      case "unsubscribe": {
        const frame = session.unsubscribe(step.topic);
        out.frames = frame === null ? [] : frames([frame]);
        break;
      }
      case "open":
        out.frames = frames(session.connectionOpened(step.now));
        break;
      case "lost":
        session.connectionLost();
        break;
      case "receive": {
        const text = "text" in step ? step.text : JSON.stringify(step.frame);
        const { events, replies } = session.receive(text, step.now);
        if (step.hand) for (const e of events) session.handedToApp(e); // else they wait
        out.events = events.map(event);
        out.frames = frames(replies);
        break;
      }
      case "poll": {
        const poll = session.poll(step.now);
        Object.assign(out, { frames: frames(poll.frames), dead: poll.dead, wake_at: poll.wakeAt });
        break;
      }
      case "probe":
        out.frames = frames(session.probe(step.now));
        break;
      case "send":
      case "publish": {
        const item =
          step.do === "send"
            ? session.makeSend(step.event, step.data, step.expires_at, step.key ?? null)
            : session.makePublish(step.topic, step.data, step.expires_at);
        out.id = item.id;
        try {
          out.displaced = session.outbox.add(item).map((old) => old.id);
        } catch (err) {
          if (!(err instanceof OutboxFull)) throw err;
          out.error = "OutboxFull";
        }
        break;
      }
      case "due": {
        const { frames: due, wakeAt } = session.due(step.now);
        Object.assign(out, { frames: frames(due), wake_at: wakeAt });
        break;
      }
      case "expire":
        out.ids = session.outbox.expire(step.now).map((item) => item.id);
        break;
      case "check":
        break;
      default:
        throw new Error(`unknown session step ${step.do}`);
    }
    const c = session.counters;
    out.counters = {
      messages_received: c.messagesReceived,
      messages_recovered: c.messagesRecovered,
      duplicates_dropped: c.duplicatesDropped,
      resyncs: c.resyncs,
      undeliverable: c.undeliverable,
      protocol_errors: c.protocolErrors,
      rtt: c.rtt,
      last_heartbeat: c.lastHeartbeat,
    };
    out.cursors = Object.fromEntries([...session.subs.keys()].map((t) => [t, cursor(session.cursor(t))]));
    out.app_cursors = Object.fromEntries([...session.subs.keys()].map((t) => [t, cursor(session.appCursor(t))]));
    out.live = Object.fromEntries([...session.subs.keys()].map((t) => [t, session.isLive(t)]));
    out.outbox = session.outbox.size;
    out.session_id = session.sessionId;
    return out;
  });
}

function runLifecycle(vector) {
  const o = vector.lifecycle;
  const config = { ...DEFAULTS };
  for (const [key, value] of Object.entries(o.config ?? {})) {
    if (!(camel(key) in DEFAULTS)) throw new Error(`unknown config ${key}`);
    config[camel(key)] = value;
  }
  const draws = o.rand ?? [0.5];
  let n = 0;
  const canRefresh = o.can_refresh ?? false;
  const life = new Lifecycle(config, { canRefresh, rand: () => draws[n++ % draws.length] });
  const failed = (why, out) => {
    Object.assign(out, { reason: why.reason, hint: why.hint, fatal: why.fatal });
    out.delay = life.attemptFailed(why);
  };
  const run = (step, out) => {
    switch (step.do) {
      case "start": life.start(); break;
      case "begin_attempt": life.beginAttempt(); break;
      case "attempt_failed": {
        const f = step.failure;
        out.delay = life.attemptFailed(failure(f.reason, { hint: f.hint ?? null, fatal: f.fatal ?? false }));
        break;
      }
      case "handshake_closed": failed(handshakeClosed(step.code, step.reason, { canRefresh }), out); break;
      case "handshake_refused": failed(handshakeRefused(step.status, step.retry_after ?? null, { canRefresh }), out); break;
      case "opened": out.reconnect = life.opened(step.now); break;
      case "stable": out.due = life.stable(step.now); break;
      case "heartbeat_failed": life.heartbeatFailed(); break;
      case "closed": out.delay = life.closed(step.code, step.reason, step.now); break;
      case "crashed": out.delay = life.crashed(); break;
      case "request_retry": life.requestRetry(); break;
      case "network_back": out.retry = life.networkBack(); break;
      case "wake": out.attempt = life.wake(); break;
      case "close": life.close(); break;
      case "close_hint": out.hint = parseCloseHint(step.reason); break;
      case "refresh_delay": out.delay = refreshDelay(step.expires_at, step.now, { failed: step.failed ?? false }); break;
      case "check": break;
      default: throw new Error(`unknown lifecycle step ${step.do}`);
    }
  };
  return vector.steps.map((step) => {
    const out = {};
    try {
      run(step, out);
    } catch (err) {
      if (!(err instanceof IllegalTransition)) throw err;
      out.raised = "IllegalTransition"; // an illegal move is refused, changing nothing
    }
    out.state = life.state;
    out.counters = {
      attempts: life.attempts,
      total_reconnects: life.totalReconnects,
      failed_reconnects: life.failedReconnects,
      successful_connects: life.successfulConnects,
      heartbeat_failures: life.heartbeatFailures,
      circuit_trips: life.circuitTrips,
      last_error: life.lastError,
      retry_requested: life.retryRequested,
    };
    return out;
  });
}

const results = {};
for (const path of process.argv.slice(2)) {
  const vector = JSON.parse(readFileSync(path, "utf8"));
  try {
    results[basename(path)] = "session" in vector ? runSession(vector) : runLifecycle(vector);
  } catch (err) {
    results[basename(path)] = { step: "?", error: String(err && err.stack ? err.stack : err) };
  }
}
process.stdout.write(JSON.stringify(results));
