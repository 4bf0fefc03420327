use super::*;
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Default)]
struct NoMetrics;
impl SpoolObserver for NoMetrics {
    fn fsync(&self, _: f64) {}
    fn bytes_changed(&self, _: i64) {}
    fn key_call(&self, _: Result<(), &KeyError>) {}
    fn corrupt(&self, _: u64) {}
}

/// Counts what the reader found damaged.
#[derive(Default)]
struct Damage {
    segments: AtomicU64,
    lost: AtomicU64,
}
impl SpoolObserver for Damage {
    fn fsync(&self, _: f64) {}
    fn bytes_changed(&self, _: i64) {}
    fn key_call(&self, _: Result<(), &KeyError>) {}
    fn corrupt(&self, lost: u64) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.lost.fetch_add(lost, Ordering::Relaxed);
    }
}

/// A budget that always has room.
struct Unlimited;
impl ReadBudget for Unlimited {
    fn reserve(&self, _: u64, _: Duration) -> bool {
        true
    }
    fn release(&self, _: u64) {}
}

/// Starts the spool's reader; what it hands on arrives on the receiver.
fn reader(spool: &Spool) -> tokio::sync::mpsc::Receiver<Vec<Record>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    spool.start_reader(tx, Arc::new(Unlimited)).unwrap();
    rx
}

/// Everything the reader hands on once intake stops: what a restart delivers.
async fn read_back(spool: &Spool) -> Vec<Record> {
    let mut rx = reader(spool);
    spool.stop_intake().await;
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the reader finishes")
    {
        out.extend(chunk);
    }
    out
}

/// The next `n` records the reader hands on.
async fn take(rx: &mut tokio::sync::mpsc::Receiver<Vec<Record>>, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("records arrive")
            .expect("the reader runs");
        out.extend(chunk);
    }
    out
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn settings(root: &Path, segment_bytes: u64) -> SpoolSettings {
    SpoolSettings {
        root: root.to_path_buf(),
        sync: SyncMode::Fsync,
        segment_bytes,
    }
}

fn recs(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            data: Bytes::from(format!("{tag}-{i}")),
            arrival_ms: 1000 + i as i64,
            seq: 0,
            part: 0,
            partition: None,
            owed: Default::default(),
        })
        .collect()
}

/// The plain sealing setting, with a keyring that holds no keys.
fn plain() -> Sealing {
    Sealing {
        keys: Arc::new(crate::crypto::keyring::Keyring::new(Path::new(
            "/nonexistent/keyring.json",
        ))),
        stream: "s".into(),
        key_id: None,
    }
}

fn open(dir: &Path, seg: u64) -> (Spool, Recovery) {
    Spool::open(dir, &settings(dir, seg), Arc::new(NoMetrics), plain()).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("log"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_records_come_back_after_a_restart_with_seq_and_arrival() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, rec) = open(dir.path(), 1 << 20);
        assert_eq!(rec.backlog, 0);
        let mut a = recs(3, "a");
        spool.append(&mut a).await.unwrap();
        let mut b = recs(2, "b");
        spool.append(&mut b).await.unwrap();
        assert_eq!(a.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(b[1].seq, 4);
        spool.delivered(vec![1, 3]);
        spool.close().await;
    }
    let (spool, rec) = open(dir.path(), 1 << 20);
    assert_eq!(rec.backlog, 3);
    let mut c = recs(1, "c");
    spool.append(&mut c).await.unwrap();
    assert_eq!(c[0].seq, 5, "seqs continue after a restart");
    let got: Vec<(u64, String, i64)> = read_back(&spool)
        .await
        .iter()
        .map(|r| {
            (
                r.seq,
                String::from_utf8(r.data.to_vec()).unwrap(),
                r.arrival_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "a-0".into(), 1000),
            (2, "a-2".into(), 1002),
            (4, "b-1".into(), 1001),
            (5, "c-0".into(), 1000)
        ]
    );
}

#[tokio::test]
async fn delivered_segments_are_deleted_and_the_spool_empties() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 64);
    let mut all = Vec::new();
    for i in 0..5 {
        let mut r = recs(4, &format!("s{i}"));
        spool.append(&mut r).await.unwrap();
        all.extend(r.iter().map(|r| r.seq));
    }
    assert!(segments(dir.path()).len() >= 5, "tiny segments roll over");
    spool.delivered(all);
    spool.close().await;
    assert!(
        segments(dir.path()).len() <= 1,
        "only the active segment may stay"
    );
    let (spool, rec) = open(dir.path(), 64);
    assert_eq!(rec.backlog, 0);
    assert!(read_back(&spool).await.is_empty());
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = open(dir.path(), 1 << 20);
        let mut r = recs(10, "t");
        spool.append(&mut r).await.unwrap();
        spool.close().await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 3).unwrap();
    let (spool, rec) = open(dir.path(), 1 << 20);
    assert_eq!(rec.backlog, 9);
    assert_eq!(read_back(&spool).await.len(), 9);
    assert!(rec.truncated_bytes > 0);
    assert!(rec.corrupt_segments.is_empty());
}

