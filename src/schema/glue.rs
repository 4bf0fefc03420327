//! Reading a table's columns from the AWS Glue Data Catalog (`GetTable`, or `GetTableVersion`
//! for a pinned `VersionId`).

use serde_json::{Value, json};

use super::{SchemaError, TableRef, TableSchema};
use crate::aws_client::{self, ServiceEndpoint};

/// Fetches `table`'s columns (`StorageDescriptor.Columns`) from Glue.
pub async fn get_table(
    endpoint: &ServiceEndpoint,
    table: &TableRef,
) -> Result<TableSchema, SchemaError> {
    // GetTable names the table `Name`; GetTableVersion, `TableName`.
    let mut body = json!({"DatabaseName": table.database});
    if let Some(id) = &table.catalog_id {
        body["CatalogId"] = id.clone().into();
    }
    let pinned = table
        .version_id
        .as_deref()
        .filter(|v| !v.eq_ignore_ascii_case("LATEST"));
    let (target, pointer) = match pinned {
        Some(v) => {
            body["TableName"] = table.table.clone().into();
            body["VersionId"] = v.into();
            ("AWSGlue.GetTableVersion", "/TableVersion/Table")
        }
        None => {
            body["Name"] = table.table.clone().into();
            ("AWSGlue.GetTable", "/Table")
        }
    };
    let error = |message: String| SchemaError::Table {
        table: table.to_string(),
        message,
    };
    let answer = aws_client::call(endpoint, "glue", target, &body)
        .await
        .map_err(|e| error(format!("Glue {target} failed: {e}")))?;
    let columns = answer
        .pointer(pointer)
        .and_then(|t| t.pointer("/StorageDescriptor/Columns"))
        .and_then(Value::as_array)
        .ok_or_else(|| error("Glue's answer has no StorageDescriptor.Columns".into()))?;
    let pairs: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| {
            (
                c["Name"].as_str().unwrap_or_default(),
                c["Type"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    TableSchema::from_columns(table.clone(), pairs)
}
