//! `hosepipe bench control`: does a slow control operation on one stream stall ingest on
//! another? A `hosepipe serve` child uses a real KMS (moto's, started here unless given) behind a
//! proxy that holds every connection for `--delay-ms` before passing it on. Stream `a` encrypts
//! its objects with a KMS key, so each UpdateDestination on it waits for the key service;
//! stream `b` takes `PutRecordBatch` calls from several connections. The latency of `b`'s puts
//! is measured twice for the same time: with no control operation, and while updates of `a`
//! run back to back.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::backlog::{Daemon, RssSampler};
use crate::aws_client::{self, ServiceEndpoint};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchControlArgs {
    /// A running KMS-compatible endpoint; without it `moto_server` (from PATH) is started.
    #[arg(long)]
    pub kms_endpoint: Option<String>,
    /// How long the proxy holds each connection to the key service.
    #[arg(long, default_value_t = 2000)]
    pub delay_ms: u64,
    /// Seconds of puts in each phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections putting to stream `b`.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Records per PutRecordBatch (1 KiB each).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
}

const ACCESS_KEY: &str = "AKIDBENCHCONTROL";
const SECRET_KEY: &str = "bench-control-secret";

pub fn run(args: BenchControlArgs) -> Result<(), String> {
    run_inner(args).map_err(|e| format!("{e:#}"))
}

/// Percentile of sorted seconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `moto_server` child on a free port.
fn start_moto() -> anyhow::Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto_server (pip install 'moto[server]', or pass --kms-endpoint)")?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// Holds each connection `delay` before joining it to `upstream`: a slow service, whatever
/// it is.
async fn delaying_proxy(upstream: String, delay: Duration) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let upstream = upstream.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(url)
}

/// One Firehose API call to the daemon (auth is off in the bench's config).
async fn firehose(
    client: &reqwest::Client,
    url: &str,
    operation: &str,
    body: Bytes,
) -> anyhow::Result<Value> {
    let answer = client
        .post(url)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("Firehose_20150804.{operation}"))
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let value: Value = answer.json().await?;
    if !status.is_success() {
        bail!("{operation}: {status} {value}");
    }
    Ok(value)
}

/// Puts to stream `b` from `connections` connections for `seconds`; each request's latency.
async fn put_latencies(
    url: &str,
    body: Bytes,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, body) = (client.clone(), url.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let answer = firehose(&client, &url, "PutRecordBatch", body.clone()).await?;
                out.push(started.elapsed().as_secs_f64());
                if answer["FailedPutCount"].as_u64() != Some(0) {
                    bail!("records refused: {answer}");
                }
            }
            Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(all)
}

/// UpdateDestination on stream `a` back to back until `stop`; how many completed and how long
/// each took.
async fn update_loop(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let mut took = Vec::new();
    let mut size = 1;
    while !stop.load(Ordering::Relaxed) {
        let described = firehose(
            &client,
            &url,
            "DescribeDeliveryStream",
            Bytes::from(json!({"DeliveryStreamName": "a"}).to_string()),
        )
        .await?;
        let version = described["DeliveryStreamDescription"]["VersionId"].clone();
        size = size % 4 + 1;
        let update = json!({
            "DeliveryStreamName": "a",
            "CurrentDeliveryStreamVersionId": version,
            "DestinationId": crate::registry::DESTINATION_ID,
            "ExtendedS3DestinationUpdate": {"BufferingHints": {"SizeInMBs": size, "IntervalInSeconds": 5}},
        });
        let started = Instant::now();
        firehose(
            &client,
            &url,
            "UpdateDestination",
            Bytes::from(update.to_string()),
        )
        .await?;
        took.push(started.elapsed().as_secs_f64());
    }
    Ok(took)
}

