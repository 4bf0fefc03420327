//! Delivering a flushed batch to a Splunk HTTP Event Collector with indexer acknowledgement:
//! one POST per attempt (`/services/collector/event`, or `/raw`) on the stream's channel
//! (`X-Splunk-Request-Channel`), then `/services/collector/ack` polled for its `ackId` until it
//! reads true. An ack that does not come within the acknowledgement timeout means the batch is
//! sent again. Answers are handled by their meaning: busy (503), token (401/403) and transport
//! failures are retried until `RetryOptions` runs out; a data-format refusal (400) is final.

use std::time::Duration;

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

/// Talks HEC.
#[derive(Clone)]
pub struct HecClient {
    pub http: reqwest::Client,
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

fn transport(e: &reqwest::Error) -> Failure {
    let code = if e.is_timeout() {
        "Splunk.ConnectionTimeout"
    } else {
        "Splunk.ConnectionClosed"
    };
    Failure::retry(code, e.to_string())
}

impl HecClient {
    fn request(&self, spec: &SplunkSpec, path: &str, channel: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}?channel={channel}", spec.endpoint))
            .header("Authorization", format!("Splunk {}", spec.token))
            .header("X-Splunk-Request-Channel", channel)
    }

    /// Posts a body; the ackId it was given.
    async fn post(
        &self,
        spec: &SplunkSpec,
        channel: &str,
        body: bytes::Bytes,
    ) -> Result<u64, Failure> {
        let path = match spec.endpoint_type {
            EndpointType::Raw => "/services/collector/raw",
            EndpointType::Event => "/services/collector/event",
        };
        let resp = self
            .request(spec, path, channel)
            .body(body)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        let code = answer.get("code").and_then(Value::as_i64);
        let text = answer.get("text").and_then(Value::as_str).unwrap_or("");
        if status != 200 || code.is_some_and(|c| c != 0) {
            return Err(classify(status, code, text));
        }
        answer.get("ackId").and_then(Value::as_u64).ok_or_else(|| {
            Failure::retry(
                "Splunk.DisabledAck",
                "the HEC answer has no ackId: enable indexer acknowledgement on the token",
            )
        })
    }

    /// Polls for `ack_id` until it reads true or `timeout` passes.
    async fn wait_ack(
        &self,
        spec: &SplunkSpec,
        channel: &str,
        ack_id: u64,
        timeout: Duration,
    ) -> Result<Duration, Failure> {
        let started = tokio::time::Instant::now();
        let mut every = Duration::from_millis(100);
        loop {
            let resp = self
                .request(spec, "/services/collector/ack", channel)
                .json(&serde_json::json!({ "acks": [ack_id] }))
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let answer: Value = r.json().await.unwrap_or(Value::Null);
                    if answer
                        .pointer(&format!("/acks/{ack_id}"))
                        .and_then(Value::as_bool)
                        == Some(true)
                    {
                        return Ok(started.elapsed());
                    }
                }
                // A failing ack endpoint is the same as no ack: wait out the timeout.
                Ok(_) | Err(_) => {}
            }
            if started.elapsed() + every > timeout {
                return Err(Failure::retry(
                    "Splunk.AckTimeout",
                    format!(
                        "no indexer acknowledgement for ackId {ack_id} within {} s",
                        timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(every).await;
            every = (every * 2).min(Duration::from_secs(1));
        }
    }

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
        let ack_timeout = self.ack_timeout.unwrap_or(spec.ack_timeout);
        let mut first_failure = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.post(spec, channel, body.clone()).await {
                Ok(ack_id) => self.wait_ack(spec, channel, ack_id, ack_timeout).await,
                Err(f) => Err(f),
            };
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
