//! Firehose's native processors: `Decompression` (GZIP), `CloudWatchLogProcessing`
//! (`DataMessageExtraction`) and `RecordDeAggregation` (JSON, DELIMITED). Pure functions.

use std::io::Read;

use bytes::Bytes;

use super::Failure;

/// Largest decompressed record accepted (a gzip bomb stops here).
const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

/// `Decompression` with `CompressionFormat` GZIP.
pub fn gunzip(data: &[u8]) -> Result<Bytes, Failure> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failure::new("Decompression.Failed", format!("not GZIP: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Failure::new(
            "Decompression.Failed",
            format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        ));
    }
    Ok(out.into())
}

/// `CloudWatchLogProcessing` with `DataMessageExtraction`: a CloudWatch Logs subscription
/// envelope becomes one record per log event (its `message`); control messages become none.
pub fn cloudwatch_messages(data: &[u8]) -> Result<Vec<Bytes>, Failure> {
    match cloudwatch_logs_processor::log_messages(data) {
        Ok(messages) => Ok(messages
            .unwrap_or_default()
            .into_iter()
            .map(Bytes::from)
            .collect()),
        Err(e) => Err(Failure::new("CloudWatchLogProcessing.Failed", e)),
    }
}

/// `RecordDeAggregation` with `SubRecordType` JSON: a record of concatenated JSON values
/// (`{..}{..}` or one per line) becomes one record per value, byte for byte.
pub fn split_json(data: &[u8]) -> Result<Vec<Bytes>, Failure> {
    let mut out = Vec::new();
    let mut stream =
        serde_json::Deserializer::from_slice(data).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(next) = stream.next() {
        next.map_err(|e| {
            Failure::new(
                "RecordDeAggregation.Failed",
                format!("not concatenated JSON: {e}"),
            )
        })?;
        let end = stream.byte_offset();
        let value = data[start..end].trim_ascii();
        out.push(Bytes::copy_from_slice(value));
        start = end;
    }
    Ok(out)
}

/// `RecordDeAggregation` with `SubRecordType` DELIMITED: splits on the delimiter; empty pieces
/// (e.g. after a trailing delimiter) are not records.
pub fn split_delimited(data: &[u8], delimiter: &[u8]) -> Vec<Bytes> {
    if delimiter.is_empty() {
        return vec![Bytes::copy_from_slice(data)];
    }
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(delimiter.len()).position(|w| w == delimiter) {
        if i > 0 {
            out.push(Bytes::copy_from_slice(&rest[..i]));
        }
        rest = &rest[i + delimiter.len()..];
    }
    if !rest.is_empty() {
        out.push(Bytes::copy_from_slice(rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trips_and_refuses_junk() {
        assert_eq!(gunzip(&gzip(b"hello")).unwrap(), "hello");
        assert!(gunzip(b"hello").unwrap_err().message.contains("not GZIP"));
    }

    #[test]
    fn cloudwatch_envelopes_become_messages() {
        let data = br#"{"messageType":"DATA_MESSAGE","logEvents":[{"id":"1","timestamp":1,"message":"a"},{"message":"b"}]}"#;
        assert_eq!(cloudwatch_messages(data).unwrap(), vec!["a", "b"]);
        assert!(
            cloudwatch_messages(br#"{"messageType":"CONTROL_MESSAGE"}"#)
                .unwrap()
                .is_empty()
        );
        assert!(cloudwatch_messages(br#"{"messageType":"X"}"#).is_err());
        assert!(cloudwatch_messages(b"{").is_err());
    }

    #[test]
    fn json_and_delimited_deaggregation() {
        assert_eq!(
            split_json(b"{\"a\":1}{\"b\":[2]}\n {\"c\":\"}\"}\n").unwrap(),
            vec!["{\"a\":1}", "{\"b\":[2]}", "{\"c\":\"}\"}"]
        );
        assert!(split_json(b"{\"a\":1}{oops").is_err());
        assert_eq!(split_delimited(b"a||b||||c||", b"||"), vec!["a", "b", "c"]);
        assert_eq!(split_delimited(b"abc", b""), vec!["abc"]);
    }
}
