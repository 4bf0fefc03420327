//! Delivering a flushed batch to a Splunk HTTP Event Collector with indexer acknowledgement:
//! one POST per attempt (`/services/collector/event`, or `/raw`) on the stream's channel
//! (`X-Splunk-Request-Channel`), then `/services/collector/ack` polled for its `ackId` until it
//! reads true. An ack that does not come within the acknowledgement timeout means the batch is
//! sent again. Answers are handled by their meaning: busy (503), token (401/403) and transport
//! failures are retried until `RetryOptions` runs out; a data-format refusal (400) is final.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hosepipe_sinks::hec::{HecClient, HecFailure, HecTarget};

use super::{Ended, Failed, HttpOutcome, Policy, Sending, Step, Target};
use crate::buffer::Record;
use crate::config::splunk::{EndpointType, SplunkSpec};
use crate::encode::ErrorOutputType;
use crate::encode::error_output::{FailedRecord, Reason};
use crate::encode::splunk::{EventFields, body, event_id};

/// The daemon's side of HEC: the client (`hosepipe_sinks::hec`), the event metadata, and the
/// acknowledgement timeout override.
#[derive(Clone)]
pub struct Hec {
    pub client: HecClient,
    pub fields: EventFields,
    /// `[splunk] ack_timeout_seconds`: replaces every stream's acknowledgement timeout.
    pub ack_timeout: Option<Duration>,
    /// Holds the tokens given as secrets.
    pub secrets: std::sync::Arc<crate::secrets::Secrets>,
}

/// Firehose's `DeliveryToSplunk.*` families.
pub const METRICS: crate::metrics::DestinationNames = crate::metrics::DestinationNames {
    name: "splunk",
    firehose: "DeliveryToSplunk",
    records: "Records acknowledged by Splunk",
    requests: "HEC posts by outcome: success = indexed and acknowledged",
    latency: (
        "data_ack_latency",
        "Post to indexer acknowledgement (Firehose DeliveryToSplunk.DataAckLatency)",
    ),
    failed: (
        "splunk_failed_events",
        "Records written to the S3 backup after failing (splunk-failed)",
    ),
    retried: None,
};

impl Hec {
    /// The HEC client with `[splunk]`'s event metadata and acknowledgement timeout.
    pub fn new(
        config: &crate::config::Config,
        secrets: std::sync::Arc<crate::secrets::Secrets>,
    ) -> Result<Hec, reqwest::Error> {
        let d = EventFields::default();
        let s = &config.splunk;
        Ok(Hec {
            client: HecClient::new(
                Some(super::opensearch::REQUEST_TIMEOUT),
                crate::aws_client::ca_bundle().map(|b| b.pem.as_slice()),
            )?,
            fields: EventFields {
                host: s.host.clone().unwrap_or(d.host),
                source: s.source.clone(),
                sourcetype: s.sourcetype.clone().unwrap_or(d.sourcetype),
                index: s.index.clone(),
            },
            ack_timeout: s.ack_timeout_seconds.map(Duration::from_secs),
            secrets,
        })
    }
}

pub use super::Failure;

/// What became of a batch.
#[derive(Debug)]
pub struct HecOutcome {
    pub attempts: u32,
    /// `Ok(ack latency)` when indexed; else the last failure.
    pub result: Result<Duration, Failure>,
}

/// One attempt, as the caller hears of it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub failure: Option<&'a Failure>,
    pub retrying: bool,
}

/// The meaning of a HEC answer that is not a success (its status and `code`).
pub fn classify(status: u16, code: Option<i64>, text: &str) -> Failure {
    let message = format!(
        "HEC answered {status} (code {}): {text}",
        code.unwrap_or(-1)
    );
    let (code, retry) = match (status, code) {
        (_, Some(1)) => ("Splunk.DisabledToken", true),
        (401 | 403, _) => ("Splunk.InvalidToken", true),
        (400, Some(10 | 11 | 14)) => ("Splunk.DisabledAck", true),
        (400, Some(7)) => ("Splunk.InvalidIndex", false),
        (400, _) => ("Splunk.InvalidDataFormat", false),
        (404, _) => ("Splunk.InvalidEndpoint", true),
        (413, _) => ("Splunk.InvalidDataFormat", false),
        _ => ("Splunk.ServerError", true),
    };
    Failure {
        code,
        retry,
        message,
    }
}

/// Firehose's meaning of a failed HEC call.
fn failure(f: HecFailure) -> Failure {
    let message = f.to_string();
    match f {
        HecFailure::Transport { timed_out, .. } => Failure::retry(
            if timed_out {
                "Splunk.ConnectionTimeout"
            } else {
                "Splunk.ConnectionClosed"
            },
            message,
        ),
        HecFailure::Refused { status, code, text } => classify(status, code, &text),
        HecFailure::NoAckId => Failure::retry("Splunk.DisabledAck", message),
        HecFailure::AckTimeout { .. } => Failure::retry("Splunk.AckTimeout", message),
    }
}

/// One batch's body on its way to HEC.
struct Post<'a, F> {
    hec: &'a Hec,
    target: HecTarget,
    /// `HECToken`, or its secret.
    token: &'a crate::config::http::Credential,
    /// HEC refused the token last time: read its secret again.
    refused_token: bool,
    metrics: &'a crate::metrics::Metrics,
    stream: &'a str,
    channel: &'a str,
    body: bytes::Bytes,
    ack_timeout: Duration,
    /// The last failure, with Firehose's code.
    last: Option<Failure>,
    latency: Duration,
    observe: F,
}

