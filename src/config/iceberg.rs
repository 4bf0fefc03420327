//! `IcebergDestinationConfiguration`: validating it into an [`IcebergSpec`]. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{BufferingHints, FieldError, enabled, strip_nulls};
use super::http;
use super::processing::ProcessingSpec;
use super::s3::{ExtendedS3DestinationConfiguration, S3Spec};
use crate::buffer::Limits;

/// The Iceberg destination block, as the API spells it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct IcebergDestinationConfiguration {
    pub destination_table_configuration_list: Option<Vec<DestinationTableConfiguration>>,
    pub schema_evolution_configuration: Option<Value>,
    pub table_creation_configuration: Option<Value>,
    pub buffering_hints: Option<BufferingHints>,
    pub cloud_watch_logging_options: Option<Value>,
    pub processing_configuration: Option<Value>,
    #[serde(rename = "S3BackupMode")]
    pub s3_backup_mode: Option<String>,
    pub retry_options: Option<Value>,
    #[serde(rename = "RoleARN")]
    pub role_arn: Option<String>,
    pub append_only: Option<bool>,
    pub catalog_configuration: Option<CatalogConfiguration>,
    #[serde(rename = "S3Configuration")]
    pub s3_configuration: Option<ExtendedS3DestinationConfiguration>,
}

/// One of `DestinationTableConfigurationList`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DestinationTableConfiguration {
    pub destination_table_name: Option<String>,
    pub destination_database_name: Option<String>,
    pub unique_keys: Option<Vec<String>>,
    pub partition_spec: Option<PartitionSpecConfiguration>,
    pub s3_error_output_prefix: Option<String>,
}

/// `PartitionSpec`: identity partition fields by source column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PartitionSpecConfiguration {
    pub identity: Option<Vec<PartitionField>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PartitionField {
    pub source_name: Option<String>,
}

/// `CatalogConfiguration`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CatalogConfiguration {
    #[serde(rename = "CatalogARN")]
    pub catalog_arn: Option<String>,
    pub warehouse_location: Option<String>,
}

/// A validated Iceberg destination.
#[derive(Debug, Clone)]
pub struct IcebergSpec {
    /// `CatalogARN`, as given.
    pub catalog_arn: String,
    /// The catalog it names: `None` for `…:catalog` (the daemon's default catalog), else the
    /// name after `catalog/` (a catalog of `[iceberg.catalogs]`).
    pub catalog: Option<String>,
    /// `WarehouseLocation` (`s3://bucket/prefix`): where new tables go.
    pub warehouse: Option<String>,
    pub tables: Vec<TableSpec>,
    pub schema_evolution: bool,
    pub table_creation: bool,
    pub append_only: bool,
    pub retry: Duration,
    /// `S3BackupMode` `AllData`.
    pub backup_all: bool,
    pub backup: S3Spec,
    pub limits: Limits,
    pub processing: Option<ProcessingSpec>,
    pub raw: IcebergDestinationConfiguration,
}

/// One configured destination table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub database: String,
    pub table: String,
    pub unique_keys: Vec<String>,
    /// `PartitionSpec.Identity`'s source columns, in order (used when the table is created).
    pub identity: Vec<String>,
    /// `S3ErrorOutputPrefix`, as given.
    pub error_prefix_text: Option<String>,
    /// This table's records that fail go under it in the error-output bucket (in place of
    /// `S3Configuration`'s `ErrorOutputPrefix`): `<prefix><error-output-type>/yyyy/MM/dd/HH/`,
    /// or the prefix as written when it has expressions (then with the error-output type).
    pub error_prefix: Option<crate::encode::prefix::Template>,
}

impl IcebergSpec {
    /// The configured table `database.table`.
    pub fn table(&self, database: &str, table: &str) -> Option<&TableSpec> {
        self.tables
            .iter()
            .find(|t| t.database == database && t.table == table)
    }

