//! `hosepipe bench backlog`: the spool as the buffer, through an outage and a restart.
//!
//! A daemon (this binary's `serve`, a child process) delivers to local-disk buckets whose bucket
//! directory is replaced by a plain file: every write fails, as against a stopped S3, and is
//! retried. Connections push at full speed until the first record is refused; the daemon is then
//! killed (-9) with that backlog on disk, started again (still in the outage) and timed to its
//! first `/health` answer; the outage ends and the backlog drains. The child's RSS is sampled
//! throughout, and at the end the records in the bucket are counted against those accepted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::ingest::{BenchArgs, make_bodies, proc_status_kib, push};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchBacklogArgs {
    /// `[spool] max_mb`: how large the backlog may grow on disk.
    #[arg(long, default_value_t = 2048)]
    pub spool_mb: u64,
    /// `[memory] max_mb`: what the stages may hold.
    #[arg(long, default_value_t = 64)]
    pub memory_mb: u64,
    /// Concurrent HTTP connections pushing batches.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bytes per record (JSON, padded); 500 records per batch.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// The stream's CompressionFormat.
    #[arg(long, default_value = "GZIP")]
    pub compression: String,
    /// Spool sync mode: fsync or os.
    #[arg(long, default_value = "fsync")]
    pub sync: String,
}

/// A `hosepipe serve` child and its address.
pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) url: String,
}

impl Daemon {
    /// Starts `hosepipe serve` with `env` added to its environment; returns it once it answers
    /// `/health`, with the time that took.
    pub(super) fn start(
        rt: &tokio::runtime::Runtime,
        config: &Path,
        data: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Daemon, Duration)> {
        let started = Instant::now();
        let exe = std::env::current_exe().context("this binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting hosepipe serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the daemon's address")?;
        let Some(url) = line.trim().strip_prefix("hosepipe listening on ") else {
            let _ = child.kill();
            bail!("the daemon did not start: {line:?}; see {}", log.display());
        };
        let daemon = Daemon {
            child,
            url: url.to_string(),
        };
        // Time to the first /health answer.
        loop {
            if rt
                .block_on(reqwest::get(format!("{}/health", daemon.url)))
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok((daemon, started.elapsed()));
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("no /health answer after 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(super) fn status(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<serde_json::Value> {
        rt.block_on(async {
            Ok(reqwest::get(format!("{}/status", self.url))
                .await?
                .json()
                .await?)
        })
    }

    /// Waits (up to 30 min) until no record is backlogged; the seconds that took.
    pub(super) fn wait_drained(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let left = status_sum(&self.status(rt)?, "backlog_records");
            if left == 0 {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("{left} records still backlogged after 30 min");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status.
    pub(super) fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        Ok(self.child.wait()?)
    }
}

/// Samples a process's VmRSS every 50 ms; the peak in MiB.
pub(super) struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    pub(super) fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { stop, peak, thread }
    }

    pub(super) fn finish(self, pid: u32) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        // VmHWM catches what the sampling missed.
        self.peak
            .load(Ordering::Relaxed)
            .max(proc_status_kib(pid, "VmHWM:")) as f64
            / 1024.0
    }
}

/// Records (lines) in every object under `dir`, gzip objects read as gzip.
pub(super) fn count_lines(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = std::fs::File::open(&path)?;
            let mut data = Vec::new();
            if path.extension().is_some_and(|e| e == "gz") {
                flate2::read::MultiGzDecoder::new(file).read_to_end(&mut data)?;
            } else {
                BufReader::new(file).read_to_end(&mut data)?;
            }
            n += memchr::memchr_iter(b'\n', &data).count() as u64;
        }
    }
    Ok(n)
}

pub(super) fn status_sum(status: &serde_json::Value, field: &str) -> u64 {
    status["streams"]
        .as_array()
        .map(|s| s.iter().filter_map(|v| v[field].as_u64()).sum())
        .unwrap_or(0)
}

pub fn run(args: BenchBacklogArgs) -> Result<(), String> {
    run_inner(args).map_err(|e| format!("{e:#}"))
}

/// A scratch directory in the working directory (on the disk being measured) for one daemon:
/// its data dir, config file (written with `config`) and log.
pub(super) struct Scratch {
    pub(super) dir: tempfile::TempDir,
    pub(super) data: PathBuf,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
}

