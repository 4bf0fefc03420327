//! The Firehose API (AWS JSON 1.1 on `POST /`), `/metrics` and `/health`.

pub mod auth;
pub mod describe;
pub mod error;
mod receiver;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::Admission;
use crate::buffer::Record;
use crate::config::AccessKey;
use crate::config::policy::Decision;
use crate::config::stream::{
    CreateDeliveryStreamInput, ExtendedS3DestinationConfiguration, Tag, valid_stream_name,
};
use crate::metrics::Metrics;
use crate::pipeline::now_ms;
use crate::registry::Registry;
use error::{AMZ_JSON, ApiError};

/// Firehose's fixed limits.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1_024_000;
/// The largest request body read: a full batch in base64 plus JSON framing.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub const TARGET_PREFIX: &str = "Firehose_20150804.";

/// What the handlers share.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub access_keys: Vec<AccessKey>,
    /// `[auth] metrics_token`: `/metrics` and `/status` need it as a bearer token.
    pub metrics_token: Option<String>,
    /// `[receiver] access_keys`: the keys HTTP endpoint deliveries may carry (none: the
    /// receiver is off).
    pub receiver_keys: Vec<String>,
    record_seq: AtomicU64,
    record_nonce: u64,
    /// Puts refused before decoding are still read (to answer each record); this many at once.
    refusals: tokio::sync::Semaphore,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        access_keys: Vec<AccessKey>,
    ) -> Self {
        AppState {
            registry,
            metrics,
            admission,
            access_keys,
            metrics_token: None,
            receiver_keys: Vec::new(),
            record_seq: AtomicU64::new(0),
            record_nonce: uuid::Uuid::new_v4().as_u64_pair().0,
            refusals: tokio::sync::Semaphore::new(2),
        }
    }

    /// Opaque, unique record ids: this process's nonce and a sequence number.
    fn record_ids(&self, n: usize) -> impl Iterator<Item = String> + '_ {
        self.record_id_seqs(n).map(|seq| {
            let mut id = String::with_capacity(RECORD_ID_LEN);
            self.write_record_id(&mut id, seq);
            id
        })
    }

    /// The seqs of `n` new record ids.
    fn record_id_seqs(&self, n: usize) -> std::ops::Range<u64> {
        let first = self.record_seq.fetch_add(n as u64, Ordering::Relaxed);
        first..first + n as u64
    }

    /// Appends the record id of `seq` (56 hex digits) to `out`.
    fn write_record_id(&self, out: &mut String, seq: u64) {
        // The nonce, the seq, and a mix of it zero-padded to 12 bytes: 28 bytes, 56 digits.
        let mut raw = [0u8; RECORD_ID_LEN / 2];
        raw[..8].copy_from_slice(&self.record_nonce.to_be_bytes());
        raw[8..16].copy_from_slice(&seq.to_be_bytes());
        raw[20..].copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        let mut digits = [0u8; RECORD_ID_LEN];
        hex::encode_to_slice(raw, &mut digits).expect("56 digits for 28 bytes");
        out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    }
}

const RECORD_ID_LEN: usize = 56;

/// An operation's answer: a JSON value, or a body already written (a put's, which names every
/// record and is written straight into its text).
enum Answer {
    Json(Value),
    Text(String),
}

