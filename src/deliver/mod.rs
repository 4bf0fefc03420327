//! Delivery: one retry loop ([`run`]) for every destination, each with its [`Policy`]; each
//! destination's attempt in its own file (S3 objects, OpenSearch `_bulk`, Splunk HEC, HTTP
//! endpoints). What is sent is encoded once, before the first attempt (`crate::encode`); only
//! the sending repeats.

pub mod blocked;
#[cfg(feature = "iceberg")]
pub mod glue_catalog;
pub mod http_endpoint;
#[cfg(feature = "iceberg")]
pub mod iceberg;
pub mod opensearch;
pub mod s3;
pub mod splunk;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use s3::{DeliveryResult, RETENTION_EXPIRED_CODE};

use crate::buffer::Record;
use crate::config::stream::DestinationSpec;
use crate::encode::ErrorOutputType;
use crate::encode::error_output::FailedRecord;
use crate::metrics::DestinationMetrics;

/// What a destination reached over HTTP (OpenSearch, Splunk, an HTTP endpoint) made of a batch.
#[derive(Debug)]
pub struct HttpOutcome {
    /// Records the destination took.
    pub delivered: Vec<Record>,
    /// Records it did not, with why: they go to the backup bucket as `error_type` documents.
    pub failed: Vec<FailedRecord>,
    pub error_type: ErrorOutputType,
    /// The destination's latency histogram is arrival → delivered per record (else the
    /// destination observes its own, e.g. Splunk's acknowledgement latency).
    pub latency_per_record: bool,
    /// Where in the backup bucket the failed records go, when not under its
    /// `ErrorOutputPrefix` (an Iceberg table's `S3ErrorOutputPrefix`).
    pub error_prefix: Option<crate::encode::prefix::Template>,
}

/// One batch of a stream on its way to an HTTP destination: who it is for, and where its
/// attempts are reported.
pub struct Sending<'a> {
    pub stream: &'a str,
    pub batch: u64,
    /// Identifies the stream for good (OpenSearch document ids start with it).
    pub id_base: &'a str,
    /// Identifies this run of the stream (Splunk's HEC channel).
    pub channel: &'a str,
    pub metrics: &'a crate::metrics::Metrics,
    /// The stream's count of failed attempts (`/status`).
    pub failed_attempts: &'a AtomicU64,
    /// The stream's log: which records it will hand on again after a restart (none in the
    /// benchmarks).
    pub log: Option<&'a crate::spool::Log>,
}

impl Sending<'_> {
    /// The metric families of destination `kind`.
    fn metrics(&self, kind: &str) -> &DestinationMetrics {
        self.metrics.destination(kind)
    }
}

/// The clients of the destinations reached over HTTP, one each for the daemon.
#[derive(Clone)]
pub struct Clients {
    /// Talks `_bulk` to OpenSearch / Elasticsearch.
    pub opensearch: hosepipe_sinks::opensearch::BulkClient,
    /// Talks HEC to Splunk.
    pub splunk: splunk::Hec,
    /// Posts to HTTP endpoints.
    pub http_endpoint: http_endpoint::Endpoints,
    /// Commits to Iceberg tables.
    #[cfg(feature = "iceberg")]
    pub iceberg: std::sync::Arc<iceberg::Lakes>,
}

impl Clients {
    /// The clients with the daemon's settings (`[opensearch]`, `[splunk]`,
    /// `[http_endpoint]`), sharing the secrets (`[secrets]`).
    pub fn new(config: &crate::config::Config) -> Result<Clients, reqwest::Error> {
        let secrets = std::sync::Arc::new(crate::secrets::Secrets::new(
            config.http_endpoint.secrets.clone(),
        )?);
        Ok(Clients {
            opensearch: opensearch::client(config)?,
            splunk: splunk::Hec::new(config, secrets.clone())?,
            http_endpoint: http_endpoint::Endpoints::new(config, secrets)?,
            #[cfg(feature = "iceberg")]
            iceberg: std::sync::Arc::new(iceberg::Lakes::new(config)),
        })
    }

