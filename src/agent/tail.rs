//! Tailing the files of one flow: the glob is re-read on every poll, each file is followed by
//! its identity (device + inode, checked against a fingerprint of its first bytes), so
//!
//! - rename-and-create rotation keeps reading the renamed file to its end and starts the new
//!   one from its first byte;
//! - copytruncate is seen as the original shrinking (or its first bytes changing), and the copy
//!   — a new inode with the same fingerprint — is read from the offset already sent, so the
//!   lines written between the last poll and the copy are not lost and nothing is read twice;
//! - a truncated file (no copy) starts again at 0; a deleted and recreated file that reuses the
//!   inode is told apart by its fingerprint;
//! - an unfinished last line (or multi-line record) waits for its end, and is sent as it is once
//!   it has waited the flush age.
//!
//! Lines become records here (header lines skipped, multi-line records joined, over-long ones
//! truncated with the terminator); each record carries the file offset just after it, which is
//! what a checkpoint stores.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::{Checkpoints, Entry, FINGERPRINT_BYTES, FileId, Fingerprint};
use super::config::{Flow, InitialPosition};
use crate::producer::MAX_RECORD_BYTES;

/// Copies are matched by fingerprint only when at least this many bytes are compared: two
/// different short files can start alike.
const MIN_COPY_FINGERPRINT: u32 = 64;
/// Bytes read per file per poll; the rest waits for the next poll.
const READ_PER_POLL: usize = 8 * 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Extensions of compressed files, which the Kinesis Agent ignores too.
const COMPRESSED: &[&str] = &["gz", "bz2", "zip", "xz", "zst"];

/// One record, ready for the processing options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub data: Vec<u8>,
    pub file: FileId,
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    /// The file offset just after this record.
    pub end: u64,
}

/// A file's place, for the status line and the lag gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub path: PathBuf,
    pub id: FileId,
    pub size: u64,
    pub read: u64,
    /// Where following began (what comes before was never to be sent).
    pub start: u64,
}

struct Tracked {
    id: FileId,
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// Bytes read from the file so far.
    offset: u64,
    /// Where following began (the lag gauge counts from here until a checkpoint exists).
    start: u64,
    /// Where the record being assembled (`current`, then `partial`) starts.
    record_start: u64,
    /// Bytes after the last newline read.
    partial: Vec<u8>,
    /// Complete lines of a multi-line record not yet known to be finished.
    current: Vec<u8>,
    /// Since when `partial` / `current` have waited.
    waiting_since: Option<Instant>,
    /// Dropping the rest of a line longer than a record can be.
    discarding: bool,
    lines: u64,
    footer_seen: bool,
    in_glob: bool,
    idle_since: Option<Instant>,
    /// A copy of a followed file, seen while that file is still intact: not read (the
    /// original gives the same bytes) until the original is truncated (copytruncate), then
    /// read from where the original was.
    shadow_of: Option<FileId>,
    size: u64,
    /// Modification time, in nanoseconds since the epoch.
    mtime: i128,
}

/// What one poll saw: records are handed to `emit`, which may refuse (shutdown), and the
/// files' places are returned.
pub struct Tailer {
    flow: Arc<Flow>,
    files: Vec<Tracked>,
    first_scan: bool,
    start_at_end: bool,
    flush_age: Duration,
    /// Checkpointed offsets known at start, by file identity.
    resume: HashMap<FileId, (Fingerprint, u64)>,
    /// Files skipped to their end on the first scan (END_OF_FILE), to be checkpointed there:
    /// a restart must not read them from the start as files it has never seen.
    skipped: Vec<Entry>,
}

fn fingerprint_at(file: &File, len: usize) -> std::io::Result<Fingerprint> {
    let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES)];
    let mut got = 0;
    while got < buf.len() {
        let n = file.read_at(&mut buf[got..], got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Fingerprint::of(&buf[..got]))
}

