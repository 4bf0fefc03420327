//! One [`Buffer`] per active partition (dynamic partitioning), all under the stream's hints.
//!
//! A stream without partitioning has a single partition (`None`). Batch ids are unique across
//! partitions. Pure state, like [`Buffer`]: the caller passes the clock in.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{Batch, Buffer, FlushReason, Limits, Record};
use crate::partition::Partition;

/// The open buffers of one stream, by partition.
#[derive(Debug)]
pub struct Partitioned {
    limits: Limits,
    open: HashMap<Option<Partition>, Buffer>,
    next_id: u64,
    bytes: u64,
    records: usize,
}

impl Partitioned {
    pub fn new(limits: Limits) -> Self {
        Partitioned {
            limits,
            open: HashMap::new(),
            next_id: 1,
            bytes: 0,
            records: 0,
        }
    }

    /// Adds one record to its partition's buffer; returns the batch when it filled it.
    pub fn push(&mut self, record: Record, now: Instant, now_ms: i64) -> Option<Batch> {
        let key = record.partition.clone();
        self.bytes += record.data.len() as u64;
        self.records += 1;
        let limits = self.limits;
        let buffer = self
            .open
            .entry(key.clone())
            .or_insert_with(|| Buffer::new(limits));
        let batch = buffer.push(record, now, now_ms)?;
        self.open.remove(&key);
        Some(self.number(batch, key))
    }

    /// Whether `partition` has a buffer open (it is active).
    pub fn is_open(&self, partition: &Option<Partition>) -> bool {
        self.open.contains_key(partition)
    }

    /// The open partitions.
    pub fn partitions(&self) -> impl Iterator<Item = &Option<Partition>> {
        self.open.keys()
    }

    /// When the earliest open batch is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .filter_map(|b| b.deadline().map(|(_, at)| at))
            .min()
    }

    /// Flushes every partition whose interval has passed.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Batch> {
        let due: Vec<(Option<Partition>, u64)> = self
            .open
            .iter()
            .filter_map(|(k, b)| match b.deadline() {
                Some((id, at)) if at <= now => Some((k.clone(), id)),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for (key, id) in due {
            let flushed = self.open.get_mut(&key).and_then(|b| b.on_timer(id, now));
            if let Some(batch) = flushed {
                self.open.remove(&key);
                out.push(self.number(batch, key));
            }
        }
        out
    }

    /// Flushes every partition.
    pub fn flush_all(&mut self, reason: FlushReason) -> Vec<Batch> {
        let open = std::mem::take(&mut self.open);
        let mut out = Vec::with_capacity(open.len());
        for (key, mut buffer) in open {
            if let Some(batch) = buffer.flush(reason) {
                out.push(self.number(batch, key));
            }
        }
        out
    }

    /// Applies new hints to every partition; those already over the new size flush.
    pub fn set_limits(&mut self, limits: Limits, now: Instant, now_ms: i64) -> Vec<Batch> {
        self.limits = limits;
        let keys: Vec<Option<Partition>> = self.open.keys().cloned().collect();
        let mut out = Vec::new();
        for key in keys {
            let flushed = self
                .open
                .get_mut(&key)
                .and_then(|b| b.set_limits(limits, now, now_ms));
            if let Some(batch) = flushed {
                self.open.remove(&key);
                out.push(self.number(batch, key));
            }
        }
        out
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.open
            .values()
            .filter_map(Buffer::oldest_arrival_ms)
            .min()
    }

    /// Gives a flushed batch its stream-wide id and its partition, and stops counting it.
    fn number(&mut self, mut batch: Batch, partition: Option<Partition>) -> Batch {
        batch.id = self.next_id;
        self.next_id += 1;
        batch.partition = partition;
        self.bytes -= batch.bytes;
        self.records -= batch.records.len();
        batch
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::partition::PartitionKeys;

    fn part(v: &str) -> Option<Partition> {
        Some(Arc::new(PartitionKeys {
            query: vec![("k".into(), v.into())],
            lambda: vec![],
        }))
    }

    fn rec(n: usize, at: i64, p: Option<Partition>) -> Record {
        Record {
            data: Bytes::from(vec![b'a'; n]),
            arrival_ms: at,
            seq: at as u64,
            part: 0,
            partition: p,
            owed: Default::default(),
        }
    }

    fn limits(size: u64, secs: u64) -> Limits {
        Limits {
            size_bytes: size,
            interval: Duration::from_secs(secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_partition_fills_and_times_out_on_its_own() {
        let mut b = Partitioned::new(limits(10, 60));
        let t0 = Instant::now();
        assert!(b.push(rec(6, 0, part("a")), t0, 0).is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            b.push(rec(6, 30_000, part("b")), Instant::now(), 30_000)
                .is_none()
        );
        // "a" fills by size; "b" is untouched.
        let full = b
            .push(rec(6, 30_000, part("a")), Instant::now(), 30_000)
            .unwrap();
        assert_eq!(full.partition, part("a"));
        assert_eq!(full.reason, FlushReason::Size);
        assert!(!b.is_open(&part("a")) && b.is_open(&part("b")));
        assert_eq!((b.len(), b.bytes()), (1, 6));
        // "b" is due 60 s after it opened, not after "a".
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(90)));
        tokio::time::advance(Duration::from_secs(60)).await;
        let due = b.on_timer(Instant::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].partition, part("b"));
        assert_ne!(due[0].id, full.id);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_limits_and_shutdown_flush_every_partition() {
        let mut b = Partitioned::new(limits(100, 60));
        let now = Instant::now();
        for p in ["a", "b", "c"] {
            b.push(rec(50, 0, part(p)), now, 0);
        }
        b.push(rec(5, 0, None), now, 0);
        assert_eq!(b.partitions().count(), 4);
        let flushed = b.set_limits(limits(10, 60), now, 0);
        assert_eq!(flushed.len(), 3);
        let rest = b.flush_all(FlushReason::Shutdown);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].partition, None);
        let mut ids: Vec<u64> = flushed.iter().chain(&rest).map(|b| b.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "ids are unique across partitions");
        assert!(b.is_empty());
    }

    proptest! {
        /// Every record comes out exactly once, in its own partition's batch, in order within
        /// the partition.
        #[test]
        fn partitions_never_mix_or_lose_records(
            input in proptest::collection::vec((0usize..300, 0u8..5), 0..200),
            limit in 1u64..2000,
        ) {
            let mut b = Partitioned::new(limits(limit, 60));
            let now = Instant::now();
            let mut out: Vec<Batch> = Vec::new();
            for (i, (n, p)) in input.iter().enumerate() {
                out.extend(b.push(rec(*n, i as i64, part(&p.to_string())), now, 0));
            }
            out.extend(b.flush_all(FlushReason::Shutdown));
            let mut seen = Vec::new();
            for batch in &out {
                for r in &batch.records {
                    prop_assert_eq!(&r.partition, &batch.partition);
                }
                let order: Vec<i64> = batch.records.iter().map(|r| r.arrival_ms).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
                seen.extend(order);
            }
            seen.sort();
            prop_assert_eq!(seen, (0..input.len() as i64).collect::<Vec<_>>());
        }
    }
}
