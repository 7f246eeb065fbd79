// TanStack Query bridge: invalidate the right queries when live data may have been missed.
//
//   import { bridgeQueryClient } from "/tether-query.js";
//   const unbind = bridgeQueryClient(client, queryClient, {
//     onReconnect: [["events"]],                          // after every reconnect
//     topics: { scheduler: [["scheduler-history"]] },    // when that topic reports a gap
//   });
//
// A reconnect that resumed without loss still invalidates `onReconnect` keys (data fetched
// over HTTP may have changed meanwhile); a resync of a topic invalidates exactly the keys
// bound to that topic, with the missing ranges passed to `onGap` if you want them.
export function bridgeQueryClient(client, queryClient, { onReconnect = [], topics = {}, onGap = null } = {}) {
  const invalidate = (keys) => {
    for (const queryKey of keys) queryClient.invalidateQueries({ queryKey });
  };
  const reconnected = () => invalidate(onReconnect);
  const resynced = (ev) => {
    const { topic, missing } = ev.detail;
    invalidate(topics[topic] || []);
    if (onGap) onGap(topic, missing);
  };
  client.addEventListener("reconnect", reconnected);
  client.addEventListener("resync", resynced);
  return () => {
    client.removeEventListener("reconnect", reconnected);
    client.removeEventListener("resync", resynced);
  };
}
