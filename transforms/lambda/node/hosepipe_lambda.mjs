// Runs a Firehose data-transformation Lambda handler for Node.js, unchanged, as a hosepipe
// transform.
//
// `hosepipe transform build index.mjs` bundles the handler's module(s) with this adapter
// (esbuild: ES modules and CommonJS `exports.handler` alike, with a `Buffer` like Node's) and
// componentizes the bundle (componentize-js, the `transformer` world of
// transforms/wit/transform.wit). Each batch becomes the event Firehose would send the Lambda:
//
//     {invocationId, deliveryStreamArn, region,
//      records: [{recordId, approximateArrivalTimestamp, data: <base64>}]}
//
// and the handler's answer, `{records: [{recordId, result, data, metadata: {partitionKeys,
// otfMetadata}}]}`, goes back to the daemon record by record, by the same rules as the Python
// adapter (transforms/lambda/python/hosepipe_lambda.py):
//
// - `Ok` delivers the decoded `data`; `Dropped` delivers nothing; `ProcessingFailed` sends the
//   record to the error output.
// - Every input's `recordId` must come back exactly once (`MissingRecordId`,
//   `DuplicatedRecordId`); ids the batch did not hold are ignored.
// - A `result` other than the three, `data` that is not base64, or partition keys that are not
//   strings fail that record, with the reason.
// - A thrown error (or a rejected promise, or an error given to the callback) fails the whole
//   batch with its name and message.
// - `metadata.partitionKeys` become the record's partition keys; `otfMetadata` keys become
//   `otfMetadata.<key>` (Iceberg routing).
//
// Handlers may be `async (event, context)`, return a promise, or take Lambda's
// `(event, context, callback)`. The processor parameter `Handler` (`module.function`, Lambda's
// handler setting) picks the handler when the component holds several; the other parameters
// are the handler's `process.env`.

const RESULTS = { Ok: "ok", Dropped: "dropped", ProcessingFailed: "processing-failed" };
const encoder = new TextEncoder();

let modules = {};
let defaultHandler = "index.handler";
let handler = null;
let functionName = "hosepipe";

/** Called by the generated entry module with the handler modules the bundle holds. */
export function register(all, byDefault) {
  modules = all;
  defaultHandler = byDefault;
}

export function init(parameters) {
  const params = Object.fromEntries(parameters.map((p) => [p.name, p.value]));
  // The other parameters are the handler's environment, as a Lambda's variables would be.
  const env = globalThis.process?.env;
  if (env) for (const [k, v] of Object.entries(params)) if (k !== "Handler") env[k] = v;
  const name = params.Handler ?? defaultHandler;
  const dot = name.lastIndexOf(".");
  if (dot <= 0) throw `Handler '${name}' is not module.function`;
  const [module, fn] = [name.slice(0, dot), name.slice(dot + 1)];
  const ns = modules[module];
  if (!ns) throw `Handler '${name}': no module '${module}' (the component holds ${Object.keys(modules).join(", ")})`;
  // ES modules export the function; CommonJS modules arrive as their `module.exports`.
  const found = ns[fn] ?? ns.default?.[fn];
  if (typeof found !== "function") throw `Handler '${name}' is not a function`;
  handler = found;
  functionName = module;
}

