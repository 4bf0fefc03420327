//! The registry in a fleet: control operations on API-created streams write the fleet's bucket
//! ([`crate::fleet::control`]) instead of `streams.json`, and every node, this one included,
//! applies what the bucket says ([`Registry::apply`], fed by [`Registry::watch_fleet`]). An
//! operation returns once this node has applied its own change, so a describe on the same node
//! sees it at once; the other nodes see it as soon as their watch delivers it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{AtRest, ControlError, Entry, Parts, Registry, Saved, block_on};
use crate::config::stream::{self, StreamSpec};
use crate::fleet::control::{Change, Definitions, WriteError};
use crate::pipeline::Versioned;

/// How long an operation waits for this node to apply its change before answering anyway.
const APPLY_WAIT: Duration = Duration::from_secs(15);
/// A change that lost a race (tags, encryption) is read again and retried this many times.
const RETRIES: usize = 5;

fn unavailable(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(format!("the fleet's control plane: {e}"))
}

fn encode(saved: &Saved) -> Bytes {
    Bytes::from(serde_json::to_vec(saved).expect("saved streams serialise"))
}

impl Registry {
    pub(super) fn definitions(&self) -> Option<&Definitions> {
        self.definitions.as_ref()
    }

    /// A new API-created stream, written to the fleet's bucket; a stream of that name anywhere
    /// in the fleet is ResourceInUseException.
    pub(super) fn fleet_create(
        &self,
        defs: &Definitions,
        saved: Saved,
    ) -> Result<(), ControlError> {
        let name = saved.name.clone();
        let revision = block_on(defs.create(&name, encode(&saved))).map_err(|e| match e {
            WriteError::Conflict => ControlError::InUse(format!(
                "Firehose {name} under accountId {} already exists",
                self.account_id
            )),
            WriteError::Unavailable(m) => unavailable(m),
        })?;
        self.await_applied(&name, Some(revision));
        Ok(())
    }

    /// Deletes an API-created stream from the fleet's bucket: every node drains and stops it.
    pub(super) fn fleet_delete(&self, defs: &Definitions, name: &str) -> Result<(), ControlError> {
        for _ in 0..RETRIES {
            let Some((_, revision)) = block_on(defs.get(name)).map_err(unavailable)? else {
                return Err(self.not_found(name));
            };
            match block_on(defs.delete(name, revision)) {
                Ok(()) => {
                    self.await_applied(name, None);
                    return Ok(());
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Unavailable(m)) => return Err(unavailable(m)),
            }
        }
        Err(self.busy(name))
    }

    /// Changes an API-created stream's definition in the fleet's bucket, conditional on the
    /// revision read; a race lost is read again and retried. With `version`, the change holds
    /// only while the stream is at that version (UpdateDestination's VersionId: another
    /// version is ConcurrentModificationException).
    pub(super) fn fleet_change(
        &self,
        defs: &Definitions,
        name: &str,
        version: Option<u64>,
        mut change: impl FnMut(&mut Saved) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        for _ in 0..RETRIES {
            let Some((value, revision)) = block_on(defs.get(name)).map_err(unavailable)? else {
                return Err(self.not_found(name));
            };
            let mut saved: Saved = serde_json::from_slice(&value).map_err(unavailable)?;
            if let Some(v) = version
                && saved.version != v
            {
                return Err(conflict(name, saved.version, v));
            }
            change(&mut saved)?;
            match block_on(defs.update(name, encode(&saved), revision)) {
                Ok(revision) => {
                    self.await_applied(name, Some(revision));
                    return Ok(());
                }
                // Changed by another node since it was read: read again (a new version is a
                // conflict, a tag change is not).
                Err(WriteError::Conflict) => continue,
                Err(WriteError::Unavailable(m)) => return Err(unavailable(m)),
            }
        }
        Err(self.busy(name))
    }

    fn busy(&self, name: &str) -> ControlError {
        ControlError::InUse(format!(
            "Firehose {name} is being changed from another node; try again"
        ))
    }

    /// Waits (bounded) until this node runs `revision` of the stream, or (`None`) no longer
    /// runs it. The worker's other tasks (the watch that applies it among them) move to
    /// another thread meanwhile.
    fn await_applied(&self, name: &str, revision: Option<u64>) {
        tokio::task::block_in_place(|| self.poll_applied(name, revision));
    }

