//! A Splunk HTTP Event Collector with indexer acknowledgement: a body posted on a channel
//! (`X-Splunk-Request-Channel`) answers with an `ackId`, and `/services/collector/ack` says when
//! that body is indexed. One call in, one outcome out; it knows nothing of records, streams,
//! retries or Firehose's codes.

use std::time::Duration;

use serde_json::Value;

/// Where events go.
#[derive(Debug, Clone)]
pub struct HecTarget {
    /// `https://host:8088` (no trailing `/`).
    pub endpoint: String,
    pub token: String,
    /// `/services/collector/raw` rather than `/services/collector/event`.
    pub raw: bool,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HecFailure {
    /// No answer (connection refused or closed, or `timed_out`).
    #[error("{message}")]
    Transport { timed_out: bool, message: String },
    /// An answer other than success: its HTTP status, HEC `code` and `text`.
    #[error("HEC answered {status} (code {}): {text}", code.unwrap_or(-1))]
    Refused {
        status: u16,
        code: Option<i64>,
        text: String,
    },
    /// A success without an `ackId`: acknowledgement is off for the token.
    #[error("the HEC answer has no ackId: enable indexer acknowledgement on the token")]
    NoAckId,
    /// The ack did not read true within the timeout.
    #[error("no indexer acknowledgement for ackId {ack_id} within {} s", timeout.as_secs())]
    AckTimeout { ack_id: u64, timeout: Duration },
}

/// Talks HEC.
#[derive(Debug, Clone)]
pub struct HecClient {
    http: reqwest::Client,
}

impl HecClient {
    /// A client whose requests fail after `timeout`, trusting the system's CAs and those of
    /// `ca_bundle` (PEM).
    pub fn new(
        timeout: Option<Duration>,
        ca_bundle: Option<&[u8]>,
    ) -> Result<HecClient, reqwest::Error> {
        let mut http = crate::trusting(reqwest::Client::builder(), ca_bundle)?;
        if let Some(t) = timeout {
            http = http.timeout(t);
        }
        Ok(HecClient {
            http: http.build()?,
        })
    }

    fn request(&self, target: &HecTarget, path: &str, channel: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}?channel={channel}", target.endpoint))
            .header("Authorization", format!("Splunk {}", target.token))
            .header("X-Splunk-Request-Channel", channel)
    }

    /// Posts `body` on `channel`; the `ackId` it was given.
    pub async fn post(
        &self,
        target: &HecTarget,
        channel: &str,
        body: bytes::Bytes,
    ) -> Result<u64, HecFailure> {
        let path = if target.raw {
            "/services/collector/raw"
        } else {
            "/services/collector/event"
        };
        let resp = self
            .request(target, path, channel)
            .body(body)
            .send()
            .await
            .map_err(|e| HecFailure::Transport {
                timed_out: e.is_timeout(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        // An answer cut off is read as no answer body.
        let body = resp.bytes().await.unwrap_or_default();
        post_answer(status, &body)
    }

    /// Polls for `ack_id` until it reads true (how long that took) or `timeout` passes. A
    /// failing ack endpoint counts as no ack yet.
    pub async fn wait_ack(
        &self,
        target: &HecTarget,
        channel: &str,
        ack_id: u64,
        timeout: Duration,
    ) -> Result<Duration, HecFailure> {
        let started = tokio::time::Instant::now();
        let mut every = Duration::from_millis(100);
        loop {
            let resp = self
                .request(target, "/services/collector/ack", channel)
                .json(&serde_json::json!({ "acks": [ack_id] }))
                .send()
                .await;
            if let Ok(r) = resp
                && r.status().is_success()
                && acknowledged(&r.bytes().await.unwrap_or_default(), ack_id)
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() + every > timeout {
                return Err(HecFailure::AckTimeout { ack_id, timeout });
            }
            tokio::time::sleep(every).await;
            every = (every * 2).min(Duration::from_secs(1));
        }
    }
}

/// What a post's answer (`status`, `body`) says: the `ackId` it was given, or why not.
pub fn post_answer(status: u16, body: &[u8]) -> Result<u64, HecFailure> {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = answer.get("code").and_then(Value::as_i64);
    if status != 200 || code.is_some_and(|c| c != 0) {
        let text = answer.get("text").and_then(Value::as_str).unwrap_or("");
        return Err(HecFailure::Refused {
            status,
            code,
            text: text.to_string(),
        });
    }
    answer
        .get("ackId")
        .and_then(Value::as_u64)
        .ok_or(HecFailure::NoAckId)
}

/// Whether an ack answer (`{"acks": {"<id>": true}}`) says `ack_id` is indexed.
pub fn acknowledged(body: &[u8], ack_id: u64) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|a| a.pointer(&format!("/acks/{ack_id}"))?.as_bool())
        == Some(true)
}
