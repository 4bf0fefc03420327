//! Objects to S3, an S3-compatible server, or a local directory per bucket, through `object_store`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use crate::{Destination, Outcome, Payload, Report};

/// An S3-compatible endpoint and the credentials to sign for it.
#[derive(Clone)]
pub struct S3Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:8333`. `None` means AWS's own endpoint for `region`.
    pub url: Option<String>,
    pub region: String,
    /// Static keys, used when `provider` is `None`.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Credentials fetched (and refreshed) by the caller: a profile, STS, IMDS, …
    pub provider: Option<object_store::aws::AwsCredentialProvider>,
}

impl std::fmt::Debug for S3Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Endpoint")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl PartialEq for S3Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.region == other.region
            && self.access_key_id == other.access_key_id
            && self.secret_access_key == other.secret_access_key
            && match (&self.provider, &other.provider) {
                (None, None) => true,
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for S3Endpoint {}

/// Where objects go and how they are uploaded.
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    /// `Some`: an S3 (or S3-compatible) server. `None`: the embedded default, one directory per
    /// bucket under `local_root`.
    pub s3: Option<S3Endpoint>,
    pub local_root: PathBuf,
    /// Objects larger than this go through multipart upload.
    pub multipart_threshold: usize,
    /// Size of each multipart part (S3 needs at least 5 MiB for every part but the last).
    pub part_size: usize,
    /// CA certificates (PEM) trusted besides the system's, for an `https://` S3 endpoint.
    pub ca_bundle: Option<Vec<u8>>,
}

impl ObjectStoreSettings {
    /// Says which store is in use, for the startup log.
    pub fn describe(&self) -> String {
        match &self.s3 {
            Some(ep) => format!(
                "S3 at {} (region {}, path-style, credentials {})",
                ep.url.as_deref().unwrap_or("the AWS endpoint"),
                ep.region,
                match &ep.provider {
                    Some(p) => format!("{p:?}"),
                    None => format!("{} (static)", ep.access_key_id),
                }
            ),
            None => format!("local disk under {}", self.local_root.display()),
        }
    }
}

/// Writes objects; one `object_store` client per bucket, made on first use.
#[derive(Debug)]
pub struct S3Sink {
    settings: ObjectStoreSettings,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// Why a store could not be made or an object not written.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("bucket name {0:?} is not a valid S3 bucket name")]
    InvalidBucket(String),
    #[error("object key {key:?} is not valid: {source}")]
    InvalidKey {
        key: String,
        source: object_store::path::Error,
    },
    #[error("cannot open the store for bucket {bucket:?}: {source}")]
    Open {
        bucket: String,
        source: object_store::Error,
    },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {key:?} failed: {source}")]
    Write {
        key: String,
        source: object_store::Error,
    },
}

/// S3 bucket naming rules (3–63 characters, lowercase letters, digits, dots and hyphens, starting
/// and ending with a letter or digit). Also keeps a local bucket directory inside its root.
pub fn valid_bucket_name(name: &str) -> bool {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&name.len())
        && ok_chars
        && edge(name.bytes().next())
        && edge(name.bytes().last())
        && !name.contains("..")
}

