//! The write-ahead spool: every accepted record is appended to its stream's spool, with a CRC32C,
//! and (in `fsync` mode) flushed to disk before the API answers. Concurrent appends share one
//! fsync (group commit). A segment file is deleted only when every record in it is delivered;
//! which records are delivered survives restarts in a checkpoint file (fsync + rename).
//!
//! Layout: `<dir>/seg-<base seq, 20 digits>.log`, `<dir>/checkpoint.json`, `<dir>/corrupt/`.
//! Segment: header `HPSPOOL\x01` + base seq (u64 LE), then records
//! `len u32 | crc32c(payload) u32 | payload = seq u64 | arrival_ms i64 | data` (little-endian).
//!
//! All file I/O runs on one thread per stream; the async side talks to it over a channel.

mod format;
mod ranges;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::buffer::Record;
pub use format::{HEADER_LEN, MAGIC, ScanEnd, encode_record, scan_segment};
pub use ranges::RangeSet;

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
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Undelivered records, in spool order, with their original arrival time and seq.
    pub records: Vec<Record>,
    /// Undelivered records read from a corrupt segment before its damage. Their segment is no
    /// longer in the spool: append them again before acknowledging anything else.
    pub salvaged: Vec<Record>,
    /// Bytes cut off the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Segments moved to `corrupt/`.
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
}

/// Records waiting for the next group commit, and whom to tell their first seq.
type PendingAppend = (Vec<Record>, oneshot::Sender<Result<u64, SpoolError>>);

