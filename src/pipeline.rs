//! One delivery stream's whole path, wired in one place:
//!
//! ```text
//! api ──records──▶ buffer ──batch──▶ encode (name + compress) ──object──▶ deliver (S3, retries)
//! ```
//!
//! Bounded channels sit between the stages. The buffer keeps accepting while downstream is slow
//! (an outage): flushed batches wait in its pending queue, in memory, until they can move on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hosepipe_sinks::Destination;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admission::Admission;
use crate::buffer::{Batch, Buffer, FlushReason, Record};
use crate::config::stream::{DestinationSpec, StreamSpec};
use crate::deliver::{self, DeliveryResult, EncodedObject};
use crate::metrics::{FlushLabels, Metrics};
use crate::spool::Spool;

/// How many batches compress at once (the machine has 2 cores).
const ENCODE_WORKERS: usize = 2;
/// How many objects upload at once.
const DELIVER_WORKERS: usize = 4;

/// A stream's definition with its version (`VersionId`, also in object names).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub spec: StreamSpec,
    pub version: u64,
}

/// Live counters of one stream, read by `/metrics` and `status`.
#[derive(Debug)]
pub struct StreamStats {
    pub buffered_bytes: AtomicU64,
    pub buffered_records: AtomicU64,
    buffer_oldest_ms: AtomicI64,
    /// Flushed but not yet delivered: batch id → (oldest arrival ms, records).
    in_flight: Mutex<BTreeMap<u64, (i64, u64)>>,
    pub delivered_records: AtomicU64,
    pub failed_attempts: AtomicU64,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            buffered_bytes: AtomicU64::new(0),
            buffered_records: AtomicU64::new(0),
            buffer_oldest_ms: AtomicI64::new(i64::MAX),
            in_flight: Mutex::new(BTreeMap::new()),
            delivered_records: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
        }
    }
}

impl StreamStats {
    /// Arrival time of the oldest record not yet delivered.
    pub fn oldest_undelivered_ms(&self) -> Option<i64> {
        let in_flight = self
            .in_flight
            .lock()
            .expect("stats lock")
            .values()
            .map(|(oldest, _)| *oldest)
            .min();
        let buffered = self.buffer_oldest_ms.load(Ordering::Relaxed);
        in_flight
            .into_iter()
            .chain((buffered != i64::MAX).then_some(buffered))
            .min()
    }

    /// Records flushed but not yet delivered.
    pub fn in_flight_records(&self) -> u64 {
        self.in_flight
            .lock()
            .expect("stats lock")
            .values()
            .map(|(_, n)| n)
            .sum()
    }

