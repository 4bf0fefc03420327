//! Admission: whether the daemon can take more records right now. A global cap on spool bytes
//! and on accepted-but-undelivered bytes in memory (backpressure), and optional per-stream
//! Direct PUT quotas (records/s, bytes/s, requests/s). Refused records get Firehose's
//! per-record `ServiceUnavailableException` "Slow down." and count as ThrottledRecords.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota as GQuota, RateLimiter};

use crate::config::Quota;
use crate::metrics::Metrics;
use crate::spool::SpoolObserver;

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
    /// The spool or the memory budget is full.
    Capacity,
}

pub struct Admission {
    spool_bytes: AtomicI64,
    max_spool_bytes: u64,
    buffered_bytes: AtomicU64,
    max_buffered_bytes: u64,
    quotas: HashMap<String, Limiters>,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(
        max_spool_bytes: u64,
        max_buffered_bytes: u64,
        quotas: &std::collections::BTreeMap<String, Quota>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admission {
            spool_bytes: AtomicI64::new(0),
            max_spool_bytes,
            buffered_bytes: AtomicU64::new(0),
            max_buffered_bytes,
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
        }
    }

    /// Decides how many of a request's records (a prefix, in order) are taken, and reserves
    /// their bytes in the memory budget. The caller releases what it does not keep.
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
                return (0, Some(Refusal::Quota));
            }
        }
        let spool_room = self
            .max_spool_bytes
            .saturating_sub(self.spool_bytes.load(Ordering::Relaxed).max(0) as u64);
        let mut current = self.buffered_bytes.load(Ordering::Relaxed);
        loop {
            let room = self
                .max_buffered_bytes
                .saturating_sub(current)
                .min(spool_room);
            let mut taken = 0usize;
            let mut bytes = 0u64;
            for &s in sizes {
                // Each record costs its bytes plus its spool frame.
                let cost = s as u64 + 24;
                if bytes + cost > room {
                    break;
                }
                bytes += cost;
                taken += 1;
            }
            match self.buffered_bytes.compare_exchange(
                current,
                current + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let refusal = (taken < sizes.len()).then_some(Refusal::Capacity);
                    if taken < sizes.len() {
                        self.throttled(stream, sizes.len() - taken);
                    }
                    return (taken, refusal);
                }
                Err(now) => current = now,
            }
        }
    }

    fn throttled(&self, stream: &str, n: usize) {
        self.metrics
            .throttled_records
            .get_or_create(&Metrics::stream(stream))
            .inc_by(n as u64);
    }

    /// Returns reserved bytes (records delivered, settled, or not accepted after all).
    pub fn release(&self, bytes: u64) {
        let mut current = self.buffered_bytes.load(Ordering::Relaxed);
        while let Err(now) = self.buffered_bytes.compare_exchange(
            current,
            current.saturating_sub(bytes),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            current = now;
        }
    }

    /// Adds bytes that must be held whatever the budget says (records replayed at start).
    pub fn force_reserve(&self, bytes: u64) {
        self.buffered_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The reservation a record of `len` bytes takes.
    pub fn cost(len: usize) -> u64 {
        len as u64 + 24
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Relaxed)
    }

    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// A spool observer for one stream: keeps the global spool total and the stream's metrics.
    pub fn spool_observer(self: &Arc<Self>, stream: &str) -> Arc<dyn SpoolObserver> {
        Arc::new(StreamSpoolObserver {
            admission: self.clone(),
            stream: stream.to_string(),
        })
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
    }

    fn key_call(&self, result: Result<(), &crate::crypto::KeyError>) {
        self.admission
            .metrics
            .key_service_call(&self.stream, result);
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

    #[test]
    fn the_memory_budget_takes_a_prefix_and_release_frees_it() {
        let a = Admission::new(
            u64::MAX,
            1000,
            &Default::default(),
            Arc::new(Metrics::new()),
        );
        let (n, why) = a.admit("s", &[400, 400, 400]);
        assert_eq!((n, why), (2, Some(Refusal::Capacity)));
        assert_eq!(a.admit("s", &[200]).0, 0);
        a.release(Admission::cost(400));
        assert_eq!(a.admit("s", &[300]).0, 1);
        assert!(
            a.metrics
                .encode()
                .contains("hosepipe_throttled_records_total{stream=\"s\"} 2")
        );
    }

    #[test]
    fn a_stream_over_its_quota_is_refused_whole() {
        let a = Admission::new(u64::MAX, u64::MAX, &quota(10), Arc::new(Metrics::new()));
        assert_eq!(a.admit("q", &[1; 8]).0, 8);
        assert_eq!(a.admit("q", &[1; 8]), (0, Some(Refusal::Quota)));
        assert_eq!(a.admit("other", &[1; 8]).0, 8, "quotas are per stream");
    }

    #[test]
    fn a_full_spool_refuses() {
        let a = Arc::new(Admission::new(
            100,
            u64::MAX,
            &Default::default(),
            Arc::new(Metrics::new()),
        ));
        a.spool_observer("s").bytes_changed(90);
        assert_eq!(a.admit("s", &[50]).0, 0);
        a.spool_observer("s").bytes_changed(-90);
        assert_eq!(a.admit("s", &[50]).0, 1);
    }
}