/// The answer to a `PutRecordBatch`: the first `accepted` of `total` records got RecordIds, the
/// rest are refused with "Slow down.".
fn put_batch_answer(state: &AppState, accepted: usize, total: usize, encrypted: bool) -> String {
    const REFUSED: &str =
        r#"{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."}"#;
    let mut out = String::with_capacity(80 + total * (REFUSED.len() + 1));
    out.push_str(&format!(
        r#"{{"FailedPutCount":{},"Encrypted":{encrypted},"RequestResponses":["#,
        total - accepted
    ));
    for (i, seq) in state.record_id_seqs(accepted).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"RecordId":""#);
        state.write_record_id(&mut out, seq);
        out.push_str(r#""}"#);
    }
    for i in accepted..total {
        if i > 0 {
            out.push(',');
        }
        out.push_str(REFUSED);
    }
    out.push_str("]}");
    out
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", post(api))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/http-endpoint/{stream}", post(receiver::receive))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// With `[auth] metrics_token`, `/metrics` and `/status` answer 401 to a request without
/// `Authorization: Bearer <token>`.
fn bearer_refused(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let token = state.metrics_token.as_deref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given.is_some_and(|g| auth::same_secret(g.as_bytes(), token.as_bytes())) {
        true => None,
        false => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required ([auth] metrics_token)\n",
            )
                .into_response(),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = bearer_refused(&state, &headers) {
        return refused;
    }
    state.registry.refresh_metrics();
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Per-stream state for `hosepipe status`.
async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = bearer_refused(&state, &headers) {
        return refused;
    }
    use std::sync::atomic::Ordering::Relaxed;
    let now = now_ms();
    let streams: Vec<Value> = state
        .registry
        .statuses()
        .into_iter()
        .map(|s| {
            let labels = crate::metrics::Metrics::stream(&s.name);
            let counter = |f: &prometheus_client::metrics::family::Family<_, _>| {
                prometheus_client::metrics::counter::Counter::<u64>::get(&f.get_or_create(&labels))
            };
            let blocked = s.stats.blocked.get();
            json!({
                "name": s.name,
                "state": if blocked.is_some() { "BLOCKED" } else { "ACTIVE" },
                "blocked": blocked.map(|b| json!({
                    "reason": b.cause.as_str(),
                    "advice": b.cause.advice(),
                    "message": b.message,
                    "since_ms": b.since_ms,
                    "attempts": b.attempts,
                })),
                "destination": s.target,
                "kind": s.kind,
                "incoming_records": counter(&state.metrics.incoming_records),
                "incoming_bytes": counter(&state.metrics.incoming_bytes),
                "throttled_records": counter(&state.metrics.throttled_records),
                "error_output_records": s.stats.error_output_records.load(Relaxed),
                "buffered_bytes": s.stats.buffered_bytes.load(Relaxed),
                "buffered_records": s.stats.buffered_records.load(Relaxed),
                "in_flight_records": s.stats.in_flight_records(),
                "oldest_undelivered_age_seconds": s.oldest_ms()
                    .map(|t| (now - t).max(0) as f64 / 1000.0),
                "delivered_records": s.stats.delivered_records.load(Relaxed),
                "failed_attempts": s.stats.failed_attempts.load(Relaxed),
                "spool_bytes": s.spool.bytes.load(Relaxed),
                "spool_segments": s.spool.segments.load(Relaxed),
                "backlog_records": s.spool.records.load(Relaxed),
                "unread_records": s.spool.unread_records.load(Relaxed),
                "held_records": s.spool.held_records.load(Relaxed),
                "ack_pending_messages": s.spool.ack_pending_messages.load(Relaxed),
                "pending_messages": s.spool.pending_messages.load(Relaxed),
            })
        })
        .collect();
    let body = json!({
        "node": state.registry.node(),
        "log": if state.registry.node().is_some() { "jetstream" } else { "spool" },
        "streams": streams,
        "spool_bytes": state.admission.spool_bytes(),
        "spool_max_bytes": state.admission.spool_max_bytes(),
        "memory_used_bytes": state.admission.memory_used(),
        "memory_budget_bytes": state.admission.memory_budget(),
    });
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_response(answer: Answer) -> Response {
    let text = match answer {
        Answer::Json(value) => value.to_string(),
        Answer::Text(text) => text,
    };
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    resp
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::InvalidArgument(if path == "." {
            format!("Invalid JSON request: {}", e.into_inner())
        } else {
            format!("Invalid JSON request at {path}: {}", e.into_inner())
        })
    })
}

async fn api(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .unwrap_or("")
        .to_string();
    let result = async {
        let is_put = matches!(operation.as_str(), "PutRecord" | "PutRecordBatch");
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n <= MAX_BODY_BYTES as u64);
        // A put whose memory or spool room is not there is refused before its body is decoded
        // (after a bounded wait for capacity).
        let mut permit = None;
        let mut refusal = None;
        if is_put && let Some(len) = declared {
            match state.admission.request(len).await {
                Ok(p) => permit = Some(p),
                Err(reason) => refusal = Some(reason),
            }
        }
        let _reading = match refusal {
            Some(_) => Some(state.refusals.acquire().await.expect("never closed")),
            None => None,
        };
        let body = read_body(body).await?;
        let key = authenticate(&state, &parts, &body)?;
        authorize(&state, key, &operation, &body)?;
        if is_put && permit.is_none() && refusal.is_none() {
            // No Content-Length: the body had to be read to know its size.
            if let Err(reason) = state.admission.request(body.len() as u64).await {
                refusal = Some(reason);
            }
        }
        match refusal {
            Some(_) => refuse_put(&state, &operation, &body),
            None => dispatch(&state, &operation, &body).await,
        }
    }
    .await;
    let op_label = if KNOWN_OPERATIONS.contains(&operation.as_str()) {
        operation.as_str()
    } else {
        "unknown"
    };
    state.metrics.api_call(op_label, result.is_ok());
    match result {
        Ok(v) => json_response(v),
        Err(e) => {
            tracing::debug!(operation = op_label, error = %e, kind = e.type_name(), "request refused");
            e.into_response()
        }
    }
}

