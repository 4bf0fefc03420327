//! Table schemas for record format conversion: Firehose reads the columns of a Glue table
//! (`SchemaConfiguration`). hosepipe resolves them from a local catalog declared in the config
//! file, or from the AWS Glue API ([`glue`]). Column types are written in Hive/Glue syntax and
//! map onto Arrow types (the types the Parquet writer works with).

pub mod glue;

use std::collections::BTreeMap;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

/// A Hive/Glue column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Char(u32),
    Varchar(u32),
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Boolean,
    Float,
    Double,
    Decimal { precision: u8, scale: i8 },
    Date,
    Timestamp,
    Binary,
    Array(Box<ColumnType>),
    Map(Box<ColumnType>, Box<ColumnType>),
    Struct(Vec<Column>),
}

/// A named column (or struct field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// Which table a schema came from (Firehose's `SchemaConfiguration` and its failed-record
/// documents' `dataCatalogTable`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRef {
    pub catalog_id: Option<String>,
    pub database: String,
    pub table: String,
    pub region: Option<String>,
    /// `None` or `LATEST`: the current version.
    pub version_id: Option<String>,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// A resolved table schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub table: TableRef,
    pub columns: Vec<Column>,
}

/// A schema that cannot be used, naming the table and, when it is one column's fault, the
/// column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("table {table}: column {column}: {message}")]
    Column {
        table: String,
        column: String,
        message: String,
    },
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
}

