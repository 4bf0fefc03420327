//! Rows for Iceberg tables: a table's schema as the typed converter's columns, records parsed
//! into Arrow batches of the table's own Arrow schema (field ids and all), first-level fields
//! a table lacks (schema evolution), and the record positions a commit holds, as written in
//! its snapshot summary. Pure.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use serde_json::Value;

use super::parquet::{Converter, Deserializer, ParquetOptions};
use crate::schema::{Column, ColumnType, TableRef, TableSchema};
use crate::spool::RangeSet;

/// The Iceberg type a column of `ty` is read as by the converter, or why it cannot be.
fn column_type(ty: &Type) -> Result<ColumnType, String> {
    Ok(match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => ColumnType::Boolean,
            PrimitiveType::Int => ColumnType::Int,
            PrimitiveType::Long => ColumnType::BigInt,
            PrimitiveType::Float => ColumnType::Float,
            PrimitiveType::Double => ColumnType::Double,
            PrimitiveType::Decimal { precision, scale } if *precision <= 38 => {
                ColumnType::Decimal {
                    precision: *precision as u8,
                    scale: *scale as i8,
                }
            }
            PrimitiveType::Date => ColumnType::Date,
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => ColumnType::Timestamp,
            PrimitiveType::String => ColumnType::String,
            PrimitiveType::Binary => ColumnType::Binary,
            other => return Err(format!("hosepipe cannot write Iceberg type {other}")),
        },
        Type::Struct(s) => ColumnType::Struct(
            s.fields()
                .iter()
                .map(|f| column(f))
                .collect::<Result<_, _>>()?,
        ),
        Type::List(l) => ColumnType::Array(Box::new(column_type(&l.element_field.field_type)?)),
        Type::Map(m) => ColumnType::Map(
            Box::new(column_type(&m.key_field.field_type)?),
            Box::new(column_type(&m.value_field.field_type)?),
        ),
    })
}

fn column(f: &NestedField) -> Result<Column, String> {
    Ok(Column {
        name: f.name.clone(),
        ty: column_type(&f.field_type).map_err(|e| format!("column {}: {e}", f.name))?,
    })
}

/// Records into rows of one table schema.
pub struct Rows {
    converter: Converter,
    /// The table's Arrow schema (with its field ids), which every batch is cast to.
    target: arrow_schema::SchemaRef,
}

impl Rows {
    /// The converter for `schema` (the table `table`): first-level fields to columns by their
    /// exact names, nested objects to struct and map columns, the OpenX type rules.
    pub fn new(table: TableRef, schema: &Schema) -> Result<Rows, String> {
        let fields = schema.as_struct().fields();
        let columns = fields
            .iter()
            .map(|f| column(f))
            .collect::<Result<Vec<_>, _>>()?;
        let target = iceberg::arrow::schema_to_arrow_schema(schema).map_err(|e| e.to_string())?;
        let required = fields.iter().map(|f| f.required).collect();
        let de = Deserializer::OpenX {
            case_insensitive: false,
            dots_to_underscores: false,
            column_to_key: Default::default(),
        };
        let options = ParquetOptions {
            block_size_bytes: usize::MAX,
            ..Default::default()
        };
        let schema = TableSchema { table, columns };
        Ok(Rows {
            converter: Converter::new(schema, de, options).with_required(required),
            target: Arc::new(target),
        })
    }

