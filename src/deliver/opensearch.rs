//! Delivering a flushed batch to OpenSearch / Elasticsearch: one gzip `_bulk` request per
//! attempt, every item of the answer read. Only the items that failed with a retryable status
//! (429, 5xx, `es_rejected_execution_exception`) are sent again, until `RetryOptions` runs out;
//! items refused for good (mapping errors, other 4xx) are not. A whole-request failure
//! (connection refused, 5xx, 429, …) retries everything still pending. Each document keeps its
//! `_id` across attempts, so a retry overwrites rather than duplicates.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hosepipe_sinks::opensearch::{BulkClient, Item, RequestFailure};

use super::{Failed, HttpOutcome, Policy, Sending, Step, Target};
use crate::buffer::Record;
use crate::config::opensearch::OpenSearchSpec;
use crate::encode::ErrorOutputType;
use crate::encode::error_output::{FailedRecord, Reason};
use crate::encode::opensearch::{Doc, FailedDoc, bulk_body, failed_fields, prepare};

/// What became of a batch.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub indexed: Vec<Doc>,
    pub failed: Vec<FailedDoc>,
}

/// One `_bulk` attempt, as the caller hears of it.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// The request got a `_bulk` answer (its items may still have failed).
    pub answered: bool,
    /// Documents still to index, and whether they will be sent again.
    pub pending: usize,
    pub retrying: bool,
    /// Why the first of them failed.
    pub reason: &'a str,
}

/// Firehose's `DeliveryToAmazonOpenSearchService.*` families.
pub const METRICS: crate::metrics::DestinationNames = crate::metrics::DestinationNames {
    name: "opensearch",
    firehose: "DeliveryToAmazonOpenSearchService",
    records: "Documents indexed",
    requests: "_bulk requests by outcome: failure = the whole request failed",
    latency: ("latency", "Arrival to indexed, per document"),
    failed: (
        "opensearch_failed_documents",
        "Documents written to the S3 backup after failing (AmazonOpenSearchService-failed)",
    ),
    retried: None,
};

/// The `_bulk` client with `[opensearch]`'s settings.
pub fn client(config: &crate::config::Config) -> Result<BulkClient, reqwest::Error> {
    BulkClient::new(hosepipe_sinks::opensearch::BulkSettings {
        timeout: Some(REQUEST_TIMEOUT),
        auth: config.opensearch_auth.clone(),
        ca_bundle: crate::aws_client::ca_bundle().map(|b| b.pem.clone()),
    })
}

/// The item code when the cluster could not be reached.
pub const CONNECTION_FAILED: &str = "OS.ConnectionFailed";

/// Requests time out after this long (Firehose gives a cluster no longer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The documents of one batch: those still pending (with the code and reason of their last
/// failure) and what became of the others.
struct Bulk<'a, F> {
    client: &'a BulkClient,
    spec: &'a OpenSearchSpec,
    pending: Vec<(Doc, String, String)>,
    out: BulkOutcome,
    attempts: u32,
    answered: bool,
    observe: F,
}

impl<F: Fn(Attempt<'_>)> Target for Bulk<'_, F> {
    async fn attempt(&mut self) -> Step {
        self.attempts += 1;
        let pending = std::mem::take(&mut self.pending);
        let body = bulk_body(
            pending.iter().map(|(d, _, _)| d),
            self.spec.type_name.as_deref(),
        );
        let result = self
            .client
            .bulk(&self.spec.endpoint, &body, pending.len())
            .await;
        self.answered = result.is_ok();
        match result {
            Ok(items) => {
                for ((doc, _, _), item) in pending.into_iter().zip(items) {
                    match item {
                        Item::Indexed => self.out.indexed.push(doc),
                        Item::Retry { status, reason } => {
                            self.pending.push((doc, status.to_string(), reason))
                        }
                        Item::Refused { status, reason } => self.out.failed.push(FailedDoc {
                            doc,
                            attempts: self.attempts,
                            code: status.to_string(),
                            message: reason,
                        }),
                    }
                }
            }
            Err(f) => {
                // Firehose's code for the documents of a request that failed whole.
                let code = match &f {
                    RequestFailure::Unreachable(_) => CONNECTION_FAILED.to_string(),
                    RequestFailure::Status { status, .. } => status.to_string(),
                    RequestFailure::BadAnswer(_) => "500".to_string(),
                };
                let message = f.to_string();
                self.pending = pending
                    .into_iter()
                    .map(|(d, _, _)| (d, code.clone(), message.clone()))
                    .collect();
            }
        }
        match self.pending.first() {
            None => {
                (self.observe)(Attempt {
                    answered: self.answered,
                    pending: 0,
                    retrying: false,
                    reason: "",
                });
                Step::Done
            }
            Some((_, _, reason)) => Step::Retry(reason.clone()),
        }
    }

    fn failed(&mut self, f: Failed<'_>) {
        (self.observe)(Attempt {
            answered: self.answered,
            pending: self.pending.len(),
            retrying: !f.expired,
            reason: f.reason,
        });
    }
}

/// Indexes `docs` through `client`, retrying what failed for a retryable reason until the
/// stream's `RetryOptions` (counted from the first attempt) runs out. `observe` hears of every
/// attempt.
pub async fn deliver(
    client: &BulkClient,
    spec: &OpenSearchSpec,
    docs: Vec<Doc>,
    observe: impl Fn(Attempt<'_>),
) -> BulkOutcome {
    let mut bulk = Bulk {
        client,
        spec,
        pending: docs
            .into_iter()
            .map(|d| (d, String::new(), String::new()))
            .collect(),
        out: BulkOutcome::default(),
        attempts: 0,
        answered: false,
        observe,
    };
    if !bulk.pending.is_empty() {
        super::run(&mut bulk, Policy::For(spec.retry), crate::pipeline::now_ms).await;
    }
    let attempts = bulk.attempts;
    let mut out = bulk.out;
    out.failed.extend(
        bulk.pending
            .into_iter()
            .map(|(doc, code, message)| FailedDoc {
                doc,
                attempts,
                code,
                message,
            }),
    );
    out
}

/// Indexes one batch's records ([`deliver`]) and says what became of each: records that are
/// not JSON objects, or that the cluster refused or never took, fail with Firehose's
/// failed-document fields.
pub async fn deliver_batch(
    client: &BulkClient,
    spec: &OpenSearchSpec,
    records: Vec<Record>,
    seen: &Sending<'_>,
) -> HttpOutcome {
    let (docs, mut failed) = prepare(spec, records, seen.id_base);
    let metrics = seen.metrics(METRICS.name);
    let outcome = deliver(client, spec, docs, |attempt| {
        metrics.request(seen.stream, attempt.answered);
        if attempt.pending > 0 {
            seen.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        if attempt.retrying {
            tracing::warn!(
                batch = seen.batch,
                documents = attempt.pending,
                reason = attempt.reason,
                "OpenSearch did not take every document; retrying those"
            );
        }
    })
    .await;
    failed.extend(outcome.failed);
    HttpOutcome {
        delivered: outcome.indexed.into_iter().map(|d| d.record).collect(),
        failed: failed
            .into_iter()
            .map(|f| {
                let extra = Some(failed_fields(&f, spec.type_name.as_deref()));
                FailedRecord {
                    record: f.doc.record,
                    reason: Reason {
                        extra,
                        attempts: f.attempts,
                        code: f.code,
                        message: f.message,
                        lambda_arn: None,
                        catalog_table: None,
                    },
                }
            })
            .collect(),
        error_type: ErrorOutputType::OpenSearchFailed,
        latency_per_record: true,
        error_prefix: None,
    }
}
