//! The object journal: what makes a stream's objects exactly-once across crashes.
//!
//! Before an object is uploaded, the records it holds (each by its spool seq and part), the
//! keys it may be stored under (its key, and its error-output key past the retention age) and
//! what it is (a batch's records, or failed-record documents with their reasons) are appended
//! to the stream's journal and made durable. Once its records have settled, a `Done` mark
//! follows (not synced: it only spares a question after a crash). After a crash, recovery asks
//! the bucket whether each object without a mark exists. The records of one that exists are
//! settled when the spool reader hands them on again, never batched a second time. One that
//! does not exist may still be on its way (an upload the crash cut off after the server had its
//! body), so it is made again from exactly its records and written under the same key: whichever
//! write lands last, the object holds those records once. A journaled object is forgotten once
//! the spool's checkpoint has moved past every record in it.
//!
//! Layout: `<spool dir>/objects.journal`: `HPJRNL\x01`, then frames of `length: u32 LE,
//! crc32c: u32 LE, payload` (postcard). The scan stops at the first torn or damaged frame and
//! ignores what follows: the objects named there may be written again, a duplicate, never a
//! loss. The file is rewritten (`durable::write`) with only the live entries when it has grown.
//!
//! API Boundary: the file format, which a newer hosepipe must still read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The journal's file name in a stream's spool directory.
pub const FILE_NAME: &str = "objects.journal";
const MAGIC: &[u8; 7] = b"HPJRNL\x01";
/// A frame's header: length and CRC32C of its payload.
const FRAME_HEADER: usize = 8;
/// No frame is larger (an object's item list is a few bytes per record).
const MAX_FRAME: usize = 64 << 20;
/// The file is rewritten once it is this large and more than half of it is retired.
const COMPACT_BYTES: u64 = 1 << 20;
/// The file's space is allocated this much at a time, ahead of the frames: a frame written
/// inside it leaves the file's size as it was, so syncing it flushes data and no metadata.
const ALLOCATE_BYTES: u64 = 1 << 20;

/// One record in an object: its spool seq, and which of the records the processors made from
/// it (0: the record as it arrived; 1..: the processors' outputs, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    pub seq: u64,
    pub part: u32,
}

/// An object about to be uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub id: u64,
    pub bucket: String,
    /// The keys it may be stored under: its key, then its error-output key.
    pub keys: Vec<String>,
    /// Stored envelope-encrypted (the stored name carries the envelope's suffix).
    pub encrypted: bool,
    /// Its records, in (seq, part) order.
    pub items: Vec<Item>,
    pub kind: Kind,
}

/// What an object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A batch's records, encoded as the stream encodes them.
    Records,
    /// Failed-record documents of `error_type`, the attempt ending at `attempt_ending_ms`;
    /// why each record failed, in item order, as runs of (count, why).
    Failed {
        error_type: String,
        attempt_ending_ms: i64,
        why: Vec<(u32, Why)>,
    },
}

/// Why a record is in the error output, as its document says (`catalog_table` and `extra` as
/// JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub attempts: u32,
    pub code: String,
    pub message: String,
    pub lambda_arn: Option<String>,
    pub catalog_table: Option<String>,
    pub extra: Option<String>,
}

impl Kind {
    /// `Failed` with one `Why` per item, in item order, as runs.
    pub fn failed(error_type: &str, attempt_ending_ms: i64, whys: Vec<Why>) -> Kind {
        let mut why: Vec<(u32, Why)> = Vec::new();
        for w in whys {
            match why.last_mut() {
                Some((n, last)) if *last == w => *n += 1,
                _ => why.push((1, w)),
            }
        }
        Kind::Failed {
            error_type: error_type.to_string(),
            attempt_ending_ms,
            why,
        }
    }
}

impl Intent {
    fn max_seq(&self) -> u64 {
        self.items.last().map_or(0, |i| i.seq)
    }
}

/// A frame's payload.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
enum Event {
    /// An object about to be uploaded; items as (seq − previous seq, part), sorted.
    Intent {
        id: u64,
        bucket: String,
        keys: Vec<String>,
        encrypted: bool,
        items: Vec<(u64, u32)>,
        kind: Kind,
    },
    /// The object's records have settled.
    Done { id: u64 },
}

