// React hooks for Tether. React is a peer, passed in (works with any React, bundled or not):
//
//   import * as React from "react";                  // or window.React from a <script>
//   import { createTetherHooks } from "/tether-react.js";
//   const { useTether, useTetherStatus, useTopic } = createTetherHooks(React);
//
//   function Odds() {
//     const client = useTether("ws://127.0.0.1:8765/ws");
//     const { state, metrics } = useTetherStatus(client);
//     const { data, live } = useTopic(client, "odds");
//     return <div className={live ? "" : "stale"}>{state}: {data?.home}</div>;
//   }
import { connect } from "./tether.js";

export function createTetherHooks(React) {
  const { useEffect, useRef, useState, useSyncExternalStore } = React;

  // One client per component tree position: created on mount, closed on unmount.
  function useTether(url, options = {}) {
    const ref = useRef(null);
    if (ref.current === null || ref.current.url !== url) {
      ref.current = connect(url, options);
    }
    const client = ref.current;
    useEffect(() => () => client.close(), [client]);
    return client;
  }

  // { state, metrics } re-rendered on every state change and retry countdown.
  function useTetherStatus(client) {
    const cache = useRef(null);
    const subscribe = (notify) => {
      const types = ["statechange", "retry", "reconnect", "resync"];
      const onEvent = () => {
        cache.current = null;
        notify();
      };
      for (const t of types) client.addEventListener(t, onEvent);
      return () => {
        for (const t of types) client.removeEventListener(t, onEvent);
      };
    };
    const snapshot = () => {
      if (cache.current === null || cache.current.state !== client.state) {
        cache.current = { state: client.state, metrics: client.metrics() };
      }
      return cache.current;
    };
    return useSyncExternalStore(subscribe, snapshot);
  }

  // The latest message of a topic and whether the topic is live (not stale); `rewind` as in
  // subscribe (rewind: 1 shows the current value at once).
  function useTopic(client, topic, { onMessage, rewind = 0 } = {}) {
    const [value, setValue] = useState({ data: undefined, message: null, live: client.isLive(topic) });
    const handler = useRef(onMessage);
    handler.current = onMessage;
    useEffect(() => {
      const off = client.subscribe(topic, (msg) => {
        if (handler.current) handler.current(msg);
        setValue({ data: msg.data, message: msg, live: client.isLive(topic) });
      }, { rewind });
      const onTopic = (ev) => {
        if (ev.detail.topic === topic) setValue((v) => ({ ...v, live: ev.detail.live }));
      };
      client.addEventListener("topicstate", onTopic);
      return () => {
        client.removeEventListener("topicstate", onTopic);
        off();
      };
    }, [client, topic, rewind]);
    return value;
  }

  return { useTether, useTetherStatus, useTopic };
}
