//! `hosepipe bench http-endpoint`: records/s delivered to an HTTP endpoint through hosepipe's
//! path (request body, optional gzip, post, answer check) against a bare HTTP client posting the
//! same bodies, built beforehand (gzipped per post with `--gzip`, as hosepipe does), to the same
//! receiver, in one run; bare gzip of those bodies on one core;
//! and the receiver's ingest: Firehose deliveries posted to a daemon's `POST
//! /http-endpoint/<stream>` until they are in its spool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;

use crate::buffer::Record;
use crate::config::{Config, Overrides, RawConfig};
use crate::deliver::Sending;
use crate::deliver::http_endpoint::Endpoints;
use crate::encode::http_endpoint::body;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchHttpEndpointArgs {
    /// Records per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// Records per request (Firehose sends at most 10,000).
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Requests in flight (the deliver stage runs 4 per stream).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Gzip the bodies (`ContentEncoding` `GZIP`).
    #[arg(long)]
    pub gzip: bool,
    /// How long the receiver's ingest is measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// A receiver that reads each body and answers 200 naming the request (a well-behaved
/// endpoint that does no work of its own, so both clients are measured, not it).
async fn start_sink() -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|headers: HeaderMap, body: Bytes| async move {
            let id = headers
                .get("x-amz-firehose-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            std::hint::black_box(body.len());
            (
                [("content-type", "application/json")],
                serde_json::json!({"requestId": id, "timestamp": 0}).to_string(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

fn spec(url: &str, gzip: bool) -> Result<crate::config::http_endpoint::HttpEndpointSpec, String> {
    let input: crate::config::stream::CreateDeliveryStreamInput =
        serde_json::from_value(serde_json::json!({
            "HttpEndpointDestinationConfiguration": {
                "EndpointConfiguration": {"Url": url, "AccessKey": "bench"},
                "RequestConfiguration": {"ContentEncoding": if gzip { "GZIP" } else { "NONE" }},
                "S3Configuration": {"BucketARN": "arn:aws:s3:::bench"},
            }
        }))
        .map_err(|e| e.to_string())?;
    match crate::config::stream::validate("bench", &input)
        .map_err(|e| format!("{e:?}"))?
        .destination
    {
        crate::config::stream::DestinationSpec::HttpEndpoint(s) => Ok(*s),
        _ => Err("not an HTTP endpoint spec".into()),
    }
}

/// Runs `jobs` with `concurrency` at a time; records per second over all of them.
async fn timed<F, Fut>(jobs: usize, concurrency: usize, records: usize, job: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, job) = (next.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= jobs {
                    break;
                }
                job(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("bench task");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

pub fn run(args: BenchHttpEndpointArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run_async(args))
}

async fn run_async(args: BenchHttpEndpointArgs) -> Result<(), String> {
    let (url, _sink) = start_sink().await?;
    let spec = Arc::new(spec(&url, args.gzip)?);
    let recs = crate::bench::opensearch::records(args.records, args.record_bytes);
    // Records are not `Clone` (they owe memory in a daemon): each job makes its own.
    let chunks: Arc<Vec<Vec<Bytes>>> = Arc::new(
        recs.chunks(args.batch)
            .map(|c| c.iter().map(|r| r.data.clone()).collect())
            .collect(),
    );
    let make =
        |c: &[Bytes]| -> Vec<Record> { c.iter().map(|d| Record::new(d.clone(), 0)).collect() };
    let data_mb = (args.records * args.record_bytes) as f64 / 1e6;
    println!(
        "{} records of {} bytes ({data_mb:.0} MB), {} per request, {} in flight, {}",
        args.records,
        args.record_bytes,
        args.batch,
        args.concurrency,
        if args.gzip { "gzip" } else { "no compression" }
    );

    // Bare: the same bodies, built (and gzipped) beforehand, posted by a plain client.
    let bodies: Vec<Bytes> = chunks
        .iter()
        .map(|c| body("00000000-0000-0000-0000-000000000000", 0, &make(c)))
        .map(Bytes::from)
        .collect();
    let gzip_started = Instant::now();
    for b in &bodies {
        std::hint::black_box(crate::compress::gzip(b).expect("gzip"));
    }
    let gzip_mbs = bodies.iter().map(Bytes::len).sum::<usize>() as f64
        / 1e6
        / gzip_started.elapsed().as_secs_f64();
    let bodies = Arc::new(bodies);
    // Where hosepipe's time goes, on one core: building the bodies (base64, JSON), then gzip.
    let started = Instant::now();
    let built: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| body(&uuid::Uuid::new_v4().to_string(), 1, &make(c)))
        .collect();
    let build_rate = args.records as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for b in &built {
        std::hint::black_box(crate::compress::gzip(b).expect("gzip"));
    }
    let built_gzip_rate = args.records as f64 / started.elapsed().as_secs_f64();
    drop(built);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| e.to_string())?;
    let (bare_url, gzip) = (url.clone(), args.gzip);
    let bare = timed(chunks.len(), args.concurrency, args.records, move |i| {
        let (client, url, bodies) = (client.clone(), bare_url.clone(), bodies.clone());
        async move {
            let mut req = client
                .post(&url)
                .header("Content-Type", "application/json")
                .header(
                    "X-Amz-Firehose-Request-Id",
                    "00000000-0000-0000-0000-000000000000",
                );
            let mut body = bodies[i].clone();
            if gzip {
                req = req.header("Content-Encoding", "gzip");
                body = crate::compress::gzip(&body).expect("gzip").into();
            }
            let resp = req.body(body).send().await.expect("bare post");
            assert!(resp.status().is_success());
            resp.bytes().await.expect("bare answer");
        }
    })
    .await;

    // hosepipe: the deliver stage's call per batch.
    let secrets =
        Arc::new(crate::secrets::Secrets::new(Default::default()).map_err(|e| e.to_string())?);
    let endpoints = Arc::new(Endpoints {
        client: hosepipe_sinks::http_endpoint::EndpointClient::new(None)
            .map_err(|e| e.to_string())?,
        secrets,
        timeout: Duration::from_secs(180),
        arn_prefix: "arn:aws:firehose:us-east-1:000000000000:deliverystream/".into(),
    });
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let failed_attempts = Arc::new(AtomicU64::new(0));
    let ours = timed(chunks.len(), args.concurrency, args.records, {
        let (chunks, metrics, failed_attempts) =
            (chunks.clone(), metrics.clone(), failed_attempts.clone());
        move |i| {
            let (endpoints, spec, chunks, metrics, failed_attempts) = (
                endpoints.clone(),
                spec.clone(),
                chunks.clone(),
                metrics.clone(),
                failed_attempts.clone(),
            );
            async move {
                let seen = Sending {
                    stream: "bench",
                    batch: i as u64,
                    id_base: "bench",
                    channel: "bench",
                    metrics: &metrics,
                    failed_attempts: &failed_attempts,
                    log: None,
                };
                let out = endpoints
                    .deliver_batch(&spec, make(&chunks[i]), &seen)
                    .await;
                assert!(out.failed.is_empty(), "the sink refused a batch");
            }
        }
    })
    .await;
    if failed_attempts.load(Ordering::Relaxed) > 0 {
        return Err("failed attempts during the benchmark".into());
    }
    println!(
        "\n  baseline: bare HTTP client, prebuilt bodies{}  {bare:>10.0} records/s",
        if args.gzip { " gzipped per post" } else { "" }
    );
    if args.gzip {
        println!("  baseline: bare gzip of the bodies (one core)       {gzip_mbs:>10.0} MB/s");
    }
    println!(
        "  hosepipe HTTP endpoint path (body{}, post, check)  {ours:>10.0} records/s  = {:.2}x baseline",
        if args.gzip { " + gzip" } else { "" },
        ours / bare
    );

    println!(
        "    of which, on one core: bodies built {build_rate:.0} records/s; those gzipped {built_gzip_rate:.0} records/s"
    );
    let ingest = receiver_ingest(&args).await?;
    println!("  receiver: deliveries into a stream's spool          {ingest:>10.0} records/s");
    println!("  peak RSS {:.0} MiB", crate::bench::peak_rss_mib());
    Ok(())
}

/// Records per second a daemon's receiver takes into a stream's spool (fsync per request) from
/// `concurrency` senders posting Firehose deliveries for `seconds`.
async fn receiver_ingest(args: &BenchHttpEndpointArgs) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = r#"listen = "127.0.0.1:0"
[receiver]
access_keys = ["bench"]
[streams.bench.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bench"
buffering_hints = { size_in_mbs = 64, interval_in_seconds = 60 }
"#;
    let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let overrides = Overrides {
        listen: None,
        data_dir: Some(dir.path().to_path_buf()),
    };
    let config = Config::from_raw(raw, &overrides, &|_| None).map_err(|e| e.join("\n"))?;
    let server = crate::server::Server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("http://{}/http-endpoint/bench", server.addr);
    let metrics = server.metrics.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let recs = crate::bench::opensearch::records(args.batch, args.record_bytes);
    let request_id = "11111111-1111-1111-1111-111111111111";
    let mut delivery = body(request_id, 0, &recs);
    if args.gzip {
        delivery = crate::compress::gzip(&delivery).map_err(|e| e.to_string())?;
    }
    let delivery = Bytes::from(delivery);
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let taken = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, delivery, taken) =
            (client.clone(), url.clone(), delivery.clone(), taken.clone());
        let (gzip, n) = (args.gzip, args.batch as u64);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut req = client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("X-Amz-Firehose-Protocol-Version", "1.0")
                    .header("X-Amz-Firehose-Request-Id", request_id)
                    .header("X-Amz-Firehose-Access-Key", "bench");
                if gzip {
                    req = req.header("Content-Encoding", "gzip");
                }
                match req.body(delivery.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        taken.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let rate = taken.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let incoming = metrics
        .incoming_records
        .get_or_create(&crate::metrics::Metrics::stream("bench"))
        .get();
    if incoming != taken.load(Ordering::Relaxed) {
        return Err(format!(
            "the daemon counted {incoming} records in, the senders {} answered 200",
            taken.load(Ordering::Relaxed)
        ));
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    Ok(rate)
}
