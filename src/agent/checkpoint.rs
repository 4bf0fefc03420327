//! Checkpoints: per flow, per file (device + inode + content fingerprint), the offset up to
//! which every record has been accepted by the endpoint. Saved durably only after a
//! batch is fully sent, so a restart re-sends at most the batch that was in flight.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A file's identity: where it lives on disk and what its first bytes are, so a rotated file
/// is followed under its new name and a reused inode is not mistaken for the old file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A hash of a file's first `len` bytes (at most [`FINGERPRINT_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub crc: u32,
}

pub const FINGERPRINT_BYTES: usize = 1024;

impl Fingerprint {
    pub fn of(prefix: &[u8]) -> Self {
        let prefix = &prefix[..prefix.len().min(FINGERPRINT_BYTES)];
        Fingerprint {
            len: prefix.len() as u32,
            crc: crc32c::crc32c(prefix),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: PathBuf,
    pub id: FileId,
    pub fingerprint: Fingerprint,
    pub offset: u64,
    /// Seconds since the epoch of the last save that moved it.
    pub updated: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    flows: BTreeMap<String, Vec<Entry>>,
}

/// Every flow's checkpoints, one file.
#[derive(Debug)]
pub struct Checkpoints {
    path: PathBuf,
    ttl: Duration,
    flows: BTreeMap<String, BTreeMap<FileId, Entry>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Checkpoints {
    /// Reads the file (absent: empty), dropping entries older than `ttl`.
    pub fn open(path: &Path, ttl: Duration) -> Result<Self, String> {
        let mut flows = BTreeMap::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                if bytes.starts_with(b"SQLite format 3") {
                    return Err(format!(
                        "{}: this is a Kinesis Agent SQLite checkpoint file; point checkpointFile \
                         at a new path (hosepipe keeps its own)",
                        path.display()
                    ));
                }
                let disk: OnDisk = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a checkpoint file: {e}", path.display()))?;
                let oldest = now_secs().saturating_sub(ttl.as_secs());
                for (flow, entries) in disk.flows {
                    let kept: BTreeMap<_, _> = entries
                        .into_iter()
                        .filter(|e| e.updated >= oldest)
                        .map(|e| (e.id, e))
                        .collect();
                    flows.insert(flow, kept);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        Ok(Checkpoints {
            path: path.to_path_buf(),
            ttl,
            flows,
        })
    }

    /// Whether the flow has run before (then files it does not know are new, read from their
    /// start, whatever `initialPosition` says).
    pub fn knows_flow(&self, flow: &str) -> bool {
        self.flows.contains_key(flow)
    }

    pub fn get(&self, flow: &str, id: FileId) -> Option<&Entry> {
        self.flows.get(flow)?.get(&id)
    }

    pub fn entries(&self, flow: &str) -> impl Iterator<Item = &Entry> {
        self.flows.get(flow).into_iter().flat_map(|m| m.values())
    }

    /// Records that everything in `entry.path` up to `entry.offset` was accepted.
    pub fn advance(&mut self, flow: &str, mut entry: Entry) {
        entry.updated = now_secs();
        let files = self.flows.entry(flow.to_string()).or_default();
        match files.get_mut(&entry.id) {
            // A file reset by truncation starts again at a lower offset with a new
            // fingerprint; otherwise offsets only grow.
            Some(old) if old.fingerprint == entry.fingerprint && old.offset > entry.offset => {
                old.updated = entry.updated;
            }
            _ => {
                files.insert(entry.id, entry);
            }
        }
    }

    /// Marks a flow as started even before its first batch, so a restart knows its files.
    pub fn touch_flow(&mut self, flow: &str) {
        self.flows.entry(flow.to_string()).or_default();
    }

    /// Writes the file durably (`durable::write`), dropping expired entries.
    pub fn save(&mut self) -> std::io::Result<()> {
        let oldest = now_secs().saturating_sub(self.ttl.as_secs());
        for files in self.flows.values_mut() {
            files.retain(|_, e| e.updated >= oldest);
        }
        let disk = OnDisk {
            version: 1,
            flows: self
                .flows
                .iter()
                .map(|(k, v)| (k.clone(), v.values().cloned().collect()))
                .collect(),
        };
        crate::durable::write(&self.path, &serde_json::to_vec_pretty(&disk).expect("JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, offset: u64, fp: &[u8]) -> Entry {
        Entry {
            path: format!("/logs/{ino}").into(),
            id: FileId { dev: 1, ino },
            fingerprint: Fingerprint::of(fp),
            offset,
            updated: 0,
        }
    }

    #[test]
    fn saved_offsets_come_back_and_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let ttl = Duration::from_secs(86_400);
        let mut cp = Checkpoints::open(&path, ttl).unwrap();
        assert!(!cp.knows_flow("f"));
        cp.advance("f", entry(7, 100, b"abc"));
        cp.advance("f", entry(7, 50, b"abc"));
        cp.save().unwrap();
        let cp = Checkpoints::open(&path, ttl).unwrap();
        assert!(cp.knows_flow("f"));
        assert_eq!(cp.get("f", FileId { dev: 1, ino: 7 }).unwrap().offset, 100);
    }

    #[test]
    fn a_truncated_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpoints::open(&dir.path().join("cp"), Duration::from_secs(60)).unwrap();
        cp.advance("f", entry(7, 100, b"old"));
        cp.advance("f", entry(7, 10, b"new"));
        assert_eq!(cp.get("f", FileId { dev: 1, ino: 7 }).unwrap().offset, 10);
    }

    #[test]
    fn a_kinesis_agent_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints");
        std::fs::write(&path, b"SQLite format 3\0....").unwrap();
        let e = Checkpoints::open(&path, Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("Kinesis Agent SQLite"), "{e}");
    }
}
