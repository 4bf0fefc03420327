use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimestampMillisecondType,
};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::schema::TableRef;

fn schema(columns: &[(&str, &str)]) -> TableSchema {
    TableSchema::from_columns(
        TableRef {
            database: "db".into(),
            table: "t".into(),
            ..Default::default()
        },
        columns.iter().copied(),
    )
    .unwrap()
}

fn read(parquet: Vec<u8>) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(parquet))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow_select_concat(&batches)
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "small test files read back as one batch");
    batches[0].clone()
}

const ALL: &[(&str, &str)] = &[
    ("s", "string"),
    ("vc", "varchar(3)"),
    ("ti", "tinyint"),
    ("si", "smallint"),
    ("i", "int"),
    ("bi", "bigint"),
    ("b", "boolean"),
    ("f", "float"),
    ("d", "double"),
    ("dec", "decimal(10,2)"),
    ("dt", "date"),
    ("ts", "timestamp"),
    ("bin", "binary"),
    ("arr", "array<int>"),
    ("m", "map<string,bigint>"),
    ("st", "struct<a:int,b:array<string>>"),
];

#[test]
fn every_type_round_trips_with_nulls() {
    let c = Converter::new(
        schema(ALL),
        Deserializer::default(),
        ParquetOptions::default(),
    );
    let full = r#"{"s":"héllo","vc":"abcdef","ti":-5,"si":300,"i":70000,"bi":9007199254740993,
        "b":true,"f":1.5,"d":2.25,"dec":"12345678.91","dt":"2026-11-22",
        "ts":"2026-11-22T10:00:00.250Z","bin":"AAEC","arr":[1,null,3],"m":{"x":1,"y":2},
        "st":{"a":7,"b":["p","q"]}}"#;
    let empty = "{}";
    let out = c.convert([full.as_bytes(), empty.as_bytes()]).unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.rows, 2);
    let batch = read(out.parquet);
    assert_eq!(batch.num_rows(), 2);
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    assert_eq!(col("s").as_string::<i32>().value(0), "héllo");
    assert_eq!(col("vc").as_string::<i32>().value(0), "abc");
    assert_eq!(col("ti").as_primitive::<Int8Type>().value(0), -5);
    assert_eq!(col("si").as_primitive::<Int16Type>().value(0), 300);
    assert_eq!(col("i").as_primitive::<Int32Type>().value(0), 70000);
    assert_eq!(
        col("bi").as_primitive::<Int64Type>().value(0),
        9007199254740993
    );
    assert!(col("b").as_boolean().value(0));
    assert_eq!(col("f").as_primitive::<Float32Type>().value(0), 1.5);
    assert_eq!(col("d").as_primitive::<Float64Type>().value(0), 2.25);
    assert_eq!(
        col("dec").as_primitive::<Decimal128Type>().value(0),
        1234567891
    );
    assert_eq!(col("dt").as_primitive::<Date32Type>().value(0), 20_779);
    assert_eq!(
        col("ts")
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_795_341_600_250
    );
    assert_eq!(col("bin").as_binary::<i32>().value(0), &[0, 1, 2]);
    let arr = col("arr");
    let list = arr.as_list::<i32>();
    assert_eq!(list.value(0).as_primitive::<Int32Type>().len(), 3);
    assert!(list.value(0).is_null(1));
    let m = col("m");
    assert_eq!(m.as_map().value(0).len(), 2);
    let st = col("st");
    let st = st.as_struct();
    assert_eq!(st.column(0).as_primitive::<Int32Type>().value(0), 7);
    for name in ALL.iter().map(|(n, _)| *n) {
        assert!(col(name).is_null(1), "{name} is null in the empty record");
    }
}

