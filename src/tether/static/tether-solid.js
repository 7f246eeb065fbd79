// SolidJS bindings for Tether, the twin of tether-react.js. Solid is a peer, passed in
// (bundled, or from an import map: works with any Solid 1.x):
//
//   import * as Solid from "solid-js";
//   import { createTetherSignals } from "/tether-solid.js";
//   const { createTether, createTetherStatus, createTopic } = createTetherSignals(Solid);
//
//   function Overlay() {
//     const client = createTether("ws://127.0.0.1:8765/ws", { debug: "landale_socket" });
//     const status = createTetherStatus(client);              // status().state, .metrics
//     const odds = createTopic(client, "odds", { rewind: 1 }); // odds().data, .live
//     return <div classList={{ stale: !odds().live }}>{status().state}: {odds().data?.home}</div>;
//   }
//
// Each function belongs in a component or a createRoot: what it opens (the client, the
// subscription, the listeners) is released by Solid's onCleanup when that owner is disposed.
import { connect } from "./tether.js";

const STATUS_EVENTS = ["statechange", "retry", "reconnect", "resync"];

export function createTetherSignals(Solid) {
  const { createSignal, onCleanup } = Solid;

  // A client for the owner's lifetime: connected now, closed on cleanup.
  function createTether(url, options = {}) {
    const client = connect(url, options);
    onCleanup(() => client.close());
    return client;
  }

  // An accessor of { state, metrics }, updated on every state change and retry countdown.
  function createTetherStatus(client) {
    const read = () => ({ state: client.state, metrics: client.metrics() });
    const [status, setStatus] = createSignal(read(), { equals: false });
    const onEvent = () => setStatus(read());
    for (const type of STATUS_EVENTS) client.addEventListener(type, onEvent);
    onCleanup(() => {
      for (const type of STATUS_EVENTS) client.removeEventListener(type, onEvent);
    });
    return status;
  }

  // An accessor of the topic's latest { data, message, live }; `rewind` as in subscribe.
  function createTopic(client, topic, { rewind = 0, onMessage } = {}) {
    const [value, setValue] = createSignal({ data: undefined, message: null, live: client.isLive(topic) });
    const off = client.subscribe(
      topic,
      (msg) => {
        if (onMessage) onMessage(msg);
        setValue({ data: msg.data, message: msg, live: client.isLive(topic) });
      },
      { rewind },
    );
    const onTopic = (ev) => {
      if (ev.detail.topic === topic) setValue((v) => ({ ...v, live: ev.detail.live }));
    };
    client.addEventListener("topicstate", onTopic);
    onCleanup(() => {
      client.removeEventListener("topicstate", onTopic);
      off();
    });
    return value;
  }

  return { createTether, createTetherStatus, createTopic };
}