impl S3Sink {
    pub fn new(settings: ObjectStoreSettings) -> Self {
        S3Sink {
            settings,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// Builds the S3 client once without keeping it, so a client that cannot be built (a CA
    /// certificate its TLS stack refuses, a bad endpoint) is an error at start-up, not a failure
    /// of every request. The local store has nothing to check.
    pub fn check(&self) -> Result<(), ObjectError> {
        match &self.settings.s3 {
            Some(ep) => self.s3_store(ep, "hosepipe-client-check").map(drop),
            None => Ok(()),
        }
    }

    fn s3_store(&self, ep: &S3Endpoint, bucket: &str) -> Result<AmazonS3, ObjectError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&ep.region)
            .with_virtual_hosted_style_request(false)
            // The pipeline retries forever with its own backoff; keep each attempt short so an
            // outage is noticed and reported quickly.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(20),
            });
        builder = match &ep.provider {
            Some(provider) => builder.with_credentials(provider.clone()),
            None => builder
                .with_access_key_id(&ep.access_key_id)
                .with_secret_access_key(&ep.secret_access_key),
        };
        let open = |source| ObjectError::Open {
            bucket: bucket.to_string(),
            source,
        };
        // Client options first: `with_client_options` replaces all of them, `allow_http`
        // included (set after it, an `http://` endpoint with a CA bundle failed every request
        // with "builder error").
        if let Some(pem) = &self.settings.ca_bundle {
            let mut options = object_store::ClientOptions::new();
            for cert in object_store::Certificate::from_pem_bundle(pem).map_err(open)? {
                options = options.with_root_certificate(cert);
            }
            builder = builder.with_client_options(options);
        }
        if let Some(url) = &ep.url {
            builder = builder
                .with_endpoint(url)
                .with_allow_http(url.starts_with("http://"));
        }
        builder.build().map_err(open)
    }

    /// The store for `bucket`, made on first use.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, ObjectError> {
        if !valid_bucket_name(bucket) {
            return Err(ObjectError::InvalidBucket(bucket.to_string()));
        }
        let mut stores = self.stores.lock().expect("store cache lock poisoned");
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match &self.settings.s3 {
            Some(ep) => Arc::new(self.s3_store(ep, bucket)?),
            None => {
                let dir = self.settings.local_root.join(bucket);
                std::fs::create_dir_all(&dir).map_err(|source| ObjectError::CreateDir {
                    path: dir.clone(),
                    source,
                })?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
                    ObjectError::Open {
                        bucket: bucket.to_string(),
                        source,
                    }
                })?)
            }
        };
        stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// Writes one object, by multipart upload when it is over the threshold.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: Option<&str>,
        metadata: &[(String, String)],
    ) -> Result<(), ObjectError> {
        let store = self.store(bucket)?;
        let path = Path::parse(key).map_err(|source| ObjectError::InvalidKey {
            key: key.to_string(),
            source,
        })?;
        let mut attributes = Attributes::new();
        // The local store keeps no metadata (and refuses attributes), so only S3 gets them.
        if let (Some(ct), Some(_)) = (content_type, &self.settings.s3) {
            attributes.insert(Attribute::ContentType, ct.to_string().into());
        }
        if self.settings.s3.is_some() {
            for (name, value) in metadata {
                attributes.insert(
                    Attribute::Metadata(name.clone().into()),
                    value.clone().into(),
                );
            }
        }
        let write_err = |source| ObjectError::Write {
            key: key.to_string(),
            source,
        };
        if body.len() > self.settings.multipart_threshold {
            let upload = store
                .put_multipart_opts(
                    &path,
                    object_store::PutMultipartOptions {
                        attributes,
                        ..Default::default()
                    },
                )
                .await
                .map_err(write_err)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, self.settings.part_size);
            writer.put(body);
            writer.finish().await.map_err(write_err)?;
        } else {
            store
                .put_opts(
                    &path,
                    PutPayload::from(body),
                    PutOptions {
                        attributes,
                        ..Default::default()
                    },
                )
                .await
                .map_err(write_err)?;
        }
        Ok(())
    }

    /// Whether an object is stored under `key`. A bucket or key that cannot be named holds
    /// nothing.
    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, ObjectError> {
        let store = match self.store(bucket) {
            Ok(store) => store,
            Err(ObjectError::InvalidBucket(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Ok(path) = Path::parse(key) else {
            return Ok(false);
        };
        match store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(ObjectError::Write {
                key: key.to_string(),
                source,
            }),
        }
    }

    /// Reads one object back (used by tools and tests).
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, ObjectError> {
        let store = self.store(bucket)?;
        let path = Path::parse(key).map_err(|source| ObjectError::InvalidKey {
            key: key.to_string(),
            source,
        })?;
        let read_err = |source| ObjectError::Write {
            key: key.to_string(),
            source,
        };
        store
            .get(&path)
            .await
            .map_err(read_err)?
            .bytes()
            .await
            .map_err(read_err)
    }
}

#[async_trait]
impl Destination for S3Sink {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, String> {
        S3Sink::exists(self, bucket, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn deliver(&self, payload: &Payload) -> Report {
        match payload {
            Payload::Object {
                bucket,
                key,
                body,
                content_type,
                metadata,
                records,
            } => {
                let outcome = match self
                    .put(bucket, key, body.clone(), content_type.as_deref(), metadata)
                    .await
                {
                    Ok(()) => Outcome::Delivered,
                    Err(e @ (ObjectError::InvalidBucket(_) | ObjectError::InvalidKey { .. })) => {
                        Outcome::Rejected(e.to_string())
                    }
                    Err(
                        e @ ObjectError::Write {
                            source:
                                object_store::Error::NotImplemented { .. }
                                | object_store::Error::NotSupported { .. },
                            ..
                        },
                    ) => Outcome::Rejected(e.to_string()),
                    // Everything else may heal: the server comes back, the bucket is created,
                    // the credentials are fixed. Firehose keeps retrying S3 for 24 h too.
                    Err(e) => Outcome::Retryable(e.to_string()),
                };
                Report::uniform(*records, outcome)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(root: &std::path::Path, threshold: usize) -> S3Sink {
        S3Sink::new(ObjectStoreSettings {
            s3: None,
            local_root: root.to_path_buf(),
            multipart_threshold: threshold,
            part_size: 5 * 1024 * 1024,
            ca_bundle: None,
        })
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        assert!(valid_bucket_name("my-bucket.logs"));
        assert!(!valid_bucket_name("ab"));
        assert!(!valid_bucket_name("Upper"));
        assert!(!valid_bucket_name("../etc"));
        assert!(!valid_bucket_name("a..b"));
        assert!(!valid_bucket_name("-ab"));
    }

    #[tokio::test]
    async fn local_put_then_get_round_trips_single_and_multipart() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local(dir.path(), 1024);
        let small = Bytes::from_static(b"hello");
        sink.put(
            "bkt",
            "a/b/small.txt",
            small.clone(),
            Some("application/gzip"),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(sink.get("bkt", "a/b/small.txt").await.unwrap(), small);
        let big = Bytes::from(vec![7u8; 6 * 1024 * 1024]);
        sink.put("bkt", "a/big.bin", big.clone(), None, &[])
            .await
            .unwrap();
        assert_eq!(sink.get("bkt", "a/big.bin").await.unwrap(), big);
        assert!(dir.path().join("bkt/a/b/small.txt").exists());
    }

    #[tokio::test]
    async fn invalid_bucket_is_rejected_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local(dir.path(), 1024);
        let report = sink
            .deliver(&Payload::Object {
                bucket: "../escape".into(),
                key: "k".into(),
                body: Bytes::from_static(b"x"),
                content_type: None,
                metadata: Vec::new(),
                records: 2,
            })
            .await;
        assert_eq!(report.outcomes.len(), 2);
        assert!(matches!(report.outcomes[0], Outcome::Rejected(_)));
    }

    /// A self-signed CA certificate (P-256, made with openssl for this test).
    const TEST_CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIBjDCCATOgAwIBAgIUFmiS7MyheX4bqbuBSZOv5sEU574wCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQaG9zZXBpcGUgdGVzdCBDQTAgFw0yNjEyMDUwMjI1MjhaGA8y\nMTI2MTExMTAyMjUyOFowGzEZMBcGA1UEAwwQaG9zZXBpcGUgdGVzdCBDQTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABAhNjJQFhteQIlFNCl7Tm8ZgTs9/bivcxo2R\nczbM8UDsf8kixWEUBkbm6LhEhkjYFk8d/bk5yWbkp+gea+MwvKujUzBRMB0GA1Ud\nDgQWBBSC1Bto1Z9e5Y0SjqFjr+kDVd5VdDAfBgNVHSMEGDAWgBSC1Bto1Z9e5Y0S\njqFjr+kDVd5VdDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIGrR\naWfFJ7WoufasgxYvm7VPJsjk78i1CNLKtjer3XspAiBIXT6bqelyjT6r2tZxY125\ngz+xAjX6EntZRRyfJ8kX7g==\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn a_ca_bundle_leaves_an_http_endpoint_usable() {
        // Regression: with a CA bundle every request to an http:// endpoint failed at once with
        // "builder error" (BadScheme): the client options replaced allow_http. Now the request
        // goes out and fails only on the closed port.
        let sink = S3Sink::new(ObjectStoreSettings {
            s3: Some(S3Endpoint {
                url: Some("http://127.0.0.1:1".into()),
                region: "us-east-1".into(),
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                provider: None,
            }),
            local_root: std::env::temp_dir(),
            multipart_threshold: 1 << 24,
            part_size: 1 << 23,
            ca_bundle: Some(TEST_CA.to_vec()),
        });
        sink.check().expect("the client builds");
        let e = sink
            .put("bkt", "k", Bytes::from_static(b"x"), None, &[])
            .await
            .expect_err("nothing listens on port 1");
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&format!(" / {s:?}"));
            source = s.source();
        }
        assert!(!chain.contains("BadScheme"), "{chain}");
    }
}
