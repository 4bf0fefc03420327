//! Record format conversion (`DataFormatConversionConfiguration`): JSON records → one Parquet
//! file, with the table's schema.
//!
//! Each record is first checked and coerced against the schema on its own (a record that does
//! not fit fails alone, with the column and the reason); the records that fit become Arrow
//! arrays, written by the `parquet` crate's `ArrowWriter`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int8Array, Int16Array, Int32Array, Int64Array, ListArray, MapArray, RecordBatch, StringArray,
    StructArray, TimestampMillisecondArray,
};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields};
use base64::Engine;
use chrono::{NaiveDate, NaiveDateTime};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use serde_json::{Map, Value};

use crate::schema::{Column, ColumnType, TableSchema};

/// How JSON is read (`InputFormatConfiguration.Deserializer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deserializer {
    /// `OpenXJsonSerDe`: lenient; keys matched case-insensitively by default, dots in keys
    /// optionally turned into underscores, columns mapped to other keys.
    OpenX {
        case_insensitive: bool,
        dots_to_underscores: bool,
        column_to_key: BTreeMap<String, String>,
    },
    /// `HiveJsonSerDe`: strict types; timestamps in the given Joda patterns, or `millis`.
    Hive { timestamp_formats: Vec<String> },
}

impl Default for Deserializer {
    fn default() -> Self {
        Deserializer::OpenX {
            case_insensitive: true,
            dots_to_underscores: false,
            column_to_key: BTreeMap::new(),
        }
    }
}

/// `ParquetSerDe`'s compression, plus ZSTD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
}

/// `ParquetSerDe`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetOptions {
    pub compression: ParquetCompression,
    /// `BlockSizeBytes`: a row group is closed once it holds about this much.
    pub block_size_bytes: usize,
    /// `PageSizeBytes`.
    pub page_size_bytes: usize,
    /// `EnableDictionaryCompression`.
    pub dictionary: bool,
    /// `WriterVersion` V2 (else V1).
    pub writer_v2: bool,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            block_size_bytes: 256 * 1024 * 1024,
            page_size_bytes: 1024 * 1024,
            dictionary: true,
            writer_v2: false,
        }
    }
}

