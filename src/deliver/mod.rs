//! Turning a flushed batch into an object (name, compressed body) and delivering it with retries.

pub mod prefix;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use hosepipe_sinks::{Destination, Outcome, Payload};

use crate::buffer::Batch;
use crate::compress::{self, CompressError};
use crate::config::stream::S3Spec;
use prefix::{RenderContext, Template};

/// An object ready for upload.
#[derive(Debug, Clone)]
pub struct EncodedObject {
    pub batch_id: u64,
    pub bucket: String,
    pub key: String,
    pub body: Bytes,
    pub content_type: &'static str,
    /// Record bytes before compression.
    pub raw_bytes: u64,
    /// Arrival time of each record, epoch ms (for latency metrics).
    pub arrivals_ms: Vec<i64>,
    /// Spool position of each record (released from the spool once delivered).
    pub seqs: Vec<u64>,
}

/// The instant, in the stream's time zone, an epoch-ms timestamp names.
pub fn zoned(ms: i64, tz: Tz) -> DateTime<Tz> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
        .with_timezone(&tz)
}

fn render_prefix(template: &Template, time: &DateTime<Tz>) -> String {
    let keys = BTreeMap::new();
    template
        .render(&RenderContext {
            time,
            error_output_type: None,
            partition_keys: &keys,
        })
        .unwrap_or_else(|e| {
            // Validation bounds the evaluated length and S3 streams have no partition keys, so
            // this is a bug; the records still go out under the default time prefix.
            tracing::error!(error = %e, "prefix evaluation failed; using the default time prefix");
            Template::for_prefix("")
                .expect("the default prefix parses")
                .render(&RenderContext {
                    time,
                    error_output_type: None,
                    partition_keys: &keys,
                })
                .expect("the default prefix renders")
        })
}

/// Names and compresses one batch. CPU only: no I/O.
pub fn encode_s3(
    batch: &Batch,
    spec: &S3Spec,
    stream: &str,
    version: u64,
) -> Result<EncodedObject, CompressError> {
    let time = zoned(batch.oldest_arrival_ms(), spec.time_zone);
    let prefix = render_prefix(&spec.prefix, &time);
    let key = prefix::object_key(&prefix, stream, version, &time, &spec.extension);
    let entry_name = key
        .rsplit('/')
        .next()
        .unwrap_or(&key)
        .trim_end_matches(&spec.extension)
        .to_string();
    let body = compress::compress(
        spec.compression,
        batch.records.iter().map(|r| r.data.as_ref()),
        batch.bytes as usize,
        &entry_name,
    )?;
    Ok(EncodedObject {
        batch_id: batch.id,
        bucket: spec.bucket.clone(),
        key,
        body,
        content_type: spec.compression.content_type(),
        raw_bytes: batch.bytes,
        arrivals_ms: batch.records.iter().map(|r| r.arrival_ms).collect(),
        seqs: batch.records.iter().map(|r| r.seq).collect(),
    })
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        attempts: u32,
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

/// Delivers one object, retrying retryable failures until it succeeds. The caller bounds the
/// total time (shutdown deadline); nothing here gives up on a retryable failure.
pub async fn deliver_with_retry(
    sink: &Arc<dyn Destination>,
    object: &EncodedObject,
    on_failure: impl Fn(&str, u32),
) -> DeliveryResult {
    let payload = Payload::Object {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        body: object.body.clone(),
        content_type: Some(object.content_type.to_string()),
        records: 1,
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let report = sink.deliver(&payload).await;
        match report.outcomes.first() {
            Some(Outcome::Delivered) | None => {
                return DeliveryResult::Delivered { attempts: attempt };
            }
            Some(Outcome::Rejected(reason)) => {
                return DeliveryResult::Rejected {
                    attempts: attempt,
                    reason: reason.clone(),
                };
            }
            Some(Outcome::Retryable(reason)) => {
                on_failure(reason, attempt);
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{FlushReason, Record};
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};

    #[test]
    fn encode_names_by_the_oldest_record_in_the_stream_time_zone() {
        let input: CreateDeliveryStreamInput = serde_json::from_value(serde_json::json!({
            "ExtendedS3DestinationConfiguration": {
                "BucketARN": "arn:aws:s3:::bkt", "Prefix": "logs/", "CompressionFormat": "GZIP",
                "CustomTimeZone": "Asia/Tokyo"
            }
        }))
        .unwrap();
        let DestinationSpec::S3(spec) = validate("clicks", &input).unwrap().destination;
        // 2018-08-27T20:30:00Z is 05:30 on the 28th in Tokyo.
        let t = 1_535_401_800_000;
        let batch = Batch {
            id: 1,
            records: vec![
                Record {
                    data: Bytes::from_static(b"b"),
                    arrival_ms: t + 5,
                    seq: 1,
                },
                Record {
                    data: Bytes::from_static(b"a"),
                    arrival_ms: t,
                    seq: 0,
                },
            ],
            bytes: 2,
            reason: FlushReason::Size,
        };
        let obj = encode_s3(&batch, &spec, "clicks", 2).unwrap();
        assert!(
            obj.key
                .starts_with("logs/2018/08/28/05/clicks-2-2018-08-28-05-30-00-"),
            "{}",
            obj.key
        );
        assert!(obj.key.ends_with(".gz"));
        assert_eq!(obj.arrivals_ms.len(), 2);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