impl<F: Fn(Attempt<'_>)> Target for Post<'_, F> {
    async fn attempt(&mut self) -> Step {
        match self
            .hec
            .secrets
            .resolve(self.token, self.refused_token)
            .await
        {
            Ok(r) => {
                if r.read {
                    self.metrics.secret_read(self.stream, None);
                }
                self.target.token = r.value;
            }
            Err(e) => {
                self.metrics.secret_read(self.stream, Some(&e));
                self.last = Some(Failure::retry("Splunk.SecretUnreadable", e.to_string()));
                return Step::Retry(e.to_string());
            }
        }
        let client = &self.hec.client;
        let result = match client
            .post(&self.target, self.channel, self.body.clone())
            .await
        {
            Ok(ack_id) => {
                client
                    .wait_ack(&self.target, self.channel, ack_id, self.ack_timeout)
                    .await
            }
            Err(f) => Err(f),
        };
        self.refused_token = matches!(
            result,
            Err(HecFailure::Refused {
                status: 401 | 403,
                ..
            })
        );
        match result.map_err(failure) {
            Ok(latency) => {
                self.latency = latency;
                Step::Done
            }
            Err(f) => {
                let step = match f.retry {
                    true => Step::Retry(f.message.clone()),
                    false => Step::Refused(f.message.clone()),
                };
                if !f.retry {
                    (self.observe)(Attempt {
                        failure: Some(&f),
                        retrying: false,
                    });
                }
                self.last = Some(f);
                step
            }
        }
    }

    fn failed(&mut self, f: Failed<'_>) {
        (self.observe)(Attempt {
            failure: self.last.as_ref(),
            retrying: !f.expired,
        });
    }
}

impl Hec {
    /// Sends `records` until they are acknowledged, a refusal is final, or `RetryOptions`
    /// (counted from the first attempt) runs out. `observe` hears of every failed attempt.
    pub async fn deliver(
        &self,
        spec: &SplunkSpec,
        seen: &Sending<'_>,
        records: &[Record],
        observe: impl Fn(Attempt<'_>),
    ) -> HecOutcome {
        let (stream, channel) = (seen.stream, seen.channel);
        let mut post = Post {
            hec: self,
            target: HecTarget {
                endpoint: spec.endpoint.clone(),
                token: String::new(),
                raw: spec.endpoint_type == EndpointType::Raw,
            },
            token: &spec.token,
            refused_token: false,
            metrics: seen.metrics,
            stream,
            channel,
            // Built once; every attempt sends the same bytes.
            body: bytes::Bytes::from(body(spec, &self.fields, stream, records)),
            ack_timeout: self.ack_timeout.unwrap_or(spec.ack_timeout),
            last: None,
            latency: Duration::ZERO,
            observe,
        };
        let ended = super::run(&mut post, Policy::For(spec.retry), crate::pipeline::now_ms).await;
        let (attempts, result) = match ended {
            Ended::Done { attempts } => (attempts, Ok(post.latency)),
            Ended::Refused { attempts, .. } | Ended::Expired { attempts, .. } => (
                attempts,
                Err(post.last.expect("a failed delivery has a failure")),
            ),
        };
        HecOutcome { attempts, result }
    }

    /// Sends one batch's records ([`Hec::deliver`]) and says what became of them: all
    /// acknowledged, or all failed with the last failure's `Splunk.*` code and their `EventId`s.
    pub async fn deliver_batch(
        &self,
        spec: &SplunkSpec,
        records: Vec<Record>,
        seen: &Sending<'_>,
    ) -> HttpOutcome {
        let metrics = seen.metrics(METRICS.name);
        let outcome = self
            .deliver(spec, seen, &records, |attempt| {
                metrics.request(seen.stream, false);
                seen.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = attempt.failure {
                    tracing::warn!(batch = seen.batch, code = f.code, reason = %f.message, retrying = attempt.retrying, "Splunk HEC did not take the batch");
                }
            })
            .await;
        let (delivered, failed) = match outcome.result {
            Ok(latency) => {
                metrics.request(seen.stream, true);
                metrics
                    .latency
                    .get_or_create(&crate::metrics::Metrics::stream(seen.stream))
                    .observe(latency.as_secs_f64());
                (records, Vec::new())
            }
            Err(f) => {
                let mut made: std::collections::HashMap<u64, u32> = Default::default();
                let failed = records
                    .into_iter()
                    .map(|r| {
                        let n = made.entry(r.seq).or_insert(0);
                        *n += 1;
                        let mut extra = serde_json::Map::new();
                        extra.insert("EventId".into(), event_id(r.seq, *n - 1).into());
                        FailedRecord {
                            record: r,
                            reason: Reason {
                                attempts: outcome.attempts,
                                code: f.code.to_string(),
                                message: f.message.clone(),
                                lambda_arn: None,
                                extra: Some(extra),
                                catalog_table: None,
                            },
                        }
                    })
                    .collect();
                (Vec::new(), failed)
            }
        };
        HttpOutcome {
            delivered,
            failed,
            error_type: ErrorOutputType::SplunkFailed,
            latency_per_record: false,
            error_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_handled_by_their_meaning() {
        let c = |status, code| {
            let f = classify(status, code, "x");
            (f.code, f.retry)
        };
        assert_eq!(c(503, Some(9)), ("Splunk.ServerError", true));
        assert_eq!(c(401, Some(2)), ("Splunk.InvalidToken", true));
        assert_eq!(c(403, Some(4)), ("Splunk.InvalidToken", true));
        assert_eq!(c(403, Some(1)), ("Splunk.DisabledToken", true));
        assert_eq!(c(400, Some(6)), ("Splunk.InvalidDataFormat", false));
        assert_eq!(c(400, Some(10)), ("Splunk.DisabledAck", true));
        assert_eq!(c(400, Some(7)), ("Splunk.InvalidIndex", false));
        assert_eq!(c(500, None), ("Splunk.ServerError", true));
    }
}
