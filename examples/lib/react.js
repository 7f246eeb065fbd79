// "react" as an ES module, for pages without a build step (see README.md beside this file).
//
// React 18 ships CommonJS and UMD only: no ES module that an import map could point at.
// npm libraries built for bundlers (TanStack Query's build/modern/*.js) `import * as React
// from "react"`, so this shim re-exports the UMD build's global: load
// /npm/react/umd/react.production.min.js with a classic <script> before any module, and
// map "react" here in the page's import map. Every export of React 18's public API is
// listed (ES modules need their names up front); one React instance serves the page's
// own code, the UMD react-dom and every library, as hooks require.
const React = globalThis.React;
if (!React) throw new Error("load React's UMD build (react.production.min.js) before any module that imports \"react\"");

export default React;
export const {
  Children,
  Component,
  Fragment,
  Profiler,
  PureComponent,
  StrictMode,
  Suspense,
  act,
  cloneElement,
  createContext,
  createElement,
  createFactory,
  createRef,
  forwardRef,
  isValidElement,
  lazy,
  memo,
  startTransition,
  unstable_act,
  useCallback,
  useContext,
  useDebugValue,
  useDeferredValue,
  useEffect,
  useId,
  useImperativeHandle,
  useInsertionEffect,
  useLayoutEffect,
  useMemo,
  useReducer,
  useRef,
  useState,
  useSyncExternalStore,
  useTransition,
  version,
} = React;
