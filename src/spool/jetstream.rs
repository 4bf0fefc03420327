//! A delivery stream's log on NATS JetStream (`[log] backend = "jetstream"`): what a fleet of
//! nodes shares instead of each node's local spool.
//!
//! - **Append**: a put's records travel together, as few JetStream messages as the servers'
//!   `max_payload` allows (usually one: [`encode_batch`]), published to the stream's subject;
//!   a put is answered once JetStream has acknowledged its messages (stored on the stream's
//!   replicas). A message JetStream does not acknowledge (no quorum, the stream full, the
//!   publish timed out) is refused with "Slow down.", with every record after it. One message
//!   per put, not per record, is what makes JetStream's work per record small.
//! - **Read**: every node pulls from the stream's one durable consumer (`hosepipe`, explicit
//!   acks), so JetStream hands each record to one node at a time. A node fetches a chunk only
//!   once its memory budget has room for it, and hands it to the pipeline like the local
//!   reader; the consumer's ack-pending limit stops JetStream handing out more, fleet-wide.
//! - **Settle**: a record is acknowledged once the pipeline settles it (written, or in the
//!   error output); the stream's work-queue retention then deletes it. A node that holds a
//!   record longer than the ack wait (buffering, a destination outage) renews it (`+WPI`), so
//!   JetStream gives it to another node only when this one is gone. A node that leaves hands
//!   back (`-NAK`) what it still holds.
//!
//! A record's seq is its message's stream sequence (unique across the fleet) shifted left 16
//! bits, plus its index in the message; a message is acknowledged once all its records settle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::{ReadBudget, SpoolError, SpoolObserver, SpoolStats, memory_cost};
use crate::buffer::{Owed, Record};
use crate::fleet::Fleet;

/// The consumer every node shares.
const CONSUMER: &str = "hosepipe";
/// A chunk handed on ends once it has this many records or `FETCH_BYTES` (a message is never
/// split).
const FETCH_RECORDS: usize = 2000;
const FETCH_BYTES: usize = 1 << 20;
/// What the client asks JetStream for at a time, and so at most what waits in its buffer, not
/// yet held: messages, and bytes (above the servers' usual 1 MiB `max_payload`, so one message
/// always fits).
const PULL_MESSAGES: usize = 64;
const PULL_BYTES: usize = 8 << 20;
/// How long the reader waits for a first record before it looks at its mode again.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// How the reader goes on.
const READING: u8 = 0;
/// Reads until JetStream has nothing more to hand out, then ends (the stream is deleted).
const DRAINING: u8 = 1;
/// Ends at once; what the node holds is delivered or handed back (the node stops).
const LEAVING: u8 = 2;

/// A record's seq: its message's stream sequence and its index in the message.
const INDEX_BITS: u32 = 16;
/// Records in one message at most.
const MAX_PER_MESSAGE: usize = (1 << INDEX_BITS) - 1;

fn record_seq(message: u64, index: usize) -> u64 {
    (message << INDEX_BITS) | index as u64
}

fn message_of(seq: u64) -> u64 {
    seq >> INDEX_BITS
}

/// What begins every message hosepipe publishes (version 1 of the batch format).
const BATCH_MAGIC: &[u8; 5] = b"HPJS\x01";
/// A record's framing in a batch: arrival (i64 LE) and length (u32 LE).
const RECORD_HEADER: usize = 12;

/// Records as one message: the magic, the count (u32 LE), then per record its arrival ms
/// (i64 LE), its length (u32 LE) and its bytes.
pub fn encode_batch(records: &[Record]) -> Bytes {
    let size = BATCH_MAGIC.len()
        + 4
        + records
            .iter()
            .map(|r| RECORD_HEADER + r.data.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.arrival_ms.to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.data);
    }
    Bytes::from(out)
}