impl Scratch {
    pub(super) fn new(config: &str) -> anyhow::Result<Scratch> {
        let dir = tempfile::tempdir_in(".").context("temp dir")?;
        let scratch = Scratch {
            data: dir.path().join("data"),
            config: dir.path().join("hosepipe.toml"),
            log: dir.path().join("daemon.log"),
            dir,
        };
        std::fs::write(&scratch.config, config)?;
        Ok(scratch)
    }
}

fn run_inner(args: BenchBacklogArgs) -> anyhow::Result<()> {
    let Scratch {
        dir: _dir,
        data,
        config,
        log,
    } = Scratch::new(&format!(
        r#"listen = "127.0.0.1:0"
object_store = "local"
shutdown_timeout_seconds = 60
[spool]
sync = "{}"
max_mb = {}
[memory]
max_mb = {}
[streams.bench.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
compression_format = "{}"
buffering_hints = {{ size_in_mbs = 8, interval_in_seconds = 1 }}
"#,
        args.sync, args.spool_mb, args.memory_mb, args.compression
    ))?;
    // The outage: the bucket's directory is a plain file, so every write fails and is retried.
    let bucket: PathBuf = data.join("buckets").join("bench");
    std::fs::create_dir_all(bucket.parent().expect("has a parent"))?;
    std::fs::write(&bucket, b"outage")?;

    let load = BenchArgs {
        sync: args.sync.clone(),
        memory_mb: Some(args.memory_mb),
        ..BenchArgs::load(args.connections, args.record_bytes, &args.compression, 1)
    };
    let (bodies, _) = make_bodies(&load, 16);
    let bodies = Arc::new(bodies);
    println!(
        "hosepipe bench backlog: {} connections x 500-record batches of {}-byte JSON records, {}, spool max {} MiB, memory {} MiB, sync {}",
        args.connections,
        args.record_bytes,
        args.compression,
        args.spool_mb,
        args.memory_mb,
        args.sync
    );

    // 1. The outage: push until the first refusal.
    let rt = tokio::runtime::Runtime::new()?;
    let (first, _) = Daemon::start(&rt, &config, &data, &log, &[])?;
    let pid = first.child.id();
    let rss = RssSampler::start(pid);
    let started = Instant::now();
    let counts = rt.block_on(push(
        &format!("{}/", first.url),
        bodies,
        args.connections,
        500,
        0,
        Instant::now() + Duration::from_secs(3600),
        true,
    ))?;
    let fill_secs = started.elapsed().as_secs_f64();
    let accepted = counts.accepted.load(Ordering::Relaxed);
    let status = first.status(&rt)?;
    let fill_rss = rss.finish(pid);
    let mib = |records: u64| records as f64 * args.record_bytes as f64 / (1024.0 * 1024.0);
    println!(
        "[outage] accepted {accepted} records ({:.0} MiB) in {fill_secs:.1} s before the first refusal ({:.1} MiB/s); spool {:.0} MiB on disk; peak RSS {fill_rss:.0} MiB",
        mib(accepted),
        mib(accepted) / fill_secs,
        status["spool_bytes"].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0),
    );
    if counts.failed.load(Ordering::Relaxed) > 0 {
        bail!("{} requests failed", counts.failed.load(Ordering::Relaxed));
    }

    // 2. kill -9 with the backlog on disk, start again (still in the outage).
    first.kill();
    let (second, health) = Daemon::start(&rt, &config, &data, &log, &[])?;
    let pid = second.child.id();
    let rss = RssSampler::start(pid);
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "[restart] /health answered {:.3} s after the start with {} records backlogged",
        health.as_secs_f64(),
        status_sum(&second.status(&rt)?, "backlog_records")
    );

    // 3. The outage ends: the backlog drains.
    std::fs::remove_file(&bucket)?;
    let drain_secs = second.wait_drained(&rt)?;
    let drain_rss = rss.finish(pid);
    println!(
        "[drain] {accepted} records delivered in {drain_secs:.1} s ({:.1} MiB/s); peak RSS since the restart {drain_rss:.0} MiB (budget {} MiB)",
        mib(accepted) / drain_secs,
        args.memory_mb
    );
    let exit = second.stop()?;
    let delivered = count_lines(&bucket)?;
    println!(
        "[check] {delivered} records in the bucket for {accepted} accepted; daemon exit {exit}"
    );
    if delivered < accepted {
        bail!("{} accepted records are missing", accepted - delivered);
    }
    Ok(())
}
