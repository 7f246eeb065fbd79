// Tether browser client: the fallback transport (docs/protocol.md, "Fallback transport").
//
// `SseSocket` is a WebSocket-like object (what TetherClient uses: onmessage, onclose,
// send, close) over plain HTTP: the hub's frames arrive as server-sent events from
// `GET <ws path>/events`, and frames to the hub go as `POST`s, one frame per line, in
// order, to the URL the stream names. The stream is read with fetch(), not EventSource:
// that can send the token as an Authorization header (EventSource cannot set headers)
// and reads the HTTP status of a refusal, which it reports as the close code a
// WebSocket would have given (401/403 -> 1008, 429/503 -> 1013 with the Retry-After as
// the hint). The client's own lifecycle drives reconnects and resumes, as over a socket.

import { CloseCode, TOKEN_SUBPROTOCOL_PREFIX } from "./tether-constants.js";

// Frames one POST carries (the hub takes at most 16): what queued up while the previous
// POST was in flight goes in the next, in order.
const FRAMES_PER_POST = 16;
// Frames waiting to be POSTed: an outbox flush and a re-subscribe of every topic fit;
// past it the link is presumed broken and closed (the client reconnects and resends).
const MAX_UNSENT = 2000;

/** The fallback stream's URL for a hub WebSocket URL: ws(s)://host/ws -> http(s)://host/ws/events. */
export function eventsUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.replace(/\/$/, "") + "/events";
  return url;
}

export class SseSocket {
  constructor(url, protocols = []) {
    this.url = url;
    this.readyState = 0;
    this.onmessage = this.onclose = this.onerror = null;
    this._abort = new AbortController();
    this._post = null; // where frames go, from the stream's "session" event
    this._unsent = [];
    this._posting = false;
    const prefixed = [].concat(protocols).find((p) => p.startsWith(TOKEN_SUBPROTOCOL_PREFIX));
    this._headers = prefixed ? { Authorization: `Bearer ${prefixed.slice(TOKEN_SUBPROTOCOL_PREFIX.length)}` } : {};
    this._events = eventsUrl(url);
    this._read();
  }

  send(data) {
    if (this.readyState !== 1) return;
    if (this._unsent.length >= MAX_UNSENT) {
      this._closed(1006, "fallback transport: POSTs are not getting through");
      return;
    }
    this._unsent.push(data);
    this._flush();
  }

  close(code = CloseCode.NORMAL, reason = "") {
    this._closed(code, reason);
  }

  async _read() {
    let response;
    try {
      response = await fetch(this._events, {
        headers: { ...this._headers, Accept: "text/event-stream" },
        cache: "no-store",
        signal: this._abort.signal,
      });
    } catch (err) {
      this._closed(1006, `fallback stream failed: ${err.message}`);
      return;
    }
    if (!response.ok) {
      await this._refused(response);
      return;
    }
    try {
      await this._parse(response.body.pipeThrough(new TextDecoderStream()).getReader());
      this._closed(1006, "fallback stream ended");
    } catch (err) {
      this._closed(1006, `fallback stream broke: ${err.message}`);
    }
  }

  // The server-sent event format (WHATWG HTML, "Parsing an event stream"): fields per
  // line, an event per blank line, data lines joined with "\n".
  async _parse(reader) {
    let buffer = "";
    let event = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete last line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) this._event(event, data.join("\n"));
          event = "message";
          data = [];
          continue;
        }
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (name === "event") event = value;
        else if (name === "data") data.push(value);
      }
      if (this.readyState === 3) return;
    }
  }

  _event(event, data) {
    if (this.readyState === 3) return;
    if (event === "session") {
      this._post = new URL(JSON.parse(data).post, this._events);
      this.readyState = 1;
    } else if (event === "close") {
      const { code, reason } = JSON.parse(data);
      this._closed(code, reason);
    } else if (this.onmessage) {
      this.onmessage({ data });
    }
  }

  async _flush() {
    if (this._posting || this._post === null) return;
    this._posting = true;
    try {
      while (this._unsent.length && this.readyState === 1) {
        const batch = this._unsent.splice(0, FRAMES_PER_POST);
        const response = await fetch(this._post, {
          method: "POST",
          body: batch.join("\n"),
          headers: { "Content-Type": "text/plain;charset=utf-8" },
          signal: this._abort.signal,
        });
        if (!response.ok) {
          this._closed(1006, `fallback POST refused: HTTP ${response.status}`);
          return;
        }
      }
    } catch (err) {
      this._closed(1006, `fallback POST failed: ${err.message}`);
    } finally {
      this._posting = false;
    }
  }

  async _refused(response) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: the status says enough
    }
    if (response.status === 401 || response.status === 403) {
      this._closed(CloseCode.POLICY_VIOLATION, message);
    } else if (response.status === 429 || response.status === 503) {
      const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      const hint = Number.isFinite(seconds) ? JSON.stringify({ retry_after_ms: seconds * 1000, message }) : message;
      this._closed(CloseCode.TRY_AGAIN_LATER, hint);
    } else {
      this._closed(1006, `fallback stream refused: ${message}`);
    }
  }

  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._abort.abort();
    const onclose = this.onclose;
    // Asynchronously, as a real socket's close event: the client may be mid-call.
    if (onclose) setTimeout(() => onclose({ code, reason, wasClean: false }), 0);
  }
}
