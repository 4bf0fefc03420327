//! The spool's reader: hands a stream's records to its pipeline in seq order, read back from
//! the segments (the page cache, or the disk once the backlog outgrows it).
//!
//! It reads only what the writer has published as committed ([`super::Index`]): in the active
//! segment up to its committed length, in an older one to its end. It starts at the checkpoint's
//! lowest undelivered seq and skips the seqs the checkpoint says are delivered, so a restart is
//! the reader starting again, not a replay into memory. Each chunk (the records of one read of
//! up to 1 MiB, sharing its buffer) is handed on only once the memory budget has room for it, and only as fast as the pipeline's
//! first channel takes it: a backlog stays on disk, whatever its size.
//!
//! Damage met while reading (a record failing its checksum or its authentication) ends the
//! segment there: a copy goes to `corrupt/`, and the writer settles the records after the damage
//! as lost (counted) so the segment can still be deleted once the rest are delivered.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;

use super::format::{Frame, next_frame, read_header};
use super::{
    Cmd, Published, RangeSet, Sealing, SegmentCipher, SpoolObserver, SpoolStats, open_sealed,
    read_more, segment_path, set_aside,
};
use crate::buffer::{Owed, Record};

/// The memory budget the reader takes its chunks from.
pub trait ReadBudget: Send + Sync + 'static {
    /// Reserves `bytes` for records read from a spool, waiting up to `wait` for room; true once
    /// they are reserved. The pipeline releases them as the records settle.
    fn reserve(&self, bytes: u64, wait: Duration) -> bool;
    /// Gives back bytes reserved for records that were not handed on after all.
    fn release(&self, bytes: u64);
}

/// One read, and so one chunk of records handed on.
const CHUNK_BYTES: usize = 1 << 20;
/// What a record costs in the memory budget besides its bytes.
const RECORD_OVERHEAD: u64 = 24;

/// What `records` records of `bytes` bytes hold in memory while inside the stages: their bytes,
/// as much again for what they are encoded into (a compressed, converted or plain object's body,
/// held until it is written, retried through an outage), and their bookkeeping. Reserved when
/// the reader hands them on, released when they settle.
pub fn memory_cost(records: usize, bytes: u64) -> u64 {
    2 * bytes + RECORD_OVERHEAD * records as u64
}

/// The segment being read.
struct Cursor {
    base: u64,
    path: PathBuf,
    file: File,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Read and not yet parsed: at most the start of a frame not all read yet.
    buf: Vec<u8>,
    cipher: Option<Arc<SegmentCipher>>,
    /// The file has ended and, the segment no longer being active, nothing more will come.
    eof: bool,
    /// The last parse stopped at a frame not all in `buf`.
    partial: bool,
}

/// What one step of reading gave.
enum Step {
    Records(Vec<Record>),
    /// Moved on (to more bytes, or another segment): read again at once.
    Again,
    /// Everything committed is read: wait for the writer.
    Wait,
    /// Reading failed (I/O, or a data key the key service cannot give yet): try again later.
    Failed(String),
}

pub(super) struct Reader {
    dir: PathBuf,
    published: Arc<Published>,
    sealing: Sealing,
    observer: Arc<dyn SpoolObserver>,
    stats: Arc<SpoolStats>,
    /// The next seq wanted.
    seq: u64,
    /// Seqs delivered before the start (from the checkpoint): not handed on again.
    skip: RangeSet,
    cursor: Option<Cursor>,
    /// A segment left behind (damaged, or deleted): the next one read is the first after it.
    /// Otherwise the next is the one holding `seq`.
    after: Option<u64>,
}

