//! The last step before upload for a stream with `KMSEncryptionConfig`: every object it writes
//! (records, error output, retention-expired documents) is encrypted on the way to the sink,
//! under `<key>.enc` with S3 metadata saying so. A key-service failure is a retryable failure
//! of the write: the object waits, and nothing is written unencrypted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hosepipe_sinks::{Destination, Outcome, Payload, Report};
use rand::RngCore;

use super::format::{self, Header};
use super::{CONTEXT_OBJECT_KEY, CONTEXT_STREAM, DataKey, KeyError, KeyService};

/// The suffix encrypted objects get.
pub const SUFFIX: &str = ".enc";

/// The name an encrypted object is stored under.
pub fn stored_key(key: &str) -> String {
    format!("{key}{SUFFIX}")
}
/// S3 user metadata saying an object is encrypted (`x-amz-meta-hosepipe-encryption`).
pub const METADATA_FORMAT: &str = "hosepipe-encryption";

/// When a data key may serve another object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Objects per data key (1: a fresh key for every object).
    pub max_objects: u32,
    pub max_age: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            max_objects: 1,
            max_age: Duration::from_secs(300),
        }
    }
}

/// A stream's current data key, shared by its deliveries.
#[derive(Default)]
pub struct DataKeyCache {
    current: Mutex<Option<Cached>>,
}

struct Cached {
    key_id: String,
    key: Arc<DataKey>,
    uses: u32,
    created: Instant,
}

impl DataKeyCache {
    /// A data key for one more object: the cached one while `reuse` allows, else a new one.
    /// `on_call` is told of every key-service call and its result.
    pub fn take(
        &self,
        keys: &dyn KeyService,
        key_id: &str,
        stream: &str,
        reuse: Reuse,
        on_call: &dyn Fn(Result<(), &KeyError>),
    ) -> Result<Arc<DataKey>, KeyError> {
        let mut current = self.current.lock().expect("data key lock");
        if let Some(c) = current.as_mut()
            && c.key_id == key_id
            && c.uses < reuse.max_objects
            && c.created.elapsed() < reuse.max_age
        {
            c.uses += 1;
            return Ok(c.key.clone());
        }
        let context = vec![(CONTEXT_STREAM.to_string(), stream.to_string())];
        let result = keys.generate(key_id, &context);
        on_call(result.as_ref().map(drop));
        let key = Arc::new(result?);
        *current = Some(Cached {
            key_id: key_id.to_string(),
            key: key.clone(),
            uses: 1,
            created: Instant::now(),
        });
        Ok(key)
    }
}

/// Told of every key-service call: `Ok` or the failure (metrics).
pub type OnKeyCall = Arc<dyn Fn(Result<(), &KeyError>) + Send + Sync>;

/// Encrypts every object on its way to `inner`. Made for one object's delivery: each payload key
/// is sealed once (one data key, one encryption) and a retry uploads the same sealed bytes.
pub struct Encrypting {
    pub inner: Arc<dyn Destination>,
    pub keys: Arc<dyn KeyService>,
    /// The master key (`AWSKMSKeyARN` as configured).
    pub key_id: String,
    pub stream: String,
    pub cache: Arc<DataKeyCache>,
    pub reuse: Reuse,
    /// Told of every key-service call: `Ok` or the failure.
    pub on_call: OnKeyCall,
    /// What each payload key was sealed into, for the retries.
    pub sealed: Mutex<Vec<(String, bytes::Bytes)>>,
}

impl Encrypting {
    /// `key` sealed: the bytes of an earlier attempt, or a new data key and encryption.
    fn sealed(&self, key: &str, body: &[u8]) -> Result<bytes::Bytes, KeyError> {
        if let Some((_, b)) = self
            .sealed
            .lock()
            .expect("sealed lock")
            .iter()
            .find(|(k, _)| k == key)
        {
            return Ok(b.clone());
        }
        // Key-service calls and AES-GCM are blocking work: keep them off the async workers.
        let sealed: bytes::Bytes = tokio::task::block_in_place(|| {
            let data_key = self.cache.take(
                self.keys.as_ref(),
                &self.key_id,
                &self.stream,
                self.reuse,
                self.on_call.as_ref(),
            )?;
            Ok::<_, KeyError>(seal(
                self.keys.provider(),
                &data_key,
                &self.stream,
                key,
                body,
            ))
        })?
        .into();
        self.sealed
            .lock()
            .expect("sealed lock")
            .push((key.to_string(), sealed.clone()));
        Ok(sealed)
    }
}

impl std::fmt::Debug for Encrypting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypting")
            .field("key_id", &self.key_id)
            .field("stream", &self.stream)
            .finish()
    }
}

