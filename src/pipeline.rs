//! One delivery stream's whole path, wired in one place:
//!
//! ```text
//! api ──records──▶ processing buffer ──batch──▶ process (transforms) ──records──▶ buffer
//!     ──batch──▶ encode (name + compress) ──object──▶ deliver (S3, retries)
//!                       process ──failed records (error output object)──▶ deliver
//! ```
//!
//! For OpenSearch and Splunk streams the encode stage delivers each batch itself
//! (`deliver_opensearch` / `deliver_splunk`); deliver then writes only their S3 objects (failed
//! records, `AllDocuments` / `AllEvents` backups) to the backup bucket.
//!
//! Records enter from the stream's spool reader, which hands them on only while the memory
//! budget has room: a backlog (an outage, a slow destination) stays on disk, and what is in
//! memory is what the stages hold. Bounded channels sit between the stages; when the reader is
//! short of memory the buffers flush what they hold (`FlushReason::Memory`) so the budget frees.
//! Without a `ProcessingConfiguration` the processing buffer and the process stage pass records
//! straight through.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hosepipe_sinks::Destination;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admission::Admission;
use crate::buffer::{Batch, FlushReason, Partitioned, Record};
use crate::config::stream::{DestinationSpec, StreamSpec};
use crate::deliver::error_output::FailedRecord;
use crate::deliver::prefix::RenderContext;
use crate::deliver::{self, DeliveryResult, EncodedObject};
use crate::metrics::{FlushLabels, Metrics};
use crate::partition::Partitioner;
use crate::spool::{Spool, memory_cost};
use crate::transform::catalog::Catalog;
use crate::transform::{Failure, Fate, METADATA_EXTRACTION_FAILED, Processing};

/// How many batches compress at once (the machine has 2 cores).
const ENCODE_WORKERS: usize = 2;
/// How many objects upload at once.
const DELIVER_WORKERS: usize = 4;
/// How many batches are transformed at once.
const PROCESS_WORKERS: usize = 2;

/// A stream's definition with its version (`VersionId`, also in object names).
#[derive(Clone)]
pub struct Versioned {
    pub spec: StreamSpec,
    pub version: u64,
    /// The processor chain built from the spec's `ProcessingConfiguration`.
    pub processing: Option<Arc<Processing>>,
    /// The Parquet converter built from `DataFormatConversionConfiguration` and its table.
    pub converter: Option<Arc<crate::encode::parquet::Converter>>,
}

/// Which of a stream's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Before the transforms, with the Lambda processor's buffering hints.
    Processing,
    /// Before the destination, with its buffering hints.
    Destination,
}

/// A flushed batch not yet delivered: (oldest arrival ms, records, partition).
type InFlight = (i64, u64, Option<crate::partition::Partition>);

/// Live counters of one stream, read by `/metrics` and `status`.
#[derive(Debug)]
pub struct StreamStats {
    pub buffered_bytes: AtomicU64,
    pub buffered_records: AtomicU64,
    buffer_oldest_ms: AtomicI64,
    processing_oldest_ms: AtomicI64,
    /// Flushed but not yet delivered: (stage, batch id) → (oldest arrival ms, records,
    /// partition).
    in_flight: Mutex<BTreeMap<(Stage, u64), InFlight>>,
    pub delivered_records: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Dynamic partitioning: the partitions with an open buffer, and the limit (`None`
    /// without partitioning).
    partitions: Mutex<(Vec<Option<crate::partition::Partition>>, Option<usize>)>,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            buffered_bytes: AtomicU64::new(0),
            buffered_records: AtomicU64::new(0),
            buffer_oldest_ms: AtomicI64::new(i64::MAX),
            processing_oldest_ms: AtomicI64::new(i64::MAX),
            in_flight: Mutex::new(BTreeMap::new()),
            delivered_records: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            partitions: Mutex::new((Vec::new(), None)),
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
            .map(|(oldest, _, _)| *oldest)
            .min();
        let buffered =
            [&self.buffer_oldest_ms, &self.processing_oldest_ms].map(|a| a.load(Ordering::Relaxed));
        in_flight
            .into_iter()
            .chain(buffered.into_iter().filter(|b| *b != i64::MAX))
            .min()
    }

    /// Records flushed but not yet delivered.
    pub fn in_flight_records(&self) -> u64 {
        self.in_flight
            .lock()
            .expect("stats lock")
            .values()
            .map(|(_, n, _)| n)
            .sum()
    }

