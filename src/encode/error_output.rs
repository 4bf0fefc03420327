//! Firehose's failed-record documents: one JSON object per record, newline-delimited, written
//! under the stream's `ErrorOutputPrefix`. Pure.

use base64::Engine;
use bytes::Bytes;

use crate::buffer::Record;

/// One record bound for the error output, with why.
#[derive(Debug)]
pub struct FailedRecord {
    pub record: Record,
    pub reason: Reason,
}

/// Why a record is in the error output, as its document says (an error-output object keeps
/// these, so it can be made again after a crash).
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub attempts: u32,
    pub code: String,
    pub message: String,
    /// `lambdaArn`, for records the Lambda processor failed.
    pub lambda_arn: Option<String>,
    /// `dataCatalogTable`, for records format conversion failed (their documents then say
    /// `lastErrorCode` / `lastErrorMessage`, as Firehose's do).
    pub catalog_table: Option<serde_json::Value>,
    /// Destination-specific fields (`esDocumentId`, `esIndexName`, `EventId`, …).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `{"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage", "attemptEndingTimestamp",
/// "rawData"[, "lambdaArn"]}` per record, newline-delimited.
pub fn documents(failed: &[FailedRecord], attempt_ending_ms: i64) -> Bytes {
    let mut out = Vec::new();
    for f in failed {
        write_document(&mut out, &f.record, &f.reason, attempt_ending_ms);
    }
    out.into()
}

/// One failed-record document for `record`, failed as `why` says, and its newline.
fn write_document(out: &mut Vec<u8>, record: &Record, why: &Reason, attempt_ending_ms: i64) {
    let engine = base64::engine::general_purpose::STANDARD;
    let (code_key, message_key) = match why.catalog_table {
        Some(_) => ("lastErrorCode", "lastErrorMessage"),
        None => ("errorCode", "errorMessage"),
    };
    let mut doc = serde_json::json!({
        "attemptsMade": why.attempts,
        "arrivalTimestamp": record.arrival_ms,
        code_key: why.code,
        message_key: why.message,
        "attemptEndingTimestamp": attempt_ending_ms,
        "rawData": engine.encode(&record.data),
    });
    if let Some(arn) = &why.lambda_arn {
        doc["lambdaArn"] = arn.as_str().into();
    }
    if let Some(table) = &why.catalog_table {
        doc["dataCatalogTable"] = table.clone();
    }
    if let (Some(extra), Some(obj)) = (&why.extra, doc.as_object_mut()) {
        obj.extend(extra.clone());
    }
    serde_json::to_writer(&mut *out, &doc).expect("JSON into memory");
    out.push(b'\n');
}

/// The same document for every record of `records`.
pub fn failed_record_documents(
    records: &[Record],
    attempts: u32,
    error_code: &str,
    error_message: &str,
    attempt_ending_ms: i64,
) -> Bytes {
    let why = Reason {
        attempts,
        code: error_code.to_string(),
        message: error_message.to_string(),
        lambda_arn: None,
        catalog_table: None,
        extra: None,
    };
    let mut out = Vec::new();
    for r in records {
        write_document(&mut out, r, &why, attempt_ending_ms);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_per_record_with_the_raw_data() {
        let recs = [
            Record {
                data: Bytes::from_static(b"hello"),
                arrival_ms: 5,
                seq: 0,
                part: 0,
                partition: None,
                owed: Default::default(),
            },
            Record {
                data: Bytes::from_static(b""),
                arrival_ms: 6,
                seq: 1,
                part: 0,
                partition: None,
                owed: Default::default(),
            },
        ];
        let out = failed_record_documents(&recs, 3, "S3.RetentionExpired", "down", 99);
        let docs: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["rawData"], "aGVsbG8=");
        assert_eq!(docs[0]["attemptsMade"], 3);
        assert_eq!(docs[0]["arrivalTimestamp"], 5);
        assert_eq!(docs[0]["errorCode"], "S3.RetentionExpired");
        assert_eq!(docs[0]["errorMessage"], "down");
        assert_eq!(docs[1]["attemptEndingTimestamp"], 99);
        assert!(docs[0].get("lambdaArn").is_none());
        let with_arn = documents(
            &[FailedRecord {
                record: Record::new(Bytes::from_static(b"hello"), 5),
                reason: Reason {
                    attempts: 1,
                    code: "Lambda.ProcessingFailed".into(),
                    message: "bad line".into(),
                    lambda_arn: Some("arn:aws:lambda:r:1:function:f".into()),
                    extra: None,
                    catalog_table: None,
                },
            }],
            7,
        );
        let doc: serde_json::Value = serde_json::from_slice(with_arn.trim_ascii()).unwrap();
        assert_eq!(doc["lambdaArn"], "arn:aws:lambda:r:1:function:f");
        assert_eq!(doc["errorMessage"], "bad line");
    }
}