    /// Whether this daemon can deliver to `spec` (the catalog an Iceberg stream names).
    pub fn check(&self, spec: &DestinationSpec) -> Result<(), String> {
        match spec {
            #[cfg(feature = "iceberg")]
            DestinationSpec::Iceberg(spec) => self.iceberg.check(spec),
            #[cfg(not(feature = "iceberg"))]
            DestinationSpec::Iceberg(_) => Err(NO_ICEBERG.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(not(feature = "iceberg"))]
const NO_ICEBERG: &str = "this hosepipe was built without the `iceberg` feature";

/// Firehose's metric families of each destination reached over HTTP.
pub const HTTP_METRICS: &[&crate::metrics::DestinationNames] = &[
    &opensearch::METRICS,
    &splunk::METRICS,
    &http_endpoint::METRICS,
    #[cfg(feature = "iceberg")]
    &iceberg::METRICS,
];

/// Sends a batch to the HTTP destination `spec` names: the one place a stream picks it.
pub async fn send_http(
    spec: &DestinationSpec,
    clients: &Clients,
    records: Vec<Record>,
    sending: &Sending<'_>,
) -> HttpOutcome {
    match spec {
        DestinationSpec::OpenSearch(spec) => {
            opensearch::deliver_batch(&clients.opensearch, spec, records, sending).await
        }
        DestinationSpec::Splunk(spec) => clients.splunk.deliver_batch(spec, records, sending).await,
        DestinationSpec::HttpEndpoint(spec) => {
            clients
                .http_endpoint
                .deliver_batch(spec, records, sending)
                .await
        }
        #[cfg(feature = "iceberg")]
        DestinationSpec::Iceberg(spec) => {
            clients.iceberg.deliver_batch(spec, records, sending).await
        }
        #[cfg(not(feature = "iceberg"))]
        DestinationSpec::Iceberg(_) => HttpOutcome {
            delivered: Vec::new(),
            failed: records
                .into_iter()
                .map(|record| FailedRecord {
                    record,
                    reason: crate::encode::error_output::Reason {
                        attempts: 0,
                        code: "Iceberg.Unavailable".into(),
                        message: NO_ICEBERG.into(),
                        lambda_arn: None,
                        extra: None,
                        catalog_table: None,
                    },
                })
                .collect(),
            error_type: ErrorOutputType::IcebergFailed,
            latency_per_record: false,
            error_prefix: None,
        },
        DestinationSpec::S3(_) => unreachable!("S3 batches are encoded into objects"),
    }
}

/// Why an attempt failed (Splunk, Iceberg): the destination's Firehose-style code (`Splunk.*`,
/// `Iceberg.*`), whether to retry, and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub retry: bool,
    pub message: String,
}

impl Failure {
    pub fn retry(code: &'static str, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            retry: true,
            message: message.to_string(),
        }
    }

    pub fn fatal(code: &'static str, message: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            retry: false,
            message: message.to_string(),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Everything is delivered (or, for a destination that answers per item, settled: what it
    /// refused for good is the target's to report).
    Done,
    /// Something is still to send, for this reason.
    Retry(String),
    /// The destination refused it for good: no further attempt.
    Refused(String),
}

/// How long a destination is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// S3: retried until written. Once the records are past `expires_at_ms` (the retention age,
    /// wall-clock epoch ms), or have been failing for `window` (dynamic partitioning's
    /// `RetryOptions`), every failed attempt is followed by the target's
    /// [`fallback`](Target::fallback) (the error output); retrying goes on until one succeeds.
    UntilWritten {
        expires_at_ms: i64,
        window: Option<Duration>,
    },
    /// An HTTP destination's `RetryOptions`: retried while the next attempt would start within
    /// this long of the first one (Firehose counts the first attempt in); then it is given up
    /// and the caller sends what is left to the S3 backup. Zero: one attempt.
    For(Duration),
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Done {
        attempts: u32,
    },
    /// Refused for good on attempt `attempts`.
    Refused {
        attempts: u32,
        reason: String,
    },
    /// The policy ran out (`For`), or the fallback took it (`UntilWritten`).
    Expired {
        attempts: u32,
        reason: String,
    },
}

/// One failed attempt, as a target hears of it.
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    pub attempt: u32,
    pub reason: &'a str,
    /// The policy has run out: `For` gives up after this; `UntilWritten` tries the fallback.
    pub expired: bool,
}

/// Something to deliver: its attempts, and what it does once the policy runs out.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// One attempt at sending what is still undelivered.
    async fn attempt(&mut self) -> Step;

    /// Told of every failed attempt (metrics, logs).
    fn failed(&mut self, _failure: Failed<'_>) {}

    /// The wait before attempt `attempt + 2` (after `attempt + 1` failed).
    fn backoff(&self, attempt: u32) -> Duration {
        backoff(attempt)
    }

    /// Under `UntilWritten`, after each failed attempt past expiry: puts the records somewhere
    /// else (the error output). True when that worked and delivery is over.
    async fn fallback(&mut self, _reason: &str, _attempts: u32) -> bool {
        true
    }
}

/// Backoff between attempts: 500 ms doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(ms.min(30_000))
}

