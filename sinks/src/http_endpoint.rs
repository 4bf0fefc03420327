//! An HTTP endpoint as Firehose delivers to it: one `POST` of a JSON body with the
//! `X-Amz-Firehose-*` headers; success only on 200 with a JSON body whose `requestId` is the
//! request's. One call in, one outcome out; it knows nothing of records, streams or retries.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

/// The most of an answer's body read (Firehose: an answer over 1 MiB is a failure).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// One request, built once and sent as often as it takes.
#[derive(Debug, Clone)]
pub struct EndpointRequest {
    pub url: String,
    /// `X-Amz-Firehose-Request-Id`, also the body's `requestId`.
    pub request_id: String,
    /// `X-Amz-Firehose-Source-Arn`: the stream's ARN.
    pub source_arn: String,
    /// `X-Amz-Firehose-Common-Attributes` (`{"commonAttributes": {…}}`), when any are set.
    pub common_attributes: Option<String>,
    /// The body is gzipped (`Content-Encoding: gzip`).
    pub gzip: bool,
    pub body: Bytes,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointFailure {
    /// No answer within the timeout.
    #[error("the endpoint did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke before a whole answer arrived.
    #[error("the connection was reset: {0}")]
    Reset(String),
    /// An answer other than 200: its status and body (the endpoint's `errorMessage`, if any).
    #[error("the endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    /// An answer over [`MAX_RESPONSE_BYTES`].
    #[error("the answer is over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// A 200 that does not say it took this request (no JSON, another `requestId`, …).
    #[error("invalid answer: {0}")]
    Invalid(String),
}

/// Posts to HTTP endpoints.
#[derive(Debug, Clone)]
pub struct EndpointClient {
    http: reqwest::Client,
}

impl EndpointClient {
    /// A client that does not follow redirects (Firehose does not), trusting the system's CAs
    /// and those of `ca_bundle` (PEM).
    pub fn new(ca_bundle: Option<&[u8]>) -> Result<EndpointClient, reqwest::Error> {
        let http = crate::trusting(reqwest::Client::builder(), ca_bundle)?
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(EndpointClient { http })
    }

    /// One attempt: `request` with `access_key` (`X-Amz-Firehose-Access-Key`, when given),
    /// answered within `timeout`.
    pub async fn post(
        &self,
        request: &EndpointRequest,
        access_key: Option<&str>,
        timeout: Duration,
    ) -> Result<(), EndpointFailure> {
        let mut req = self
            .http
            .post(&request.url)
            .timeout(timeout)
            .header("Content-Type", "application/json")
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header("X-Amz-Firehose-Request-Id", &request.request_id)
            .header("X-Amz-Firehose-Source-Arn", &request.source_arn);
        if let Some(key) = access_key {
            req = req.header("X-Amz-Firehose-Access-Key", key);
        }
        if let Some(attrs) = &request.common_attributes {
            req = req.header("X-Amz-Firehose-Common-Attributes", attrs);
        }
        if request.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                EndpointFailure::Timeout(timeout)
            } else if e.is_connect() {
                EndpointFailure::Connect(error_chain(&e))
            } else {
                EndpointFailure::Reset(error_chain(&e))
            }
        };
        let mut resp = req
            .body(request.body.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(EndpointFailure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        answer(status, &body, &request.request_id)
    }
}

/// `e` with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What an answer (`status`, `body`) to request `request_id` says.
pub fn answer(status: u16, body: &[u8], request_id: &str) -> Result<(), EndpointFailure> {
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(8192)]).into_owned();
        return Err(EndpointFailure::Status { status, body: text });
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| EndpointFailure::Invalid(format!("the body is not JSON: {e}")))?;
    match value.get("requestId").and_then(Value::as_str) {
        Some(id) if id == request_id => Ok(()),
        Some(other) => Err(EndpointFailure::Invalid(format!(
            "the answer's requestId {other:?} is not the request's {request_id:?}"
        ))),
        None => Err(EndpointFailure::Invalid(
            "the answer has no requestId".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_naming_the_request_is_success() {
        assert_eq!(
            answer(200, br#"{"requestId":"a","timestamp":1}"#, "a"),
            Ok(())
        );
        assert!(matches!(
            answer(200, br#"{"requestId":"b","timestamp":1}"#, "a"),
            Err(EndpointFailure::Invalid(_))
        ));
        assert!(matches!(
            answer(200, b"<html>", "a"),
            Err(EndpointFailure::Invalid(_))
        ));
        assert!(matches!(
            answer(200, b"{}", "a"),
            Err(EndpointFailure::Invalid(_))
        ));
        assert_eq!(
            answer(503, br#"{"errorMessage":"busy"}"#, "a"),
            Err(EndpointFailure::Status {
                status: 503,
                body: r#"{"errorMessage":"busy"}"#.into()
            })
        );
        // 201 is not 200.
        assert!(answer(201, br#"{"requestId":"a"}"#, "a").is_err());
    }
}
