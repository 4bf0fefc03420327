//! The AWS Glue Data Catalog as an Iceberg catalog, over the daemon's signed Glue client
//! (`aws_client`, as the format-conversion schemas are read): a table is a Glue table with
//! `Parameters.table_type = ICEBERG` and `metadata_location` (the layout Athena, Spark and
//! pyiceberg's Glue catalogs share); a commit writes the new metadata file and replaces the
//! table conditional on the `VersionId` it read (`ConcurrentModificationException` is a
//! commit conflict). The Apache Iceberg crate does everything else (metadata, snapshots). Only
//! what a delivery stream needs is here: databases and tables are read, created and updated,
//! never listed, renamed or dropped.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::io::{FileIO, FileIOBuilder};
use iceberg::spec::{PrimitiveType, Schema, TableMetadata, TableMetadataBuilder, Type};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, MetadataLocation, Namespace, NamespaceIdent, Result, TableCommit,
    TableCreation, TableIdent,
};
use serde_json::{Value, json};

use crate::aws_client::{self, CallError, ServiceEndpoint};

/// Glue, as an Iceberg catalog.
#[derive(Debug)]
pub struct GlueCatalog {
    endpoint: ServiceEndpoint,
    /// `CatalogId` (an account), else the caller's.
    catalog_id: Option<String>,
    /// Where new tables go: `<warehouse>/<database>.db/<table>`.
    warehouse: String,
    file_io: FileIO,
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(Error::new(
        ErrorKind::FeatureUnsupported,
        format!("hosepipe's Glue catalog does not {what}"),
    ))
}

/// A Glue error as Iceberg's: not found, a lost race, or unexpected.
fn glue_error(target: &str, e: CallError) -> Error {
    let kind = match &e {
        CallError::Service { code, .. } if code.contains("EntityNotFound") => {
            ErrorKind::TableNotFound
        }
        CallError::Service { code, .. } if code.contains("ConcurrentModification") => {
            ErrorKind::CatalogCommitConflicts
        }
        _ => ErrorKind::Unexpected,
    };
    let retryable = kind == ErrorKind::CatalogCommitConflicts;
    Error::new(kind, format!("Glue {target}: {e}")).with_retryable(retryable)
}

/// A column type in Hive syntax, as Glue's `StorageDescriptor.Columns` give it to Athena.
fn hive_type(ty: &Type) -> String {
    match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Timestamp
            | PrimitiveType::Timestamptz
            | PrimitiveType::TimestampNs
            | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Binary | PrimitiveType::Fixed(_) => "binary".into(),
            PrimitiveType::String | PrimitiveType::Uuid | PrimitiveType::Time => "string".into(),
        },
        Type::Struct(s) => format!(
            "struct<{}>",
            s.fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, hive_type(&f.field_type)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Type::List(l) => format!("array<{}>", hive_type(&l.element_field.field_type)),
        Type::Map(m) => format!(
            "map<{},{}>",
            hive_type(&m.key_field.field_type),
            hive_type(&m.value_field.field_type)
        ),
    }
}

fn columns(schema: &Schema) -> Vec<Value> {
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| json!({"Name": f.name, "Type": hive_type(&f.field_type)}))
        .collect()
}

/// The `TableInput` of an Iceberg table at `metadata_location`.
fn table_input(
    name: &str,
    metadata: &TableMetadata,
    metadata_location: &str,
    previous: Option<&str>,
) -> Value {
    let mut parameters = json!({
        "table_type": "ICEBERG",
        "metadata_location": metadata_location,
    });
    if let Some(previous) = previous {
        parameters["previous_metadata_location"] = previous.into();
    }
    json!({
        "Name": name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": parameters,
        "StorageDescriptor": {
            "Location": metadata.location(),
            "Columns": columns(metadata.current_schema()),
        },
    })
}