impl Event {
    fn intent(intent: &Intent) -> Event {
        let mut previous = 0;
        let items = intent
            .items
            .iter()
            .map(|i| {
                let delta = i.seq - previous;
                previous = i.seq;
                (delta, i.part)
            })
            .collect();
        Event::Intent {
            id: intent.id,
            bucket: intent.bucket.clone(),
            keys: intent.keys.clone(),
            encrypted: intent.encrypted,
            items,
            kind: intent.kind.clone(),
        }
    }
}

/// An entry as the scan found it: the intent, and whether its `Done` mark followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub intent: Intent,
    pub done: bool,
}

/// Reads a journal file's bytes: every entry up to the first torn or damaged frame, and how
/// many bytes were whole. Never fails; a file without the magic holds nothing.
pub fn scan(bytes: &[u8]) -> (Vec<Found>, usize) {
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    if !bytes.starts_with(MAGIC) {
        return (Vec::new(), 0);
    }
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            break;
        }
        let Some(payload) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Event>(payload) {
            Ok(Event::Intent {
                id,
                bucket,
                keys,
                encrypted,
                items,
                kind,
            }) => {
                let mut seq = 0u64;
                let mut decoded = Vec::with_capacity(items.len());
                for (delta, part) in items {
                    seq = seq.saturating_add(delta);
                    decoded.push(Item { seq, part });
                }
                let intent = Intent {
                    id,
                    bucket,
                    keys,
                    encrypted,
                    items: decoded,
                    kind,
                };
                found.insert(
                    id,
                    Found {
                        intent,
                        done: false,
                    },
                );
            }
            Ok(Event::Done { id }) => {
                if let Some(f) = found.get_mut(&id) {
                    f.done = true;
                }
            }
            Err(_) => break,
        }
        at += FRAME_HEADER + len;
    }
    (found.into_values().collect(), at)
}

fn frame(event: &Event) -> Vec<u8> {
    let payload = postcard::to_allocvec(event).expect("journal events serialise");
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A journaled object not yet forgotten.
struct Live {
    max_seq: u64,
    /// Its intent's frame.
    frame: Vec<u8>,
    done: bool,
}

struct Inner {
    file: File,
    /// Where the next frame goes: the end of the last whole one (zeros follow, to `allocated`).
    bytes: u64,
    allocated: u64,
    next_id: u64,
    live: BTreeMap<u64, Live>,
    live_bytes: u64,
}

impl Inner {
    /// Writes a frame after the last one, allocating the file's space ahead when it runs out
    /// (where the file system cannot, the write grows the file instead).
    fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        let end = self.bytes + frame.len() as u64;
        if end > self.allocated {
            let want = end.div_ceil(ALLOCATE_BYTES) * ALLOCATE_BYTES;
            if rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, want)
                .is_ok()
            {
                self.allocated = want;
            }
        }
        std::os::unix::fs::FileExt::write_all_at(&self.file, frame, self.bytes)?;
        self.bytes = end;
        Ok(())
    }
}

