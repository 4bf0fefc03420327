//! Delivering a flushed batch to an HTTP endpoint as Firehose does: one request per at most
//! 10,000 records, its id and body fixed before the first attempt and kept across retries;
//! success only on a 200 naming the request; anything else retried with Firehose's backoff (1 s
//! doubling, ±15 %, at most 120 s) until `RetryOptions` runs out, then the records go to the S3
//! backup as `http-endpoint-failed`. A 413 is final (Firehose drops the batch; hosepipe puts it in
//! the error output too). The access key may come from a secret, read again when the endpoint
//! refuses it (401/403).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hosepipe_sinks::http_endpoint::{EndpointClient, EndpointFailure, EndpointRequest};

use super::{Ended, Failed, HttpOutcome, Policy, Sending, Step, Target};
use crate::buffer::Record;
use crate::config::http_endpoint::HttpEndpointSpec;
use crate::encode::ErrorOutputType;
use crate::encode::error_output::{FailedRecord, Reason};
use crate::encode::http_endpoint::{MAX_REQUEST_RECORDS, body, common_attributes};
use crate::secrets::Secrets;

/// Firehose's `DeliveryToHttpEndpoint.*` families.
pub const METRICS: crate::metrics::DestinationNames = crate::metrics::DestinationNames {
    name: "http_endpoint",
    firehose: "DeliveryToHttpEndpoint",
    records: "Records the endpoint took",
    requests: "Requests by outcome: success = a 200 naming the request",
    latency: ("latency", "Arrival to delivered, per record"),
    failed: (
        "http_endpoint_failed_records",
        "Records written to the S3 backup after failing (http-endpoint-failed)",
    ),
    retried: None,
};

/// The daemon's side of HTTP endpoints: the client, the secrets, the answer timeout, and the
/// stream ARNs' prefix (`X-Amz-Firehose-Source-Arn`).
#[derive(Clone)]
pub struct Endpoints {
    pub client: EndpointClient,
    pub secrets: Arc<Secrets>,
    /// `[http_endpoint] request_timeout_seconds` (Firehose: 3 minutes).
    pub timeout: Duration,
    /// `arn:aws:firehose:<region>:<account>:deliverystream/`.
    pub arn_prefix: String,
}

impl Endpoints {
    pub fn new(
        config: &crate::config::Config,
        secrets: Arc<Secrets>,
    ) -> Result<Endpoints, reqwest::Error> {
        Ok(Endpoints {
            client: EndpointClient::new(crate::aws_client::ca_bundle().map(|b| b.pem.as_slice()))?,
            secrets,
            timeout: config.http_endpoint.request_timeout,
            arn_prefix: format!(
                "arn:aws:firehose:{}:{}:deliverystream/",
                config.region, config.account_id
            ),
        })
    }
}

/// Why an attempt failed: Firehose's `HttpEndpoint.*` code, whether to retry, whether the
/// endpoint refused the access key, and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub retry: bool,
    pub refused_key: bool,
    pub message: String,
}

/// Firehose's meaning of a failed request.
pub fn classify(f: &EndpointFailure) -> Failure {
    let (code, retry) = match f {
        EndpointFailure::Timeout(_) => ("HttpEndpoint.RequestTimeout", true),
        EndpointFailure::Connect(_) => ("HttpEndpoint.ConnectionFailed", true),
        EndpointFailure::Reset(_) => ("HttpEndpoint.ConnectionReset", true),
        EndpointFailure::TooLarge => ("HttpEndpoint.ResponseTooLarge", true),
        EndpointFailure::Invalid(_) => ("HttpEndpoint.InvalidResponseFromDestination", true),
        EndpointFailure::Status { status: 413, .. } => ("HttpEndpoint.DestinationException", false),
        EndpointFailure::Status { .. } => ("HttpEndpoint.DestinationException", true),
    };
    let refused_key = matches!(
        f,
        EndpointFailure::Status {
            status: 401 | 403,
            ..
        }
    );
    let mut message = f.to_string();
    if matches!(f, EndpointFailure::Status { status: 413, .. }) {
        message.push_str(" (the request is too large for the endpoint: lower the buffer size)");
    }
    Failure {
        code,
        retry,
        refused_key,
        message,
    }
}

/// Firehose's wait before attempt `attempt + 2`: 1 s doubling, ±15 % jitter, at most 120 s.
pub fn firehose_backoff(attempt: u32) -> Duration {
    let base = 1000u64.saturating_mul(1 << attempt.min(7)).min(120_000) as f64;
    Duration::from_millis((base * rand::random_range(0.85..1.15)) as u64)
}

/// One request on its way.
struct Post<'a, F> {
    endpoints: &'a Endpoints,
    spec: &'a HttpEndpointSpec,
    request: EndpointRequest,
    /// The endpoint refused the key last time: read its secret again.
    refused_key: bool,
    last: Option<Failure>,
    metrics: &'a crate::metrics::Metrics,
    stream: &'a str,
    records: u64,
    observe: F,
}

impl<F: Fn(&Failure, bool)> Post<'_, F> {
    fn fail(&mut self, f: Failure) -> Step {
        let step = match f.retry {
            true => Step::Retry(f.message.clone()),
            false => Step::Refused(f.message.clone()),
        };
        if !f.retry {
            (self.observe)(&f, false);
        }
        self.refused_key = f.refused_key;
        self.last = Some(f);
        step
    }
}