/// A value checked against its column type.
#[derive(Debug, Clone, PartialEq)]
enum Typed<'a> {
    Null,
    /// Borrowed from the record when the JSON string has no escapes.
    Str(std::borrow::Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Float(f64),
    Decimal(i128),
    Date(i32),
    Millis(i64),
    Bytes(Vec<u8>),
    List(Vec<Typed<'a>>),
    Map(Vec<(Typed<'a>, Typed<'a>)>),
    Struct(Vec<Typed<'a>>),
}

/// The outcome of converting a batch.
#[derive(Debug)]
pub struct Converted {
    /// The Parquet file (empty when no record fitted).
    pub parquet: Vec<u8>,
    pub rows: usize,
    /// Records that did not fit: (index in the batch, reason).
    pub failures: Vec<(usize, String)>,
}

/// Rows parsed and turned into Arrow arrays at a time.
const ROWS_PER_SLICE: usize = 4096;

/// Converts records with one schema and one set of options.
pub struct Converter {
    schema: TableSchema,
    arrow: arrow_schema::SchemaRef,
    de: Deserializer,
    out: ParquetOptions,
    /// The JSON key each column is read from (after the deserializer's key rules).
    column_keys: Vec<String>,
    /// Column index by that key.
    column_index: std::collections::HashMap<String, usize>,
    /// Columns a record must give a value for (an Iceberg table's required columns).
    required: Vec<bool>,
}

impl Converter {
    pub fn new(schema: TableSchema, de: Deserializer, out: ParquetOptions) -> Self {
        let arrow = Arc::new(schema.to_arrow());
        let mut c = Converter {
            schema,
            arrow,
            de,
            out,
            column_keys: Vec::new(),
            column_index: std::collections::HashMap::new(),
            required: Vec::new(),
        };
        c.column_keys = c
            .schema
            .columns
            .iter()
            .map(|col| match &c.de {
                Deserializer::OpenX { column_to_key, .. } => c
                    .key(column_to_key.get(&col.name).unwrap_or(&col.name))
                    .into_owned(),
                Deserializer::Hive { .. } => col.name.clone(),
            })
            .collect();
        c.column_index = c
            .column_keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), i))
            .collect();
        c
    }

    /// The same converter, refusing a record without a value for a column marked here.
    pub fn with_required(mut self, required: Vec<bool>) -> Self {
        self.required = required;
        self
    }

    /// The Arrow schema of the batches [`Converter::each_batch`] makes.
    pub fn arrow_schema(&self) -> &arrow_schema::SchemaRef {
        &self.arrow
    }

    /// Parses `records` (one JSON object each) into Arrow batches of at most a slice of rows,
    /// handing each to `each` with whether it ends a row group (`BlockSizeBytes`, counted as
    /// the records' JSON bytes). Returns the records that did not fit: (index, reason).
    pub fn each_batch<'a, E: From<arrow_schema::ArrowError>>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
        mut each: impl FnMut(RecordBatch, bool) -> Result<(), E>,
    ) -> Result<Vec<(usize, String)>, E> {
        // Rows are parsed, handed on and dropped a slice at a time, so only one slice of typed
        // values is in memory.
        let mut failures = Vec::new();
        let mut chunk: Vec<Vec<Typed<'a>>> = Vec::with_capacity(ROWS_PER_SLICE);
        let mut group_bytes = 0usize;
        let mut records = records.into_iter().enumerate().peekable();
        while records.peek().is_some() {
            chunk.clear();
            while chunk.len() < ROWS_PER_SLICE && group_bytes < self.out.block_size_bytes {
                let Some((i, data)) = records.next() else {
                    break;
                };
                match self.row(data) {
                    Ok(row) => {
                        chunk.push(row);
                        group_bytes += data.len();
                    }
                    Err(reason) => failures.push((i, reason)),
                }
            }
            let group_end = group_bytes >= self.out.block_size_bytes;
            if group_end {
                group_bytes = 0;
            }
            if !chunk.is_empty() || group_end {
                let columns: Vec<ArrayRef> = self
                    .schema
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(c, col)| {
                        let values: Vec<&Typed> = chunk.iter().map(|r| &r[c]).collect();
                        build(&col.ty, &values)
                    })
                    .collect();
                each(
                    RecordBatch::try_new(self.arrow.clone(), columns)?,
                    group_end,
                )?;
            }
        }
        Ok(failures)
    }

    /// Converts `records` (one JSON object each) into one Parquet file. Fails as a whole only
    /// if the writer does (a bug).
    pub fn convert<'a>(
        &self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Converted, parquet::errors::ParquetError> {
        let mut writer: Option<ArrowWriter<Vec<u8>>> = None;
        let mut rows = 0usize;
        let failures = self.each_batch(records, |batch, group_end| {
            if batch.num_rows() > 0 {
                let w = match &mut writer {
                    Some(w) => w,
                    None => writer.insert(ArrowWriter::try_new(
                        Vec::new(),
                        self.arrow.clone(),
                        Some(self.properties()),
                    )?),
                };
                w.write(&batch)?;
                rows += batch.num_rows();
            }
            if group_end && let Some(w) = &mut writer {
                w.flush()?;
            }
            Ok::<(), parquet::errors::ParquetError>(())
        })?;
        let parquet = match writer {
            Some(w) => w.into_inner()?,
            None => Vec::new(),
        };
        Ok(Converted {
            parquet,
            rows,
            failures,
        })
    }

    fn properties(&self) -> WriterProperties {
        let compression = match self.out.compression {
            ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_size_limit(self.out.page_size_bytes)
            .set_dictionary_enabled(self.out.dictionary)
            .set_writer_version(if self.out.writer_v2 {
                WriterVersion::PARQUET_2_0
            } else {
                WriterVersion::PARQUET_1_0
            })
            .set_created_by("hosepipe".into())
            .build()
    }

    /// One record checked against the schema: a value per column.
    fn row<'d>(&self, data: &'d [u8]) -> Result<Vec<Typed<'d>>, String> {
        // Parsed straight into the row: only the columns' values become `Value`s, unknown keys
        // are skipped, and no tree of the whole record is built.
        let mut de = serde_json::Deserializer::from_slice(data);
        let row = serde::de::DeserializeSeed::deserialize(RowSeed(self), &mut de)
            .and_then(|row| de.end().map(|()| row));
        match row {
            Ok(row) => row,
            Err(e) => Err(format!("the record is not JSON: {e}")),
        }
    }

    /// Whether a first-level JSON key names a column.
    pub fn names_column(&self, key: &str) -> bool {
        self.column_of(key).is_some()
    }

    /// The column a JSON key names, after the deserializer's key rules.
    fn column_of(&self, key: &str) -> Option<usize> {
        let key = self.normalise_key(key);
        // A narrow table is searched faster by comparing names than by hashing.
        if self.column_keys.len() <= 32 {
            return self.column_keys.iter().rposition(|k| *k == key);
        }
        self.column_index.get(key.as_ref()).copied()
    }

    /// A JSON key under the OpenX rules (dots to underscores, lowercase), borrowed when they
    /// change nothing.
    fn normalise_key<'k>(&self, key: &'k str) -> std::borrow::Cow<'k, str> {
        match &self.de {
            Deserializer::OpenX {
                case_insensitive,
                dots_to_underscores,
                ..
            } => {
                let dotted = *dots_to_underscores && key.contains('.');
                let upper = *case_insensitive
                    && key.chars().any(|c| !c.is_lowercase() && c.is_alphabetic());
                match (dotted, upper) {
                    (false, false) => std::borrow::Cow::Borrowed(key),
                    (true, _) if *case_insensitive => {
                        std::borrow::Cow::Owned(key.replace('.', "_").to_lowercase())
                    }
                    (true, _) => std::borrow::Cow::Owned(key.replace('.', "_")),
                    (false, true) => std::borrow::Cow::Owned(key.to_lowercase()),
                }
            }
            Deserializer::Hive { .. } => std::borrow::Cow::Borrowed(key),
        }
    }

    /// The JSON key a column or field name is looked up as (lowercased when case-insensitive).
    fn key<'k>(&self, k: &'k str) -> std::borrow::Cow<'k, str> {
        match &self.de {
            Deserializer::OpenX {
                case_insensitive: true,
                ..
            } if k.chars().any(|c| !c.is_lowercase() && c.is_alphabetic()) => {
                std::borrow::Cow::Owned(k.to_lowercase())
            }
            _ => std::borrow::Cow::Borrowed(k),
        }
    }

    /// Applies the OpenX key rules in place, touching only the keys that change.
    fn normalise_keys(&self, object: &mut Map<String, Value>) {
        let Deserializer::OpenX {
            case_insensitive,
            dots_to_underscores,
            ..
        } = &self.de
        else {
            return;
        };
        if !case_insensitive && !dots_to_underscores {
            return;
        }
        let changes = |k: &str| {
            (*dots_to_underscores && k.contains('.'))
                || (*case_insensitive && k.chars().any(|c| !c.is_lowercase() && c.is_alphabetic()))
        };
        let renamed: Vec<String> = object.keys().filter(|k| changes(k)).cloned().collect();
        for old in renamed {
            if let Some(v) = object.remove(&old) {
                let k = if *dots_to_underscores {
                    old.replace('.', "_")
                } else {
                    old
                };
                let k = if *case_insensitive {
                    k.to_lowercase()
                } else {
                    k
                };
                object.insert(k, v);
            }
        }
        for v in object.values_mut() {
            if let Value::Object(inner) = v {
                self.normalise_keys(inner);
            }
        }
    }

    fn lenient(&self) -> bool {
        matches!(self.de, Deserializer::OpenX { .. })
    }

    /// Checks and converts one value, taking ownership so strings move rather than copy.
    fn coerce(&self, ty: &ColumnType, v: Value) -> Result<Typed<'static>, String> {
        if v.is_null() {
            return Ok(Typed::Null);
        }
        let wrong = |v: &Value| format!("{} is not a valid {}", short(v), ty.hive());
        Ok(match ty {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => {
                let text = match v {
                    Value::String(s) => s,
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ if self.lenient() => v.to_string(),
                    other => return Err(wrong(&other)),
                };
                match ty {
                    ColumnType::Char(n) | ColumnType::Varchar(n)
                        if text.chars().nth(*n as usize).is_some() =>
                    {
                        Typed::Str(text.chars().take(*n as usize).collect())
                    }
                    _ => Typed::Str(text.into()),
                }
            }
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => {
                let n = match &v {
                    Value::Number(n) => n.as_i64().ok_or_else(|| wrong(&v))?,
                    Value::String(s) if self.lenient() => {
                        s.trim().parse().map_err(|_| wrong(&v))?
                    }
                    _ => return Err(wrong(&v)),
                };
                let (lo, hi) = match ty {
                    ColumnType::TinyInt => (i8::MIN as i64, i8::MAX as i64),
                    ColumnType::SmallInt => (i16::MIN as i64, i16::MAX as i64),
                    ColumnType::Int => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if !(lo..=hi).contains(&n) {
                    return Err(format!("{n} is out of range for {}", ty.hive()));
                }
                Typed::Int(n)
            }
            ColumnType::Boolean => match &v {
                Value::Bool(b) => Typed::Bool(*b),
                Value::String(s) if self.lenient() && s.eq_ignore_ascii_case("true") => {
                    Typed::Bool(true)
                }
                Value::String(s) if self.lenient() && s.eq_ignore_ascii_case("false") => {
                    Typed::Bool(false)
                }
                _ => return Err(wrong(&v)),
            },
            ColumnType::Float | ColumnType::Double => match &v {
                Value::Number(n) => Typed::Float(n.as_f64().ok_or_else(|| wrong(&v))?),
                Value::String(s) if self.lenient() => {
                    Typed::Float(s.trim().parse().map_err(|_| wrong(&v))?)
                }
                _ => return Err(wrong(&v)),
            },
            ColumnType::Decimal { precision, scale } => {
                let parsed = match &v {
                    Value::Number(n) => decimal(&n.to_string(), *precision, *scale),
                    Value::String(s) if self.lenient() => decimal(s.trim(), *precision, *scale),
                    _ => None,
                };
                Typed::Decimal(parsed.ok_or_else(|| wrong(&v))?)
            }
            ColumnType::Date => match &v {
                Value::String(s) => {
                    let d =
                        NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| wrong(&v))?;
                    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a date");
                    Typed::Date((d - epoch).num_days() as i32)
                }
                _ => return Err(wrong(&v)),
            },
            ColumnType::Timestamp => Typed::Millis(self.timestamp(&v).ok_or_else(|| wrong(&v))?),
            ColumnType::Binary => match &v {
                Value::String(s) => Typed::Bytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|_| format!("{} is not base64 for binary", short(&v)))?,
                ),
                _ => return Err(wrong(&v)),
            },
            ColumnType::Array(item) => match v {
                Value::Array(items) => Typed::List(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, x)| self.coerce(item, x).map_err(|e| format!("[{i}]: {e}")))
                        .collect::<Result<_, _>>()?,
                ),
                other => return Err(wrong(&other)),
            },
            ColumnType::Map(k, val) => match v {
                Value::Object(entries) => Typed::Map(
                    entries
                        .into_iter()
                        .map(|(key, x)| {
                            Ok((
                                self.map_key(k, &key)?,
                                self.coerce(val, x).map_err(|e| format!("[{key:?}]: {e}"))?,
                            ))
                        })
                        .collect::<Result<_, String>>()?,
                ),
                other => return Err(wrong(&other)),
            },
            ColumnType::Struct(fields) => match v {
                Value::Object(mut o) => Typed::Struct(
                    fields
                        .iter()
                        .map(|f| {
                            let x = o.remove(self.key(&f.name).as_ref()).unwrap_or(Value::Null);
                            self.coerce(&f.ty, x)
                                .map_err(|e| format!(".{}: {e}", f.name))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => return Err(wrong(&other)),
            },
        })
    }

    /// A map's key, which JSON writes as a string even when the column's key type is numeric.
    fn map_key(&self, ty: &ColumnType, key: &str) -> Result<Typed<'static>, String> {
        self.coerce(ty, Value::String(key.to_string()))
            .or_else(|_| {
                serde_json::from_str::<Value>(key)
                    .map_err(|e| e.to_string())
                    .and_then(|kv| self.coerce(ty, kv))
            })
            .map_err(|e| format!("key {key:?}: {e}"))
    }

    /// Milliseconds since the epoch (UTC) of a timestamp value.
    fn timestamp(&self, v: &Value) -> Option<i64> {
        match &self.de {
            Deserializer::OpenX { .. } => match v {
                // Epoch seconds, milliseconds, or fractional seconds.
                Value::Number(n) => {
                    let f = n.as_f64()?;
                    Some(if f.abs() >= 1e11 {
                        f as i64
                    } else {
                        (f * 1000.0).round() as i64
                    })
                }
                Value::String(s) => {
                    let s = s.trim();
                    if let Ok(n) = s.parse::<f64>() {
                        return self.timestamp(&Value::from(n));
                    }
                    parse_datetime(
                        s,
                        &[
                            "%Y-%m-%dT%H:%M:%S%.fZ",
                            "%Y-%m-%dT%H:%M:%SZ",
                            "%Y-%m-%d %H:%M:%S%.f",
                            "%Y-%m-%d %H:%M:%S",
                        ],
                    )
                }
                _ => None,
            },
            Deserializer::Hive { timestamp_formats } => {
                let Value::String(s) = v else {
                    return match v {
                        Value::Number(n) if timestamp_formats.iter().any(|f| f == "millis") => {
                            n.as_i64()
                        }
                        _ => None,
                    };
                };
                let s = s.trim();
                if timestamp_formats.is_empty() {
                    return parse_datetime(s, &["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"]);
                }
                timestamp_formats.iter().find_map(|f| {
                    if f == "millis" {
                        s.parse().ok()
                    } else {
                        parse_datetime(s, &[&joda_to_chrono(f)])
                    }
                })
            }
        }
    }
}