/// Encrypts `body` as the object `key` of `stream` under `data_key`.
pub fn seal(
    keys_provider: &str,
    data_key: &DataKey,
    stream: &str,
    key: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut prefix = [0u8; 8];
    rand::rng().fill_bytes(&mut prefix);
    let mut context = vec![
        (CONTEXT_OBJECT_KEY.to_string(), key.to_string()),
        (CONTEXT_STREAM.to_string(), stream.to_string()),
    ];
    context.sort();
    let header = Header {
        provider: keys_provider.to_string(),
        key_id: data_key.key_id.clone(),
        wrapped_key: data_key.wrapped.clone(),
        context,
        frame_size: format::DEFAULT_FRAME_SIZE,
        nonce_prefix: prefix,
    };
    format::encrypt(&header, &data_key.plaintext, body)
}

#[async_trait]
impl Destination for Encrypting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, String> {
        self.inner.exists(bucket, &stored_key(key)).await
    }

    async fn deliver(&self, payload: &Payload) -> Report {
        let Payload::Object {
            bucket,
            key,
            body,
            content_type,
            metadata,
            records,
        } = payload;
        let encrypted_key = stored_key(key);
        let sealed = match self.sealed(&encrypted_key, body) {
            Ok(b) => b,
            Err(e) => {
                return Report::uniform(
                    *records,
                    Outcome::Retryable(format!("cannot get a data key: {e}")),
                );
            }
        };
        let mut metadata = metadata.clone();
        metadata.push((METADATA_FORMAT.into(), "HPEN1".into()));
        metadata.push(("hosepipe-key-id".into(), self.key_id.clone()));
        if let Some(ct) = content_type {
            metadata.push(("hosepipe-content-type".into(), ct.clone()));
        }
        self.inner
            .deliver(&Payload::Object {
                bucket: bucket.clone(),
                key: encrypted_key,
                body: sealed,
                content_type: Some("application/octet-stream".into()),
                metadata,
                records: *records,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::Keyring;
    use crate::testing::ScriptedSink;

    #[test]
    fn data_keys_are_reused_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&dir.path().join("k.json"));
        ring.create("k").unwrap();
        let cache = DataKeyCache::default();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let on_call = |_: Result<(), &KeyError>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let reuse = Reuse {
            max_objects: 3,
            max_age: Duration::from_secs(60),
        };
        let keys: Vec<_> = (0..7)
            .map(|_| cache.take(&ring, "k", "s", reuse, &on_call).unwrap())
            .collect();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert!(Arc::ptr_eq(&keys[0], &keys[2]) && !Arc::ptr_eq(&keys[2], &keys[3]));
        let fresh = DataKeyCache::default();
        for _ in 0..2 {
            fresh
                .take(&ring, "k", "s", Reuse::default(), &on_call)
                .unwrap();
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 5);
        assert!(matches!(
            fresh.take(&ring, "missing", "s", Reuse::default(), &on_call),
            Err(KeyError::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_retried_object_is_sealed_once() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::new(&dir.path().join("k.json")));
        ring.create("k").unwrap();
        let inner = Arc::new(ScriptedSink::failing_first(2));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = calls.clone();
        let sink = Encrypting {
            inner: inner.clone(),
            keys: ring,
            key_id: "k".into(),
            stream: "s".into(),
            cache: Arc::default(),
            reuse: Reuse::default(),
            on_call: Arc::new(move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
            sealed: Mutex::default(),
        };
        let payload = |key: &str| Payload::Object {
            bucket: "b".into(),
            key: key.into(),
            body: bytes::Bytes::from_static(b"records"),
            content_type: None,
            metadata: Vec::new(),
            records: 1,
        };
        for _ in 0..3 {
            sink.deliver(&payload("p/o.gz")).await;
        }
        let bodies: Vec<_> = inner
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.1.clone())
            .collect();
        assert_eq!(bodies.len(), 3);
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "the same sealed bytes each attempt"
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one data key"
        );
        // Another key of the same delivery (its error output) is sealed on its own.
        sink.deliver(&payload("errors/o")).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_ne!(inner.attempts.lock().unwrap()[3].1, bodies[0]);
    }

    #[test]
    fn sealed_objects_open_with_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&dir.path().join("k.json"));
        ring.create("k").unwrap();
        let dk = ring
            .generate("k", &vec![(CONTEXT_STREAM.into(), "s".into())])
            .unwrap();
        let object = seal("local", &dk, "s", "p/o.gz.enc", b"hello");
        let (header, d) = crate::crypto::open(&object[..], &ring, Some("p/o.gz.enc")).unwrap();
        assert_eq!(header.context(CONTEXT_STREAM), Some("s"));
        let mut out = Vec::new();
        d.decrypt_to(&mut out).unwrap();
        assert_eq!(out, b"hello");
        assert!(matches!(
            crate::crypto::open(&object[..], &ring, Some("another.enc")),
            Err(crate::crypto::OpenError::KeyMismatch { .. })
        ));
    }
}
