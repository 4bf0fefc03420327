//! The WebAssembly host: runs `hosepipe:transform` components (transforms/wit/transform.wit)
//! with wasmtime's component model, in a sandbox.
//!
//! One [`Engine`] for the daemon; each component is compiled once (and the compiled code cached
//! on disk, keyed by the component's SHA-256 and the engine's compatibility hash); each stream's
//! transform keeps an `InstancePre` and a pool of instances, one per concurrent caller. A call
//! has an epoch deadline (the Lambda timeout) and a memory cap; a trap, deadline or memory fault
//! discards the instance and the batch is bisected so that only the records that fault end up
//! ProcessingFailed. Guests get WASI with nothing in it: no preopened directories, no sockets,
//! no environment, no arguments; their stdout and stderr are captured (bounded) for error
//! messages.
//!
//! `unsafe` is used once, in [`WasmRuntime::compile`], to load compiled code from the cache; see
//! the comment there.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Failure, Outcome, Processed, Transform};
use crate::buffer::Record;

mod bindings {
    wasmtime::component::bindgen!({
        path: "transforms/wit",
        world: "transformer",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::hosepipe::transform::types as wit;
use bindings::{Transformer, TransformerPre};

/// How often the epoch advances: the resolution of the deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Captured guest output per instance; an instance past half of it is retired after its call.
const OUTPUT_CAPACITY: usize = 1024 * 1024;

/// The sandbox's limits for every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Deadline for one `process` call (Firehose: the Lambda timeout).
    pub timeout: Duration,
    /// Largest linear memory a guest may grow to.
    pub memory_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            timeout: Duration::from_secs(10),
            memory_bytes: 128 * 1024 * 1024,
        }
    }
}

/// Loading or starting a component failed.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a hosepipe:transform component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("the transform cannot start: {0}")]
    Instantiate(String),
    #[error("the transform rejected its parameters: {0}")]
    Init(String),
}

/// What a store carries: the empty WASI context and the limits.
struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The daemon's one wasmtime engine, linker and compiled-code cache.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<Host>,
    cache_dir: Option<PathBuf>,
    limits: SandboxLimits,
}

/// A compiled component, shared by every stream that uses it.
#[derive(Clone)]
pub struct Compiled {
    pre: TransformerPre<Host>,
    name: String,
}

impl WasmRuntime {
    /// Starts the engine (and its epoch ticker). `cache_dir` keeps compiled code across runs.
    pub fn new(cache_dir: Option<PathBuf>, limits: SandboxLimits) -> Result<Self, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| WasmError::Instantiate(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| WasmError::Instantiate(e.to_string()))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| WasmError::Instantiate(format!("cannot start the epoch ticker: {e}")))?;
        Ok(WasmRuntime {
            engine,
            linker,
            cache_dir,
            limits,
        })
    }

    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// Compiles the component at `path`, or loads its compiled code from the cache.
    pub fn compile(&self, path: &Path) -> Result<Compiled, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let compile_error = |e: wasmtime::Error| WasmError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let cached = self.cache_dir.as_ref().map(|dir| {
            let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(
                &self.engine.precompile_compatibility_hash(),
                &mut engine_hash,
            );
            let key = format!(
                "{:x}-{:016x}.cwasm",
                Sha256::digest(&bytes),
                std::hash::Hasher::finish(&engine_hash)
            );
            dir.join(key)
        });
        let from_cache = cached.as_ref().filter(|p| p.exists()).and_then(|p| {
            // SAFETY: `deserialize_file` trusts its input to be code this wasmtime compiled.
            // The file is one this function wrote with `serialize` under the daemon's own data
            // directory (written to a temporary name, then renamed, so never partial), and its
            // name carries the engine's compatibility hash; wasmtime still checks its header.
            match unsafe { Component::deserialize_file(&self.engine, p) } {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "compiled-code cache entry unusable; recompiling");
                    None
                }
            }
        });
        let component = match from_cache {
            Some(c) => c,
            None => {
                let started = std::time::Instant::now();
                let c = Component::new(&self.engine, &bytes).map_err(compile_error)?;
                tracing::info!(component = %path.display(), seconds = started.elapsed().as_secs_f64(), "compiled transform");
                if let Some(file) = &cached
                    && let Err(e) = write_cache(file, &c)
                {
                    tracing::warn!(file = %file.display(), error = %e, "cannot cache compiled code");
                }
                c
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(TransformerPre::new)
            .map_err(compile_error)?;
        Ok(Compiled {
            pre,
            name: path.display().to_string(),
        })
    }

    /// A transform over `compiled` with these `init` parameters. Starts one instance now, so
    /// rejected parameters are an error here rather than failed records later.
    pub fn transform(
        &self,
        compiled: &Compiled,
        parameters: Vec<(String, String)>,
        retries: u32,
    ) -> Result<WasmTransform, WasmError> {
        let t = WasmTransform {
            compiled: compiled.clone(),
            parameters,
            retries,
            limits: self.limits,
            pool: Mutex::new(Vec::new()),
        };
        let first = t.instantiate()?;
        t.pool.lock().expect("pool lock").push(first);
        Ok(t)
    }
}

