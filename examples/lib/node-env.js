// A classic script (not a module): <script src="/lib/node-env.js"></script>, first.
//
// npm builds meant for a bundler read `process.env.NODE_ENV` at run time (TanStack Query's
// build/modern/*.js does, for dev-only checks); a bundler replaces it at build time, and a
// page without one must define it, or the first such read throws "process is not defined".
globalThis.process = globalThis.process || { env: { NODE_ENV: "production" } };