    /// The table every record goes to when records carry no route: the only configured one.
    pub fn single_table(&self) -> Option<&TableSpec> {
        match self.tables.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// `arn:<partition>:glue:<region>:<account>:catalog[/name[/name]]`: the catalog name after
/// `catalog/` (joined with `/`), or `None` for the account's default catalog.
fn catalog_name(arn: &str) -> Result<Option<String>, String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let shape = || {
        format!(
            "{arn:?} is not a Glue catalog ARN (arn:aws:glue:<region>:<account>:catalog[/<name>])"
        )
    };
    match parts.as_slice() {
        ["arn", partition, "glue", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            match resource.strip_prefix("catalog") {
                Some("") => Ok(None),
                Some(rest) => {
                    let name = rest.strip_prefix('/').ok_or_else(shape)?;
                    let segments: Vec<&str> = name.split('/').collect();
                    let fine = |s: &&str| {
                        !s.is_empty()
                            && s.bytes().all(|b| {
                                b.is_ascii_lowercase()
                                    || b.is_ascii_digit()
                                    || b == b'_'
                                    || b == b'-'
                            })
                    };
                    match segments.len() <= 2 && segments.iter().all(fine) {
                        true => Ok(Some(name.to_string())),
                        false => Err(shape()),
                    }
                }
                None => Err(shape()),
            }
        }
        _ => Err(shape()),
    }
}

/// Validates an Iceberg block found at `path`.
pub fn validate(
    raw: &IcebergDestinationConfiguration,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IcebergSpec> {
    let before = errors.len();
    let catalog_config = raw.catalog_configuration.clone().unwrap_or_default();
    let catalog_arn = catalog_config.catalog_arn.clone().unwrap_or_default();
    let catalog = match (&raw.catalog_configuration, catalog_arn.as_str()) {
        (None, _) => {
            errors.push(FieldError::new(
                &[path, "catalog_configuration"],
                "is required",
            ));
            None
        }
        (Some(_), "") => {
            errors.push(FieldError::new(
                &[path, "catalog_configuration", "catalog_arn"],
                "is required",
            ));
            None
        }
        (Some(_), arn) => catalog_name(arn)
            .map_err(|why| {
                errors.push(FieldError::new(
                    &[path, "catalog_configuration", "catalog_arn"],
                    why,
                ))
            })
            .ok()
            .flatten(),
    };
    if let Some(w) = &catalog_config.warehouse_location {
        let bucket = w
            .strip_prefix("s3://")
            .map(|r| r.split('/').next().unwrap_or(""));
        if bucket.is_none_or(|b| b.len() < 3) || w.len() > 2048 {
            errors.push(FieldError::new(
                &[path, "catalog_configuration", "warehouse_location"],
                format!("{w:?} is not an s3://bucket/prefix location (at most 2048 characters)"),
            ));
        }
    }
    let tables = validate_tables(raw, path, errors);
    let append_only = raw.append_only.unwrap_or(false);
    if !append_only && tables.iter().any(|t| !t.unique_keys.is_empty()) {
        errors.push(FieldError::new(
            &[path, "append_only"],
            "must be true: hosepipe writes inserts only. Update and delete (UniqueKeys) need \
             equality-delete commits, which the Apache Iceberg crates it builds on (0.10) cannot \
             make yet",
        ));
    }
    for (field, block) in [
        (
            "schema_evolution_configuration",
            &raw.schema_evolution_configuration,
        ),
        (
            "table_creation_configuration",
            &raw.table_creation_configuration,
        ),
    ] {
        if let Some(v) = block
            && !matches!(v.get("Enabled"), Some(Value::Bool(_)))
        {
            errors.push(FieldError::new(
                &[path, field, "enabled"],
                "is required (true or false)",
            ));
        }
    }
    let table_creation = enabled(&raw.table_creation_configuration);
    let common = http::Common {
        retry_options: &raw.retry_options,
        s3_backup_mode: raw.s3_backup_mode.as_deref(),
        buffering_hints: &raw.buffering_hints,
        // Validated below: MetadataExtraction routes records to tables here.
        processing_configuration: &None,
        s3_configuration: &raw.s3_configuration,
    }
    .validate(
        &http::CommonRules {
            retry_default: 300,
            modes: ("FailedDataOnly", "AllData"),
            buffering_default: (5, 300),
            buffering_max: (128, 900),
        },
        path,
        errors,
    );
    let processing = super::processing::validate(
        &raw.processing_configuration,
        &[path, "processing_configuration"],
        errors,
    );
    if errors.len() > before {
        return None;
    }
    Some(IcebergSpec {
        catalog_arn,
        catalog,
        warehouse: catalog_config.warehouse_location.clone(),
        tables,
        schema_evolution: enabled(&raw.schema_evolution_configuration),
        table_creation,
        append_only,
        retry: common.retry,
        backup_all: common.backup_all,
        backup: common.backup?,
        limits: common.limits,
        processing,
        raw: raw.clone(),
    })
}

/// `DestinationTableConfigurationList`: names 1-1024 characters, no table twice.
fn validate_tables(
    raw: &IcebergDestinationConfiguration,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<TableSpec> {
    let mut out: Vec<TableSpec> = Vec::new();
    for (i, t) in raw
        .destination_table_configuration_list
        .iter()
        .flatten()
        .enumerate()
    {
        let i = i.to_string();
        let at = |field: &str| {
            [path, "destination_table_configuration_list", &i, field].map(String::from)
        };
        let mut err = |field: &str, message: String| {
            let p = at(field);
            errors.push(FieldError::new(&p.each_ref().map(String::as_str), message));
        };
        let mut name = |field: &str, v: &Option<String>| match v {
            Some(v) if (1..=1024).contains(&v.chars().count()) => v.clone(),
            _ => {
                err(field, "is required (1-1024 characters)".into());
                String::new()
            }
        };
        let table = TableSpec {
            table: name("destination_table_name", &t.destination_table_name),
            database: name("destination_database_name", &t.destination_database_name),
            unique_keys: t.unique_keys.clone().unwrap_or_default(),
            identity: t
                .partition_spec
                .iter()
                .flat_map(|p| p.identity.iter().flatten())
                .map(|f| f.source_name.clone().unwrap_or_default())
                .collect(),
            error_prefix_text: t.s3_error_output_prefix.clone(),
            error_prefix: None,
        };
        let mut table = table;
        if let Some(text) = table.error_prefix_text.as_deref().filter(|t| !t.is_empty()) {
            use crate::encode::prefix::Template;
            let parsed = match text.contains("!{") {
                true => Template::for_error_prefix(Some(text), ""),
                false => Template::for_error_prefix(None, text),
            };
            match parsed {
                Ok(t) => table.error_prefix = Some(t),
                Err(why) => err("s3_error_output_prefix", why),
            }
        }
        if table
            .unique_keys
            .iter()
            .any(|k| !(1..=1024).contains(&k.chars().count()))
        {
            err("unique_keys", "each key must be 1-1024 characters".into());
        }
        if table
            .identity
            .iter()
            .any(|k| !(1..=1024).contains(&k.chars().count()))
        {
            err(
                "partition_spec",
                "each Identity field needs a SourceName (1-1024 characters)".into(),
            );
        }
        if table
            .error_prefix_text
            .as_ref()
            .is_some_and(|p| p.chars().count() > 1024)
        {
            err(
                "s3_error_output_prefix",
                "must be at most 1024 characters".into(),
            );
        }
        if out
            .iter()
            .any(|o| o.database == table.database && o.table == table.table)
        {
            err(
                "destination_table_name",
                format!("{}.{} is configured twice", table.database, table.table),
            );
        }
        out.push(table);
    }
    out
}

impl IcebergSpec {
    /// `IcebergDestinationDescription`, with the defaults in force filled in.
    pub fn description(&self) -> (&'static str, Value) {
        let (spec, raw) = (self, &self.raw);
        let tables: Vec<Value> = spec
            .tables
            .iter()
            .map(|t| {
                let identity: Vec<Value> =
                    t.identity.iter().map(|s| json!({"SourceName": s})).collect();
                json!({
                    "DestinationDatabaseName": t.database,
                    "DestinationTableName": t.table,
                    "UniqueKeys": if t.unique_keys.is_empty() { Value::Null } else { json!(t.unique_keys) },
                    "PartitionSpec": if identity.is_empty() { Value::Null } else { json!({"Identity": identity}) },
                    "S3ErrorOutputPrefix": t.error_prefix_text,
                })
            })
            .collect();
        let body = strip_nulls(json!({
            "DestinationTableConfigurationList": tables,
            "SchemaEvolutionConfiguration": { "Enabled": spec.schema_evolution },
            "TableCreationConfiguration": { "Enabled": spec.table_creation },
            "BufferingHints": {
                "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
                "IntervalInSeconds": spec.limits.interval.as_secs(),
            },
            "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
                .unwrap_or_else(|| json!({"Enabled": false})),
            "ProcessingConfiguration": raw.processing_configuration,
            "S3BackupMode": if spec.backup_all { "AllData" } else { "FailedDataOnly" },
            "RetryOptions": { "DurationInSeconds": spec.retry.as_secs() },
            "RoleARN": raw.role_arn,
            "AppendOnly": spec.append_only,
            "CatalogConfiguration": {
                "CatalogARN": spec.catalog_arn,
                "WarehouseLocation": spec.warehouse,
            },
            "S3DestinationDescription": spec.backup.legacy_description(),
        }));
        ("IcebergDestinationDescription", body)
    }
}

#[cfg(test)]
mod tests {
    use super::catalog_name;
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};

    fn input(block: serde_json::Value) -> CreateDeliveryStreamInput {
        serde_json::from_value(serde_json::json!({ "IcebergDestinationConfiguration": block }))
            .unwrap()
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "RoleARN": "arn:aws:iam::123456789012:role/r",
            "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:123456789012:catalog",
                                     "WarehouseLocation": "s3://lake/warehouse"},
            "DestinationTableConfigurationList": [
                {"DestinationDatabaseName": "db", "DestinationTableName": "events"}],
            "S3Configuration": {"RoleARN": "r", "BucketARN": "arn:aws:s3:::errors"},
        })
    }

    #[test]
    fn defaults_follow_firehose() {
        let DestinationSpec::Iceberg(spec) = validate("s", &input(minimal())).unwrap().destination
        else {
            panic!("an Iceberg destination")
        };
        assert_eq!(spec.catalog, None);
        assert_eq!(spec.limits.size_bytes, 5 * 1024 * 1024);
        assert_eq!(spec.limits.interval.as_secs(), 300);
        assert_eq!(spec.retry.as_secs(), 300);
        assert!(!spec.schema_evolution && !spec.table_creation && !spec.append_only);
        assert_eq!(spec.single_table().unwrap().table, "events");
        let (field, desc) = spec.description();
        assert_eq!(field, "IcebergDestinationDescription");
        assert_eq!(
            desc["DestinationTableConfigurationList"][0]["DestinationTableName"],
            "events"
        );
        assert_eq!(desc["S3BackupMode"], "FailedDataOnly");
    }

    #[test]
    fn catalog_arns_name_glue_or_a_hosepipe_catalog() {
        assert_eq!(
            catalog_name("arn:aws:glue:us-east-1:123456789012:catalog"),
            Ok(None)
        );
        assert_eq!(
            catalog_name("arn:aws:glue:us-east-1:123456789012:catalog/lake"),
            Ok(Some("lake".into()))
        );
        assert_eq!(
            catalog_name("arn:aws:glue:us-east-1:123456789012:catalog/s3tablescatalog/bkt"),
            Ok(Some("s3tablescatalog/bkt".into()))
        );
        for bad in [
            "arn:aws:glue:us-east-1:1234:catalog",
            "arn:aws:s3:us-east-1:123456789012:catalog",
            "arn:aws:glue:us-east-1:123456789012:catalogue",
            "arn:aws:glue:us-east-1:123456789012:catalog/Upper",
            "catalog",
        ] {
            assert!(catalog_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_api_rules_hold() {
        let paths = |block: serde_json::Value| -> Vec<String> {
            validate("s", &input(block))
                .unwrap_err()
                .iter()
                .map(|e| e.api_path())
                .collect()
        };
        let at = |f: &str| format!("IcebergDestinationConfiguration.{f}");
        let mut block = minimal();
        block["CatalogConfiguration"]["CatalogARN"] = "arn:aws:glue:x:1:catalog".into();
        block["CatalogConfiguration"]["WarehouseLocation"] = "/tmp/w".into();
        block["DestinationTableConfigurationList"] = serde_json::json!([
            {"DestinationDatabaseName": "db", "DestinationTableName": "t", "UniqueKeys": ["id"]},
            {"DestinationDatabaseName": "db", "DestinationTableName": "t"},
            {"DestinationDatabaseName": "", "DestinationTableName": "u",
             "PartitionSpec": {"Identity": [{}]}},
        ]);
        block["BufferingHints"] = serde_json::json!({"SizeInMBs": 129});
        block["S3BackupMode"] = "AllDocuments".into();
        assert_eq!(
            paths(block),
            [
                "CatalogConfiguration.CatalogARN",
                "CatalogConfiguration.WarehouseLocation",
                "DestinationTableConfigurationList.1.DestinationTableName",
                "DestinationTableConfigurationList.2.DestinationDatabaseName",
                "DestinationTableConfigurationList.2.PartitionSpec",
                "AppendOnly",
                "S3BackupMode",
                "BufferingHints.SizeInMBs",
            ]
            .map(at)
        );
        let mut append_only = minimal();
        append_only["AppendOnly"] = true.into();
        append_only["DestinationTableConfigurationList"][0]["UniqueKeys"] =
            serde_json::json!(["id"]);
        assert!(validate("s", &input(append_only)).is_ok());
    }

    #[test]
    fn the_config_file_spells_it_in_snake_case() {
        let table: toml::Value = toml::from_str(
            r#"
catalog_configuration = { catalog_arn = "arn:aws:glue:us-east-1:123456789012:catalog/lake", warehouse_location = "s3://lake/wh" }
destination_table_configuration_list = [{ destination_database_name = "db", destination_table_name = "t", partition_spec = { identity = [{ source_name = "day" }] } }]
schema_evolution_configuration = { enabled = true }
s3_configuration = { bucket_arn = "arn:aws:s3:::errors" }
"#,
        )
        .unwrap();
        let mut stream = toml::map::Map::new();
        stream.insert("iceberg_destination_configuration".into(), table);
        let input = crate::config::parse_stream_table("s", &toml::Value::Table(stream)).unwrap();
        let DestinationSpec::Iceberg(spec) = validate("s", &input).unwrap().destination else {
            panic!("an Iceberg destination")
        };
        assert_eq!(spec.catalog.as_deref(), Some("lake"));
        assert!(spec.schema_evolution);
        assert_eq!(spec.tables[0].identity, ["day"]);
    }
}
