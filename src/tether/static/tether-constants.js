// Generated from the Python source by `python -m tether.jsgen` (make constants): do not
// edit. tests/test_jsgen.py fails when this file is stale. Every value here is the
// Python client's (tether.client, tether.config, tether.errors, tether.protocol); the
// reason beside each is the one written next to it there.

function deepFreeze(value) {
  if (value && typeof value === "object") {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

// --- protocol (docs/protocol.md) ---

export const PROTOCOL_VERSION = 1;
// Subprotocol every Tether client offers; the hub selects it.
export const SUBPROTOCOL = "tether.v1";
// Prefix of the subprotocol that carries a browser's token.
export const TOKEN_SUBPROTOCOL_PREFIX = "tether.token.";
// The largest integer a browser holds exactly (JSON numbers are doubles there).
export const MAX_COUNT = 9007199254740991;
// ``Gap.reason`` of a message that arrived but could not be decoded (and was stepped over).
export const UNDELIVERABLE = "undeliverable";
// WebSocket close codes of the protocol (docs/protocol.md, Close codes). The hub sends
// 1000-4008 and each tells a client what to do; a client sends 1000, ``DROPPED`` and
// ``PROTOCOL_MISMATCH`` (a browser may send only 1000 and 3000-4999).
export const CloseCode = deepFreeze({
  "NORMAL": 1000,
  "GOING_AWAY": 1001,
  "PROTOCOL_ERROR": 1002,
  "ABNORMAL": 1006,
  "POLICY_VIOLATION": 1008,
  "MESSAGE_TOO_BIG": 1009,
  "INTERNAL_ERROR": 1011,
  "SERVICE_RESTART": 1012,
  "TRY_AGAIN_LATER": 1013,
  "SLOW_CONSUMER": 4008,
  "DROPPED": 4000,
  "PROTOCOL_MISMATCH": 4002
});
// Codes carried by ``error`` and ``nack`` frames.
export const ErrorCode = deepFreeze({
  "INVALID_JSON": "invalid_json",
  "INVALID_FRAME": "invalid_frame",
  "BINARY_FRAME": "binary_frame",
  "TOO_MANY_SUBSCRIPTIONS": "too_many_subscriptions",
  "NO_HANDLER": "no_handler",
  "HANDLER_ERROR": "handler_error",
  "OVERLOADED": "overloaded",
  "FORBIDDEN": "forbidden",
  "INVALID_TOKEN": "invalid_token",
  "RATE_LIMITED": "rate_limited",
  "INVALID_PAYLOAD": "invalid_payload",
  "TOO_MANY_TOPICS": "too_many_topics",
  "UNAVAILABLE": "unavailable",
  "IN_PROGRESS": "in_progress"
});
// Close codes after which a client must not reconnect on its own.
export const NO_RECONNECT_CODES = deepFreeze([
  1000
]);
// Close codes after which a client stops (FAILED) unless it can get a fresh credential.
export const AUTH_FAILURE_CODES = deepFreeze([
  1008
]);
// Close codes whose reason carries a ``retry_after_ms`` hint.
export const HINTED_CODES = deepFreeze([
  1012,
  1013
]);
// JSON Schema of every frame the hub sends (msgspec's, from tether.protocol): the browser
// session validates frames against it as the Python one does.
export const SERVER_FRAME_SCHEMA = deepFreeze({"anyOf": [{"$ref": "#/$defs/Welcome"}, {"$ref": "#/$defs/Subscribed"}, {"$ref": "#/$defs/Unsubscribed"}, {"$ref": "#/$defs/Message"}, {"$ref": "#/$defs/Ack"}, {"$ref": "#/$defs/Nack"}, {"$ref": "#/$defs/Error"}, {"$ref": "#/$defs/Authed"}, {"$ref": "#/$defs/Ping"}, {"$ref": "#/$defs/Pong"}], "discriminator": {"propertyName": "type", "mapping": {"welcome": "#/$defs/Welcome", "subscribed": "#/$defs/Subscribed", "unsubscribed": "#/$defs/Unsubscribed", "message": "#/$defs/Message", "ack": "#/$defs/Ack", "nack": "#/$defs/Nack", "error": "#/$defs/Error", "authed": "#/$defs/Authed", "ping": "#/$defs/Ping", "pong": "#/$defs/Pong"}}, "$defs": {"Welcome": {"type": "object", "properties": {"type": {"enum": ["welcome"]}, "version": {"type": "integer"}, "session": {"type": "string"}, "heartbeat_ms": {"type": "integer"}, "heartbeat_timeout_ms": {"type": "integer"}, "limits": {"$ref": "#/$defs/Limits"}, "ts": {"type": "integer"}}, "required": ["type", "version", "session", "heartbeat_ms", "heartbeat_timeout_ms", "limits", "ts"]}, "Limits": {"type": "object", "properties": {"max_frame_bytes": {"type": "integer"}, "max_subscriptions": {"type": "integer"}, "dedup_window": {"type": "integer"}, "inbound_rate": {"type": "number", "default": 0.0}, "inbound_burst": {"type": "integer", "default": 0}}, "required": ["max_frame_bytes", "max_subscriptions", "dedup_window"]}, "Subscribed": {"type": "object", "properties": {"type": {"enum": ["subscribed"]}, "topic": {"type": "string"}, "epoch": {"type": "string"}, "head": {"type": "integer"}, "recovered": {"type": "boolean"}, "missing": {"type": "array", "items": {"$ref": "#/$defs/Gap"}, "default": []}, "rewound": {"type": "integer", "default": 0}}, "required": ["type", "topic", "epoch", "head", "recovered"]}, "Gap": {"type": "object", "properties": {"epoch": {"type": "string"}, "from": {"type": "integer"}, "to": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "reason": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null}}, "required": ["epoch", "from", "to"]}, "Unsubscribed": {"type": "object", "properties": {"type": {"enum": ["unsubscribed"]}, "topic": {"type": "string"}}, "required": ["type", "topic"]}, "Message": {"type": "object", "properties": {"type": {"enum": ["message"]}, "topic": {"type": "string"}, "epoch": {"type": "string"}, "offset": {"type": "integer"}, "ts": {"type": "integer"}, "data": {"default": null}}, "required": ["type", "topic", "epoch", "offset", "ts"]}, "Ack": {"type": "object", "properties": {"type": {"enum": ["ack"]}, "id": {"type": "string"}, "result": {"default": null}}, "required": ["type", "id"]}, "Nack": {"type": "object", "properties": {"type": {"enum": ["nack"]}, "id": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}, "retry_after_ms": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null}}, "required": ["type", "id", "code", "message"]}, "Error": {"type": "object", "properties": {"type": {"enum": ["error"]}, "code": {"type": "string"}, "message": {"type": "string"}, "ref": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null}, "retry_after_ms": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null}}, "required": ["type", "code", "message"]}, "Authed": {"type": "object", "properties": {"type": {"enum": ["authed"]}, "subject": {"type": "string"}, "expires_at": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null}}, "required": ["type", "subject"]}, "Ping": {"type": "object", "properties": {"type": {"enum": ["ping"]}, "ts": {"type": "integer"}}, "required": ["type", "ts"]}, "Pong": {"type": "object", "properties": {"type": {"enum": ["pong"]}, "ts": {"type": "integer"}}, "required": ["type", "ts"]}}});

