//! `hosepipe bench partition`: what dynamic partitioning costs. The same JSON records go through
//! the destination side of the pipeline (buffer → GZIP object bodies) once as one partition and
//! once spread over N active partitions with keys from a `MetadataExtraction` jq query; a bare
//! `serde_json` parse of the same bytes is the baseline, measured in the same run.

use std::time::Duration;

use bytes::Bytes;

use crate::buffer::{Batch, FlushReason, Limits, Partitioned, Record};
use crate::compress::{CompressionFormat, compress};
use crate::partition::jq::Query;
use crate::partition::{PartitionKeys, Partitioner};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchPartitionArgs {
    /// Records per run.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// Distinct partitions the records spread over (all active at once).
    #[arg(long, default_value_t = 100)]
    pub partitions: usize,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// The `MetadataExtractionQuery`; it must produce `customer_id` and `year`.
    #[arg(long, default_value = QUERY)]
    pub query: String,
}

/// The query a Firehose user would write for `customer_id=…/year=…/`.
const QUERY: &str = r#"{customer_id: .customer_id, year: (.ts | strftime("%Y"))}"#;

fn record(i: usize, partitions: usize) -> Vec<u8> {
    serde_json::json!({
        "customer_id": format!("c{:04}", i % partitions),
        "event_id": format!("{i:016x}"),
        "ts": 1_763_800_000 + i as i64,
        "page": format!("/products/{}/details?ref=home", i % 5000),
        "duration_ms": (i * 37) % 60_000,
        "tags": ["shoes", "sale"],
    })
    .to_string()
    .into_bytes()
}

/// Buffers `records` (flushing everything at the end, as the interval would) and compresses
/// each batch into an object body. Returns how many objects it made.
fn buffer_and_encode(records: Vec<Record>) -> usize {
    let limits = Limits {
        size_bytes: 128 * 1024 * 1024,
        interval: Duration::from_secs(900),
    };
    let mut buffer = Partitioned::new(limits);
    let now = tokio::time::Instant::now();
    let mut batches: Vec<Batch> = Vec::new();
    for r in records {
        batches.extend(buffer.push(r, now, 0));
    }
    batches.extend(buffer.flush_all(FlushReason::Interval));
    for b in &batches {
        let body = compress(
            CompressionFormat::Gzip,
            b.records.iter().map(|r| r.data.as_ref()),
            b.bytes as usize,
            "bench",
        )
        .expect("gzip into memory");
        std::hint::black_box(body);
    }
    batches.len()
}

pub fn run(args: BenchPartitionArgs) -> Result<(), String> {
    let raw: Vec<Bytes> = (0..args.records)
        .map(|i| Bytes::from(record(i, args.partitions.max(1))))
        .collect();
    let total: usize = raw.iter().map(Bytes::len).sum();
    let query = Query::compile(&args.query)?;
    println!(
        "{} records of ~{} B over {} partitions, query {}, {:.1} s per measurement",
        raw.len(),
        total / raw.len().max(1),
        args.partitions,
        args.query,
        args.seconds
    );
    let as_records = || -> Vec<Record> {
        raw.iter()
            .enumerate()
            .map(|(i, d)| Record {
                data: d.clone(),
                arrival_ms: i as i64,
                seq: i as u64,
                part: 0,
                partition: None,
                owed: Default::default(),
            })
            .collect()
    };
    let parse = crate::bench::per_second(args.seconds, || {
        for r in &raw {
            std::hint::black_box(serde_json::from_slice::<serde_json::Value>(r).expect("JSON"));
        }
        total
    });
    let extract = crate::bench::per_second(args.seconds, || {
        for r in &raw {
            std::hint::black_box(query.extract(r).expect("keys"));
        }
        total
    });
    let mut objects = 0;
    let single = crate::bench::per_second(args.seconds, || {
        objects = buffer_and_encode(as_records());
        total
    });
    let single_objects = objects;
    let keys = (
        vec!["customer_id".to_string(), "year".to_string()],
        Vec::new(),
    );
    let partitioned = crate::bench::per_second(args.seconds, || {
        let mut partitioner = Partitioner::new(keys.clone(), |_: &PartitionKeys| Ok(()));
        let mut records = as_records();
        for r in &mut records {
            let q = query.extract(&r.data).expect("keys");
            r.partition = Some(partitioner.assign(&q, &[]).expect("partition"));
        }
        objects = buffer_and_encode(records);
        total
    });
    let mib = |r: f64| r / 1048576.0;
    println!(
        "\n  baseline: serde_json parse to Value         {:>8.1} MiB/s",
        mib(parse)
    );
    println!(
        "  jq MetadataExtraction query alone           {:>8.1} MiB/s   {:.2}× the parse",
        mib(extract),
        extract / parse
    );
    println!(
        "  buffer + GZIP, one partition                {:>8.1} MiB/s   ({single_objects} object)",
        mib(single)
    );
    println!(
        "  jq + partition + buffer + GZIP, {:>3} parts   {:>8.1} MiB/s   ({objects} objects)   {:.2}× one partition",
        args.partitions,
        mib(partitioned),
        partitioned / single
    );
    let per_record_ns = |rate: f64| 1e9 * (total as f64 / raw.len() as f64) / rate;
    println!(
        "\n  partitioning adds {:.0} ns per record ({:.0} ns of it the jq query)",
        per_record_ns(partitioned) - per_record_ns(single),
        per_record_ns(extract)
    );
    Ok(())
}
