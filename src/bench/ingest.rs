//! `hosepipe bench ingest`: a load generator that pushes PutRecordBatch over HTTP from several
//! connections into an in-process daemon delivering GZIP objects to local disk, and measures
//! accepted-and-delivered throughput against bare gzip of the same bytes in the same run (one
//! core, and both cores compressing halves), and the process's peak RSS. Refused records are
//! re-sent at once, with no back-off, as an impatient client would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use rand::{Rng, SeedableRng};

use crate::compress::GZIP_LEVEL;
use crate::config::{Config, Overrides, RawConfig};
use crate::server::Server;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent HTTP connections pushing batches.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long to push, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Records per PutRecordBatch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Bytes per record (JSON, padded).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// The stream's CompressionFormat.
    #[arg(long, default_value = "GZIP")]
    pub compression: String,
    /// The stream's BufferingHints.SizeInMBs.
    #[arg(long, default_value_t = 8)]
    pub size_mb: u64,
    /// The stream's BufferingHints.IntervalInSeconds.
    #[arg(long, default_value_t = 1)]
    pub interval: u64,
    /// Spool sync mode for the run: fsync, os, or both (one run each, compared).
    #[arg(long, default_value = "both")]
    pub sync: String,
    /// Target records/s over all connections; 0 pushes as fast as the daemon accepts.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// `[memory] max_mb` for the run (default: the daemon's default).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Serve HTTPS with this certificate (PEM; the client trusts it as its CA bundle).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Run without the object journal (`[spool] object_journal = false`: at-least-once), to
    /// measure what exactly-once objects cost.
    #[arg(long)]
    pub no_object_journal: bool,
}

impl BenchArgs {
    /// The load another benchmark pushes: 500-record batches of `record_bytes`-byte JSON
    /// records for a stream with `compression`, fsync'd, 8 MiB / `interval` s buffers.
    pub fn load(connections: usize, record_bytes: usize, compression: &str, interval: u64) -> Self {
        BenchArgs {
            connections,
            seconds: 0,
            batch: 500,
            record_bytes,
            compression: compression.to_string(),
            size_mb: 8,
            interval,
            sync: "fsync".into(),
            rate: 0,
            memory_mb: None,
            tls_cert: None,
            tls_key: None,
            no_object_journal: false,
        }
    }
}

/// What one run measured.
struct RunResult {
    sync: String,
    sent: u64,
    refused: u64,
    push_secs: f64,
    total_secs: f64,
    latencies: Vec<f64>,
    fsyncs: Vec<f64>,
    peak_rss_mib: f64,
    /// The process's RSS just before the daemon started (the generator's bodies and baselines).
    before_mib: f64,
}

/// One JSON record of about `size` bytes, like a clickstream event.
fn record(rng: &mut impl Rng, size: usize, seq: usize) -> Vec<u8> {
    const PAGES: [&str; 6] = ["/", "/cart", "/checkout", "/search", "/product", "/account"];
    const AGENTS: [&str; 3] = [
        "Mozilla/5.0 (X11; Linux x86_64)",
        "curl/8.5.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)",
    ];
    let mut rec = format!(
        "{{\"seq\":{seq},\"user\":\"u{:06}\",\"page\":\"{}\",\"ms\":{},\"ip\":\"10.{}.{}.{}\",\"agent\":\"{}\",\"pad\":\"",
        rng.random_range(0..100_000),
        PAGES[rng.random_range(0..PAGES.len())],
        rng.random_range(0..5_000),
        rng.random_range(0..256),
        rng.random_range(0..256),
        rng.random_range(0..256),
        AGENTS[rng.random_range(0..AGENTS.len())],
    )
    .into_bytes();
    while rec.len() + 3 < size {
        rec.push(b'a' + rng.random_range(0..26u8));
    }
    rec.extend_from_slice(b"\"}\n");
    rec
}

