//! The write-ahead spool: every accepted record is appended to its stream's spool, with a CRC32C,
//! and (in `fsync` mode) flushed to disk before the API answers. Concurrent appends share one
//! fsync (group commit). A segment file is deleted only when every record in it is delivered;
//! which records are delivered survives restarts in a checkpoint file (fsync + rename).
//!
//! Layout: `<dir>/seg-<base seq, 20 digits>.log`, `<dir>/checkpoint.json`, `<dir>/corrupt/`.
//! Segment: header `HPSPOOL\x01` + base seq (u64 LE), then records
//! `len u32 | crc32c(payload) u32 | payload = seq u64 | arrival_ms i64 | data` (little-endian).
//!
//! A stream encrypted at rest (`StartDeliveryStreamEncryption`) writes sealed segments instead:
//! header `HPSPOOL\x02` + base seq + u32 length + an envelope header with the segment's own data
//! key, wrapped by the master key; each record's `data` is sealed with AES-256-GCM
//! ([`crate::crypto::segment`]). Turning encryption on seals the plain segments still holding
//! undelivered records (rewritten, then renamed over); turning it off leaves sealed ones sealed.
//!
//! The spool is also the stream's buffer: the pipeline does not receive records from the API but
//! reads them back from the segments ([`reader`]), in seq order, at the pace the memory budget
//! and the stages allow. Only what the writer has made durable is read (the writer publishes
//! each segment's committed length), so a reader never sees a torn write.
//!
//! All writes run on one thread per stream, reads on another; the async side talks to the
//! writer over a channel.

mod format;
pub mod jetstream;
mod log;
mod ranges;
mod reader;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::buffer::Record;
use crate::crypto::segment::{self, SegmentCipher};
use crate::crypto::{KeyError, KeyService, OpenError};
pub use format::{
    Frame, HEADER_LEN, MAGIC, SEALED_MAGIC, Scan, ScanEnd, SegmentHeader, encode_record,
    next_frame, plain_header, read_header, scan_segment,
};
pub use log::{Log, Stored};
pub use ranges::RangeSet;
pub use reader::{ReadBudget, memory_cost};

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// After `fdatasync`: survives a power cut (default).
    Fsync,
    /// After `write`: in the page cache; survives a process crash, not a power cut.
    Os,
}

impl SyncMode {
    pub fn from_config(value: &str) -> Option<Self> {
        match value {
            "fsync" => Some(SyncMode::Fsync),
            "os" => Some(SyncMode::Os),
            _ => None,
        }
    }
}

/// Spool settings shared by every stream.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub root: PathBuf,
    pub sync: SyncMode,
    pub segment_bytes: u64,
}

/// Why an append or an open failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool disk is full")]
    Full,
    #[error("spool I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the spool writer has stopped")]
    Closed,
    /// The JetStream log refused or could not be reached.
    #[error("JetStream: {0}")]
    Log(String),
    /// A new sealed segment needs a data key and the key service gave none.
    #[error("the key service gives the spool no data key: {0}")]
    Key(KeyError),
    /// A sealed segment's data key cannot be unwrapped: its records wait in it.
    #[error(
        "spool segment {path} cannot be unsealed ({message}); its records wait in it until the key service can open it"
    )]
    Unseal { path: PathBuf, message: String },
}