/// [`encode_batch`] undone: each record's arrival and bytes (slices of `payload`), or why the
/// message is not a batch.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<(i64, Bytes)>, String> {
    let rest = payload
        .strip_prefix(BATCH_MAGIC.as_slice())
        .ok_or("not a hosepipe batch (no HPJS\\x01 header)")?;
    let count = rest
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("a batch cut short in its count")?;
    if count > MAX_PER_MESSAGE {
        return Err(format!(
            "a batch of {count} records, over {MAX_PER_MESSAGE}"
        ));
    }
    let mut at = BATCH_MAGIC.len() + 4;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let header = payload
            .get(at..at + RECORD_HEADER)
            .ok_or_else(|| format!("a batch cut short at record {i}"))?;
        let arrival = i64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        at += RECORD_HEADER;
        if payload.len() - at < len {
            return Err(format!("a batch cut short in record {i}"));
        }
        out.push((arrival, payload.slice(at..at + len)));
        at += len;
    }
    if at != payload.len() {
        return Err(format!(
            "{} bytes after the batch's records",
            payload.len() - at
        ));
    }
    Ok(out)
}

/// The records of `records` in publishing order, as ranges that each fit one message of at
/// most `limit` bytes (a record larger than that alone in its own).
fn split_batches(records: &[Record], limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = BATCH_MAGIC.len() + 4;
    for (i, r) in records.iter().enumerate() {
        let add = RECORD_HEADER + r.data.len();
        if i > start && (size + add > limit || i - start >= MAX_PER_MESSAGE) {
            out.push(start..i);
            start = i;
            size = BATCH_MAGIC.len() + 4;
        }
        size += add;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

/// A message this node holds: where its acknowledgement goes, and how many of its records
/// have not settled yet.
struct Held {
    reply: async_nats::Subject,
    renewed: Instant,
    unsettled: usize,
}

struct State {
    intake_open: AtomicBool,
    mode: AtomicU8,
    closed: AtomicBool,
    /// By message stream sequence.
    held: Mutex<HashMap<u64, Held>>,
    /// Records of the held messages not settled yet.
    held_records: AtomicU64,
}

pub struct StreamLog {
    fleet: Arc<Fleet>,
    name: String,
    subject: String,
    /// The JetStream stream's name.
    stream_name: String,
    /// Created through the API, so the fleet deletes its JetStream stream with it (a declared
    /// stream's is every node's, from its config file).
    owned: bool,
    stream: stream::Stream,
    consumer: PullConsumer,
    observer: Arc<dyn SpoolObserver>,
    stats: Arc<SpoolStats>,
    state: Arc<State>,
    acks: mpsc::UnboundedSender<Vec<u64>>,
    acks_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<u64>>>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    acker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StreamLog {
    /// Creates the delivery stream's JetStream stream and consumer, or finds them.
    pub async fn open(
        fleet: Arc<Fleet>,
        name: &str,
        generation: Option<&str>,
        observer: Arc<dyn SpoolObserver>,
        stats: Arc<SpoolStats>,
    ) -> Result<StreamLog, SpoolError> {
        let s = &fleet.settings;
        let config = stream::Config {
            name: fleet.stream_name(name, generation),
            subjects: vec![fleet.subject(name, generation)],
            description: Some(format!("hosepipe delivery stream {name}")),
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: s.replicas,
            discard: DiscardPolicy::New,
            max_bytes: s.max_stream_bytes.map_or(-1, |b| b as i64),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let what = format!("the JetStream stream of {name}");
        let consumer_config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            description: Some("every hosepipe node reads through this consumer".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: s.ack_wait,
            max_deliver: -1,
            max_ack_pending: s.max_ack_pending,
            max_waiting: 512,
            num_replicas: s.replicas,
            ..Default::default()
        };
        let (stream, consumer) = Fleet::patiently(&what, || async {
            let stream = fleet
                .js
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| e.to_string())?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(CONSUMER, consumer_config.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((stream, consumer))
        })
        .await
        .map_err(SpoolError::Log)?;
        let (acks, acks_rx) = mpsc::unbounded_channel();
        Ok(StreamLog {
            subject: fleet.subject(name, generation),
            stream_name: fleet.stream_name(name, generation),
            owned: generation.is_some(),
            fleet,
            name: name.to_string(),
            stream,
            consumer,
            observer,
            stats,
            state: Arc::new(State {
                intake_open: AtomicBool::new(true),
                mode: AtomicU8::new(READING),
                closed: AtomicBool::new(false),
                held: Mutex::new(HashMap::new()),
                held_records: AtomicU64::new(0),
            }),
            acks,
            acks_rx: Mutex::new(Some(acks_rx)),
            reader: Mutex::new(None),
            acker: Mutex::new(None),
        })
    }

    /// Publishes the records and waits for JetStream's acknowledgements. Returns how many of
    /// them, from the first, are in JetStream (each given its stream sequence).
    pub async fn append(&self, records: &mut [Record]) -> Result<usize, SpoolError> {
        if !self.state.intake_open.load(Ordering::Relaxed) {
            return Err(SpoolError::Closed);
        }
        // No server to publish to: refused at once, not after the publish timeout.
        if self.fleet.client.connection_state() != async_nats::connection::State::Connected {
            self.observer.published(0.0, 0, records.len());
            return Err(SpoolError::Log("not connected to any NATS server".into()));
        }
        let start = Instant::now();
        // A little under the servers' limit, for the subject and headers.
        let limit = self
            .fleet
            .client
            .server_info()
            .max_payload
            .saturating_sub(4096)
            .max(64 * 1024);
        let batches = split_batches(records, limit);
        let mut pending = Vec::with_capacity(batches.len());
        let mut failure = None;
        for range in &batches {
            let payload = encode_batch(&records[range.clone()]);
            match self.fleet.js.publish(self.subject.clone(), payload).await {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        // Awaited together: each waits `publish_timeout_ms` at most, all at once.
        let acks =
            futures_util::future::join_all(pending.into_iter().map(|a| a.into_future())).await;
        let mut stored = 0;
        for (range, ack) in batches.into_iter().zip(acks) {
            match ack {
                Ok(ack) if stored == range.start => {
                    for (i, r) in records[range.clone()].iter_mut().enumerate() {
                        r.seq = record_seq(ack.sequence, i);
                    }
                    stored = range.end;
                }
                // Stored, but after one that was not: the producer is told it failed (and
                // may send it again), and it is delivered.
                Ok(_) => {}
                Err(e) => {
                    failure.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.observer.published(
            start.elapsed().as_secs_f64(),
            stored,
            records.len() - stored,
        );
        match (stored, failure) {
            (0, Some(e)) => Err(SpoolError::Log(e)),
            (_, Some(e)) => {
                tracing::warn!(stream = %self.name, error = %e, stored, refused = records.len() - stored, "JetStream did not acknowledge every record of a put");
                Ok(stored)
            }
            _ => Ok(stored),
        }
    }

    /// Starts the reader (JetStream → `ingest`) and the acknowledger.
    pub fn start_reader(
        &self,
        ingest: tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: Arc<dyn ReadBudget>,
    ) {
        let Some(acks_rx) = self.acks_rx.lock().expect("acks lock").take() else {
            return;
        };
        let reader = Reader {
            name: self.name.clone(),
            consumer: self.consumer.clone(),
            observer: self.observer.clone(),
            state: self.state.clone(),
        };
        *self.reader.lock().expect("reader lock") = Some(tokio::spawn(reader.run(ingest, budget)));
        let acker = Acker {
            client: self.fleet.client.clone(),
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            ack_wait: self.fleet.settings.ack_wait,
            observer: self.observer.clone(),
            stats: self.stats.clone(),
            state: self.state.clone(),
            unconfirmed: Vec::new(),
        };
        *self.acker.lock().expect("acker lock") = Some(tokio::spawn(acker.run(acks_rx)));
    }

    /// Refuses puts from now on. With `drain`, the reader goes on until JetStream has nothing
    /// more to hand out (the stream is being deleted); without, it stops at once (the node
    /// stops; the other nodes read the rest). Either way it then closes the pipeline's input.
    pub fn stop_intake(&self, drain: bool) {
        self.state.intake_open.store(false, Ordering::Relaxed);
        let mode = if drain { DRAINING } else { LEAVING };
        self.state.mode.fetch_max(mode, Ordering::Relaxed);
    }

    /// Acknowledges settled records.
    pub fn delivered(&self, seqs: Vec<u64>) {
        let _ = self.acks.send(seqs);
    }

    /// Stops reading and acknowledging; hands back to JetStream what this node still holds,
    /// so another node takes it at once instead of after the ack wait.
    pub async fn close(&self) {
        self.state.mode.store(LEAVING, Ordering::Relaxed);
        let reader = self.reader.lock().expect("reader lock").take();
        if let Some(reader) = reader {
            let _ = reader.await;
        }
        // The acknowledger sends what was settled before it stops.
        self.state.closed.store(true, Ordering::Relaxed);
        let _ = self.acks.send(Vec::new());
        let acker = self.acker.lock().expect("acker lock").take();
        if let Some(acker) = acker {
            let _ = acker.await;
        }
        let held: Vec<Held> = {
            let mut held = self.state.held.lock().expect("held lock");
            held.drain().map(|(_, h)| h).collect()
        };
        for h in &held {
            let _ = self
                .fleet
                .client
                .publish(h.reply.clone(), Bytes::from_static(b"-NAK"))
                .await;
        }
        let _ = self.fleet.client.flush().await;
        // This node leaves nothing undelivered behind: the rest is JetStream's, for the others.
        self.stats.records.store(0, Ordering::Relaxed);
        self.stats.held_records.store(0, Ordering::Relaxed);
        if !held.is_empty() {
            let records: usize = held.iter().map(|h| h.unsettled).sum();
            tracing::info!(stream = %self.name, messages = held.len(), records, "what this node held was handed back to JetStream for the other nodes");
        }
    }

    /// Deletes the stream's JetStream stream (its records with it): the delivery stream was
    /// deleted and this node has drained it. A declared stream's stays: it is every node's.
    pub async fn destroy(&self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self.fleet.js.delete_stream(&self.stream_name).await {
            tracing::warn!(stream = %self.name, error = %e, "cannot delete the JetStream stream of a deleted delivery stream");
        }
    }
}

struct Reader {
    name: String,
    consumer: PullConsumer,
    observer: Arc<dyn SpoolObserver>,
    state: Arc<State>,
}

impl Reader {
    async fn run(
        self,
        ingest: tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: Arc<dyn ReadBudget>,
    ) {
        let mut failures = 0u32;
        let mut messages = None;
        loop {
            let mode = self.state.mode.load(Ordering::Relaxed);
            if mode == LEAVING {
                break;
            }
            let chunk = match &mut messages {
                Some(m) => self.gather(m).await,
                None => self
                    .consumer
                    .stream()
                    .max_messages_per_batch(PULL_MESSAGES)
                    .max_bytes_per_batch(PULL_BYTES)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map(|m| {
                        messages = Some(m);
                        Vec::new()
                    })
                    .map_err(|e| e.to_string()),
            };
            let records = match chunk {
                Ok(r) => {
                    failures = 0;
                    r
                }
                Err(e) => {
                    // A drained stream's JetStream stream may be deleted by another node.
                    if mode == DRAINING && self.nothing_left().await {
                        break;
                    }
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(stream = %self.name, error = %e, "cannot read from JetStream; retrying");
                    }
                    messages = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if records.is_empty() {
                if mode == DRAINING && self.nothing_left().await {
                    break;
                }
                continue;
            }
            if !self.hand_on(records, &ingest, &budget).await {
                break;
            }
        }
    }

    /// Whether JetStream has nothing more to hand out (or the stream is gone: another node
    /// drained and deleted it).
    async fn nothing_left(&self) -> bool {
        let mut consumer = self.consumer.clone();
        match consumer.info().await {
            Ok(i) => i.num_pending == 0,
            Err(e) => e.to_string().contains("not found"),
        }
    }

    /// One chunk: what JetStream has handed this node (waiting up to `FETCH_WAIT` for the
    /// first), up to `FETCH_RECORDS` or `FETCH_BYTES`, minus records it already holds.
    async fn gather(&self, messages: &mut pull::Stream) -> Result<Vec<Record>, String> {
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut redelivered = 0;
        let first = match tokio::time::timeout(FETCH_WAIT, messages.next()).await {
            Err(_) => return Ok(records),
            Ok(None) => return Err("the JetStream consumer's message stream ended".into()),
            Ok(Some(m)) => m,
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let message = match message {
                Ok(m) => m,
                // An error after records ends the chunk; the stream goes on.
                Err(e) if records.is_empty() => return Err(e.to_string()),
                Err(_) => break,
            };
            for record in self.take(message, &mut redelivered).await {
                bytes += record.data.len();
                records.push(record);
            }
            if records.len() >= FETCH_RECORDS || bytes >= FETCH_BYTES {
                break;
            }
            // Only what has already arrived.
            next = messages.next().now_or_never().flatten();
        }
        if redelivered > 0 {
            self.observer.redelivered(redelivered);
        }
        Ok(records)
    }

    /// A message's records, now held by this node; none for a message it holds already, or
    /// one that is not a hosepipe batch (ended in JetStream with an ERROR log).
    async fn take(
        &self,
        message: async_nats::jetstream::Message,
        redelivered: &mut u64,
    ) -> Vec<Record> {
        let info = match message.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(stream = %self.name, error = %e, "a message without JetStream metadata");
                return Vec::new();
            }
        };
        let (seq, delivered) = (info.stream_sequence, info.delivered);
        let Some(reply) = message.message.reply.clone() else {
            tracing::warn!(stream = %self.name, "a message without a reply subject");
            return Vec::new();
        };
        let batch = match decode_batch(&message.message.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(stream = %self.name, seq, error = %e, "a message on the stream's subject that hosepipe did not publish; it is dropped");
                let _ = message.ack_with(async_nats::jetstream::AckKind::Term).await;
                return Vec::new();
            }
        };
        if delivered > 1 {
            *redelivered += batch.len() as u64;
        }
        if batch.is_empty() {
            let _ = message.ack().await;
            return Vec::new();
        }
        {
            let mut held = self.state.held.lock().expect("held lock");
            if let Some(h) = held.get_mut(&seq) {
                // Handed out again while this node holds it: keep the newer reply.
                h.reply = reply;
                h.renewed = Instant::now();
                return Vec::new();
            }
            held.insert(
                seq,
                Held {
                    reply,
                    renewed: Instant::now(),
                    unsettled: batch.len(),
                },
            );
        }
        self.state
            .held_records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch
            .into_iter()
            .enumerate()
            .map(|(i, (arrival_ms, data))| {
                let mut record = Record::new(data, arrival_ms);
                record.seq = record_seq(seq, i);
                record
            })
            .collect()
    }

    /// Waits for room in the budget, then hands the chunk to the pipeline. False when the
    /// pipeline is gone or the node leaves (what was fetched is handed back on close).
    async fn hand_on(
        &self,
        mut records: Vec<Record>,
        ingest: &tokio::sync::mpsc::Sender<Vec<Record>>,
        budget: &Arc<dyn ReadBudget>,
    ) -> bool {
        let mut cost = 0;
        for r in &mut records {
            r.owed = Owed::reserved(memory_cost(1, r.data.len() as u64));
            cost += r.owed.cost;
        }
        loop {
            let b = budget.clone();
            let reserved =
                tokio::task::spawn_blocking(move || b.reserve(cost, Duration::from_millis(100)))
                    .await
                    .unwrap_or(false);
            if reserved {
                break;
            }
            if self.state.mode.load(Ordering::Relaxed) == LEAVING {
                return false;
            }
        }
        if ingest.send(records).await.is_err() {
            budget.release(cost);
            return false;
        }
        true
    }
}

/// Sends acknowledgements, renews what this node holds long, and keeps the counters.
struct Acker {
    client: async_nats::Client,
    stream: stream::Stream,
    consumer: PullConsumer,
    ack_wait: Duration,
    observer: Arc<dyn SpoolObserver>,
    stats: Arc<SpoolStats>,
    state: Arc<State>,
    /// Acknowledgements sent and not confirmed, with when they were first sent.
    unconfirmed: Vec<(async_nats::Subject, Instant)>,
}

const ACK: &[u8] = b"+ACK";
/// How long an acknowledgement waits for JetStream's confirmation.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Acknowledgements awaiting confirmation at once.
const ACKS_IN_FLIGHT: usize = 1024;
const IN_PROGRESS: &[u8] = b"+WPI";

impl Acker {
    async fn run(mut self, mut acks: mpsc::UnboundedReceiver<Vec<u64>>) {
        let renew_every = self.ack_wait / 3;
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(renew_every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewal = Instant::now();
        let mut last_info = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::select! {
                seqs = acks.recv() => {
                    let Some(seqs) = seqs else { break };
                    self.ack(seqs).await;
                    // Others sent meanwhile go in the same flush.
                    while let Ok(more) = acks.try_recv() {
                        self.ack(more).await;
                    }
                    if self.state.closed.load(Ordering::Relaxed) {
                        break;
                    }
                }
                _ = tick.tick() => {
                    self.retry_unconfirmed().await;
                    if last_renewal.elapsed() >= renew_every {
                        self.renew(renew_every).await;
                        last_renewal = Instant::now();
                    }
                    if last_info.elapsed() >= Duration::from_secs(2) {
                        self.refresh().await;
                        last_info = Instant::now();
                    }
                    if self.state.closed.load(Ordering::Relaxed) {
                        while let Ok(more) = acks.try_recv() {
                            self.ack(more).await;
                        }
                        break;
                    }
                }
            }
        }
        let _ = self.client.flush().await;
    }

    /// Acknowledges settled records, each as a request JetStream answers once it has taken
    /// the acknowledgement (a double ack): one lost with a server or a connection is sent again
    /// (`retry_unconfirmed`) instead of becoming a redelivery, and so a duplicate.
    async fn ack(&mut self, seqs: Vec<u64>) {
        let mut replies: Vec<async_nats::Subject> = Vec::new();
        let mut settled = 0;
        {
            let mut held = self.state.held.lock().expect("held lock");
            for seq in seqs {
                let message = message_of(seq);
                let Some(h) = held.get_mut(&message) else {
                    continue;
                };
                settled += 1;
                h.unsettled -= 1;
                if h.unsettled == 0 {
                    replies.extend(held.remove(&message).map(|h| h.reply));
                }
            }
        }
        self.state
            .held_records
            .fetch_sub(settled, Ordering::Relaxed);
        let now = Instant::now();
        let failed = self
            .confirm(replies.into_iter().map(|r| (r, now)).collect())
            .await;
        self.unconfirmed.extend(failed);
    }

    /// Sends `+ACK` requests, many at a time; returns those JetStream did not answer, each
    /// with when it was first sent.
    async fn confirm(
        &self,
        replies: Vec<(async_nats::Subject, Instant)>,
    ) -> Vec<(async_nats::Subject, Instant)> {
        futures_util::stream::iter(replies)
            .map(|(reply, since)| {
                let client = self.client.clone();
                async move {
                    let request = client.request(reply.clone(), Bytes::from_static(ACK));
                    match tokio::time::timeout(ACK_TIMEOUT, request).await {
                        Ok(Ok(_)) => None,
                        _ => Some((reply, since)),
                    }
                }
            })
            .buffer_unordered(ACKS_IN_FLIGHT)
            .filter_map(|failed| async move { failed })
            .collect()
            .await
    }

    /// Sends again the acknowledgements JetStream did not confirm, until twice the ack wait
    /// has passed (by then it has handed the record out again).
    async fn retry_unconfirmed(&mut self) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let give_up = self.ack_wait * 2;
        let (keep, expired): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unconfirmed)
            .into_iter()
            .partition(|(_, since)| since.elapsed() < give_up);
        if !expired.is_empty() {
            tracing::warn!(
                records = expired.len(),
                "JetStream confirmed no acknowledgement of these delivered records; they may be delivered again"
            );
        }
        self.unconfirmed = self.confirm(keep).await;
    }

    /// Tells JetStream that records held since the last renewal are still being worked on.
    async fn renew(&self, older_than: Duration) {
        let now = Instant::now();
        let replies: Vec<async_nats::Subject> = {
            let mut held = self.state.held.lock().expect("held lock");
            held.values_mut()
                .filter(|h| now.duration_since(h.renewed) >= older_than)
                .map(|h| {
                    h.renewed = now;
                    h.reply.clone()
                })
                .collect()
        };
        for reply in replies {
            let _ = self
                .client
                .publish(reply, Bytes::from_static(IN_PROGRESS))
                .await;
        }
    }

    /// The counters: what this node holds, what the fleet holds, what waits in JetStream.
    async fn refresh(&mut self) {
        let held = self.state.held_records.load(Ordering::Relaxed);
        let (ack_pending, pending) = match self.consumer.info().await {
            Ok(i) => (i.num_ack_pending as u64, i.num_pending),
            Err(_) => return,
        };
        let (bytes, oldest) = match self.stream.info().await {
            Ok(i) if i.state.messages > 0 => {
                (i.state.bytes, i.state.first_timestamp.timestamp_millis())
            }
            Ok(i) => (i.state.bytes, i64::MAX),
            Err(_) => return,
        };
        // Records this node holds; what waits in JetStream is counted in messages.
        self.stats.records.store(held, Ordering::Relaxed);
        self.stats.held_records.store(held, Ordering::Relaxed);
        self.stats
            .ack_pending_messages
            .store(ack_pending, Ordering::Relaxed);
        self.stats
            .pending_messages
            .store(pending, Ordering::Relaxed);
        self.stats.bytes.store(bytes, Ordering::Relaxed);
        // The oldest record the fleet has not settled (the work queue keeps only those).
        self.stats.oldest_unread_ms.store(
            if pending > 0 { oldest } else { i64::MAX },
            Ordering::Relaxed,
        );
        self.observer.log_state(held, ack_pending, pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(sizes: &[usize]) -> Vec<Record> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Record::new(
                    Bytes::from(vec![b'a' + (i % 26) as u8; *n]),
                    1000 + i as i64,
                )
            })
            .collect()
    }

    proptest! {
        #[test]
        fn a_batch_decodes_to_its_records(sizes in proptest::collection::vec(0usize..300, 0..40)) {
            let recs = records(&sizes);
            let decoded = decode_batch(&encode_batch(&recs)).unwrap();
            prop_assert_eq!(decoded.len(), recs.len());
            for ((arrival, data), r) in decoded.iter().zip(&recs) {
                prop_assert_eq!(*arrival, r.arrival_ms);
                prop_assert_eq!(data, &r.data);
            }
        }

        #[test]
        fn a_damaged_batch_is_refused_or_gives_only_what_it_holds(
            sizes in proptest::collection::vec(0usize..50, 1..10),
            cut in 0usize..400,
            flip in 0usize..400,
        ) {
            let mut bytes = encode_batch(&records(&sizes)).to_vec();
            let len = bytes.len();
            bytes[flip % len] ^= 0x5a;
            bytes.truncate(len - cut.min(len));
            if let Ok(decoded) = decode_batch(&Bytes::from(bytes.clone())) {
                let total: usize = decoded.iter().map(|(_, d)| d.len() + RECORD_HEADER).sum();
                prop_assert_eq!(total + BATCH_MAGIC.len() + 4, bytes.len());
            }
        }
    }

    #[test]
    fn puts_split_into_messages_that_fit_and_keep_their_order() {
        let recs = records(&[400, 400, 400, 2000, 10, 10]);
        let batches = split_batches(&recs, 1000);
        assert_eq!(batches, vec![0..2, 2..3, 3..4, 4..6]);
        for b in &batches {
            let size = encode_batch(&recs[b.clone()]).len();
            assert!(size <= 1000 || b.len() == 1, "{b:?}: {size}");
        }
        assert!(split_batches(&[], 1000).is_empty());
    }

    #[test]
    fn a_records_seq_names_its_message_and_place() {
        let seq = record_seq(123_456, 499);
        assert_eq!(message_of(seq), 123_456);
        assert_eq!(seq & ((1 << INDEX_BITS) - 1), 499);
        assert!(decode_batch(&Bytes::from_static(b"hello")).is_err());
    }
}