/// The retry loop: attempts `target` until it is done, refused for good, or `policy` runs
/// out, with [`backoff`] between attempts. `now_ms` is the wall clock the retention age is
/// measured on; durations are measured on tokio's clock (paused in tests).
pub async fn run(target: &mut impl Target, policy: Policy, now_ms: impl Fn() -> i64) -> Ended {
    let started = tokio::time::Instant::now();
    let mut first_failure = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let reason = match target.attempt().await {
            Step::Done => return Ended::Done { attempts: attempt },
            Step::Refused(reason) => {
                return Ended::Refused {
                    attempts: attempt,
                    reason,
                };
            }
            Step::Retry(reason) => reason,
        };
        let wait = target.backoff(attempt - 1);
        let failing_since = *first_failure.get_or_insert_with(tokio::time::Instant::now);
        let expired = match policy {
            Policy::UntilWritten {
                expires_at_ms,
                window,
            } => now_ms() > expires_at_ms || window.is_some_and(|w| failing_since.elapsed() >= w),
            Policy::For(limit) => started.elapsed() + wait > limit,
        };
        target.failed(Failed {
            attempt,
            reason: &reason,
            expired,
        });
        if expired && target.fallback(&reason, attempt).await {
            return Ended::Expired {
                attempts: attempt,
                reason,
            };
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails `failures` times, then succeeds; its fallback works from attempt `fallback_from`.
    struct Scripted {
        failures: u32,
        refuse: bool,
        fallback_from: u32,
        seen: Vec<(u32, bool, tokio::time::Instant)>,
        fallbacks: u32,
    }

    impl Scripted {
        fn new(failures: u32) -> Self {
            Scripted {
                failures,
                refuse: false,
                fallback_from: 0,
                seen: Vec::new(),
                fallbacks: 0,
            }
        }
    }

    impl Target for Scripted {
        async fn attempt(&mut self) -> Step {
            match self.failures {
                0 => Step::Done,
                _ if self.refuse => Step::Refused("no".into()),
                _ => {
                    self.failures -= 1;
                    Step::Retry("busy".into())
                }
            }
        }
        fn failed(&mut self, f: Failed<'_>) {
            self.seen
                .push((f.attempt, f.expired, tokio::time::Instant::now()));
        }
        async fn fallback(&mut self, _: &str, attempts: u32) -> bool {
            self.fallbacks += 1;
            attempts >= self.fallback_from
        }
    }

    const FOREVER: Policy = Policy::UntilWritten {
        expires_at_ms: i64::MAX,
        window: None,
    };

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_growing_waits_until_they_heal() {
        let mut t = Scripted::new(3);
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            run(&mut t, FOREVER, || 0).await,
            Ended::Done { attempts: 4 }
        );
        let waits: Vec<_> = t.seen.iter().map(|(a, e, at)| (*a, *e, *at - t0)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            [(1, false, ms(0)), (2, false, ms(500)), (3, false, ms(1500))]
        );
        assert_eq!(t.fallbacks, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_ends_at_once() {
        let mut t = Scripted::new(5);
        t.refuse = true;
        assert_eq!(
            run(&mut t, FOREVER, || 0).await,
            Ended::Refused {
                attempts: 1,
                reason: "no".into()
            }
        );
        assert!(t.seen.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_options_give_up_once_the_next_attempt_would_start_too_late() {
        // Attempts start at 0, 0.5, 1.5, 3.5, 7.5 s; the next would start at 15.5 s > 10 s.
        let mut t = Scripted::new(u32::MAX);
        let ended = run(&mut t, Policy::For(Duration::from_secs(10)), || 0).await;
        assert_eq!(
            ended,
            Ended::Expired {
                attempts: 5,
                reason: "busy".into()
            }
        );
        assert_eq!(t.fallbacks, 1);
        assert!(t.seen[..4].iter().all(|(_, expired, _)| !expired));
        // Zero means one attempt.
        let mut once = Scripted::new(u32::MAX);
        let ended = run(&mut once, Policy::For(Duration::ZERO), || 0).await;
        assert!(matches!(ended, Ended::Expired { attempts: 1, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn past_retention_every_failure_tries_the_fallback_until_it_works() {
        let mut t = Scripted::new(u32::MAX);
        t.fallback_from = 3;
        let policy = Policy::UntilWritten {
            expires_at_ms: 1_000,
            window: None,
        };
        let ended = run(&mut t, policy, || 2_000).await;
        assert!(matches!(ended, Ended::Expired { attempts: 3, .. }));
        assert_eq!(t.fallbacks, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_window_expires_records_before_the_retention_age() {
        // Failures at 0, 0.5, 1.5, 3.5, 7.5 s are inside 10 s of the first; 15.5 s is past it.
        let mut t = Scripted::new(u32::MAX);
        let policy = Policy::UntilWritten {
            expires_at_ms: i64::MAX,
            window: Some(Duration::from_secs(10)),
        };
        let ended = run(&mut t, policy, || 0).await;
        assert!(
            matches!(ended, Ended::Expired { attempts: 6, .. }),
            "{ended:?}"
        );
        assert_eq!(t.fallbacks, 1);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