#[test]
fn records_that_do_not_fit_fail_alone_naming_the_column() {
    let c = Converter::new(
        schema(&[("id", "int"), ("tags", "array<int>")]),
        Deserializer::Hive {
            timestamp_formats: vec![],
        },
        ParquetOptions::default(),
    );
    let recs: Vec<&[u8]> = vec![
        br#"{"id":1}"#,
        br#"{"id":"2"}"#,
        b"not json",
        br#"[{"id":3}]"#,
        br#"{"id":4,"tags":[1,"x"]}"#,
        br#"{"id":5000000000}"#,
        br#"{"id":6,"tags":[6]}"#,
    ];
    let out = c.convert(recs).unwrap();
    assert_eq!(out.rows, 2);
    let reasons: BTreeMap<usize, String> = out.failures.into_iter().collect();
    assert_eq!(
        reasons.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(reasons[&1], "column id: \"2\" is not a valid int");
    assert!(reasons[&2].contains("not JSON"));
    assert!(reasons[&3].contains("JSON array"));
    assert_eq!(reasons[&4], "column tags: [1]: \"x\" is not a valid int");
    assert!(reasons[&5].contains("out of range"));
    let batch = read(out.parquet);
    assert_eq!(
        batch
            .column(0)
            .as_primitive::<Int32Type>()
            .values()
            .to_vec(),
        vec![1, 6]
    );
}

#[test]
fn openx_options_and_hive_timestamps() {
    let mut mapping = BTreeMap::new();
    mapping.insert("ts".to_string(), "timestamp".to_string());
    let c = Converter::new(
        schema(&[("user_id", "bigint"), ("ts", "timestamp"), ("n", "int")]),
        Deserializer::OpenX {
            case_insensitive: true,
            dots_to_underscores: true,
            column_to_key: mapping,
        },
        ParquetOptions::default(),
    );
    let out = c
        .convert([&br#"{"User.Id":7,"timestamp":1700000000,"N":"42"}"#[..]])
        .unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let b = read(out.parquet);
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 7);
    assert_eq!(
        b.column(1)
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_700_000_000_000
    );
    assert_eq!(b.column(2).as_primitive::<Int32Type>().value(0), 42);

    let hive = Converter::new(
        schema(&[("ts", "timestamp")]),
        Deserializer::Hive {
            timestamp_formats: vec!["millis".into(), "dd/MM/yyyy HH:mm:ss".into()],
        },
        ParquetOptions::default(),
    );
    let out = hive
        .convert([
            &br#"{"ts":"1700000000123"}"#[..],
            br#"{"ts":"22/11/2026 10:00:00"}"#,
            br#"{"ts":"soon"}"#,
        ])
        .unwrap();
    assert_eq!(out.failures.len(), 1);
    let b = read(out.parquet);
    let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.value(0), 1_700_000_000_123);
    assert_eq!(ts.value(1), 1_795_341_600_000);
}

#[test]
fn every_codec_and_writer_version_is_readable() {
    for compression in [
        ParquetCompression::Uncompressed,
        ParquetCompression::Snappy,
        ParquetCompression::Gzip,
        ParquetCompression::Zstd,
    ] {
        for writer_v2 in [false, true] {
            let c = Converter::new(
                schema(&[("id", "bigint"), ("name", "string")]),
                Deserializer::default(),
                ParquetOptions {
                    compression,
                    writer_v2,
                    page_size_bytes: 64 * 1024,
                    block_size_bytes: 64 * 1024,
                    dictionary: !writer_v2,
                },
            );
            let recs: Vec<Vec<u8>> = (0..20_000)
                .map(|i| format!(r#"{{"id":{i},"name":"name-{i:040}"}}"#).into_bytes())
                .collect();
            let out = c.convert(recs.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(out.rows, 20_000);
            let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out.parquet.clone()))
                .unwrap()
                .metadata()
                .clone();
            assert!(
                meta.num_row_groups() > 1,
                "{compression:?}: BlockSizeBytes closes row groups: {:?}",
                meta.row_groups()
                    .iter()
                    .map(|r| r.num_rows())
                    .collect::<Vec<_>>()
            );
            let rows: usize = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(out.parquet))
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum();
            assert_eq!(rows, 20_000, "{compression:?} v2={writer_v2}");
        }
    }
}

#[test]
fn decimals_keep_their_scale_and_refuse_overflow() {
    assert_eq!(decimal("1.5", 5, 2), Some(150));
    assert_eq!(decimal("-0.07", 5, 2), Some(-7));
    assert_eq!(decimal("123.456", 6, 2), None);
    assert_eq!(decimal("12345", 5, 2), None);
    assert_eq!(decimal("x", 5, 2), None);
    assert_eq!(
        joda_to_chrono("yyyy-MM-dd'T'HH:mm:ss.SSSZ"),
        "%Y-%m-%dT%H:%M:%S%.f%z"
    );
}
