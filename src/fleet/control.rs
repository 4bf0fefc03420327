//! The fleet's control plane: the definitions of the streams created through the API, one key
//! per stream in a JetStream key-value bucket (`<prefix>_streams`, replicated like the
//! streams). Each control operation writes its stream's key, conditional on the revision it
//! read (a lost race is `ConcurrentModificationException`); every node watches the bucket and
//! applies what changes, the node that made the change included, so all nodes run the same
//! definitions.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Fleet, decode_name, encode_name};

/// The bucket of stream definitions.
pub struct Definitions {
    kv: kv::Store,
}

/// Why a write to the bucket did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The key exists (create), or changed since it was read (update, delete).
    #[error("the definition changed meanwhile")]
    Conflict,
    #[error("the fleet's control plane cannot be written: {0}")]
    Unavailable(String),
}

/// A change to a stream's definition, as every node sees it.
pub enum Change {
    /// The stream's definition (JSON) at `revision`.
    Put {
        name: String,
        value: Bytes,
        revision: u64,
    },
    Deleted {
        name: String,
        revision: u64,
    },
}

/// How long a read waits out a bucket without a leader (JetStream's "no responders").
const READ_PATIENCE: Duration = Duration::from_secs(10);

impl Definitions {
    /// Opens the bucket, creating it on first use.
    pub async fn open(fleet: &Arc<Fleet>) -> Result<Definitions, String> {
        let bucket = format!("{}_streams", fleet.settings.prefix);
        let kv = Fleet::patiently("the fleet's key-value bucket", || async {
            match fleet.js.get_key_value(&bucket).await {
                Ok(kv) => Ok(kv),
                Err(_) => fleet
                    .js
                    .create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: "hosepipe delivery stream definitions".into(),
                        history: 1,
                        storage: StorageType::File,
                        num_replicas: fleet.settings.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await?;
        Ok(Definitions { kv })
    }

    /// Every stream's definition now: (name, JSON, revision).
    pub async fn all(&self) -> Result<Vec<(String, Bytes, u64)>, String> {
        let mut keys = self.kv.keys().await.map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| e.to_string())?);
        }
        let mut out = Vec::new();
        for key in names {
            let Some(name) = decode_name(&key) else {
                continue;
            };
            if let Some(entry) = self.kv.entry(key).await.map_err(|e| e.to_string())?
                && entry.operation == Operation::Put
            {
                out.push((name, entry.value, entry.revision));
            }
        }
        Ok(out)
    }

    /// The stream's definition now, with its revision. Read again while the bucket's leader
    /// is moving ("no responders"), for a few seconds.
    pub async fn get(&self, name: &str) -> Result<Option<(Bytes, u64)>, String> {
        let mut wait = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + READ_PATIENCE;
        let entry = loop {
            match self.kv.entry(encode_name(name)).await {
                Ok(entry) => break entry,
                Err(e)
                    if e.to_string().contains("no responders")
                        && tokio::time::Instant::now() + wait < deadline =>
                {
                    tracing::info!(error = %e, "the fleet's bucket has no leader yet; reading again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| (e.value, e.revision)))
    }

    /// Writes a new stream's definition; a Conflict if the stream exists.
    pub async fn create(&self, name: &str, value: Bytes) -> Result<u64, WriteError> {
        self.kv
            .create(encode_name(name), value)
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => WriteError::Conflict,
                _ => WriteError::Unavailable(e.to_string()),
            })
    }

    /// Replaces the definition read at `revision`; a Conflict if it changed since.
    pub async fn update(&self, name: &str, value: Bytes, revision: u64) -> Result<u64, WriteError> {
        self.kv
            .update(encode_name(name), value, revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => WriteError::Conflict,
                _ => WriteError::Unavailable(e.to_string()),
            })
    }

    /// Deletes the definition read at `revision`; a Conflict if it changed since.
    pub async fn delete(&self, name: &str, revision: u64) -> Result<(), WriteError> {
        self.kv
            .delete_expect_revision(encode_name(name), Some(revision))
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("wrong last sequence") {
                    WriteError::Conflict
                } else {
                    WriteError::Unavailable(text)
                }
            })
    }

    /// Every change from now on (and each stream's current definition first), in order.
    pub async fn watch(&self) -> Result<impl futures_util::Stream<Item = Change> + use<>, String> {
        let watch = self.kv.watch_all().await.map_err(|e| e.to_string())?;
        Ok(watch.filter_map(|entry| async move {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "the fleet's control-plane watch failed on an entry");
                    return None;
                }
            };
            let name = decode_name(&entry.key)?;
            Some(match entry.operation {
                Operation::Put => Change::Put {
                    name,
                    value: entry.value,
                    revision: entry.revision,
                },
                Operation::Delete | Operation::Purge => Change::Deleted {
                    name,
                    revision: entry.revision,
                },
            })
        }))
    }
}