/// Request bodies to cycle through, and the raw record bytes they carry.
pub fn make_bodies(args: &BenchArgs, count: usize) -> (Vec<Bytes>, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let engine = base64::engine::general_purpose::STANDARD;
    let mut raw = Vec::new();
    let mut bodies = Vec::new();
    for b in 0..count {
        let records: Vec<serde_json::Value> = (0..args.batch)
            .map(|i| {
                let r = record(&mut rng, args.record_bytes, b * args.batch + i);
                raw.extend_from_slice(&r);
                serde_json::json!({ "Data": engine.encode(&r) })
            })
            .collect();
        let body = serde_json::json!({ "DeliveryStreamName": "bench", "Records": records });
        bodies.push(Bytes::from(body.to_string()));
    }
    (bodies, raw)
}

/// A gzip compressor of whole buffers at the pipeline's level.
type Gzip = fn(&[u8]) -> Vec<u8>;

/// The pipeline's: libdeflate.
fn libdeflate_gzip(raw: &[u8]) -> Vec<u8> {
    crate::compress::gzip(raw).expect("gzip into memory")
}

/// The earlier backend, for comparison: flate2 with zlib-rs.
fn zlib_rs_gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 2),
        flate2::Compression::new(GZIP_LEVEL),
    );
    enc.write_all(raw).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// Bare gzip of `raw`, single-threaded: MiB/s.
fn gzip_baseline(gzip: Gzip, raw: &[u8], min_time: Duration) -> f64 {
    let start = Instant::now();
    let mut bytes = 0usize;
    while start.elapsed() < min_time {
        std::hint::black_box(gzip(raw));
        bytes += raw.len();
    }
    bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

/// Bare gzip of `raw` with `threads` threads each compressing its share at once: MiB/s of
/// them all together.
fn gzip_baseline_parallel(gzip: Gzip, raw: &[u8], threads: usize, min_time: Duration) -> f64 {
    let share = raw.len().div_ceil(threads);
    let rates: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = raw
            .chunks(share)
            .map(|part| scope.spawn(move || gzip_baseline(gzip, part, min_time)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("baseline thread"))
            .collect()
    });
    rates.iter().sum()
}

/// This process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    proc_status_kib(std::process::id(), "VmHWM:") as f64 / 1024.0
}

/// A `/proc/<pid>/status` field in KiB (0 when it cannot be read).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let modes: Vec<&str> = match args.sync.as_str() {
        "both" => vec!["os", "fsync"],
        "fsync" => vec!["fsync"],
        "os" => vec!["os"],
        other => bail!("--sync {other:?} is not one of fsync, os, both"),
    };
    let (bodies, raw) = make_bodies(&args, 32);
    let bodies = Arc::new(bodies);
    let ratio = |gzip: Gzip| gzip(&raw).len() as f64 / raw.len() as f64 * 100.0;
    let (ratio, zlib_ratio) = (ratio(libdeflate_gzip), ratio(zlib_rs_gzip));
    let raw = Arc::new(raw);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let measure = |gzip: Gzip, threads: usize| {
        let raw = raw.clone();
        tokio::task::spawn_blocking(move || {
            gzip_baseline_parallel(gzip, &raw, threads, Duration::from_secs(3))
        })
    };
    let baseline = measure(libdeflate_gzip, 1).await?;
    let baseline_all = measure(libdeflate_gzip, cores).await?;
    let zlib_all = measure(zlib_rs_gzip, cores).await?;
    println!(
        "hosepipe bench ingest: {} connections x {}-record batches of {}-byte JSON records, {} s push at {}, {} to local disk (gzip level {GZIP_LEVEL}), buffer {} MiB / {} s, object journal {}",
        args.connections,
        args.batch,
        args.record_bytes,
        args.seconds,
        if args.rate == 0 {
            "full speed".to_string()
        } else {
            format!("{} records/s", args.rate)
        },
        args.compression,
        args.size_mb,
        args.interval,
        if args.no_object_journal { "off" } else { "on" },
    );
    println!(
        "  bare gzip, same bytes  {baseline:.1} MiB/s (one core, libdeflate level {GZIP_LEVEL}, the pipeline's; output {ratio:.1}% of the input)"
    );
    println!(
        "  bare gzip, same bytes  {baseline_all:.1} MiB/s ({cores} cores compressing their share at once)"
    );
    println!(
        "  bare gzip, same bytes  {zlib_all:.1} MiB/s ({cores} cores, flate2 + zlib-rs level {GZIP_LEVEL}, the earlier backend; output {zlib_ratio:.1}%)"
    );
    let mut results = Vec::new();
    for mode in modes {
        results.push(run_once(&args, mode, bodies.clone()).await?);
    }
    // The machine's speed drifts within a run: the two-core baseline is measured again after
    // the daemon stopped, and the faster of the two is the one compared against.
    let baseline_after = measure(libdeflate_gzip, cores).await?;
    println!(
        "  bare gzip, same bytes  {baseline_after:.1} MiB/s ({cores} cores, measured again after the runs; the ratios use the faster, {:.1})",
        baseline_all.max(baseline_after)
    );
    let baseline_all = baseline_all.max(baseline_after);
    for r in &results {
        report(&args, r, baseline, baseline_all, zlib_all);
    }
    if let [os, fsync] = &results[..] {
        let rate = |r: &RunResult| r.sent as f64 / r.push_secs;
        println!(
            "fsync vs os: accepted {:.2}x, accepted+delivered {:.2}x",
            rate(fsync) / rate(os),
            (fsync.sent as f64 / fsync.total_secs) / (os.sent as f64 / os.total_secs)
        );
    }
    Ok(())
}