fn write_cache(file: &Path, component: &Component) -> std::io::Result<()> {
    let code = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::durable::write(file, &code)
}

/// One live instance with its store.
struct Instance {
    store: Store<Host>,
    bindings: Transformer,
    output: MemoryOutputPipe,
    /// Reused columns the batch is gathered into.
    scratch: Columns,
}

/// A batch's columns (`batch` in the WIT).
#[derive(Default)]
struct Columns {
    data: Vec<u8>,
    ids: Vec<u64>,
    lengths: Vec<u32>,
    arrivals_ms: Vec<i64>,
}

/// A call that failed.
enum CallError {
    /// The call failed as a whole (wrong result length or ids, no instance): retried, then
    /// every record of the batch fails.
    Batch(Failure),
    /// The guest faulted (trap, deadline, memory): bisect.
    Fault(Failure),
}

/// One stream's transform: a compiled component, its parameters, and a pool of instances.
pub struct WasmTransform {
    compiled: Compiled,
    parameters: Vec<(String, String)>,
    retries: u32,
    limits: SandboxLimits,
    pool: Mutex<Vec<Instance>>,
}

impl WasmTransform {
    fn instantiate(&self) -> Result<Instance, WasmError> {
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        // Nothing inherited: no env, args, preopens or network; output is captured.
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.compiled.pre.engine(),
            Host {
                wasi,
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| WasmError::Instantiate(format!("{e:#}")))?;
        let params: Vec<wit::Parameter> = self
            .parameters
            .iter()
            .map(|(name, value)| wit::Parameter {
                name: name.as_str(),
                value: value.as_str(),
            })
            .collect();
        match bindings.call_init(&mut store, &params) {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                output,
                scratch: Columns::default(),
            }),
            Ok(Err(message)) => Err(WasmError::Init(message)),
            Err(e) => Err(WasmError::Init(
                describe_fault(&e, &output, self.limits).message,
            )),
        }
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
    }

    /// One `process` call over `records`, on a pooled or fresh instance.
    fn call(&self, records: &[Record]) -> Result<Vec<Outcome>, CallError> {
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut inst = match pooled {
            Some(i) => i,
            None => self.instantiate().map_err(|e| {
                CallError::Batch(Failure::new("Lambda.FunctionError", e.to_string()))
            })?,
        };
        inst.store.set_epoch_deadline(self.deadline_ticks());
        // The batch as a few columns: one copy each into the guest, not one call per record.
        let mut cols = std::mem::take(&mut inst.scratch);
        cols.data.clear();
        cols.ids.clear();
        cols.lengths.clear();
        cols.arrivals_ms.clear();
        let mut starts = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            starts.push(cols.data.len());
            cols.data.extend_from_slice(&r.data);
            cols.ids.push(i as u64);
            cols.lengths.push(r.data.len() as u32);
            cols.arrivals_ms.push(r.arrival_ms);
        }
        let batch = wit::Batch {
            data: &cols.data,
            ids: &cols.ids,
            lengths: &cols.lengths,
            arrivals_ms: &cols.arrivals_ms,
        };
        let answer = match inst.bindings.call_process(&mut inst.store, batch) {
            Ok(p) => p,
            Err(e) => {
                // The instance may be mid-way through anything: never reuse it.
                return Err(CallError::Fault(describe_fault(
                    &e,
                    &inst.output,
                    self.limits,
                )));
            }
        };
        inst.scratch = cols;
        if inst.output.contents().len() < OUTPUT_CAPACITY / 2 {
            self.pool.lock().expect("pool lock").push(inst);
        }
        let n = answer.ids.len();
        if n != records.len() {
            return Err(CallError::Batch(Failure::new(
                "Lambda.MissingRecordId",
                format!(
                    "the transform returned {n} results for {} records",
                    records.len()
                ),
            )));
        }
        if [
            answer.statuses.len(),
            answer.sources.len(),
            answer.offsets.len(),
            answer.lengths.len(),
        ]
        .iter()
        .any(|len| *len != n)
        {
            return Err(bad_answer("the answer's columns differ in length".into()));
        }
        let new_bytes = Bytes::from(answer.data);
        let mut keys: Vec<Vec<(String, String)>> = Vec::new();
        for k in answer.partition_keys {
            let i = k.output as usize;
            if i >= n {
                return Err(bad_answer(format!("a partition key names output {i}")));
            }
            if keys.is_empty() {
                keys.resize(n, Vec::new());
            }
            keys[i].push((k.name, k.value));
        }
        let mut result = Vec::with_capacity(n);
        for i in 0..n {
            if answer.ids[i] != i as u64 {
                return Err(CallError::Batch(Failure::new(
                    "Lambda.DuplicatedRecordId",
                    format!(
                        "result {i} carries record id {} (expected {i})",
                        answer.ids[i]
                    ),
                )));
            }
            let span =
                answer.offsets[i] as usize..answer.offsets[i] as usize + answer.lengths[i] as usize;
            let bytes = match answer.sources[i] {
                wit::Source::Output if span.end <= new_bytes.len() => new_bytes.slice(span),
                // Bytes of the batch: share the record's own buffer when they lie within it.
                wit::Source::Input => match locate(&starts, records, i, &span) {
                    Some(j) => records[j]
                        .data
                        .slice(span.start - starts[j]..span.end - starts[j]),
                    None if span.end
                        <= starts
                            .last()
                            .map_or(0, |s| s + records[records.len() - 1].data.len()) =>
                    {
                        Bytes::from(gather(&starts, records, span))
                    }
                    None => {
                        return Err(bad_answer(format!(
                            "result {i} names bytes {span:?} outside the batch"
                        )));
                    }
                },
                wit::Source::Output => {
                    return Err(bad_answer(format!(
                        "result {i} names bytes {span:?} of a {}-byte answer",
                        new_bytes.len()
                    )));
                }
            };
            result.push(match answer.statuses[i] {
                wit::Status::Ok => Outcome::Ok {
                    data: bytes,
                    partition_keys: keys.get_mut(i).map(std::mem::take).unwrap_or_default(),
                },
                wit::Status::Dropped => Outcome::Dropped,
                wit::Status::ProcessingFailed => Outcome::Failed(Failure::new(
                    "Lambda.ProcessingFailed",
                    String::from_utf8_lossy(&bytes).into_owned(),
                )),
            });
        }
        Ok(result)
    }

    /// Processes `records`, bisecting on faults; `prior` invocations already included them.
    fn run(&self, records: &[Record], prior: u32, out: &mut Vec<Processed>) {
        if records.is_empty() {
            return;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(records) {
                Ok(outcomes) => {
                    out.extend(outcomes.into_iter().map(|outcome| Processed {
                        outcome,
                        attempts: prior + attempt,
                    }));
                    return;
                }
                Err(CallError::Batch(failure)) if attempt > self.retries => {
                    out.extend(records.iter().map(|_| Processed {
                        outcome: Outcome::Failed(failure.clone()),
                        attempts: prior + attempt,
                    }));
                    return;
                }
                Err(CallError::Batch(failure)) => {
                    tracing::warn!(transform = %self.compiled.name, attempt, error = %failure.message, "transform call failed; retrying");
                }
                Err(CallError::Fault(failure)) if records.len() == 1 => {
                    tracing::warn!(transform = %self.compiled.name, error = %failure.message, "transform faulted on a record");
                    out.push(Processed {
                        outcome: Outcome::Failed(failure),
                        attempts: prior + attempt,
                    });
                    return;
                }
                Err(CallError::Fault(failure)) => {
                    tracing::debug!(transform = %self.compiled.name, records = records.len(), error = %failure.message, "transform faulted; bisecting the batch");
                    let (left, right) = records.split_at(records.len() / 2);
                    self.run(left, prior + attempt, out);
                    self.run(right, prior + attempt, out);
                    return;
                }
            }
        }
    }
}