/// How a stream's spool is sealed at rest.
#[derive(Clone)]
pub struct Sealing {
    /// Opens sealed segments, and gives new ones their data keys.
    pub keys: Arc<dyn KeyService>,
    /// The stream (bound into each segment's envelope).
    pub stream: String,
    /// The master key new segments are sealed under; `None`: new segments are plain.
    pub key_id: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| {
        if source.raw_os_error() == Some(28) {
            SpoolError::Full
        } else {
            SpoolError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Counters the rest of the daemon reads.
#[derive(Debug)]
pub struct SpoolStats {
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    /// Records accepted and not yet settled (delivered, dropped or in the error output):
    /// the backlog, whether still on disk only or already read into the pipeline.
    pub records: AtomicU64,
    /// Records the reader has not handed to the pipeline yet.
    pub unread_records: AtomicU64,
    /// Arrival of the oldest record the reader holds or has not read yet (`i64::MAX`: none).
    pub oldest_unread_ms: AtomicI64,
    /// Every seq below this is delivered, and the checkpoint on disk says so: none of them
    /// will be read again, even after a crash.
    pub checkpointed_low: AtomicU64,
    /// In a fleet: records this node holds, handed out by JetStream and not acknowledged.
    pub held_records: AtomicU64,
    /// In a fleet: messages (a put's records travel together) handed out to any node and not
    /// acknowledged.
    pub ack_pending_messages: AtomicU64,
    /// In a fleet: messages in JetStream not yet handed to any node.
    pub pending_messages: AtomicU64,
}

impl Default for SpoolStats {
    fn default() -> Self {
        SpoolStats {
            bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            records: AtomicU64::new(0),
            unread_records: AtomicU64::new(0),
            oldest_unread_ms: AtomicI64::new(i64::MAX),
            checkpointed_low: AtomicU64::new(0),
            held_records: AtomicU64::new(0),
            ack_pending_messages: AtomicU64::new(0),
            pending_messages: AtomicU64::new(0),
        }
    }
}

impl SpoolStats {
    /// Arrival of the oldest record not yet read into the pipeline, if any.
    pub fn oldest_unread_ms(&self) -> Option<i64> {
        let t = self.oldest_unread_ms.load(Ordering::Relaxed);
        (t != i64::MAX).then_some(t)
    }
}

/// What recovery found. Recovery reads no records: the reader starts from the checkpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Undelivered records the spool holds (the backlog the reader starts on).
    pub backlog: u64,
    /// Bytes cut off the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Segments moved to `corrupt/` (a damaged header).
    pub corrupt_segments: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct Checkpoint {
    /// Every seq below this is delivered (its segment is gone).
    low: u64,
    /// Delivered seqs at or above `low`, as `[start, end)` ranges.
    delivered: Vec<(u64, u64)>,
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    /// One past the highest seq it holds.
    end: u64,
    /// Records in it not yet delivered.
    live: u64,
    /// Its records are sealed.
    sealed: bool,
}

/// The segment appends go to.
struct Active {
    base: u64,
    file: File,
    cipher: Option<Arc<SegmentCipher>>,
}

/// Where an append landed: its first seq, and whether it was sealed.
type Appended = Result<(u64, bool), SpoolError>;

/// Records waiting for the next group commit, and whom to tell where they landed.
type PendingAppend = (Vec<Record>, oneshot::Sender<Appended>);

/// What the writer has made durable: the reader reads exactly this.
#[derive(Debug, Default)]
struct Index {
    /// Segment base → its committed length in bytes.
    segments: BTreeMap<u64, u64>,
    /// The segment appends go to.
    active: Option<u64>,
    /// One past the last committed seq.
    next_seq: u64,
    /// No more appends will come (the stream is stopping).
    closed: bool,
}

impl Index {
    /// One past the last seq the segment at `base` can hold: the next segment's base.
    fn end_of(&self, base: u64) -> u64 {
        self.segments
            .range(base + 1..)
            .next()
            .map_or(self.next_seq, |(b, _)| *b)
    }
}

/// A sealed segment's data key, with the envelope it was opened from.
type CachedCipher = (Vec<u8>, Arc<SegmentCipher>);

/// Shared by the writer and the reader of one spool.
struct Published {
    index: Mutex<Index>,
    changed: Condvar,
    /// Data keys of sealed segments by base, so the reader need not ask the key service again.
    ciphers: Mutex<HashMap<u64, CachedCipher>>,
    /// The spool is closed: the reader stops at once.
    aborted: AtomicBool,
}

enum Cmd {
    Append {
        records: Vec<Record>,
        reply: oneshot::Sender<Appended>,
    },
    Delivered(Vec<u64>),
    /// The reader found damage in the segment at `base` after `from` (the next seq it wanted):
    /// the records from there to the segment's end cannot be read.
    Damaged {
        base: u64,
        from: u64,
    },
    /// Refuse appends from now on; the reader stops once it has read everything.
    StopIntake(oneshot::Sender<()>),
    /// Seal new segments under this master key (and the plain ones still live), or stop sealing.
    SetSealing {
        key_id: Option<String>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Close(oneshot::Sender<()>),
}

/// One stream's spool.
pub struct Spool {
    tx: mpsc::Sender<Cmd>,
    pub stats: Arc<SpoolStats>,
    dir: PathBuf,
    published: Arc<Published>,
    /// Where the reader starts, until it is started.
    reader: Mutex<Option<reader::Reader>>,
    sync: SyncMode,
    /// Where the reader starts: every seq below it was delivered when the spool opened.
    low_at_start: u64,
    /// The seqs at or above that the checkpoint said were delivered: the reader skips them.
    delivered_at_start: RangeSet,
}

/// Observes spool events (metrics live outside this module).
pub trait SpoolObserver: Send + Sync + 'static {
    fn fsync(&self, seconds: f64);
    fn bytes_changed(&self, delta: i64);
    /// A key-service call for a sealed segment, and how it went.
    fn key_call(&self, result: Result<(), &KeyError>);
    /// The reader found a damaged segment (a copy is in `corrupt/`); `lost` records after the
    /// damage cannot be read.
    fn corrupt(&self, lost: u64);
    /// A put's records published to JetStream: how long until the last acknowledgement, how
    /// many were acknowledged and how many not.
    fn published(&self, _seconds: f64, _acknowledged: usize, _failed: usize) {}
    /// Records JetStream handed to this node again.
    fn redelivered(&self, _records: u64) {}
    /// The JetStream log's state: records this node holds unacknowledged; messages handed out
    /// to any node and unacknowledged, and not yet handed out.
    fn log_state(&self, _held: u64, _ack_pending: u64, _pending: u64) {}
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovers what is there (unsealing sealed segments),
    /// and starts its writer.
    pub fn open(
        dir: &Path,
        settings: &SpoolSettings,
        observer: Arc<dyn SpoolObserver>,
        sealing: Sealing,
    ) -> Result<(Spool, Recovery), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (writer, recovery, skip) = Writer::recover(dir, settings, observer.clone(), sealing)?;
        let stats = writer.stats.clone();
        let published = writer.published.clone();
        let (low_at_start, delivered_at_start) = (writer.low, skip.clone());
        let reader = reader::Reader::new(
            dir,
            published.clone(),
            writer.sealing.clone(),
            observer,
            stats.clone(),
            writer.low,
            skip,
        );
        let (tx, rx) = mpsc::channel();
        let name = format!(
            "spool-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        Ok((
            Spool {
                tx,
                stats,
                dir: dir.to_path_buf(),
                published,
                reader: Mutex::new(Some(reader)),
                sync: settings.sync,
                low_at_start,
                delivered_at_start,
            },
            recovery,
        ))
    }

    /// Starts the thread that reads the spool into `ingest`, from the oldest undelivered
    /// record, each chunk once `budget` has room for it. It runs until intake stops and it has
    /// read everything ([`Spool::stop_intake`]), or the spool closes.
    pub fn start_reader(
        &self,
        ingest: tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: Arc<dyn ReadBudget>,
    ) -> std::io::Result<()> {
        let Some(reader) = self.reader.lock().expect("reader lock").take() else {
            return Ok(());
        };
        let name = format!(
            "read-{}",
            self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || reader.run(ingest, budget, tx))?;
        Ok(())
    }

    /// Refuses appends from now on; returns once every append taken before is committed. The
    /// reader hands what is left to the pipeline, then closes it.
    pub async fn stop_intake(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::StopIntake(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the reader will hand `seq` on (since the spool opened): false for a seq the
    /// checkpoint said was delivered, or below its low mark.
    pub fn will_read(&self, seq: u64) -> bool {
        seq >= self.low_at_start && !self.delivered_at_start.contains(seq)
    }

    /// Whether appends wait for `fdatasync` (`spool.sync = "fsync"`), not only the page cache.
    pub fn syncs(&self) -> bool {
        self.sync == SyncMode::Fsync
    }

    /// Appends records durably and gives each its seq. Returns once they are on disk (in
    /// `fsync` mode) or in the page cache (`os` mode), saying whether they were sealed.
    pub async fn append(&self, records: &mut [Record]) -> Result<bool, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                records: records
                    .iter()
                    .map(|r| Record::new(r.data.clone(), r.arrival_ms))
                    .collect(),
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        let (first, sealed) = rx.await.map_err(|_| SpoolError::Closed)??;
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = first + i as u64;
        }
        Ok(sealed)
    }

    /// Seals new segments under `key_id` from the next append on, and rewrites the plain
    /// segments still holding undelivered records sealed; `None` makes new segments plain.
    pub async fn set_sealing(&self, key_id: Option<String>) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::SetSealing { key_id, reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Marks records as delivered (or written to the error output).
    pub fn delivered(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            let _ = self.tx.send(Cmd::Delivered(seqs));
        }
    }

    /// Writes the checkpoint and stops the writer and the reader.
    pub async fn close(&self) {
        self.published.aborted.store(true, Ordering::Relaxed);
        self.published.changed.notify_all();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    dir: PathBuf,
    sync: SyncMode,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    sealing: Sealing,
    delivered: RangeSet,
    low: u64,
    next_seq: u64,
    dirty: bool,
    /// Appends are refused (the stream is stopping).
    closed: bool,
    stats: Arc<SpoolStats>,
    observer: Arc<dyn SpoolObserver>,
    published: Arc<Published>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("seg-{base:020}.log"))
}

/// A segment's header bytes (magic, base and a sealed segment's envelope), or all of it when
/// it is shorter.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    read_head_of(&mut File::open(path)?)
}