    fn observe_buffer(&self, buffer: &Buffer) {
        self.buffered_bytes.store(buffer.bytes(), Ordering::Relaxed);
        self.buffered_records
            .store(buffer.len() as u64, Ordering::Relaxed);
        self.buffer_oldest_ms.store(
            buffer.oldest_arrival_ms().unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    fn flushed(&self, batch: &Batch) {
        self.in_flight.lock().expect("stats lock").insert(
            batch.id,
            (batch.oldest_arrival_ms(), batch.records.len() as u64),
        );
    }

    fn settled(&self, batch_id: u64) {
        self.in_flight.lock().expect("stats lock").remove(&batch_id);
    }
}

/// The running stages of one stream.
pub struct StreamHandle {
    /// Accepted records enter here. Dropping every sender flushes and stops the stream.
    pub ingest: mpsc::Sender<Vec<Record>>,
    pub stats: Arc<StreamStats>,
    pub config: watch::Sender<Arc<Versioned>>,
    /// Finishes when every stage has drained.
    pub done: tokio::task::JoinHandle<()>,
}

/// What every stream's pipeline is given by the daemon.
#[derive(Clone)]
pub struct Shared {
    pub sink: Arc<dyn Destination>,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    /// Records undelivered for longer are counted as expired.
    pub retention: std::time::Duration,
}

/// Everything a stream's stages share.
#[derive(Clone)]
pub struct StreamContext {
    pub name: String,
    pub shared: Shared,
    pub spool: Arc<Spool>,
    pub stats: Arc<StreamStats>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Wires a stream from the sink backwards and starts it.
pub fn spawn_pipeline(
    name: &str,
    initial: Versioned,
    shared: Shared,
    spool: Arc<Spool>,
) -> StreamHandle {
    let stats = Arc::new(StreamStats::default());
    let ctx = StreamContext {
        name: name.to_string(),
        shared,
        spool,
        stats: stats.clone(),
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let (object_tx, object_rx) = mpsc::channel::<EncodedObject>(DELIVER_WORKERS);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(ENCODE_WORKERS);
    let (ingest_tx, ingest_rx) = mpsc::channel::<Vec<Record>>(64);

    let span = tracing::info_span!("stream", stream = %name);
    let deliver = tokio::spawn(deliver_stage(ctx.clone(), object_rx).instrument(span.clone()));
    let encode = tokio::spawn(
        encode_stage(ctx.clone(), config_rx.clone(), batch_rx, object_tx).instrument(span.clone()),
    );
    let buffer = tokio::spawn(buffer_stage(ctx, config_rx, ingest_rx, batch_tx).instrument(span));
    let done = tokio::spawn(async move {
        for (stage, task) in [("buffer", buffer), ("encode", encode), ("deliver", deliver)] {
            if let Err(e) = task.await {
                tracing::error!(stage, error = %e, "pipeline stage panicked");
            }
        }
    });
    StreamHandle {
        ingest: ingest_tx,
        stats,
        config: config_tx,
        done,
    }
}

/// Buffers records and flushes by size or interval; on close, flushes what is left.
async fn buffer_stage(
    ctx: StreamContext,
    mut config: watch::Receiver<Arc<Versioned>>,
    mut ingest: mpsc::Receiver<Vec<Record>>,
    batches: mpsc::Sender<Batch>,
) {
    let mut buffer = Buffer::new(config.borrow().spec.limits());
    let mut pending: VecDeque<Batch> = VecDeque::new();
    let mut open = true;
    let mut config_open = true;
    let flushed = |batch: Batch, pending: &mut VecDeque<Batch>| {
        ctx.shared
            .metrics
            .buffer_flushes
            .get_or_create(&FlushLabels {
                stream: ctx.name.clone(),
                reason: batch.reason.as_str().to_string(),
            })
            .inc();
        tracing::debug!(
            batch = batch.id,
            reason = batch.reason.as_str(),
            records = batch.records.len(),
            bytes = batch.bytes,
            "flush"
        );
        ctx.stats.flushed(&batch);
        pending.push_back(batch);
    };
    loop {
        let deadline = buffer.deadline();
        tokio::select! {
            biased;
            permit = batches.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("pending is not empty")),
                Err(_) => {
                    tracing::error!(batches = pending.len(), "encode stage is gone; records in these batches are not delivered");
                    return;
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                if let Some((id, _)) = deadline {
                    // Take what has already arrived into this batch (zero buffering under load
                    // still makes objects of more than one request).
                    let (now, wall) = (Instant::now(), now_ms());
                    for _ in 0..64 {
                        let Ok(records) = ingest.try_recv() else { break };
                        push_all(&mut buffer, records, now, wall, |b| flushed(b, &mut pending));
                    }
                    if let Some(batch) = buffer.on_timer(id, Instant::now()) {
                        flushed(batch, &mut pending);
                    }
                }
            },
            changed = config.changed(), if config_open => match changed {
                Ok(()) => {
                    let limits = config.borrow_and_update().spec.limits();
                    if let Some(batch) = buffer.set_limits(limits, Instant::now(), now_ms()) {
                        flushed(batch, &mut pending);
                    }
                }
                Err(_) => config_open = false,
            },
            msg = ingest.recv(), if open => match msg {
                Some(records) => {
                    let (now, wall) = (Instant::now(), now_ms());
                    push_all(&mut buffer, records, now, wall, |b| flushed(b, &mut pending));
                }
                None => {
                    open = false;
                    if let Some(batch) = buffer.flush(FlushReason::Shutdown) {
                        flushed(batch, &mut pending);
                    }
                }
            },
            else => break,
        }
        ctx.stats.observe_buffer(&buffer);
        ctx.shared
            .metrics
            .buffered_bytes
            .get_or_create(&Metrics::stream(&ctx.name))
            .set(buffer.bytes() as i64);
        if !open && pending.is_empty() && buffer.is_empty() {
            break;
        }
    }
}

/// Adds records to the buffer, handing every batch they fill to `on_flush`.
fn push_all(
    buffer: &mut Buffer,
    records: Vec<Record>,
    now: Instant,
    wall_ms: i64,
    mut on_flush: impl FnMut(Batch),
) {
    for r in records {
        if let Some(batch) = buffer.push(r, now, wall_ms) {
            on_flush(batch);
        }
    }
}

async fn sleep_until(deadline: Option<(u64, Instant)>) {
    match deadline {
        Some((_, at)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Names and compresses batches on the blocking pool, a few at a time.
async fn encode_stage(
    ctx: StreamContext,
    config: watch::Receiver<Arc<Versioned>>,
    mut batches: mpsc::Receiver<Batch>,
    objects: mpsc::Sender<EncodedObject>,
) {
    let mut running: JoinSet<Option<EncodedObject>> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && running.len() < ENCODE_WORKERS => match batch {
                Some(batch) => {
                    let current = config.borrow().clone();
                    let name = ctx.name.clone();
                    let stats = ctx.stats.clone();
                    let admission = ctx.shared.admission.clone();
                    running.spawn_blocking(move || {
                        let DestinationSpec::S3(spec) = &current.spec.destination;
                        match deliver::encode_s3(&batch, spec, &name, current.version) {
                            Ok(obj) => Some(obj),
                            Err(e) => {
                                // Compression into memory only fails on a bug.
                                tracing::error!(batch = batch.id, records = batch.records.len(), error = %e, "encoding failed; these records are not delivered");
                                stats.settled(batch.id);
                                admission.release(batch.bytes + 24 * batch.records.len() as u64);
                                None
                            }
                        }
                    });
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(Some(obj)) => {
                    if objects.send(obj).await.is_err() {
                        tracing::error!("deliver stage is gone");
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "encoding task panicked"),
            },
            else => break,
        }
    }
}

/// Uploads objects, a few at a time, each retried until it is written.
async fn deliver_stage(ctx: StreamContext, mut objects: mpsc::Receiver<EncodedObject>) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            obj = objects.recv(), if open && running.len() < DELIVER_WORKERS => match obj {
                Some(obj) => {
                    let ctx = ctx.clone();
                    running.spawn(async move { deliver_one(&ctx, obj).await }.in_current_span());
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "delivery task panicked");
                }
            },
            else => break,
        }
    }
}

async fn deliver_one(ctx: &StreamContext, obj: EncodedObject) {
    let records = obj.records.len() as u64;
    let expired_counted = std::sync::atomic::AtomicBool::new(false);
    let labels = Metrics::stream(&ctx.name);
    let result = deliver::deliver_with_retry(
        &ctx.shared.sink,
        &obj,
        ctx.shared.retention,
        now_ms,
        |reason, attempt, expired| {
            ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            ctx.shared.metrics.s3_failure(&ctx.name);
            tracing::warn!(key = %obj.key, attempt, reason, "S3 write failed; will retry");
            if expired && !expired_counted.swap(true, Ordering::Relaxed) {
                ctx.shared
                    .metrics
                    .spool_expired_records
                    .get_or_create(&labels)
                    .inc_by(records);
                tracing::error!(key = %obj.key, records, error_key = %obj.error_key, "records are past the retention age and still undelivered; trying the error output too");
            }
        },
    )
    .await;
    match result {
        DeliveryResult::Delivered { attempts } => {
            ctx.shared.metrics.delivered_to_s3(
                &ctx.name,
                &obj.arrivals_ms(),
                obj.raw_bytes,
                now_ms(),
            );
            ctx.stats
                .delivered_records
                .fetch_add(records, Ordering::Relaxed);
            tracing::debug!(key = %obj.key, attempts, records, "delivered");
        }
        DeliveryResult::ErrorOutput { attempts, reason } => {
            tracing::error!(key = %obj.error_key, attempts, records, reason, "records past the retention age written to the error output");
        }
        DeliveryResult::Rejected { attempts, reason } => {
            ctx.shared
                .metrics
                .undelivered_records
                .get_or_create(&labels)
                .inc_by(records);
            tracing::error!(key = %obj.key, attempts, reason, records, "S3 refused the object for good; its records are not delivered");
        }
    }
    // Delivered, in the error output, or refused for good and logged: either way the spool may
    // let them go.
    ctx.spool.delivered(obj.seqs());
    ctx.shared.admission.release(obj.raw_bytes + 24 * records);
    ctx.stats.settled(obj.batch_id);
}
