//! Rules the destinations reached over HTTP (OpenSearch, Splunk, HTTP endpoints) share: their
//! endpoint URL, `RetryOptions`, backup bucket and mode, processing, and credentials given
//! inline or in a secret (`SecretsManagerConfiguration`). Pure.

use std::time::Duration;

use serde_json::Value;

use super::fields::{BufferingHints, FieldError, buffering_limits, check_range};
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

/// The fields every destination reached over HTTP has, as given.
pub(crate) struct Common<'a> {
    pub retry_options: &'a Option<Value>,
    pub s3_backup_mode: Option<&'a str>,
    pub buffering_hints: &'a Option<BufferingHints>,
    pub processing_configuration: &'a Option<Value>,
    pub s3_configuration: &'a Option<ExtendedS3DestinationConfiguration>,
}

/// A destination's rules for them: `RetryOptions`' default, the `S3BackupMode` names
/// (failed-only, all), and `BufferingHints`' defaults and maxima (MB, seconds).
pub(crate) struct CommonRules {
    pub retry_default: i64,
    pub modes: (&'static str, &'static str),
    pub buffering_default: (i64, i64),
    pub buffering_max: (i64, i64),
}

/// Those fields validated.
pub(crate) struct CommonSpec {
    pub retry: Duration,
    pub backup_all: bool,
    pub limits: crate::buffer::Limits,
    pub processing: Option<ProcessingSpec>,
    pub backup: Option<S3Spec>,
}

impl Common<'_> {
    /// Validates them under `path`, in the order their errors are reported.
    pub(crate) fn validate(
        &self,
        rules: &CommonRules,
        path: &str,
        errors: &mut Vec<FieldError>,
    ) -> CommonSpec {
        CommonSpec {
            retry: retry_duration(self.retry_options, path, rules.retry_default, errors),
            backup_all: backup_all(self.s3_backup_mode, path, rules.modes, errors),
            limits: buffering_limits(
                self.buffering_hints,
                path,
                rules.buffering_default,
                rules.buffering_max,
                errors,
            ),
            processing: processing(self.processing_configuration, path, errors),
            backup: backup_s3(self.s3_configuration, path, errors),
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

/// An `https://` URL of at most `max` characters; `http://` only to a loopback address
/// (hosepipe allows it there: a receiver on the same machine, tests).
pub(crate) fn secure_url(url: &str, max: usize) -> Result<(), String> {
    if url.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url:?} names no host"))?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "{url:?} must be an https:// URL (http:// only to a loopback address)"
        )),
    }
}

/// A credential given inline, or held in a secret (`SecretsManagerConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Inline(String),
    Secret(SecretRef),
}

/// Where a secret is and which of its JSON fields holds the credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub source: SecretSource,
    /// `api_key` (HTTP endpoint), `hec_token` (Splunk).
    pub field: &'static str,
}

/// A secret's home.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// `arn:aws:secretsmanager:…`: read with Secrets Manager's `GetSecretValue`.
    SecretsManager(String),
    /// `file:///path` (hosepipe's own): a local file holding the same JSON.
    File(std::path::PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::SecretsManager(arn) => f.write_str(arn),
            SecretSource::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// The credential of a destination: `inline` (found at `inline_at` under `path`), or the
/// `secret_field` of the secret `SecretsManagerConfiguration` names, when it is enabled (the
/// inline one must then be absent). `required`: one of them must be given.
pub(crate) fn credential(
    inline: Option<&str>,
    secrets: &Option<Value>,
    (inline_at, secret_field): (&[&str], &'static str),
    path: &str,
    required: bool,
    errors: &mut Vec<FieldError>,
) -> Option<Credential> {
    let inline_path = [&[path], inline_at].concat();
    let enabled = secrets
        .as_ref()
        .is_some_and(|v| v.get("Enabled").and_then(Value::as_bool) == Some(true));
    if !enabled {
        if required && inline.is_none() {
            errors.push(FieldError::new(
                &inline_path,
                "is required unless SecretsManagerConfiguration is enabled",
            ));
        }
        return inline.map(|k| Credential::Inline(k.to_string()));
    }
    if inline.is_some() {
        errors.push(FieldError::new(
            &inline_path,
            "must be absent when SecretsManagerConfiguration is enabled",
        ));
    }
    let arn_path = [path, "secrets_manager_configuration", "secret_arn"];
    let arn = secrets
        .as_ref()
        .and_then(|v| v.get("SecretARN"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let source = if let Some(file) = arn.strip_prefix("file://") {
        Some(SecretSource::File(file.into()))
    } else if arn.starts_with("arn:") && arn.split(':').nth(2) == Some("secretsmanager") {
        Some(SecretSource::SecretsManager(arn.to_string()))
    } else {
        None
    };
    match source {
        Some(source) if arn.len() <= 2048 => Some(Credential::Secret(SecretRef {
            source,
            field: secret_field,
        })),
        _ => {
            errors.push(FieldError::new(
                &arn_path,
                match arn {
                    "" => "is required when SecretsManagerConfiguration is enabled".to_string(),
                    other => format!(
                        "{other:?} is not a Secrets Manager ARN (arn:aws:secretsmanager:…) or a file:///path"
                    ),
                },
            ));
            None
        }
    }
}
