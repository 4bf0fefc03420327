// `hosepipe transform build` runs this (from the tools folder, beside its node_modules) for a
// Node.js handler: esbuild bundles the generated entry module (the adapter and the handler's
// modules, ES or CommonJS) into one ES module with Node's globals shimmed, and componentize-js
// makes it a component of the `transformer` world.
//
// Usage: node build.mjs ENTRY.mjs WIT_DIR OUT.wasm
import { build } from "esbuild";
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [entry, witPath, out] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(dirname(entry), "bundle.mjs");
await build({
  entryPoints: [entry],
  bundle: true,
  format: "esm",
  // Node's built-in modules are not in the sandbox: importing one fails here, by name.
  platform: "browser",
  inject: [join(here, "node-globals.mjs")],
  outfile: bundle,
  logLevel: "warning",
});
const { component } = await componentize({
  sourcePath: bundle,
  witPath,
  worldName: "transformer",
  // The daemon links WASI's CLI, clocks and random, not HTTP.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
