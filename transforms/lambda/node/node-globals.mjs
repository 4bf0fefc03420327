// Node's globals that Lambda handlers use and the sandbox's engine lacks, put in place of the
// free names `Buffer` and `process` by esbuild (`inject`): only what a handler uses is bundled.
export { Buffer } from "buffer";

// `process.env` holds the processor parameters other than `Handler` (set by the adapter's
// init), as a Lambda's environment variables would.
export const process = (globalThis.process ??= {
  env: {},
  argv: [],
  platform: "wasi",
  version: "v20.0.0",
  versions: {},
  nextTick: (fn, ...args) => queueMicrotask(() => fn(...args)),
});
