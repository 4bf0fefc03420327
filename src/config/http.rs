//! Rules the destinations reached over HTTP (OpenSearch, Splunk) share: their endpoint URL,
//! `RetryOptions`, backup bucket and mode, and processing. Pure.

use std::time::Duration;

use serde_json::Value;

use super::fields::{FieldError, check_range};
use super::processing::ProcessingSpec;
use super::s3::{ExtendedS3DestinationConfiguration, S3Spec, validate_s3};

/// An http:// or https:// endpoint URL (`field` of `path`), without a trailing `/`.
pub(crate) fn endpoint(
    url: &Option<String>,
    path: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> String {
    match url.as_deref() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.trim_end_matches('/').to_string()
        }
        Some(url) => {
            errors.push(FieldError::new(
                &[path, field],
                format!("{url:?} is not an http:// or https:// URL"),
            ));
            String::new()
        }
        None => {
            errors.push(FieldError::new(&[path, field], "is required"));
            String::new()
        }
    }
}

/// `S3BackupMode`: `true` for the all-records mode (`modes` = (failed-only, all)).
pub(crate) fn backup_all(
    mode: Option<&str>,
    path: &str,
    (failed_only, all): (&str, &str),
    errors: &mut Vec<FieldError>,
) -> bool {
    match mode {
        None => false,
        Some(m) if m == failed_only => false,
        Some(m) if m == all => true,
        Some(other) => {
            errors.push(FieldError::new(
                &[path, "s3_backup_mode"],
                format!("{other:?} is not one of {failed_only}, {all}"),
            ));
            false
        }
    }
}

/// `ProcessingConfiguration`, without `MetadataExtraction` (dynamic partitioning is S3's).
pub(crate) fn processing(
    block: &Option<Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ProcessingSpec> {
    let processing =
        super::processing::validate(block, &[path, "processing_configuration"], errors);
    if processing
        .as_ref()
        .is_some_and(|p| p.metadata_query.is_some())
    {
        errors.push(FieldError::new(
            &[path, "processing_configuration"],
            "MetadataExtraction needs dynamic partitioning, which only S3 destinations have",
        ));
    }
    processing
}

/// `RetryOptions.DurationInSeconds` (0-7200) or `default`.
pub(crate) fn retry_duration(
    block: &Option<Value>,
    path: &str,
    default: i64,
    errors: &mut Vec<FieldError>,
) -> Duration {
    let field = [path, "retry_options", "duration_in_seconds"];
    let secs = match block.as_ref().and_then(|r| r.get("DurationInSeconds")) {
        None | Some(Value::Null) => default,
        Some(v) => v.as_i64().unwrap_or_else(|| {
            errors.push(FieldError::new(
                &field,
                format!("{v} is not a number of seconds"),
            ));
            default
        }),
    };
    check_range(errors, &field, secs, 0..=7200);
    Duration::from_secs(secs.clamp(0, 7200) as u64)
}

/// The backup bucket block (`S3Configuration`), required for these destinations.
pub(crate) fn backup_s3(
    raw: &Option<ExtendedS3DestinationConfiguration>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<S3Spec> {
    match raw {
        None => {
            errors.push(FieldError::new(&[path, "s3_configuration"], "is required"));
            None
        }
        Some(s3) => {
            let at = format!("{path}.s3_configuration");
            let before = errors.len();
            let spec = validate_s3(s3, &at, true, errors);
            // Report `a.s3_configuration.b` as three segments, like every other path.
            for e in &mut errors[before..] {
                if e.path.first() == Some(&at) {
                    e.path
                        .splice(0..1, [path.to_string(), "s3_configuration".into()]);
                }
            }
            spec
        }
    }
}