#[tokio::test]
async fn a_corrupt_middle_segment_is_copied_aside_read_up_to_the_damage_and_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = open(dir.path(), 100);
        for i in 0..4 {
            let mut r = recs(5, &format!("m{i}"));
            spool.append(&mut r).await.unwrap();
        }
        spool.close().await;
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let at = HEADER_LEN + 30;
    bytes[at] ^= 0xff;
    std::fs::write(&segs[0], &bytes).unwrap();
    let damage = Arc::new(Damage::default());
    let (spool, rec) = Spool::open(
        dir.path(),
        &settings(dir.path(), 100),
        damage.clone(),
        plain(),
    )
    .unwrap();
    assert_eq!(rec.backlog, 20, "start-up does not read the segments");
    let mut more = recs(1, "after");
    spool.append(&mut more).await.unwrap();
    let got = read_back(&spool).await;
    let first_seg: Vec<u64> = seqs(&got).into_iter().filter(|s| *s < 5).collect();
    assert!(first_seg.len() < 5, "{first_seg:?}");
    assert_eq!(
        got.len() - first_seg.len(),
        16,
        "every other segment, and the new record"
    );
    assert!(
        dir.path()
            .join("corrupt")
            .join(segs[0].file_name().unwrap())
            .exists()
    );
    // Once what could be read is delivered, the damaged segment goes like any other.
    spool.delivered(seqs(&got));
    spool.close().await;
    assert_eq!(damage.segments.load(Ordering::Relaxed), 1);
    assert_eq!(
        damage.lost.load(Ordering::Relaxed) as usize,
        5 - first_seg.len()
    );
    assert!(!segs[0].exists());
    let (spool, rec) = open(dir.path(), 100);
    assert_eq!(rec.backlog, 0);
    assert!(read_back(&spool).await.is_empty());
}

#[tokio::test]
async fn the_reader_follows_appends_across_segments_and_restarts_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 200);
    let mut rx = reader(&spool);
    let mut all = Vec::new();
    for i in 0..6 {
        let mut r = recs(7, &format!("f{i}"));
        spool.append(&mut r).await.unwrap();
        all.extend(seqs(&r));
        // Each append is read as soon as it is committed, also in a segment rolled since.
        assert_eq!(seqs(&take(&mut rx, 7).await), seqs(&r));
    }
    assert!(segments(dir.path()).len() >= 3);
    // Deliver out of order, leaving holes; a restart reads only the holes, in order.
    let delivered: Vec<u64> = all.iter().copied().filter(|s| s % 3 != 0).collect();
    spool.delivered(delivered);
    spool.close().await;
    drop(spool);
    let (spool, rec) = open(dir.path(), 200);
    let holes: Vec<u64> = all.iter().copied().filter(|s| s % 3 == 0).collect();
    assert_eq!(rec.backlog, holes.len() as u64);
    assert_eq!(seqs(&read_back(&spool).await), holes);
}

