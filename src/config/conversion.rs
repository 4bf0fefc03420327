//! `DataFormatConversionConfiguration`: validating it into a [`ConversionSpec`]. Pure: the
//! table's columns are resolved when the stream starts (local catalog or Glue).

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::FieldError;
use crate::encode::parquet::{Deserializer, ParquetCompression, ParquetOptions};
use crate::schema::TableRef;

/// A validated conversion: which table, how JSON is read, how Parquet is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionSpec {
    pub table: TableRef,
    pub deserializer: Deserializer,
    pub parquet: ParquetOptions,
}

/// Validates the block at `path`; `None` when absent or disabled.
pub fn validate(
    block: &Option<Value>,
    path: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<ConversionSpec> {
    let block = match block {
        None | Some(Value::Null) => return None,
        Some(v) => v,
    };
    if block.get("Enabled") == Some(&Value::Bool(false)) {
        return None;
    }
    let before = errors.len();
    let err = |errors: &mut Vec<FieldError>, rest: &[&str], message: String| {
        let p: Vec<&str> = path.iter().chain(rest).copied().collect();
        errors.push(FieldError::new(&p, message));
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(String::from);
    let schema = block
        .get("SchemaConfiguration")
        .cloned()
        .unwrap_or(Value::Null);
    let table = TableRef {
        catalog_id: text(&schema, "CatalogId"),
        database: text(&schema, "DatabaseName").unwrap_or_default(),
        table: text(&schema, "TableName").unwrap_or_default(),
        region: text(&schema, "Region"),
        version_id: text(&schema, "VersionId"),
    };
    for (key, value) in [
        ("database_name", &table.database),
        ("table_name", &table.table),
    ] {
        if value.is_empty() {
            err(errors, &["schema_configuration", key], "is required".into());
        }
    }
    let de = block
        .pointer("/InputFormatConfiguration/Deserializer")
        .cloned()
        .unwrap_or(Value::Null);
    let deserializer = match (de.get("OpenXJsonSerDe"), de.get("HiveJsonSerDe")) {
        (Some(_), Some(_)) => {
            err(
                errors,
                &["input_format_configuration", "deserializer"],
                "give one of OpenXJsonSerDe, HiveJsonSerDe".into(),
            );
            Deserializer::default()
        }
        (Some(o), None) => Deserializer::OpenX {
            case_insensitive: o
                .get("CaseInsensitive")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            dots_to_underscores: o
                .get("ConvertDotsInJsonKeysToUnderscores")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            column_to_key: o
                .get("ColumnToJsonKeyMappings")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default(),
        },
        (None, Some(h)) => Deserializer::Hive {
            timestamp_formats: h
                .get("TimestampFormats")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        },
        (None, None) => Deserializer::default(),
    };
    let ser = block
        .pointer("/OutputFormatConfiguration/Serializer")
        .cloned()
        .unwrap_or(Value::Null);
    if ser.get("OrcSerDe").is_some() {
        err(
            errors,
            &["output_format_configuration", "serializer", "orc_ser_de"],
            "ORC output is not supported by this hosepipe version; use ParquetSerDe".into(),
        );
    }
    let p = ser.get("ParquetSerDe").cloned().unwrap_or(Value::Null);
    fn at(key: &str) -> [&str; 4] {
        [
            "output_format_configuration",
            "serializer",
            "parquet_ser_de",
            key,
        ]
    }
    let mut parquet = ParquetOptions::default();
    let int = |errors: &mut Vec<FieldError>, key: &str, min: u64, default: usize| -> usize {
        match p.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_u64() {
                Some(n) if n >= min => n as usize,
                _ => {
                    let snake = super::names::api_to_snake(key);
                    err(
                        errors,
                        &at(&snake),
                        format!("{v} is below the minimum of {min}"),
                    );
                    default
                }
            },
        }
    };
    parquet.block_size_bytes = int(errors, "BlockSizeBytes", 64 << 20, 256 << 20);
    parquet.page_size_bytes = int(errors, "PageSizeBytes", 64 << 10, 1 << 20);
    parquet.dictionary = p
        .get("EnableDictionaryCompression")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    parquet.compression = match p.get("Compression").and_then(Value::as_str) {
        None | Some("SNAPPY") => ParquetCompression::Snappy,
        Some("UNCOMPRESSED") => ParquetCompression::Uncompressed,
        Some("GZIP") => ParquetCompression::Gzip,
        Some("ZSTD") => ParquetCompression::Zstd,
        Some(other) => {
            err(
                errors,
                &at("compression"),
                format!("{other:?} is not one of UNCOMPRESSED, SNAPPY, GZIP, ZSTD"),
            );
            ParquetCompression::Snappy
        }
    };
    parquet.writer_v2 = match p.get("WriterVersion").and_then(Value::as_str) {
        None | Some("V1") => false,
        Some("V2") => true,
        Some(other) => {
            err(
                errors,
                &at("writer_version"),
                format!("{other:?} is not one of V1, V2"),
            );
            false
        }
    };
    if errors.len() > before {
        return None;
    }
    Some(ConversionSpec {
        table,
        deserializer,
        parquet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value) -> Result<Option<ConversionSpec>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let spec = validate(
            &Some(v),
            &[
                "extended_s3_destination_configuration",
                "data_format_conversion_configuration",
            ],
            &mut errors,
        );
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn a_firehose_conversion_block() {
        let spec = run(json!({
            "SchemaConfiguration": {"DatabaseName": "web", "TableName": "clicks", "VersionId": "LATEST"},
            "InputFormatConfiguration": {"Deserializer": {"HiveJsonSerDe": {"TimestampFormats": ["millis"]}}},
            "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "ZSTD", "WriterVersion": "V2", "PageSizeBytes": 131072}}},
        }))
        .unwrap()
        .unwrap();
        assert_eq!(spec.table.to_string(), "web.clicks");
        assert_eq!(
            spec.deserializer,
            Deserializer::Hive {
                timestamp_formats: vec!["millis".into()]
            }
        );
        assert_eq!(spec.parquet.compression, ParquetCompression::Zstd);
        assert!(spec.parquet.writer_v2);
        assert_eq!(spec.parquet.page_size_bytes, 131072);
        assert_eq!(run(json!({"Enabled": false})).unwrap(), None);
    }

    #[test]
    fn bad_blocks_name_the_field() {
        for (v, path) in [
            (
                json!({"SchemaConfiguration": {"TableName": "t"}}),
                "schema_configuration.database_name",
            ),
            (
                json!({"SchemaConfiguration": {"DatabaseName": "d", "TableName": "t"}, "OutputFormatConfiguration": {"Serializer": {"OrcSerDe": {}}}}),
                "output_format_configuration.serializer.orc_ser_de",
            ),
            (
                json!({"SchemaConfiguration": {"DatabaseName": "d", "TableName": "t"}, "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"Compression": "LZO"}}}}),
                "output_format_configuration.serializer.parquet_ser_de.compression",
            ),
            (
                json!({"SchemaConfiguration": {"DatabaseName": "d", "TableName": "t"}, "OutputFormatConfiguration": {"Serializer": {"ParquetSerDe": {"BlockSizeBytes": 1024}}}}),
                "output_format_configuration.serializer.parquet_ser_de.block_size_bytes",
            ),
        ] {
            let errs = run(v.clone()).unwrap_err();
            let want = format!(
                "extended_s3_destination_configuration.data_format_conversion_configuration.{path}"
            );
            assert!(
                errs.iter().any(|e| e.config_path() == want),
                "{v}: {errs:?}"
            );
        }
    }
}
