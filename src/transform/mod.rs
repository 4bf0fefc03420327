//! Record transformation: Firehose's `ProcessingConfiguration`.
//!
//! A stream's processors run as one [`Processing`] chain over each batch the processing buffer
//! flushes, in Firehose's order: `Decompression` → `CloudWatchLogProcessing` →
//! `RecordDeAggregation` → `Lambda` → `AppendDelimiterToRecord`. The `Lambda` step is a
//! [`Transform`]: a WebAssembly component run in a sandbox ([`wasm`]) or a built-in blueprint
//! linked natively ([`catalog`]). Nothing outside this module sees wasmtime types.
//!
//! Everything here is blocking CPU work: callers run it on the blocking pool.

pub mod build;
pub mod catalog;
pub mod native;
pub mod trial;
pub mod wasm;

use std::sync::Arc;

use bytes::Bytes;

use crate::buffer::Record;
use crate::config::processing::{Deaggregation, ProcessingSpec};
use crate::encode::prefix::ErrorOutputType;
use crate::partition::jq::Query;

/// What a transform made of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Deliver `data` (with dynamic-partitioning keys, if any).
    Ok {
        data: Bytes,
        partition_keys: Vec<(String, String)>,
    },
    /// Deliver nothing; a success.
    Dropped,
    /// The record goes to the error output.
    Failed(Failure),
}

/// Why a record could not be processed, as its failed-record document will say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `errorCode`, e.g. `Lambda.FunctionError`.
    pub code: String,
    /// `errorMessage`.
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Failure {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The outcome for one input record, with how many invocations it took part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    pub attempts: u32,
}

/// A per-record transform over batches (the `Lambda` processor).
pub trait Transform: Send + Sync {
    /// Transforms a batch, returning exactly one [`Processed`] per record, in order. Blocking.
    /// Never fails as a whole: a transform that breaks turns into per-record failures.
    fn process(&self, records: &[Record]) -> Vec<Processed>;
}

/// The `Lambda` processor: the transform and how to call it.
pub struct LambdaStep {
    pub transform: Arc<dyn Transform>,
    /// `LambdaArn`, for failed-record documents.
    pub arn: String,
}

/// A stream's processor chain, ready to run.
pub struct Processing {
    pub spec: ProcessingSpec,
    pub lambda: Option<LambdaStep>,
    /// `MetadataExtraction`'s compiled query.
    pub query: Option<Query>,
}

/// One output record of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub data: Bytes,
    /// The transform's `partitionKeys` (`!{partitionKeyFromLambda:…}`).
    pub partition_keys: Vec<(String, String)>,
    /// The jq query's keys (`!{partitionKeyFromQuery:…}`), sorted by name.
    pub query_keys: Vec<(String, String)>,
}

/// The `errorCode` of records whose partition keys cannot be extracted or used.
pub const METADATA_EXTRACTION_FAILED: &str = "DynamicPartitioning.MetadataExtractionFailed";

/// What became of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Zero (dropped), one, or several (de-aggregated) records to deliver.
    Emit(Vec<Emitted>),
    /// To the error output under `error_type`.
    Failed {
        error_type: ErrorOutputType,
        failure: Failure,
        attempts: u32,
        /// `lambdaArn` when the Lambda step failed it.
        lambda_arn: Option<String>,
    },
}

impl Processing {
    /// Runs the chain over a batch: one [`Fate`] per input record, in order.
    pub fn run(&self, records: &[Record]) -> Vec<Fate> {
        self.run_timed(records).0
    }

