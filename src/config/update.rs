//! `UpdateDestination`'s updates applied to a stream's definition: each field given replaces
//! the stream's. Pure.

use serde_json::Value;

use super::stream::{self, CreateDeliveryStreamInput, ExtendedS3DestinationConfiguration};

/// An `UpdateDestination`'s update, of the stream's kind of destination.
#[derive(Debug, Clone)]
pub enum DestinationUpdate {
    /// `ExtendedS3DestinationUpdate` / `S3DestinationUpdate`.
    S3(Box<ExtendedS3DestinationConfiguration>),
    /// `HttpEndpointDestinationUpdate`, as given.
    HttpEndpoint(Value),
    /// `IcebergDestinationUpdate`, as given.
    Iceberg(Value),
}

impl DestinationUpdate {
    /// Applies the update to `input`; why not, when it cannot be.
    pub fn apply(&self, input: &mut CreateDeliveryStreamInput) -> Result<(), String> {
        match self {
            DestinationUpdate::S3(update) => apply_s3_update(input, update),
            DestinationUpdate::HttpEndpoint(update) => merge_into(
                &mut input.http_endpoint_destination_configuration,
                update,
                ("HttpEndpointDestinationUpdate", "an HTTP endpoint"),
            ),
            DestinationUpdate::Iceberg(update) => merge_into(
                &mut input.iceberg_destination_configuration,
                update,
                ("IcebergDestinationUpdate", "Iceberg"),
            ),
        }
    }
}

/// Merges `update` (the API's `what`) into the stream's block, which must be of `kind`.
fn merge_into<T: serde::Serialize + serde::de::DeserializeOwned>(
    block: &mut Option<T>,
    update: &Value,
    (what, kind): (&str, &str),
) -> Result<(), String> {
    let base = block
        .as_ref()
        .ok_or_else(|| format!("this stream's destination is not {kind}"))?;
    *block = Some(merge_fields(base, update, what)?);
    Ok(())
}

/// An `UpdateDestination` of an S3 stream applied to its definition.
fn apply_s3_update(
    input: &mut CreateDeliveryStreamInput,
    update: &ExtendedS3DestinationConfiguration,
) -> Result<(), String> {
    if input.extended_s3_destination_configuration.is_none()
        && input.s3_destination_configuration.is_none()
    {
        return Err("this stream's destination is not S3; hosepipe updates S3 and HTTP endpoint destinations (delete and create the others)".into());
    }
    let legacy = input.extended_s3_destination_configuration.is_none();
    let base = input
        .extended_s3_destination_configuration
        .clone()
        .or_else(|| input.s3_destination_configuration.clone())
        .unwrap_or_default();
    let merged = merge(&base, update)?;
    match (
        stream::enabled(&base.dynamic_partitioning_configuration),
        stream::enabled(&merged.dynamic_partitioning_configuration),
    ) {
        (false, true) => {
            return Err(
                "Dynamic partitioning can only be enabled when the delivery stream is created"
                    .into(),
            );
        }
        (true, false) => {
            return Err("Dynamic partitioning cannot be disabled once enabled".into());
        }
        _ => {}
    }
    if legacy {
        input.s3_destination_configuration = Some(merged);
    } else {
        input.extended_s3_destination_configuration = Some(merged);
    }
    Ok(())
}

/// An update (`HttpEndpointDestinationUpdate`, `IcebergDestinationUpdate`, named `what`)
/// merged into the block it updates: each field given replaces the stream's, and the fields of
/// `S3Update` (or `S3Configuration`) replace those of `S3Configuration`.
fn merge_fields<T: serde::Serialize + serde::de::DeserializeOwned>(
    base: &T,
    update: &Value,
    what: &str,
) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).expect("config serialises");
    let Value::Object(fields) = update else {
        return Err(format!("{what} must be an object"));
    };
    for (k, v) in fields {
        if v.is_null() {
            continue;
        }
        match (k.as_str(), v) {
            ("S3Update" | "S3Configuration", Value::Object(s3)) => {
                let backup = &mut merged["S3Configuration"];
                if !backup.is_object() {
                    *backup = Value::Object(Default::default());
                }
                for (sk, sv) in s3 {
                    if !sv.is_null() {
                        backup[sk] = sv.clone();
                    }
                }
            }
            _ => merged[k] = v.clone(),
        }
    }
    serde_json::from_value(merged).map_err(|e| format!("{what}: {e}"))
}

/// Overlays the non-null top-level fields of `update` on `base` (UpdateDestination's merge).
fn merge(
    base: &ExtendedS3DestinationConfiguration,
    update: &ExtendedS3DestinationConfiguration,
) -> Result<ExtendedS3DestinationConfiguration, String> {
    let mut merged = serde_json::to_value(base).expect("config serialises");
    let update = serde_json::to_value(update).expect("config serialises");
    if let (Value::Object(m), Value::Object(u)) = (&mut merged, update) {
        for (k, v) in u {
            if !v.is_null() {
                m.insert(k, v);
            }
        }
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}
