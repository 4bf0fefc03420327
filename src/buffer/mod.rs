//! Per-stream buffering: deliver when the buffered bytes reach `SizeInMBs` or when the oldest
//! buffered record is `IntervalInSeconds` old, whichever comes first.
//!
//! Pure state: the caller passes the clock in, so tests drive it without sleeping.

use std::time::Duration;

mod partitioned;
pub use partitioned::Partitioned;

use bytes::Bytes;
use tokio::time::Instant;

/// One accepted record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub data: Bytes,
    /// Approximate arrival time, epoch milliseconds (Firehose's `approximateArrivalTimestamp`).
    pub arrival_ms: i64,
    /// Position in the stream's spool (0 until spooled).
    pub seq: u64,
    /// Which record made from the spool record this is: 0 for the record as it arrived, 1..
    /// for what the processors emitted from it, in order. With `seq`, it names the record in
    /// the object journal.
    pub part: u32,
    /// Its dynamic-partitioning keys (set by processing; `None` without partitioning).
    pub partition: Option<crate::partition::Partition>,
    /// What it owes while in a pipeline; settled once it leaves.
    pub owed: Owed,
}

impl Record {
    /// A record that arrived at `arrival_ms`, not yet spooled.
    pub fn new(data: Bytes, arrival_ms: i64) -> Record {
        Record {
            data,
            arrival_ms,
            seq: 0,
            part: 0,
            partition: None,
            owed: Owed::default(),
        }
    }

    /// The same record owing nothing: for work that reads records without carrying them
    /// through the pipeline (the transforms' inputs). The original still settles.
    pub fn detached(&self) -> Record {
        Record {
            data: self.data.clone(),
            arrival_ms: self.arrival_ms,
            seq: self.seq,
            part: self.part,
            partition: self.partition.clone(),
            owed: Owed::default(),
        }
    }
}

/// The settle token a record carries through a pipeline: the memory it holds in the budget,
/// and its share of its spool position (several records made from one spool record share it;
/// the spool forgets the position once every share has settled). Only settling gives these
/// back (`pipeline::Ledger`); a token cannot be copied, so a record settles once. A record
/// outside a pipeline (before the spool, in tests) owes nothing.
#[derive(Debug, Default)]
pub struct Owed {
    /// Bytes of the memory budget.
    pub(crate) cost: u64,
    /// The records sharing the spool position, when more than this one does.
    pub(crate) shares: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
}

impl Owed {
    /// A token for memory the reader reserved.
    pub(crate) fn reserved(cost: u64) -> Owed {
        Owed { cost, shares: None }
    }
}

/// Records compare by what they are, not by what they owe.
impl PartialEq for Owed {
    fn eq(&self, _: &Owed) -> bool {
        true
    }
}

impl Eq for Owed {}

/// Why a buffer was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// The buffered bytes reached `SizeInMBs`.
    Size,
    /// The oldest record reached `IntervalInSeconds`.
    Interval,
    /// The daemon or the stream is stopping.
    Shutdown,
    /// The memory budget is short: the spool readers wait for what buffers hold.
    Memory,
    /// Made again after a crash from the records of an object that was being uploaded.
    Recovery,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Size => "size",
            FlushReason::Interval => "interval",
            FlushReason::Shutdown => "shutdown",
            FlushReason::Memory => "memory",
            FlushReason::Recovery => "recovery",
        }
    }
}

/// The buffering hints in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub size_bytes: u64,
    pub interval: Duration,
}

/// A batch made again after a crash from exactly the records of an object that was being
/// uploaded: it is written under the keys that object had, as its journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub journal_id: u64,
    pub key: String,
    pub error_key: String,
}

/// A flushed buffer, ready to encode.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    pub records: Vec<Record>,
    pub bytes: u64,
    pub reason: FlushReason,
    /// The partition every record of the batch belongs to (dynamic partitioning).
    pub partition: Option<crate::partition::Partition>,
    /// Made again after a crash: the object it must be written as.
    pub rewrite: Option<Box<Rewrite>>,
}

