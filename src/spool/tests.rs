use super::*;
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Default)]
struct NoMetrics;
impl SpoolObserver for NoMetrics {
    fn fsync(&self, _: f64) {}
    fn bytes_changed(&self, _: i64) {}
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
            partition: None,
        })
        .collect()
}

fn open(dir: &Path, seg: u64) -> (Spool, Recovery) {
    Spool::open(dir, &settings(dir, seg), Arc::new(NoMetrics)).unwrap()
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
        assert!(rec.records.is_empty());
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
    let got: Vec<(u64, String, i64)> = rec
        .records
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
            (4, "b-1".into(), 1001)
        ]
    );
    let mut c = recs(1, "c");
    spool.append(&mut c).await.unwrap();
    assert_eq!(c[0].seq, 5, "seqs continue after a restart");
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
    let (_, rec) = open(dir.path(), 64);
    assert!(rec.records.is_empty());
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
    let (_, rec) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records.len(), 9);
    assert!(rec.truncated_bytes > 0);
    assert!(rec.corrupt_segments.is_empty());
}

#[tokio::test]
async fn a_corrupt_middle_segment_is_moved_aside_and_its_good_prefix_salvaged() {
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
    let (spool, rec) = open(dir.path(), 100);
    assert_eq!(rec.corrupt_segments.len(), 1);
    assert!(rec.corrupt_segments[0].starts_with(dir.path().join("corrupt")));
    assert!(!segs[0].exists());
    assert!(rec.salvaged.len() < 5 && rec.records.len() == 15, "{rec:?}");
    let mut more = recs(1, "after");
    spool.append(&mut more).await.unwrap();
}

#[test]
fn scan_tells_torn_from_corrupt() {
    let mut seg = Vec::new();
    seg.extend_from_slice(MAGIC);
    seg.extend_from_slice(&7u64.to_le_bytes());
    encode_record(&mut seg, 7, 1, b"one");
    encode_record(&mut seg, 8, 2, b"two");
    let s = scan_segment(&seg);
    assert_eq!(s.end, ScanEnd::Clean);
    assert_eq!(s.records.len(), 2);
    let mut last_bad = seg.clone();
    let n = last_bad.len();
    last_bad[n - 1] ^= 1;
    assert!(matches!(scan_segment(&last_bad).end, ScanEnd::Torn { .. }));
    let mut first_bad = seg.clone();
    first_bad[HEADER_LEN + 20] ^= 1;
    assert!(matches!(
        scan_segment(&first_bad).end,
        ScanEnd::Corrupt { .. }
    ));
    assert!(matches!(
        scan_segment(b"garbage-garbage-x").end,
        ScanEnd::Corrupt { at: 0 }
    ));
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
            let (_, rec) = open(dir.path(), 150);
            let replayed: Vec<u64> = rec.records.iter().map(|r| r.seq).collect();
            assert_eq!(replayed, kept);
        });
    }
}
