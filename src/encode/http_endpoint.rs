//! HTTP endpoint request bodies as Firehose sends them: `{"requestId", "timestamp",
//! "records": [{"data": base64}]}`, optionally gzipped; the common-attributes header; how a
//! batch is split into requests (at most 10,000 records each). Pure.

use crate::buffer::Record;

/// Records per request (Firehose's limit).
pub const MAX_REQUEST_RECORDS: usize = 10_000;

/// The request body for `records` (`request_id` is a UUID: no escaping is needed).
pub fn body(request_id: &str, timestamp_ms: i64, records: &[Record]) -> Vec<u8> {
    let engine = base64_simd::STANDARD;
    let size: usize = records
        .iter()
        .map(|r| engine.encoded_length(r.data.len()) + 12)
        .sum();
    let mut out = Vec::with_capacity(size + 96);
    out.extend_from_slice(br#"{"requestId":""#);
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(br#"","timestamp":"#);
    out.extend_from_slice(timestamp_ms.to_string().as_bytes());
    out.extend_from_slice(br#","records":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"data":""#);
        let start = out.len();
        out.resize(start + engine.encoded_length(r.data.len()), 0);
        let _ = engine.encode(&r.data, base64_simd::Out::from_slice(&mut out[start..]));
        out.extend_from_slice(br#""}"#);
    }
    out.extend_from_slice(b"]}");
    out
}

/// `X-Amz-Firehose-Common-Attributes`: `{"commonAttributes": {name: value}}`, or `None`
/// when none are configured.
pub fn common_attributes(attributes: &[(String, String)]) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    Some(serde_json::json!({ "commonAttributes": map }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_body_is_firehoses() {
        let records = [
            Record::new(Bytes::from_static(b"{\"a\":1}\n"), 5),
            Record::new(Bytes::new(), 6),
        ];
        let b = body("6f0c-id", 1_700_000_000_123, &records);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"requestId": "6f0c-id", "timestamp": 1_700_000_000_123_i64,
                "records": [{"data": "eyJhIjoxfQo="}, {"data": ""}]})
        );
        assert_eq!(common_attributes(&[]), None);
        assert_eq!(
            common_attributes(&[("env".into(), "prod".into()), ("n".into(), "".into())]).unwrap(),
            r#"{"commonAttributes":{"env":"prod","n":""}}"#
        );
    }
}