/// The arrival time of the oldest of `records` (0 for none).
pub fn oldest_arrival_ms(records: &[Record]) -> i64 {
    records
        .iter()
        .map(|r| r.arrival_ms)
        .min()
        .unwrap_or_default()
}

impl Batch {
    /// The arrival time of the oldest record (names the object and evaluates its prefix).
    pub fn oldest_arrival_ms(&self) -> i64 {
        oldest_arrival_ms(&self.records)
    }
}

/// The open buffer of one stream.
#[derive(Debug)]
pub struct Buffer {
    limits: Limits,
    records: Vec<Record>,
    bytes: u64,
    /// Id of the open batch; a timer armed for an earlier id is stale.
    batch_id: u64,
    deadline: Option<Instant>,
    oldest_arrival_ms: Option<i64>,
}

impl Buffer {
    pub fn new(limits: Limits) -> Self {
        Buffer {
            limits,
            records: Vec::new(),
            bytes: 0,
            batch_id: 1,
            deadline: None,
            oldest_arrival_ms: None,
        }
    }

    /// Applies new hints (UpdateDestination). A size already reached flushes at once.
    pub fn set_limits(&mut self, limits: Limits, now: Instant, now_ms: i64) -> Option<Batch> {
        self.limits = limits;
        if let Some(oldest) = self.oldest_arrival_ms {
            self.deadline = Some(deadline_for(oldest, limits.interval, now, now_ms));
        }
        (self.bytes >= limits.size_bytes).then(|| self.take(FlushReason::Size))
    }

    /// Adds one record; returns the batch when this record filled the buffer.
    pub fn push(&mut self, record: Record, now: Instant, now_ms: i64) -> Option<Batch> {
        if self.records.is_empty() {
            self.deadline = Some(deadline_for(
                record.arrival_ms,
                self.limits.interval,
                now,
                now_ms,
            ));
            self.oldest_arrival_ms = Some(record.arrival_ms);
        } else if record.arrival_ms < self.oldest_arrival_ms.unwrap_or(i64::MAX) {
            // A replayed (older) record moves the deadline earlier, never later.
            self.oldest_arrival_ms = Some(record.arrival_ms);
            let d = deadline_for(record.arrival_ms, self.limits.interval, now, now_ms);
            self.deadline = self.deadline.map(|cur| cur.min(d));
        }
        self.bytes += record.data.len() as u64;
        self.records.push(record);
        (self.bytes >= self.limits.size_bytes).then(|| self.take(FlushReason::Size))
    }

    /// When the open batch is due, with its id.
    pub fn deadline(&self) -> Option<(u64, Instant)> {
        self.deadline.map(|d| (self.batch_id, d))
    }

    /// The timer armed for `batch_id` fired. A stale timer (the batch already flushed) does
    /// nothing.
    pub fn on_timer(&mut self, batch_id: u64, now: Instant) -> Option<Batch> {
        match self.deadline {
            Some(d) if batch_id == self.batch_id && now >= d && !self.records.is_empty() => {
                Some(self.take(FlushReason::Interval))
            }
            _ => None,
        }
    }

