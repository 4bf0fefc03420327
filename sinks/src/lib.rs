//! Destination clients for hosepipe.
//!
//! Every destination sits behind [`Destination`]: it is handed a [`Payload`] and answers with one
//! [`Outcome`] per record the payload carries. This crate knows nothing of the daemon: no streams,
//! no buffers, no metrics. It only moves bytes to a place and says how that went.

pub mod hec;
pub mod http_endpoint;
mod object;
pub mod opensearch;

pub use object::{ObjectError, ObjectStoreSettings, S3Endpoint, S3Sink, valid_bucket_name};

use async_trait::async_trait;
use bytes::Bytes;

/// What one delivery attempt carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// One object for an object store. `records` says how many records it holds, so the
    /// outcome can be reported per record.
    Object {
        bucket: String,
        key: String,
        body: Bytes,
        content_type: Option<String>,
        /// User metadata (`x-amz-meta-<name>`), S3 only.
        metadata: Vec<(String, String)>,
        records: usize,
    },
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination has it.
    Delivered,
    /// It did not arrive but may on another attempt (network, throttling, 5xx).
    Retryable(String),
    /// The destination refused it for good; retrying will not help.
    Rejected(String),
}

/// The outcome of a delivery attempt, one entry per record of the payload, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Every record of the payload shares `outcome` (an object is written whole or not at all).
    pub fn uniform(records: usize, outcome: Outcome) -> Self {
        Report {
            outcomes: vec![outcome; records],
        }
    }

    /// True when every record was delivered.
    pub fn all_delivered(&self) -> bool {
        self.outcomes.iter().all(|o| *o == Outcome::Delivered)
    }
}

/// A place records are delivered to.
#[async_trait]
pub trait Destination: Send + Sync + std::fmt::Debug {
    /// A short name for logs and metric labels, e.g. `s3`.
    fn kind(&self) -> &'static str;

    /// One attempt at delivering `payload`. Never panics on remote failures; every failure is an
    /// outcome.
    async fn deliver(&self, payload: &Payload) -> Report;

    /// Whether an object is stored under `key` in `bucket` (after a crash, which of the objects
    /// being uploaded were written). An error means the answer is not known yet: ask again.
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, String>;
}

/// `builder` trusting also the CA certificates of `ca_bundle` (PEM), when given.
fn trusting(
    builder: reqwest::ClientBuilder,
    ca_bundle: Option<&[u8]>,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    Ok(match ca_bundle {
        Some(pem) => builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?),
        None => builder,
    })
}
