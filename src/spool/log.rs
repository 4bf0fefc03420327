//! Where a stream's accepted records are kept: the local spool, or (in a fleet) a JetStream
//! stream. The API appends to it, the pipeline reads from it and tells it what is delivered;
//! neither knows which it is.

use std::path::Path;
use std::sync::Arc;

use super::jetstream::StreamLog;
use super::{ReadBudget, Spool, SpoolError, SpoolObserver, SpoolStats};
use crate::buffer::Record;
use crate::fleet::Fleet;

// One per stream, behind an `Arc`: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Spool(Spool),
    JetStream(StreamLog),
}

/// A stream's log.
pub struct Log {
    pub stats: Arc<SpoolStats>,
    backend: Backend,
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// How many of the records, from the first, are stored (each has its seq).
    pub stored: usize,
    /// They were sealed at rest by hosepipe.
    pub sealed: bool,
}

impl Log {
    pub fn local(spool: Spool) -> Log {
        Log {
            stats: spool.stats.clone(),
            backend: Backend::Spool(spool),
        }
    }

    /// The stream's log in the fleet's JetStream (created if it is not there yet).
    /// `generation`: see [`Fleet::stream_name`].
    pub async fn jetstream(
        fleet: Arc<Fleet>,
        name: &str,
        generation: Option<&str>,
        observer: Arc<dyn SpoolObserver>,
    ) -> Result<Log, SpoolError> {
        let stats = Arc::new(SpoolStats::default());
        let log = StreamLog::open(fleet, name, generation, observer, stats.clone()).await?;
        Ok(Log {
            stats,
            backend: Backend::JetStream(log),
        })
    }

    /// `spool` or `jetstream`.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Spool(_) => "spool",
            Backend::JetStream(_) => "jetstream",
        }
    }

    /// The local spool's directory (where the object journal lives); none in a fleet.
    pub fn dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Spool(s) => Some(s.dir()),
            Backend::JetStream(_) => None,
        }
    }

    /// Whether the reader will hand `seq` on since the log opened (see [`Spool::will_read`]).
    pub fn will_read(&self, seq: u64) -> bool {
        match &self.backend {
            Backend::Spool(s) => s.will_read(seq),
            Backend::JetStream(_) => true,
        }
    }

    /// Whether appends wait for `fdatasync`.
    pub fn syncs(&self) -> bool {
        match &self.backend {
            Backend::Spool(s) => s.syncs(),
            // JetStream acknowledges once the stream's replicas have it.
            Backend::JetStream(_) => true,
        }
    }

    /// Starts handing the stream's records to `ingest`, each chunk once `budget` has room.
    pub fn start_reader(
        &self,
        ingest: tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: Arc<dyn ReadBudget>,
    ) -> std::io::Result<()> {
        match &self.backend {
            Backend::Spool(s) => s.start_reader(ingest, budget),
            Backend::JetStream(j) => {
                j.start_reader(ingest, budget);
                Ok(())
            }
        }
    }

    /// Stores records durably; the producer may be told they are accepted once this returns.
    pub async fn append(&self, records: &mut [Record]) -> Result<Stored, SpoolError> {
        match &self.backend {
            Backend::Spool(s) => s.append(records).await.map(|sealed| Stored {
                stored: records.len(),
                sealed,
            }),
            Backend::JetStream(j) => j.append(records).await.map(|stored| Stored {
                stored,
                sealed: false,
            }),
        }
    }

    /// Refuses appends from now on; the reader hands on everything accepted (the fleet's
    /// too), then closes the pipeline's input. For a stream being deleted.
    pub async fn stop_intake(&self) {
        match &self.backend {
            Backend::Spool(s) => s.stop_intake().await,
            Backend::JetStream(j) => j.stop_intake(true),
        }
    }

    /// Refuses appends from now on, for a node that stops: the local spool's reader hands on
    /// what it holds; a fleet node stops reading at once and leaves the rest to the others.
    pub async fn leave(&self) {
        match &self.backend {
            Backend::Spool(s) => s.stop_intake().await,
            Backend::JetStream(j) => j.stop_intake(false),
        }
    }

    /// Seals at rest under `key_id` (see [`Spool::set_sealing`]). In a fleet the records rest
    /// in JetStream, which encrypts its store itself (`jetstream { cipher }` on its servers).
    pub async fn set_sealing(&self, key_id: Option<String>) -> Result<(), SpoolError> {
        match &self.backend {
            Backend::Spool(s) => s.set_sealing(key_id).await,
            Backend::JetStream(_) => Ok(()),
        }
    }

    /// The records are delivered (or in the error output).
    pub fn delivered(&self, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        match &self.backend {
            Backend::Spool(s) => s.delivered(seqs),
            Backend::JetStream(j) => j.delivered(seqs),
        }
    }

    /// Stops the writer and reader (checkpointing), or hands back what a fleet node holds.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Spool(s) => s.close().await,
            Backend::JetStream(j) => j.close().await,
        }
    }

    /// Removes what is left of a deleted stream's log (after [`Log::close`]).
    pub async fn destroy(&self) {
        match &self.backend {
            Backend::Spool(s) => {
                if let Err(e) = std::fs::remove_dir_all(s.dir()) {
                    tracing::warn!(dir = %s.dir().display(), error = %e, "cannot remove a deleted stream's spool");
                }
            }
            Backend::JetStream(j) => j.destroy().await,
        }
    }
}
