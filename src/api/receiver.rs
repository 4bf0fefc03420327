//! The receiver: Firehose HTTP endpoint deliveries (from AWS, or from another hosepipe) into a
//! delivery stream, at `POST /http-endpoint/<stream>`. The access key must be one of
//! `[receiver] access_keys`; the body is Firehose's (`{"requestId", "timestamp", "records":
//! [{"data"}]}`, gzipped or not); the answer is the one Firehose expects (`requestId`,
//! `timestamp`, and an `errorMessage` on failure), and a 200 only once every record is in the
//! stream's log. A failure stores nothing, except a partial refusal by capacity (503): the
//! sender retries the whole request, so what was stored arrives twice.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, Base64Text, MAX_RECORD_BYTES, SLOW_DOWN, accept, auth};
use crate::pipeline::now_ms;

/// Records per request (Firehose sends at most this many).
const MAX_RECORDS: usize = 10_000;
/// Records' bytes per request, decoded (Firehose's largest buffer).
const MAX_DATA_BYTES: usize = 64 * 1024 * 1024;
/// The body before decompression, or after it: the records in base64 and their framing.
const MAX_BODY_BYTES: usize = MAX_DATA_BYTES / 3 * 4 + MAX_RECORDS * 16 + 4096;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery<'a> {
    request_id: Option<String>,
    #[serde(borrow)]
    records: Option<Vec<Received<'a>>>,
}

#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    data: Option<Base64Text<'a>>,
}

/// A refusal: its status and `errorMessage`.
struct Refused(StatusCode, String);

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refused(status, message.into())
    }
}

/// Answers a delivery as Firehose's HTTP endpoint specification says.
pub(super) async fn receive(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = header_text(&headers, "x-amz-firehose-request-id").unwrap_or_default();
    let result = take(&state, &stream, &headers, &request_id, body).await;
    state
        .metrics
        .api_call("HttpEndpointDelivery", result.is_ok());
    let mut answer = json!({ "requestId": request_id, "timestamp": now_ms() });
    let status = match result {
        Ok(()) => StatusCode::OK,
        Err(Refused(status, message)) => {
            tracing::debug!(stream, request_id, %status, message, "HTTP endpoint delivery refused");
            answer["errorMessage"] = message.chars().take(8192).collect::<String>().into();
            status
        }
    };
    let mut resp = (status, answer.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

async fn take(
    state: &Arc<AppState>,
    stream: &str,
    headers: &HeaderMap,
    request_id: &str,
    body: Body,
) -> Result<(), Refused> {
    if state.receiver_keys.is_empty() {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            "the receiver is off: set [receiver] access_keys",
        ));
    }
    let key = headers
        .get("x-amz-firehose-access-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !state
        .receiver_keys
        .iter()
        .any(|k| auth::same_secret(k.as_bytes(), key))
    {
        return Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "X-Amz-Firehose-Access-Key is missing or not one of the receiver's keys",
        ));
    }
    if request_id.is_empty() {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "X-Amz-Firehose-Request-Id is required",
        ));
    }
    let gzip = match header_text(headers, "content-encoding").as_deref() {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                format!("Content-Encoding {other:?} is not supported (gzip is)"),
            ));
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // Memory for the body (a gzipped one is charged at its size read, below).
    let _permit = state
        .admission
        .request(declared.unwrap_or(0))
        .await
        .map_err(|_| Refused::new(StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN))?;
    let raw = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    let text = match gzip {
        false => raw,
        // Up to ~90 MB of output: off the runtime's threads.
        true => tokio::task::spawn_blocking(move || gunzip(&raw))
            .await
            .map_err(|e| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
            .into(),
    };
    let delivery: Delivery<'_> = serde_json::from_slice(&text).map_err(|e| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a Firehose HTTP endpoint request: {e}"),
        )
    })?;
    if delivery.request_id.as_deref() != Some(request_id) {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "the body's requestId is missing or not X-Amz-Firehose-Request-Id",
        ));
    }
    let records = delivery
        .records
        .ok_or_else(|| Refused::new(StatusCode::BAD_REQUEST, "records is required"))?;
    if records.is_empty() || records.len() > MAX_RECORDS {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!(
                "records holds {}; a request carries 1-{MAX_RECORDS}",
                records.len()
            ),
        ));
    }
    let data: Vec<Option<&[u8]>> = records.iter().map(|r| r.data.as_deref()).collect();
    // Over-size records are told apart from malformed ones: a 413 is not retried.
    if let Some(i) = data
        .iter()
        .position(|d| d.is_some_and(|d| d.len() / 4 * 3 > MAX_RECORD_BYTES + 2))
    {
        return Err(Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("records[{i}].data is over {MAX_RECORD_BYTES} bytes"),
        ));
    }
    let decoded =
        super::decode_base64_records(&data, now_ms(), MAX_DATA_BYTES, ("records", "data"))
            .map_err(|e| match e {
                ApiError::InvalidArgument(m) if m.contains("bytes") => {
                    Refused::new(StatusCode::PAYLOAD_TOO_LARGE, m)
                }
                other => Refused::new(StatusCode::BAD_REQUEST, other.to_string()),
            })?;
    let total = decoded.len();
    match accept(state, stream, decoded).await {
        Ok(a) if a.accepted == total => Ok(()),
        Ok(a) => Err(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{SLOW_DOWN} {} of {total} records were taken", a.accepted),
        )),
        Err(ApiError::ResourceNotFound(m)) => Err(Refused::new(StatusCode::NOT_FOUND, m)),
        Err(e) => Err(Refused::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

fn too_large() -> Refused {
    Refused::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {MAX_BODY_BYTES} bytes"),
    )
}

/// A gzip body, decompressed to at most [`MAX_BODY_BYTES`].
fn gunzip(raw: &[u8]) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(raw)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                format!("the gzip body does not decompress: {e}"),
            )
        })?;
    if out.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(out)
}
