//! `hosepipe bench soak`: hours of ordinary life in minutes. A daemon (this binary's `serve`, a
//! child process) delivering to local-disk buckets takes load at half of the capacity measured
//! in the same run, while its destination goes away every few minutes (the bucket directory
//! replaced by a plain file, as against a stopped S3) and comes back. Its RSS, open file
//! descriptors, threads and spool bytes are sampled throughout; at the end the load stops, the
//! backlog drains, and the records in the bucket are counted against those accepted.
//!
//! It fails (exit 1) on a lost record, on open descriptors that grow from one outage cycle to
//! the next, and, with `--max-rss-growth-pct`, on RSS that grows more than that after warm-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::backlog::{Daemon, Scratch, count_lines};
use crate::bench::ingest::{BenchArgs, make_bodies, proc_status_kib, push};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchSoakArgs {
    /// How long the load runs (after the capacity measurement).
    #[arg(long, default_value_t = 60)]
    pub minutes: u64,
    /// Records/s of the load; 0: half of the capacity measured first.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds between the starts of two destination outages.
    #[arg(long, default_value_t = 300)]
    pub outage_every: u64,
    /// Seconds each outage lasts.
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Fail when RSS at the end is more than this much above RSS after warm-up (the first
    /// outage cycle), in percent. Off by default (a short run has no steady state).
    #[arg(long)]
    pub max_rss_growth_pct: Option<f64>,
    /// Concurrent HTTP connections pushing batches.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bytes per record (JSON, padded); 500 records per batch.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
}

/// One sample of the daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_secs: f64,
    rss_mib: f64,
    fds: usize,
    threads: u64,
    spool_mib: f64,
    outage: bool,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn run(args: BenchSoakArgs) -> Result<(), String> {
    run_inner(args).map_err(|e| format!("{e:#}"))
}

fn run_inner(args: BenchSoakArgs) -> anyhow::Result<()> {
    let Scratch {
        dir: _dir,
        data,
        config,
        log,
    } = Scratch::new(
        r#"listen = "127.0.0.1:0"
object_store = "local"
shutdown_timeout_seconds = 60
[spool]
max_mb = 4096
[streams.bench.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
compression_format = "GZIP"
buffering_hints = { size_in_mbs = 8, interval_in_seconds = 5 }
"#,
    )?;
    let bucket: PathBuf = data.join("buckets").join("bench");
    let load = BenchArgs::load(args.connections, args.record_bytes, "GZIP", 5);
    let (bodies, _) = make_bodies(&load, 16);
    let bodies = Arc::new(bodies);
    let rt = tokio::runtime::Runtime::new()?;
    let (daemon, _) = Daemon::start(&rt, &config, &data, &log, &[])?;
    let pid = daemon.child.id();
    let url = format!("{}/", daemon.url);

    // Capacity: full speed for 15 s (accepted and delivered, as the backlog shows). Its
    // records are in the bucket too, and counted.
    let mut calibration_accepted = 0;
    let rate = if args.rate > 0 {
        args.rate
    } else {
        let started = Instant::now();
        let counts = rt.block_on(push(
            &url,
            bodies.clone(),
            args.connections,
            500,
            0,
            Instant::now() + Duration::from_secs(15),
            false,
        ))?;
        // Wait for the backlog to drain so capacity is what is delivered, not only accepted.
        daemon.wait_drained(&rt)?;
        calibration_accepted = counts.accepted.load(Ordering::Relaxed);
        let capacity = calibration_accepted as f64 / started.elapsed().as_secs_f64();
        println!("[capacity] {capacity:.0} records/s accepted and delivered at full speed");
        (capacity / 2.0).max(500.0) as u64
    };
    println!(
        "hosepipe bench soak: {} min at {rate} records/s ({}-byte JSON records, GZIP), a {} s outage every {} s",
        args.minutes, args.record_bytes, args.outage_seconds, args.outage_every
    );

    let run_for = Duration::from_secs(args.minutes * 60);
    let started = Instant::now();
    let push_url = url.clone();
    let push_bodies = bodies.clone();
    let connections = args.connections;
    let load_task = rt.spawn(async move {
        push(
            &push_url,
            push_bodies,
            connections,
            500,
            rate,
            Instant::now() + run_for,
            false,
        )
        .await
    });
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut in_outage = false;
    while started.elapsed() < run_for {
        let t = started.elapsed();
        let cycle = t.as_secs() % args.outage_every.max(1);
        let want_outage = t.as_secs() >= args.outage_every.min(60)
            && cycle < args.outage_seconds
            && t.as_secs() + args.outage_seconds < run_for.as_secs();
        if want_outage != in_outage {
            set_outage(&bucket, want_outage)?;
            in_outage = want_outage;
        }
        if t >= next_sample {
            let status = daemon.status(&rt)?;
            samples.push(Sample {
                at_secs: t.as_secs_f64(),
                rss_mib: proc_status_kib(pid, "VmRSS:") as f64 / 1024.0,
                fds: open_fds(pid),
                threads: proc_status_kib(pid, "Threads:"),
                spool_mib: status["spool_bytes"].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0),
                outage: in_outage,
            });
            next_sample += Duration::from_secs(args.sample_every.max(1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if in_outage {
        set_outage(&bucket, false)?;
    }
    let counts = rt.block_on(load_task)??;
    let accepted = calibration_accepted + counts.accepted.load(Ordering::Relaxed);
    let drained_secs = daemon.wait_drained(&rt)?;
    let peak_rss = proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
    let exit = daemon.stop()?;
    let delivered = count_lines(&bucket)?;

    println!(
        "{:>7}  {:>8}  {:>5}  {:>7}  {:>9}  outage",
        "t (s)", "RSS MiB", "fds", "threads", "spool MiB"
    );
    let every = (samples.len() / 40).max(1);
    for s in samples.iter().step_by(every) {
        println!(
            "{:>7.0}  {:>8.1}  {:>5}  {:>7}  {:>9.1}  {}",
            s.at_secs,
            s.rss_mib,
            s.fds,
            s.threads,
            s.spool_mib,
            if s.outage { "yes" } else { "" }
        );
    }
    let verdict = judge(&samples, args.outage_every as f64);
    println!(
        "[result] {accepted} records accepted, {delivered} delivered ({} failed requests); backlog drained {drained_secs:.1} s after the load stopped; peak RSS {peak_rss:.0} MiB; daemon exit {exit}",
        counts.failed.load(Ordering::Relaxed)
    );
    println!(
        "[result] RSS {:.1} MiB after warm-up, {:.1} MiB at the end: {:+.1}%; fds {}..{} after warm-up (warm-up {}); threads {}..{}",
        verdict.rss_warm,
        verdict.rss_end,
        verdict.rss_growth_pct,
        verdict.fds_min,
        verdict.fds_max,
        verdict.fds_warm,
        verdict.threads_min,
        verdict.threads_max
    );
    if delivered < accepted {
        bail!("{} accepted records are missing", accepted - delivered);
    }
    if delivered > accepted && counts.failed.load(Ordering::Relaxed) == 0 {
        // Every request was answered (failed requests are counted above), so more lines than
        // accepted records are records written twice.
        bail!("{} records were delivered twice", delivered - accepted);
    }
    if verdict.fds_max > verdict.fds_warm + 16 {
        bail!(
            "open descriptors grew from {} after warm-up to {}",
            verdict.fds_warm,
            verdict.fds_max
        );
    }
    if let Some(limit) = args.max_rss_growth_pct
        && verdict.rss_growth_pct > limit
    {
        bail!(
            "RSS grew {:.1}% after warm-up (limit {limit}%)",
            verdict.rss_growth_pct
        );
    }
    Ok(())
}

/// The bucket's directory is a plain file during an outage: every write fails and is retried.
fn set_outage(bucket: &Path, on: bool) -> anyhow::Result<()> {
    let aside = bucket.with_extension("delivered");
    if on {
        if bucket.exists() {
            std::fs::rename(bucket, &aside)?;
        }
        std::fs::create_dir_all(bucket.parent().expect("has a parent"))?;
        std::fs::write(bucket, b"outage")?;
    } else {
        std::fs::remove_file(bucket)?;
        if aside.exists() {
            std::fs::rename(&aside, bucket)?;
        }
    }
    Ok(())
}

/// The run's figures after warm-up: the first outage cycle (or the first fifth of a run shorter
/// than one) is warm-up.
#[derive(Debug, PartialEq)]
struct Verdict {
    rss_warm: f64,
    rss_end: f64,
    rss_growth_pct: f64,
    fds_warm: usize,
    fds_min: usize,
    fds_max: usize,
    threads_min: u64,
    threads_max: u64,
}

fn judge(samples: &[Sample], outage_every: f64) -> Verdict {
    let end = samples.last().map_or(0.0, |s| s.at_secs);
    let warm_until = outage_every.min(end / 5.0);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at_secs >= warm_until).collect();
    let after = if after.is_empty() {
        samples.iter().collect()
    } else {
        after
    };
    // RSS of the same phase at both ends: the mean of the first and last fifths' samples taken
    // outside outages.
    let steady: Vec<f64> = after
        .iter()
        .filter(|s| !s.outage)
        .map(|s| s.rss_mib)
        .collect();
    let fifth = (steady.len() / 5).max(1);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let rss_warm = mean(&steady[..fifth.min(steady.len())]);
    let rss_end = mean(&steady[steady.len().saturating_sub(fifth)..]);
    Verdict {
        rss_warm,
        rss_end,
        rss_growth_pct: if rss_warm > 0.0 {
            (rss_end / rss_warm - 1.0) * 100.0
        } else {
            0.0
        },
        fds_warm: after.first().map_or(0, |s| s.fds),
        fds_min: after.iter().map(|s| s.fds).min().unwrap_or(0),
        fds_max: after.iter().map(|s| s.fds).max().unwrap_or(0),
        threads_min: after.iter().map(|s| s.threads).min().unwrap_or(0),
        threads_max: after.iter().map(|s| s.threads).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_secs: f64, rss_mib: f64, fds: usize, outage: bool) -> Sample {
        Sample {
            at_secs,
            rss_mib,
            fds,
            threads: 10,
            spool_mib: 0.0,
            outage,
        }
    }

    #[test]
    fn warm_up_is_left_out_and_outages_do_not_count_as_growth() {
        let mut samples = vec![sample(0.0, 20.0, 10, false), sample(10.0, 60.0, 30, false)];
        for i in 0..20 {
            let t = 300.0 + i as f64 * 60.0;
            samples.push(sample(t, 100.0, 40, false));
            samples.push(sample(t + 30.0, 180.0, 40, true));
        }
        let v = judge(&samples, 300.0);
        assert_eq!(
            (v.rss_warm, v.rss_end, v.rss_growth_pct),
            (100.0, 100.0, 0.0)
        );
        assert_eq!((v.fds_warm, v.fds_min, v.fds_max), (40, 40, 40));
    }
}
