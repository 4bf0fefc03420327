//! `hosepipe agent`: the Kinesis Agent's job. Per flow, a tailer thread follows the files of a
//! glob ([`tail`]), turns lines into records and runs the processing options ([`convert`]);
//! a sender task buffers them by count, bytes or age and sends each buffer with
//! `PutRecordBatch`, retrying only failed entries, one buffer in flight at a time; after a
//! buffer is fully accepted the files' offsets are saved ([`checkpoint`]). Progress goes to the
//! log every `log.statusReportingPeriodSeconds` and to a Prometheus endpoint.

pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod tail;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::producer::{Backoff, Producer, SendEvent, Target};
use checkpoint::{Checkpoints, Entry, FileId};
use config::{AgentConfig, Flow};
use tail::{FileStatus, Record, Tailer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabel {
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabel {
    flow: String,
    file: String,
}

/// The agent's counters (the Kinesis Agent's `AWSKinesisAgent` metrics, and more).
#[derive(Default)]
pub struct AgentMetrics {
    records_parsed: Family<FlowLabel, Counter>,
    conversion_failed: Family<FlowLabel, Counter>,
    records_sent: Family<FlowLabel, Counter>,
    bytes_sent: Family<FlowLabel, Counter>,
    send_attempts: Family<FlowLabel, Counter>,
    send_errors: Family<FlowLabel, Counter>,
    service_errors: Family<FlowLabel, Counter>,
    lag_bytes: Family<FileLabel, Gauge>,
    registry: Mutex<Option<Registry>>,
}

impl AgentMetrics {
    pub fn new() -> Arc<Self> {
        let m = Arc::new(AgentMetrics::default());
        let mut r = Registry::with_prefix("hosepipe_agent");
        r.register(
            "records_parsed",
            "Records read from files (after multi-line joining)",
            m.records_parsed.clone(),
        );
        r.register(
            "records_conversion_failed",
            "Records a processing option could not convert (sent unchanged)",
            m.conversion_failed.clone(),
        );
        r.register(
            "records_sent",
            "Records accepted by the endpoint",
            m.records_sent.clone(),
        );
        r.register(
            "bytes_sent",
            "Bytes of records accepted by the endpoint",
            m.bytes_sent.clone(),
        );
        r.register(
            "record_send_attempts",
            "Records sent, retries included",
            m.send_attempts.clone(),
        );
        r.register(
            "record_send_errors",
            "Entries PutRecordBatch answered with an error code (sent again)",
            m.send_errors.clone(),
        );
        r.register(
            "service_errors",
            "PutRecordBatch calls that failed as a whole (sent again)",
            m.service_errors.clone(),
        );
        r.register(
            "file_lag_bytes",
            "Bytes of a file not yet accepted by the endpoint",
            m.lag_bytes.clone(),
        );
        *m.registry.lock().expect("registry lock") = Some(r);
        m
    }

    /// Records of `flow` accepted so far.
    pub fn records_sent(&self, flow: &str) -> u64 {
        self.records_sent
            .get_or_create(&FlowLabel {
                flow: flow.to_string(),
            })
            .get()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(r) = self.registry.lock().expect("registry lock").as_ref() {
            prometheus_client::encoding::text::encode(&mut out, r).expect("to a String");
        }
        out
    }
}

/// One flow's shared state: the tailer's view of its files, for status and lag.
struct FlowState {
    flow: Arc<Flow>,
    files: Mutex<Vec<FileStatus>>,
}

/// Runs the agent until `shutdown` resolves, then stops reading, sends what it holds (within
/// `shutdownTimeoutMillis`) and saves the checkpoints.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    run_with(config, AgentMetrics::new(), shutdown).await
}

/// [`run`] counting into `metrics` (the benchmark reads them).
pub async fn run_with(
    config: AgentConfig,
    metrics: Arc<AgentMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    for key in &config.ignored {
        tracing::warn!("{key}: a Kinesis Agent setting hosepipe does not use; ignored");
    }
    crate::aws_client::trust_ca_bundle(config.ca_bundle.as_deref()).map_err(|e| e.to_string())?;
    let target = Target::resolve(
        config.firehose_endpoint.as_deref(),
        config.region.as_deref(),
        config.aws_keys.clone(),
    )
    .await?;
    let source = target.credentials.source().await;
    tracing::info!(endpoint = %target.endpoint, region = %target.region,
        credentials = %source, "hosepipe agent starting");
    let checkpoints = Arc::new(Mutex::new(Checkpoints::open(
        &config.checkpoint_file,
        config.checkpoint_ttl,
    )?));
    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr, metrics.clone()).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    let mut states = Vec::new();
    for flow in &config.flows {
        let flow = Arc::new(flow.clone());
        let state = Arc::new(FlowState {
            flow: flow.clone(),
            files: Mutex::new(Vec::new()),
        });
        states.push(state.clone());
        let (tx, rx) = mpsc::channel(flow.publish_queue_capacity.max(1) * 64);
        let tailer = {
            let mut cp = checkpoints.lock().expect("checkpoints lock");
            // Before the flow is marked as known: a first run honours initialPosition.
            let tailer = Tailer::new(flow.clone(), &cp);
            cp.touch_flow(&flow.id);
            tailer
        };
        let (stop, m, st, cp) = (
            stop.clone(),
            metrics.clone(),
            state.clone(),
            checkpoints.clone(),
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("tail {}", flow.delivery_stream))
                .spawn(move || tail_loop(tailer, st, tx, stop, m, cp))
                .map_err(|e| format!("cannot start a tailer thread: {e}"))?,
        );
        let producer = Producer::new(&target, &flow.delivery_stream);
        senders.push(tokio::spawn(send_loop(
            flow,
            producer,
            rx,
            checkpoints.clone(),
            metrics.clone(),
        )));
    }
    checkpoints
        .lock()
        .expect("checkpoints lock")
        .save()
        .map_err(|e| format!("{}: {e}", config.checkpoint_file.display()))?;
    let status = tokio::spawn(status_loop(
        states,
        checkpoints.clone(),
        metrics.clone(),
        config.status_period,
    ));
    shutdown.await;
    tracing::info!("stopping: sending what is buffered");
    stop.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    for mut s in senders {
        if tokio::time::timeout_at(deadline, &mut s).await.is_err() {
            tracing::warn!(
                "shutdown timeout: records not yet accepted will be sent again on the next start"
            );
            // Its queue closes with it, which releases a tailer waiting for room.
            s.abort();
            let _ = s.await;
        }
    }
    status.abort();
    for t in threads {
        let _ = t.join();
    }
    let mut cp = checkpoints.lock().expect("checkpoints lock");
    cp.save()
        .map_err(|e| format!("{}: {e}", config.checkpoint_file.display()))?;
    tracing::info!("hosepipe agent stopped");
    Ok(())
}