async fn read_body(body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::InvalidArgument(format!(
                "Request body is larger than {MAX_BODY_BYTES} bytes"
            ))
        })
}

/// Checks the request's SigV4 signature when keys are configured; returns the key it was
/// signed with.
fn authenticate<'s>(
    state: &'s AppState,
    parts: &axum::http::request::Parts,
    body: &[u8],
) -> Result<Option<&'s AccessKey>, ApiError> {
    if state.access_keys.is_empty() {
        return Ok(None);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    auth::verify(
        &state.access_keys,
        parts.method.as_str(),
        pq,
        &parts.headers,
        body,
        SystemTime::now(),
    )
    .map(|id| state.access_keys.iter().find(|k| k.access_key_id == id))
}

/// Just the stream a request names.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NamedStream {
    delivery_stream_name: Option<String>,
}

/// Checks that `key`'s policy lets it call `operation` on the stream the request names (on `*`
/// for an operation on no stream). A refusal is Firehose's `AccessDeniedException`, naming the
/// key, the action and the resource as AWS does.
fn authorize(
    state: &AppState,
    key: Option<&AccessKey>,
    operation: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some((key, policy)) = key.and_then(|k| Some((k, k.policy.as_ref()?))) else {
        return Ok(());
    };
    if !KNOWN_OPERATIONS.contains(&operation) {
        return Ok(());
    }
    // A request whose stream cannot be read (no name, not JSON) is asked about `*`: only a
    // policy that allows the action everywhere lets it on to be refused by the operation.
    let resource = match serde_json::from_slice::<NamedStream>(body) {
        Ok(NamedStream {
            delivery_stream_name: Some(name),
        }) if operation != "ListDeliveryStreams" => state.registry.arn(&name),
        _ => "*".to_string(),
    };
    let action = format!("firehose:{operation}");
    let user = format!(
        "arn:aws:iam::{}:user/{}",
        state.registry.account_id(),
        key.access_key_id
    );
    match policy.decide(&action, &resource) {
        Decision::Allowed => Ok(()),
        Decision::NotAllowed => Err(ApiError::AccessDenied(format!(
            "User: {user} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
        ))),
        Decision::Denied => Err(ApiError::AccessDenied(format!(
            "User: {user} is not authorized to perform: {action} on resource: {resource} with an explicit deny in an identity-based policy"
        ))),
    }
}

/// A put's records, counted without decoding them.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutCountIn {
    delivery_stream_name: Option<String>,
    records: Option<Vec<serde::de::IgnoredAny>>,
}

/// Answers a put that capacity refused before its records were decoded: Firehose's
/// per-record "Slow down." for each of a batch's records, `ServiceUnavailableException` for a
/// single record.
fn refuse_put(state: &AppState, operation: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let input: PutCountIn = parse(body)?;
    let name = stream_name(input.delivery_stream_name)?;
    state.registry.intake(&name)?;
    if operation == "PutRecord" {
        state.admission.throttled(&name, 1);
        return Err(ApiError::ServiceUnavailable(SLOW_DOWN.into()));
    }
    let total = input.records.map_or(0, |r| r.len());
    if total == 0 || total > MAX_BATCH_RECORDS {
        return Err(ApiError::InvalidArgument(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length between 1 and {MAX_BATCH_RECORDS} (got {total})"
        )));
    }
    state.admission.throttled(&name, total);
    Ok(Answer::Text(put_batch_answer(state, 0, total, false)))
}

/// The operations the API answers (`X-Amz-Target` names).
pub fn operations() -> &'static [&'static str] {
    KNOWN_OPERATIONS
}

