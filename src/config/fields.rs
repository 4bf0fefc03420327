//! Helpers every destination's validation shares: where an error is and what it says,
//! ranges, `Enabled` flags and `BufferingHints`. Imports nothing else from `config/`, so the
//! destination files and `stream` never import each other in a circle.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::buffer::Limits;

/// One validation failure: where (snake_case path segments) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: Vec<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        FieldError {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
        }
    }

    /// `extended_s3_destination_configuration.buffering_hints.size_in_mbs: …` (config style).
    pub fn config_path(&self) -> String {
        self.path.join(".")
    }

    /// `ExtendedS3DestinationConfiguration.BufferingHints.SizeInMBs` (API style).
    pub fn api_path(&self) -> String {
        self.path
            .iter()
            .map(|s| super::names::snake_to_api(s))
            .collect::<Vec<_>>()
            .join(".")
            // The one field the API spells `Url` rather than `URL`.
            .replace("EndpointConfiguration.URL", "EndpointConfiguration.Url")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct BufferingHints {
    #[serde(rename = "SizeInMBs")]
    pub size_in_mbs: Option<i64>,
    pub interval_in_seconds: Option<i64>,
}

/// True when a processing/conversion/partitioning block is present and not disabled.
pub fn enabled(block: &Option<Value>) -> bool {
    match block {
        None | Some(Value::Null) => false,
        Some(v) => v.get("Enabled").and_then(Value::as_bool).unwrap_or(true),
    }
}

/// `BufferingHints` found under `path`: sizes in MB, intervals in seconds, each `(size,
/// interval)`; a value out of range is an error (and is clamped into it).
pub(crate) fn buffering_limits(
    hints: &Option<BufferingHints>,
    path: &str,
    default: (i64, i64),
    max: (i64, i64),
    errors: &mut Vec<FieldError>,
) -> Limits {
    let hints = hints.clone().unwrap_or_default();
    let size = hints.size_in_mbs.unwrap_or(default.0);
    let interval = hints.interval_in_seconds.unwrap_or(default.1);
    check_range(
        errors,
        &[path, "buffering_hints", "size_in_mbs"],
        size,
        1..=max.0,
    );
    check_range(
        errors,
        &[path, "buffering_hints", "interval_in_seconds"],
        interval,
        0..=max.1,
    );
    Limits {
        size_bytes: size.clamp(1, max.0) as u64 * 1024 * 1024,
        interval: Duration::from_secs(interval.clamp(0, max.1) as u64),
    }
}

pub(crate) fn check_range(
    errors: &mut Vec<FieldError>,
    path: &[&str],
    value: i64,
    range: std::ops::RangeInclusive<i64>,
) {
    if !range.contains(&value) {
        errors.push(FieldError::new(
            path,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
}

/// `v` without its null fields (at any depth): a description leaves out what is not set.
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