async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<AgentMetrics>,
) -> Result<(), String> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics_listen {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("metrics on http://{local}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// The tailer thread: poll, convert, queue; until told to stop.
fn tail_loop(
    mut tailer: Tailer,
    state: Arc<FlowState>,
    tx: mpsc::Sender<Record>,
    stop: Arc<AtomicBool>,
    metrics: Arc<AgentMetrics>,
    checkpoints: Arc<Mutex<Checkpoints>>,
) {
    let flow = state.flow.clone();
    let label = FlowLabel {
        flow: flow.id.clone(),
    };
    let parsed = metrics.records_parsed.get_or_create(&label).clone();
    let failed = metrics.conversion_failed.get_or_create(&label).clone();
    let mut logged_failures = 0u64;
    let limit = flow.aggregated_record_size;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        // aggregatedRecordSizeBytes: consecutive records of one file packed together, the
        // pack sent when the next would not fit, when another file's record comes, or at the
        // end of the poll.
        let mut pack: Option<Record> = None;
        let mut ok = tailer.poll(&mut |mut record| {
            parsed.inc();
            if !flow.converters.is_empty() {
                match convert::apply_all(&flow.converters, &record.data) {
                    Ok(out) => record.data = tail::clip(out, &flow.truncated_record_terminator),
                    Err(e) => {
                        failed.inc();
                        // Sent as read: never dropped. Logged, but not every time.
                        if logged_failures < 10 || logged_failures.is_power_of_two() {
                            tracing::warn!(flow = %flow.id, file = %record.path.display(),
                                offset = record.end, error = %e,
                                "record not converted; sending it unchanged");
                        }
                        logged_failures += 1;
                    }
                }
            }
            if limit == 0 {
                return tx.blocking_send(record).is_ok();
            }
            match pack.as_mut() {
                Some(p) if p.file == record.file && p.data.len() + record.data.len() <= limit => {
                    p.data.extend_from_slice(&record.data);
                    p.end = record.end;
                    p.fingerprint = record.fingerprint;
                    true
                }
                _ => match pack.replace(record) {
                    Some(full) => tx.blocking_send(full).is_ok(),
                    None => true,
                },
            }
        });
        if let Some(p) = pack.take() {
            ok = ok && tx.blocking_send(p).is_ok();
        }
        *state.files.lock().expect("files lock") = tailer.status();
        let skipped = tailer.take_skipped();
        if !skipped.is_empty() {
            let mut cp = checkpoints.lock().expect("checkpoints lock");
            for entry in skipped {
                cp.advance(&flow.id, entry);
            }
            if let Err(e) = cp.save() {
                tracing::error!(error = %e, "cannot save checkpoints");
            }
        }
        if !ok {
            break;
        }
        if let Some(rest) = flow.poll_interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The sender task: fills a buffer until it is full or old, sends it until every entry is in,
/// then moves the checkpoints. Ends when the tailer is gone and the queue is empty.
async fn send_loop(
    flow: Arc<Flow>,
    producer: Producer,
    mut rx: mpsc::Receiver<Record>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
) {
    let mut sender = FlowSender {
        label: FlowLabel {
            flow: flow.id.clone(),
        },
        backoff: Backoff::new(flow.retry_initial_backoff, flow.retry_max_backoff),
        flow,
        producer,
        checkpoints,
        metrics,
    };
    let flow = sender.flow.clone();
    // A record that did not fit the last buffer opens the next one.
    let mut carried: Option<Record> = None;
    loop {
        let Some(first) = (match carried.take() {
            Some(r) => Some(r),
            None => rx.recv().await,
        }) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + flow.max_buffer_age;
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        let mut open = true;
        while batch.len() < flow.max_buffer_records {
            let Ok(next) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            let Some(record) = next else {
                open = false;
                break;
            };
            if bytes + record.data.len() > flow.max_buffer_bytes {
                carried = Some(record);
                break;
            }
            bytes += record.data.len();
            batch.push(record);
        }
        sender.send(batch).await;
        if !open && carried.is_none() {
            return;
        }
    }
}

/// What a flow's sender needs to send a buffer and account for it.
struct FlowSender {
    flow: Arc<Flow>,
    producer: Producer,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
    label: FlowLabel,
    backoff: Backoff,
}

impl FlowSender {
    /// Sends `batch` until every entry is accepted, then moves the checkpoints past it.
    async fn send(&mut self, mut batch: Vec<Record>) {
        let (flow, metrics, label) = (&self.flow, &self.metrics, &self.label);
        let data: Vec<Bytes> = batch
            .iter_mut()
            .map(|r| Bytes::from(std::mem::take(&mut r.data)))
            .collect();
        let total_bytes: usize = data.iter().map(Bytes::len).sum();
        let attempts = metrics.send_attempts.get_or_create(label).clone();
        let errors = metrics.send_errors.get_or_create(label).clone();
        let service = metrics.service_errors.get_or_create(label).clone();
        let sent = metrics.records_sent.get_or_create(label).clone();
        let mut in_flight = data.len() as u64;
        let mut failed_entries = 0u64;
        self.producer
        .send_all(data, &mut self.backoff, &mut |event| match event {
            SendEvent::Accepted(n) => {
                attempts.inc_by(in_flight);
                sent.inc_by(n as u64);
                in_flight -= n as u64;
                failed_entries = 0;
            }
            SendEvent::EntryFailed { code } => {
                errors.inc();
                failed_entries += 1;
                if failed_entries == 1 {
                    tracing::warn!(flow = %flow.id, code, "entries refused; sending them again");
                }
            }
            SendEvent::CallFailed(e) => {
                attempts.inc_by(in_flight);
                service.inc();
                tracing::warn!(flow = %flow.id, error = %e, "PutRecordBatch failed; retrying");
            }
        })
        .await;
        metrics
            .bytes_sent
            .get_or_create(label)
            .inc_by(total_bytes as u64);
        // Every entry is in: each file may move to the end of its last record in this batch.
        let mut ends: BTreeMap<FileId, &Record> = BTreeMap::new();
        for r in &batch {
            ends.insert(r.file, r);
        }
        let mut cp = self.checkpoints.lock().expect("checkpoints lock");
        for r in ends.values() {
            cp.advance(
                &flow.id,
                Entry {
                    path: r.path.clone(),
                    id: r.file,
                    fingerprint: r.fingerprint,
                    offset: r.end,
                    updated: 0,
                },
            );
        }
        if let Err(e) = cp.save() {
            tracing::error!(error = %e, "cannot save checkpoints; a restart will send more again");
        }
    }
}

/// Every period: a line per flow (records parsed / sent / failed, bytes, lag per file), and
/// every second the lag gauges.
async fn status_loop(
    states: Vec<Arc<FlowState>>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
    period: Duration,
) {
    let mut last_log = Instant::now();
    // The lag gauges set last time, so a file no longer followed loses its series.
    let mut shown: Vec<FileLabel> = Vec::new();
    loop {
        let mut now_shown = Vec::new();
        tokio::time::sleep(Duration::from_secs(1).min(period)).await;
        let log = last_log.elapsed() >= period;
        if log {
            last_log = Instant::now();
        }
        for state in &states {
            let flow = &state.flow;
            let files = state.files.lock().expect("files lock").clone();
            let acked: HashMap<FileId, u64> = checkpoints
                .lock()
                .expect("checkpoints lock")
                .entries(&flow.id)
                .map(|e| (e.id, e.offset))
                .collect();
            let mut lags = Vec::new();
            for f in &files {
                let done = acked.get(&f.id).copied().unwrap_or(f.start).min(f.size);
                let lag = f.size - done;
                let label = FileLabel {
                    flow: flow.id.clone(),
                    file: f.path.display().to_string(),
                };
                metrics.lag_bytes.get_or_create(&label).set(lag as i64);
                now_shown.push(label);
                lags.push(format!("{} lag={}B", f.path.display(), lag));
            }
            if log {
                let label = FlowLabel {
                    flow: flow.id.clone(),
                };
                let get = |fam: &Family<FlowLabel, Counter>| fam.get_or_create(&label).get();
                tracing::info!(
                    flow = %flow.id,
                    parsed = get(&metrics.records_parsed),
                    sent = get(&metrics.records_sent),
                    failed = get(&metrics.send_errors),
                    service_errors = get(&metrics.service_errors),
                    conversion_failed = get(&metrics.conversion_failed),
                    bytes = get(&metrics.bytes_sent),
                    files = %lags.join(", "),
                    "progress"
                );
            }
        }
        for gone in shown.iter().filter(|l| !now_shown.contains(l)) {
            metrics.lag_bytes.remove(gone);
        }
        shown = now_shown;
    }
}