impl GlueCatalog {
    /// Glue at `endpoint`; tables' files through OpenDAL with `props` (`s3.*`).
    pub fn new(
        endpoint: ServiceEndpoint,
        catalog_id: Option<String>,
        warehouse: &str,
        props: HashMap<String, String>,
    ) -> GlueCatalog {
        let file_io = FileIOBuilder::new(Arc::new(
            iceberg_storage_opendal::OpenDalResolvingStorageFactory::new(),
        ))
        .with_props(props)
        .build();
        GlueCatalog {
            endpoint,
            catalog_id,
            warehouse: warehouse.trim_end_matches('/').to_string(),
            file_io,
        }
    }

    async fn call(&self, target: &str, mut body: Value) -> Result<Value> {
        if let Some(id) = &self.catalog_id {
            body["CatalogId"] = id.clone().into();
        }
        aws_client::call(&self.endpoint, "glue", &format!("AWSGlue.{target}"), &body)
            .await
            .map_err(|e| glue_error(target, e))
    }

    /// The Glue table, if it exists.
    async fn glue_table(&self, table: &TableIdent) -> Result<Option<Value>> {
        let answer = self
            .call(
                "GetTable",
                json!({"DatabaseName": database(table.namespace())?, "Name": table.name()}),
            )
            .await;
        match answer {
            Ok(mut a) => Ok(Some(a["Table"].take())),
            Err(e) if e.kind() == ErrorKind::TableNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The table with the `VersionId` Glue has it at.
    async fn load(&self, ident: &TableIdent) -> Result<(Table, Option<String>)> {
        let glue = self.glue_table(ident).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::TableNotFound,
                format!("Glue has no table {ident}"),
            )
        })?;
        let parameters = &glue["Parameters"];
        if !parameters["table_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("ICEBERG"))
        {
            return Err(Error::new(
                ErrorKind::DataInvalid,
                format!("Glue table {ident} is not an Iceberg table (Parameters.table_type)"),
            ));
        }
        let location = parameters["metadata_location"].as_str().ok_or_else(|| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("Glue table {ident} has no Parameters.metadata_location"),
            )
        })?;
        let metadata = TableMetadata::read_from(&self.file_io, location).await?;
        let table = Table::builder()
            .file_io(self.file_io.clone())
            .metadata_location(location)
            .metadata(metadata)
            .identifier(ident.clone())
            .runtime(iceberg::Runtime::try_current()?)
            .build()?;
        Ok((table, glue["VersionId"].as_str().map(String::from)))
    }
}

/// A namespace as a Glue database name (one level).
fn database(namespace: &NamespaceIdent) -> Result<String> {
    match namespace.as_ref().as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::new(
            ErrorKind::DataInvalid,
            format!("Glue databases are one level, not {}", namespace.join(".")),
        )),
    }
}

#[async_trait]
impl Catalog for GlueCatalog {
    async fn list_namespaces(&self, _: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        unsupported("list databases")
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        let name = database(namespace)?;
        self.call(
            "CreateDatabase",
            json!({"DatabaseInput": {"Name": name, "Parameters": properties}}),
        )
        .await?;
        Ok(Namespace::with_properties(namespace.clone(), properties))
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        let answer = self
            .call("GetDatabase", json!({"Name": database(namespace)?}))
            .await?;
        let properties = answer["Database"]["Parameters"]
            .as_object()
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Namespace::with_properties(namespace.clone(), properties))
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        match self.get_namespace(namespace).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::TableNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn update_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> Result<()> {
        unsupported("update databases")
    }

    async fn drop_namespace(&self, _: &NamespaceIdent) -> Result<()> {
        unsupported("drop databases")
    }

