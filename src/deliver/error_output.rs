//! Firehose's failed-record documents: one JSON object per record, newline-delimited, written
//! under the stream's `ErrorOutputPrefix`. Pure.

use base64::Engine;
use bytes::Bytes;

use crate::buffer::Record;

/// `{"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage", "attemptEndingTimestamp",
/// "rawData"}` per record.
pub fn failed_record_documents(
    records: &[Record],
    attempts: u32,
    error_code: &str,
    error_message: &str,
    attempt_ending_ms: i64,
) -> Bytes {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for r in records {
        let doc = serde_json::json!({
            "attemptsMade": attempts,
            "arrivalTimestamp": r.arrival_ms,
            "errorCode": error_code,
            "errorMessage": error_message,
            "attemptEndingTimestamp": attempt_ending_ms,
            "rawData": engine.encode(&r.data),
        });
        serde_json::to_writer(&mut out, &doc).expect("JSON into memory");
        out.push(b'\n');
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
            },
            Record {
                data: Bytes::from_static(b""),
                arrival_ms: 6,
                seq: 1,
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
    }
}