impl Transform for WasmTransform {
    fn process(&self, records: &[Record]) -> Vec<Processed> {
        let mut out = Vec::with_capacity(records.len());
        self.run(records, 0, &mut out);
        out
    }
}

/// Which record's bytes hold `span` of the batch buffer: record `hint` (the usual case, a
/// record answered with itself), else the last record starting at or before it.
fn locate(
    starts: &[usize],
    records: &[Record],
    hint: usize,
    span: &std::ops::Range<usize>,
) -> Option<usize> {
    let holds = |j: usize| span.start >= starts[j] && span.end <= starts[j] + records[j].data.len();
    if hint < starts.len() && holds(hint) {
        return Some(hint);
    }
    let j = starts
        .partition_point(|s| *s <= span.start)
        .checked_sub(1)?;
    holds(j).then_some(j)
}

fn bad_answer(message: String) -> CallError {
    CallError::Batch(Failure::new("Lambda.JsonProcessingException", message))
}

/// The bytes `span` of the batch buffer, rebuilt from the records (a span across records).
fn gather(starts: &[usize], records: &[Record], span: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(span.len());
    for (start, r) in starts.iter().zip(records) {
        let end = start + r.data.len();
        let (from, to) = (span.start.max(*start), span.end.min(end));
        if from < to {
            out.extend_from_slice(&r.data[from - start..to - start]);
        }
    }
    out
}