    /// Parses `records` into batches of the table's Arrow schema. Returns them and the records
    /// that do not fit (index, reason).
    pub fn convert(&self, records: &[&[u8]]) -> (Vec<RecordBatch>, Vec<(usize, String)>) {
        let mut batches = Vec::new();
        let mut cast_failed = false;
        let failures = self
            .converter
            .each_batch(records.iter().copied(), |batch, _| {
                match self.cast(&batch) {
                    Ok(b) if b.num_rows() > 0 => batches.push(b),
                    Ok(_) => {}
                    Err(_) => cast_failed = true,
                }
                Ok::<(), arrow_schema::ArrowError>(())
            })
            .expect("batches of the converter's own schema");
        if !cast_failed {
            return (batches, failures);
        }
        // A value the table cannot hold (a required nested field left null, say): find the
        // records that cause it, one at a time.
        let mut batches = Vec::new();
        let mut failures = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let mut reason = None;
            let misfit = self
                .converter
                .each_batch([*record], |batch, _| {
                    match self.cast(&batch) {
                        Ok(b) if b.num_rows() > 0 => batches.push(b),
                        Ok(_) => {}
                        Err(e) => reason = Some(e),
                    }
                    Ok::<(), arrow_schema::ArrowError>(())
                })
                .expect("batches of the converter's own schema");
            failures.extend(misfit.into_iter().map(|(_, why)| (i, why)));
            failures.extend(reason.map(|why| (i, why)));
        }
        (batches, failures)
    }

    /// A converter batch as a batch of the table's own Arrow types.
    fn cast(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.target.fields())
            .map(|(column, field)| {
                arrow_cast::cast(column, field.data_type())
                    .map_err(|e| format!("column {}: {e}", field.name()))
            })
            .collect::<Result<Vec<ArrayRef>, String>>()?;
        RecordBatch::try_new(self.target.clone(), columns).map_err(|e| e.to_string())
    }

    /// The first-level fields of `records` that name no column, each with the Iceberg type
    /// of its first non-null value (schema evolution), in the order first seen.
    pub fn new_fields(&self, records: &[&[u8]]) -> Vec<(String, Type)> {
        first_level_fields(records, |key| self.converter.names_column(key))
    }
}

/// The first-level fields of `records` that `known` does not take, each with the type of its
/// first non-null value, in the order first seen (a record's fields by name).
fn first_level_fields(records: &[&[u8]], known: impl Fn(&str) -> bool) -> Vec<(String, Type)> {
    let mut out: Vec<(String, Type)> = Vec::new();
    for record in records {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(record) else {
            continue;
        };
        for (key, value) in object {
            if known(&key) || out.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if let Some(ty) = inferred_type(&value) {
                out.push((key, ty));
            }
        }
    }
    out
}

/// The column type a new field gets from a JSON value: whole numbers `long`, other numbers
/// `double`, `boolean`, and `string` for strings, objects and arrays (as their JSON text).
/// `None` for null: the type is not known yet.
fn inferred_type(value: &Value) -> Option<Type> {
    let p = match value {
        Value::Null => return None,
        Value::Bool(_) => PrimitiveType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => PrimitiveType::Long,
        Value::Number(_) => PrimitiveType::Double,
        Value::String(_) | Value::Array(_) | Value::Object(_) => PrimitiveType::String,
    };
    Some(Type::Primitive(p))
}

/// A table schema for records of a table that does not exist yet (`TableCreationConfiguration`):
/// a column per first-level field, in the order first seen (a record's fields by name), each optional and typed by its
/// first non-null value (see [`inferred_type`]).
pub fn inferred_schema(records: &[&[u8]]) -> Result<Schema, String> {
    let fields = first_level_fields(records, |_| false);
    if fields.is_empty() {
        return Err("the records have no field with a value to make a column of".into());
    }
    Schema::builder()
        .with_fields(
            fields
                .into_iter()
                .enumerate()
                .map(|(i, (name, ty))| NestedField::optional(i as i32 + 1, name, ty).into())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| e.to_string())
}

/// The records a stream committed to a table: spool positions `(seq, part)`, as a commit's
/// snapshot summary lists them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions {
    /// Records as they arrived (part 0).
    whole: RangeSet,
    /// What the processors made of them (part ≥ 1).
    parts: HashSet<(u64, u32)>,
}