#[tokio::test]
async fn segments_are_deleted_only_behind_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 100);
    for i in 0..5 {
        let mut r = recs(5, &format!("g{i}"));
        spool.append(&mut r).await.unwrap();
    }
    let before = segments(dir.path()).len();
    assert!(before >= 4);
    // Nothing was read, so nothing can have been delivered: every segment stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(segments(dir.path()).len(), before);
    let mut rx = reader(&spool);
    let first = take(&mut rx, 5).await;
    spool.delivered(seqs(&first));
    // The writer collects delivered segments with its next checkpoint.
    let mut tries = 0;
    while segments(dir.path()).len() >= before {
        tries += 1;
        assert!(
            tries < 100,
            "the segment read and delivered is never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = take(&mut rx, 20).await;
    assert_eq!(
        seqs(&rest),
        (5..25).collect::<Vec<_>>(),
        "the rest is still read, in order"
    );
}

fn scan(data: &[u8]) -> Scan {
    match read_header(data) {
        Ok(h) => scan_segment(data, &h, None),
        Err(end) => Scan {
            records: Vec::new(),
            end,
        },
    }
}

#[test]
fn scan_tells_torn_from_corrupt() {
    let mut seg = format::plain_header(7);
    encode_record(&mut seg, 7, 1, b"one", None);
    encode_record(&mut seg, 8, 2, b"two", None);
    let s = scan(&seg);
    assert_eq!(s.end, ScanEnd::Clean);
    assert_eq!(s.records.len(), 2);
    let mut last_bad = seg.clone();
    let n = last_bad.len();
    last_bad[n - 1] ^= 1;
    assert!(matches!(scan(&last_bad).end, ScanEnd::Torn { .. }));
    let mut first_bad = seg.clone();
    first_bad[HEADER_LEN + 20] ^= 1;
    assert!(matches!(scan(&first_bad).end, ScanEnd::Corrupt { .. }));
    assert!(matches!(
        scan(b"garbage-garbage-x").end,
        ScanEnd::Corrupt { at: 0 }
    ));
    assert!(matches!(scan(&seg[..5]).end, ScanEnd::Torn { at: 0 }));
    assert!(matches!(
        scan(&format::sealed_header(7, &[1; 40])[..30]).end,
        ScanEnd::Torn { at: 0 }
    ));
}

fn sealed(ring: &Path, key: Option<&str>) -> Sealing {
    Sealing {
        keys: Arc::new(crate::crypto::keyring::Keyring::new(ring)),
        stream: "s".into(),
        key_id: key.map(str::to_string),
    }
}

fn open_sealed(dir: &Path, sealing: Sealing) -> Result<(Spool, Recovery), SpoolError> {
    Spool::open(dir, &settings(dir, 1 << 20), Arc::new(NoMetrics), sealing)
}

/// Whether any segment file holds `needle` in the clear.
fn in_the_clear(dir: &Path, needle: &[u8]) -> bool {
    segments(dir).iter().any(|p| {
        std::fs::read(p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

fn ring_with_key(dir: &Path) -> PathBuf {
    let path = dir.join("keyring.json");
    crate::crypto::keyring::Keyring::new(&path)
        .create("spool")
        .unwrap();
    path
}

#[tokio::test]
async fn sealed_segments_hold_no_plaintext_and_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_with_key(dir.path());
    let spool_dir = dir.path().join("spool");
    {
        let (spool, _) = open_sealed(&spool_dir, sealed(&ring, Some("spool"))).unwrap();
        let mut a = recs(3, "secret");
        assert!(spool.append(&mut a).await.unwrap(), "answered as encrypted");
        spool.delivered(vec![1]);
        spool.close().await;
    }
    assert!(!in_the_clear(&spool_dir, b"secret"));
    let first = std::fs::read(&segments(&spool_dir)[0]).unwrap();
    assert_eq!(&first[..8], SEALED_MAGIC);
    // Reading needs the key service, not the sealing setting.
    let (spool, _) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
    let got: Vec<_> = read_back(&spool)
        .await
        .iter()
        .map(|r| (r.seq, r.arrival_ms, r.data.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 1000, Bytes::from("secret-0")),
            (2, 1002, Bytes::from("secret-2"))
        ]
    );
}

#[tokio::test]
async fn turning_sealing_on_seals_the_plain_records_still_waiting_and_off_again() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_with_key(dir.path());
    let spool_dir = dir.path().join("spool");
    let (spool, _) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
    let mut a = recs(3, "early");
    assert!(!spool.append(&mut a).await.unwrap());
    spool.delivered(vec![0]);
    assert!(in_the_clear(&spool_dir, b"early-1"));
    spool.set_sealing(Some("spool".into())).await.unwrap();
    assert!(!in_the_clear(&spool_dir, b"early-"), "rewritten sealed");
    let mut b = recs(2, "later");
    assert!(spool.append(&mut b).await.unwrap());
    spool.set_sealing(None).await.unwrap();
    let mut c = recs(1, "plain-again");
    assert!(!spool.append(&mut c).await.unwrap());
    spool.close().await;
    assert!(!in_the_clear(&spool_dir, b"later-"));
    assert!(in_the_clear(&spool_dir, b"plain-again"));
    let (spool, _) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
    let data: Vec<_> = read_back(&spool)
        .await
        .iter()
        .map(|r| r.data.clone())
        .collect();
    assert_eq!(
        data,
        ["early-1", "early-2", "later-0", "later-1", "plain-again-0"].map(Bytes::from)
    );
}

#[tokio::test]
async fn sealing_keeps_the_numbering_of_delivered_records() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_with_key(dir.path());
    let spool_dir = dir.path().join("spool");
    {
        let (spool, _) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
        let mut a = recs(10, "n");
        spool.append(&mut a).await.unwrap();
        spool.delivered((5..10).collect());
        spool.set_sealing(Some("spool".into())).await.unwrap();
        spool.close().await;
    }
    let (spool, rec) = open_sealed(&spool_dir, sealed(&ring, Some("spool"))).unwrap();
    assert_eq!(rec.backlog, 5);
    let mut b = recs(1, "next");
    spool.append(&mut b).await.unwrap();
    assert_eq!(b[0].seq, 10, "a delivered seq is never handed out again");
    assert_eq!(seqs(&read_back(&spool).await), vec![0, 1, 2, 3, 4, 10]);
}

#[tokio::test]
async fn without_a_data_key_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_with_key(dir.path());
    let spool_dir = dir.path().join("spool");
    let (spool, _) = open_sealed(&spool_dir, sealed(&ring, Some("missing"))).unwrap();
    let mut a = recs(2, "x");
    assert!(matches!(
        spool.append(&mut a).await,
        Err(SpoolError::Key(KeyError::NotFound(_)))
    ));
    assert!(segments(&spool_dir).is_empty());
    assert!(matches!(
        spool.set_sealing(Some("missing".into())).await,
        Ok(())
    ));
}

