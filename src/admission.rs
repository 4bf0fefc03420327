//! Admission: whether the daemon can take more records right now, and the one memory budget.
//!
//! Producers are refused only when the spool on disk reaches its cap (`[spool] max_mb`), the
//! disk is full, or a stream's Direct PUT quota (records/s, bytes/s, requests/s) applies.
//! Refused records get Firehose's per-record `ServiceUnavailableException` "Slow down." and
//! count as ThrottledRecords.
//!
//! Memory (`[memory] max_mb`) holds only what is inside the stages: records the spool readers
//! handed to the pipelines (reserved by [`ReadBudget::reserve`], released as they settle), and
//! requests being read and decoded ([`Admission::request`]). The readers may fill three
//! quarters of it, so requests always find room; a request that finds none waits a bounded
//! time (`[admission] wait_ms`) and is then refused before its body is decoded.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota as GQuota, RateLimiter};

use crate::config::Quota;
use crate::metrics::Metrics;
use crate::spool::{ReadBudget, SpoolObserver};

struct Limiters {
    records: Option<DefaultDirectRateLimiter>,
    bytes: Option<DefaultDirectRateLimiter>,
    requests: Option<DefaultDirectRateLimiter>,
}

fn limiter(n: Option<NonZeroU32>) -> Option<DefaultDirectRateLimiter> {
    n.map(|n| RateLimiter::direct(GQuota::per_second(n)))
}

/// Why records were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the stream's quota.
    Quota,
    /// The spool reached `[spool] max_mb`.
    SpoolFull,
    /// No room in the memory budget to read and decode the request.
    Memory,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Quota, Refusal::SpoolFull, Refusal::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Quota => "quota",
            Refusal::SpoolFull => "spool_full",
            Refusal::Memory => "memory",
        }
    }
}

/// The memory budget.
struct Memory {
    max: u64,
    /// Held by records read into the pipelines.
    pipeline: Mutex<u64>,
    /// Signalled whenever the pipelines release memory.
    released: Condvar,
    /// Held by requests being read and decoded.
    requests: AtomicU64,
}

impl Memory {
    /// What the spool readers may fill: three quarters, the rest is kept for requests.
    fn pipeline_ceiling(&self) -> u64 {
        self.max - self.max / 4
    }
}

pub struct Admission {
    spool_bytes: AtomicI64,
    max_spool_bytes: u64,
    memory: Memory,
    /// How long a request waits for capacity before it is refused.
    wait: Duration,
    quotas: HashMap<String, Limiters>,
    metrics: Arc<Metrics>,
    /// Woken when memory is released or the spool shrinks.
    capacity: tokio::sync::Notify,
    /// Bumped when a reader cannot get memory: buffers flush early so the budget frees.
    pressure: tokio::sync::watch::Sender<u64>,
    last_pressure: Mutex<Option<Instant>>,
}

/// Memory held for one request until it is answered.
pub struct RequestPermit {
    admission: Arc<Admission>,
    bytes: u64,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.admission
            .memory
            .requests
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.admission.capacity.notify_waiters();
    }
}

/// What reading and decoding a request body of `body_bytes` holds: the body, and its records
/// decoded from base64 (3/4 of it) with their bookkeeping.
pub fn request_cost(body_bytes: u64) -> u64 {
    (body_bytes * 2).max(4096)
}

impl Admission {
    pub fn new(
        max_spool_bytes: u64,
        max_memory_bytes: u64,
        wait: Duration,
        quotas: &std::collections::BTreeMap<String, Quota>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Every reason's series from the start, at 0: a dashboard shows 0, not "No data".
        for reason in Refusal::ALL {
            metrics.refused_requests_counter(reason.as_str());
        }
        Admission {
            spool_bytes: AtomicI64::new(0),
            max_spool_bytes,
            memory: Memory {
                max: max_memory_bytes,
                pipeline: Mutex::new(0),
                released: Condvar::new(),
                requests: AtomicU64::new(0),
            },
            wait,
            quotas: quotas
                .iter()
                .map(|(name, q)| {
                    (
                        name.clone(),
                        Limiters {
                            records: limiter(q.records_per_second),
                            bytes: limiter(q.bytes_per_second),
                            requests: limiter(q.requests_per_second),
                        },
                    )
                })
                .collect(),
            metrics,
            capacity: tokio::sync::Notify::new(),
            pressure: tokio::sync::watch::Sender::new(0),
            last_pressure: Mutex::new(None),
        }
    }

