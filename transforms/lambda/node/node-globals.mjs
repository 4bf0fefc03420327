// Node's globals that Lambda handlers use and the sandbox's engine lacks, put in place of the
// free names `Buffer` and `process` by esbuild (`inject`): only what a handler uses is bundled.
import { Buffer } from "buffer";

// The `buffer` package converts base64 and UTF-8 in JavaScript, which the sandbox's engine
// interprets (no JIT): ~1.5 ms for a 1 KiB record's round trip. The engine's own
// Uint8Array.fromBase64/toBase64 and TextEncoder/TextDecoder do it natively, with Node's
// results (a leading BOM kept, malformed UTF-8 as U+FFFD); anything else (other encodings,
// ranges, base64 Node accepts and the engine does not) takes the package's path.
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
// A Buffer over the same bytes, as the package makes them (no copy).
const shared = (bytes) => Object.setPrototypeOf(bytes, Buffer.prototype);
// "utf8", "base64", "base64url", or another encoding (plain comparisons: a regular expression
// costs microseconds in the interpreter).
function kind(encoding) {
  switch (encoding) {
    case undefined:
    case "utf8":
    case "utf-8":
      return "utf8";
    case "base64":
    case "base64url":
      return encoding;
    default: {
      const lower = String(encoding).toLowerCase();
      return lower === "utf-8" ? "utf8" : lower;
    }
  }
}

const from = Buffer.from;
Buffer.from = function (value, encoding, length) {
  if (typeof value === "string") {
    const k = kind(encoding);
    if (k === "utf8") return shared(encoder.encode(value));
    if (k === "base64" || k === "base64url") {
      try {
        return shared(Uint8Array.fromBase64(value, { alphabet: k }));
      } catch {
        // Node also takes the other alphabet, stray characters and odd padding.
      }
    }
  }
  return from.call(this, value, encoding, length);
};

const toString = Buffer.prototype.toString;
Buffer.prototype.toString = function (encoding, start, end) {
  if (start === undefined && end === undefined) {
    const k = kind(encoding);
    if (k === "utf8") return decoder.decode(this);
    if (k === "base64") return Uint8Array.prototype.toBase64.call(this);
    if (k === "base64url") {
      return Uint8Array.prototype.toBase64.call(this, { alphabet: k, omitPadding: true });
    }
  }
  return toString.call(this, encoding, start, end);
};

export { Buffer };

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
