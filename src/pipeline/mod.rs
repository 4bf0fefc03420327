//! One delivery stream's whole path, wired in one place:
//!
//! ```text
//! api ──records──▶ processing buffer ──batch──▶ process (transforms) ──records──▶ buffer
//!     ──batch──▶ encode (name + compress) ──object──▶ deliver (S3, retries)
//!                       process ──failed records (error output object)──▶ deliver
//! ```
//!
//! For a destination reached over HTTP (OpenSearch, Splunk) the encode stage passes each batch
//! on as it is; the deliver stage sends it (`deliver::send_http`), then writes the S3 objects
//! that follow from it (failed records, `AllDocuments` / `AllEvents` backups) to the backup
//! bucket.
//!
//! Records enter from the stream's spool reader, which hands them on only while the memory
//! budget has room: a backlog (an outage, a slow destination) stays on disk, and what is in
//! memory is what the stages hold. Bounded channels sit between the stages; when the reader is
//! short of memory the buffers flush what they hold (`FlushReason::Memory`) so the budget frees.
//! Without a `ProcessingConfiguration` the processing buffer and the process stage pass records
//! straight through.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hosepipe_sinks::Destination;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::admission::Admission;
use crate::buffer::{Batch, FlushReason, Owed, Partitioned, Record};
use crate::config::stream::{DestinationSpec, StreamSpec};
use crate::deliver::DeliveryResult;
use crate::encode::EncodedObject;
use crate::encode::error_output::{FailedRecord, Reason};
use crate::encode::prefix::RenderContext;
use crate::journal::{Found, Item, Journal};
use crate::metrics::{FlushLabels, Metrics};
use crate::partition::Partitioner;
use crate::spool::{Log, memory_cost};
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
    /// Whether delivery is blocked by a failure retrying cannot fix, and by what.
    pub blocked: crate::deliver::blocked::BlockedState,
    /// Records written to the error output.
    pub error_output_records: AtomicU64,
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
            blocked: Default::default(),
            error_output_records: AtomicU64::new(0),
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
    /// Journal each object's records before its upload (exactly-once objects).
    pub object_journal: bool,
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
    /// The clients of the destinations reached over HTTP.
    pub clients: crate::deliver::Clients,
}

/// What the deliver stage is handed: an object for S3, or a batch for an HTTP destination (the
/// failed records and backups that follow from it become objects it writes too).
pub(super) enum Delivery {
    Object(EncodedObject),
    /// A batch of a stream whose destination is reached over HTTP, with the definition it was
    /// flushed under.
    Http(Arc<Versioned>, Batch),
}

/// Everything a stream's stages share.
#[derive(Clone)]
pub struct StreamContext {
    pub name: String,
    pub shared: Shared,
    pub spool: Arc<Log>,
    pub stats: Arc<StreamStats>,
    /// The data key the stream's objects are being encrypted with (when reused).
    data_keys: Arc<crate::crypto::sink::DataKeyCache>,
    /// Identifies the stream to its destination for good (its creation time): OpenSearch
    /// document ids start with it.
    id_base: String,
    /// Identifies this run of the stream to its destination (a UUID): Splunk's HEC channel.
    channel: String,
    /// The object journal (none with `[spool] object_journal = false`, or when it cannot be
    /// opened: then objects are at-least-once).
    journal: Option<Arc<Journal>>,
    /// What recovery found of the objects being uploaded when the stream last stopped.
    recovered: Arc<recovery::Recovered>,
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

    /// A ledger for settling records; what it gathers applies when it drops.
    fn ledger(&self) -> Ledger<'_> {
        Ledger {
            ctx: self,
            reserve: 0,
            release: 0,
            forget: Vec::new(),
        }
    }
}

/// Settling, gathered: the only code that lets the spool forget records or gives the memory
/// budget back what records held (a tidy test keeps it so). Each record carries its token
/// ([`Owed`](crate::buffer::Owed)); a ledger takes records (delivered, dropped, in the error
/// output, refused for good; re-made by processors; copied for a backup) and applies what they
/// owed to the budget and the spool at once when it drops.
pub(super) struct Ledger<'a> {
    ctx: &'a StreamContext,
    reserve: u64,
    release: u64,
    forget: Vec<u64>,
}

