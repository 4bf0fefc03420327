//! The producers' half of the API: `PutRecordBatch` to any Firehose endpoint (a hosepipe daemon
//! or AWS), signed with SigV4, retrying only the entries that failed. Shared by
//! `hosepipe agent` and `hosepipe generate`.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use rand::Rng;

use crate::aws_client::{self, CallError, ServiceEndpoint};
use crate::credentials;

/// Firehose's `PutRecordBatch` limits.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;

/// Where records go and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://firehose.us-east-1.amazonaws.com`, `http://127.0.0.1:4573`, …
    pub endpoint: String,
    pub region: String,
    pub credentials: credentials::Credentials,
}

impl Target {
    /// An endpoint as the Kinesis Agent writes it (`firehose.us-east-1.amazonaws.com`, no
    /// scheme, means https) or a URL; the region and keys from the usual places.
    pub async fn resolve(
        endpoint: Option<&str>,
        region: Option<&str>,
        explicit_keys: Option<(String, String)>,
    ) -> Result<Self, String> {
        let endpoint = endpoint
            .map(String::from)
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_FIREHOSE").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "firehose.us-east-1.amazonaws.com".into());
        let endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("https://{endpoint}")
        };
        let region = credentials::region(region, &endpoint);
        Ok(Target {
            credentials: credentials::resolve(explicit_keys).await?,
            endpoint,
            region,
        })
    }
}

/// What one `PutRecordBatch` said about each entry: `None` accepted, else its error code.
pub type EntryErrors = Vec<Option<String>>;

/// A connection-pooled `PutRecordBatch` caller for one stream.
#[derive(Clone)]
pub struct Producer {
    http: reqwest::Client,
    url: String,
    region: String,
    credentials: credentials::Credentials,
    stream: String,
}

impl Producer {
    pub fn new(target: &Target, stream: &str) -> Self {
        let http = crate::aws_client::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Producer {
            http,
            url: target.endpoint.clone(),
            region: target.region.clone(),
            credentials: target.credentials.clone(),
            stream: stream.to_string(),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// One `PutRecordBatch` of `records` (at most 500 and 4 MiB: the caller keeps to that).
    pub async fn put_record_batch(&self, records: &[Bytes]) -> Result<EntryErrors, CallError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let size: usize = records.iter().map(|r| r.len() * 4 / 3 + 16).sum();
        let mut body = String::with_capacity(size + 64 + self.stream.len());
        body.push_str("{\"DeliveryStreamName\":");
        body.push_str(&serde_json::to_string(&self.stream).expect("string to JSON"));
        body.push_str(",\"Records\":[");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"Data\":\"");
            b64.encode_string(r, &mut body);
            body.push_str("\"}");
        }
        body.push_str("]}");
        let endpoint = ServiceEndpoint {
            url: self.url.clone(),
            region: self.region.clone(),
            credentials: self.credentials.clone(),
        };
        let answer = aws_client::call_with(
            &self.http,
            &endpoint,
            "firehose",
            "Firehose_20150804.PutRecordBatch",
            body.into_bytes(),
        )
        .await?;
        let responses = answer["RequestResponses"].as_array().ok_or_else(|| {
            CallError::Transport("PutRecordBatch answer has no RequestResponses".into())
        })?;
        if responses.len() != records.len() {
            return Err(CallError::Transport(format!(
                "PutRecordBatch answered {} entries for {} records",
                responses.len(),
                records.len()
            )));
        }
        Ok(responses
            .iter()
            .map(|r| r["ErrorCode"].as_str().map(String::from))
            .collect())
    }

    /// Sends every record, retrying only the ones not yet accepted, with backoff, until all
    /// are in. Callers bound it with a deadline (shutdown) by dropping the future.
    pub async fn send_all(
        &self,
        records: Vec<Bytes>,
        backoff: &mut Backoff,
        report: &mut (dyn FnMut(SendEvent<'_>) + Send),
    ) {
        let mut pending = records;
        loop {
            match self.put_record_batch(&pending).await {
                Ok(errors) => {
                    let total = pending.len();
                    let mut retry = Vec::new();
                    for (record, error) in pending.into_iter().zip(&errors) {
                        if let Some(code) = error {
                            report(SendEvent::EntryFailed { code });
                            retry.push(record);
                        }
                    }
                    report(SendEvent::Accepted(total - retry.len()));
                    if retry.is_empty() {
                        backoff.succeeded();
                        return;
                    }
                    pending = retry;
                }
                Err(e) => report(SendEvent::CallFailed(&e)),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// What happened during [`Producer::send_all`], for counters and logs.
pub enum SendEvent<'a> {
    /// This many entries were accepted by one call.
    Accepted(usize),
    /// One entry came back with an error code and will be sent again.
    EntryFailed { code: &'a str },
    /// The whole call failed (transport, throttling, auth, no such stream); all is resent.
    CallFailed(&'a CallError),
}

/// The Kinesis Agent's backoff: min(max, 2^failures × initial), ±30 % jitter; a success divides
/// the failure count by ten.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: f64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            failures: 0.0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .initial
            .mul_f64(2f64.powf(self.failures).min(1e6))
            .min(self.max);
        self.failures += 1.0;
        base.mul_f64(rand::rng().random_range(0.7..=1.3))
    }

    pub fn succeeded(&mut self) {
        self.failures /= 10.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_decays_on_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(70) && first <= Duration::from_millis(130));
        for _ in 0..20 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped <= Duration::from_secs(13) && capped >= Duration::from_secs(7));
        b.succeeded();
        assert!(b.failures < 3.0);
    }

    #[tokio::test]
    async fn an_endpoint_without_scheme_is_https() {
        let t = Target::resolve(
            Some("firehose.eu-west-1.amazonaws.com"),
            None,
            Some(("A".into(), "S".into())),
        )
        .await
        .unwrap();
        assert_eq!(t.endpoint, "https://firehose.eu-west-1.amazonaws.com");
    }
}
