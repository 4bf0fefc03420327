//! Test doubles the unit tests share.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use hosepipe_sinks::{Destination, Outcome, Payload, Report};

/// What a [`ScriptedSink`] answers when it fails an attempt.
pub const FAILURE: &str = "503 Slow Down";

/// An in-memory destination that fails when told to: the first `fail_first` attempts, and
/// every attempt at a key under `refuse_prefix` (a prefix S3 keeps refusing). It logs every
/// attempt.
#[derive(Debug, Default)]
pub struct ScriptedSink {
    pub fail_first: AtomicU32,
    pub refuse_prefix: Option<String>,
    /// Every attempt: the key, the body, and whether it was delivered.
    pub attempts: Mutex<Vec<(String, Bytes, bool)>>,
}

impl ScriptedSink {
    pub fn failing_first(n: u32) -> Self {
        ScriptedSink {
            fail_first: AtomicU32::new(n),
            ..ScriptedSink::default()
        }
    }

    pub fn refusing(prefix: &str) -> Self {
        ScriptedSink {
            refuse_prefix: Some(prefix.into()),
            ..ScriptedSink::default()
        }
    }

    /// The delivered objects' lines under `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, delivered)| *delivered && k.starts_with(prefix))
            .flat_map(|(_, body, _)| {
                String::from_utf8(body.to_vec())
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many objects were delivered.
    pub fn delivered(&self) -> usize {
        self.attempts.lock().unwrap().iter().filter(|a| a.2).count()
    }
}

#[async_trait]
impl Destination for ScriptedSink {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn exists(&self, _bucket: &str, key: &str) -> Result<bool, String> {
        Ok(self
            .attempts
            .lock()
            .unwrap()
            .iter()
            .any(|(k, _, delivered)| *delivered && k == key))
    }

    async fn deliver(&self, payload: &Payload) -> Report {
        let Payload::Object {
            key, body, records, ..
        } = payload;
        let failing = self
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
            || self
                .refuse_prefix
                .as_ref()
                .is_some_and(|p| key.starts_with(p));
        self.attempts
            .lock()
            .unwrap()
            .push((key.clone(), body.clone(), !failing));
        let outcome = if failing {
            Outcome::Retryable(FAILURE.into())
        } else {
            Outcome::Delivered
        };
        Report::uniform(*records, outcome)
    }
}
