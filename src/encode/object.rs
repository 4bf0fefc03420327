//! A flushed batch into an S3 object: its key (Firehose's naming rule, the prefix evaluated at
//! the oldest record's arrival in the stream's time zone), its body (compressed records, or
//! Parquet), and the error output of records that cannot go in it. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::error_output;
use super::prefix::{self, ErrorOutputType, RenderContext, Template};
use crate::buffer::{Batch, Record};
use crate::compress::{self, CompressError};
use crate::config::stream::S3Spec;
use crate::partition::PartitionKeys;

/// An object ready for upload.
#[derive(Debug)]
pub struct EncodedObject {
    pub batch_id: u64,
    pub bucket: String,
    pub key: String,
    pub body: Bytes,
    pub content_type: &'static str,
    /// Record bytes before compression.
    pub raw_bytes: u64,
    /// The records themselves: their arrival times feed the latency metrics, their seqs release
    /// the spool, and their data goes to the error output if they can never be delivered.
    pub records: Vec<Record>,
    /// Where they go if they outlive the retention age undelivered.
    pub error_key: String,
    /// Set when this object is itself error output (failed-record documents).
    pub error_output: Option<ErrorOutputType>,
    /// Dynamic partitioning's `RetryOptions`: after failing this long, the records are also
    /// offered to the error output (as past the retention age are).
    pub retry_window: Option<Duration>,
    /// `KMSEncryptionConfig`'s master key: the object (and its error output) is written
    /// envelope-encrypted.
    pub encryption: Option<String>,
    /// Error output: why each record failed (in `records`' order), and the attempt-ending time
    /// its documents carry.
    pub reasons: Vec<error_output::Reason>,
    pub failed_at_ms: i64,
    /// Its entry in the stream's object journal, when it is made again after a crash (it is
    /// journaled already, under the same key).
    pub journal_id: Option<u64>,
}

impl EncodedObject {
    pub fn arrivals_ms(&self) -> Vec<i64> {
        self.records.iter().map(|r| r.arrival_ms).collect()
    }

    pub fn oldest_arrival_ms(&self) -> i64 {
        crate::buffer::oldest_arrival_ms(&self.records)
    }
}

/// The instant, in the stream's time zone, an epoch-ms timestamp names.
pub fn zoned(ms: i64, tz: Tz) -> DateTime<Tz> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
        .with_timezone(&tz)
}

fn render_prefix(
    template: &Template,
    time: &DateTime<Tz>,
    error_output_type: Option<ErrorOutputType>,
    partition: Option<&PartitionKeys>,
) -> String {
    template
        .render(&RenderContext {
            time,
            error_output_type,
            partition,
        })
        .unwrap_or_else(|e| {
            // Processing sends records whose prefix cannot be evaluated to the error output, so
            // this is a bug; the records still go out under the default time prefix.
            tracing::error!(error = %e, "prefix evaluation failed; using the default time prefix");
            Template::for_prefix("")
                .expect("the default prefix parses")
                .render(&RenderContext {
                    time,
                    error_output_type: None,
                    partition: None,
                })
                .expect("the default prefix renders")
        })
}

/// A batch's object key and its retention-expired error key (those it had before, for a batch
/// made again after a crash).
fn object_names(batch: &Batch, spec: &S3Spec, stream: &str, version: u64) -> (String, String) {
    if let Some(rewrite) = &batch.rewrite {
        return (rewrite.key.clone(), rewrite.error_key.clone());
    }
    let time = zoned(batch.oldest_arrival_ms(), spec.time_zone);
    let prefix = render_prefix(&spec.prefix, &time, None, batch.partition.as_deref());
    let key = prefix::object_key(&prefix, stream, version, &time, &spec.extension);
    let error_prefix = render_prefix(
        &spec.error_prefix,
        &time,
        Some(ErrorOutputType::RetentionExpired),
        None,
    );
    let error_key = prefix::object_key(&error_prefix, stream, version, &time, "");
    (key, error_key)
}