const KNOWN_OPERATIONS: &[&str] = &[
    "PutRecord",
    "PutRecordBatch",
    "CreateDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "DeleteDeliveryStream",
    "UpdateDestination",
    "TagDeliveryStream",
    "UntagDeliveryStream",
    "ListTagsForDeliveryStream",
    "StartDeliveryStreamEncryption",
    "StopDeliveryStreamEncryption",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn<'a> {
    #[serde(borrow)]
    data: Option<Base64Text<'a>>,
}

/// A JSON string of base64 as bytes: borrowed from the body when it has no escapes, unescaped
/// into a copy when it has (`\/`). Base64 decoding checks every character, so the UTF-8 check a
/// `str` would add is skipped.
struct Base64Text<'a>(Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for Base64Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Cow<'de, [u8]>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v.as_bytes()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_vec()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(Text).map(Base64Text)
    }
}

impl std::ops::Deref for Base64Text<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchIn<'a> {
    delivery_stream_name: Option<String>,
    #[serde(borrow)]
    records: Option<Vec<RecordIn<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordIn<'a> {
    delivery_stream_name: Option<String>,
    #[serde(borrow)]
    record: Option<RecordIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameIn {
    delivery_stream_name: Option<String>,
    #[allow(dead_code)]
    allow_force_delete: Option<bool>,
    #[allow(dead_code)]
    limit: Option<i64>,
    #[allow(dead_code)]
    exclusive_start_destination_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListIn {
    limit: Option<i64>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct UpdateIn {
    delivery_stream_name: Option<String>,
    current_delivery_stream_version_id: Option<String>,
    destination_id: Option<String>,
    s3_destination_update: Option<ExtendedS3DestinationConfiguration>,
    extended_s3_destination_update: Option<ExtendedS3DestinationConfiguration>,
    redshift_destination_update: Option<Value>,
    elasticsearch_destination_update: Option<Value>,
    amazonopensearchservice_destination_update: Option<Value>,
    amazon_open_search_serverless_destination_update: Option<Value>,
    splunk_destination_update: Option<Value>,
    http_endpoint_destination_update: Option<Value>,
    snowflake_destination_update: Option<Value>,
    iceberg_destination_update: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct StartEncryptionIn {
    delivery_stream_name: Option<String>,
    delivery_stream_encryption_configuration_input:
        Option<crate::config::stream::StreamEncryptionInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagIn {
    delivery_stream_name: Option<String>,
    tags: Option<Vec<Tag>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagIn {
    delivery_stream_name: Option<String>,
    tag_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsIn {
    delivery_stream_name: Option<String>,
    exclusive_start_tag_key: Option<String>,
    limit: Option<i64>,
}

fn stream_name(name: Option<String>) -> Result<String, ApiError> {
    let name =
        name.ok_or_else(|| ApiError::InvalidArgument("DeliveryStreamName is required".into()))?;
    if !valid_stream_name(&name) {
        return Err(ApiError::InvalidArgument(format!(
            "1 validation error detected: Value '{name}' at 'deliveryStreamName' failed to satisfy constraint: Member must have length between 1 and 64 and match [a-zA-Z0-9_.-]+"
        )));
    }
    Ok(name)
}

fn limit(value: Option<i64>, default: usize, max: usize, field: &str) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v as usize <= max => Ok(v as usize),
        Some(v) => Err(ApiError::InvalidArgument(format!(
            "{field}: {v} is outside 1..={max}"
        ))),
    }
}

/// Decodes the records of a put into one buffer, enforcing Firehose's limits. Refuses the whole
/// request on any violation, so nothing of a bad request is stored.
fn decode_records(records: &[RecordIn<'_>], arrival_ms: i64) -> Result<Vec<Record>, ApiError> {
    let data: Vec<Option<&[u8]>> = records.iter().map(|r| r.data.as_deref()).collect();
    decode_base64_records(&data, arrival_ms, MAX_BATCH_BYTES, ("Records", "Data"))
}

/// Decodes base64 records into one buffer: each at most [`MAX_RECORD_BYTES`], all together at
/// most `max_total`; errors name a record as `<list>[i].<field>` (`names`).
fn decode_base64_records(
    records: &[Option<&[u8]>],
    arrival_ms: i64,
    max_total: usize,
    (list, field): (&str, &str),
) -> Result<Vec<Record>, ApiError> {
    // SIMD decoding (the API's largest per-byte cost before it); same alphabet, padding and
    // canonical-trailing-bits rules as base64's STANDARD.
    let engine = base64_simd::STANDARD;
    let estimate: usize = records
        .iter()
        .map(|d| d.map_or(0, |d| d.len() / 4 * 3 + 3))
        .sum();
    let mut buf = BytesMut::with_capacity(estimate.min(max_total + 3));
    let mut bounds = Vec::with_capacity(records.len());
    for (i, r) in records.iter().copied().enumerate() {
        let data =
            r.ok_or_else(|| ApiError::InvalidArgument(format!("{list}[{i}].{field} is required")))?;
        let start = buf.len();
        let max_len = engine.estimated_decoded_length(data.len());
        if max_len > MAX_RECORD_BYTES + 3 {
            // Decoding would only confirm what the length already says.
            let approx = data.len() / 4 * 3;
            if approx > MAX_RECORD_BYTES {
                return Err(ApiError::InvalidArgument(format!(
                    "{list}[{i}].{field} is {approx} bytes; a record may be at most {MAX_RECORD_BYTES} bytes"
                )));
            }
        }
        buf.resize(start + max_len, 0);
        let n = engine
            .decode(data, base64_simd::Out::from_slice(&mut buf[start..]))
            .map_err(|_| {
                ApiError::InvalidArgument(format!(
                    "{list}[{i}].{field} is not valid base64 (standard alphabet, padded)"
                ))
            })?
            .len();
        buf.truncate(start + n);
        if n > MAX_RECORD_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "{list}[{i}].{field} is {n} bytes; a record may be at most {MAX_RECORD_BYTES} bytes"
            )));
        }
        if buf.len() > max_total {
            return Err(ApiError::InvalidArgument(format!(
                "{list} total more than {max_total} bytes; a request may carry at most {} MiB",
                max_total >> 20
            )));
        }
        bounds.push((start, start + n));
    }
    let all = buf.freeze();
    Ok(bounds
        .into_iter()
        .map(|(a, b)| Record::new(all.slice(a..b), arrival_ms))
        .collect())
}

/// What became of a put's records: the first `accepted` got a RecordId, the rest are refused
/// with "Slow down.". `encrypted`: the accepted ones were sealed in the spool.
struct Accepted {
    accepted: usize,
    total: usize,
    encrypted: bool,
}

const SLOW_DOWN: &str = "Slow down.";

/// Takes what admission allows and makes it durable in the stream's spool, from where the
/// stream's pipeline reads it. Only records that reached the spool are acknowledged.
async fn accept(
    state: &AppState,
    name: &str,
    mut records: Vec<Record>,
) -> Result<Accepted, ApiError> {
    let intake = state.registry.intake(name)?;
    let total = records.len();
    let sizes: Vec<usize> = records.iter().map(|r| r.data.len()).collect();
    let (admitted, _) = state.admission.admit(name, &sizes);
    records.truncate(admitted);
    let refused = Accepted {
        accepted: 0,
        total,
        encrypted: false,
    };
    if records.is_empty() {
        return Ok(refused);
    }
    let encrypted = match intake.spool.append(&mut records).await {
        Ok(appended) => {
            // The rest were not stored: refused with "Slow down." like those admission refused.
            if appended.stored < records.len() {
                state
                    .admission
                    .throttled(name, records.len() - appended.stored);
                records.truncate(appended.stored);
            }
            appended.sealed
        }
        Err(e) => {
            state.admission.throttled(name, records.len());
            tracing::warn!(stream = name, error = %e, records = records.len(), "append to the log failed; records refused with Slow down.");
            return Ok(refused);
        }
    };
    let count = records.len();
    let bytes: u64 = records.iter().map(|r| r.data.len() as u64).sum();
    let labels = Metrics::stream(name);
    state
        .metrics
        .incoming_records
        .get_or_create(&labels)
        .inc_by(count as u64);
    state
        .metrics
        .incoming_bytes
        .get_or_create(&labels)
        .inc_by(bytes);
    state
        .metrics
        .incoming_put_requests
        .get_or_create(&labels)
        .inc();
    Ok(Accepted {
        accepted: count,
        total,
        encrypted,
    })
}

async fn dispatch(state: &AppState, operation: &str, body: &[u8]) -> Result<Answer, ApiError> {
    if operation == "PutRecordBatch" {
        return put_record_batch(state, body).await.map(Answer::Text);
    }
    operation_value(state, operation, body)
        .await
        .map(Answer::Json)
}

async fn put_record_batch(state: &AppState, body: &[u8]) -> Result<String, ApiError> {
    let input: PutRecordBatchIn = parse(body)?;
    let name = stream_name(input.delivery_stream_name)?;
    let records = input
        .records
        .ok_or_else(|| ApiError::InvalidArgument("Records is required".into()))?;
    if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::InvalidArgument(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: Member must have length between 1 and {MAX_BATCH_RECORDS} (got {})",
            records.len()
        )));
    }
    let decoded = decode_records(&records, now_ms())?;
    let Accepted {
        accepted,
        total,
        encrypted,
    } = accept(state, &name, decoded).await?;
    Ok(put_batch_answer(state, accepted, total, encrypted))
}