thread_local! {
    /// Compiled chrono formats, by format string (parsing a format string costs more than
    /// parsing a timestamp with it).
    static FORMATS: std::cell::RefCell<std::collections::HashMap<String, Vec<chrono::format::Item<'static>>>> =
        std::cell::RefCell::default();
}

/// Milliseconds since the epoch of `s` in the first of `formats` that fits (UTC unless the
/// format has an offset).
/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses one value straight into its column type: arrays, maps and structs without building a
/// `Value` tree; scalars through [`Converter::coerce`]'s rules. `Ok(Err(reason))` when it is
/// JSON but does not fit (the rest of the value is still read, so the record fails as one).
struct TypedSeed<'a> {
    conv: &'a Converter,
    ty: &'a ColumnType,
}

type Fit<'de> = Result<Typed<'de>, String>;

impl<'de> serde::de::DeserializeSeed<'de> for TypedSeed<'_> {
    type Value = Fit<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fit<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl TypedSeed<'_> {
    fn scalar<'de>(&self, v: Value) -> Fit<'de> {
        self.conv.coerce(self.ty, v)
    }

    fn text<'de>(&self, s: std::borrow::Cow<'de, str>) -> Fit<'de> {
        match self.ty {
            ColumnType::String => Ok(Typed::Str(s)),
            _ => self.scalar(Value::String(s.into_owned())),
        }
    }

    /// The value as a `Value` (the rare path: a container where the column wants a scalar,
    /// which OpenX writes as JSON text and Hive refuses).
    fn whole<'de>(&self, mut v: Value) -> Fit<'de> {
        if let Value::Object(o) = &mut v {
            self.conv.normalise_keys(o);
        }
        self.scalar(v)
    }
}