fn run_inner(args: BenchControlArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir_in(".").context("temp dir")?;
    let (mut moto, kms_url) = match &args.kms_endpoint {
        Some(url) => (None, url.clone()),
        None => {
            let (child, url) = start_moto()?;
            (Some(child), url)
        }
    };
    let result = (|| {
        let kms = ServiceEndpoint {
            url: kms_url.clone(),
            region: "us-east-1".into(),
            credentials: crate::credentials::Credentials::fixed(crate::credentials::Keys {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
                source: "bench control".into(),
            }),
        };
        let started = Instant::now();
        let key = loop {
            match rt.block_on(aws_client::call(
                &kms,
                "kms",
                "TrentService.CreateKey",
                &json!({}),
            )) {
                Ok(v) => break v["KeyMetadata"]["Arn"].as_str().unwrap_or("").to_string(),
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    bail!("the key service at {kms_url} does not answer: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let proxy = rt.block_on(delaying_proxy(
            kms_url.clone(),
            Duration::from_millis(args.delay_ms),
        ))?;
        let config = dir.path().join("hosepipe.toml");
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
object_store = "local"
[encryption]
provider = "aws-kms"
kms_endpoint = "{proxy}"
[streams.a.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
prefix = "a/"
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 5 }}
encryption_configuration = {{ kms_encryption_config = {{ aws_kms_key_arn = "{key}" }} }}
[streams.b.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
prefix = "b/"
buffering_hints = {{ size_in_mbs = 8, interval_in_seconds = 1 }}
"#
            ),
        )?;
        let env = [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ];
        let (daemon, _) = Daemon::start(
            &rt,
            &config,
            &dir.path().join("data"),
            &dir.path().join("daemon.log"),
            &env,
        )?;
        let pid = daemon.child.id();
        let rss = RssSampler::start(pid);
        let url = format!("{}/", daemon.url);
        let records: Vec<Value> = (0..args.batch)
            .map(|i| {
                let mut line = format!("{{\"n\":{i},\"pad\":\"");
                line.extend(std::iter::repeat_n('x', 1024 - line.len() - 3));
                line.push_str("\"}\n");
                json!({"Data": base64::engine::general_purpose::STANDARD.encode(line)})
            })
            .collect();
        let body = Bytes::from(json!({"DeliveryStreamName": "b", "Records": records}).to_string());
        println!(
            "hosepipe bench control: {} connections x {}-record puts to stream b, {} s per phase; stream a's key service (moto KMS) behind a proxy holding each connection {} ms",
            args.connections, args.batch, args.seconds, args.delay_ms
        );
        let quiet = rt.block_on(put_latencies(
            &url,
            body.clone(),
            args.connections,
            args.seconds,
        ))?;
        let stop = Arc::new(AtomicBool::new(false));
        let updates = rt.spawn(update_loop(url.clone(), stop.clone()));
        let busy = rt.block_on(put_latencies(&url, body, args.connections, args.seconds))?;
        stop.store(true, Ordering::Relaxed);
        let took = rt.block_on(updates)??;
        let peak = rss.finish(pid);
        let status = daemon.stop()?;
        if !status.success() {
            bail!("the daemon exited with {status}");
        }
        let line = |what: &str, l: &[f64]| {
            println!(
                "  {what:<34} {:>6} puts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.len(),
                percentile(l, 0.5) * 1e3,
                percentile(l, 0.99) * 1e3,
                l.last().copied().unwrap_or(f64::NAN) * 1e3
            );
        };
        line("b, no control operation", &quiet);
        line("b, while a's updates wait on KMS", &busy);
        let mean = took.iter().sum::<f64>() / took.len().max(1) as f64;
        println!(
            "  a's UpdateDestination              {} completed, {:.2} s each on average (the key service's delay)",
            took.len(),
            mean
        );
        println!(
            "  b's p99 during updates / quiet     {:.2}x",
            percentile(&busy, 0.99) / percentile(&quiet, 0.99)
        );
        println!("  daemon peak RSS                    {peak:.0} MiB");
        Ok(())
    })();
    if let Some(m) = moto.as_mut() {
        let _ = m.kill();
        let _ = m.wait();
    }
    result
}