impl Reader {
    pub(super) fn new(
        dir: &Path,
        published: Arc<Published>,
        sealing: Sealing,
        observer: Arc<dyn SpoolObserver>,
        stats: Arc<SpoolStats>,
        start: u64,
        skip: RangeSet,
    ) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            published,
            sealing,
            observer,
            stats,
            seq: start,
            skip,
            cursor: None,
            after: None,
        }
    }

    fn aborted(&self) -> bool {
        self.published.aborted.load(Ordering::Relaxed)
    }

    /// Reads until intake has stopped and everything is read, the pipeline is gone, or the
    /// spool closes. Dropping `ingest` at the end tells the pipeline no more records come.
    pub(super) fn run(
        mut self,
        ingest: tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: Arc<dyn ReadBudget>,
        writer: mpsc::Sender<Cmd>,
    ) {
        let mut failures = 0u32;
        while !self.aborted() {
            match self.step(&writer) {
                Step::Records(records) => {
                    failures = 0;
                    if !self.hand_on(records, &ingest, budget.as_ref()) {
                        break;
                    }
                }
                Step::Again => {}
                Step::Wait => {
                    self.stats
                        .oldest_unread_ms
                        .store(i64::MAX, Ordering::Relaxed);
                    let index = self.published.index.lock().expect("index lock");
                    if index.closed && self.seq >= index.next_seq {
                        break;
                    }
                    let _ = self
                        .published
                        .changed
                        .wait_timeout(index, Duration::from_millis(100));
                }
                Step::Failed(message) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(stream = %self.sealing.stream, seq = self.seq, error = %message, "cannot read the spool; its records wait there, retrying");
                    }
                    self.cursor = None;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        self.stats
            .oldest_unread_ms
            .store(i64::MAX, Ordering::Relaxed);
    }

    /// Waits for room in the budget, then for room in the pipeline's channel. False when the
    /// pipeline is gone or the spool closed: the records stay in the spool.
    fn hand_on(
        &self,
        mut records: Vec<Record>,
        ingest: &tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: &dyn ReadBudget,
    ) -> bool {
        // Each record carries what it holds of the budget until it settles.
        let mut cost = 0;
        for r in &mut records {
            r.owed = Owed::reserved(memory_cost(1, r.data.len() as u64));
            cost += r.owed.cost;
        }
        self.stats
            .oldest_unread_ms
            .store(records[0].arrival_ms, Ordering::Relaxed);
        while !budget.reserve(cost, Duration::from_millis(100)) {
            if self.aborted() {
                return false;
            }
        }
        let mut pending = records;
        loop {
            match ingest.try_send(pending) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) if !self.aborted() => {
                    pending = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => {
                    budget.release(cost);
                    return false;
                }
            }
        }
    }

    /// Finds the segment to read next, or says to wait for one.
    fn open_next(&mut self, writer: &mpsc::Sender<Cmd>) -> Result<(), Step> {
        let base = {
            let index = self.published.index.lock().expect("index lock");
            let found = match self.after {
                Some(after) => index.segments.range(after + 1..).next().map(|(b, _)| *b),
                None => index
                    .segments
                    .range(..=self.seq)
                    .next_back()
                    .map(|(b, _)| *b)
                    .filter(|b| index.end_of(*b) > self.seq)
                    .or_else(|| index.segments.range(self.seq + 1..).next().map(|(b, _)| *b)),
            };
            self.stats
                .unread_records
                .store(index.next_seq.saturating_sub(self.seq), Ordering::Relaxed);
            match found {
                Some(base) => base,
                None => {
                    if self.after.is_none() {
                        // No segment holds anything from here on.
                        self.seq = self.seq.max(index.next_seq);
                    }
                    return Err(Step::Wait);
                }
            }
        };
        self.seq = self.seq.max(base);
        self.after = None;
        let path = segment_path(&self.dir, base);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            // Deleted meanwhile: every record in it was delivered.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.after = Some(base);
                return Err(Step::Again);
            }
            Err(e) => return Err(Step::Failed(format!("{}: {e}", path.display()))),
        };
        let head = super::read_head_of(&mut file)
            .map_err(|e| Step::Failed(format!("{}: {e}", path.display())))?;
        let header = match read_header(&head) {
            Ok(h) => h,
            Err(_) => {
                self.damaged(base, &path, writer);
                return Err(Step::Again);
            }
        };
        let cipher = match &header.envelope {
            None => None,
            Some(range) => {
                let envelope = &head[range.clone()];
                let cached = self
                    .published
                    .ciphers
                    .lock()
                    .expect("cipher lock")
                    .get(&base)
                    .filter(|(e, _)| e == envelope)
                    .map(|(_, c)| c.clone());
                match cached {
                    Some(c) => Some(c),
                    None => {
                        match open_sealed(&self.sealing, self.observer.as_ref(), envelope, base) {
                            Ok(c) => Some(Arc::new(c)),
                            Err(crate::crypto::OpenError::Format(_)) => {
                                self.damaged(base, &path, writer);
                                return Err(Step::Again);
                            }
                            Err(e) => {
                                return Err(Step::Failed(format!(
                                    "sealed segment {} cannot be opened: {e}",
                                    path.display()
                                )));
                            }
                        }
                    }
                }
            }
        };
        file.seek(SeekFrom::Start(header.len as u64))
            .map_err(|e| Step::Failed(format!("{}: {e}", path.display())))?;
        self.cursor = Some(Cursor {
            base,
            path,
            file,
            offset: header.len as u64,
            buf: Vec::new(),
            cipher,
            eof: false,
            partial: false,
        });
        Ok(())
    }

    /// The segment at `base` is damaged: records from `self.seq` to its end cannot be read. A
    /// copy goes to `corrupt/`; the writer settles the rest as lost.
    fn damaged(&mut self, base: u64, path: &Path, writer: &mpsc::Sender<Cmd>) {
        let detail = format!("records from seq {} cannot be recovered", self.seq);
        if let Err(e) = set_aside(&self.dir, path, true, &detail) {
            // The records are settled as lost all the same; only the copy for inspection fails.
            tracing::error!(segment = %path.display(), error = %e, "{detail}; no copy could be made");
        }
        let _ = writer.send(Cmd::Damaged {
            base,
            from: self.seq,
        });
        self.cursor = None;
        self.after = Some(base);
    }

    /// Reads the next chunk of records.
    fn step(&mut self, writer: &mpsc::Sender<Cmd>) -> Step {
        if self.cursor.is_none()
            && let Err(step) = self.open_next(writer)
        {
            return step;
        }
        let (limit, end) = {
            let index = self.published.index.lock().expect("index lock");
            let base = self.cursor.as_ref().expect("a segment is open").base;
            self.stats
                .unread_records
                .store(index.next_seq.saturating_sub(self.seq), Ordering::Relaxed);
            let limit = (index.active == Some(base))
                .then(|| index.segments.get(&base).copied())
                .flatten();
            (limit, index.end_of(base))
        };
        let cur = self.cursor.as_mut().expect("a segment is open");
        let file_pos = cur.offset + cur.buf.len() as u64;
        // Read only what is missing for a chunk, or as much again when a frame did not fit:
        // bytes read far ahead would be moved again and again.
        let unparsed = cur.buf.len();
        let room = if cur.partial {
            unparsed.max(CHUNK_BYTES)
        } else {
            CHUNK_BYTES.saturating_sub(unparsed)
        };
        let want = match limit {
            Some(l) => (l.saturating_sub(file_pos) as usize).min(room),
            None => room,
        };
        let mut got = 0;
        if want > 0 && !cur.eof {
            let start = cur.buf.len();
            match read_more(&mut cur.file, want as u64, &mut cur.buf) {
                Ok(n) => {
                    got = n;
                    if n < want && limit.is_none() {
                        cur.eof = true;
                    }
                }
                Err(e) => {
                    // Where the file stands after a failed read is not known: read the segment
                    // again from its start (records already handed on are skipped by seq).
                    cur.buf.truncate(start);
                    return Step::Failed(format!("{}: {e}", cur.path.display()));
                }
            }
        }
        // The records of this read share its buffer; what is left is at most a frame's start.
        let data = bytes::Bytes::from(std::mem::take(&mut cur.buf));
        let mut pos = 0;
        let mut records = Vec::new();
        let mut finished = false;
        cur.partial = false;
        while pos < data.len() {
            match next_frame(&data, pos, cur.cipher.as_deref()) {
                Frame::Record(r, next) => {
                    pos = next;
                    if r.seq < self.seq {
                        continue;
                    }
                    self.seq = r.seq + 1;
                    if !self.skip.contains(r.seq) {
                        records.push(r);
                    }
                }
                Frame::Incomplete => {
                    // The rest of a finished segment is a write cut short.
                    finished = cur.eof;
                    cur.partial = true;
                    break;
                }
                Frame::Bad { last } => {
                    if last && limit.is_none() && !cur.eof {
                        // Whether anything follows is not known yet: read on first.
                        cur.partial = true;
                        break;
                    }
                    // Whether this is damage or a write cut short at the very end (which the
                    // writer could not undo) is told by whether records are missing.
                    finished = true;
                    break;
                }
            }
        }
        cur.buf = data[pos..].to_vec();
        cur.offset += pos as u64;
        if cur.buf.is_empty() && cur.eof {
            finished = true;
        }
        if !records.is_empty() {
            // A finished segment is left on the next step, after these are handed on.
            return Step::Records(records);
        }
        if finished {
            let (base, path) = (cur.base, cur.path.clone());
            if self.seq < end {
                self.damaged(base, &path, writer);
            } else {
                // On to the segment holding the next seq (a segment that held none and was
                // made again at the same base is read again).
                self.cursor = None;
            }
            return Step::Again;
        }
        if limit.is_some() && got == 0 {
            return Step::Wait;
        }
        Step::Again
    }
}