    /// The partitions of the destination batches flushed and not yet delivered.
    /// How many partitions are active: those in `open` (buffered) together with those of the
    /// destination batches flushed and not yet delivered.
    fn count_active<'a>(
        &self,
        open: impl Iterator<Item = &'a Option<crate::partition::Partition>>,
    ) -> usize {
        let in_flight = self.in_flight.lock().expect("stats lock");
        let mut active: std::collections::HashSet<&Option<crate::partition::Partition>> =
            open.collect();
        active.extend(
            in_flight
                .iter()
                .filter(|((stage, _), _)| *stage == Stage::Destination)
                .map(|(_, (_, _, p))| p),
        );
        active.len()
    }

    fn is_in_flight(&self, partition: &Option<crate::partition::Partition>) -> bool {
        self.in_flight
            .lock()
            .expect("stats lock")
            .iter()
            .any(|((stage, _), (_, _, p))| *stage == Stage::Destination && p == partition)
    }

    /// Active partitions (open, or flushed and not yet delivered) and the limit, when the
    /// stream partitions dynamically.
    pub fn active_partitions(&self) -> Option<(usize, usize)> {
        let (open, limit) = &*self.partitions.lock().expect("stats lock");
        Some((self.count_active(open.iter()), (*limit)?))
    }

    fn observe_partitions(&self, buffer: &Partitioned, limit: Option<usize>) {
        let mut p = self.partitions.lock().expect("stats lock");
        p.0.clear();
        if limit.is_some() {
            p.0.extend(buffer.partitions().cloned());
        }
        p.1 = limit;
    }

    fn observe_buffer(&self, stage: Stage, buffer: &Partitioned) {
        let oldest = buffer.oldest_arrival_ms().unwrap_or(i64::MAX);
        match stage {
            Stage::Processing => self.processing_oldest_ms.store(oldest, Ordering::Relaxed),
            Stage::Destination => {
                self.buffered_bytes.store(buffer.bytes(), Ordering::Relaxed);
                self.buffered_records
                    .store(buffer.len() as u64, Ordering::Relaxed);
                self.buffer_oldest_ms.store(oldest, Ordering::Relaxed);
            }
        }
    }

    fn flushed(&self, stage: Stage, batch: &Batch) {
        self.in_flight.lock().expect("stats lock").insert(
            (stage, batch.id),
            (
                batch.oldest_arrival_ms(),
                batch.records.len() as u64,
                batch.partition.clone(),
            ),
        );
    }

    fn settled(&self, stage: Stage, batch_id: u64) {
        self.in_flight
            .lock()
            .expect("stats lock")
            .remove(&(stage, batch_id));
    }
}

/// The running stages of one stream.
pub struct StreamHandle {
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
    /// Per-stream quotas (the active-partition limit).
    pub quotas: Arc<BTreeMap<String, crate::config::Quota>>,
    /// Resolves `ProcessingConfiguration`s to transforms.
    pub catalog: Arc<Catalog>,
    /// Resolves format conversion's tables.
    pub schemas: Arc<crate::schema::SchemaSource>,
    /// The key service behind `KMSEncryptionConfig`, and its data-key reuse.
    pub keys: Arc<dyn crate::crypto::KeyService>,
    pub key_reuse: crate::crypto::sink::Reuse,
    /// The master key behind `AWS_OWNED_CMK` (spool encryption at rest).
    pub owned_key: String,
    /// Talks `_bulk` to OpenSearch / Elasticsearch destinations.
    pub opensearch: crate::deliver::opensearch::BulkClient,
    /// Talks HEC to Splunk destinations.
    pub splunk: crate::deliver::splunk::HecClient,
}

/// Everything a stream's stages share.
#[derive(Clone)]
pub struct StreamContext {
    pub name: String,
    pub shared: Shared,
    pub spool: Arc<Spool>,
    pub stats: Arc<StreamStats>,
    /// Spool seqs that became several records (de-aggregation): how many are unsettled.
    fragments: Arc<Mutex<HashMap<u64, u32>>>,
    /// The data key the stream's objects are being encrypted with (when reused).
    data_keys: Arc<crate::crypto::sink::DataKeyCache>,
    /// Makes OpenSearch document ids unique to this stream (its creation time).
    id_base: String,
    /// The stream's Splunk HEC channel (`X-Splunk-Request-Channel`).
    hec_channel: String,
}

impl StreamContext {
    /// A destination batch has left the pipeline: it no longer counts as in flight, and its
    /// partition may no longer be active.
    fn settled_destination(&self, batch_id: u64) {
        self.stats.settled(Stage::Destination, batch_id);
        if let Some((active, limit)) = self.stats.active_partitions() {
            self.shared.metrics.partitions(&self.name, active, limit);
        }
    }

    /// Each record of `seqs` goes to one more output (the `AllDocuments` backup): the spool
    /// keeps it until that one has settled too.
    fn add_outputs(&self, seqs: impl Iterator<Item = u64>) {
        let mut fragments = self.fragments.lock().expect("fragments lock");
        for seq in seqs {
            *fragments.entry(seq).or_insert(1) += 1;
        }
    }