impl Positions {
    pub fn contains(&self, seq: u64, part: u32) -> bool {
        match part {
            0 => self.whole.contains(seq),
            _ => self.parts.contains(&(seq, part)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.whole.ranges().next().is_none() && self.parts.is_empty()
    }

    /// Adds the positions of `other` whose seq passes `keep`.
    pub fn extend_from(&mut self, other: &Positions, keep: impl Fn(u64) -> bool) {
        for (start, end) in other.whole.ranges() {
            // Kept seqs are a suffix of a range in practice (the log reads from a low mark on);
            // a range wholly kept is added whole.
            if keep(start) && keep(end - 1) {
                self.whole.insert_range(start, end);
            } else {
                for seq in (start..end).filter(|s| keep(*s)) {
                    self.whole.insert(seq);
                }
            }
        }
        self.parts
            .extend(other.parts.iter().filter(|(seq, _)| keep(*seq)).copied());
    }

    pub fn insert(&mut self, seq: u64, part: u32) {
        match part {
            0 => {
                self.whole.insert(seq);
            }
            _ => {
                self.parts.insert((seq, part));
            }
        }
    }

    /// `a-b` for the seqs a..=b as they arrived, `a` for one, `a.p` for part p of seq a;
    /// comma-separated, in order.
    pub fn encode(&self) -> String {
        let mut out: Vec<String> = self
            .whole
            .ranges()
            .map(|(s, e)| match e - s {
                1 => s.to_string(),
                _ => format!("{s}-{}", e - 1),
            })
            .collect();
        let mut parts: Vec<_> = self.parts.iter().collect();
        parts.sort();
        out.extend(parts.into_iter().map(|(s, p)| format!("{s}.{p}")));
        out.join(",")
    }

    /// Adds what [`Positions::encode`] wrote; `None` when `text` is not in that form.
    pub fn add_encoded(&mut self, text: &str) -> Option<()> {
        for item in text.split(',').filter(|i| !i.is_empty()) {
            if let Some((seq, part)) = item.split_once('.') {
                self.parts.insert((seq.parse().ok()?, part.parse().ok()?));
            } else if let Some((a, b)) = item.split_once('-') {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                self.whole.insert_range(a, b.checked_add(1)?);
            } else {
                self.whole.insert(item.parse().ok()?);
            }
        }
        Some(())
    }
}

/// Where a table's data files go: Iceberg's default layout (`<location>/data/` or the table's
/// `write.data.path`), with each partition directory's name and value escaped as Iceberg's Java
/// writer does (`URLEncoder`, form encoding: `/` → `%2F`, space → `+`), so a value holding `/`
/// or `=` stays one directory that readers parse back to the value.
#[derive(Clone, Debug)]
pub struct EscapedLocations {
    data_location: String,
}

impl EscapedLocations {
    pub fn new(metadata: &iceberg::spec::TableMetadata) -> iceberg::Result<EscapedLocations> {
        use iceberg::writer::file_writer::location_generator::LocationGenerator;
        // The default generator knows where data goes; ask it for a file's place, unpartitioned.
        let default =
            iceberg::writer::file_writer::location_generator::DefaultLocationGenerator::new(
                metadata,
            )?;
        let probe = default.generate_location(None, "f");
        Ok(EscapedLocations {
            data_location: probe[..probe.len() - 2].to_string(),
        })
    }
}

/// `text` form-encoded as Java's `URLEncoder.encode(text, UTF_8)` does.
fn java_url_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl iceberg::writer::file_writer::location_generator::LocationGenerator for EscapedLocations {
    fn generate_location(
        &self,
        partition_key: Option<&iceberg::spec::PartitionKey>,
        file_name: &str,
    ) -> String {
        let Some(key) = partition_key.filter(|k| !k.spec().is_unpartitioned()) else {
            return format!("{}/{file_name}", self.data_location);
        };
        let types = key.spec().partition_type(key.schema());
        let path = key
            .spec()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let value = key.data()[i].as_ref();
                let human = match &types {
                    Ok(t) => field
                        .transform
                        .to_human_string(&t.fields()[i].field_type, value),
                    Err(_) => value.map_or("null".into(), |v| format!("{v:?}")),
                };
                format!(
                    "{}={}",
                    java_url_encode(&field.name),
                    java_url_encode(&human)
                )
            })
            .collect::<Vec<_>>()
            .join("/");
        format!("{}/{path}/{file_name}", self.data_location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use iceberg::spec::{ListType, MapType, NestedField, StructType};

    #[test]
    fn partition_directories_are_escaped_as_the_java_writer_does() {
        use iceberg::spec::{Literal, PartitionKey, PartitionSpec, Struct, Transform};
        use iceberg::writer::file_writer::location_generator::LocationGenerator;
        let schema = Arc::new(
            Schema::builder()
                .with_fields(vec![
                    NestedField::required(1, "page", Type::Primitive(PrimitiveType::String)).into(),
                    NestedField::required(2, "n", Type::Primitive(PrimitiveType::Int)).into(),
                ])
                .build()
                .unwrap(),
        );
        let spec = PartitionSpec::builder(schema.clone())
            .add_partition_field("page", "page", Transform::Identity)
            .unwrap()
            .add_partition_field("n", "n", Transform::Identity)
            .unwrap()
            .build()
            .unwrap();
        let data = Struct::from_iter([
            Some(Literal::string("/search a=b%c")),
            Some(Literal::int(7)),
        ]);
        let key = PartitionKey::new(spec, schema, data);
        let places = EscapedLocations {
            data_location: "s3://lake/t/data".into(),
        };
        assert_eq!(
            places.generate_location(Some(&key), "f.parquet"),
            "s3://lake/t/data/page=%2Fsearch+a%3Db%25c/n=7/f.parquet"
        );
        assert_eq!(
            places.generate_location(None, "f.parquet"),
            "s3://lake/t/data/f.parquet"
        );
    }

    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "name", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
                NestedField::optional(
                    4,
                    "tags",
                    Type::List(ListType::new(
                        NestedField::list_element(5, Type::Primitive(PrimitiveType::String), false)
                            .into(),
                    )),
                )
                .into(),
                NestedField::optional(
                    6,
                    "geo",
                    Type::Struct(StructType::new(vec![
                        NestedField::optional(7, "lat", Type::Primitive(PrimitiveType::Double))
                            .into(),
                    ])),
                )
                .into(),
                NestedField::optional(
                    8,
                    "attrs",
                    Type::Map(MapType::new(
                        NestedField::map_key_element(9, Type::Primitive(PrimitiveType::String))
                            .into(),
                        NestedField::map_value_element(
                            10,
                            Type::Primitive(PrimitiveType::Int),
                            false,
                        )
                        .into(),
                    )),
                )
                .into(),
            ])
            .build()
            .unwrap()
    }

    #[test]
    fn records_become_batches_of_the_tables_own_arrow_schema() {
        let rows = Rows::new(TableRef::default(), &schema()).unwrap();
        let records: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a", "at": "2026-11-30 10:00:00", "tags": ["x"], "geo": {"lat": 1.5}, "attrs": {"k": 2}, "extra": true}"#,
            br#"{"name": "no id"}"#,
            br#"{"id": "not a number"}"#,
            br#"{"id": 2}"#,
        ];
        let (batches, failures) = rows.convert(&records);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(batches[0].schema(), rows.target);
        let at = batches[0].column(2);
        assert_eq!(
            at.data_type(),
            &arrow_schema::DataType::Timestamp(
                arrow_schema::TimeUnit::Microsecond,
                Some("+00:00".into())
            )
        );
        let reasons: Vec<_> = failures.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(reasons[0].0, 1);
        assert!(
            reasons[0].1.contains("column id: is required"),
            "{reasons:?}"
        );
        assert_eq!(reasons[1].0, 2);
        assert!(reasons[1].1.starts_with("column id"), "{reasons:?}");
        assert_eq!(
            rows.new_fields(&records),
            [("extra".to_string(), Type::Primitive(PrimitiveType::Boolean))]
        );
    }

    #[test]
    fn positions_round_trip_through_their_summary_text() {
        let mut p = Positions::default();
        for seq in [5, 6, 7, 9, 20] {
            p.insert(seq, 0);
        }
        p.insert(8, 2);
        p.insert(8, 1);
        let text = p.encode();
        assert_eq!(text, "5-7,9,20,8.1,8.2");
        let mut back = Positions::default();
        back.add_encoded(&text).unwrap();
        assert_eq!(back, p);
        assert!(back.contains(6, 0) && back.contains(8, 2) && !back.contains(8, 0));
        assert!(back.add_encoded("1-x").is_none());
        let mut kept = Positions::default();
        kept.extend_from(&back, |seq| seq >= 6);
        assert_eq!(kept.encode(), "6-7,9,20,8.1,8.2");
        assert!(!kept.is_empty() && Positions::default().is_empty());
    }

    #[test]
    fn new_tables_take_their_columns_from_the_first_records() {
        let records: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": null, "ok": true}"#,
            br#"{"name": "a", "score": 1.5, "tags": [1]}"#,
        ];
        let schema = inferred_schema(&records).unwrap();
        let fields: Vec<_> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.name.clone(), f.field_type.to_string(), f.required))
            .collect();
        assert_eq!(
            fields,
            [
                ("id".into(), "long".into(), false),
                ("ok".into(), "boolean".into(), false),
                ("name".into(), "string".into(), false),
                ("score".into(), "double".into(), false),
                ("tags".into(), "string".into(), false),
            ]
        );
        assert!(inferred_schema(&[b"[]"]).is_err());
    }
}
