//! `HttpEndpointDestinationConfiguration`: validating it into an [`HttpEndpointSpec`]. Pure.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{BufferingHints, FieldError, strip_nulls};
use super::http::{self, Credential};
use super::processing::ProcessingSpec;
use super::s3::{ExtendedS3DestinationConfiguration, S3Spec};
use crate::buffer::Limits;

/// The HTTP endpoint destination block, as the API spells it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HttpEndpointDestinationConfiguration {
    pub endpoint_configuration: Option<EndpointConfiguration>,
    pub buffering_hints: Option<BufferingHints>,
    pub cloud_watch_logging_options: Option<Value>,
    pub request_configuration: Option<RequestConfiguration>,
    pub processing_configuration: Option<Value>,
    #[serde(rename = "RoleARN")]
    pub role_arn: Option<String>,
    pub retry_options: Option<Value>,
    #[serde(rename = "S3BackupMode")]
    pub s3_backup_mode: Option<String>,
    #[serde(rename = "S3Configuration")]
    pub s3_configuration: Option<ExtendedS3DestinationConfiguration>,
    pub secrets_manager_configuration: Option<Value>,
}

/// `EndpointConfiguration`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EndpointConfiguration {
    /// The API spells it `Url`; the config file's `url` reads back as `URL`.
    #[serde(alias = "URL")]
    pub url: Option<String>,
    pub name: Option<String>,
    pub access_key: Option<String>,
}

/// `RequestConfiguration`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RequestConfiguration {
    pub content_encoding: Option<String>,
    pub common_attributes: Option<Vec<CommonAttribute>>,
}

/// One of `CommonAttributes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CommonAttribute {
    pub attribute_name: Option<String>,
    pub attribute_value: Option<String>,
}

/// A validated HTTP endpoint destination.
#[derive(Debug, Clone)]
pub struct HttpEndpointSpec {
    /// `Url`, as configured (path and query included).
    pub url: String,
    /// `AccessKey` (sent byte for byte as `X-Amz-Firehose-Access-Key`), or the secret holding
    /// it as `api_key`.
    pub access_key: Option<Credential>,
    /// `ContentEncoding` `GZIP`.
    pub gzip: bool,
    /// `CommonAttributes`, in order.
    pub common_attributes: Vec<(String, String)>,
    pub retry: Duration,
    /// `S3BackupMode` `AllData`.
    pub backup_all: bool,
    pub backup: S3Spec,
    pub limits: Limits,
    pub processing: Option<ProcessingSpec>,
    pub raw: HttpEndpointDestinationConfiguration,
}

