//! `_bulk` requests to an OpenSearch / Elasticsearch cluster: one request in (NDJSON, sent
//! gzip-compressed), one outcome per item out, in request order. It knows nothing of records,
//! streams or retries: the caller decides what to send again.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

/// How to reach a cluster.
#[derive(Debug, Clone, Default)]
pub struct BulkSettings {
    /// A request that takes longer fails.
    pub timeout: Option<Duration>,
    /// HTTP basic auth: user and password.
    pub auth: Option<(String, String)>,
    /// CA certificates (PEM) trusted besides the system's.
    pub ca_bundle: Option<Vec<u8>>,
}

/// Talks `_bulk` to clusters.
#[derive(Debug, Clone)]
pub struct BulkClient {
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

/// Why a whole request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// No answer: the cluster could not be reached, or the answer was cut off.
    #[error("{0}")]
    Unreachable(String),
    /// The request was answered with a non-2xx status.
    #[error("{message}")]
    Status { status: u16, message: String },
    /// A 2xx answer that is not a `_bulk` answer for these items.
    #[error("{0}")]
    BadAnswer(String),
}

impl BulkClient {
    pub fn new(settings: BulkSettings) -> Result<BulkClient, reqwest::Error> {
        let mut http = crate::trusting(reqwest::Client::builder(), settings.ca_bundle.as_deref())?;
        if let Some(t) = settings.timeout {
            http = http.timeout(t);
        }
        Ok(BulkClient {
            http: http.build()?,
            auth: settings.auth,
        })
    }

    /// One `_bulk` request of `n` items (`ndjson`: action and source lines) to `endpoint`.
    pub async fn bulk(
        &self,
        endpoint: &str,
        ndjson: &[u8],
        n: usize,
    ) -> Result<Vec<Item>, RequestFailure> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(ndjson).expect("gzip into memory");
        let gz = gz.finish().expect("gzip into memory");
        let mut req = self
            .http
            .post(format!("{endpoint}/_bulk"))
            .header("Content-Type", "application/x-ndjson")
            .header("Content-Encoding", "gzip")
            .body(gz);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RequestFailure::Unreachable(format!("cannot reach {endpoint}: {e}")))?;
        let status = resp.status();
        let text = resp
            .bytes()
            .await
            .map_err(|e| RequestFailure::Unreachable(format!("reading the _bulk answer: {e}")))?;
        if !status.is_success() {
            let snippet = String::from_utf8_lossy(&text[..text.len().min(512)]).into_owned();
            return Err(RequestFailure::Status {
                status: status.as_u16(),
                message: format!("_bulk answered {status}: {snippet}"),
            });
        }
        parse_bulk_response(&text, n).map_err(RequestFailure::BadAnswer)
    }
}

/// One item of a bulk answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Indexed,
    /// Worth sending again (429, 5xx, `es_rejected_execution_exception`).
    Retry {
        status: u16,
        reason: String,
    },
    /// Refused for good (a mapping error, another 4xx).
    Refused {
        status: u16,
        reason: String,
    },
}

/// Reads a `_bulk` answer for `n` items, in request order.
pub fn parse_bulk_response(body: &[u8], n: usize) -> Result<Vec<Item>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the _bulk answer is not JSON: {e}"))?;
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the _bulk answer has no items")?;
    if items.len() != n {
        return Err(format!(
            "the _bulk answer has {} items for {n} documents",
            items.len()
        ));
    }
    Ok(items
        .iter()
        .map(|item| {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let status = result.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
            let error = result.get("error");
            if (200..300).contains(&status) && error.is_none() {
                return Item::Indexed;
            }
            let kind = error
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let reason = match error {
                Some(e) => format!(
                    "{kind}: {}",
                    e.get("reason").and_then(Value::as_str).unwrap_or("")
                ),
                None => format!("status {status}"),
            };
            if status == 429 || status >= 500 || kind == "es_rejected_execution_exception" {
                Item::Retry { status, reason }
            } else {
                Item::Refused { status, reason }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_items_are_told_apart_by_status_and_type() {
        let body = serde_json::json!({"errors": true, "items": [
            {"index": {"status": 201}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
            {"create": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "x"}}},
            {"index": {"status": 400, "error": {"type": "es_rejected_execution_exception", "reason": "y"}}},
        ]});
        let items = parse_bulk_response(body.to_string().as_bytes(), 5).unwrap();
        assert_eq!(items[0], Item::Indexed);
        assert!(
            matches!(&items[1], Item::Refused { status: 400, reason } if reason.starts_with("mapper_parsing_exception"))
        );
        assert!(matches!(items[2], Item::Retry { status: 429, .. }));
        assert!(matches!(items[3], Item::Retry { status: 503, .. }));
        assert!(matches!(items[4], Item::Retry { status: 400, .. }));
        assert!(parse_bulk_response(body.to_string().as_bytes(), 4).is_err());
        assert!(parse_bulk_response(b"<html>", 1).is_err());
    }
}
