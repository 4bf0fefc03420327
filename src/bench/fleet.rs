//! `hosepipe bench fleet`: a fleet on this machine against one daemon on its local spool, in
//! the same run.
//!
//! Starts a three-server NATS JetStream cluster (`nats-server`, child processes, routes on
//! 127.0.0.1), then: the baseline, a bare JetStream client publishing the same records in
//! batches of 500 to a stream of the same replication and awaiting each batch's
//! acknowledgements; one `hosepipe serve` on the local spool; and fleets of 1, 2 and 3
//! `hosepipe serve` nodes on JetStream. Each run pushes PutRecordBatch at full speed from the
//! same connections (spread over the nodes) for the same time, and waits until every
//! accepted record is in an object. Measured: accepted-and-delivered records/s, CPU per record
//! of the hosepipe nodes and of the NATS servers (from /proc), each node's peak RSS, and the
//! puts' JetStream publish-to-acknowledgement latency (the nodes' histogram).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::backlog::{Daemon, RssSampler, status_sum};
use super::ingest::{BenchArgs, make_bodies, push};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchFleetArgs {
    /// How long each run pushes, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent HTTP connections pushing batches, all runs alike (spread over the nodes).
    #[arg(long, default_value_t = 6)]
    pub connections: usize,
    /// Bytes per record (JSON, padded); 500 records per batch.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// The stream's CompressionFormat.
    #[arg(long, default_value = "UNCOMPRESSED")]
    pub compression: String,
    /// Fleet sizes to run, comma-separated.
    #[arg(long, default_value = "1,2,3")]
    pub nodes: String,
    /// JetStream replicas of each stream.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// The nats-server binary (the test command installs one under target/venv/bin).
    #[arg(long, default_value = "nats-server")]
    pub nats_server: PathBuf,
}