    /// Flushes whatever is buffered.
    pub fn flush(&mut self, reason: FlushReason) -> Option<Batch> {
        (!self.records.is_empty()).then(|| self.take(reason))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn oldest_arrival_ms(&self) -> Option<i64> {
        self.oldest_arrival_ms
    }

    fn take(&mut self, reason: FlushReason) -> Batch {
        let batch = Batch {
            id: self.batch_id,
            records: std::mem::take(&mut self.records),
            bytes: std::mem::take(&mut self.bytes),
            reason,
            partition: None,
            rewrite: None,
        };
        self.batch_id += 1;
        self.deadline = None;
        self.oldest_arrival_ms = None;
        batch
    }
}

/// The instant at which a record that arrived at `arrival_ms` has waited `interval`.
fn deadline_for(arrival_ms: i64, interval: Duration, now: Instant, now_ms: i64) -> Instant {
    let age = Duration::from_millis(now_ms.saturating_sub(arrival_ms).max(0) as u64);
    match interval.checked_sub(age) {
        Some(left) => now + left,
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(n: usize, at: i64) -> Record {
        Record {
            data: Bytes::from(vec![b'a'; n]),
            arrival_ms: at,
            seq: 0,
            part: 0,
            partition: None,
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
    async fn size_reached_flushes_with_reason_size() {
        let mut b = Buffer::new(limits(10, 300));
        let now = Instant::now();
        assert!(b.push(rec(6, 0), now, 0).is_none());
        let batch = b.push(rec(6, 0), now, 0).unwrap();
        assert_eq!(batch.reason, FlushReason::Size);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.bytes, 12);
        assert!(b.is_empty());
        assert!(b.deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn interval_is_measured_from_the_oldest_record() {
        let mut b = Buffer::new(limits(1 << 20, 60));
        let t0 = Instant::now();
        b.push(rec(1, 1_000), t0, 1_000);
        tokio::time::advance(Duration::from_secs(30)).await;
        b.push(rec(1, 31_000), Instant::now(), 31_000);
        let (id, due) = b.deadline().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(60));
        assert!(b.on_timer(id, Instant::now()).is_none(), "not due yet");
        tokio::time::advance(Duration::from_secs(30)).await;
        let batch = b.on_timer(id, Instant::now()).unwrap();
        assert_eq!(batch.reason, FlushReason::Interval);
        assert_eq!(batch.records.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_timer_is_a_no_op() {
        let mut b = Buffer::new(limits(4, 60));
        let now = Instant::now();
        b.push(rec(1, 0), now, 0);
        let (old_id, _) = b.deadline().unwrap();
        b.push(rec(4, 0), now, 0).unwrap();
        b.push(rec(1, 0), now, 0);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(b.on_timer(old_id, Instant::now()).is_none());
        assert_eq!(b.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_is_due_at_once_and_old_records_are_due_immediately() {
        let mut b = Buffer::new(limits(1 << 20, 0));
        let now = Instant::now();
        b.push(rec(1, 5_000), now, 5_000);
        assert_eq!(b.deadline().unwrap().1, now);
        let mut b = Buffer::new(limits(1 << 20, 60));
        b.push(rec(1, 0), now, 120_000);
        assert_eq!(b.deadline().unwrap().1, now);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_the_size_limit_flushes() {
        let mut b = Buffer::new(limits(100, 60));
        let now = Instant::now();
        b.push(rec(50, 0), now, 0);
        let batch = b.set_limits(limits(10, 60), now, 0).unwrap();
        assert_eq!(batch.records.len(), 1);
    }

    proptest! {
        /// No record is lost or reordered, and no batch is over the limit by more than its last
        /// record.
        #[test]
        fn batches_partition_the_input(sizes in proptest::collection::vec(0usize..300, 0..200),
                                        limit in 1u64..2000) {
            let mut b = Buffer::new(limits(limit, 60));
            let now = Instant::now();
            let mut out: Vec<Batch> = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                if let Some(batch) = b.push(Record { seq: i as u64, ..Record::new(Bytes::from(vec![0u8; *n]), i as i64) }, now, 0) {
                    out.push(batch);
                }
            }
            out.extend(b.flush(FlushReason::Shutdown));
            let seen: Vec<i64> = out.iter().flat_map(|b| b.records.iter().map(|r| r.arrival_ms)).collect();
            prop_assert_eq!(seen, (0..sizes.len() as i64).collect::<Vec<_>>());
            for batch in &out {
                let last = batch.records.last().map(|r| r.data.len() as u64).unwrap_or(0);
                prop_assert!(batch.bytes - last < limit);
                prop_assert_eq!(batch.bytes, batch.records.iter().map(|r| r.data.len() as u64).sum::<u64>());
            }
        }
    }
}
