//! `hosepipe bench opensearch`: records/s into an OpenSearch-API server through hosepipe's bulk
//! path (items, ids, gzip, answer parsing) against the same bulk bodies, built beforehand and
//! posted by a bare HTTP client, in the same run.

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;

use crate::buffer::Record;
use crate::config::opensearch::OpenSearchSpec;
use crate::deliver::opensearch::deliver;
use crate::encode::opensearch::{bulk_body, prepare};
use hosepipe_sinks::opensearch::{BulkClient, BulkSettings};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOpenSearchArgs {
    /// The cluster (e.g. osmem-server started as in BENCHMARKS.md).
    #[arg(long)]
    pub endpoint: String,
    /// Records per measurement.
    #[arg(long, default_value_t = 50_000)]
    pub records: usize,
    /// Bytes per record (a JSON object, padded).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per `_bulk` request (a buffer flush): 5 MiB of 1 KiB records by default.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
}

fn spec(endpoint: &str, index: &str) -> Result<OpenSearchSpec, String> {
    let input: crate::config::stream::CreateDeliveryStreamInput =
        serde_json::from_value(serde_json::json!({
            "AmazonopensearchserviceDestinationConfiguration": {
                "ClusterEndpoint": endpoint, "IndexName": index,
                "IndexRotationPeriod": "NoRotation",
                "S3Configuration": {"BucketARN": "arn:aws:s3:::bench"},
            }
        }))
        .map_err(|e| e.to_string())?;
    match crate::config::stream::validate("bench", &input)
        .map_err(|e| format!("{e:?}"))?
        .destination
    {
        crate::config::stream::DestinationSpec::OpenSearch(os) => Ok(*os),
        _ => Err("not an OpenSearch spec".into()),
    }
}

/// `n` JSON records of about `size` bytes.
pub(crate) fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let head = format!("{{\"n\":{i},\"host\":\"web-{}\",\"pad\":\"", i % 50);
            let mut data = head.into_bytes();
            data.resize(size.saturating_sub(2).max(data.len()), b'x');
            data.extend_from_slice(b"\"}");
            Record {
                data: Bytes::from(data),
                arrival_ms: crate::pipeline::now_ms(),
                seq: i as u64,
                part: 0,
                partition: None,
                owed: Default::default(),
            }
        })
        .collect()
}

pub fn run(args: BenchOpenSearchArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let http = reqwest::Client::new();
        let stamp = crate::pipeline::now_ms();
        let recs = records(args.records, args.record_bytes);
        let mib = (args.records * args.record_bytes) as f64 / 1048576.0;
        println!(
            "{} records of {} bytes ({mib:.1} MiB), {} per _bulk request, into {}",
            args.records, args.record_bytes, args.batch, args.endpoint
        );

        // Baseline: the same bodies, built and gzipped beforehand, posted one after another.
        let bare_spec = spec(&args.endpoint, &format!("bench-bare-{stamp}"))?;
        let bodies: Vec<Vec<u8>> = recs
            .chunks(args.batch)
            .map(|chunk| {
                let (docs, _) = prepare(&bare_spec, copies(chunk), "bench");
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&bulk_body(docs.iter(), None))
                    .expect("gzip into memory");
                gz.finish().expect("gzip into memory")
            })
            .collect();
        let started = Instant::now();
        for body in bodies {
            let r = http
                .post(format!("{}/_bulk", args.endpoint))
                .header("Content-Type", "application/x-ndjson")
                .header("Content-Encoding", "gzip")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("_bulk answered {}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())?;
        }
        let bare = args.records as f64 / started.elapsed().as_secs_f64();

        // hosepipe's path: items, ids, body, gzip, send, every item read.
        let ours = spec(&args.endpoint, &format!("bench-hosepipe-{stamp}"))?;
        let client = BulkClient::new(BulkSettings::default()).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut indexed = 0;
        for chunk in recs.chunks(args.batch) {
            let (docs, failed) = prepare(&ours, copies(chunk), "bench");
            let out = deliver(&client, &ours, docs, |_| {}).await;
            if !failed.is_empty() || !out.failed.is_empty() {
                return Err(format!("{} documents failed", out.failed.len() + failed.len()));
            }
            indexed += out.indexed.len();
        }
        let stage = indexed as f64 / started.elapsed().as_secs_f64();
        println!(
            "\n  baseline: bare HTTP client, prebuilt gzip bodies  {bare:>10.0} records/s ({:.1} MiB/s)",
            bare * args.record_bytes as f64 / 1048576.0
        );
        println!(
            "  hosepipe bulk path (build + gzip + send + parse)  {stage:>10.0} records/s ({:.1} MiB/s)  = {:.2}x baseline",
            stage * args.record_bytes as f64 / 1048576.0,
            stage / bare
        );
        Ok(())
    })
}

/// Fresh records with the data and positions of `records`.
fn copies(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            seq: r.seq,
            ..Record::new(r.data.clone(), r.arrival_ms)
        })
        .collect()
}