// --- client defaults (tether.config.ClientConfig; docs/configuration.md) ---

export const DEFAULTS = deepFreeze({
  "backoffBase": 1.0,
  "backoffFactor": 2.0,
  "backoffCap": 30.0,
  "jitter": "full",
  "jitterRatio": 0.3,
  "jitterSeconds": 0.5,
  "maxAttempts": 10,
  "connectTimeout": 10.0,
  "stableAfter": 30.0,
  "circuitCooldown": 60.0,
  "outboxSize": 1000,
  "outboxPolicy": "reject-new",
  "outboxTtl": 120.0
});
// Why each default is what it is.
export const DEFAULT_REASONS = deepFreeze({
  "backoffBase": "Socket.IO's first delay and the seeds' common choice: a blip is retried within ~1 s.",
  "backoffFactor": "Doubling reaches the cap in 5 steps (1, 2, 4, 8, 16, 30).",
  "backoffCap": "Between the seeds' 16/30/60 s. With full jitter the mean wait is 15 s: a user waits at most 30 s after the hub is back, and 10k clients retry at ~670/s.",
  "jitter": "Full jitter (each delay uniform on [0, ceiling]) spreads a fleet that lost its hub at once over the whole window; 'proportional' and 'absolute' keep each delay near the exponential schedule (predictable, but a fleet stays bunched). Never above the cap.",
  "jitterRatio": "For jitter=proportional: each delay is the ceiling ±30 % (a seed's choice; Socket.IO uses ±50 %).",
  "jitterSeconds": "For jitter=absolute: each delay is the ceiling ±0.5 s (a seed's choice).",
  "maxAttempts": "The seeds' consensus. About 90 s of retrying with the defaults before the circuit opens (FAILED).",
  "connectTimeout": "An attempt that has not completed the handshake and welcome in 10 s counts as failed (websockets' open timeout).",
  "stableAfter": "The retry counter resets only after 30 s connected, so a hub that accepts then crashes keeps backing off instead of being hammered at the base delay.",
  "circuitCooldown": "While FAILED (circuit open) the client probes once a minute: cheap for a struggling hub, yet a dashboard left open recovers without a reload.",
  "outboxSize": "Messages held while offline. Bounds memory; past it, the policy decides.",
  "outboxPolicy": "The caller learns at once that a message was not queued; nothing already accepted is ever discarded behind its back.",
  "outboxTtl": "Matches the hub's history window: an action older than a recoverable outage is more likely stale than wanted. Expiry fails the send; never silent."
});
// How a reconnect delay is drawn around the exponential ceiling.
export const Jitter = deepFreeze({
  "FULL": "full",
  "PROPORTIONAL": "proportional",
  "ABSOLUTE": "absolute"
});
// What the client outbox does when it is full.
export const OutboxPolicy = deepFreeze({
  "REJECT_NEW": "reject-new",
  "DROP_OLDEST": "drop-oldest",
  "COALESCE": "coalesce-by-key"
});