/// [`read_head`] of an open file, read from its start.
fn read_head_of(f: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEADER_LEN + 4);
    let n = read_more(f, (HEADER_LEN + 4) as u64, &mut head)?;
    if n == HEADER_LEN + 4 && &head[..8] == SEALED_MAGIC {
        let len = u32::from_le_bytes(head[HEADER_LEN..].try_into().expect("4 bytes")) as usize;
        read_more(f, len.min(format::MAX_ENVELOPE + 1) as u64, &mut head)?;
    }
    Ok(head)
}

/// Appends up to `n` more bytes of `f` to `buf`, fewer where the file ends; how many.
fn read_more(f: &mut File, n: u64, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    f.take(n).read_to_end(buf)
}

/// Puts a damaged segment into `<dir>/corrupt/` for inspection — moved, or with `copy` a copy
/// (its records before the damage are still to be read) — and logs it. Returns where it went.
fn set_aside(dir: &Path, path: &Path, copy: bool, detail: &str) -> Result<PathBuf, SpoolError> {
    let aside = dir.join("corrupt");
    let target = aside.join(path.file_name().expect("segment has a name"));
    std::fs::create_dir_all(&aside)
        .and_then(|()| {
            if copy {
                std::fs::copy(path, &target).map(drop)
            } else {
                crate::durable::rename(path, &target)
            }
        })
        .map_err(io_err(path))?;
    tracing::error!(segment = %path.display(), moved_to = %target.display(), copy, "corrupt spool segment moved aside; {detail}");
    Ok(target)
}