    /// [`Processing::run`], also saying how long the `MetadataExtraction` query took.
    pub fn run_timed(&self, records: &[Record]) -> (Vec<Fate>, std::time::Duration) {
        // Each intermediate record remembers which input it came from.
        let mut fates: Vec<Option<Fate>> = vec![None; records.len()];
        let mut current: Vec<(usize, Record)> =
            records.iter().map(Record::detached).enumerate().collect();
        let spec = &self.spec;
        if spec.decompression {
            current = expand(
                current,
                &mut fates,
                |r| native::gunzip(&r.data).map(|d| vec![d]),
                |f, i, e| fail(f, i, ErrorOutputType::DecompressionFailed, e),
            );
        }
        if spec.cloudwatch_extraction {
            current = expand(
                current,
                &mut fates,
                |r| native::cloudwatch_messages(&r.data),
                |f, i, e| fail(f, i, ErrorOutputType::ProcessingFailed, e),
            );
        }
        if let Some(how) = &spec.deaggregation {
            current = expand(
                current,
                &mut fates,
                |r| match how {
                    Deaggregation::Json => native::split_json(&r.data),
                    Deaggregation::Delimited(d) => Ok(native::split_delimited(&r.data, d)),
                },
                |f, i, e| fail(f, i, ErrorOutputType::ProcessingFailed, e),
            );
        }
        let mut out: Vec<Vec<Emitted>> = vec![Vec::new(); records.len()];
        match &self.lambda {
            Some(step) => {
                let inputs: Vec<Record> = current.iter().map(|(_, r)| r.detached()).collect();
                let results = step.transform.process(&inputs);
                for ((origin, _), p) in current.iter().zip(results) {
                    match p.outcome {
                        Outcome::Ok {
                            data,
                            partition_keys,
                        } => out[*origin].push(Emitted {
                            data,
                            partition_keys,
                            query_keys: Vec::new(),
                        }),
                        Outcome::Dropped => {}
                        Outcome::Failed(failure) => {
                            // A de-aggregated record fails its whole input record.
                            fates[*origin] = Some(Fate::Failed {
                                error_type: ErrorOutputType::ProcessingFailed,
                                failure,
                                attempts: p.attempts,
                                lambda_arn: Some(step.arn.clone()),
                            });
                        }
                    }
                }
            }
            None => {
                for (origin, r) in current {
                    out[origin].push(Emitted {
                        data: r.data,
                        partition_keys: Vec::new(),
                        query_keys: Vec::new(),
                    });
                }
            }
        }
        // Dynamic partitioning reads the transform's output, before the delimiter is added.
        let jq_started = std::time::Instant::now();
        if let Some(query) = &self.query {
            for (origin, emitted) in out.iter_mut().enumerate() {
                if fates[origin].is_some() {
                    continue;
                }
                for e in emitted.iter_mut() {
                    match query.extract(&e.data) {
                        Ok(keys) => e.query_keys = keys,
                        Err(message) => {
                            fail(
                                &mut fates,
                                origin,
                                ErrorOutputType::ProcessingFailed,
                                Failure::new(METADATA_EXTRACTION_FAILED, message),
                            );
                            break;
                        }
                    }
                }
            }
        }
        let jq_time = if self.query.is_some() {
            jq_started.elapsed()
        } else {
            std::time::Duration::ZERO
        };
        if let Some(delimiter) = &spec.append_delimiter {
            for e in out.iter_mut().flatten() {
                let mut d = Vec::with_capacity(e.data.len() + delimiter.len());
                d.extend_from_slice(&e.data);
                d.extend_from_slice(delimiter);
                e.data = d.into();
            }
        }
        let fates = fates
            .into_iter()
            .zip(out)
            .map(|(fate, emitted)| fate.unwrap_or(Fate::Emit(emitted)))
            .collect();
        (fates, jq_time)
    }
}

fn fail(fates: &mut [Option<Fate>], i: usize, error_type: ErrorOutputType, failure: Failure) {
    fates[i] = Some(Fate::Failed {
        error_type,
        failure,
        attempts: 1,
        lambda_arn: None,
    });
}

/// Applies a one-to-many step to the records whose input has not failed yet.
fn expand(
    current: Vec<(usize, Record)>,
    fates: &mut [Option<Fate>],
    step: impl Fn(&Record) -> Result<Vec<Bytes>, Failure>,
    on_error: impl Fn(&mut [Option<Fate>], usize, Failure),
) -> Vec<(usize, Record)> {
    let mut next = Vec::with_capacity(current.len());
    for (origin, r) in current {
        if fates[origin].is_some() {
            continue;
        }
        match step(&r) {
            Ok(parts) => next.extend(parts.into_iter().map(|data| {
                (
                    origin,
                    Record {
                        data,
                        arrival_ms: r.arrival_ms,
                        seq: r.seq,
                        part: r.part,
                        partition: r.partition.clone(),
                        owed: Default::default(),
                    },
                )
            })),
            Err(e) => on_error(fates, origin, e),
        }
    }
    next
}

#[cfg(test)]
mod tests;