// --- the state machine (tether/client/state.py has the theory) ---

export const State = deepFreeze({
  "DISCONNECTED": "disconnected",
  "CONNECTING": "connecting",
  "CONNECTED": "connected",
  "RECONNECTING": "reconnecting",
  "FAILED": "failed",
  "CLOSED": "closed"
});
export const Trigger = deepFreeze({
  "START": "start",
  "OPENED": "opened",
  "ATTEMPT_FAILED": "attempt_failed",
  "DROPPED": "dropped",
  "GAVE_UP": "gave_up",
  "PROBE": "probe",
  "ENDED": "ended",
  "RETRY": "retry",
  "CLOSE": "close"
});
export const TRANSITIONS = deepFreeze({
  "disconnected": {
    "start": "connecting",
    "retry": "connecting",
    "close": "closed"
  },
  "connecting": {
    "opened": "connected",
    "attempt_failed": "reconnecting",
    "gave_up": "failed",
    "retry": "connecting",
    "close": "closed"
  },
  "connected": {
    "dropped": "reconnecting",
    "gave_up": "failed",
    "ended": "disconnected",
    "retry": "reconnecting",
    "close": "closed"
  },
  "reconnecting": {
    "opened": "connected",
    "attempt_failed": "reconnecting",
    "gave_up": "failed",
    "retry": "reconnecting",
    "close": "closed"
  },
  "failed": {
    "probe": "reconnecting",
    "retry": "reconnecting",
    "close": "closed"
  },
  "closed": {}
});

// --- session and lifecycle rules (tether/client/session.py, lifecycle.py) ---

// Shares of the hub's advertised inbound rate and burst a client allows itself: frames
// bunch up in transit (TCP, a busy event loop) and pings and pongs are not paced, so a
// client sending at the hub's exact rate would still be refused now and then.
export const PACE_RATE_SHARE = 0.9;
export const PACE_BURST_SHARE = 0.5;
// Refusals that are not final: the frame goes again after the hub's ``retry_after_ms``.
export const RETRYABLE = deepFreeze([
  "in_progress",
  "overloaded",
  "rate_limited",
  "unavailable"
]);
// When a refusal carries no ``retry_after_ms`` (an older hub): one second.
export const DEFAULT_RETRY_MS = 1000;
// A heartbeat check that runs this much later than it asked to (a laptop that slept, a
// process stopped or starved) probes before it declares the link dead: the silence may be
// the check's own, not the hub's (docs/protocol.md, Heartbeat). A second is far beyond
// event-loop jitter and far below any heartbeat interval.
export const LATE_BY = 1.0;
// The longest ``retry_after_ms`` a close reason may ask for (one hour): a larger value is a
// hub bug, and obeying it would leave the client idle for longer than anyone expects.
export const MAX_RETRY_HINT_MS = 3600000;
// Refresh a token once this fraction of its lifetime has passed: early enough to absorb a
// slow identity provider and clock skew, late enough not to hammer it.
export const REFRESH_AT = 0.8;
// After a failed refresh, try again after a quarter of what remains before expiry, within
// these bounds (seconds): never a busy loop, never so late the token lapses unnoticed.
export const REFRESH_RETRY_MIN = 0.1;
export const REFRESH_RETRY_MAX = 5.0;
// Events (deliveries, resyncs) read but not yet handled by the app. Handlers run on their
// own task so a slow handler never delays pong replies; when this many are waiting the
// reader stops reading, which pushes back to the hub (which cuts a consumer that stays
// behind with 4008, and it resumes) instead of buffering forever.
export const INBOX_SIZE = 1024;
// ``on_error`` code for a bug inside the client itself. It is logged with its traceback and
// the connection is failed and re-established, so no task is left dead behind a
// ``connected`` state; subscriptions resume from their cursors.
export const CLIENT_ERROR = "client_error";
