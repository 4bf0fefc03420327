//! Splunk HEC request bodies: the records as sent (Raw), or one JSON event per record with
//! `[splunk]`'s metadata (Event); Firehose's `EventId` of a record. Pure.

use serde_json::Value;

use crate::buffer::Record;
use crate::config::splunk::{EndpointType, SplunkSpec};

/// Event metadata from `[splunk]` (Event endpoint only).
#[derive(Debug, Clone)]
pub struct EventFields {
    pub host: String,
    /// `None`: `hosepipe:<stream>`.
    pub source: Option<String>,
    pub sourcetype: String,
    pub index: Option<String>,
}

impl Default for EventFields {
    fn default() -> Self {
        EventFields {
            host: std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "hosepipe".into()),
            source: None,
            sourcetype: "aws:firehose".into(),
            index: None,
        }
    }
}

/// The request body: the records as sent (Raw), or one JSON event per record (Event).
pub fn body(spec: &SplunkSpec, fields: &EventFields, stream: &str, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    match spec.endpoint_type {
        EndpointType::Raw => {
            for r in records {
                out.extend_from_slice(&r.data);
            }
        }
        EndpointType::Event => {
            let source = fields
                .source
                .clone()
                .unwrap_or_else(|| format!("hosepipe:{stream}"));
            for r in records {
                let data = r.data.trim_ascii_end();
                let event = serde_json::from_slice::<Value>(data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()));
                let mut e = serde_json::json!({
                    "time": r.arrival_ms as f64 / 1000.0,
                    "host": fields.host,
                    "source": source,
                    "sourcetype": fields.sourcetype,
                    "event": event,
                });
                if let Some(index) = &fields.index {
                    e["index"] = index.clone().into();
                }
                serde_json::to_writer(&mut out, &e).expect("JSON into memory");
                out.push(b'\n');
            }
        }
    }
    out
}

/// Firehose's `EventId` of the `n`th record made from spool seq `seq`.
pub fn event_id(seq: u64, n: u32) -> String {
    format!("{seq}.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};
    use bytes::Bytes;

    fn spec(kind: &str) -> SplunkSpec {
        let input: CreateDeliveryStreamInput = serde_json::from_value(serde_json::json!({
            "SplunkDestinationConfiguration": {
                "HECEndpoint": "http://127.0.0.1:8088/", "HECEndpointType": kind,
                "HECToken": "t", "S3Configuration": {"BucketARN": "arn:aws:s3:::bkt"},
            }
        }))
        .unwrap();
        match validate("s", &input).unwrap().destination {
            DestinationSpec::Splunk(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    fn rec(data: &str) -> Record {
        Record {
            data: Bytes::from(data.to_string()),
            arrival_ms: 1_500,
            seq: 0,
            part: 0,
            partition: None,
            owed: Default::default(),
        }
    }

    #[test]
    fn bodies_follow_the_endpoint_type() {
        let fields = EventFields {
            host: "h".into(),
            source: None,
            sourcetype: "st".into(),
            index: Some("main".into()),
        };
        let records = [rec("{\"a\":1}\n"), rec("plain line\n")];
        let raw = body(&spec("Raw"), &fields, "s", &records);
        assert_eq!(raw, b"{\"a\":1}\nplain line\n");
        let event = body(&spec("Event"), &fields, "s", &records);
        let events: Vec<Value> = serde_json::Deserializer::from_slice(&event)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events[0]["event"], serde_json::json!({"a": 1}));
        assert_eq!(events[1]["event"], "plain line");
        assert_eq!(events[0]["time"], 1.5);
        assert_eq!(events[0]["source"], "hosepipe:s");
        assert_eq!(events[0]["index"], "main");
        assert_eq!(spec("Raw").endpoint, "http://127.0.0.1:8088");
        assert_eq!(spec("Raw").ack_timeout, std::time::Duration::from_secs(180));
        assert_eq!(spec("Raw").retry, std::time::Duration::from_secs(3600));
    }
}