    async fn list_tables(&self, _: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        unsupported("list tables")
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        mut creation: TableCreation,
    ) -> Result<Table> {
        let db = database(namespace)?;
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        let location = creation
            .location
            .clone()
            .unwrap_or_else(|| format!("{}/{db}.db/{}", self.warehouse, creation.name));
        creation.location = Some(location.clone());
        let metadata = TableMetadataBuilder::from_table_creation(creation)?
            .build()?
            .metadata;
        let metadata_location = MetadataLocation::new_with_metadata(&location, &metadata);
        metadata.write_to(&self.file_io, &metadata_location).await?;
        let input = table_input(
            ident.name(),
            &metadata,
            &metadata_location.to_string(),
            None,
        );
        self.call(
            "CreateTable",
            json!({"DatabaseName": db, "TableInput": input}),
        )
        .await?;
        Ok(self.load(&ident).await?.0)
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        Ok(self.load(table).await?.0)
    }

    async fn drop_table(&self, _: &TableIdent) -> Result<()> {
        unsupported("drop tables")
    }

    async fn purge_table(&self, _: &TableIdent) -> Result<()> {
        unsupported("purge tables")
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        Ok(self.glue_table(table).await?.is_some_and(|t| {
            t["Parameters"]["table_type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("ICEBERG"))
        }))
    }

    async fn rename_table(&self, _: &TableIdent, _: &TableIdent) -> Result<()> {
        unsupported("rename tables")
    }

    async fn register_table(&self, _: &TableIdent, _: String) -> Result<Table> {
        unsupported("register tables")
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let ident = commit.identifier().clone();
        let (current, version_id) = self.load(&ident).await?;
        let previous = current.metadata_location_result()?.to_string();
        let staged = commit.apply(current)?;
        let location: MetadataLocation = staged.metadata_location_result()?.parse()?;
        staged.metadata().write_to(&self.file_io, &location).await?;
        let mut body = json!({
            "DatabaseName": database(ident.namespace())?,
            "TableInput": table_input(
                ident.name(),
                staged.metadata(),
                &location.to_string(),
                Some(&previous),
            ),
            "SkipArchive": true,
        });
        if let Some(v) = version_id {
            body["VersionId"] = v.into();
        }
        self.call("UpdateTable", body).await?;
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{ListType, MapType, NestedField, StructType};

    #[test]
    fn columns_are_described_in_hive_types() {
        let p = |t| Type::Primitive(t);
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "id", p(PrimitiveType::Long)).into(),
                NestedField::optional(2, "at", p(PrimitiveType::Timestamptz)).into(),
                NestedField::optional(
                    3,
                    "tags",
                    Type::List(ListType::new(
                        NestedField::list_element(4, p(PrimitiveType::String), false).into(),
                    )),
                )
                .into(),
                NestedField::optional(
                    5,
                    "m",
                    Type::Map(MapType::new(
                        NestedField::map_key_element(6, p(PrimitiveType::String)).into(),
                        NestedField::map_value_element(
                            7,
                            p(PrimitiveType::Decimal {
                                precision: 10,
                                scale: 2,
                            }),
                            false,
                        )
                        .into(),
                    )),
                )
                .into(),
                NestedField::optional(
                    8,
                    "geo",
                    Type::Struct(StructType::new(vec![
                        NestedField::optional(9, "lat", p(PrimitiveType::Double)).into(),
                    ])),
                )
                .into(),
            ])
            .build()
            .unwrap();
        let types: Vec<_> = columns(&schema)
            .iter()
            .map(|c| c["Type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            types,
            [
                "bigint",
                "timestamp",
                "array<string>",
                "map<string,decimal(10,2)>",
                "struct<lat:double>"
            ]
        );
    }

    #[test]
    fn glue_errors_become_icebergs() {
        let e = |code: &str| {
            glue_error(
                "UpdateTable",
                CallError::Service {
                    code: code.into(),
                    message: "m".into(),
                },
            )
        };
        assert_eq!(
            e("EntityNotFoundException").kind(),
            ErrorKind::TableNotFound
        );
        let conflict = e("ConcurrentModificationException");
        assert!(conflict.kind() == ErrorKind::CatalogCommitConflicts && conflict.retryable());
        assert_eq!(e("InternalServiceException").kind(), ErrorKind::Unexpected);
    }
}