pub fn run(args: BenchFleetArgs) -> Result<(), String> {
    run_inner(args).map_err(|e| format!("{e:#}"))
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// A free port on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three nats-server children clustered on loopback.
struct NatsCluster {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl NatsCluster {
    fn start(rt: &tokio::runtime::Runtime, exe: &Path, dir: &Path) -> anyhow::Result<Self> {
        let ports: Vec<[u16; 3]> = (0..3)
            .map(|_| Ok([free_port()?, free_port()?, free_port()?]))
            .collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p[2]))
            .collect();
        let mut children = Vec::new();
        for (i, [client, http, route]) in ports.iter().enumerate() {
            let store = dir.join(format!("d{i}"));
            std::fs::create_dir_all(&store)?;
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{ name: bench, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                ),
            )?;
            let child = Command::new(exe)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("n{i}.log")))?)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            children.push(child);
        }
        let cluster = NatsCluster {
            children,
            urls: ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{}", p[0]))
                .collect(),
        };
        let started = Instant::now();
        for [_, http, _] in &ports {
            // Healthy once JetStream's meta group has a leader.
            while !rt
                .block_on(reqwest::get(format!("http://127.0.0.1:{http}/healthz")))
                .is_ok_and(|r| r.status().is_success())
            {
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("the NATS cluster is not healthy after 60 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    fn cpu_seconds(&self) -> f64 {
        self.children.iter().map(|c| cpu_seconds(c.id())).sum()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one run measured.
struct Measured {
    label: String,
    /// In objects (a hosepipe run), or only published (a baseline).
    delivered: bool,
    records: u64,
    refused: u64,
    secs: f64,
    hosepipe_cpu: f64,
    nats_cpu: f64,
    rss_mib: Vec<f64>,
    /// Publish → acknowledgement of a batch of 500 (p50, p99), seconds.
    publish: Option<(f64, f64)>,
}

fn run_inner(args: BenchFleetArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir_in(".").context("temp dir")?;
    let nats_dir = dir.path().join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    let cluster = NatsCluster::start(&rt, &args.nats_server, &nats_dir)?;
    let ingest = BenchArgs {
        seconds: args.seconds,
        ..BenchArgs::load(args.connections, args.record_bytes, &args.compression, 1)
    };
    let (bodies, raw) = make_bodies(&ingest, 32);
    let bodies = Arc::new(bodies);
    let sizes: Vec<usize> = (1..=3)
        .filter(|n| args.nodes.split(',').any(|s| s.trim() == n.to_string()))
        .collect();
    println!(
        "hosepipe bench fleet: {} connections x 500-record batches of {}-byte JSON records, {} s push per run, {} to local disk, JetStream R={} on a 3-server NATS cluster; every process shares this machine's {} cores",
        args.connections,
        args.record_bytes,
        args.seconds,
        args.compression,
        args.replicas,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let mut runs = vec![
        bare_publish(&rt, &args, &cluster, &raw, false)?,
        bare_publish(&rt, &args, &cluster, &raw, true)?,
    ];
    // The local spool first (`None`), then each fleet size.
    let setups = std::iter::once(None).chain(sizes.into_iter().map(Some));
    for nodes in setups {
        let bodies = bodies.clone();
        runs.push(run_daemons(
            &rt,
            &args,
            &cluster,
            dir.path(),
            bodies,
            nodes,
        )?);
    }
    report(&args, &runs);
    Ok(())
}

/// The baselines: a bare async-nats client publishing the records from `connections` tasks,
/// 500 at a time, each 500's acknowledgements awaited: a message per record, or (`batched`)
/// the 500 as one message, as hosepipe sends a put.
fn bare_publish(
    rt: &tokio::runtime::Runtime,
    args: &BenchFleetArgs,
    cluster: &NatsCluster,
    raw: &[u8],
    batched: bool,
) -> anyhow::Result<Measured> {
    let subject = if batched { "bare_batched" } else { "bare" };
    let records: Vec<Bytes> = raw
        .split_inclusive(|b| *b == b'\n')
        .map(Bytes::copy_from_slice)
        .collect();
    let records = Arc::new(records);
    let nats_before = cluster.cpu_seconds();
    let cpu_before = cpu_seconds(std::process::id());
    let (count, secs, mut latencies) = rt.block_on(async {
        let client = async_nats::connect(cluster.urls.clone()).await?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: subject.into(),
            subjects: vec![subject.into()],
            num_replicas: args.replicas,
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
        let start = Instant::now();
        let until = start + Duration::from_secs(args.seconds);
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let (js, records) = (js.clone(), records.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut sent = 0u64;
                let mut i = c * 500;
                while Instant::now() < until {
                    let t = Instant::now();
                    let mut acks = Vec::with_capacity(500);
                    let mut batch = Vec::new();
                    for _ in 0..500 {
                        let r = records[i % records.len()].clone();
                        i += 1;
                        if batched {
                            batch.extend_from_slice(&r);
                        } else {
                            acks.push(js.publish(subject, r).await?);
                        }
                    }
                    if batched {
                        acks.push(js.publish(subject, Bytes::from(batch)).await?);
                    }
                    for a in acks {
                        a.await?;
                    }
                    latencies.push(t.elapsed().as_secs_f64());
                    sent += 500;
                }
                Ok::<_, anyhow::Error>((sent, latencies))
            }));
        }
        let mut count = 0;
        let mut latencies = Vec::new();
        for t in tasks {
            let (n, l) = t.await??;
            count += n;
            latencies.extend(l);
        }
        Ok::<_, anyhow::Error>((count, start.elapsed().as_secs_f64(), latencies))
    })?;
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(Measured {
        label: format!(
            "baseline: bare JetStream client, {}",
            if batched {
                "500 records per message"
            } else {
                "a message per record"
            }
        ),
        delivered: false,
        records: count,
        refused: 0,
        secs,
        hosepipe_cpu: cpu_seconds(std::process::id()) - cpu_before,
        nats_cpu: cluster.cpu_seconds() - nats_before,
        rss_mib: Vec::new(),
        publish: Some((q(0.5), q(0.99))),
    })
}

/// One run: `nodes` fleet nodes on JetStream, or (`None`) one daemon on its local spool.
fn run_daemons(
    rt: &tokio::runtime::Runtime,
    args: &BenchFleetArgs,
    cluster: &NatsCluster,
    dir: &Path,
    bodies: Arc<Vec<Bytes>>,
    nodes: Option<usize>,
) -> anyhow::Result<Measured> {
    let label = match nodes {
        None => "1 daemon, local spool (fsync)".to_string(),
        Some(n) => format!("{n} node{} on JetStream", if n > 1 { "s" } else { "" }),
    };
    let run_dir = dir.join(format!("run-{}", nodes.unwrap_or(0)));
    std::fs::create_dir_all(&run_dir)?;
    let servers: Vec<String> = cluster.urls.iter().map(|u| format!("{u:?}")).collect();
    let mut daemons = Vec::new();
    for i in 0..nodes.unwrap_or(1) {
        let log = match nodes {
            None => String::new(),
            Some(_) => format!(
                "[log]\nbackend = \"jetstream\"\nservers = [{}]\nreplicas = {}\nnode = \"node-{i}\"\nprefix = \"run{}\"\n",
                servers.join(", "),
                args.replicas,
                nodes.unwrap_or(0)
            ),
        };
        let config = run_dir.join(format!("node-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nobject_store = \"local\"\nshutdown_timeout_seconds = 120\n{log}\
                 [streams.bench.extended_s3_destination_configuration]\n\
                 bucket_arn = \"arn:aws:s3:::bench\"\ncompression_format = \"{}\"\n\
                 buffering_hints = {{ size_in_mbs = 8, interval_in_seconds = 1 }}\n",
                args.compression
            ),
        )?;
        let data = run_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(data.join("buckets/bench"))?;
        let (daemon, _) = Daemon::start(
            rt,
            &config,
            &data,
            &run_dir.join(format!("node-{i}.log")),
            &[],
        )?;
        daemons.push(daemon);
    }
    let samplers: Vec<RssSampler> = daemons
        .iter()
        .map(|d| RssSampler::start(d.child.id()))
        .collect();
    let cpu =
        |daemons: &[Daemon]| -> f64 { daemons.iter().map(|d| cpu_seconds(d.child.id())).sum() };
    let (cpu_before, nats_before) = (cpu(&daemons), cluster.cpu_seconds());
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    let per_node = (args.connections / daemons.len()).max(1);
    let counts = rt.block_on(async {
        let pushes: Vec<_> = daemons
            .iter()
            .map(|d| {
                let url = format!("{}/", d.url);
                let bodies = bodies.clone();
                tokio::spawn(
                    async move { push(&url, bodies, per_node, 500, 0, until, false).await },
                )
            })
            .collect();
        let mut all = Vec::new();
        for p in pushes {
            all.push(p.await??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let accepted: u64 = counts
        .iter()
        .map(|c| c.accepted.load(Ordering::Relaxed))
        .sum();
    let refused: u64 = counts
        .iter()
        .map(|c| c.refused.load(Ordering::Relaxed))
        .sum();
    let failed: u64 = counts
        .iter()
        .map(|c| c.failed.load(Ordering::Relaxed))
        .sum();
    if failed > 0 {
        bail!("{label}: {failed} requests failed");
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let delivered: u64 = daemons
            .iter()
            .map(|d| {
                d.status(rt)
                    .map(|s| status_sum(&s, "delivered_records"))
                    .unwrap_or(0)
            })
            .sum();
        if delivered >= accepted {
            break;
        }
        if Instant::now() > deadline {
            bail!("{label}: only {delivered} of {accepted} records delivered after 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let (hosepipe_cpu, nats_cpu) = (
        cpu(&daemons) - cpu_before,
        cluster.cpu_seconds() - nats_before,
    );
    let publish = match nodes {
        None => None,
        Some(_) => publish_quantiles(rt, &daemons),
    };
    let mut rss_mib = Vec::new();
    for (d, s) in daemons.into_iter().zip(samplers) {
        rss_mib.push(s.finish(d.child.id()));
        let status = d.stop()?;
        if !status.success() {
            bail!("{label}: a node exited with {status}");
        }
    }
    Ok(Measured {
        label,
        delivered: true,
        records: accepted,
        refused,
        secs,
        hosepipe_cpu,
        nats_cpu: if nodes.is_some() { nats_cpu } else { 0.0 },
        rss_mib,
        publish,
    })
}

/// p50 and p99 of the nodes' `hosepipe_jetstream_publish_seconds` histogram together (the
/// upper bound of the bucket each falls in).
fn publish_quantiles(rt: &tokio::runtime::Runtime, daemons: &[Daemon]) -> Option<(f64, f64)> {
    let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
    for d in daemons {
        let text = rt
            .block_on(async {
                reqwest::get(format!("{}/metrics", d.url))
                    .await?
                    .text()
                    .await
            })
            .ok()?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("hosepipe_jetstream_publish_seconds_bucket{le=\"")
            else {
                continue;
            };
            let (le, rest) = rest.split_once('"')?;
            let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            *buckets.entry(le.to_bits()).or_default() += count;
        }
    }
    let mut cumulative: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(b, c)| (f64::from_bits(b), c))
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = cumulative.last()?.1;
    let q = |p: f64| {
        cumulative
            .iter()
            .find(|(_, c)| *c >= total * p)
            .map_or(f64::NAN, |(le, _)| *le)
    };
    Some((q(0.5), q(0.99)))
}

fn report(args: &BenchFleetArgs, runs: &[Measured]) {
    let mib = |n: u64| n as f64 * args.record_bytes as f64 / (1024.0 * 1024.0);
    for r in runs {
        let rate = r.records as f64 / r.secs;
        println!("[{}]", r.label);
        if r.delivered {
            println!(
                "  accepted+delivered     {:.0} records/s, {:.1} MiB/s ({} records, {} refused with Slow down., all in objects after {:.2} s)",
                rate,
                mib(r.records) / r.secs,
                r.records,
                r.refused,
                r.secs
            );
        } else {
            println!(
                "  published+acknowledged {:.0} records/s, {:.1} MiB/s ({} records; not read back)",
                rate,
                mib(r.records) / r.secs,
                r.records
            );
        }
        let per = |cpu: f64| cpu / r.records.max(1) as f64 * 1e6;
        println!(
            "  CPU per record         {:.1} µs in {}, {:.1} µs in the NATS servers",
            per(r.hosepipe_cpu),
            if r.rss_mib.is_empty() {
                "the client"
            } else {
                "hosepipe"
            },
            per(r.nats_cpu)
        );
        if let Some((p50, p99)) = r.publish {
            println!(
                "  publish → ack (500)    p50 {:.1} ms, p99 {:.1} ms{}",
                p50 * 1e3,
                p99 * 1e3,
                if r.rss_mib.is_empty() {
                    ""
                } else {
                    " (histogram bucket bounds)"
                }
            );
        }
        if !r.rss_mib.is_empty() {
            let rss: Vec<String> = r.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
            println!("  peak RSS per node      {} MiB", rss.join(", "));
        }
    }
}