enum Cmd {
    Append {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    Delivered(Vec<u64>),
    Close(oneshot::Sender<()>),
}

/// One stream's spool.
pub struct Spool {
    tx: mpsc::Sender<Cmd>,
    pub stats: Arc<SpoolStats>,
    dir: PathBuf,
}

/// Observes spool events (metrics live outside this module).
pub trait SpoolObserver: Send + Sync + 'static {
    fn fsync(&self, seconds: f64);
    fn bytes_changed(&self, delta: i64);
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovers what is there, and starts its writer.
    pub fn open(
        dir: &Path,
        settings: &SpoolSettings,
        observer: Arc<dyn SpoolObserver>,
    ) -> Result<(Spool, Recovery), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (writer, recovery) = Writer::recover(dir, settings, observer)?;
        let stats = writer.stats.clone();
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
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends records durably and gives each its seq. Returns once they are on disk (in
    /// `fsync` mode) or in the page cache (`os` mode).
    pub async fn append(&self, records: &mut [Record]) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                records: records.to_vec(),
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        let first = rx.await.map_err(|_| SpoolError::Closed)??;
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = first + i as u64;
        }
        Ok(())
    }

    /// Marks records as delivered (or written to the error output).
    pub fn delivered(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            let _ = self.tx.send(Cmd::Delivered(seqs));
        }
    }

    /// Writes the checkpoint and stops the writer.
    pub async fn close(&self) {
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
    /// The segment appends go to: base seq and open file.
    active: Option<(u64, File)>,
    delivered: RangeSet,
    low: u64,
    next_seq: u64,
    dirty: bool,
    stats: Arc<SpoolStats>,
    observer: Arc<dyn SpoolObserver>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("seg-{base:020}.log"))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Writer {
    fn recover(
        dir: &Path,
        settings: &SpoolSettings,
        observer: Arc<dyn SpoolObserver>,
    ) -> Result<(Writer, Recovery), SpoolError> {
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
        let mut next_seq = checkpoint.low;
        let last_index = bases.len().saturating_sub(1);
        for (i, (base, path)) in bases.into_iter().enumerate() {
            let data = std::fs::read(&path).map_err(io_err(&path))?;
            let scan = scan_segment(&data);
            let mut keep_len = data.len() as u64;
            match scan.end {
                ScanEnd::Clean => {}
                ScanEnd::Torn { at } if i == last_index => {
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
                ScanEnd::Torn { at } | ScanEnd::Corrupt { at } => {
                    let aside = dir.join("corrupt");
                    std::fs::create_dir_all(&aside).map_err(io_err(&aside))?;
                    let target = aside.join(path.file_name().expect("segment has a name"));
                    std::fs::rename(&path, &target).map_err(io_err(&path))?;
                    tracing::error!(segment = %path.display(), moved_to = %target.display(), at, salvaged = scan.records.len(), "corrupt spool segment moved aside; records after the damage cannot be recovered");
                    recovery.corrupt_segments.push(target);
                }
            }
            let moved = matches!(scan.end, ScanEnd::Corrupt { .. })
                || (matches!(scan.end, ScanEnd::Torn { .. }) && i != last_index);
            let mut live = 0;
            let mut end = base;
            for r in scan.records {
                next_seq = next_seq.max(r.seq + 1);
                end = end.max(r.seq + 1);
                if r.seq >= checkpoint.low && !delivered.contains(r.seq) {
                    if moved {
                        recovery.salvaged.push(r);
                    } else {
                        live += 1;
                        recovery.records.push(r);
                    }
                }
            }
            if scan.header_base.is_none() && !moved && keep_len <= HEADER_LEN as u64 {
                // An empty segment (created, never written): drop it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            next_seq = next_seq.max(base);
            if !moved {
                segments.insert(
                    base,
                    Segment {
                        path,
                        bytes: keep_len,
                        end,
                        live,
                    },
                );
            }
        }
        let stats = Arc::new(SpoolStats::default());
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            sync: settings.sync,
            segment_bytes: settings.segment_bytes,
            segments,
            active: None,
            delivered,
            low: checkpoint.low,
            next_seq,
            dirty: true,
            stats,
            observer,
        };
        let total: u64 = writer.segments.values().map(|s| s.bytes).sum();
        writer.stats.bytes.store(total, Ordering::Relaxed);
        writer.observer.bytes_changed(total as i64);
        writer
            .stats
            .segments
            .store(writer.segments.len() as u64, Ordering::Relaxed);
        writer.collect_garbage();
        writer.write_checkpoint();
        Ok((writer, recovery))
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
                last_checkpoint = Instant::now();
            }
            if let Some(done) = close {
                // Nothing more will be appended: the active segment may go too if delivered.
                self.active = None;
                self.collect_garbage();
                self.write_checkpoint();
                let _ = done.send(());
                return;
            }
        }
        self.collect_garbage();
        self.write_checkpoint();
    }

    fn open_active(&mut self) -> Result<(), SpoolError> {
        let base = self.next_seq;
        let path = segment_path(&self.dir, base);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&base.to_le_bytes());
        f.write_all(&header).map_err(io_err(&path))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.segments.insert(
            base,
            Segment {
                path,
                bytes: HEADER_LEN as u64,
                end: base,
                live: 0,
            },
        );
        self.add_bytes(HEADER_LEN as i64);
        self.stats
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        self.active = Some((base, f));
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
        let needs_new = match &self.active {
            None => true,
            Some((base, _)) => self
                .segments
                .get(base)
                .is_none_or(|s| s.bytes >= self.segment_bytes),
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
        for (records, _) in &appends {
            firsts.push(seq);
            for r in records {
                encode_record(&mut buf, seq, r.arrival_ms, &r.data);
                seq += 1;
            }
        }
        let (base, file) = self.active.as_mut().expect("active segment is open");
        let base = *base;
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
                for ((_, reply), first) in appends.into_iter().zip(firsts) {
                    let _ = reply.send(Ok(first));
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
        let active = self.active.as_ref().map(|(b, _)| *b);
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(base, s)| s.live == 0 && Some(**base) != active)
            .map(|(b, _)| *b)
            .collect();
        for base in done {
            let seg = self.segments.remove(&base).expect("segment listed");
            match std::fs::remove_file(&seg.path) {
                Ok(()) => self.add_bytes(-(seg.bytes as i64)),
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
        match write_atomically(
            &path,
            &serde_json::to_vec(&ckpt).expect("checkpoint serialises"),
        ) {
            Ok(()) => self.dirty = false,
            // Not fatal: the records stay in the spool and are delivered again after a restart.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the spool checkpoint")
            }
        }
    }
}

fn clone_err(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Full => SpoolError::Full,
        SpoolError::Closed => SpoolError::Closed,
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}

#[cfg(test)]
mod tests;
