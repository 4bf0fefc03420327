//! A delivery stream's log on NATS JetStream (`[log] backend = "jetstream"`): what a fleet of
//! nodes shares instead of each node's local spool.
//!
//! - **Append**: each record is published to the stream's subject; a put is answered once
//!   JetStream has acknowledged its records (stored on the stream's replicas). A record
//!   JetStream does not acknowledge (no quorum, the stream full, the publish timed out) is
//!   refused with "Slow down.", with every record after it.
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
//! Seqs are JetStream's stream sequences, unique across the fleet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
/// At most this many records, or `FETCH_BYTES`, per chunk handed on; also what the client asks
/// JetStream for at a time (and so at most what waits in its buffer, not yet held).
const FETCH_RECORDS: usize = 1000;
const FETCH_BYTES: usize = 1 << 20;
/// How long the reader waits for a first record before it looks at its mode again.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// How the reader goes on.
const READING: u8 = 0;
/// Reads until JetStream has nothing more to hand out, then ends (the stream is deleted).
const DRAINING: u8 = 1;
/// Ends at once; what the node holds is delivered or handed back (the node stops).
const LEAVING: u8 = 2;

/// A record this node holds: where its acknowledgement goes.
struct Held {
    reply: async_nats::Subject,
    renewed: Instant,
}

struct State {
    intake_open: AtomicBool,
    mode: AtomicU8,
    closed: AtomicBool,
    held: Mutex<HashMap<u64, Held>>,
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
        let mut pending = Vec::with_capacity(records.len());
        let mut failure = None;
        for r in records.iter() {
            match self
                .fleet
                .js
                .publish(self.subject.clone(), r.data.clone())
                .await
            {
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
        for (i, ack) in acks.into_iter().enumerate() {
            match ack {
                Ok(ack) if stored == i => {
                    records[i].seq = ack.sequence;
                    stored += 1;
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
        self.stats.unread_records.store(0, Ordering::Relaxed);
        self.stats.held_records.store(0, Ordering::Relaxed);
        if !held.is_empty() {
            tracing::info!(stream = %self.name, records = held.len(), "records this node held were handed back to JetStream for the other nodes");
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
                    .max_messages_per_batch(FETCH_RECORDS)
                    .max_bytes_per_batch(FETCH_BYTES)
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
            if let Some(record) = self.take(message, &mut redelivered) {
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

    /// A message as a record, now held by this node; `None` for one it holds already.
    fn take(
        &self,
        message: async_nats::jetstream::Message,
        redelivered: &mut u64,
    ) -> Option<Record> {
        let info = match message.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(stream = %self.name, error = %e, "a message without JetStream metadata");
                return None;
            }
        };
        let (seq, delivered, arrival_ms) = (
            info.stream_sequence,
            info.delivered,
            info.published.timestamp_millis(),
        );
        let Some(reply) = message.message.reply.clone() else {
            tracing::warn!(stream = %self.name, "a message without a reply subject");
            return None;
        };
        if delivered > 1 {
            *redelivered += 1;
        }
        {
            let mut held = self.state.held.lock().expect("held lock");
            if let Some(h) = held.get_mut(&seq) {
                // Handed out again while this node holds it: keep the newer reply.
                h.reply = reply;
                h.renewed = Instant::now();
                return None;
            }
            held.insert(
                seq,
                Held {
                    reply,
                    renewed: Instant::now(),
                },
            );
        }
        let mut record = Record::new(message.message.payload.clone(), arrival_ms);
        record.seq = seq;
        Some(record)
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
        let replies: Vec<async_nats::Subject> = {
            let mut held = self.state.held.lock().expect("held lock");
            seqs.iter()
                .filter_map(|s| held.remove(s).map(|h| h.reply))
                .collect()
        };
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
        let held = self.state.held.lock().expect("held lock").len() as u64;
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
        self.stats.records.store(held + pending, Ordering::Relaxed);
        self.stats.held_records.store(held, Ordering::Relaxed);
        self.stats.ack_pending.store(ack_pending, Ordering::Relaxed);
        self.stats.unread_records.store(pending, Ordering::Relaxed);
        self.stats.bytes.store(bytes, Ordering::Relaxed);
        // The oldest record the fleet has not settled (the work queue keeps only those).
        self.stats.oldest_unread_ms.store(
            if pending > 0 { oldest } else { i64::MAX },
            Ordering::Relaxed,
        );
        self.observer.log_state(held, ack_pending, pending);
    }
}