/// Parses a Hive/Glue type (`bigint`, `decimal(10,2)`, `array<struct<a:int,b:string>>`, …).
/// Errors give the character position.
pub fn parse_type(text: &str) -> Result<ColumnType, String> {
    let mut p = Parser { text, pos: 0 };
    let ty = p.ty()?;
    p.spaces();
    if p.pos != text.len() {
        return Err(p.error("unexpected text after the type"));
    }
    Ok(ty)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> String {
        format!("{message} at position {} of {:?}", self.pos + 1, self.text)
    }

    fn spaces(&mut self) {
        while self.text[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> Result<(), String> {
        self.spaces();
        if self.text[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(self.error(&format!("expected {c:?}")))
        }
    }

    fn peek(&mut self, c: char) -> bool {
        self.spaces();
        self.text[self.pos..].starts_with(c)
    }

    /// An identifier: a type name or a struct field name (backquotes allowed for the latter).
    fn word(&mut self) -> Result<String, String> {
        self.spaces();
        let rest = &self.text[self.pos..];
        if let Some(quoted) = rest.strip_prefix('`') {
            let end = quoted
                .find('`')
                .ok_or_else(|| self.error("unterminated `name`"))?;
            self.pos += end + 2;
            return Ok(quoted[..end].to_string());
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        self.pos += len;
        Ok(rest[..len].to_string())
    }

    fn number(&mut self) -> Result<u32, String> {
        self.spaces();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n = rest[..len]
            .parse()
            .map_err(|_| self.error("expected a number"))?;
        self.pos += len;
        Ok(n)
    }

    fn ty(&mut self) -> Result<ColumnType, String> {
        let start = self.pos;
        let name = self.word()?.to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => ColumnType::String,
            "tinyint" => ColumnType::TinyInt,
            "smallint" => ColumnType::SmallInt,
            "int" | "integer" => ColumnType::Int,
            "bigint" => ColumnType::BigInt,
            "boolean" => ColumnType::Boolean,
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "binary" => ColumnType::Binary,
            "char" | "varchar" => {
                self.eat('(')?;
                let n = self.number()?;
                self.eat(')')?;
                if n == 0 || (name == "char" && n > 255) || n > 65535 {
                    self.pos = start;
                    return Err(self.error(&format!("{name}({n}) is out of range")));
                }
                if name == "char" {
                    ColumnType::Char(n)
                } else {
                    ColumnType::Varchar(n)
                }
            }
            "decimal" => {
                let (mut precision, mut scale) = (10, 0);
                if self.peek('(') {
                    self.eat('(')?;
                    precision = self.number()?;
                    if self.peek(',') {
                        self.eat(',')?;
                        scale = self.number()?;
                    }
                    self.eat(')')?;
                }
                if !(1..=38).contains(&precision) || scale > precision {
                    self.pos = start;
                    return Err(self.error(&format!(
                        "decimal({precision},{scale}) needs 1 <= precision <= 38 and scale <= precision"
                    )));
                }
                ColumnType::Decimal {
                    precision: precision as u8,
                    scale: scale as i8,
                }
            }
            "array" => {
                self.eat('<')?;
                let item = self.ty()?;
                self.eat('>')?;
                ColumnType::Array(Box::new(item))
            }
            "map" => {
                self.eat('<')?;
                let key = self.ty()?;
                self.eat(',')?;
                let value = self.ty()?;
                self.eat('>')?;
                ColumnType::Map(Box::new(key), Box::new(value))
            }
            "struct" => {
                self.eat('<')?;
                let mut fields = Vec::new();
                loop {
                    let name = self.word()?;
                    self.eat(':')?;
                    let ty = self.ty()?;
                    if fields
                        .iter()
                        .any(|f: &Column| f.name.eq_ignore_ascii_case(&name))
                    {
                        return Err(self.error(&format!("struct field {name} appears twice")));
                    }
                    fields.push(Column { name, ty });
                    if self.peek(',') {
                        self.eat(',')?;
                    } else {
                        break;
                    }
                }
                self.eat('>')?;
                ColumnType::Struct(fields)
            }
            "uniontype" => {
                self.pos = start;
                return Err(self.error("uniontype is not supported (Firehose does not convert it)"));
            }
            other => {
                self.pos = start;
                return Err(self.error(&format!(
                    "unknown type {other:?} (string, char(n), varchar(n), tinyint, smallint, int, bigint, boolean, float, double, decimal(p,s), date, timestamp, binary, array<…>, map<…,…>, struct<…>)"
                )));
            }
        })
    }
}

impl ColumnType {
    /// The Arrow type values of this column are built as.
    pub fn to_arrow(&self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Char(_) | ColumnType::Varchar(_) => DataType::Utf8,
            ColumnType::TinyInt => DataType::Int8,
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Float => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            ColumnType::Binary => DataType::Binary,
            ColumnType::Array(item) => DataType::List(std::sync::Arc::new(Field::new(
                "element",
                item.to_arrow(),
                true,
            ))),
            ColumnType::Map(key, value) => DataType::Map(
                std::sync::Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", key.to_arrow(), false),
                        Field::new("value", value.to_arrow(), true),
                    ])),
                    false,
                )),
                false,
            ),
            ColumnType::Struct(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|f| Field::new(&f.name, f.ty.to_arrow(), true))
                    .collect::<Vec<_>>(),
            )),
        }
    }

    /// The type in Hive/Glue syntax.
    pub fn hive(&self) -> String {
        match self {
            ColumnType::String => "string".into(),
            ColumnType::Char(n) => format!("char({n})"),
            ColumnType::Varchar(n) => format!("varchar({n})"),
            ColumnType::TinyInt => "tinyint".into(),
            ColumnType::SmallInt => "smallint".into(),
            ColumnType::Int => "int".into(),
            ColumnType::BigInt => "bigint".into(),
            ColumnType::Boolean => "boolean".into(),
            ColumnType::Float => "float".into(),
            ColumnType::Double => "double".into(),
            ColumnType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::Binary => "binary".into(),
            ColumnType::Array(t) => format!("array<{}>", t.hive()),
            ColumnType::Map(k, v) => format!("map<{},{}>", k.hive(), v.hive()),
            ColumnType::Struct(fields) => format!(
                "struct<{}>",
                fields
                    .iter()
                    .map(|f| format!("{}:{}", f.name, f.ty.hive()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

impl TableSchema {
    /// Builds a schema from `(name, type text)` columns, naming the first bad column.
    pub fn from_columns<'a>(
        table: TableRef,
        columns: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, SchemaError> {
        let mut out: Vec<Column> = Vec::new();
        for (name, text) in columns {
            let column_error = |message: String| SchemaError::Column {
                table: table.to_string(),
                column: name.to_string(),
                message,
            };
            if name.is_empty() {
                return Err(SchemaError::Table {
                    table: table.to_string(),
                    message: "a column has an empty name".into(),
                });
            }
            if out.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                return Err(column_error("appears twice".into()));
            }
            let ty = parse_type(text).map_err(column_error)?;
            out.push(Column {
                name: name.to_string(),
                ty,
            });
        }
        if out.is_empty() {
            return Err(SchemaError::Table {
                table: table.to_string(),
                message: "has no columns".into(),
            });
        }
        Ok(TableSchema {
            table,
            columns: out,
        })
    }

    pub fn to_arrow(&self) -> Schema {
        Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.to_arrow(), true))
                .collect::<Vec<_>>(),
        )
    }
}

/// Tables declared in the config file: `[catalog.<database>.<table>]` with
/// `columns = [{ name = "…", type = "…" }, …]`.
#[derive(Debug, Clone, Default)]
pub struct LocalCatalog {
    tables: BTreeMap<(String, String), TableSchema>,
}

impl LocalCatalog {
    pub fn insert(&mut self, schema: TableSchema) {
        self.tables.insert(
            (
                schema.table.database.to_ascii_lowercase(),
                schema.table.table.to_ascii_lowercase(),
            ),
            schema,
        );
    }

    /// Database and table names are case-insensitive, as in Glue.
    pub fn get(&self, database: &str, table: &str) -> Option<&TableSchema> {
        self.tables
            .get(&(database.to_ascii_lowercase(), table.to_ascii_lowercase()))
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Where a running daemon finds tables: its local catalog, then Glue if configured.
#[derive(Debug, Clone, Default)]
pub struct SchemaSource {
    pub local: LocalCatalog,
    pub glue: Option<crate::aws_client::ServiceEndpoint>,
}

impl SchemaSource {
    /// Resolves a table from synchronous code running on the daemon's multi-threaded runtime
    /// (stream creation); a Glue call blocks this worker thread only.
    pub fn resolve_blocking(&self, table: &TableRef) -> Result<TableSchema, SchemaError> {
        if let Some(schema) = self.local.get(&table.database, &table.table) {
            return Ok(schema.clone());
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| {
                    handle.block_on(resolve(table, &self.local, self.glue.as_ref()))
                })
            }
            _ => Err(SchemaError::Table {
                table: table.to_string(),
                message: "is not in the local catalog (and Glue cannot be called from here)".into(),
            }),
        }
    }
}

/// Resolves a table: the local catalog first, then Glue when an endpoint is given.
pub async fn resolve(
    table: &TableRef,
    local: &LocalCatalog,
    glue: Option<&crate::aws_client::ServiceEndpoint>,
) -> Result<TableSchema, SchemaError> {
    if let Some(schema) = local.get(&table.database, &table.table) {
        return Ok(schema.clone());
    }
    match glue {
        Some(endpoint) => glue::get_table(endpoint, table).await,
        None => Err(SchemaError::Table {
            table: table.to_string(),
            message: "is not in the local catalog ([catalog.<database>.<table>]) and no Glue endpoint is configured ([glue] endpoint or AWS_ENDPOINT_URL_GLUE)".into(),
        }),
    }
}

/// The schema as a text table: column, Hive type, Arrow type.
pub fn describe(schema: &TableSchema) -> String {
    let width = schema
        .columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!("{:width$}  {:30}  ARROW\n", "COLUMN", "TYPE");
    for c in &schema.columns {
        out.push_str(&format!(
            "{:width$}  {:30}  {}\n",
            c.name,
            c.ty.hive(),
            c.ty.to_arrow()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hive_type_parses_and_prints_back() {
        for text in [
            "string",
            "char(10)",
            "varchar(255)",
            "tinyint",
            "smallint",
            "int",
            "bigint",
            "boolean",
            "float",
            "double",
            "decimal(10,2)",
            "date",
            "timestamp",
            "binary",
            "array<string>",
            "map<string,bigint>",
            "struct<a:int,b:array<map<string,decimal(38,10)>>>",
        ] {
            assert_eq!(parse_type(text).unwrap().hive(), text);
        }
        assert_eq!(parse_type("INT").unwrap(), ColumnType::Int);
        assert_eq!(
            parse_type(" array < struct< `x y` : double > > ")
                .unwrap()
                .hive(),
            "array<struct<x y:double>>"
        );
        assert_eq!(
            parse_type("decimal").unwrap(),
            ColumnType::Decimal {
                precision: 10,
                scale: 0
            }
        );
    }

    #[test]
    fn bad_types_say_where() {
        for (text, needle) in [
            ("strin", "unknown type \"strin\""),
            ("int, x", "at position 4"),
            ("array<int", "expected '>' at position 10"),
            ("map<string>", "expected ','"),
            ("decimal(40,2)", "precision <= 38"),
            ("varchar(0)", "out of range"),
            ("struct<a:int,a:int>", "appears twice"),
            ("uniontype<int,string>", "not supported"),
            ("int extra", "unexpected text"),
        ] {
            let err = parse_type(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn arrow_types() {
        let s = TableSchema::from_columns(
            TableRef {
                database: "db".into(),
                table: "t".into(),
                ..Default::default()
            },
            [
                ("id", "bigint"),
                ("tags", "map<string,int>"),
                ("at", "timestamp"),
            ],
        )
        .unwrap();
        let arrow = s.to_arrow();
        assert_eq!(arrow.field(0).data_type(), &DataType::Int64);
        assert!(matches!(
            arrow.field(1).data_type(),
            DataType::Map(_, false)
        ));
        assert_eq!(
            arrow.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
    }

    #[test]
    fn schema_errors_name_the_table_and_column() {
        let t = TableRef {
            database: "web".into(),
            table: "clicks".into(),
            ..Default::default()
        };
        let err = TableSchema::from_columns(t.clone(), [("id", "bigint"), ("ua", "text")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("table web.clicks: column ua: unknown type"),
            "{err}"
        );
        let err = TableSchema::from_columns(t.clone(), [("id", "int"), ("ID", "int")])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "table web.clicks: column ID: appears twice");
        assert!(TableSchema::from_columns(t, []).is_err());
    }
}
