//! Delivering an encoded object with retries, and, past the retention age, its records to the
//! error output; the OpenSearch and Splunk destinations.

pub mod opensearch;
pub mod splunk;

use std::sync::Arc;
use std::time::Duration;

use hosepipe_sinks::{Destination, Outcome, Payload};

use crate::encode::EncodedObject;
use crate::encode::error_output;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        attempts: u32,
    },
    /// Past the retention age and still failing: written to the error output instead.
    ErrorOutput {
        attempts: u32,
        reason: String,
    },
    /// The destination refused the object for good.
    Rejected {
        attempts: u32,
        reason: String,
    },
}

/// Backoff between attempts: 500 ms doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(ms.min(30_000))
}

/// The error code hosepipe gives records written to the error output after the retention age.
pub const RETENTION_EXPIRED_CODE: &str = "S3.RetentionExpired";

/// Delivers one object, retrying retryable failures until it succeeds. Once its oldest record
/// is older than `retention`, or it has failed for its `retry_window`, each failed attempt is
/// followed by one at writing the records to the error output (Firehose's failed-record JSON
/// under `error_key`). The caller bounds the
/// total time (shutdown deadline); nothing here gives up on a retryable failure.
/// `on_failure(reason, attempt, expired)` is told of every failed attempt.
pub async fn deliver_with_retry(
    sink: &Arc<dyn Destination>,
    object: &EncodedObject,
    retention: Duration,
    now_ms: impl Fn() -> i64,
    on_failure: impl Fn(&str, u32, bool),
) -> DeliveryResult {
    let payload = Payload::Object {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        body: object.body.clone(),
        content_type: Some(object.content_type.to_string()),
        metadata: Vec::new(),
        records: 1,
    };
    let oldest = object.oldest_arrival_ms();
    let mut first_failure = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let report = sink.deliver(&payload).await;
        let reason = match report.outcomes.first() {
            Some(Outcome::Delivered) | None => {
                return DeliveryResult::Delivered { attempts: attempt };
            }
            Some(Outcome::Rejected(reason)) => {
                return DeliveryResult::Rejected {
                    attempts: attempt,
                    reason: reason.clone(),
                };
            }
            Some(Outcome::Retryable(reason)) => reason.clone(),
        };
        let now = now_ms();
        let failing_since = *first_failure.get_or_insert(now);
        let expired = now.saturating_sub(oldest) > retention.as_millis() as i64
            || object
                .retry_window
                .is_some_and(|w| now.saturating_sub(failing_since) >= w.as_millis() as i64);
        on_failure(&reason, attempt, expired);
        if expired {
            let documents = error_output::failed_record_documents(
                &object.records,
                attempt,
                RETENTION_EXPIRED_CODE,
                &reason,
                now,
            );
            let error_payload = Payload::Object {
                bucket: object.bucket.clone(),
                key: object.error_key.clone(),
                body: documents,
                content_type: Some("application/x-ndjson".into()),
                metadata: Vec::new(),
                records: 1,
            };
            if sink.deliver(&error_payload).await.all_delivered() {
                return DeliveryResult::ErrorOutput {
                    attempts: attempt,
                    reason,
                };
            }
        }
        tokio::time::sleep(backoff(attempt - 1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Record;
    use crate::testing::{FAILURE, ScriptedSink};
    use bytes::Bytes;

    fn object(arrival_ms: i64) -> EncodedObject {
        EncodedObject {
            batch_id: 1,
            bucket: "bkt".into(),
            key: "data/obj".into(),
            body: Bytes::from_static(b"ab"),
            content_type: "application/octet-stream",
            raw_bytes: 2,
            records: vec![
                Record {
                    data: Bytes::from_static(b"a"),
                    arrival_ms,
                    seq: 0,
                    partition: None,
                },
                Record {
                    data: Bytes::from_static(b"b"),
                    arrival_ms,
                    seq: 1,
                    partition: None,
                },
            ],
            error_key: "errors/retention-expired/obj".into(),
            error_output: None,
            retry_window: None,
            encryption: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_they_heal() {
        let sink: Arc<dyn Destination> = Arc::new(ScriptedSink::failing_first(3));
        let seen = std::sync::Mutex::new(Vec::new());
        let result = deliver_with_retry(
            &sink,
            &object(1_000),
            Duration::from_secs(60),
            || 2_000,
            |_, a, expired| {
                seen.lock().unwrap().push((a, expired));
            },
        )
        .await;
        assert_eq!(result, DeliveryResult::Delivered { attempts: 4 });
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, false), (2, false), (3, false)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_retention_the_records_go_to_the_error_output() {
        let flaky = Arc::new(ScriptedSink::refusing("data/"));
        let sink: Arc<dyn Destination> = flaky.clone();
        let day = 86_400_000;
        let result = deliver_with_retry(
            &sink,
            &object(0),
            Duration::from_secs(86_400),
            || day + 1,
            |_, _, _| {},
        )
        .await;
        assert_eq!(
            result,
            DeliveryResult::ErrorOutput {
                attempts: 1,
                reason: FAILURE.into()
            }
        );
        let attempts = flaky.attempts.lock().unwrap();
        assert_eq!(attempts.len(), 2);
        let (key, body, delivered) = &attempts[1];
        assert!(delivered);
        assert_eq!(key, "errors/retention-expired/obj");
        let first: serde_json::Value =
            serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["errorCode"], RETENTION_EXPIRED_CODE);
        assert_eq!(first["rawData"], "YQ==");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_retry_window_sends_records_to_the_error_output_early() {
        let flaky = Arc::new(ScriptedSink::refusing("data/"));
        let sink: Arc<dyn Destination> = flaky.clone();
        let mut obj = object(0);
        obj.retry_window = Some(Duration::from_secs(10));
        let clock = std::sync::atomic::AtomicI64::new(1_000);
        let result = deliver_with_retry(
            &sink,
            &obj,
            Duration::from_secs(86_400),
            || clock.fetch_add(4_000, std::sync::atomic::Ordering::Relaxed),
            |_, _, _| {},
        )
        .await;
        // Failures at 1 s, 5 s, 9 s are inside the window; the one at 13 s is past it.
        assert!(
            matches!(result, DeliveryResult::ErrorOutput { attempts: 4, .. }),
            "{result:?}"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