/// Cuts a record longer than Firehose takes to the limit, ending it with `terminator`
/// (`truncatedRecordTerminator`).
pub fn clip(mut data: Vec<u8>, terminator: &[u8]) -> Vec<u8> {
    if data.len() > MAX_RECORD_BYTES {
        data.truncate(MAX_RECORD_BYTES.saturating_sub(terminator.len()));
        data.extend_from_slice(terminator);
    }
    data
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

struct Candidate {
    path: PathBuf,
    id: FileId,
    size: u64,
}

impl Tailer {
    pub fn new(flow: Arc<Flow>, checkpoints: &Checkpoints) -> Self {
        let start_at_end = flow.initial_position == InitialPosition::EndOfFile
            && !checkpoints.knows_flow(&flow.id);
        let resume = checkpoints
            .entries(&flow.id)
            .map(|e| (e.id, (e.fingerprint, e.offset)))
            .collect();
        let flush_age = flow.max_buffer_age.min(Duration::from_secs(5));
        Tailer {
            flow,
            files: Vec::new(),
            first_scan: true,
            start_at_end,
            flush_age,
            resume,
            skipped: Vec::new(),
        }
    }

    fn scan(&self) -> Vec<Candidate> {
        let Ok(paths) = glob::glob(&self.flow.file_pattern) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for path in paths.flatten() {
            if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| COMPRESSED.contains(&e))
            {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            out.push(Candidate {
                path,
                id: FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
                size: meta.len(),
            });
        }
        out
    }

    fn track(&self, c: &Candidate, offset: u64) -> Option<Tracked> {
        let file = File::open(&c.path).ok()?;
        // The handle, not the path: the path may already name another file.
        let meta = file.metadata().ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let offset = offset.min(meta.len());
        let fingerprint = fingerprint_at(&file, offset.max(meta.len()) as usize).ok()?;
        Some(Tracked {
            id,
            path: c.path.clone(),
            file,
            fingerprint,
            offset,
            start: offset,
            record_start: offset,
            partial: Vec::new(),
            current: Vec::new(),
            waiting_since: None,
            discarding: false,
            lines: if offset > 0 {
                self.flow.skip_header_lines
            } else {
                0
            },
            footer_seen: false,
            in_glob: true,
            idle_since: None,
            shadow_of: None,
            size: meta.len(),
            mtime: mtime_ns(&meta),
        })
    }

    /// One pass: finds new, rotated and truncated files, reads what was appended, and hands
    /// each finished record to `emit`. Returns false when `emit` refused one (stop).
    pub fn poll(&mut self, emit: &mut dyn FnMut(Record) -> bool) -> bool {
        let candidates = self.scan();
        for t in &mut self.files {
            t.in_glob = false;
            if let Some(c) = candidates.iter().find(|c| c.id == t.id) {
                t.in_glob = true;
                t.path = c.path.clone();
            }
        }
        // Files that shrank or whose first bytes changed: truncated (or copied and
        // truncated). Their unread tail may be in a copy among the new files.
        let mut adopted: Vec<Tracked> = Vec::new();
        for i in 0..self.files.len() {
            let Some(reset) = self.check_truncation(i) else {
                continue;
            };
            let orig_id = self.files[i].id;
            let (start, orig_mtime) = (self.files[i].record_start, self.files[i].mtime);
            if let Some(shadow) = self.files.iter_mut().find(|s| s.shadow_of == Some(orig_id)) {
                shadow.shadow_of = None;
                shadow.offset = start.min(shadow.size);
                shadow.start = shadow.offset;
                shadow.record_start = shadow.offset;
                // Read before the original's new lines.
                shadow.mtime = orig_mtime - 1;
                tracing::info!(flow = %self.flow.id, copy = %shadow.path.display(),
                    offset = shadow.offset,
                    "copytruncate: reading the copy from where the original was");
                self.reset(i);
                continue;
            }
            let t = &self.files[i];
            let copy = candidates.iter().find(|c| {
                !self.files.iter().any(|t| t.id == c.id)
                    && !adopted.iter().any(|a| a.id == c.id)
                    && reset.len >= MIN_COPY_FINGERPRINT
                    && c.size >= t.record_start
                    && File::open(&c.path)
                        .and_then(|f| fingerprint_at(&f, reset.len as usize))
                        .is_ok_and(|fp| fp == reset)
            });
            match copy.and_then(|c| self.track(c, self.files[i].record_start)) {
                Some(mut copy) => {
                    tracing::info!(flow = %self.flow.id, from = %self.files[i].path.display(),
                        copy = %copy.path.display(), offset = copy.offset,
                        "copytruncate: reading the copy from where the original was");
                    copy.lines = self.files[i].lines;
                    copy.mtime = orig_mtime - 1;
                    adopted.push(copy);
                }
                None => {
                    tracing::info!(flow = %self.flow.id, file = %self.files[i].path.display(),
                        "truncated: reading it again from the start");
                    // What was read before the truncation is real data: send it.
                    if !self.flush(i, emit) {
                        return false;
                    }
                }
            }
            self.reset(i);
        }
        self.files.extend(adopted);
        // New files: a copy of a followed file starts where that file is; a checkpointed one
        // where it was; on the very first scan of a new flow with END_OF_FILE, at the end;
        // anything else from its first byte.
        for c in &candidates {
            if self.files.iter().any(|t| t.id == c.id) {
                continue;
            }
            let copy_of = self.files.iter().find(|t| {
                t.fingerprint.len >= MIN_COPY_FINGERPRINT
                    && c.size >= t.record_start
                    && File::open(&c.path)
                        .and_then(|f| fingerprint_at(&f, t.fingerprint.len as usize))
                        .is_ok_and(|fp| fp == t.fingerprint)
            });
            let shadow_of = copy_of.map(|orig| orig.id);
            let offset = if let Some(orig) = copy_of {
                orig.record_start
            } else if let Some((fp, off)) = self.resume.get(&c.id).copied()
                && File::open(&c.path)
                    .and_then(|f| fingerprint_at(&f, fp.len as usize))
                    .is_ok_and(|now| now == fp)
            {
                off
            } else if let Some(off) = self.resumed_copy(c) {
                // Copied (copytruncate) while the agent was stopped.
                off
            } else if self.first_scan && self.start_at_end {
                c.size
            } else {
                0
            };
            let skipped_to_end = self.first_scan && self.start_at_end && offset == c.size;
            if let Some(mut t) = self.track(c, offset) {
                if skipped_to_end {
                    self.skipped.push(Entry {
                        path: t.path.clone(),
                        id: t.id,
                        fingerprint: t.fingerprint,
                        offset: t.offset,
                        updated: 0,
                    });
                }
                t.shadow_of = shadow_of;
                tracing::info!(flow = %self.flow.id, file = %t.path.display(), offset = t.offset,
                    copy = shadow_of.is_some(), "following");
                self.files.push(t);
            }
        }
        self.first_scan = false;
        // Oldest first, so a rotated file is finished before its successor.
        // (Stable: on equal times, the order they were found in.)
        self.files.sort_by_key(|t| t.mtime);
        for i in 0..self.files.len() {
            if !self.read(i, emit) {
                return false;
            }
        }
        // Files gone from the glob (renamed away, deleted) are dropped once drained and idle.
        let mut keep = Vec::with_capacity(self.files.len());
        for t in std::mem::take(&mut self.files) {
            let idle = t.idle_since.is_some_and(|s| s.elapsed() >= self.flush_age);
            if !t.in_glob && idle && t.partial.is_empty() && t.current.is_empty() {
                tracing::info!(flow = %self.flow.id, file = %t.path.display(),
                    "no longer matched and fully read: closing");
                continue;
            }
            keep.push(t);
        }
        self.files = keep;
        true
    }

    /// File `i` was truncated: follow it again from its first byte.
    fn reset(&mut self, i: usize) {
        let t = &mut self.files[i];
        t.offset = 0;
        t.start = 0;
        t.record_start = 0;
        t.partial.clear();
        t.current.clear();
        t.waiting_since = None;
        t.discarding = false;
        t.lines = 0;
        t.footer_seen = false;
        t.fingerprint = Fingerprint::default();
    }

    /// Whether file `i`, a copy of a file still followed and intact, is to be skipped; once
    /// the original has been read past the copy's end, the copy is an ordinary file at its end.
    fn shadowed(&mut self, i: usize) -> bool {
        let Some(orig) = self.files[i].shadow_of else {
            return false;
        };
        let orig_offset = self.files.iter().find(|t| t.id == orig).map(|t| t.offset);
        let t = &mut self.files[i];
        match orig_offset {
            Some(read) if read < t.size => true,
            Some(_) => {
                t.offset = t.size;
                t.start = t.size;
                t.record_start = t.size;
                t.shadow_of = None;
                false
            }
            None => {
                t.shadow_of = None;
                false
            }
        }
    }

    /// The checkpointed offset of another file whose first bytes this one repeats.
    fn resumed_copy(&self, c: &Candidate) -> Option<u64> {
        let file = File::open(&c.path).ok()?;
        self.resume.iter().find_map(|(id, (fp, off))| {
            (*id != c.id
                && fp.len >= MIN_COPY_FINGERPRINT
                && c.size >= *off
                && fingerprint_at(&file, fp.len as usize).is_ok_and(|now| now == *fp))
            .then_some(*off)
        })
    }

    /// `Some(fingerprint before)` when file `i` shrank below what was read or its first bytes
    /// changed.
    fn check_truncation(&mut self, i: usize) -> Option<Fingerprint> {
        let t = &mut self.files[i];
        let meta = t.file.metadata().ok()?;
        t.size = meta.len();
        t.mtime = mtime_ns(&meta);
        let before = t.fingerprint;
        if meta.len() < t.offset {
            return Some(before);
        }
        if before.len > 0 {
            let now = fingerprint_at(&t.file, before.len as usize).ok()?;
            if now != before {
                return Some(before);
            }
        }
        None
    }

    fn read(&mut self, i: usize, emit: &mut dyn FnMut(Record) -> bool) -> bool {
        if self.shadowed(i) {
            return true;
        }
        let mut budget = READ_PER_POLL;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut got_any = false;
        while budget > 0 && !self.files[i].footer_seen {
            let t = &mut self.files[i];
            let n = match t.file.read_at(&mut buf, t.offset) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(file = %t.path.display(), error = %e, "read failed");
                    0
                }
            };
            if n == 0 {
                break;
            }
            got_any = true;
            budget = budget.saturating_sub(n);
            if (t.fingerprint.len as usize) < FINGERPRINT_BYTES {
                let upto = (t.offset as usize + n).min(FINGERPRINT_BYTES);
                if let Ok(fp) = fingerprint_at(&t.file, upto) {
                    t.fingerprint = fp;
                }
            }
            if !self.consume(i, &buf[..n], emit) {
                return false;
            }
        }
        let t = &mut self.files[i];
        if got_any {
            t.idle_since = None;
        } else if t.idle_since.is_none() {
            t.idle_since = Some(Instant::now());
        }
        // An unfinished line or multi-line record is sent once it has waited long enough, or
        // at once when its file has left the glob and stopped growing.
        let waited = t
            .waiting_since
            .is_some_and(|s| s.elapsed() >= self.flush_age);
        if waited || (!t.in_glob && !got_any) {
            return self.flush(i, emit);
        }
        true
    }

    /// Sends whatever file `i` holds back (multi-line record, unfinished line).
    fn flush(&mut self, i: usize, emit: &mut dyn FnMut(Record) -> bool) -> bool {
        let t = &mut self.files[i];
        let mut data = std::mem::take(&mut t.current);
        data.append(&mut t.partial);
        t.waiting_since = None;
        if data.is_empty() {
            return true;
        }
        t.record_start = t.offset;
        let end = t.offset;
        self.emit_at(i, data, end, emit)
    }

    /// Splits `bytes` (the next bytes of file `i`) into lines and lines into records.
    fn consume(&mut self, i: usize, bytes: &[u8], emit: &mut dyn FnMut(Record) -> bool) -> bool {
        let mut rest = bytes;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line_part, tail) = rest.split_at(nl + 1);
            rest = tail;
            let t = &mut self.files[i];
            t.offset += line_part.len() as u64;
            if t.discarding {
                t.discarding = false;
                t.partial.clear();
                t.record_start = t.offset;
                continue;
            }
            let line = if t.partial.is_empty() {
                line_part.to_vec()
            } else {
                let mut l = std::mem::take(&mut t.partial);
                l.extend_from_slice(line_part);
                l
            };
            if !self.line(i, line, emit) {
                return false;
            }
            if self.files[i].footer_seen {
                return true;
            }
        }
        if !rest.is_empty() {
            let t = &mut self.files[i];
            t.offset += rest.len() as u64;
            if !t.discarding {
                t.partial.extend_from_slice(rest);
                t.waiting_since.get_or_insert_with(Instant::now);
                if t.partial.len() > MAX_RECORD_BYTES {
                    // A line longer than a record: send its first part, drop up to its end.
                    let data = std::mem::take(&mut t.partial);
                    t.discarding = true;
                    return self.flush_with(i, data, emit);
                }
            }
        }
        true
    }

    fn flush_with(
        &mut self,
        i: usize,
        data: Vec<u8>,
        emit: &mut dyn FnMut(Record) -> bool,
    ) -> bool {
        let t = &mut self.files[i];
        t.waiting_since = None;
        t.record_start = t.offset;
        let end = t.offset;
        self.emit_at(i, data, end, emit)
    }

    /// One complete line (with its newline) of file `i`; `self.files[i].offset` is just after it.
    fn line(&mut self, i: usize, line: Vec<u8>, emit: &mut dyn FnMut(Record) -> bool) -> bool {
        let flow = self.flow.clone();
        let t = &mut self.files[i];
        t.lines += 1;
        let line_start = t.offset - line.len() as u64;
        if t.lines <= flow.skip_header_lines {
            t.record_start = t.offset;
            return true;
        }
        let text = || String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        if let Some(footer) = &flow.file_footer
            && footer.is_match(&text())
        {
            t.footer_seen = true;
            let data = std::mem::take(&mut t.current);
            return data.is_empty() || self.emit_at(i, data, line_start, emit);
        }
        let Some(start) = &flow.multi_line_start else {
            t.waiting_since = None;
            t.record_start = t.offset;
            let end = t.offset;
            return self.emit_at(i, line, end, emit);
        };
        if start.is_match(&text()) && !t.current.is_empty() {
            let data = std::mem::take(&mut t.current);
            t.current = line;
            t.waiting_since = Some(Instant::now());
            let ok = self.emit_at(i, data, line_start, emit);
            self.files[i].record_start = line_start;
            return ok;
        }
        if t.current.is_empty() {
            t.record_start = line_start;
        }
        t.current.extend_from_slice(&line);
        t.waiting_since.get_or_insert_with(Instant::now);
        if t.current.len() > MAX_RECORD_BYTES {
            let data = std::mem::take(&mut t.current);
            let end = t.offset;
            t.record_start = end;
            return self.emit_at(i, data, end, emit);
        }
        true
    }

    fn emit_at(
        &mut self,
        i: usize,
        data: Vec<u8>,
        end: u64,
        emit: &mut dyn FnMut(Record) -> bool,
    ) -> bool {
        let data = clip(data, &self.flow.truncated_record_terminator);
        let t = &self.files[i];
        emit(Record {
            data,
            file: t.id,
            path: t.path.clone(),
            fingerprint: t.fingerprint,
            end,
        })
    }

    /// The files the first scan skipped to their end (taken once).
    pub fn take_skipped(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.skipped)
    }

    /// Where each followed file is.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|t| FileStatus {
                path: t.path.clone(),
                id: t.id,
                size: t.size.max(t.offset),
                read: t.offset,
                start: t.start,
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