/// Validates an HTTP endpoint block found at `path`.
pub fn validate(
    raw: &HttpEndpointDestinationConfiguration,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<HttpEndpointSpec> {
    let before = errors.len();
    let endpoint = raw.endpoint_configuration.clone().unwrap_or_default();
    let at = [path, "endpoint_configuration"];
    if raw.endpoint_configuration.is_none() {
        errors.push(FieldError::new(&at, "is required"));
    }
    let url = endpoint.url.clone().unwrap_or_default();
    match raw.endpoint_configuration.is_some() {
        false => {}
        true if url.is_empty() => errors.push(FieldError::new(
            &[path, "endpoint_configuration", "url"],
            "is required",
        )),
        true => {
            if let Err(why) = http::secure_url(&url, 1000) {
                errors.push(FieldError::new(
                    &[path, "endpoint_configuration", "url"],
                    why,
                ));
            }
        }
    }
    if let Some(name) = &endpoint.name
        && !(1..=256).contains(&name.chars().count())
    {
        errors.push(FieldError::new(
            &[path, "endpoint_configuration", "name"],
            "must be 1-256 characters",
        ));
    }
    if endpoint.access_key.as_ref().is_some_and(|k| k.len() > 4096) {
        errors.push(FieldError::new(
            &[path, "endpoint_configuration", "access_key"],
            "must be at most 4096 characters",
        ));
    }
    let access_key = http::credential(
        endpoint.access_key.as_deref().filter(|k| !k.is_empty()),
        &raw.secrets_manager_configuration,
        (&["endpoint_configuration", "access_key"], "api_key"),
        path,
        false,
        errors,
    );
    let request = raw.request_configuration.clone().unwrap_or_default();
    let gzip = match request.content_encoding.as_deref() {
        None | Some("NONE") => false,
        Some("GZIP") => true,
        Some(other) => {
            errors.push(FieldError::new(
                &[path, "request_configuration", "content_encoding"],
                format!("{other:?} is not one of NONE, GZIP"),
            ));
            false
        }
    };
    let attributes = request.common_attributes.unwrap_or_default();
    if attributes.len() > 50 {
        errors.push(FieldError::new(
            &[path, "request_configuration", "common_attributes"],
            format!(
                "holds {} attributes; at most 50 are allowed",
                attributes.len()
            ),
        ));
    }
    let mut common_attributes = Vec::new();
    for (i, a) in attributes.iter().enumerate() {
        let i = i.to_string();
        let at = [path, "request_configuration", "common_attributes", &i];
        let name = a.attribute_name.clone().unwrap_or_default();
        let value = a.attribute_value.clone();
        if !(1..=256).contains(&name.chars().count()) {
            let at = [at.as_slice(), &["attribute_name"]].concat();
            errors.push(FieldError::new(&at, "is required (1-256 characters)"));
        }
        match &value {
            Some(v) if v.chars().count() <= 1024 => {}
            _ => {
                let at = [at.as_slice(), &["attribute_value"]].concat();
                errors.push(FieldError::new(&at, "is required (0-1024 characters)"));
            }
        }
        common_attributes.push((name, value.unwrap_or_default()));
    }
    let common = http::Common {
        retry_options: &raw.retry_options,
        s3_backup_mode: raw.s3_backup_mode.as_deref(),
        buffering_hints: &raw.buffering_hints,
        processing_configuration: &raw.processing_configuration,
        s3_configuration: &raw.s3_configuration,
    }
    .validate(
        &http::CommonRules {
            retry_default: 300,
            modes: ("FailedDataOnly", "AllData"),
            buffering_default: (5, 300),
            buffering_max: (64, 900),
        },
        path,
        errors,
    );
    if errors.len() > before {
        return None;
    }
    Some(HttpEndpointSpec {
        url,
        access_key,
        gzip,
        common_attributes,
        retry: common.retry,
        backup_all: common.backup_all,
        backup: common.backup?,
        limits: common.limits,
        processing: common.processing,
        raw: raw.clone(),
    })
}

impl HttpEndpointSpec {
    /// `HttpEndpointDestinationDescription`, with the defaults in force filled in. The access
    /// key is not described (Firehose leaves it out too).
    pub fn description(&self) -> (&'static str, Value) {
        let (spec, raw) = (self, &self.raw);
        let endpoint = raw.endpoint_configuration.clone().unwrap_or_default();
        let attributes: Vec<Value> = spec
            .common_attributes
            .iter()
            .map(|(k, v)| json!({"AttributeName": k, "AttributeValue": v}))
            .collect();
        let body = strip_nulls(json!({
            "EndpointConfiguration": { "Url": endpoint.url, "Name": endpoint.name },
            "BufferingHints": {
                "SizeInMBs": spec.limits.size_bytes / (1024 * 1024),
                "IntervalInSeconds": spec.limits.interval.as_secs(),
            },
            "CloudWatchLoggingOptions": raw.cloud_watch_logging_options.clone()
                .unwrap_or_else(|| json!({"Enabled": false})),
            "RequestConfiguration": {
                "ContentEncoding": if spec.gzip { "GZIP" } else { "NONE" },
                "CommonAttributes": attributes,
            },
            "ProcessingConfiguration": raw.processing_configuration,
            "RoleARN": raw.role_arn,
            "RetryOptions": { "DurationInSeconds": spec.retry.as_secs() },
            "S3BackupMode": if spec.backup_all { "AllData" } else { "FailedDataOnly" },
            "S3DestinationDescription": spec.backup.legacy_description(),
            "SecretsManagerConfiguration": raw.secrets_manager_configuration,
        }));
        ("HttpEndpointDestinationDescription", body)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::http::Credential;
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};

    fn input(block: serde_json::Value) -> CreateDeliveryStreamInput {
        serde_json::from_value(serde_json::json!({ "HttpEndpointDestinationConfiguration": block }))
            .unwrap()
    }

    fn backup() -> serde_json::Value {
        serde_json::json!({"RoleARN": "r", "BucketARN": "arn:aws:s3:::bkt"})
    }

    #[test]
    fn defaults_follow_firehose() {
        let spec = validate(
            "s",
            &input(serde_json::json!({
                "EndpointConfiguration": {"Url": "https://intake.example.com/v1/input?x=1", "AccessKey": "k"},
                "S3Configuration": backup(),
            })),
        )
        .unwrap();
        let DestinationSpec::HttpEndpoint(h) = spec.destination else {
            panic!("an HTTP endpoint destination")
        };
        assert_eq!(h.url, "https://intake.example.com/v1/input?x=1");
        assert_eq!(h.access_key, Some(Credential::Inline("k".into())));
        assert_eq!(h.limits.size_bytes, 5 * 1024 * 1024);
        assert_eq!(h.limits.interval.as_secs(), 300);
        assert_eq!(h.retry.as_secs(), 300);
        assert!(!h.gzip && !h.backup_all && h.common_attributes.is_empty());
        let (field, desc) = h.description();
        assert_eq!(field, "HttpEndpointDestinationDescription");
        assert!(desc["EndpointConfiguration"].get("AccessKey").is_none());
        assert_eq!(desc["RequestConfiguration"]["ContentEncoding"], "NONE");
    }

    #[test]
    fn the_api_rules_hold() {
        let long = "a".repeat(257);
        let paths = |block: serde_json::Value| -> Vec<String> {
            validate("s", &input(block))
                .unwrap_err()
                .iter()
                .map(|e| e.api_path())
                .collect()
        };
        let at = |f: &str| format!("HttpEndpointDestinationConfiguration.{f}");
        assert_eq!(
            paths(serde_json::json!({
                "EndpointConfiguration": {"Url": "http://intake.example.com/", "Name": ""},
                "RequestConfiguration": {"ContentEncoding": "ZSTD",
                    "CommonAttributes": [{"AttributeName": long, "AttributeValue": "v"}, {"AttributeName": "n"}]},
                "BufferingHints": {"SizeInMBs": 65, "IntervalInSeconds": 901},
                "RetryOptions": {"DurationInSeconds": 7201}, "S3BackupMode": "AllDocuments",
            })),
            [
                "EndpointConfiguration.Url",
                "EndpointConfiguration.Name",
                "RequestConfiguration.ContentEncoding",
                "RequestConfiguration.CommonAttributes.0.AttributeName",
                "RequestConfiguration.CommonAttributes.1.AttributeValue",
                "RetryOptions.DurationInSeconds",
                "S3BackupMode",
                "BufferingHints.SizeInMBs",
                "BufferingHints.IntervalInSeconds",
                "S3Configuration",
            ]
            .map(at)
        );
        // A secret in place of the key: then the key must be absent.
        assert_eq!(
            paths(serde_json::json!({
                "EndpointConfiguration": {"Url": "https://x.example.com", "AccessKey": "k"},
                "SecretsManagerConfiguration": {"Enabled": true, "SecretARN": "arn:aws:secretsmanager:us-east-1:1:secret:s"},
                "S3Configuration": backup(),
            })),
            [at("EndpointConfiguration.AccessKey")]
        );
        assert_eq!(
            paths(serde_json::json!({
                "EndpointConfiguration": {"Url": "https://x.example.com"},
                "SecretsManagerConfiguration": {"Enabled": true},
                "S3Configuration": backup(),
            })),
            [at("SecretsManagerConfiguration.SecretARN")]
        );
    }

    #[test]
    fn the_config_file_spells_it_in_snake_case() {
        let table: toml::Value = toml::from_str(
            r#"
endpoint_configuration = { url = "https://central.example.com/http-endpoint/c", access_key = "k" }
request_configuration = { content_encoding = "GZIP", common_attributes = [{ attribute_name = "env", attribute_value = "prod" }] }
retry_options = { duration_in_seconds = 7200 }
s3_configuration = { bucket_arn = "arn:aws:s3:::failed" }
"#,
        )
        .unwrap();
        let mut stream = toml::map::Map::new();
        stream.insert("http_endpoint_destination_configuration".into(), table);
        let input = crate::config::parse_stream_table("s", &toml::Value::Table(stream)).unwrap();
        let DestinationSpec::HttpEndpoint(h) = validate("s", &input).unwrap().destination else {
            panic!("an HTTP endpoint destination")
        };
        assert_eq!(h.url, "https://central.example.com/http-endpoint/c");
        assert!(h.gzip && h.retry.as_secs() == 7200);
        assert_eq!(h.common_attributes, [("env".into(), "prod".into())]);
        // Described with the API's spelling.
        assert_eq!(
            h.description().1["EndpointConfiguration"]["Url"],
            "https://central.example.com/http-endpoint/c"
        );
    }

    #[test]
    fn loopback_may_be_plain_http_and_secrets_may_be_files() {
        for url in [
            "http://127.0.0.1:8080/in",
            "http://localhost/in",
            "http://[::1]:9/",
        ] {
            let spec = validate(
                "s",
                &input(serde_json::json!({
                    "EndpointConfiguration": {"Url": url},
                    "SecretsManagerConfiguration": {"Enabled": true, "SecretARN": "file:///etc/hosepipe/key.json"},
                    "S3Configuration": backup(),
                })),
            )
            .unwrap();
            let DestinationSpec::HttpEndpoint(h) = spec.destination else {
                panic!("an HTTP endpoint destination")
            };
            assert!(matches!(h.access_key, Some(Credential::Secret(_))));
        }
    }
}