impl<'de> serde::de::Visitor<'de> for TypedSeed<'_> {
    type Value = Fit<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Fit<'de>, E> {
        Ok(Ok(Typed::Null))
    }

    fn visit_none<E>(self) -> Result<Fit<'de>, E> {
        Ok(Ok(Typed::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Fit<'de>, E> {
        Ok(self.scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Fit<'de>, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Fit<'de>, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Fit<'de>, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Fit<'de>, E> {
        Ok(self.text(std::borrow::Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Fit<'de>, E> {
        Ok(self.text(std::borrow::Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Fit<'de>, E> {
        Ok(self.text(std::borrow::Cow::Owned(v)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Fit<'de>, A::Error> {
        let ColumnType::Array(item) = self.ty else {
            let v =
                serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
            return Ok(self.whole(v));
        };
        let inner = TypedSeed {
            conv: self.conv,
            ty: item,
        };
        let mut items = Vec::new();
        let mut failure = None;
        while failure.is_none() {
            let Some(fit) = seq.next_element_seed(TypedSeed { ..inner })? else {
                break;
            };
            match fit {
                Ok(v) => items.push(v),
                Err(e) => failure = Some(format!("[{}]: {e}", items.len())),
            }
        }
        if let Some(e) = failure {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            return Ok(Err(e));
        }
        Ok(Ok(Typed::List(items)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fit<'de>, A::Error> {
        let conv = self.conv;
        let mut failure: Option<String> = None;
        match self.ty {
            ColumnType::Struct(fields) => {
                let mut values = vec![Typed::Null; fields.len()];
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let key = conv.normalise_key(&key);
                    let field = fields
                        .iter()
                        .position(|f| conv.key(&f.name) == key)
                        .filter(|_| failure.is_none());
                    match field {
                        Some(i) => {
                            let f = &fields[i];
                            match map.next_value_seed(TypedSeed { conv, ty: &f.ty })? {
                                Ok(v) => values[i] = v,
                                Err(e) => failure = Some(format!(".{}: {e}", f.name)),
                            }
                        }
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(failure.map_or(Ok(Typed::Struct(values)), Err))
            }
            ColumnType::Map(kt, vt) => {
                // Later duplicates win, as they would in an object.
                let mut entries: BTreeMap<String, Typed<'de>> = BTreeMap::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if failure.is_some() {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    let key = conv.normalise_key(&key).into_owned();
                    match map.next_value_seed(TypedSeed { conv, ty: vt })? {
                        Ok(v) => {
                            entries.insert(key, v);
                        }
                        Err(e) => failure = Some(format!("[{key:?}]: {e}")),
                    }
                }
                if let Some(e) = failure {
                    return Ok(Err(e));
                }
                let mut out = Vec::with_capacity(entries.len());
                for (key, v) in entries {
                    match conv.map_key(kt, &key) {
                        Ok(k) => out.push((k, v)),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(Typed::Map(out)))
            }
            _ => {
                let v = serde::Deserialize::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(self.whole(v))
            }
        }
    }
}

/// Parses a record into its row: `Ok(Err(reason))` when it is JSON but does not fit.
struct RowSeed<'a>(&'a Converter);

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Result<Vec<Typed<'de>>, String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = Result<Vec<Typed<'de>>, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let conv = self.0;
        let mut row = vec![Typed::Null; conv.schema.columns.len()];
        let mut failure = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match conv.column_of(&key).filter(|_| failure.is_none()) {
                Some(i) => {
                    let col = &conv.schema.columns[i];
                    match map.next_value_seed(TypedSeed { conv, ty: &col.ty })? {
                        Ok(v) => row[i] = v,
                        Err(e) => failure = Some(format!("column {}: {e}", col.name)),
                    }
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if failure.is_none()
            && let Some(c) = conv
                .required
                .iter()
                .zip(&row)
                .position(|(required, v)| *required && *v == Typed::Null)
        {
            failure = Some(format!(
                "column {}: is required, and the record has no value for it",
                conv.schema.columns[c].name
            ));
        }
        Ok(match failure {
            Some(e) => Err(e),
            None => Ok(row),
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Err("the record is a JSON array, not an object".into()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("the record is not a JSON object".into()))
    }
}

fn parse_datetime(s: &str, formats: &[&str]) -> Option<i64> {
    formats.iter().find_map(|f| {
        FORMATS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if !cache.contains_key(*f) {
                let items = chrono::format::StrftimeItems::new(f)
                    .parse_to_owned()
                    .ok()?;
                cache.insert(f.to_string(), items);
            }
            let items = cache.get(*f)?;
            let mut parsed = chrono::format::Parsed::new();
            chrono::format::parse(&mut parsed, s, items.iter()).ok()?;
            match parsed.offset {
                Some(_) => parsed.to_datetime().ok().map(|t| t.timestamp_millis()),
                None => parsed
                    .to_naive_datetime_with_offset(0)
                    .ok()
                    .map(|t: NaiveDateTime| t.and_utc().timestamp_millis()),
            }
        })
    })
}

/// A Joda-Time pattern (`yyyy-MM-dd'T'HH:mm:ss.SSSZ`) as a chrono format.
fn joda_to_chrono(pattern: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .map(|p| i + 1 + p);
            let end = end.unwrap_or(chars.len());
            out.extend(chars[i + 1..end].iter());
            i = end + 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        out.push_str(match (c, run) {
            ('y', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', _) => "%.f",
            ('a', _) => "%p",
            ('Z', _) | ('X', _) => "%z",
            _ => {
                out.extend(std::iter::repeat_n(c, run));
                i += run;
                continue;
            }
        });
        // `.SSS` already carries its dot in chrono's `%.f`.
        if c == 'S' && out.ends_with(".%.f") {
            let len = out.len();
            out.replace_range(len - 4..len, "%.f");
        }
        i += run;
    }
    out
}

/// A decimal's text as an integer scaled by `scale`, if it fits `precision`.
fn decimal(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > scale as usize
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale as usize > precision as usize {
        return None;
    }
    let mut n: i128 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', scale as usize - frac.len()))
    {
        n = n.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    Some(if neg { -n } else { n })
}

/// A JSON value, shortened for a message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn nulls(values: &[&Typed<'_>]) -> Option<NullBuffer> {
    if values.iter().all(|v| !matches!(v, Typed::Null)) {
        return None;
    }
    let mut b = BooleanBufferBuilder::new(values.len());
    for v in values {
        b.append(!matches!(v, Typed::Null));
    }
    Some(b.finish().into())
}

/// The Arrow array of one column's values.
fn build(ty: &ColumnType, values: &[&Typed<'_>]) -> ArrayRef {
    macro_rules! prim {
        ($array:ty, $variant:ident, $conv:expr) => {
            Arc::new(<$array>::from_iter(values.iter().map(|v| match v {
                Typed::$variant(x) => Some($conv(x)),
                _ => None,
            }))) as ArrayRef
        };
    }
    match ty {
        ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => {
            Arc::new(StringArray::from_iter(values.iter().map(|v| match v {
                Typed::Str(s) => Some(s.as_ref()),
                _ => None,
            })))
        }
        ColumnType::TinyInt => prim!(Int8Array, Int, |x: &i64| *x as i8),
        ColumnType::SmallInt => prim!(Int16Array, Int, |x: &i64| *x as i16),
        ColumnType::Int => prim!(Int32Array, Int, |x: &i64| *x as i32),
        ColumnType::BigInt => prim!(Int64Array, Int, |x: &i64| *x),
        ColumnType::Boolean => prim!(BooleanArray, Bool, |x: &bool| *x),
        ColumnType::Float => prim!(Float32Array, Float, |x: &f64| *x as f32),
        ColumnType::Double => prim!(Float64Array, Float, |x: &f64| *x),
        ColumnType::Date => prim!(Date32Array, Date, |x: &i32| *x),
        ColumnType::Timestamp => prim!(TimestampMillisecondArray, Millis, |x: &i64| *x),
        ColumnType::Decimal { precision, scale } => Arc::new(
            Decimal128Array::from_iter(values.iter().map(|v| match v {
                Typed::Decimal(x) => Some(*x),
                _ => None,
            }))
            .with_precision_and_scale(*precision, *scale)
            .expect("the parser bounds precision and scale"),
        ),
        ColumnType::Binary => Arc::new(BinaryArray::from_iter(values.iter().map(|v| match v {
            Typed::Bytes(b) => Some(b.as_slice()),
            _ => None,
        }))),
        ColumnType::Array(item) => {
            let mut offsets = vec![0i32];
            let mut children: Vec<&Typed<'_>> = Vec::new();
            for v in values {
                if let Typed::List(xs) = v {
                    children.extend(xs.iter());
                }
                offsets.push(children.len() as i32);
            }
            let DataType::List(field) = ty.to_arrow() else {
                unreachable!("an array column is an Arrow list")
            };
            Arc::new(ListArray::new(
                field,
                OffsetBuffer::new(offsets.into()),
                build(item, &children),
                nulls(values),
            ))
        }
        ColumnType::Map(k, val) => {
            let mut offsets = vec![0i32];
            let (mut keys, mut vals): (Vec<&Typed<'_>>, Vec<&Typed<'_>>) = (Vec::new(), Vec::new());
            for v in values {
                if let Typed::Map(entries) = v {
                    for (a, b) in entries {
                        keys.push(a);
                        vals.push(b);
                    }
                }
                offsets.push(keys.len() as i32);
            }
            let DataType::Map(entries_field, sorted) = ty.to_arrow() else {
                unreachable!("a map column is an Arrow map")
            };
            let DataType::Struct(kv_fields) = entries_field.data_type().clone() else {
                unreachable!("map entries are a struct")
            };
            let entries =
                StructArray::new(kv_fields, vec![build(k, &keys), build(val, &vals)], None);
            Arc::new(MapArray::new(
                entries_field,
                OffsetBuffer::new(offsets.into()),
                entries,
                nulls(values),
                sorted,
            ))
        }
        ColumnType::Struct(fields) => {
            let children: Vec<ArrayRef> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let column: Vec<&Typed<'_>> = values
                        .iter()
                        .map(|v| match v {
                            Typed::Struct(xs) => &xs[i],
                            _ => &Typed::Null,
                        })
                        .collect();
                    build(&f.ty, &column)
                })
                .collect();
            let arrow_fields: Fields = fields
                .iter()
                .map(|f: &Column| Field::new(&f.name, f.ty.to_arrow(), true))
                .collect();
            Arc::new(StructArray::new(arrow_fields, children, nulls(values)))
        }
    }
}

#[cfg(test)]
mod tests;
