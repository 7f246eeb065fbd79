// "react-dom" as an ES module, re-exporting the UMD build's global (why: ./react.js).
// Load /npm/react-dom/umd/react-dom.production.min.js with a classic <script> after React.
const ReactDOM = globalThis.ReactDOM;
if (!ReactDOM) throw new Error("load ReactDOM's UMD build (react-dom.production.min.js) before any module that imports \"react-dom\"");

export default ReactDOM;
export const { createPortal, flushSync, unstable_batchedUpdates, version } = ReactDOM;