#[tokio::test]
async fn altered_sealed_segments_are_set_aside_and_unopenable_ones_wait() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring_with_key(dir.path());
    let spool_dir = dir.path().join("spool");
    {
        let (spool, _) = open_sealed(&spool_dir, sealed(&ring, Some("spool"))).unwrap();
        let mut a = recs(3, "r");
        spool.append(&mut a).await.unwrap();
        spool.close().await;
    }
    let seg = segments(&spool_dir)[0].clone();
    let original = std::fs::read(&seg).unwrap();
    let header = read_header(&original).unwrap();
    // Alter the first record's ciphertext and fix up its checksum: it no longer authenticates.
    let mut altered = original.clone();
    let at = header.len;
    let len = u32::from_le_bytes(altered[at..at + 4].try_into().unwrap()) as usize;
    altered[at + 8 + 16] ^= 1;
    let crc = crc32c::crc32c(&altered[at + 8..at + 8 + len]);
    altered[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &altered).unwrap();
    {
        // The last segment is scanned at start: its damage is found there.
        let (spool, rec) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
        assert_eq!(rec.corrupt_segments.len(), 1);
        assert!(rec.corrupt_segments[0].starts_with(spool_dir.join("corrupt")));
        assert!(read_back(&spool).await.is_empty());
        spool.close().await;
    }
    // A keyring without the master key: the segment is not touched and the spool does not open.
    std::fs::write(&seg, &original).unwrap();
    std::fs::remove_file(spool_dir.join("checkpoint.json")).unwrap();
    let other = dir.path().join("other.json");
    crate::crypto::keyring::Keyring::new(&other)
        .create("unrelated")
        .unwrap();
    assert!(matches!(
        open_sealed(&spool_dir, sealed(&other, None)),
        Err(SpoolError::Unseal { .. })
    ));
    assert_eq!(std::fs::read(&seg).unwrap(), original);
    let (spool, rec) = open_sealed(&spool_dir, sealed(&ring, None)).unwrap();
    assert_eq!(rec.backlog, 3);
    assert_eq!(read_back(&spool).await.len(), 3);
}

proptest! {
    #[test]
    fn range_set_matches_a_plain_set(ops in proptest::collection::vec((0u64..200, 0u64..5), 0..200), low in 0u64..200) {
        let mut rs = RangeSet::default();
        let mut plain = std::collections::BTreeSet::new();
        for (x, w) in ops {
            rs.insert_range(x, x + w);
            plain.extend(x..x + w);
        }
        for x in 0..210 {
            prop_assert_eq!(rs.contains(x), plain.contains(&x));
        }
        rs.remove_below(low);
        for x in 0..210 {
            prop_assert_eq!(rs.contains(x), x >= low && plain.contains(&x));
        }
        let ranges: Vec<_> = rs.ranges().collect();
        for w in ranges.windows(2) {
            prop_assert!(w[0].1 < w[1].0, "disjoint, not touching");
        }
    }

    /// Nothing appended and not delivered is lost across a restart.
    #[test]
    fn no_loss_across_restart(batches in proptest::collection::vec(1usize..20, 1..8),
                              delivered_mask in proptest::collection::vec(any::<bool>(), 200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (spool, _) = open(dir.path(), 150);
            let mut kept = Vec::new();
            let mut gone = Vec::new();
            for (i, n) in batches.iter().enumerate() {
                let mut r = recs(*n, &format!("b{i}"));
                spool.append(&mut r).await.unwrap();
                for rec in r {
                    if delivered_mask[rec.seq as usize % 200] { gone.push(rec.seq) } else { kept.push(rec.seq) }
                }
            }
            spool.delivered(gone);
            spool.close().await;
            let (spool, rec) = open(dir.path(), 150);
            assert_eq!(rec.backlog, kept.len() as u64);
            assert_eq!(seqs(&read_back(&spool).await), kept);
        });
    }
}
