//! Writing an encoded object to S3: retried until written. Past the retention age (or
//! dynamic partitioning's retry window) each failed attempt is followed by one at writing the
//! records to the error output instead.

use std::sync::Arc;
use std::time::Duration;

use hosepipe_sinks::{Destination, Outcome, Payload};

use super::{Ended, Failed, Policy, Step, Target};
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

/// The error code hosepipe gives records written to the error output after the retention age.
pub const RETENTION_EXPIRED_CODE: &str = "S3.RetentionExpired";

/// One object and where it goes.
struct ObjectWrite<'a, N, F> {
    sink: &'a Arc<dyn Destination>,
    object: &'a EncodedObject,
    payload: Payload,
    now_ms: &'a N,
    on_failure: F,
}

impl<N: Fn() -> i64, F: Fn(&str, u32, bool)> Target for ObjectWrite<'_, N, F> {
    async fn attempt(&mut self) -> Step {
        match self.sink.deliver(&self.payload).await.outcomes.first() {
            Some(Outcome::Delivered) | None => Step::Done,
            Some(Outcome::Rejected(reason)) => Step::Refused(reason.clone()),
            Some(Outcome::Retryable(reason)) => Step::Retry(reason.clone()),
        }
    }

    fn failed(&mut self, f: Failed<'_>) {
        (self.on_failure)(f.reason, f.attempt, f.expired);
    }

    async fn fallback(&mut self, reason: &str, attempts: u32) -> bool {
        let object = self.object;
        let documents = error_output::failed_record_documents(
            &object.records,
            attempts,
            RETENTION_EXPIRED_CODE,
            reason,
            (self.now_ms)(),
        );
        let error_payload = Payload::Object {
            bucket: object.bucket.clone(),
            key: object.error_key.clone(),
            body: documents,
            content_type: Some("application/x-ndjson".into()),
            metadata: Vec::new(),
            records: 1,
        };
        self.sink.deliver(&error_payload).await.all_delivered()
    }
}

/// Delivers one object, retrying retryable failures until it succeeds. Once its oldest record
/// is older than `retention`, or it has failed for its `retry_window`, each failed attempt is
/// followed by one at writing the records to the error output (Firehose's failed-record JSON
/// under `error_key`). The caller bounds the total time (shutdown deadline); nothing here gives
/// up on a retryable failure. `on_failure(reason, attempt, expired)` is told of every failed
/// attempt.
pub async fn write(
    sink: &Arc<dyn Destination>,
    object: &EncodedObject,
    retention: Duration,
    now_ms: impl Fn() -> i64,
    on_failure: impl Fn(&str, u32, bool),
) -> DeliveryResult {
    let policy = Policy::UntilWritten {
        expires_at_ms: object
            .oldest_arrival_ms()
            .saturating_add(retention.as_millis() as i64),
        window: object.retry_window,
    };
    let mut target = ObjectWrite {
        sink,
        object,
        payload: Payload::Object {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            body: object.body.clone(),
            content_type: Some(object.content_type.to_string()),
            metadata: Vec::new(),
            records: 1,
        },
        now_ms: &now_ms,
        on_failure,
    };
    match super::run(&mut target, policy, &now_ms).await {
        Ended::Done { attempts } => DeliveryResult::Delivered { attempts },
        Ended::Refused { attempts, reason } => DeliveryResult::Rejected { attempts, reason },
        Ended::Expired { attempts, reason } => DeliveryResult::ErrorOutput { attempts, reason },
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
                    part: 0,
                    partition: None,
                    owed: Default::default(),
                },
                Record {
                    data: Bytes::from_static(b"b"),
                    arrival_ms,
                    seq: 1,
                    part: 0,
                    partition: None,
                    owed: Default::default(),
                },
            ],
            error_key: "errors/retention-expired/obj".into(),
            error_output: None,
            retry_window: None,
            encryption: None,
            reasons: Vec::new(),
            failed_at_ms: 0,
            journal_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_until_they_heal() {
        let sink: Arc<dyn Destination> = Arc::new(ScriptedSink::failing_first(3));
        let seen = std::sync::Mutex::new(Vec::new());
        let result = write(
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
        let result = write(
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
        let result = write(
            &sink,
            &obj,
            Duration::from_secs(86_400),
            || 1_000,
            |_, _, _| {},
        )
        .await;
        // Failures at 0, 0.5, 1.5, 3.5, 7.5 s are inside the window; the one at 15.5 s is past it.
        assert!(
            matches!(result, DeliveryResult::ErrorOutput { attempts: 6, .. }),
            "{result:?}"
        );
        let keys: Vec<String> = flaky
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.0.clone())
            .collect();
        assert_eq!(keys.iter().filter(|k| k.starts_with("errors/")).count(), 1);
    }
}