fn report(args: &BenchArgs, r: &RunResult, baseline: f64, baseline_all: f64, zlib_all: f64) {
    let mib = |n: u64| n as f64 * args.record_bytes as f64 / (1024.0 * 1024.0);
    let mut lat = r.latencies.clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mut fs = r.fsyncs.clone();
    fs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!("[spool sync = {}]", r.sync);
    println!(
        "  accepted records       {} ({} refused with Slow down.)",
        r.sent, r.refused
    );
    println!(
        "  accepted during push   {:.0} records/s, {:.1} MiB/s",
        r.sent as f64 / r.push_secs,
        mib(r.sent) / r.push_secs
    );
    println!(
        "  accepted+delivered     {:.0} records/s, {:.1} MiB/s (all in objects after {:.2} s)",
        r.sent as f64 / r.total_secs,
        mib(r.sent) / r.total_secs,
        r.total_secs
    );
    println!(
        "  freshness (arrival -> object written)  p50 {:.3} s, p99 {:.3} s",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    if !fs.is_empty() {
        println!(
            "  fsync latency          p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} group commits ({:.0} records each)",
            percentile(&fs, 0.50) * 1e3,
            percentile(&fs, 0.99) * 1e3,
            fs.last().copied().unwrap_or(0.0) * 1e3,
            fs.len(),
            r.sent as f64 / fs.len() as f64
        );
    }
    let rate = mib(r.sent) / r.total_secs;
    println!(
        "  ratio                  {:.2}x bare gzip on one core, {:.2}x on all cores; {:.2}x zlib-rs on all cores",
        rate / baseline,
        rate / baseline_all,
        rate / zlib_all
    );
    println!(
        "  peak RSS               {:.0} MiB (the whole bench process: daemon, client and its bodies; {:.0} MiB before the daemon started)",
        r.peak_rss_mib, r.before_mib
    );
}

async fn run_once(
    args: &BenchArgs,
    sync: &str,
    bodies: Arc<Vec<Bytes>>,
) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir_in(".").context("temp dir")?;
    let toml_text = format!(
        r#"
listen = "127.0.0.1:0"
object_store = "local"
shutdown_timeout_seconds = 120
{memory}
[spool]
sync = "{sync}"
object_journal = {journal}
[streams.bench.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
compression_format = "{}"
buffering_hints = {{ size_in_mbs = {}, interval_in_seconds = {} }}
"#,
        args.compression,
        args.size_mb,
        args.interval,
        journal = !args.no_object_journal,
        memory = args
            .memory_mb
            .map(|m| format!("[memory]\nmax_mb = {m}"))
            .unwrap_or_default(),
    ) + &match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        _ => String::new(),
    };
    if let Some(cert) = &args.tls_cert {
        crate::aws_client::trust_ca_bundle(Some(cert))?;
    }
    let raw_cfg: RawConfig = toml::from_str(&toml_text).context("bench config")?;
    let overrides = Overrides {
        listen: None,
        data_dir: Some(dir.path().to_path_buf()),
    };
    let config = Config::from_raw(raw_cfg, &overrides, &|_| None)
        .map_err(|e| anyhow::anyhow!(e.join("\n")))?;

    let before_mib = proc_status_kib(std::process::id(), "VmRSS:") as f64 / 1024.0;
    let server = Server::start(config).await?;
    let addr = server.addr;
    let scheme = server.scheme();
    let registry = server.registry.clone();
    let metrics = server.metrics.clone();
    metrics.keep_latencies();
    metrics.keep_fsyncs();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let url = format!("{scheme}://{addr}/");
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    let counts = push(
        &url,
        bodies,
        args.connections,
        args.batch as u64,
        args.rate,
        until,
        false,
    )
    .await?;
    let (accepted, refused, failed) = (&counts.accepted, &counts.refused, &counts.failed);
    let push_secs = start.elapsed().as_secs_f64();
    let sent = accepted.load(Ordering::Relaxed);
    // Wait until every accepted record is in an object.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered: u64 = registry
            .statuses()
            .iter()
            .map(|s| s.stats.delivered_records.load(Ordering::Relaxed))
            .sum();
        if delivered >= sent {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {delivered} of {sent} records delivered after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let lost = serving.await?;
    if lost > 0 {
        bail!("{lost} records undelivered at shutdown");
    }
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} requests failed", failed.load(Ordering::Relaxed));
    }
    Ok(RunResult {
        sync: sync.to_string(),
        sent,
        refused: refused.load(Ordering::Relaxed),
        push_secs,
        total_secs,
        latencies: metrics.take_latencies(),
        fsyncs: metrics.take_fsyncs(),
        peak_rss_mib: peak_rss_mib(),
        before_mib,
    })
}