    /// Lets the spool forget the records of `seqs` once every record made from each has
    /// settled (delivered, dropped, or in the error output).
    fn settle(&self, seqs: Vec<u64>) {
        let done: Vec<u64> = {
            let mut fragments = self.fragments.lock().expect("fragments lock");
            if fragments.is_empty() {
                seqs
            } else {
                seqs.into_iter()
                    .filter(|seq| match fragments.get_mut(seq) {
                        None => true,
                        Some(left) if *left <= 1 => {
                            fragments.remove(seq);
                            true
                        }
                        Some(left) => {
                            *left -= 1;
                            false
                        }
                    })
                    .collect()
            }
        };
        self.spool.delivered(done);
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Records the spool reader hands on at once, waiting for the processing buffer.
const INGEST_CHUNKS: usize = 4;

/// Wires a stream from the sink backwards and starts it. Returns its handle and where its
/// records enter (the spool reader's end): dropping that flushes and stops the stream.
pub fn spawn_pipeline(
    name: &str,
    initial: Versioned,
    shared: Shared,
    spool: Arc<Spool>,
    id_base: String,
) -> (StreamHandle, mpsc::Sender<Vec<Record>>) {
    let stats = Arc::new(StreamStats::default());
    let ctx = StreamContext {
        name: name.to_string(),
        shared,
        spool,
        stats: stats.clone(),
        fragments: Arc::default(),
        data_keys: Arc::default(),
        id_base,
        hec_channel: uuid::Uuid::new_v4().to_string(),
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let (object_tx, object_rx) = mpsc::channel::<EncodedObject>(DELIVER_WORKERS);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(ENCODE_WORKERS);
    let (processed_tx, processed_rx) = mpsc::channel::<Vec<Record>>(64);
    let (unprocessed_tx, unprocessed_rx) = mpsc::channel::<Batch>(PROCESS_WORKERS);
    let (ingest_tx, ingest_rx) = mpsc::channel::<Vec<Record>>(INGEST_CHUNKS);

    let span = tracing::info_span!("stream", stream = %name);
    let deliver = tokio::spawn(deliver_stage(ctx.clone(), object_rx).instrument(span.clone()));
    let encode = tokio::spawn(
        encode_stage(ctx.clone(), config_rx.clone(), batch_rx, object_tx.clone())
            .instrument(span.clone()),
    );
    let buffer = tokio::spawn(
        buffer_stage(
            ctx.clone(),
            Stage::Destination,
            config_rx.clone(),
            processed_rx,
            batch_tx,
            object_tx.clone(),
        )
        .instrument(span.clone()),
    );
    let process = tokio::spawn(
        process_stage(
            ctx.clone(),
            config_rx.clone(),
            unprocessed_rx,
            processed_tx,
            object_tx.clone(),
        )
        .instrument(span.clone()),
    );
    let processing_buffer = tokio::spawn(
        buffer_stage(
            ctx,
            Stage::Processing,
            config_rx,
            ingest_rx,
            unprocessed_tx,
            object_tx,
        )
        .instrument(span),
    );
    let done = tokio::spawn(async move {
        for (stage, task) in [
            ("processing buffer", processing_buffer),
            ("process", process),
            ("buffer", buffer),
            ("encode", encode),
            ("deliver", deliver),
        ] {
            if let Err(e) = task.await {
                tracing::error!(stage, error = %e, "pipeline stage panicked");
            }
        }
    });
    (
        StreamHandle {
            stats,
            config: config_tx,
            done,
        },
        ingest_tx,
    )
}

/// A buffer's hints under `v`; `None` when the stage passes records straight through (the
/// processing buffer of a stream without processors).
fn limits_for(stage: Stage, v: &Versioned) -> Option<crate::buffer::Limits> {
    match stage {
        Stage::Destination => Some(v.spec.limits()),
        Stage::Processing => v.processing.as_ref().map(|p| p.spec.limits),
    }
}

/// The active-partition limit when `v` partitions dynamically.
fn partition_limit(ctx: &StreamContext, stage: Stage, v: &Versioned) -> Option<usize> {
    let DestinationSpec::S3(s3) = &v.spec.destination else {
        return None;
    };
    (stage == Stage::Destination && s3.partitioning.is_some()).then(|| {
        ctx.shared
            .quotas
            .get(&ctx.name)
            .and_then(|q| q.active_partitions)
            .map_or(crate::config::DEFAULT_ACTIVE_PARTITIONS, |n| n.get()) as usize
    })
}

/// Buffers records (one buffer per partition) and flushes by size or interval; on close,
/// flushes what is left. Records of a new partition over the active-partition limit go to the
/// error output through `objects`.
async fn buffer_stage(
    ctx: StreamContext,
    stage: Stage,
    mut config: watch::Receiver<Arc<Versioned>>,
    mut ingest: mpsc::Receiver<Vec<Record>>,
    batches: mpsc::Sender<Batch>,
    objects: mpsc::Sender<EncodedObject>,
) {
    let initial = limits_for(stage, &config.borrow());
    let mut passthrough = initial.is_none();
    let mut limit = partition_limit(&ctx, stage, &config.borrow());
    let mut buffer = Partitioned::new(initial.unwrap_or(crate::buffer::Limits {
        size_bytes: 1024 * 1024,
        interval: std::time::Duration::ZERO,
    }));
    let mut pending: VecDeque<Batch> = VecDeque::new();
    let mut refused: VecDeque<EncodedObject> = VecDeque::new();
    let mut open = true;
    let mut config_open = true;
    let mut pressure = ctx.shared.admission.pressure();
    let flushed = |batch: Batch, pending: &mut VecDeque<Batch>| {
        if stage == Stage::Destination {
            ctx.shared
                .metrics
                .buffer_flushes
                .get_or_create(&FlushLabels {
                    stream: ctx.name.clone(),
                    reason: batch.reason.as_str().to_string(),
                })
                .inc();
        }
        tracing::debug!(
            ?stage,
            batch = batch.id,
            reason = batch.reason.as_str(),
            records = batch.records.len(),
            bytes = batch.bytes,
            "flush"
        );
        ctx.stats.flushed(stage, &batch);
        pending.push_back(batch);
    };
    loop {
        let deadline = buffer.deadline();
        tokio::select! {
            biased;
            permit = batches.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("pending is not empty")),
                Err(_) => {
                    tracing::error!(?stage, batches = pending.len(), "the next stage is gone; records in these batches are not delivered");
                    return;
                }
            },
            permit = objects.reserve(), if !refused.is_empty() => match permit {
                Ok(permit) => permit.send(refused.pop_front().expect("refused is not empty")),
                Err(_) => {
                    tracing::error!(?stage, "the deliver stage is gone; records over the partition limit are not delivered");
                    return;
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                // Take what has already arrived into this batch (zero buffering under load
                // still makes objects of more than one request).
                let (now, wall) = (Instant::now(), now_ms());
                let mut over = Vec::new();
                for _ in 0..64 {
                    let Ok(records) = ingest.try_recv() else { break };
                    push_all(&ctx, &mut buffer, limit, records, now, wall, &mut over, |b| flushed(b, &mut pending));
                }
                for batch in buffer.on_timer(Instant::now()) {
                    flushed(batch, &mut pending);
                }
                refused.extend(over_limit(&ctx, &config.borrow(), over));
            },
            Ok(()) = pressure.changed(), if !buffer.is_empty() => {
                // The readers are short of memory and this buffer holds some: let it go on.
                for batch in buffer.flush_all(FlushReason::Memory) {
                    flushed(batch, &mut pending);
                }
            },
            changed = config.changed(), if config_open => match changed {
                Ok(()) => {
                    let current = config.borrow_and_update().clone();
                    let limits = limits_for(stage, &current);
                    limit = partition_limit(&ctx, stage, &current);
                    passthrough = limits.is_none();
                    let flush = match limits {
                        Some(limits) => buffer.set_limits(limits, Instant::now(), now_ms()),
                        None => buffer.flush_all(FlushReason::Interval),
                    };
                    for batch in flush {
                        flushed(batch, &mut pending);
                    }
                }
                Err(_) => config_open = false,
            },
            msg = ingest.recv(), if open && !(passthrough && pending.len() >= 64) => match msg {
                Some(records) if passthrough => {
                    // Untracked: these records move on at once, and the next buffer counts them.
                    let bytes = records.iter().map(|r| r.data.len() as u64).sum();
                    pending.push_back(Batch { id: u64::MAX, records, bytes, reason: FlushReason::Size, partition: None });
                }
                Some(records) => {
                    let (now, wall) = (Instant::now(), now_ms());
                    let mut over = Vec::new();
                    push_all(&ctx, &mut buffer, limit, records, now, wall, &mut over, |b| flushed(b, &mut pending));
                    refused.extend(over_limit(&ctx, &config.borrow(), over));
                }
                None => {
                    open = false;
                    for batch in buffer.flush_all(FlushReason::Shutdown) {
                        flushed(batch, &mut pending);
                    }
                }
            },
            else => break,
        }
        ctx.stats.observe_buffer(stage, &buffer);
        if stage == Stage::Destination {
            let labels = Metrics::stream(&ctx.name);
            ctx.shared
                .metrics
                .buffered_bytes
                .get_or_create(&labels)
                .set(buffer.bytes() as i64);
            ctx.stats.observe_partitions(&buffer, limit);
            if let Some((active, limit)) = ctx.stats.active_partitions() {
                ctx.shared.metrics.partitions(&ctx.name, active, limit);
            }
        }
        if !open && pending.is_empty() && refused.is_empty() && buffer.is_empty() {
            break;
        }
    }
}

/// Partitions with records buffered or flushed and not yet delivered (Firehose's active
/// partitions: an undeliverable partition stays active).
fn active_partitions(ctx: &StreamContext, buffer: &Partitioned) -> usize {
    ctx.stats.count_active(buffer.partitions())
}

/// The error output for records refused by the active-partition limit.
fn over_limit(
    ctx: &StreamContext,
    current: &Versioned,
    records: Vec<Record>,
) -> Option<EncodedObject> {
    if records.is_empty() {
        return None;
    }
    let spec = current.spec.s3_output();
    tracing::warn!(
        records = records.len(),
        "the active-partition limit is reached; records of new partitions go to the error output"
    );
    ctx.shared
        .metrics
        .partition_limit_records
        .get_or_create(&Metrics::stream(&ctx.name))
        .inc_by(records.len() as u64);
    let failed: Vec<FailedRecord> = records
        .into_iter()
        .map(|record| {
            let message = format!(
                "partition {} would exceed the active-partition limit",
                record
                    .partition
                    .as_ref()
                    .map(|p| p.describe())
                    .unwrap_or_default()
            );
            FailedRecord {
                record,
                attempts: 0,
                code: PARTITION_LIMIT_EXCEEDED.into(),
                message,
                lambda_arn: None,
                extra: None,
                catalog_table: None,
            }
        })
        .collect();
    Some(deliver::encode_error_output(
        &failed,
        deliver::ErrorOutputType::ProcessingFailed,
        spec,
        &ctx.name,
        current.version,
        0,
        now_ms(),
    ))
}

/// The `errorCode` of records refused by the active-partition limit.
pub const PARTITION_LIMIT_EXCEEDED: &str = "DynamicPartitioning.ActivePartitionsLimitExceeded";

/// Runs batches through the stream's processors on the blocking pool, a few at a time; sends
/// what they emit on to the destination buffer and what fails to the error output.
async fn process_stage(
    ctx: StreamContext,
    config: watch::Receiver<Arc<Versioned>>,
    mut batches: mpsc::Receiver<Batch>,
    records: mpsc::Sender<Vec<Record>>,
    objects: mpsc::Sender<EncodedObject>,
) {
    let mut running: JoinSet<(u64, Vec<Record>, Vec<EncodedObject>)> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && running.len() < PROCESS_WORKERS => match batch {
                Some(batch) => {
                    let current = config.borrow().clone();
                    match current.processing.clone() {
                        Some(processing) => {
                            let ctx = ctx.clone();
                            running.spawn_blocking(move || process_batch(&ctx, &current, &processing, batch));
                        }
                        _ => {
                            let id = batch.id;
                            if records.send(batch.records).await.is_err() {
                                tracing::error!("buffer stage is gone");
                                return;
                            }
                            ctx.stats.settled(Stage::Processing, id);
                        }
                    }
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok((id, emitted, failed)) => {
                    for obj in failed {
                        if objects.send(obj).await.is_err() {
                            tracing::error!("deliver stage is gone");
                            return;
                        }
                    }
                    for chunk in emitted.chunks(500) {
                        if records.send(chunk.to_vec()).await.is_err() {
                            tracing::error!("buffer stage is gone");
                            return;
                        }
                    }
                    ctx.stats.settled(Stage::Processing, id);
                }
                Err(e) => tracing::error!(error = %e, "processing task panicked"),
            },
            else => break,
        }
    }
}

/// Runs one batch through the processors (blocking). Returns the batch id, the records to
/// deliver, and the error-output objects for the records that failed.
fn process_batch(
    ctx: &StreamContext,
    current: &Versioned,
    processing: &Processing,
    batch: Batch,
) -> (u64, Vec<Record>, Vec<EncodedObject>) {
    let started = std::time::Instant::now();
    let (fates, jq_time) = processing.run_timed(&batch.records);
    let seconds = started.elapsed().as_secs_f64();
    let spec = current.spec.s3_output();
    if processing.query.is_some() {
        ctx.shared
            .metrics
            .jq_processing_duration
            .get_or_create(&Metrics::stream(&ctx.name))
            .observe(jq_time.as_secs_f64());
    }
    // With dynamic partitioning each output record gets its partition here; one whose keys
    // are missing, or whose prefix does not evaluate, fails its input record.
    let now = now_ms();
    let mut partitioner = spec.partitioning.as_ref().map(|_| {
        let time = deliver::zoned(now, spec.time_zone);
        Partitioner::new(spec.prefix.partition_keys(), move |keys| {
            spec.prefix
                .render(&RenderContext {
                    time: &time,
                    error_output_type: None,
                    partition: Some(keys),
                })
                .map(drop)
                .map_err(|e| e.to_string())
        })
    });
    let mut emitted = Vec::new();
    let mut failed: BTreeMap<&'static str, (deliver::ErrorOutputType, Vec<FailedRecord>)> =
        BTreeMap::new();
    let mut dropped = Vec::new();
    let (mut ok_bytes, mut dropped_bytes, mut failed_bytes, mut ok_records) = (0, 0, 0, 0);
    let mut fragments = Vec::new();
    for (record, fate) in batch.records.iter().zip(fates) {
        let (fate, partitions) = match (fate, partitioner.as_mut()) {
            (Fate::Emit(out), Some(p)) => {
                match out
                    .iter()
                    .map(|e| p.assign(&e.query_keys, &e.partition_keys).map(Some))
                    .collect::<Result<Vec<_>, String>>()
                {
                    Ok(partitions) => (Fate::Emit(out), partitions),
                    Err(message) => (
                        Fate::Failed {
                            error_type: deliver::ErrorOutputType::ProcessingFailed,
                            failure: Failure::new(METADATA_EXTRACTION_FAILED, message),
                            attempts: 1,
                            lambda_arn: None,
                        },
                        Vec::new(),
                    ),
                }
            }
            (fate, _) => (fate, Vec::new()),
        };
        match fate {
            Fate::Emit(out) if out.is_empty() => {
                dropped_bytes += record.data.len() as u64;
                dropped.push(record.seq);
            }
            Fate::Emit(out) => {
                if out.len() > 1 {
                    fragments.push((record.seq, out.len() as u32));
                }
                ok_records += 1;
                let mut partitions = partitions.into_iter();
                for e in out {
                    ok_bytes += e.data.len() as u64;
                    emitted.push(Record {
                        data: e.data,
                        arrival_ms: record.arrival_ms,
                        seq: record.seq,
                        partition: partitions.next().flatten(),
                    });
                }
            }
            Fate::Failed {
                error_type,
                failure,
                attempts,
                lambda_arn,
            } => {
                failed_bytes += record.data.len() as u64;
                failed
                    .entry(error_type.as_str())
                    .or_insert_with(|| (error_type, Vec::new()))
                    .1
                    .push(FailedRecord {
                        record: record.clone(),
                        attempts,
                        code: failure.code,
                        message: failure.message,
                        lambda_arn,
                        extra: None,
                        catalog_table: None,
                    });
            }
        }
    }
    let failed_records: u64 = failed.values().map(|(_, v)| v.len() as u64).sum();
    ctx.shared.metrics.processed(
        &ctx.name,
        seconds,
        &[
            ("ok", ok_records, ok_bytes),
            ("dropped", dropped.len() as u64, dropped_bytes),
            ("failed", failed_records, failed_bytes),
        ],
    );
    if failed_records > 0 {
        tracing::warn!(
            batch = batch.id,
            records = failed_records,
            "records failed processing; writing them to the error output"
        );
    }
    // The memory budget now holds what goes on instead of what came in.
    let cost = |n: u64, bytes: u64| memory_cost(n as usize, bytes);
    ctx.shared
        .admission
        .force_reserve(cost(emitted.len() as u64, ok_bytes) + cost(failed_records, failed_bytes));
    ctx.shared
        .admission
        .release(cost(batch.records.len() as u64, batch.bytes));
    if !fragments.is_empty() {
        ctx.fragments
            .lock()
            .expect("fragments lock")
            .extend(fragments);
    }
    ctx.settle(dropped);
    let objects = failed
        .into_values()
        .map(|(error_type, records)| {
            deliver::encode_error_output(
                &records,
                error_type,
                spec,
                &ctx.name,
                current.version,
                batch.id,
                now,
            )
        })
        .collect();
    (batch.id, emitted, objects)
}

/// Adds records to the buffer, handing every batch they fill to `on_flush`. With an
/// active-partition `limit`, records that would open a partition over it go to `over`.
#[allow(clippy::too_many_arguments)]
fn push_all(
    ctx: &StreamContext,
    buffer: &mut Partitioned,
    limit: Option<usize>,
    records: Vec<Record>,
    now: Instant,
    wall_ms: i64,
    over: &mut Vec<Record>,
    mut on_flush: impl FnMut(Batch),
) {
    for mut r in records {
        if limit.is_some() {
            // Records of one spool read share its buffer; scattered over partitions that flush
            // at different times, each would keep all of it alive.
            r.data = bytes::Bytes::copy_from_slice(&r.data);
        }
        if let Some(limit) = limit
            && !buffer.is_open(&r.partition)
            && !ctx.stats.is_in_flight(&r.partition)
            && active_partitions(ctx, buffer) >= limit
        {
            over.push(r);
            continue;
        }
        if let Some(batch) = buffer.push(r, now, wall_ms) {
            on_flush(batch);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
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
    let mut running: JoinSet<Vec<EncodedObject>> = JoinSet::new();
    let mut open = true;
    loop {
        tokio::select! {
            batch = batches.recv(), if open && running.len() < ENCODE_WORKERS => match batch {
                Some(batch) => {
                    let current = config.borrow().clone();
                    let ctx = ctx.clone();
                    match &current.spec.destination {
                        DestinationSpec::S3(_) => {
                            running.spawn_blocking(move || encode_batch(&ctx, &current, batch));
                        }
                        DestinationSpec::OpenSearch(_) => {
                            running.spawn(
                                async move { deliver_opensearch(&ctx, &current, batch).await }
                                    .in_current_span(),
                            );
                        }
                        DestinationSpec::Splunk(_) => {
                            running.spawn(
                                async move { deliver_splunk(&ctx, &current, batch).await }
                                    .in_current_span(),
                            );
                        }
                    }
                }
                None => open = false,
            },
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(objs) => {
                    for obj in objs {
                        if objects.send(obj).await.is_err() {
                            tracing::error!("deliver stage is gone");
                            return;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "encoding task panicked"),
            },
            else => break,
        }
    }
}

/// One batch's objects (blocking CPU work): compressed records, or a Parquet file plus the
/// error output of the records that did not fit the table.
fn encode_batch(ctx: &StreamContext, current: &Versioned, batch: Batch) -> Vec<EncodedObject> {
    let spec = current.spec.s3_output();
    let failed = |error: &dyn std::fmt::Display| {
        // Compression or Parquet writing into memory only fails on a bug.
        tracing::error!(batch = batch.id, records = batch.records.len(), error = %error, "encoding failed; these records are not delivered");
        ctx.settled_destination(batch.id);
        ctx.shared
            .admission
            .release(memory_cost(batch.records.len(), batch.bytes));
        Vec::new()
    };
    match (&current.converter, &spec.conversion) {
        (Some(converter), Some(conversion)) => {
            match deliver::encode_s3_converted(
                &batch,
                spec,
                converter,
                &conversion.table,
                &ctx.name,
                current.version,
                now_ms(),
            ) {
                Ok(out) => {
                    ctx.shared
                        .metrics
                        .converted(&ctx.name, out.converted, out.failures);
                    if out.failures.0 > 0 {
                        tracing::warn!(
                            batch = batch.id,
                            records = out.failures.0,
                            "records do not fit the table; writing them to the error output"
                        );
                    }
                    if out.object.is_none() {
                        ctx.settled_destination(batch.id);
                    }
                    out.object.into_iter().chain(out.failed).collect()
                }
                Err(e) => failed(&e),
            }
        }
        _ => match deliver::encode_s3(&batch, spec, &ctx.name, current.version) {
            Ok(obj) => vec![obj],
            Err(e) => failed(&e),
        },
    }
}

/// With `AllDocuments` / `AllEvents`: the backup object of every record of `batch`. The spool
/// keeps each record until both its delivery and its backup copy have settled.
fn backup_all(
    ctx: &StreamContext,
    current: &Versioned,
    batch: &Batch,
    backup: &crate::config::stream::S3Spec,
) -> Option<EncodedObject> {
    ctx.add_outputs(batch.records.iter().map(|r| r.seq));
    let copy = Batch {
        id: u64::MAX,
        ..batch.clone()
    };
    match deliver::encode_s3(&copy, backup, &ctx.name, current.version) {
        Ok(obj) => {
            ctx.shared
                .admission
                .force_reserve(memory_cost(obj.records.len(), obj.raw_bytes));
            Some(obj)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the backup of every record; this batch is not backed up");
            ctx.settle(batch.records.iter().map(|r| r.seq).collect());
            None
        }
    }
}

/// A destination reached over HTTP.
#[derive(Clone, Copy)]
enum Http {
    OpenSearch,
    Splunk,
}

/// Counts and settles what an HTTP destination took (`delivered`), and turns what it did not
/// into its error output in the backup bucket.
fn after_http_delivery(
    ctx: &StreamContext,
    current: &Versioned,
    batch_id: u64,
    delivered: &[Record],
    failed: &[FailedRecord],
    dest: Http,
) -> Option<EncodedObject> {
    let metrics = &ctx.shared.metrics;
    // OpenSearch's latency histogram is per document; Splunk's is the acknowledgement's.
    let (dest_metrics, error_type, per_record_latency) = match dest {
        Http::OpenSearch => (
            &metrics.opensearch,
            deliver::ErrorOutputType::OpenSearchFailed,
            true,
        ),
        Http::Splunk => (
            &metrics.splunk,
            deliver::ErrorOutputType::SplunkFailed,
            false,
        ),
    };
    let bytes: u64 = delivered.iter().map(|r| r.data.len() as u64).sum();
    metrics.delivered_http(
        dest_metrics,
        &ctx.name,
        &delivered.iter().map(|r| r.arrival_ms).collect::<Vec<_>>(),
        bytes,
        now_ms(),
        per_record_latency,
    );
    dest_metrics
        .failed
        .get_or_create(&Metrics::stream(&ctx.name))
        .inc_by(failed.len() as u64);
    ctx.stats
        .delivered_records
        .fetch_add(delivered.len() as u64, Ordering::Relaxed);
    ctx.settle(delivered.iter().map(|r| r.seq).collect());
    ctx.shared
        .admission
        .release(memory_cost(delivered.len(), bytes));
    ctx.settled_destination(batch_id);
    if failed.is_empty() {
        return None;
    }
    tracing::warn!(
        batch = batch_id,
        records = failed.len(),
        code = %failed[0].code,
        first_reason = %failed[0].message,
        "records the destination did not take go to the S3 backup"
    );
    Some(deliver::encode_error_output(
        failed,
        error_type,
        current.spec.s3_output(),
        &ctx.name,
        current.version,
        batch_id,
        now_ms(),
    ))
}

/// Indexes one batch in OpenSearch (retrying what failed for a retryable reason, within the
/// stream's `RetryOptions`); returns the S3 objects that follow from it: the failed documents
/// (`AmazonOpenSearchService-failed`) and, with `AllDocuments`, the backup of every record.
async fn deliver_opensearch(
    ctx: &StreamContext,
    current: &Versioned,
    batch: Batch,
) -> Vec<EncodedObject> {
    let DestinationSpec::OpenSearch(spec) = &current.spec.destination else {
        unreachable!("called for OpenSearch destinations only");
    };
    let mut objects = Vec::new();
    if spec.backup_all {
        objects.extend(backup_all(ctx, current, &batch, &spec.backup));
    }
    let (docs, mut failed) = deliver::opensearch::prepare(spec, &batch.records, &ctx.id_base);
    let outcome = ctx
        .shared
        .opensearch
        .deliver(spec, docs, |attempt| {
            ctx.shared
                .metrics
                .opensearch
                .request(&ctx.name, attempt.answered);
            if attempt.pending > 0 {
                ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
            if attempt.retrying {
                tracing::warn!(
                    batch = batch.id,
                    documents = attempt.pending,
                    reason = attempt.reason,
                    "OpenSearch did not take every document; retrying those"
                );
            }
        })
        .await;
    let indexed: Vec<Record> = outcome.indexed.into_iter().map(|d| d.record).collect();
    failed.extend(outcome.failed);
    let failed: Vec<FailedRecord> = failed
        .iter()
        .map(|f| FailedRecord {
            record: f.doc.record.clone(),
            attempts: f.attempts,
            code: f.code.clone(),
            message: f.message.clone(),
            lambda_arn: None,
            extra: Some(deliver::opensearch::failed_fields(
                f,
                spec.type_name.as_deref(),
            )),
            catalog_table: None,
        })
        .collect();
    objects.extend(after_http_delivery(
        ctx,
        current,
        batch.id,
        &indexed,
        &failed,
        Http::OpenSearch,
    ));
    objects
}

/// Sends one batch to Splunk HEC and waits for its indexer acknowledgement (sending it again
/// when the ack does not come in time, within `RetryOptions`); returns the S3 objects that
/// follow: the failed events (`splunk-failed`) and, with `AllEvents`, the backup of every record.
async fn deliver_splunk(
    ctx: &StreamContext,
    current: &Versioned,
    batch: Batch,
) -> Vec<EncodedObject> {
    let DestinationSpec::Splunk(spec) = &current.spec.destination else {
        unreachable!("called for Splunk destinations only");
    };
    let mut objects = Vec::new();
    if spec.backup_all {
        objects.extend(backup_all(ctx, current, &batch, &spec.backup));
    }
    let outcome = ctx
        .shared
        .splunk
        .deliver(spec, &ctx.name, &ctx.hec_channel, &batch.records, |attempt| {
            ctx.shared.metrics.splunk.request(&ctx.name, false);
            ctx.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = attempt.failure {
                tracing::warn!(batch = batch.id, code = f.code, reason = %f.message, retrying = attempt.retrying, "Splunk HEC did not take the batch");
            }
        })
        .await;
    let (delivered, failed) = match outcome.result {
        Ok(latency) => {
            let splunk = &ctx.shared.metrics.splunk;
            splunk.request(&ctx.name, true);
            splunk
                .latency
                .get_or_create(&Metrics::stream(&ctx.name))
                .observe(latency.as_secs_f64());
            (batch.records.as_slice(), Vec::new())
        }
        Err(f) => {
            let mut n: HashMap<u64, u32> = HashMap::new();
            let failed: Vec<FailedRecord> = batch
                .records
                .iter()
                .map(|r| {
                    let k = n.entry(r.seq).or_insert(0);
                    *k += 1;
                    let mut extra = serde_json::Map::new();
                    extra.insert(
                        "EventId".into(),
                        deliver::splunk::event_id(r.seq, *k - 1).into(),
                    );
                    FailedRecord {
                        record: r.clone(),
                        attempts: outcome.attempts,
                        code: f.code.to_string(),
                        message: f.message.clone(),
                        lambda_arn: None,
                        extra: Some(extra),
                        catalog_table: None,
                    }
                })
                .collect();
            (&[][..], failed)
        }
    };
    objects.extend(after_http_delivery(
        ctx,
        current,
        batch.id,
        delivered,
        &failed,
        Http::Splunk,
    ));
    objects
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
    // A stream with KMSEncryptionConfig writes every object through the encrypting sink.
    let sink: Arc<dyn hosepipe_sinks::Destination> = match &obj.encryption {
        None => ctx.shared.sink.clone(),
        Some(key_id) => {
            let (metrics, stream) = (ctx.shared.metrics.clone(), ctx.name.clone());
            Arc::new(crate::crypto::sink::Encrypting {
                inner: ctx.shared.sink.clone(),
                keys: ctx.shared.keys.clone(),
                key_id: key_id.clone(),
                stream: ctx.name.clone(),
                cache: ctx.data_keys.clone(),
                reuse: ctx.shared.key_reuse,
                on_call: Arc::new(move |result| metrics.key_service_call(&stream, result)),
            })
        }
    };
    let result = deliver::deliver_with_retry(
        &sink,
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
                tracing::error!(key = %obj.key, records, error_key = %obj.error_key, "records are past the retention age (or dynamic partitioning's retry duration) and still undelivered; trying the error output too");
            }
        },
    )
    .await;
    match result {
        DeliveryResult::Delivered { attempts } if obj.error_output.is_some() => {
            tracing::info!(key = %obj.key, attempts, records, "failed records written to the error output");
        }
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
    ctx.settle(obj.seqs());
    ctx.shared
        .admission
        .release(memory_cost(records as usize, obj.raw_bytes));
    if obj.error_output.is_none() {
        ctx.settled_destination(obj.batch_id);
    }
}
