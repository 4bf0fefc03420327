//! `hosepipe bench iceberg`: rows/s committed into an Iceberg table (a SQLite catalog, the
//! warehouse on local disk) through hosepipe's delivery path, against the plain Parquet path
//! of the same records in the same run (the typed converter into a Parquet file, written to
//! the same disk), and each commit's latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iceberg::spec::{
    ListType, MapType, NestedField, PartitionSpec, PrimitiveType, Schema, StructType, Transform,
    Type,
};
use iceberg::{NamespaceIdent, TableCreation, TableIdent};

use crate::buffer::Record;
use crate::config::{CatalogKind, IcebergCatalog, IcebergConfig};
use crate::deliver::Sending;
use crate::deliver::iceberg::Lakes;
use crate::encode::parquet::{Converter, Deserializer, ParquetCompression, ParquetOptions};
use crate::schema::{TableRef, TableSchema};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchIcebergArgs {
    /// Records in all.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Records per flushed batch (one commit each).
    #[arg(long, default_value_t = 20_000)]
    pub batch: usize,
    /// Partition the table by a column with 8 values (identity).
    #[arg(long)]
    pub partitioned: bool,
    /// Rounds, each the plain path then the Iceberg path; the medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// The table: the same columns as `bench convert`'s, in Iceberg types.
fn schema() -> Schema {
    let p = |t| Type::Primitive(t);
    let fields = vec![
        NestedField::optional(1, "event_id", p(PrimitiveType::String)),
        NestedField::optional(2, "user_id", p(PrimitiveType::Long)),
        NestedField::optional(3, "session", p(PrimitiveType::String)),
        NestedField::optional(4, "page", p(PrimitiveType::String)),
        NestedField::optional(5, "region", p(PrimitiveType::String)),
        NestedField::optional(6, "duration_ms", p(PrimitiveType::Int)),
        NestedField::optional(7, "score", p(PrimitiveType::Double)),
        NestedField::optional(8, "mobile", p(PrimitiveType::Boolean)),
        NestedField::optional(9, "ts", p(PrimitiveType::Timestamptz)),
        NestedField::optional(
            10,
            "tags",
            Type::List(ListType::new(
                NestedField::list_element(11, p(PrimitiveType::String), false).into(),
            )),
        ),
        NestedField::optional(
            12,
            "attrs",
            Type::Map(MapType::new(
                NestedField::map_key_element(13, p(PrimitiveType::String)).into(),
                NestedField::map_value_element(14, p(PrimitiveType::String), false).into(),
            )),
        ),
        NestedField::optional(
            15,
            "geo",
            Type::Struct(StructType::new(vec![
                NestedField::optional(16, "country", p(PrimitiveType::String)).into(),
                NestedField::optional(17, "lat", p(PrimitiveType::Double)).into(),
            ])),
        ),
    ];
    Schema::builder()
        .with_fields(fields.into_iter().map(Arc::new).collect::<Vec<_>>())
        .build()
        .expect("the benchmark's schema is valid")
}

/// The same columns in Hive syntax, for the plain Parquet path.
const COLUMNS: &[(&str, &str)] = &[
    ("event_id", "string"),
    ("user_id", "bigint"),
    ("session", "string"),
    ("page", "string"),
    ("region", "string"),
    ("duration_ms", "int"),
    ("score", "double"),
    ("mobile", "boolean"),
    ("ts", "timestamp"),
    ("tags", "array<string>"),
    ("attrs", "map<string,string>"),
    ("geo", "struct<country:string,lat:double>"),
];

fn record(i: usize) -> Bytes {
    serde_json::json!({
        "event_id": format!("{i:016x}-{:08x}", i.wrapping_mul(2654435761)),
        "user_id": i % 100_000,
        "session": format!("s-{}", i / 37),
        "page": format!("/products/{}/details?ref=home", i % 5000),
        "region": format!("region-{}", i % 8),
        "duration_ms": (i * 37) % 60_000,
        "score": (i % 1000) as f64 / 7.0,
        "mobile": i.is_multiple_of(3),
        "ts": format!("2026-11-30T10:{:02}:{:02}.{:03}Z", (i / 60) % 60, i % 60, i % 1000),
        "tags": ["shoes", "sale", format!("t{}", i % 50)],
        "attrs": {"ab": "variant-b", "lang": "en-GB"},
        "geo": {"country": "GB", "lat": 51.5072},
    })
    .to_string()
    .into()
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub fn run(args: BenchIcebergArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(measure(args))
}

async fn measure(args: BenchIcebergArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data: Vec<Bytes> = (0..args.records).map(record).collect();
    let total: usize = data.iter().map(Bytes::len).sum();
    println!(
        "{} records of ~{} B, {} per batch ({} columns incl. timestamp, list, map, struct){}",
        data.len(),
        total / data.len().max(1),
        args.batch,
        COLUMNS.len(),
        if args.partitioned {
            ", table partitioned by region (8 values)"
        } else {
            ""
        }
    );

    // hosepipe's Iceberg path: the table created first, then one commit per batch.
    let catalogs = IcebergConfig {
        default_catalog: "default".into(),
        catalogs: [(
            "default".to_string(),
            IcebergCatalog {
                kind: CatalogKind::Sql {
                    uri: format!("sqlite://{}", dir.path().join("catalog.db").display()),
                },
                warehouse: None,
            },
        )]
        .into(),
    };
    let lakes = Lakes::local_recording(catalogs, &dir.path().join("buckets"));
    let input: crate::config::stream::CreateDeliveryStreamInput =
        serde_json::from_value(serde_json::json!({"IcebergDestinationConfiguration": {
            "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog",
                                     "WarehouseLocation": "s3://lake/warehouse"},
            "DestinationTableConfigurationList": [
                {"DestinationDatabaseName": "bench", "DestinationTableName": "clicks"}],
            "S3Configuration": {"BucketARN": "arn:aws:s3:::lake"},
        }}))
        .map_err(|e| e.to_string())?;
    let spec = match crate::config::stream::validate("bench", &input)
        .map_err(|e| format!("{e:?}"))?
        .destination
    {
        crate::config::stream::DestinationSpec::Iceberg(spec) => spec,
        _ => unreachable!("an Iceberg destination"),
    };
    let catalog = lakes.catalog_of(&spec).await?;
    let namespace = NamespaceIdent::new("bench".into());
    catalog
        .create_namespace(&namespace, HashMap::new())
        .await
        .map_err(|e| e.to_string())?;
    let schema = schema();
    let mut partition = PartitionSpec::builder(schema.clone());
    if args.partitioned {
        partition = partition
            .add_partition_field("region", "region", Transform::Identity)
            .map_err(|e| e.to_string())?;
    }
    let partition = partition.build().map_err(|e| e.to_string())?;
    catalog
        .create_table(
            &namespace,
            TableCreation::builder()
                .name("clicks".into())
                .schema(schema)
                .partition_spec(partition.into_unbound())
                .build(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let metrics = crate::metrics::Metrics::default();
    let failed_attempts = std::sync::atomic::AtomicU64::new(0);
    let seen = Sending {
        stream: "bench",
        batch: 0,
        id_base: "bench",
        channel: "bench",
        metrics: &metrics,
        failed_attempts: &failed_attempts,
        log: None,
    };
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).map_err(|e| e.to_string())?;
    let (mut plain_rates, mut iceberg_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        plain_rates.push(plain_path(&data, args.batch, &plain_dir).await?);
        let started = Instant::now();
        let mut committed = 0;
        for (n, chunk) in data.chunks(args.batch).enumerate() {
            let records = chunk
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut r = Record::new(d.clone(), 0);
                    r.seq = (round * data.len() + n * args.batch + i) as u64;
                    r
                })
                .collect();
            let out = lakes.deliver_batch(&spec, records, &seen).await;
            if let Some(f) = out.failed.first() {
                return Err(format!("{}: {}", f.reason.code, f.reason.message));
            }
            committed += out.delivered.len();
        }
        iceberg_rates.push(committed as f64 / started.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, iceberg) = (median(plain_rates.clone()), median(iceberg_rates.clone()));
    let rates = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let table = catalog
        .load_table(&TableIdent::from_strs(["bench", "clicks"]).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let snapshots = table.metadata().snapshots().len();
    let mut latencies = lakes.take_commit_latencies();
    latencies.sort();
    println!(
        "\n  baseline: JSON → Parquet (ZSTD) file per batch   {:>10.0} rows/s (median; rounds: {})",
        plain,
        rates(&plain_rates)
    );
    println!(
        "  hosepipe: JSON → Iceberg, one commit per batch     {:>10.0} rows/s   {:.2}× the plain path (median; rounds: {})",
        iceberg,
        iceberg / plain,
        rates(&iceberg_rates)
    );
    println!(
        "  {} commits ({} snapshots): commit latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        snapshots,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );
    println!("  peak RSS {:.0} MiB", crate::bench::peak_rss_mib());
    Ok(())
}

/// The plain Parquet path: each batch through the typed converter into a ZSTD Parquet file on
/// the same disk. Rows/s.
async fn plain_path(data: &[Bytes], batch: usize, dir: &std::path::Path) -> Result<f64, String> {
    let converter = Converter::new(
        TableSchema::from_columns(TableRef::default(), COLUMNS.iter().copied())
            .map_err(|e| e.to_string())?,
        Deserializer::default(),
        ParquetOptions {
            compression: ParquetCompression::Zstd,
            ..ParquetOptions::default()
        },
    );
    let started = Instant::now();
    for (n, chunk) in data.chunks(batch).enumerate() {
        let out = converter
            .convert(chunk.iter().map(|d| d.as_ref()))
            .map_err(|e| e.to_string())?;
        if !out.failures.is_empty() {
            return Err(format!("plain conversion failed: {:?}", out.failures[0]));
        }
        let path = dir.join(format!("{n}.parquet"));
        tokio::fs::write(&path, out.parquet)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(data.len() as f64 / started.elapsed().as_secs_f64())
}