/// What format conversion made of a batch.
pub struct ConvertedBatch {
    /// The Parquet object of the records that fit (none if no record did).
    pub object: Option<EncodedObject>,
    /// The `format-conversion-failed` documents of those that did not.
    pub failed: Option<EncodedObject>,
    /// (records, bytes) converted and failed.
    pub converted: (u64, u64),
    pub failures: (u64, u64),
}

/// Converts one batch to Parquet and names it. CPU only: no I/O. A batch that cannot be
/// converted comes back with the error.
pub fn encode_s3_converted(
    batch: Batch,
    spec: &S3Spec,
    converter: &crate::encode::parquet::Converter,
    table: &crate::schema::TableRef,
    stream: &str,
    version: u64,
    now_ms: i64,
) -> Result<ConvertedBatch, (parquet::errors::ParquetError, Batch)> {
    let out = match converter.convert(batch.records.iter().map(|r| r.data.as_ref())) {
        Ok(out) => out,
        Err(e) => return Err((e, batch)),
    };
    let mut reasons: BTreeMap<usize, String> = out.failures.into_iter().collect();
    let (mut good, mut failed) = (Vec::new(), Vec::new());
    let (key, error_key) = object_names(&batch, spec, stream, version);
    for (i, r) in batch.records.into_iter().enumerate() {
        match reasons.remove(&i) {
            None => good.push(r),
            Some(message) => failed.push(error_output::FailedRecord {
                record: r,
                reason: error_output::Reason {
                    attempts: 1,
                    code: "DataFormatConversion.MalformedData".into(),
                    message,
                    lambda_arn: None,
                    extra: None,
                    catalog_table: Some(serde_json::json!({
                        "catalogId": table.catalog_id,
                        "databaseName": table.database,
                        "tableName": table.table,
                        "region": table.region,
                        "versionId": table.version_id.clone().unwrap_or_else(|| "LATEST".into()),
                    })),
                },
            }),
        }
    }
    let bytes =
        |rs: &mut dyn Iterator<Item = &Record>| rs.map(|r| r.data.len() as u64).sum::<u64>();
    let converted = (good.len() as u64, bytes(&mut good.iter()));
    let failures = (
        failed.len() as u64,
        bytes(&mut failed.iter().map(|f| &f.record)),
    );
    let object = (!good.is_empty()).then(|| EncodedObject {
        batch_id: batch.id,
        bucket: spec.bucket.clone(),
        key,
        body: out.parquet.into(),
        content_type: "application/vnd.apache.parquet",
        raw_bytes: converted.1,
        records: good,
        error_key,
        error_output: None,
        retry_window: spec.partitioning.as_ref().map(|p| p.retry),
        encryption: spec.encryption.as_ref().map(|e| e.key_id.clone()),
        reasons: Vec::new(),
        failed_at_ms: 0,
        journal_id: batch.rewrite.as_ref().map(|r| r.journal_id),
    });
    let failed = (!failed.is_empty()).then(|| {
        encode_error_output(
            failed,
            ErrorOutputType::FormatConversionFailed,
            spec,
            stream,
            version,
            batch.id,
            now_ms,
        )
    });
    Ok(ConvertedBatch {
        object,
        failed,
        converted,
        failures,
    })
}