impl Writer {
    /// Opens what the spool holds without reading its records: every segment's header (a
    /// sealed one's data key is unwrapped), and the last segment whole, to cut off a torn
    /// write. Returns the writer, what recovery found, and the delivered seqs the reader skips.
    fn recover(
        dir: &Path,
        settings: &SpoolSettings,
        observer: Arc<dyn SpoolObserver>,
        sealing: Sealing,
    ) -> Result<(Writer, Recovery, RangeSet), SpoolError> {
        let ckpt_path = dir.join("checkpoint.json");
        let checkpoint: Checkpoint = match std::fs::read(&ckpt_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Without it every record is replayed: duplicates, never loss.
                tracing::error!(file = %ckpt_path.display(), error = %e, "spool checkpoint unreadable; replaying every record in the spool");
                Checkpoint::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(e) => return Err(io_err(&ckpt_path)(e)),
        };
        let mut delivered = RangeSet::default();
        for (a, b) in &checkpoint.delivered {
            delivered.insert_range(*a, *b);
        }
        let mut bases: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("seg-") && name.ends_with(".tmp") {
                // A rewrite that did not finish; the segment it was for is intact.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Some(base) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                bases.push((base, path));
            }
        }
        bases.sort();
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let mut ciphers = HashMap::new();
        let mut next_seq = checkpoint.low;
        let last_index = bases.len().saturating_sub(1);
        let next_bases: Vec<Option<u64>> = (0..bases.len())
            .map(|i| bases.get(i + 1).map(|(b, _)| *b))
            .collect();
        for (i, (base, path)) in bases.into_iter().enumerate() {
            let last = i == last_index;
            // Only the last segment can end in a torn write; the others are read when the
            // reader reaches them.
            let data = if last {
                std::fs::read(&path)
            } else {
                read_head(&path)
            }
            .map_err(io_err(&path))?;
            let header = match read_header(&data) {
                Ok(h) => match &h.envelope {
                    None => Ok((h, None)),
                    Some(range) => {
                        match open_sealed(&sealing, observer.as_ref(), &data[range.clone()], base) {
                            Ok(cipher) => Ok((h, Some(cipher))),
                            // Altered, or from another stream or segment.
                            Err(OpenError::Format(e)) => {
                                tracing::error!(segment = %path.display(), error = %e, "sealed spool segment's header does not authenticate");
                                Err(ScanEnd::Corrupt { at: 0 })
                            }
                            Err(e) => {
                                return Err(SpoolError::Unseal {
                                    path,
                                    message: e.to_string(),
                                });
                            }
                        }
                    }
                },
                Err(end) => Err(end),
            };
            let (h, cipher) = match header {
                Ok(found) => found,
                Err(ScanEnd::Torn { .. }) => {
                    // Its header was cut short (created, never written): drop it.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(_) => {
                    let target = set_aside(dir, &path, false, "its records cannot be recovered")?;
                    recovery.corrupt_segments.push(target);
                    continue;
                }
            };
            let sealed = cipher.is_some();
            let mut keep_len = data.len() as u64;
            let end = if last {
                let scan = scan_segment(&data, &h, cipher.as_ref());
                if let ScanEnd::Torn { at } = scan.end {
                    // A partial last write: cut it off.
                    tracing::warn!(segment = %path.display(), at, dropped = data.len() as u64 - at, "spool segment ends in a torn write; truncating");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(at).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    recovery.truncated_bytes += data.len() as u64 - at;
                    keep_len = at;
                }
                if let ScanEnd::Corrupt { at } = scan.end {
                    // What follows the damage cannot be read, nor counted: numbering goes on
                    // after the last good record, and the reader stops at the damage.
                    let detail = format!("records after byte {at} cannot be recovered");
                    recovery
                        .corrupt_segments
                        .push(set_aside(dir, &path, true, &detail)?);
                }
                // Damage in an earlier segment is found, copied aside and counted by the reader.
                scan.records.last().map_or(base, |r| r.seq + 1)
            } else {
                keep_len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
                next_bases[i].expect("a segment that is not the last has a next one")
            };
            next_seq = next_seq.max(end).max(base);
            let from = base.max(checkpoint.low);
            let live = end.saturating_sub(from) - delivered.count_in(from, end);
            if let (Some(c), Some(range)) = (cipher, &h.envelope) {
                ciphers.insert(base, (data[range.clone()].to_vec(), Arc::new(c)));
            }
            segments.insert(
                base,
                Segment {
                    path,
                    bytes: keep_len,
                    end,
                    live,
                    sealed,
                },
            );
        }
        let stats = Arc::new(SpoolStats::default());
        let published = Arc::new(Published {
            index: Mutex::new(Index::default()),
            changed: Condvar::new(),
            ciphers: Mutex::new(ciphers),
            aborted: AtomicBool::new(false),
        });
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            sync: settings.sync,
            segment_bytes: settings.segment_bytes,
            segments,
            active: None,
            sealing,
            delivered,
            low: checkpoint.low,
            next_seq,
            dirty: true,
            closed: false,
            stats,
            observer,
            published,
        };
        let total: u64 = writer.segments.values().map(|s| s.bytes).sum();
        writer.stats.bytes.store(total, Ordering::Relaxed);
        writer.observer.bytes_changed(total as i64);
        writer.collect_garbage();
        writer.write_checkpoint();
        if writer.sealing.key_id.is_some()
            && let Err(e) = writer.seal_plain_segments()
        {
            // Their records are delivered from them all the same; a later start seals them.
            tracing::warn!(error = %e, "cannot seal the spool's plain segments yet");
        }
        recovery.backlog = writer.segments.values().map(|s| s.live).sum();
        writer.publish();
        let skip = writer.delivered.clone();
        Ok((writer, recovery, skip))
    }

    /// Tells the reader what is durable now, and the rest of the daemon what is backlogged.
    fn publish(&self) {
        let live: u64 = self.segments.values().map(|s| s.live).sum();
        self.stats.records.store(live, Ordering::Relaxed);
        self.stats
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        let mut index = self.published.index.lock().expect("index lock");
        index.segments = self.segments.iter().map(|(b, s)| (*b, s.bytes)).collect();
        index.active = self.active.as_ref().map(|a| a.base);
        index.next_seq = self.next_seq;
        index.closed = self.closed;
        drop(index);
        self.published.changed.notify_all();
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut last_checkpoint = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut appends: Vec<PendingAppend> = Vec::new();
            let mut pending_bytes = 0usize;
            let mut close = None;
            let mut next = first;
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append { records, reply } => {
                        pending_bytes += records.iter().map(|r| r.data.len()).sum::<usize>();
                        appends.push((records, reply));
                    }
                    Cmd::Delivered(seqs) => self.mark_delivered(&seqs),
                    Cmd::Damaged { base, from } => {
                        if !appends.is_empty() {
                            self.append_group(std::mem::take(&mut appends));
                            pending_bytes = 0;
                        }
                        self.damaged(base, from);
                    }
                    Cmd::StopIntake(done) => {
                        // Appends already taken are committed first.
                        if !appends.is_empty() {
                            self.append_group(std::mem::take(&mut appends));
                            pending_bytes = 0;
                        }
                        self.closed = true;
                        self.publish();
                        let _ = done.send(());
                    }
                    Cmd::SetSealing { key_id, reply } => {
                        // Appends already taken go out under the old setting first.
                        if !appends.is_empty() {
                            self.append_group(std::mem::take(&mut appends));
                            pending_bytes = 0;
                        }
                        let _ = reply.send(self.set_sealing(key_id));
                    }
                    Cmd::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                // Group commit: take whatever else is already waiting, up to 16 MiB.
                if pending_bytes < 16 * 1024 * 1024 {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.append_group(appends);
            }
            if self.dirty
                && (close.is_some() || last_checkpoint.elapsed() >= Duration::from_millis(200))
            {
                self.collect_garbage();
                self.write_checkpoint();
                self.publish();
                last_checkpoint = Instant::now();
            }
            if let Some(done) = close {
                // Nothing more will be appended: the active segment may go too if delivered.
                self.active = None;
                self.closed = true;
                self.collect_garbage();
                self.write_checkpoint();
                self.publish();
                let _ = done.send(());
                return;
            }
        }
        self.collect_garbage();
        self.write_checkpoint();
    }

    /// The reader cannot read the segment at `base` past seq `from`: the records from there to
    /// the segment's end are lost (settled, counted). An active segment is left for a new one,
    /// so nothing more is appended behind the damage.
    fn damaged(&mut self, base: u64, from: u64) {
        if self.active.as_ref().is_some_and(|a| a.base == base) {
            self.active = None;
        }
        let end = match self.segments.get(&base) {
            Some(seg) => seg.end,
            None => return,
        };
        let lost: Vec<u64> = (from.max(self.low)..end)
            .filter(|s| !self.delivered.contains(*s))
            .collect();
        self.observer.corrupt(lost.len() as u64);
        if !lost.is_empty() {
            tracing::error!(
                segment = base,
                records = lost.len(),
                "records after the damage in a spool segment cannot be read; they are lost"
            );
        }
        self.mark_delivered(&lost);
        self.collect_garbage();
        self.write_checkpoint();
        self.publish();
    }

    fn open_active(&mut self) -> Result<(), SpoolError> {
        let base = self.next_seq;
        let path = segment_path(&self.dir, base);
        // The data key first: without one nothing is written, not even an empty segment.
        let (cipher, header) = match &self.sealing.key_id {
            None => (None, format::plain_header(base)),
            Some(key_id) => {
                let (cipher, envelope) = self.new_cipher(key_id, base).map_err(SpoolError::Key)?;
                let header = format::sealed_header(base, &envelope);
                let cipher = Arc::new(cipher);
                self.cache_cipher(base, envelope, &cipher);
                (Some(cipher), header)
            }
        };
        // A segment that held nothing may be made again at the same base: as a new file, so a
        // reader still holding the old one never sees the new one's bytes through it.
        let _ = std::fs::remove_file(&path);
        if let Some(old) = self.segments.remove(&base) {
            self.add_bytes(-(old.bytes as i64));
        }
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(&header).map_err(io_err(&path))?;
        let _ = crate::durable::sync_dir(&self.dir);
        self.segments.insert(
            base,
            Segment {
                path,
                bytes: header.len() as u64,
                end: base,
                live: 0,
                sealed: cipher.is_some(),
            },
        );
        self.add_bytes(header.len() as i64);
        self.stats
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        self.active = Some(Active {
            base,
            file: f,
            cipher,
        });
        Ok(())
    }

    /// Lets the reader open the segment at `base` without asking the key service.
    fn cache_cipher(&self, base: u64, envelope: Vec<u8>, cipher: &Arc<SegmentCipher>) {
        self.published
            .ciphers
            .lock()
            .expect("cipher lock")
            .insert(base, (envelope, cipher.clone()));
    }

    /// A data key for the segment at `base`, the call counted.
    fn new_cipher(&self, key_id: &str, base: u64) -> Result<(SegmentCipher, Vec<u8>), KeyError> {
        let result = SegmentCipher::create(
            self.sealing.keys.as_ref(),
            key_id,
            &self.sealing.stream,
            base,
        );
        self.observer.key_call(result.as_ref().map(drop));
        result
    }

    /// Applies a new sealing setting: the next append opens a new segment under it.
    fn set_sealing(&mut self, key_id: Option<String>) -> Result<(), SpoolError> {
        self.sealing.key_id = key_id;
        self.active = None;
        self.collect_garbage();
        let sealed = if self.sealing.key_id.is_some() {
            self.seal_plain_segments()
        } else {
            Ok(())
        };
        self.publish();
        sealed
    }

    /// Rewrites every plain segment that still holds undelivered records as a sealed one
    /// (written aside, synced, renamed over the plain file). Delivered records are kept too: the
    /// last segment's highest seq is what recovery continues numbering from.
    fn seal_plain_segments(&mut self) -> Result<(), SpoolError> {
        let Some(key_id) = self.sealing.key_id.clone() else {
            return Ok(());
        };
        let active = self.active.as_ref().map(|a| a.base);
        let plain: Vec<u64> = self
            .segments
            .iter()
            .filter(|(base, s)| !s.sealed && s.live > 0 && Some(**base) != active)
            .map(|(b, _)| *b)
            .collect();
        for base in plain {
            let path = self.segments[&base].path.clone();
            let data = std::fs::read(&path).map_err(io_err(&path))?;
            let records = match read_header(&data) {
                Ok(h) if h.envelope.is_none() => scan_segment(&data, &h, None).records,
                _ => continue,
            };
            let (cipher, envelope) = self.new_cipher(&key_id, base).map_err(SpoolError::Key)?;
            let mut out = format::sealed_header(base, &envelope);
            for r in &records {
                encode_record(&mut out, r.seq, r.arrival_ms, &r.data, Some(&cipher));
            }
            crate::durable::write(&path, &out).map_err(io_err(&path))?;
            self.cache_cipher(base, envelope, &Arc::new(cipher));
            let seg = self.segments.get_mut(&base).expect("segment listed");
            let before = seg.bytes;
            seg.bytes = out.len() as u64;
            seg.sealed = true;
            self.add_bytes(out.len() as i64 - before as i64);
            tracing::info!(segment = %path.display(), "spool segment sealed at rest");
        }
        Ok(())
    }

    fn add_bytes(&self, delta: i64) {
        if delta >= 0 {
            self.stats.bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.stats
                .bytes
                .fetch_sub((-delta) as u64, Ordering::Relaxed);
        }
        self.observer.bytes_changed(delta);
    }

    fn append_group(&mut self, appends: Vec<PendingAppend>) {
        if self.closed {
            for (_, reply) in appends {
                let _ = reply.send(Err(SpoolError::Closed));
            }
            return;
        }
        let count: u64 = appends.iter().map(|(r, _)| r.len() as u64).sum();
        let needs_new = match &self.active {
            None => true,
            Some(a) => {
                // A sealed segment also rolls before its nonce counter runs out.
                (a.cipher.is_some() && self.next_seq + count - a.base > segment::MAX_RECORDS)
                    || self
                        .segments
                        .get(&a.base)
                        .is_none_or(|s| s.bytes >= self.segment_bytes)
            }
        };
        if needs_new {
            self.active = None;
            if let Err(e) = self.open_active() {
                for (_, reply) in appends {
                    let _ = reply.send(Err(clone_err(&e)));
                }
                return;
            }
        }
        let first_seq = self.next_seq;
        let mut buf = Vec::new();
        let mut seq = first_seq;
        let mut firsts = Vec::with_capacity(appends.len());
        let Active { base, file, cipher } = self.active.as_mut().expect("active segment is open");
        let base = *base;
        let sealed = cipher.is_some();
        for (records, _) in &appends {
            firsts.push(seq);
            for r in records {
                encode_record(&mut buf, seq, r.arrival_ms, &r.data, cipher.as_deref());
                seq += 1;
            }
        }
        let path = segment_path(&self.dir, base);
        let before = self.segments[&base].bytes;
        let started = Instant::now();
        let result = file.write_all(&buf).and_then(|()| match self.sync {
            SyncMode::Fsync => file.sync_data(),
            SyncMode::Os => Ok(()),
        });
        match result {
            Ok(()) => {
                if self.sync == SyncMode::Fsync {
                    self.observer.fsync(started.elapsed().as_secs_f64());
                }
                let seg = self
                    .segments
                    .get_mut(&base)
                    .expect("active segment is known");
                seg.bytes += buf.len() as u64;
                seg.live += seq - first_seq;
                seg.end = seq;
                self.next_seq = seq;
                self.add_bytes(buf.len() as i64);
                self.publish();
                for ((_, reply), first) in appends.into_iter().zip(firsts) {
                    let _ = reply.send(Ok((first, sealed)));
                }
            }
            Err(e) => {
                let err = io_err(&path)(e);
                tracing::warn!(error = %err, "spool append failed; the records are refused, nothing is acknowledged");
                // Leave no half-written record behind; if that fails too, start a new segment
                // (recovery moves a damaged one aside).
                if file.set_len(before).is_err() {
                    self.active = None;
                }
                for (_, reply) in appends {
                    let _ = reply.send(Err(clone_err(&err)));
                }
            }
        }
    }

    fn mark_delivered(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            if seq < self.low || !self.delivered.insert(seq) {
                continue;
            }
            if let Some((_, seg)) = self.segments.range_mut(..=seq).next_back()
                && seq < seg.end
            {
                seg.live = seg.live.saturating_sub(1);
            }
            self.dirty = true;
        }
    }

    /// Deletes every fully delivered segment but the active one.
    fn collect_garbage(&mut self) {
        let active = self.active.as_ref().map(|a| a.base);
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(base, s)| s.live == 0 && Some(**base) != active)
            .map(|(b, _)| *b)
            .collect();
        for base in done {
            let seg = self.segments.remove(&base).expect("segment listed");
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {
                    self.add_bytes(-(seg.bytes as i64));
                    self.published
                        .ciphers
                        .lock()
                        .expect("cipher lock")
                        .remove(&base);
                }
                Err(e) => {
                    tracing::warn!(segment = %seg.path.display(), error = %e, "cannot delete delivered spool segment");
                    self.segments.insert(base, seg);
                    continue;
                }
            }
            self.dirty = true;
        }
        let low = self
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq);
        if low > self.low {
            self.low = low;
            self.delivered.remove_below(low);
        }
        self.stats
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }

    fn write_checkpoint(&mut self) {
        let ckpt = Checkpoint {
            low: self.low,
            delivered: self.delivered.ranges().collect(),
        };
        let path = self.dir.join("checkpoint.json");
        match crate::durable::write(
            &path,
            &serde_json::to_vec(&ckpt).expect("checkpoint serialises"),
        ) {
            Ok(()) => {
                self.dirty = false;
                self.stats
                    .checkpointed_low
                    .store(self.low, Ordering::Relaxed);
            }
            // Not fatal: the records stay in the spool and are delivered again after a restart.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the spool checkpoint")
            }
        }
    }
}

