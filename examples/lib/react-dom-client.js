// "react-dom/client" as an ES module: createRoot and hydrateRoot from the UMD build's
// global (why: ./react.js). React 18's UMD react-dom carries both.
import ReactDOM from "./react-dom.js";

export const { createRoot, hydrateRoot } = ReactDOM;
export default { createRoot, hydrateRoot };