/// Names a fault for the failed-record document, with the guest's last output line.
fn describe_fault(
    e: &wasmtime::Error,
    output: &MemoryOutputPipe,
    limits: SandboxLimits,
) -> Failure {
    let said = {
        let bytes = output.contents();
        let text = String::from_utf8_lossy(&bytes);
        // The last two lines, leaving out Rust's backtrace hint: a panic's location and message.
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        let tail = lines[lines.len().saturating_sub(2)..].join(" ");
        (!tail.is_empty()).then(|| tail.chars().take(1000).collect::<String>())
    };
    let with_output = |base: String| match &said {
        Some(line) => format!("{base}; guest output: {line}"),
        None => base,
    };
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            "Lambda.FunctionTimeout",
            format!(
                "the transform did not finish within {} ms",
                limits.timeout.as_millis()
            ),
        ),
        Some(trap) => Failure::new("Lambda.FunctionError", with_output(trap.to_string())),
        None if format!("{e:#}").contains("growing memory") => Failure::new(
            "Lambda.FunctionError",
            format!(
                "the transform exceeded its memory limit of {} MiB",
                limits.memory_bytes / (1024 * 1024)
            ),
        ),
        None => Failure::new("Lambda.FunctionError", with_output(format!("{e:#}"))),
    }
}