    fn poll_applied(&self, name: &str, revision: Option<u64>) {
        let deadline = Instant::now() + APPLY_WAIT;
        while Instant::now() < deadline {
            let applied = {
                let streams = self.lock();
                match (streams.get(name), revision) {
                    (Some(e), Some(r)) => e.revision >= r,
                    (None, None) => true,
                    _ => false,
                }
            };
            if applied {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(stream = %name, "a control change is in the fleet's bucket but this node has not applied it yet");
    }

    /// Starts, changes or stops a stream as the fleet's bucket says.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Put {
                name,
                value,
                revision,
            } => {
                let saved: Saved = match serde_json::from_slice(&value) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(stream = %name, error = %e, "a definition in the fleet's bucket cannot be read; not applied");
                        return;
                    }
                };
                let current = self.lock().get(&name).map(|e| (e.revision, e.from_config));
                match current {
                    Some((_, true)) => {
                        tracing::warn!(stream = %name, "a stream of this name is declared in this node's config file; the fleet's definition is ignored here")
                    }
                    Some((r, false)) if r >= revision => {}
                    Some(_) => self.apply_update(saved, revision),
                    None => self.apply_create(saved, revision),
                }
            }
            Change::Deleted { name, revision } => {
                let mut streams = self.lock();
                let gone = streams
                    .get(&name)
                    .is_some_and(|e| !e.from_config && e.revision < revision);
                if gone && let Some(entry) = self.remove(&mut streams, &name) {
                    tracing::info!(stream = %name, "deleted in the fleet; draining");
                    self.retire(entry);
                }
            }
        }
    }

    /// The spec and parts a fleet definition runs with on this node; `None`, with an ERROR
    /// log ending in `otherwise`, when it does not validate or its transform or table cannot
    /// be loaded here.
    fn runnable(&self, saved: &Saved, otherwise: &str) -> Option<(StreamSpec, Parts)> {
        let name = &saved.name;
        let spec = match stream::validate(name, &saved.input) {
            Ok(spec) => spec,
            Err(errs) => {
                tracing::error!(stream = %name, errors = ?errs, "the fleet's definition does not validate on this node; {otherwise}");
                return None;
            }
        };
        match self.runtime_parts(&spec) {
            Ok(parts) => Some((spec, parts)),
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "the fleet's definition cannot run on this node (its transform or table); {otherwise}");
                None
            }
        }
    }

    fn apply_create(&self, saved: Saved, revision: u64) {
        let name = saved.name.clone();
        let Some((spec, parts)) = self.runnable(&saved, "not started") else {
            return;
        };
        match self.start(saved, spec, parts, false) {
            Ok(mut entry) => {
                entry.revision = revision;
                let mut streams = self.lock();
                // Another apply got there first.
                if streams.contains_key(&name) {
                    drop(streams);
                    self.retire_quietly(entry);
                    return;
                }
                self.insert(&mut streams, entry);
                tracing::info!(stream = %name, revision, "started from the fleet's definition");
            }
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "cannot start the fleet's stream on this node")
            }
        }
    }

    fn apply_update(&self, saved: Saved, revision: u64) {
        let name = saved.name.clone();
        let Some((spec, parts)) = self.runnable(&saved, "the old one runs on") else {
            return;
        };
        let mut streams = self.lock();
        let Some(entry) = streams.get_mut(&name) else {
            return;
        };
        if entry.revision >= revision {
            return;
        }
        let same = |a: &Saved, b: &Saved| {
            serde_json::to_value(&a.input).ok() == serde_json::to_value(&b.input).ok()
        };
        if !same(&entry.saved, &saved) || entry.saved.version != saved.version {
            let (processing, converter) = parts;
            entry.handle.config.send_replace(Arc::new(Versioned {
                spec: spec.clone(),
                version: saved.version,
                processing,
                converter,
            }));
        }
        let encryption = |s: &Saved| {
            serde_json::to_value(&s.input.delivery_stream_encryption_configuration_input).ok()
        };
        if encryption(&entry.saved) != encryption(&saved) {
            // The records rest in JetStream, which encrypts its own store: nothing to reseal.
            *entry.at_rest.lock().expect("at-rest lock") = AtRest::settled(spec.at_rest.clone());
        }
        entry.saved = saved;
        entry.revision = revision;
        tracing::info!(stream = %name, revision, version = entry.saved.version, "the fleet's new definition applied");
    }

    /// Stops an entry that was started twice (its log stays: the other entry uses it).
    fn retire_quietly(&self, entry: Entry) {
        let Entry { handle, spool, .. } = entry;
        tokio::spawn(async move {
            spool.leave().await;
            let _ = handle.done.await;
            spool.close().await;
        });
    }

    /// Loads the fleet's streams, then applies every change to the bucket until the daemon
    /// stops (re-watching after a lost connection).
    pub async fn watch_fleet(self: Arc<Self>) {
        let Some(defs) = self.definitions() else {
            return;
        };
        loop {
            match defs.watch().await {
                Ok(changes) => {
                    let mut changes = std::pin::pin!(changes);
                    while let Some(change) = changes.next().await {
                        let registry = self.clone();
                        tokio::task::block_in_place(|| registry.apply(change));
                    }
                    tracing::warn!("the fleet's control-plane watch ended; watching again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the fleet's control plane; trying again")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The fleet's API-created streams, started on this node (at start-up).
    pub(super) fn restore_fleet(&self, defs: &Definitions) -> Result<usize, String> {
        let all = block_on(defs.all())?;
        let n = all.len();
        for (name, value, revision) in all {
            self.apply(Change::Put {
                name,
                value,
                revision,
            });
        }
        Ok(n)
    }
}

fn conflict(name: &str, current: u64, given: u64) -> ControlError {
    ControlError::VersionConflict(format!(
        "Cannot update firehose: {name} since the current version id: {current} and specified version id: {given} do not match"
    ))
}
