// "react/jsx-runtime" as an ES module, for pages without a build step (see README.md).
//
// Libraries compiled with the automatic JSX runtime (TanStack Query's QueryClientProvider)
// import `jsx` / `jsxs` from "react/jsx-runtime", which React 18 ships as CommonJS only.
// Both are createElement with the props object as is (children included) and the key
// passed separately; `jsxs` differs only in dev-mode key warnings, which the production
// UMD build does not emit anyway. Built on the same global React as ./react.js.
import React from "./react.js";

export const Fragment = React.Fragment;

export function jsx(type, props, key) {
  // createElement reads `key` (and `ref`) from its config; the automatic runtime passes the
  // key as a third argument instead, and never inside props.
  const config = key === undefined ? props : { ...props, key };
  return React.createElement(type, config);
}

export const jsxs = jsx;
// What the development runtime ("react/jsx-dev-runtime") exports, for libraries built in dev mode.
export const jsxDEV = jsx;