impl Ledger<'_> {
    /// `record` has left the pipeline: the budget gets its memory back, and the spool forgets
    /// its position once every record sharing it has settled.
    pub(super) fn settle(&mut self, record: Record) {
        self.release += record.owed.cost;
        let last = match &record.owed.shares {
            None => true,
            Some(shares) => shares.fetch_sub(1, Ordering::AcqRel) == 1,
        };
        if last {
            self.forget.push(record.seq);
        }
    }

    pub(super) fn settle_all(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            self.settle(r);
        }
    }

    /// Records that left without being delivered or settled (an encoding bug): the budget
    /// gets their memory back; the spool keeps them, and they go out after a restart.
    pub(super) fn abandon(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            self.release += r.owed.cost;
        }
    }

    /// `record` became `parts` (what its processors emitted, each with its partition): each
    /// part holds its own memory and a share of the spool position, and is numbered from 1 in
    /// order (the object journal names it by seq and number). No parts: it is settled.
    pub(super) fn remake(
        &mut self,
        record: Record,
        parts: Vec<(bytes::Bytes, Option<crate::partition::Partition>)>,
        out: &mut Vec<Record>,
    ) {
        let shares = match parts.len() {
            0 => return self.settle(record),
            1 => record.owed.shares.clone(),
            n => Some(self.share(&record, n as u32 - 1)),
        };
        self.release += record.owed.cost;
        for (i, (data, partition)) in parts.into_iter().enumerate() {
            let cost = memory_cost(1, data.len() as u64);
            self.reserve += cost;
            out.push(Record {
                data,
                arrival_ms: record.arrival_ms,
                seq: record.seq,
                part: i as u32 + 1,
                partition,
                owed: Owed {
                    cost,
                    shares: shares.clone(),
                },
            });
        }
    }

    /// A copy of `record` that goes to one more output (the `AllDocuments` backup): it holds
    /// memory of its own, and the spool keeps the position until both have settled.
    pub(super) fn copy(&mut self, record: &mut Record) -> Record {
        let shares = self.share(record, 1);
        record.owed.shares = Some(shares.clone());
        let cost = memory_cost(1, record.data.len() as u64);
        self.reserve += cost;
        Record {
            data: record.data.clone(),
            arrival_ms: record.arrival_ms,
            seq: record.seq,
            part: record.part,
            partition: record.partition.clone(),
            owed: Owed {
                cost,
                shares: Some(shares),
            },
        }
    }

    /// The shares of `record`'s spool position, `more` of them added.
    fn share(&self, record: &Record, more: u32) -> Arc<AtomicU32> {
        match &record.owed.shares {
            Some(shares) => {
                shares.fetch_add(more, Ordering::AcqRel);
                shares.clone()
            }
            None => Arc::new(AtomicU32::new(1 + more)),
        }
    }
}

impl Drop for Ledger<'_> {
    fn drop(&mut self) {
        let admission = &self.ctx.shared.admission;
        if self.reserve > 0 {
            admission.force_reserve(self.reserve);
        }
        if self.release > 0 {
            admission.release(self.release);
        }
        if !self.forget.is_empty() {
            self.ctx.spool.delivered(std::mem::take(&mut self.forget));
        }
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
    spool: Arc<Log>,
    id_base: String,
) -> (StreamHandle, mpsc::Sender<Vec<Record>>) {
    let stats = Arc::new(StreamStats::default());
    // The journal lives beside the local spool; a fleet's log is JetStream's (at-least-once).
    let (journal, found) = match spool.dir().filter(|_| shared.object_journal) {
        Some(dir) => match Journal::open(dir, spool.syncs()) {
            Ok((journal, found)) => (Some(Arc::new(journal)), found),
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "cannot open the object journal; after a crash this stream's objects may repeat records");
                (None, Vec::new())
            }
        },
        None => (None, Vec::new()),
    };
    let ctx = StreamContext {
        name: name.to_string(),
        shared,
        spool,
        stats: stats.clone(),
        data_keys: Arc::default(),
        id_base,
        channel: uuid::Uuid::new_v4().to_string(),
        journal,
        recovered: Arc::default(),
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let (object_tx, object_rx) = mpsc::channel::<Delivery>(DELIVER_WORKERS);
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
        async move {
            // Nothing is buffered before recovery knows which records are already written.
            let mut ingest_rx = ingest_rx;
            if !recovery::recover(&ctx, found, &ingest_rx).await {
                while let Ok(records) = ingest_rx.try_recv() {
                    ctx.ledger().abandon(records);
                }
                return;
            }
            buffer_stage(
                ctx,
                Stage::Processing,
                config_rx,
                ingest_rx,
                unprocessed_tx,
                object_tx,
            )
            .await
        }
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

mod buffer;
mod deliver;
mod encode;
mod process;
mod recovery;

use buffer::buffer_stage;
use deliver::deliver_stage;
use encode::encode_stage;
use process::process_stage;

#[cfg(test)]
mod tests;
