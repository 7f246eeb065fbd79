// Tether's SharedWorker: holds one SharedConnection per hub URL for every same-origin tab
// that connects with { shared: true } (see tether-shared.js for the theory of operation).

import { SharedConnection, serve } from "./tether-shared.js";

const connections = new Map(); // hub URL -> SharedConnection (a page uses one or two hubs)

globalThis.onconnect = (ev) => {
  const port = ev.ports[0];
  port.onmessage = (e) => {
    const msg = e.data;
    let connection = connections.get(msg.url);
    if (!connection) {
      connection = new SharedConnection(msg.url);
      connections.set(msg.url, connection);
    }
    serve(connection, msg.tab, msg, (reply) => port.postMessage(reply));
  };
  port.start();
};