/// Names and compresses one batch. CPU only: no I/O. A batch that cannot be compressed comes
/// back with the error.
pub fn encode_s3(
    batch: Batch,
    spec: &S3Spec,
    stream: &str,
    version: u64,
) -> Result<EncodedObject, (CompressError, Batch)> {
    let (key, error_key) = object_names(&batch, spec, stream, version);
    let entry_name = key
        .rsplit('/')
        .next()
        .unwrap_or(&key)
        .trim_end_matches(&spec.extension)
        .to_string();
    let body = match compress::compress(
        spec.compression,
        batch.records.iter().map(|r| r.data.as_ref()),
        batch.bytes as usize,
        &entry_name,
    ) {
        Ok(body) => body,
        Err(e) => return Err((e, batch)),
    };
    Ok(EncodedObject {
        batch_id: batch.id,
        bucket: spec.bucket.clone(),
        key,
        body,
        content_type: spec.compression.content_type(),
        raw_bytes: batch.bytes,
        journal_id: batch.rewrite.map(|r| r.journal_id),
        records: batch.records,
        error_key,
        error_output: None,
        retry_window: spec.partitioning.as_ref().map(|p| p.retry),
        encryption: spec.encryption.as_ref().map(|e| e.key_id.clone()),
        reasons: Vec::new(),
        failed_at_ms: 0,
    })
}

/// Failed-record documents for `failed` as an object under the error prefix, named like
/// Firehose's: `<ErrorOutputPrefix with error-output-type>/<stream>-<version>-<time>-<uuid>`.
/// CPU only: no I/O.
pub fn encode_error_output(
    failed: Vec<error_output::FailedRecord>,
    error_type: ErrorOutputType,
    spec: &S3Spec,
    stream: &str,
    version: u64,
    batch_id: u64,
    now_ms: i64,
) -> EncodedObject {
    let oldest = failed.iter().map(|f| f.record.arrival_ms).min();
    let time = zoned(oldest.unwrap_or_default(), spec.time_zone);
    let prefix = render_prefix(&spec.error_prefix, &time, Some(error_type), None);
    let key = prefix::object_key(&prefix, stream, version, &time, "");
    error_object(failed, error_type, spec, key, batch_id, now_ms)
}

/// Failed-record documents for `failed` as the object `key`, their attempts ending at
/// `failed_at_ms` (also how an error-output object is made again after a crash, under the key
/// it had). CPU only: no I/O.
pub fn error_object(
    failed: Vec<error_output::FailedRecord>,
    error_type: ErrorOutputType,
    spec: &S3Spec,
    key: String,
    batch_id: u64,
    failed_at_ms: i64,
) -> EncodedObject {
    let body = error_output::documents(&failed, failed_at_ms);
    let (records, reasons): (Vec<Record>, Vec<error_output::Reason>) =
        failed.into_iter().map(|f| (f.record, f.reason)).unzip();
    EncodedObject {
        batch_id,
        bucket: spec.bucket.clone(),
        error_key: key.clone(),
        key,
        body,
        content_type: "application/x-ndjson",
        raw_bytes: records.iter().map(|r| r.data.len() as u64).sum(),
        records,
        error_output: Some(error_type),
        retry_window: None,
        encryption: spec.encryption.as_ref().map(|e| e.key_id.clone()),
        reasons,
        failed_at_ms,
        journal_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::FlushReason;
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
        let DestinationSpec::S3(spec) = validate("clicks", &input).unwrap().destination else {
            panic!("an S3 destination")
        };
        // 2018-08-27T20:30:00Z is 05:30 on the 28th in Tokyo.
        let t = 1_535_401_800_000;
        let batch = Batch {
            id: 1,
            records: vec![
                Record {
                    data: Bytes::from_static(b"b"),
                    arrival_ms: t + 5,
                    seq: 1,
                    part: 0,
                    partition: None,
                    owed: Default::default(),
                },
                Record {
                    data: Bytes::from_static(b"a"),
                    arrival_ms: t,
                    seq: 0,
                    part: 0,
                    partition: None,
                    owed: Default::default(),
                },
            ],
            bytes: 2,
            reason: FlushReason::Size,
            partition: None,
            rewrite: None,
        };
        let obj = encode_s3(batch, &spec, "clicks", 2).unwrap();
        assert!(
            obj.key
                .starts_with("logs/2018/08/28/05/clicks-2-2018-08-28-05-30-00-"),
            "{}",
            obj.key
        );
        assert!(obj.key.ends_with(".gz"));
        assert_eq!(obj.arrivals_ms().len(), 2);
    }
}
