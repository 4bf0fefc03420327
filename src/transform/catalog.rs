//! Which transform a `LambdaArn` names: `<name>.wasm` in the configured `transforms.dir`
//! (a component run in the sandbox), else a built-in blueprint of the same name (the same
//! crate as the component in transforms/blueprints, linked into the daemon natively).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use hosepipe_transform::Params;

use super::wasm::{Compiled, SandboxLimits, WasmRuntime};
use super::{Failure, LambdaStep, Outcome, Processed, Processing, Transform};
use crate::buffer::Record;
use crate::config::processing::{LambdaSpec, ProcessingSpec};

/// Where transforms come from and how they are run.
#[derive(Debug, Clone, Default)]
pub struct CatalogSettings {
    /// Directory of `<function-name>.wasm` components.
    pub dir: Option<PathBuf>,
    /// Where compiled code is cached.
    pub cache_dir: Option<PathBuf>,
    pub limits: SandboxLimits,
}

type Builtin = fn(&Params) -> Result<Arc<dyn Transform>, String>;

/// The blueprints built into the daemon, by registry name.
pub const BUILTINS: &[(&str, Builtin)] = &[
    (
        "general-processing",
        native::<general_processing::GeneralProcessing>,
    ),
    (
        "apache-log-to-json",
        native::<apache_log_to_json::ApacheLogToJson>,
    ),
    ("syslog-to-json", native::<syslog_to_json::SyslogToJson>),
    (
        "cloudwatch-logs-processor",
        native::<cloudwatch_logs_processor::CloudWatchLogsProcessor>,
    ),
    (
        "json-field-filter",
        native::<json_field_filter::JsonFieldFilter>,
    ),
    (
        "partition-key-from-field",
        native::<partition_key_from_field::PartitionKeyFromField>,
    ),
];

/// Resolves and builds streams' processor chains.
pub struct Catalog {
    settings: CatalogSettings,
    runtime: OnceLock<Result<WasmRuntime, String>>,
    /// Compiled components by path, with the file's modification time.
    compiled: Mutex<HashMap<PathBuf, (Option<std::time::SystemTime>, Compiled)>>,
}

impl Catalog {
    pub fn new(settings: CatalogSettings) -> Self {
        Catalog {
            settings,
            runtime: OnceLock::new(),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    fn runtime(&self) -> Result<&WasmRuntime, String> {
        self.runtime
            .get_or_init(|| {
                WasmRuntime::new(self.settings.cache_dir.clone(), self.settings.limits)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The component file a function name would load, if there is one.
    pub fn component_path(&self, function: &str) -> Option<PathBuf> {
        let path = self.settings.dir.as_ref()?.join(format!("{function}.wasm"));
        path.is_file().then_some(path)
    }

    /// Builds a stream's chain, resolving its Lambda processor. The error says why the
    /// function cannot be used (unknown name, not a component, parameters rejected).
    pub fn build(&self, spec: &ProcessingSpec) -> Result<Arc<Processing>, String> {
        let lambda = match &spec.lambda {
            None => None,
            Some(l) => Some(LambdaStep {
                transform: self.transform(l)?,
                arn: l.arn.clone(),
            }),
        };
        let query = spec
            .metadata_query
            .as_deref()
            .map(crate::partition::jq::Query::compile)
            .transpose()?;
        Ok(Arc::new(Processing {
            spec: spec.clone(),
            lambda,
            query,
        }))
    }

    fn transform(&self, l: &LambdaSpec) -> Result<Arc<dyn Transform>, String> {
        if let Some(path) = self.component_path(&l.function) {
            let runtime = self.runtime()?;
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let cached = self
                .compiled
                .lock()
                .expect("catalog lock")
                .get(&path)
                .filter(|(m, _)| *m == modified)
                .map(|(_, c)| c.clone());
            let compiled = match cached {
                Some(c) => c,
                None => {
                    let c = runtime.compile(&path).map_err(|e| e.to_string())?;
                    self.compiled
                        .lock()
                        .expect("catalog lock")
                        .insert(path.clone(), (modified, c.clone()));
                    c
                }
            };
            let t = runtime
                .transform(&compiled, l.parameters.clone(), l.retries)
                .map_err(|e| format!("{}: {e}", l.function))?;
            return Ok(Arc::new(t));
        }
        match BUILTINS.iter().find(|(name, _)| *name == l.function) {
            Some((_, make)) => make(&Params::new(l.parameters.iter().cloned()))
                .map_err(|e| format!("{}: the transform rejected its parameters: {e}", l.function)),
            None => Err(format!(
                "no transform named {:?}: put {0}.wasm in {} or use a built-in blueprint ({})",
                l.function,
                self.settings
                    .dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "the transforms directory (transforms.dir)".into()),
                BUILTINS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A blueprint linked natively: trusted code, so no sandbox; a panic still only fails the
/// record it happened on.
struct Native<T> {
    params: Params,
    pool: Mutex<Vec<T>>,
}

fn native<T: hosepipe_transform::Transform + Send>(
    params: &Params,
) -> Result<Arc<dyn Transform>, String> {
    let first = T::init(params)?;
    Ok(Arc::new(Native {
        params: params.clone(),
        pool: Mutex::new(vec![first]),
    }))
}

impl<T: hosepipe_transform::Transform + Send> Transform for Native<T> {
    fn process(&self, records: &[Record]) -> Vec<Processed> {
        let mut out = Vec::with_capacity(records.len());
        let mut instance = self.pool.lock().expect("pool lock").pop();
        for (i, r) in records.iter().enumerate() {
            let mut t = match instance.take().map_or_else(|| T::init(&self.params), Ok) {
                Ok(t) => t,
                Err(e) => {
                    out.push(failed(Failure::new("Lambda.FunctionError", e)));
                    continue;
                }
            };
            let record = hosepipe_transform::Record {
                id: i as u64,
                data: &r.data,
                arrival_ms: r.arrival_ms,
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| t.process(record))) {
                Ok(outcome) => {
                    out.push(Processed {
                        outcome: from_sdk(outcome, &r.data),
                        attempts: 1,
                    });
                    instance = Some(t);
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    tracing::error!(error = %message, "built-in transform panicked on a record");
                    out.push(failed(Failure::new(
                        "Lambda.FunctionError",
                        format!("the transform panicked: {message}"),
                    )));
                }
            }
        }
        if let Some(t) = instance {
            self.pool.lock().expect("pool lock").push(t);
        }
        out
    }
}

fn failed(failure: Failure) -> Processed {
    Processed {
        outcome: Outcome::Failed(failure),
        attempts: 1,
    }
}

/// The SDK's outcome as the host's. Bytes borrowed from the input record are shared with it,
/// not copied.
pub fn from_sdk(outcome: hosepipe_transform::Outcome<'_>, input: &Bytes) -> Outcome {
    match outcome {
        hosepipe_transform::Outcome::Ok {
            data,
            partition_keys,
        } => {
            let data = match data {
                std::borrow::Cow::Borrowed(b) if input.as_ptr_range().contains(&b.as_ptr()) => {
                    input.slice_ref(b)
                }
                std::borrow::Cow::Borrowed(b) => Bytes::copy_from_slice(b),
                std::borrow::Cow::Owned(v) => Bytes::from(v),
            };
            Outcome::Ok {
                data,
                partition_keys,
            }
        }
        hosepipe_transform::Outcome::Dropped => Outcome::Dropped,
        hosepipe_transform::Outcome::Failed(m) => {
            Outcome::Failed(Failure::new("Lambda.ProcessingFailed", m))
        }
    }
}
