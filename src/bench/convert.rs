//! `hosepipe bench convert`: JSON → Parquet conversion throughput against a bare `serde_json`
//! parse of the same bytes, measured in the same run.

use crate::encode::parquet::{Converter, Deserializer, ParquetCompression, ParquetOptions};
use crate::schema::{TableRef, TableSchema};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchConvertArgs {
    /// Records per converted batch (one Parquet file).
    #[arg(long, default_value_t = 20_000)]
    pub records: usize,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

const COLUMNS: &[(&str, &str)] = &[
    ("event_id", "string"),
    ("user_id", "bigint"),
    ("session", "string"),
    ("page", "string"),
    ("referrer", "string"),
    ("duration_ms", "int"),
    ("price", "decimal(10,2)"),
    ("score", "double"),
    ("mobile", "boolean"),
    ("ts", "timestamp"),
    ("tags", "array<string>"),
    ("attrs", "map<string,string>"),
    (
        "geo",
        "struct<country:string,city:string,lat:double,lon:double>",
    ),
];

fn record(i: usize) -> Vec<u8> {
    serde_json::json!({
        "event_id": format!("{i:016x}-{:08x}", i.wrapping_mul(2654435761)),
        "user_id": i % 100_000,
        "session": format!("s-{}", i / 37),
        "page": format!("/products/{}/details?ref=home&campaign=autumn-sale-{}", i % 5000, i % 17),
        "referrer": "https://www.example.com/search?q=running+shoes&page=2",
        "duration_ms": (i * 37) % 60_000,
        "price": format!("{}.{:02}", i % 1000, i % 100),
        "score": (i % 1000) as f64 / 7.0,
        "mobile": i.is_multiple_of(3),
        "ts": format!("2026-11-22T10:{:02}:{:02}.{:03}Z", (i / 60) % 60, i % 60, i % 1000),
        "tags": ["shoes", "sale", format!("t{}", i % 50)],
        "attrs": {"ab": "variant-b", "lang": "en-GB", "theme": "dark"},
        "geo": {"country": "GB", "city": "London", "lat": 51.5072, "lon": -0.1276},
    })
    .to_string()
    .into_bytes()
}

pub fn run(args: BenchConvertArgs) -> Result<(), String> {
    let schema = TableSchema::from_columns(
        TableRef {
            database: "bench".into(),
            table: "clicks".into(),
            ..Default::default()
        },
        COLUMNS.iter().copied(),
    )
    .map_err(|e| e.to_string())?;
    let records: Vec<Vec<u8>> = (0..args.records).map(record).collect();
    let total: usize = records.iter().map(Vec::len).sum();
    println!(
        "{} records of ~{} B ({} columns incl. decimal, timestamp, array, map, struct), {:.1} s per measurement",
        records.len(),
        total / records.len(),
        COLUMNS.len(),
        args.seconds
    );
    let parse = crate::bench::per_second(args.seconds, || {
        for r in &records {
            std::hint::black_box(
                serde_json::from_slice::<serde_json::Value>(r).expect("valid JSON"),
            );
        }
        total
    });
    println!(
        "\n  baseline: serde_json parse to Value   {:>8.1} MiB/s",
        parse / 1048576.0
    );
    for compression in [
        ParquetCompression::Snappy,
        ParquetCompression::Zstd,
        ParquetCompression::Gzip,
        ParquetCompression::Uncompressed,
    ] {
        let converter = Converter::new(
            schema.clone(),
            Deserializer::default(),
            ParquetOptions {
                compression,
                ..ParquetOptions::default()
            },
        );
        let mut size = 0;
        let rate = crate::bench::per_second(args.seconds, || {
            let out = converter
                .convert(records.iter().map(Vec::as_slice))
                .expect("conversion into memory");
            assert!(out.failures.is_empty(), "{:?}", out.failures.first());
            size = out.parquet.len();
            total
        });
        println!(
            "  JSON → Parquet {:<13}          {:>8.1} MiB/s   {:.2}× the parse   (file {:.1}% of the JSON)",
            format!("{compression:?}"),
            rate / 1048576.0,
            rate / parse,
            100.0 * size as f64 / total as f64
        );
    }
    println!("\n  floor: conversion >= 0.5× the bare parse");
    Ok(())
}