impl<F: Fn(&Failure, bool)> Target for Post<'_, F> {
    async fn attempt(&mut self) -> Step {
        let (metrics, stream) = (self.metrics, self.stream);
        let key = match &self.spec.access_key {
            None => None,
            Some(cred) => match self.endpoints.secrets.resolve(cred, self.refused_key).await {
                Ok(r) => {
                    if r.read {
                        metrics.secret_read(stream, None);
                    }
                    Some(r.value)
                }
                Err(e) => {
                    metrics.secret_read(stream, Some(&e));
                    return self.fail(Failure {
                        code: "HttpEndpoint.SecretUnreadable",
                        retry: true,
                        refused_key: true,
                        message: e.to_string(),
                    });
                }
            },
        };
        let dest = metrics.destination(METRICS.name);
        let labels = crate::metrics::Metrics::stream(stream);
        dest.processed_records
            .get_or_create(&labels)
            .inc_by(self.records);
        dest.processed_bytes
            .get_or_create(&labels)
            .inc_by(self.request.body.len() as u64);
        match self
            .endpoints
            .client
            .post(&self.request, key.as_deref(), self.endpoints.timeout)
            .await
        {
            Ok(()) => Step::Done,
            Err(f) => self.fail(classify(&f)),
        }
    }

    fn failed(&mut self, f: Failed<'_>) {
        if let Some(last) = &self.last {
            (self.observe)(last, !f.expired);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        firehose_backoff(attempt)
    }
}

impl Endpoints {
    /// Sends one batch's records, up to 10,000 per request, and says what became of them:
    /// each request's records taken, or failed with its last failure's `HttpEndpoint.*` code.
    pub async fn deliver_batch(
        &self,
        spec: &HttpEndpointSpec,
        records: Vec<Record>,
        seen: &Sending<'_>,
    ) -> HttpOutcome {
        let metrics = seen.metrics.destination(METRICS.name);
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut rest = records;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MAX_REQUEST_RECORDS));
            let chunk = std::mem::replace(&mut rest, tail);
            let request_id = uuid::Uuid::new_v4().to_string();
            // Base64 and gzip of up to 64 MiB: off the runtime's threads.
            let (id, gzip) = (request_id.clone(), spec.gzip);
            let (chunk, data) = tokio::task::spawn_blocking(move || {
                let mut data = body(&id, crate::pipeline::now_ms(), &chunk);
                if gzip {
                    data = crate::compress::gzip(&data).expect("gzip into memory");
                }
                (chunk, data)
            })
            .await
            .expect("the body is built");
            let mut post = Post {
                endpoints: self,
                spec,
                request: EndpointRequest {
                    url: spec.url.clone(),
                    request_id: request_id.clone(),
                    source_arn: format!("{}{}", self.arn_prefix, seen.stream),
                    common_attributes: common_attributes(&spec.common_attributes),
                    gzip: spec.gzip,
                    body: data.into(),
                },
                refused_key: false,
                last: None,
                metrics: seen.metrics,
                stream: seen.stream,
                records: chunk.len() as u64,
                observe: |f: &Failure, retrying: bool| {
                    metrics.request(seen.stream, false);
                    seen.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(batch = seen.batch, request_id = %request_id, code = f.code, reason = %f.message, retrying, "the HTTP endpoint did not take the request");
                },
            };
            let ended =
                super::run(&mut post, Policy::For(spec.retry), crate::pipeline::now_ms).await;
            match ended {
                Ended::Done { .. } => {
                    metrics.request(seen.stream, true);
                    delivered.extend(chunk);
                }
                Ended::Refused { attempts, .. } | Ended::Expired { attempts, .. } => {
                    let f = post.last.expect("a failed delivery has a failure");
                    failed.extend(chunk.into_iter().map(|r| FailedRecord {
                        record: r,
                        reason: Reason {
                            attempts,
                            code: f.code.to_string(),
                            message: f.message.clone(),
                            lambda_arn: None,
                            extra: None,
                            catalog_table: None,
                        },
                    }));
                }
            }
        }
        HttpOutcome {
            delivered,
            failed,
            error_type: ErrorOutputType::HttpEndpointFailed,
            latency_per_record: true,
            error_prefix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_have_firehoses_codes_and_only_413_is_final() {
        let c = |f: EndpointFailure| {
            let f = classify(&f);
            (f.code, f.retry, f.refused_key)
        };
        let status = |status| EndpointFailure::Status {
            status,
            body: String::new(),
        };
        assert_eq!(
            c(status(503)),
            ("HttpEndpoint.DestinationException", true, false)
        );
        assert_eq!(
            c(status(401)),
            ("HttpEndpoint.DestinationException", true, true)
        );
        assert_eq!(
            c(status(413)),
            ("HttpEndpoint.DestinationException", false, false)
        );
        assert_eq!(
            c(EndpointFailure::Timeout(Duration::from_secs(1))).0,
            "HttpEndpoint.RequestTimeout"
        );
        assert_eq!(
            c(EndpointFailure::Invalid("x".into())).0,
            "HttpEndpoint.InvalidResponseFromDestination"
        );
        assert_eq!(
            c(EndpointFailure::TooLarge).0,
            "HttpEndpoint.ResponseTooLarge"
        );
    }

    #[test]
    fn backoff_is_firehoses() {
        for (attempt, base) in [
            (0, 1000.0),
            (1, 2000.0),
            (3, 8000.0),
            (7, 120_000.0),
            (30, 120_000.0),
        ] {
            let ms = firehose_backoff(attempt).as_millis() as f64;
            assert!(
                ms >= base * 0.85 - 1.0 && ms <= base * 1.15,
                "{attempt}: {ms}"
            );
        }
    }
}