/// Opens a sealed segment's envelope, waiting out a briefly unavailable key service (about 6 s)
/// before giving up.
fn open_sealed(
    sealing: &Sealing,
    observer: &dyn SpoolObserver,
    envelope: &[u8],
    base: u64,
) -> Result<SegmentCipher, OpenError> {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = SegmentCipher::open(sealing.keys.as_ref(), envelope, &sealing.stream, base);
        if let Err(OpenError::Key(e)) = &result {
            observer.key_call(Err(e));
            if matches!(e, KeyError::Unavailable(_)) && delay <= Duration::from_secs(4) {
                tracing::warn!(stream = %sealing.stream, base, error = %e, "key service unavailable while opening a sealed spool segment; retrying");
                std::thread::sleep(delay);
                delay *= 2;
                continue;
            }
        } else if result.is_ok() {
            observer.key_call(Ok(()));
        }
        return result;
    }
}

fn clone_err(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Full => SpoolError::Full,
        SpoolError::Closed => SpoolError::Closed,
        SpoolError::Log(m) => SpoolError::Log(m.clone()),
        SpoolError::Key(k) => SpoolError::Key(k.clone()),
        SpoolError::Unseal { path, message } => SpoolError::Unseal {
            path: path.clone(),
            message: message.clone(),
        },
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}

#[cfg(test)]
mod tests;