function context(timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  return {
    functionName,
    functionVersion: "$LATEST",
    invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${functionName}`,
    memoryLimitInMB: "128",
    awsRequestId: uuid(),
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: "hosepipe",
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function uuid() {
  const hex = [...crypto.getRandomValues(new Uint8Array(16))]
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** Lambda's three handler shapes, as one promise of the answer. */
function call(event, ctx) {
  if (handler.length >= 3) {
    return new Promise((resolve, reject) => {
      const done = (err, answer) => (err ? reject(err) : resolve(answer));
      const returned = handler(event, ctx, done);
      if (returned && typeof returned.then === "function") returned.then(resolve, reject);
    });
  }
  return Promise.resolve().then(() => handler(event, ctx));
}

export async function process(batch) {
  const ids = Array.from(batch.ids, (id) => id.toString());
  const records = [];
  let start = 0;
  for (let i = 0; i < ids.length; i++) {
    const data = batch.data.subarray(start, start + batch.lengths[i]);
    start += batch.lengths[i];
    records.push({
      recordId: ids[i],
      approximateArrivalTimestamp: Number(batch.arrivalsMs[i]),
      data: toBase64(data),
    });
  }
  const event = {
    invocationId: uuid(),
    deliveryStreamArn: "arn:aws:firehose:local:000000000000:deliverystream/hosepipe",
    region: "local",
    records,
  };
  let outcomes;
  try {
    outcomes = answers(ids, await call(event, context(300_000)));
  } catch (e) {
    const why = encoder.encode(`the handler raised ${describe(e)}`);
    outcomes = new Map(ids.map((id) => [id, ["processing-failed", why, []]]));
  }
  return processed(batch.ids, ids, outcomes);
}

function describe(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return `${typeof e}: ${String(e)}`;
}

/** recordId → [status, bytes, partition keys] for each input, from the handler's answer. */
function answers(ids, answer) {
  if (!answer || typeof answer !== "object" || !Array.isArray(answer.records)) {
    throw new TypeError('the answer is not {"records": [...]}');
  }
  const wanted = new Set(ids);
  const out = new Map();
  const twice = new Set();
  for (const rec of answer.records) {
    const id = rec && typeof rec === "object" ? rec.recordId : undefined;
    if (!wanted.has(id)) continue;
    if (out.has(id)) twice.add(id);
    out.set(id, one(rec));
  }
  const fail = (why) => ["processing-failed", encoder.encode(why), []];
  for (const id of twice) {
    out.set(id, fail("DuplicatedRecordId: the answer holds this recordId more than once"));
  }
  for (const id of wanted) {
    if (!out.has(id)) out.set(id, fail("MissingRecordId: the answer holds no record with this recordId"));
  }
  return out;
}

function one(rec) {
  const fail = (why) => ["processing-failed", encoder.encode(why), []];
  const status = Object.hasOwn(RESULTS, rec.result) ? RESULTS[rec.result] : undefined;
  if (!status) return fail(`result ${JSON.stringify(rec.result)} is not Ok, Dropped or ProcessingFailed`);
  if (status === "dropped") return [status, new Uint8Array(0), []];
  if (status === "processing-failed") return fail("the handler returned ProcessingFailed");
  const data = fromBase64(rec.data ?? "");
  if (!data) return fail("data is not base64");
  const keys = [];
  const metadata = rec.metadata ?? {};
  for (const [prefix, field] of [["", "partitionKeys"], ["otfMetadata.", "otfMetadata"]]) {
    for (const [name, value] of Object.entries(metadata[field] ?? {})) {
      if (typeof value !== "string") return fail(`metadata.${field}.${name} is not a string`);
      keys.push([prefix + name, value]);
    }
  }
  return [status, data, keys];
}

function processed(rawIds, ids, outcomes) {
  const bodies = ids.map((id) => outcomes.get(id));
  const total = bodies.reduce((n, [, body]) => n + body.length, 0);
  const data = new Uint8Array(total);
  const offsets = new Uint32Array(ids.length);
  const lengths = new Uint32Array(ids.length);
  const statuses = [];
  const partitionKeys = [];
  let at = 0;
  bodies.forEach(([status, body, keys], i) => {
    statuses.push(status);
    data.set(body, at);
    offsets[i] = at;
    lengths[i] = body.length;
    at += body.length;
    for (const [name, value] of keys) partitionKeys.push({ output: i, name, value });
  });
  return {
    data,
    ids: rawIds,
    statuses,
    sources: new Array(ids.length).fill("output"),
    offsets,
    lengths,
    partitionKeys,
  };
}

// The engine's own base64 (no per-byte JavaScript: the engine interprets, it has no JIT, and
// even a regular expression over the text costs more than the decoding).
function toBase64(bytes) {
  return bytes.toBase64();
}

/** The bytes of strict base64 text (padded, no whitespace), or null. */
function fromBase64(text) {
  if (typeof text !== "string" || text.length % 4 !== 0) return null;
  let bytes;
  try {
    bytes = Uint8Array.fromBase64(text, { lastChunkHandling: "strict" });
  } catch {
    return null;
  }
  // fromBase64 skips whitespace; strict text decodes to exactly this many bytes.
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  return bytes.length === (text.length / 4) * 3 - padding ? bytes : null;
}