    /// Free room in the spool, in bytes.
    fn spool_room(&self) -> u64 {
        self.max_spool_bytes
            .saturating_sub(self.spool_bytes.load(Ordering::Relaxed).max(0) as u64)
    }

    /// Takes memory for a request of `body_bytes` now, or says why not.
    fn try_request(self: &Arc<Self>, body_bytes: u64) -> Result<RequestPermit, Refusal> {
        // The records take about 3/4 of the body once decoded from base64.
        if body_bytes * 3 / 4 > self.spool_room() {
            return Err(Refusal::SpoolFull);
        }
        let cost = request_cost(body_bytes);
        // Requests always have the quarter the readers may not fill, and whatever the
        // pipelines leave of the rest.
        let pipeline = (*self.memory.pipeline.lock().expect("memory lock"))
            .min(self.memory.pipeline_ceiling());
        let mut current = self.memory.requests.load(Ordering::Relaxed);
        loop {
            // One request at a time is always let in, however small the budget.
            if current != 0 && current + pipeline + cost > self.memory.max {
                return Err(Refusal::Memory);
            }
            match self.memory.requests.compare_exchange(
                current,
                current + cost,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(RequestPermit {
                        admission: self.clone(),
                        bytes: cost,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Memory to read and decode a request whose body is `body_bytes` long (from its
    /// `Content-Length`), checked before the body is read. When there is none, or the spool
    /// has no room for its records, waits up to `[admission] wait_ms` for some; then refuses.
    pub async fn request(self: &Arc<Self>, body_bytes: u64) -> Result<RequestPermit, Refusal> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let result = self.try_request(body_bytes);
            let expired = tokio::time::Instant::now() >= deadline;
            match result {
                Ok(permit) => {
                    if permit_waited(started) {
                        self.metrics
                            .request_wait
                            .observe(started.elapsed().as_secs_f64());
                    }
                    return Ok(permit);
                }
                Err(reason) if expired => {
                    self.metrics
                        .request_wait
                        .observe(started.elapsed().as_secs_f64());
                    self.refused_request(reason);
                    return Err(reason);
                }
                Err(_) => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
        }
    }

    /// Counts a request refused as a whole before its body was decoded.
    pub fn refused_request(&self, reason: Refusal) {
        self.metrics.refused_request(reason.as_str());
    }

    /// Decides how many of a request's records (a prefix, in order) are taken: the stream's
    /// quota, and the room left in the spool.
    pub fn admit(&self, stream: &str, sizes: &[usize]) -> (usize, Option<Refusal>) {
        let total: usize = sizes.iter().sum();
        if let Some(l) = self.quotas.get(stream) {
            let ok = |lim: &Option<DefaultDirectRateLimiter>, n: usize| match lim {
                None => true,
                Some(lim) => match NonZeroU32::new(n.min(u32::MAX as usize) as u32) {
                    None => true,
                    Some(n) => matches!(lim.check_n(n), Ok(Ok(()))),
                },
            };
            // All three are checked (and charged) only if the earlier ones pass.
            if !(ok(&l.requests, 1) && ok(&l.records, sizes.len()) && ok(&l.bytes, total)) {
                self.throttled(stream, sizes.len());
                self.metrics.refused_request(Refusal::Quota.as_str());
                return (0, Some(Refusal::Quota));
            }
        }
        let room = self.spool_room();
        let mut taken = 0usize;
        let mut bytes = 0u64;
        for &s in sizes {
            // Each record costs its bytes plus its spool frame.
            let cost = Self::spool_cost(s);
            if bytes + cost > room {
                break;
            }
            bytes += cost;
            taken += 1;
        }
        if taken < sizes.len() {
            self.throttled(stream, sizes.len() - taken);
            if taken == 0 {
                self.metrics.refused_request(Refusal::SpoolFull.as_str());
            }
            return (taken, Some(Refusal::SpoolFull));
        }
        (taken, None)
    }

    /// Counts refused records as ThrottledRecords.
    pub fn throttled(&self, stream: &str, n: usize) {
        self.metrics
            .throttled_records
            .get_or_create(&Metrics::stream(stream))
            .inc_by(n as u64);
    }

    /// Returns memory held by records in a pipeline (settled, or passed on as something
    /// smaller).
    pub fn release(&self, bytes: u64) {
        let mut used = self.memory.pipeline.lock().expect("memory lock");
        *used = used.saturating_sub(bytes);
        drop(used);
        self.memory.released.notify_all();
        self.capacity.notify_waiters();
    }

    /// Adds memory that must be held whatever the budget says (what a transform emitted in
    /// place of its input, a backup copy).
    pub fn force_reserve(&self, bytes: u64) {
        *self.memory.pipeline.lock().expect("memory lock") += bytes;
    }

    /// What a record of `len` bytes takes in the spool: its bytes and its frame.
    pub fn spool_cost(len: usize) -> u64 {
        len as u64 + 24
    }

    /// Memory in use: records in the pipelines, and requests being decoded.
    pub fn memory_used(&self) -> u64 {
        *self.memory.pipeline.lock().expect("memory lock")
            + self.memory.requests.load(Ordering::Relaxed)
    }

    /// The memory budget (`[memory] max_mb`).
    pub fn memory_budget(&self) -> u64 {
        self.memory.max
    }

    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// The spool cap (`[spool] max_mb`).
    pub fn spool_max_bytes(&self) -> u64 {
        self.max_spool_bytes
    }

    /// Changes when the readers are short of memory: buffers then flush what they hold.
    pub fn pressure(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pressure.subscribe()
    }

    fn signal_pressure(&self) {
        let mut last = self.last_pressure.lock().expect("pressure lock");
        if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
            *last = Some(Instant::now());
            self.pressure.send_modify(|n| *n += 1);
        }
    }

    /// A spool observer for one stream: keeps the global spool total and the stream's metrics.
    pub fn spool_observer(self: &Arc<Self>, stream: &str) -> Arc<dyn SpoolObserver> {
        Arc::new(StreamSpoolObserver {
            admission: self.clone(),
            stream: stream.to_string(),
        })
    }
}

/// Whether a request waited at all (a wait of no scheduling is not worth a sample).
fn permit_waited(started: Instant) -> bool {
    started.elapsed() >= Duration::from_micros(100)
}

impl ReadBudget for Admission {
    fn reserve(&self, bytes: u64, wait: Duration) -> bool {
        let ceiling = self.memory.pipeline_ceiling();
        let deadline = Instant::now() + wait;
        let mut used = self.memory.pipeline.lock().expect("memory lock");
        loop {
            // A chunk larger than the whole share still goes when nothing else is held.
            if *used == 0 || *used + bytes <= ceiling {
                *used += bytes;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(used);
                self.signal_pressure();
                return false;
            }
            used = self
                .memory
                .released
                .wait_timeout(used, deadline - now)
                .expect("memory lock")
                .0;
        }
    }

    fn release(&self, bytes: u64) {
        Admission::release(self, bytes);
    }
}

struct StreamSpoolObserver {
    admission: Arc<Admission>,
    stream: String,
}

impl SpoolObserver for StreamSpoolObserver {
    fn fsync(&self, seconds: f64) {
        self.admission
            .metrics
            .spool_fsync
            .get_or_create(&Metrics::stream(&self.stream))
            .observe(seconds);
        self.admission.metrics.record_fsync(seconds);
    }

    fn bytes_changed(&self, delta: i64) {
        self.admission
            .spool_bytes
            .fetch_add(delta, Ordering::Relaxed);
        self.admission
            .metrics
            .spool_bytes
            .get_or_create(&Metrics::stream(&self.stream))
            .inc_by(delta);
        if delta < 0 {
            self.admission.capacity.notify_waiters();
        }
    }

    fn key_call(&self, result: Result<(), &crate::crypto::KeyError>) {
        self.admission
            .metrics
            .key_service_call(&self.stream, result);
    }

    fn corrupt(&self, lost: u64) {
        let labels = Metrics::stream(&self.stream);
        let m = &self.admission.metrics;
        m.spool_corrupt_segments.get_or_create(&labels).inc();
        m.spool_lost_records.get_or_create(&labels).inc_by(lost);
    }

    fn published(&self, seconds: f64, acknowledged: usize, failed: usize) {
        let labels = Metrics::stream(&self.stream);
        let js = &self.admission.metrics.jetstream;
        js.publish.get_or_create(&labels).observe(seconds);
        js.published_records
            .get_or_create(&labels)
            .inc_by(acknowledged as u64);
        if failed > 0 {
            js.publish_failures
                .get_or_create(&labels)
                .inc_by(failed as u64);
        }
    }

    fn redelivered(&self, records: u64) {
        let labels = Metrics::stream(&self.stream);
        let js = &self.admission.metrics.jetstream;
        js.redelivered_records
            .get_or_create(&labels)
            .inc_by(records);
    }

    fn log_state(&self, held: u64, ack_pending: u64, pending: u64) {
        let labels = Metrics::stream(&self.stream);
        let js = &self.admission.metrics.jetstream;
        js.held_records.get_or_create(&labels).set(held as i64);
        js.ack_pending_messages
            .get_or_create(&labels)
            .set(ack_pending as i64);
        js.pending_messages
            .get_or_create(&labels)
            .set(pending as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(records: u32) -> std::collections::BTreeMap<String, Quota> {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "q".to_string(),
            Quota {
                records_per_second: NonZeroU32::new(records),
                ..Default::default()
            },
        );
        m
    }

    fn admission(spool: u64, memory: u64) -> Arc<Admission> {
        Arc::new(Admission::new(
            spool,
            memory,
            Duration::from_millis(50),
            &Default::default(),
            Arc::new(Metrics::new()),
        ))
    }

    #[test]
    fn the_spool_cap_takes_a_prefix_and_memory_does_not_refuse_records() {
        let a = admission(2000, 1);
        let (n, why) = a.admit("s", &[400, 400, 400]);
        assert_eq!(
            (n, why),
            (3, None),
            "records go to disk; memory does not limit them"
        );
        a.spool_observer("s").bytes_changed(1200);
        let (n, why) = a.admit("s", &[400, 400]);
        assert_eq!((n, why), (1, Some(Refusal::SpoolFull)));
        assert!(
            a.metrics
                .encode()
                .contains("hosepipe_throttled_records_total{stream=\"s\"} 1")
        );
    }

    #[test]
    fn a_stream_over_its_quota_is_refused_whole() {
        let a = Admission::new(
            u64::MAX,
            u64::MAX,
            Duration::ZERO,
            &quota(10),
            Arc::new(Metrics::new()),
        );
        assert_eq!(a.admit("q", &[1; 8]).0, 8);
        assert_eq!(a.admit("q", &[1; 8]), (0, Some(Refusal::Quota)));
        assert_eq!(a.admit("other", &[1; 8]).0, 8, "quotas are per stream");
    }

    #[test]
    fn readers_fill_three_quarters_and_wait_for_releases() {
        let a = admission(u64::MAX, 1000);
        assert!(a.reserve(700, Duration::ZERO));
        assert!(!a.reserve(100, Duration::from_millis(10)), "past 750");
        assert_eq!(
            *a.pressure().borrow(),
            1,
            "a reader short of memory signals pressure"
        );
        let b = a.clone();
        let t = std::thread::spawn(move || b.reserve(100, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        a.release(500);
        assert!(t.join().unwrap(), "a release wakes the waiting reader");
        assert_eq!(a.memory_used(), 300);
        a.release(300);
        assert!(
            a.reserve(5000, Duration::ZERO),
            "one chunk always goes when none is held"
        );
    }

    #[tokio::test]
    async fn a_request_waits_for_memory_and_is_refused_when_none_comes() {
        let a = admission(u64::MAX, 1 << 20);
        let first = a.request(400 << 10).await.unwrap();
        assert_eq!(a.memory_used(), 800 << 10);
        // The second does not fit beside the first: it waits, then is refused.
        assert_eq!(a.request(400 << 10).await.err(), Some(Refusal::Memory));
        assert!(a.metrics.encode().contains("reason=\"memory\"} 1"));
        // Released while it waits: it goes.
        let b = a.clone();
        let waiting = tokio::spawn(async move { b.request(400 << 10).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(waiting.await.unwrap());
        assert_eq!(a.memory_used(), 0, "permits give their memory back");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_spool_room_is_refused_before_its_body() {
        let a = admission(100, u64::MAX);
        assert_eq!(a.request(1000).await.err(), Some(Refusal::SpoolFull));
        assert!(a.request(100).await.is_ok());
    }

    proptest::proptest! {
        /// However reservations, requests and releases interleave, what the readers hold never
        /// passes their share of the budget (but for a lone chunk when nothing else is held).
        #[test]
        fn the_readers_never_exceed_their_share(ops in proptest::collection::vec((0u8..3, 1u64..400), 1..200)) {
            let a = admission(u64::MAX, 1000);
            let mut held: Vec<u64> = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => if a.reserve(n, Duration::ZERO) { held.push(n) },
                    1 => if let Some(x) = held.pop() { a.release(x) },
                    _ => if !held.is_empty() { let x = held.remove(0); a.release(x) },
                }
                let used: u64 = held.iter().sum();
                proptest::prop_assert_eq!(a.memory_used(), used);
                proptest::prop_assert!(used <= 750 || held.len() == 1);
            }
        }
    }
}