async fn operation_value(
    state: &AppState,
    operation: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let registry = &state.registry;
    match operation {
        "PutRecord" => {
            let input: PutRecordIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            let record = input
                .record
                .ok_or_else(|| ApiError::InvalidArgument("Record is required".into()))?;
            let decoded = decode_records(std::slice::from_ref(&record), now_ms())?;
            let accepted = accept(state, &name, decoded).await?;
            if accepted.accepted == 0 {
                return Err(ApiError::ServiceUnavailable(SLOW_DOWN.into()));
            }
            let id = state.record_ids(1).next().expect("one id");
            Ok(json!({ "RecordId": id, "Encrypted": accepted.encrypted }))
        }
        "CreateDeliveryStream" => {
            let input: CreateDeliveryStreamInput = parse(body)?;
            let arn = registry.create(input)?;
            Ok(json!({ "DeliveryStreamARN": arn }))
        }
        "DescribeDeliveryStream" => {
            let input: NameIn = parse(body)?;
            let view = registry.describe(&stream_name(input.delivery_stream_name)?)?;
            Ok(describe::description(&view))
        }
        "DeleteDeliveryStream" => {
            let input: NameIn = parse(body)?;
            registry.delete(&stream_name(input.delivery_stream_name)?)?;
            Ok(json!({}))
        }
        "ListDeliveryStreams" => {
            let input: ListIn = if body.is_empty() {
                parse(b"{}")?
            } else {
                parse(body)?
            };
            let limit = limit(input.limit, 10, 10_000, "Limit")?;
            let (names, more) = registry.list(
                limit,
                input.exclusive_start_delivery_stream_name.as_deref(),
                input.delivery_stream_type.as_deref(),
            );
            Ok(json!({ "DeliveryStreamNames": names, "HasMoreDeliveryStreams": more }))
        }
        "UpdateDestination" => {
            let input: UpdateIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            let version = input.current_delivery_stream_version_id.ok_or_else(|| {
                ApiError::InvalidArgument("CurrentDeliveryStreamVersionId is required".into())
            })?;
            let destination = input
                .destination_id
                .ok_or_else(|| ApiError::InvalidArgument("DestinationId is required".into()))?;
            let others = [
                input.redshift_destination_update.is_some(),
                input.elasticsearch_destination_update.is_some(),
                input.amazonopensearchservice_destination_update.is_some(),
                input
                    .amazon_open_search_serverless_destination_update
                    .is_some(),
                input.splunk_destination_update.is_some(),
                input.snowflake_destination_update.is_some(),
            ];
            if others.iter().any(|b| *b) {
                return Err(ApiError::InvalidArgument(
                    "UpdateDestination takes S3, HTTP endpoint and Iceberg destination updates in this hosepipe version (OpenSearch and Splunk streams are deleted and created again)".into(),
                ));
            }
            use crate::config::update::DestinationUpdate;
            let update = match (
                input.extended_s3_destination_update,
                input.s3_destination_update,
                input.http_endpoint_destination_update,
                input.iceberg_destination_update,
            ) {
                (Some(u), None, None, None) | (None, Some(u), None, None) => {
                    DestinationUpdate::S3(Box::new(u))
                }
                (None, None, Some(u), None) => DestinationUpdate::HttpEndpoint(u),
                (None, None, None, Some(u)) => DestinationUpdate::Iceberg(u),
                (None, None, None, None) => {
                    return Err(ApiError::InvalidArgument(
                        "a destination update is required".into(),
                    ));
                }
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "exactly one destination update may be given".into(),
                    ));
                }
            };
            registry.update_destination(&name, &version, &destination, &update)?;
            Ok(json!({}))
        }
        "StartDeliveryStreamEncryption" => {
            let input: StartEncryptionIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            let config = input
                .delivery_stream_encryption_configuration_input
                .unwrap_or(crate::config::stream::StreamEncryptionInput {
                    key_type: Some("AWS_OWNED_CMK".into()),
                    key_arn: None,
                });
            registry.set_encryption(&name, Some(config))?;
            Ok(json!({}))
        }
        "StopDeliveryStreamEncryption" => {
            let input: NameIn = parse(body)?;
            registry.set_encryption(&stream_name(input.delivery_stream_name)?, None)?;
            Ok(json!({}))
        }
        "TagDeliveryStream" => {
            let input: TagIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            registry.tag(&name, &input.tags.unwrap_or_default())?;
            Ok(json!({}))
        }
        "UntagDeliveryStream" => {
            let input: UntagIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            registry.untag(&name, &input.tag_keys.unwrap_or_default())?;
            Ok(json!({}))
        }
        "ListTagsForDeliveryStream" => {
            let input: ListTagsIn = parse(body)?;
            let name = stream_name(input.delivery_stream_name)?;
            let limit = limit(input.limit, 50, 50, "Limit")?;
            let (tags, more) =
                registry.list_tags(&name, input.exclusive_start_tag_key.as_deref(), limit)?;
            let tags: Vec<Value> = tags
                .into_iter()
                .map(|(k, v)| json!({ "Key": k, "Value": v }))
                .collect();
            Ok(json!({ "Tags": tags, "HasMoreTags": more }))
        }
        "" => Err(ApiError::UnknownOperation(
            "Missing or malformed X-Amz-Target header (expected Firehose_20150804.<Operation>)"
                .into(),
        )),
        other => Err(ApiError::UnknownOperation(format!(
            "Operation {other} is not supported by hosepipe"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn rec(data: &str) -> RecordIn<'_> {
        RecordIn {
            data: Some(Base64Text(Cow::Borrowed(data.as_bytes()))),
        }
    }

    #[test]
    fn records_decode_into_slices_of_one_buffer() {
        let recs = [rec("aGVsbG8="), rec(""), rec("d29ybGQ=")];
        let out = decode_records(&recs, 7).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0].data[..], b"hello");
        assert_eq!(&out[1].data[..], b"");
        assert_eq!(&out[2].data[..], b"world");
        assert!(out.iter().all(|r| r.arrival_ms == 7));
    }

    #[test]
    fn record_data_is_read_as_borrowed_or_unescaped_bytes() {
        let body = br#"{"DeliveryStreamName":"s","Records":[{"Data":"aGk="},{"Data":"a\/8="}]}"#;
        let input: PutRecordBatchIn = parse(body).unwrap();
        let records = input.records.unwrap();
        assert!(matches!(
            records[0].data,
            Some(Base64Text(Cow::Borrowed(b"aGk=")))
        ));
        assert_eq!(records[1].data.as_deref(), Some(&b"a/8="[..]));
        let out = decode_records(&records, 0).unwrap();
        assert_eq!(&out[0].data[..], b"hi");
        assert_eq!(&out[1].data[..], &[0x6b, 0xff][..]);
        // Data must be a string.
        let bad = br#"{"DeliveryStreamName":"s","Records":[{"Data":[1,2]}]}"#;
        assert!(parse::<PutRecordBatchIn>(bad).is_err());
    }

    #[test]
    fn limits_and_bad_base64_are_refused() {
        assert!(decode_records(&[rec("not base64!")], 0).is_err());
        assert!(decode_records(&[RecordIn { data: None }], 0).is_err());
        let engine = base64::engine::general_purpose::STANDARD;
        let max = engine.encode(vec![1u8; MAX_RECORD_BYTES]);
        assert!(decode_records(&[rec(&max)], 0).is_ok());
        let over = engine.encode(vec![1u8; MAX_RECORD_BYTES + 1]);
        assert!(decode_records(&[rec(&over)], 0).is_err());
        let five: Vec<RecordIn> = (0..5).map(|_| rec(&max)).collect();
        assert!(decode_records(&five, 0).is_err(), "over 4 MiB in total");
    }
}