/// The part of a `PutRecordBatch` answer the load generator reads (the rest is skipped
/// unparsed, so the client takes as little of the cores it shares with the daemon as it can).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutAnswer {
    failed_put_count: u64,
    #[allow(dead_code)]
    request_responses: serde::de::IgnoredAny,
}

/// What a load counted: records acknowledged and refused, requests that failed outright.
#[derive(Debug, Default)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

/// Pushes `bodies` (each a PutRecordBatch of `batch` records) round-robin from `connections`
/// connections until `until` or, with `stop_on_refusal`, until a record is refused. A
/// connection sends its next batch as soon as the answer is in (no back-off), or every batch
/// at `rate` records/s over all connections.
pub async fn push(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    batch: u64,
    rate: u64,
    until: Instant,
    stop_on_refusal: bool,
) -> anyhow::Result<Arc<Counts>> {
    let client = crate::aws_client::client_builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (client, url, bodies, counts) = (
            client.clone(),
            url.to_string(),
            bodies.clone(),
            counts.clone(),
        );
        // Paced: each connection sends a batch every `period`.
        let period = (rate > 0)
            .then(|| Duration::from_secs_f64(batch as f64 * connections as f64 / rate as f64));
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            let mut tick = period.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < until
                && !(stop_on_refusal && counts.refused.load(Ordering::Relaxed) > 0)
            {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let resp = client
                    .post(&url)
                    .header("content-type", "application/x-amz-json-1.1")
                    .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap_or_default();
                        let failed_put = serde_json::from_slice::<PutAnswer>(&body)
                            .map_or(batch, |a| a.failed_put_count);
                        counts
                            .accepted
                            .fetch_add(batch - failed_put, Ordering::Relaxed);
                        counts.refused.fetch_add(failed_put, Ordering::Relaxed);
                    }
                    _ => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(counts)
}

/// Bytes per second of `run` (which returns the bytes it handled), repeated for `seconds`
/// after one warm-up call. Shared by the CPU benchmarks.
pub fn per_second(seconds: f64, mut run: impl FnMut() -> usize) -> f64 {
    run();
    let started = Instant::now();
    let mut bytes = 0usize;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        bytes += run();
    }
    bytes as f64 / started.elapsed().as_secs_f64()
}
