//! Delivering a flushed batch to a Splunk HTTP Event Collector with indexer acknowledgement:
//! one POST per attempt (`/services/collector/event`, or `/raw`) on the stream's channel
//! (`X-Splunk-Request-Channel`), then `/services/collector/ack` polled for its `ackId` until it
//! reads true. An ack that does not come within the acknowledgement timeout means the batch is
//! sent again. Answers are handled by their meaning: busy (503), token (401/403) and transport
//! failures are retried until `RetryOptions` runs out; a data-format refusal (400) is final.

use std::time::Duration;

use hosepipe_sinks::hec::{HecClient, HecFailure, HecTarget};
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

/// The daemon's side of HEC: the client (`hosepipe_sinks::hec`), the event metadata, and the
/// acknowledgement timeout override.
#[derive(Clone)]
pub struct Hec {
    pub client: HecClient,
    pub fields: EventFields,
    /// `[splunk] ack_timeout_seconds`: replaces every stream's acknowledgement timeout.
    pub ack_timeout: Option<Duration>,
}

/// Why an attempt failed: Firehose's `Splunk.*` code, whether to retry, and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: &'static str,
    pub retry: bool,
    pub message: String,
}

impl Failure {
    fn retry(code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            retry: true,
            message: message.into(),
        }
    }
}

/// What became of a batch.
#[derive(Debug)]
pub struct HecOutcome {
    pub attempts: u32,
    /// `Ok(ack latency)` when indexed; else the last failure.
    pub result: Result<Duration, Failure>,
}

/// One attempt, as the caller hears of it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub failure: Option<&'a Failure>,
    pub retrying: bool,
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

/// The meaning of a HEC answer that is not a success (its status and `code`).
pub fn classify(status: u16, code: Option<i64>, text: &str) -> Failure {
    let message = format!(
        "HEC answered {status} (code {}): {text}",
        code.unwrap_or(-1)
    );
    let (code, retry) = match (status, code) {
        (_, Some(1)) => ("Splunk.DisabledToken", true),
        (401 | 403, _) => ("Splunk.InvalidToken", true),
        (400, Some(10 | 11 | 14)) => ("Splunk.DisabledAck", true),
        (400, Some(7)) => ("Splunk.InvalidIndex", false),
        (400, _) => ("Splunk.InvalidDataFormat", false),
        (404, _) => ("Splunk.InvalidEndpoint", true),
        (413, _) => ("Splunk.InvalidDataFormat", false),
        _ => ("Splunk.ServerError", true),
    };
    Failure {
        code,
        retry,
        message,
    }
}

/// Firehose's meaning of a failed HEC call.
fn failure(f: HecFailure) -> Failure {
    let message = f.to_string();
    match f {
        HecFailure::Transport { timed_out, .. } => Failure::retry(
            if timed_out {
                "Splunk.ConnectionTimeout"
            } else {
                "Splunk.ConnectionClosed"
            },
            message,
        ),
        HecFailure::Refused { status, code, text } => classify(status, code, &text),
        HecFailure::NoAckId => Failure::retry("Splunk.DisabledAck", message),
        HecFailure::AckTimeout { .. } => Failure::retry("Splunk.AckTimeout", message),
    }
}

impl Hec {
    /// Sends `records` until they are acknowledged, a refusal is final, or `RetryOptions`
    /// (counted from the first failure) runs out. `observe` hears of every failed attempt.
    pub async fn deliver(
        &self,
        spec: &SplunkSpec,
        stream: &str,
        channel: &str,
        records: &[Record],
        observe: impl Fn(Attempt<'_>),
    ) -> HecOutcome {
        // Built once; every attempt sends the same bytes.
        let body = bytes::Bytes::from(body(spec, &self.fields, stream, records));
        let target = HecTarget {
            endpoint: spec.endpoint.clone(),
            token: spec.token.clone(),
            raw: spec.endpoint_type == EndpointType::Raw,
        };
        let ack_timeout = self.ack_timeout.unwrap_or(spec.ack_timeout);
        let mut first_failure = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.client.post(&target, channel, body.clone()).await {
                Ok(ack_id) => {
                    self.client
                        .wait_ack(&target, channel, ack_id, ack_timeout)
                        .await
                }
                Err(f) => Err(f),
            }
            .map_err(failure);
            let failure = match result {
                Ok(latency) => {
                    return HecOutcome {
                        attempts: attempt,
                        result: Ok(latency),
                    };
                }
                Err(f) => f,
            };
            let since = *first_failure.get_or_insert_with(tokio::time::Instant::now);
            let wait = super::backoff(attempt - 1);
            let retrying = failure.retry && since.elapsed() + wait <= spec.retry;
            observe(Attempt {
                failure: Some(&failure),
                retrying,
            });
            if !retrying {
                return HecOutcome {
                    attempts: attempt,
                    result: Err(failure),
                };
            }
            tokio::time::sleep(wait).await;
        }
    }
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
            partition: None,
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
        assert_eq!(spec("Raw").ack_timeout, Duration::from_secs(180));
        assert_eq!(spec("Raw").retry, Duration::from_secs(3600));
    }

    #[test]
    fn the_api_rules_hold() {
        let input: CreateDeliveryStreamInput = serde_json::from_value(serde_json::json!({
            "SplunkDestinationConfiguration": {
                "HECEndpoint": "splunk:8088", "HECAcknowledgmentTimeoutInSeconds": 100,
                "BufferingHints": {"SizeInMBs": 6, "IntervalInSeconds": 61},
                "RetryOptions": {"DurationInSeconds": -1}, "S3BackupMode": "Some",
            }
        }))
        .unwrap();
        let paths: Vec<String> = validate("s", &input)
            .unwrap_err()
            .iter()
            .map(|e| e.api_path())
            .collect();
        let at = |f: &str| format!("SplunkDestinationConfiguration.{f}");
        assert_eq!(
            paths,
            [
                "HECEndpoint",
                "HECEndpointType",
                "HECToken",
                "HECAcknowledgmentTimeoutInSeconds",
                "RetryOptions.DurationInSeconds",
                "S3BackupMode",
                "BufferingHints.SizeInMBs",
                "BufferingHints.IntervalInSeconds",
                "S3Configuration",
            ]
            .map(at)
        );
    }

    #[test]
    fn answers_are_handled_by_their_meaning() {
        let c = |status, code| {
            let f = classify(status, code, "x");
            (f.code, f.retry)
        };
        assert_eq!(c(503, Some(9)), ("Splunk.ServerError", true));
        assert_eq!(c(401, Some(2)), ("Splunk.InvalidToken", true));
        assert_eq!(c(403, Some(4)), ("Splunk.InvalidToken", true));
        assert_eq!(c(403, Some(1)), ("Splunk.DisabledToken", true));
        assert_eq!(c(400, Some(6)), ("Splunk.InvalidDataFormat", false));
        assert_eq!(c(400, Some(10)), ("Splunk.DisabledAck", true));
        assert_eq!(c(400, Some(7)), ("Splunk.InvalidIndex", false));
        assert_eq!(c(500, None), ("Splunk.ServerError", true));
    }
}