/// One stream's object journal. Its methods block (file I/O): call them off the async threads.
pub struct Journal {
    path: PathBuf,
    /// `fdatasync` each intent before its upload (`spool.sync = "fsync"`).
    sync: bool,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir` and returns what it holds, oldest first. What
    /// follows a torn or damaged frame is cut off.
    pub fn open(dir: &Path, sync: bool) -> io::Result<(Journal, Vec<Found>)> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (found, whole) = scan(&bytes);
        let mut live = BTreeMap::new();
        let mut live_bytes = 0;
        for f in &found {
            let frame = frame(&Event::intent(&f.intent));
            live_bytes += frame.len() as u64;
            live.insert(
                f.intent.id,
                Live {
                    max_seq: f.intent.max_seq(),
                    frame,
                    done: f.done,
                },
            );
        }
        let next_id = found.last().map_or(0, |f| f.intent.id + 1);
        let journal = Journal {
            inner: Mutex::new(Inner {
                file: Self::reopen(&path, &bytes[..whole])?,
                bytes: whole.max(MAGIC.len()) as u64,
                allocated: whole.max(MAGIC.len()) as u64,
                next_id,
                live,
                live_bytes,
            }),
            path,
            sync,
        };
        Ok((journal, found))
    }

    /// The file to write frames into (at their offsets), holding `whole` (its intact part; the
    /// magic alone when empty).
    fn reopen(path: &Path, whole: &[u8]) -> io::Result<File> {
        if whole.len() < MAGIC.len() {
            crate::durable::write(path, MAGIC)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // Cut a torn tail (and space allocated ahead) so new frames follow the last whole one.
        if whole.len() >= MAGIC.len() && file.metadata()?.len() != whole.len() as u64 {
            file.set_len(whole.len() as u64)?;
        }
        Ok(file)
    }

    /// Journals an object about to be uploaded, durably; returns its id. `intent.id` is
    /// ignored; its items must be in order (a `Failed` kind's reasons follow them).
    pub fn intend(&self, mut intent: Intent) -> io::Result<u64> {
        debug_assert!(intent.items.is_sorted());
        let mut inner = self.inner.lock().expect("journal lock");
        intent.id = inner.next_id;
        let bytes = frame(&Event::intent(&intent));
        inner.append(&bytes)?;
        if self.sync {
            inner.file.sync_data()?;
        }
        inner.next_id += 1;
        inner.live_bytes += bytes.len() as u64;
        inner.live.insert(
            intent.id,
            Live {
                max_seq: intent.max_seq(),
                frame: bytes,
                done: false,
            },
        );
        Ok(intent.id)
    }

    /// The object's records have settled: after a crash it need not be asked about.
    pub fn done(&self, id: u64) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        let bytes = frame(&Event::Done { id });
        inner.append(&bytes)?;
        if let Some(live) = inner.live.get_mut(&id) {
            live.done = true;
        }
        Ok(())
    }

    /// Forgets an object: its records are settled, or free to go into new objects.
    pub fn forget(&self, id: u64) {
        let mut inner = self.inner.lock().expect("journal lock");
        if let Some(live) = inner.live.remove(&id) {
            inner.live_bytes -= live.frame.len() as u64;
        }
    }

    /// Forgets the objects whose records are all below `low` (the spool has let them go for
    /// good), and rewrites the file with the rest when it has grown past what they need (or
    /// always, with `force`).
    pub fn retire_below(&self, low: u64, force: bool) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("journal lock");
        let retired: Vec<u64> = inner
            .live
            .iter()
            .filter(|(_, l)| l.done && l.max_seq < low)
            .map(|(id, _)| *id)
            .collect();
        for id in retired {
            if let Some(live) = inner.live.remove(&id) {
                inner.live_bytes -= live.frame.len() as u64;
            }
        }
        if !force && (inner.bytes < COMPACT_BYTES || inner.bytes < 2 * inner.live_bytes) {
            return Ok(());
        }
        let mut bytes = MAGIC.to_vec();
        for (id, live) in &inner.live {
            bytes.extend_from_slice(&live.frame);
            if live.done {
                bytes.extend_from_slice(&frame(&Event::Done { id: *id }));
            }
        }
        crate::durable::write(&self.path, &bytes)?;
        inner.file = Self::reopen(&self.path, &bytes)?;
        inner.bytes = bytes.len() as u64;
        inner.allocated = inner.bytes;
        Ok(())
    }

    /// Objects journaled and not yet forgotten.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.inner.lock().expect("journal lock").live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(keys: Vec<String>, items: Vec<Item>) -> Intent {
        Intent {
            id: 0,
            bucket: "b".into(),
            keys,
            encrypted: false,
            items,
            kind: Kind::Records,
        }
    }

    fn items(seqs: &[(u64, u32)]) -> Vec<Item> {
        seqs.iter().map(|&(seq, part)| Item { seq, part }).collect()
    }

    #[test]
    fn intents_and_marks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (j, found) = Journal::open(dir.path(), true).unwrap();
        assert!(found.is_empty());
        let a = j
            .intend(intent(
                vec!["k1".into(), "e1".into()],
                items(&[(3, 0), (3, 1), (7, 0)]),
            ))
            .unwrap();
        let b = j
            .intend(intent(vec!["k2".into()], items(&[(9, 0)])))
            .unwrap();
        j.done(a).unwrap();
        drop(j);
        let (j, found) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].intent.id, a);
        assert!(found[0].done);
        assert_eq!(found[0].intent.items, items(&[(3, 0), (3, 1), (7, 0)]));
        assert_eq!(found[0].intent.keys, vec!["k1", "e1"]);
        assert_eq!((found[1].intent.id, found[1].done), (b, false));
        // New ids follow the old ones.
        assert_eq!(j.intend(intent(vec!["k3".into()], vec![])).unwrap(), b + 1);
    }

    /// A journal of two objects, `k1` and `k2`; its file.
    fn two_objects(dir: &Path) -> PathBuf {
        let (j, _) = Journal::open(dir, false).unwrap();
        for (key, seq) in [("k1", 1), ("k2", 2)] {
            j.intend(intent(vec![key.into()], items(&[(seq, 0)])))
                .unwrap();
        }
        dir.join(FILE_NAME)
    }

    #[test]
    fn a_torn_tail_is_cut_and_new_frames_follow_the_last_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_objects(dir.path());
        // The frames end where the scan stops (the file's space is allocated ahead).
        let (_, len) = scan(&std::fs::read(&path).unwrap());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len as u64 - 3).unwrap();
        let (j, found) = Journal::open(dir.path(), false).unwrap();
        assert_eq!(found.len(), 1);
        j.intend(intent(vec!["k3".into()], items(&[(3, 0)])))
            .unwrap();
        drop(j);
        let (_, found) = Journal::open(dir.path(), false).unwrap();
        let keys: Vec<&str> = found.iter().map(|f| f.intent.keys[0].as_str()).collect();
        assert_eq!(keys, ["k1", "k3"]);
    }

    #[test]
    fn a_damaged_frame_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let path = two_objects(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let (_, end) = scan(&bytes);
        bytes[end - 1] ^= 0xff;
        let (found, whole) = scan(&bytes);
        assert_eq!(found.len(), 1);
        assert!(whole < bytes.len());
        assert_eq!(scan(b"not a journal"), (Vec::new(), 0));
    }

    #[test]
    fn retired_entries_leave_the_file_when_it_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), false).unwrap();
        let old = j
            .intend(intent(vec!["k1".into()], items(&[(1, 0), (2, 0)])))
            .unwrap();
        let newer = j
            .intend(intent(vec!["k2".into()], items(&[(5, 0)])))
            .unwrap();
        let pending = j
            .intend(intent(vec!["k3".into()], items(&[(3, 0)])))
            .unwrap();
        let gone = j
            .intend(intent(vec!["k4".into()], items(&[(4, 0)])))
            .unwrap();
        j.done(old).unwrap();
        j.done(newer).unwrap();
        j.forget(gone);
        // Below 3: only `old` is done and wholly below; `pending` is kept (not done).
        j.retire_below(3, true).unwrap();
        assert_eq!(j.live(), 2);
        drop(j);
        let (_, found) = Journal::open(dir.path(), false).unwrap();
        let got: Vec<(u64, bool)> = found.iter().map(|f| (f.intent.id, f.done)).collect();
        assert_eq!(got, [(newer, true), (pending, false)]);
    }

    #[test]
    fn failed_records_keep_their_reasons_in_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), true).unwrap();
        let why = |code: &str| Why {
            attempts: 2,
            code: code.into(),
            message: "m".into(),
            lambda_arn: None,
            catalog_table: Some("{\"tableName\":\"t\"}".into()),
            extra: None,
        };
        let kind = Kind::failed(
            "format-conversion-failed",
            7,
            vec![why("a"), why("a"), why("b")],
        );
        let Kind::Failed { why: runs, .. } = &kind else {
            panic!("failed")
        };
        assert_eq!(runs, &[(2, why("a")), (1, why("b"))]);
        let mut entry = intent(vec!["e".into()], items(&[(1, 0), (2, 0), (3, 0)]));
        entry.kind = kind.clone();
        entry.encrypted = true;
        j.intend(entry).unwrap();
        drop(j);
        let (_, found) = Journal::open(dir.path(), true).unwrap();
        assert_eq!(found[0].intent.kind, kind);
        assert!(found[0].intent.encrypted);
    }

    proptest::proptest! {
        /// Whatever the bytes, the scan returns without panicking and never reads past them.
        #[test]
        fn scanning_any_bytes_is_safe(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let (_, whole) = scan(&bytes);
            proptest::prop_assert!(whole <= bytes.len());
        }
    }
}
