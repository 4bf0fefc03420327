//! `ProcessingConfiguration`: validating the processor list into a [`ProcessingSpec`]. Pure:
//! resolving the `Lambda` processor's function to a transform happens in `transform::catalog`.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::fields::FieldError;
use crate::buffer::Limits;

/// `RecordDeAggregation`'s `SubRecordType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deaggregation {
    Json,
    Delimited(Vec<u8>),
}

/// The `Lambda` processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaSpec {
    /// `LambdaArn` as given.
    pub arn: String,
    /// The function name the ARN ends with: the transform's registry name.
    pub function: String,
    /// `NumberOfRetries` (default 3): re-invocations of a batch whose call failed as a whole.
    pub retries: u32,
    /// Every other parameter, for the transform's `init`.
    pub parameters: Vec<(String, String)>,
}

/// A validated processor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingSpec {
    pub decompression: bool,
    pub cloudwatch_extraction: bool,
    pub deaggregation: Option<Deaggregation>,
    pub lambda: Option<LambdaSpec>,
    /// `AppendDelimiterToRecord`: the delimiter (default `\n`).
    pub append_delimiter: Option<Vec<u8>>,
    /// `MetadataExtraction`'s `MetadataExtractionQuery` (jq; checked to compile).
    pub metadata_query: Option<String>,
    /// The processing buffer: `BufferSizeInMBs` / `BufferIntervalInSeconds` of the Lambda
    /// processor (default 1 MB / 60 s); without a Lambda, records are processed as they come.
    pub limits: Limits,
}

const TYPES: &str = "RecordDeAggregation, Decompression, CloudWatchLogProcessing, Lambda, MetadataExtraction, AppendDelimiterToRecord";

/// Parameters each processor type accepts (Firehose's `ProcessorParameter` names).
fn allowed(kind: &str) -> &'static [&'static str] {
    match kind {
        "RecordDeAggregation" => &["SubRecordType", "Delimiter"],
        "Decompression" => &["CompressionFormat"],
        "CloudWatchLogProcessing" => &["DataMessageExtraction"],
        "AppendDelimiterToRecord" => &["Delimiter"],
        "MetadataExtraction" => &["MetadataExtractionQuery", "JsonParsingEngine"],
        _ => &[],
    }
}

/// Validates `ProcessingConfiguration` found at `path`; `None` when absent or disabled.
pub fn validate(
    block: &Option<Value>,
    path: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<ProcessingSpec> {
    let block = match block {
        None | Some(Value::Null) => return None,
        Some(v) => v,
    };
    let at =
        |rest: &[&str]| -> Vec<String> { path.iter().chain(rest).map(|s| s.to_string()).collect() };
    let err = |errors: &mut Vec<FieldError>, rest: &[&str], message: String| {
        let p = at(rest);
        let p: Vec<&str> = p.iter().map(String::as_str).collect();
        errors.push(FieldError::new(&p, message));
    };
    match block.get("Enabled") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return None,
        Some(other) => {
            err(
                errors,
                &["enabled"],
                format!("{other} is not true or false"),
            );
            return None;
        }
    }
    let before = errors.len();
    let processors = match block.get("Processors") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(other) => {
            err(errors, &["processors"], format!("{other} is not a list"));
            return None;
        }
    };
    let mut spec = ProcessingSpec {
        decompression: false,
        cloudwatch_extraction: false,
        deaggregation: None,
        lambda: None,
        append_delimiter: None,
        metadata_query: None,
        limits: Limits {
            size_bytes: 1024 * 1024,
            interval: Duration::ZERO,
        },
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, p) in processors.iter().enumerate() {
        let index = i.to_string();
        let here = ["processors", index.as_str()];
        let Some(kind) = p.get("Type").and_then(Value::as_str) else {
            err(
                errors,
                &[&here[..], &["type"]].concat(),
                format!("is required, one of {TYPES}"),
            );
            continue;
        };
        if seen.iter().any(|s| s == kind) {
            err(
                errors,
                &[&here[..], &["type"]].concat(),
                format!("{kind} is given twice"),
            );
            continue;
        }
        seen.push(kind.to_string());
        let mut params: Vec<(String, String)> = Vec::new();
        match p.get("Parameters") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (j, param) in list.iter().enumerate() {
                    let pj = j.to_string();
                    let name = param.get("ParameterName").and_then(Value::as_str);
                    let value = param.get("ParameterValue").and_then(Value::as_str);
                    match (name, value) {
                        (Some(n), Some(v)) if (1..=5120).contains(&v.chars().count()) => {
                            params.push((n.to_string(), v.to_string()))
                        }
                        _ => err(
                            errors,
                            &[&here[..], &["parameters", pj.as_str()]].concat(),
                            "needs ParameterName and a ParameterValue of 1 to 5120 characters"
                                .into(),
                        ),
                    }
                }
            }
            Some(other) => err(
                errors,
                &[&here[..], &["parameters"]].concat(),
                format!("{other} is not a list"),
            ),
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let param_path = |name: &str| -> Vec<String> {
            let j = params
                .iter()
                .position(|(n, _)| n == name)
                .unwrap_or(0)
                .to_string();
            [&here[..], &["parameters", &j, "parameter_value"]]
                .concat()
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let perr = |errors: &mut Vec<FieldError>, name: &str, message: String| {
            let p = param_path(name);
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            err(errors, &p, format!("{name}: {message}"));
        };
        if kind != "Lambda" {
            for (n, _) in &params {
                if !allowed(kind).contains(&n.as_str()) {
                    perr(
                        errors,
                        n,
                        format!(
                            "is not a parameter of {kind} (allowed: {})",
                            allowed(kind).join(", ")
                        ),
                    );
                }
            }
        }
        match kind {
            "Decompression" => match get("CompressionFormat") {
                None | Some("GZIP") => spec.decompression = true,
                Some(v) => perr(errors, "CompressionFormat", format!("{v:?} is not GZIP")),
            },
            "CloudWatchLogProcessing" => match get("DataMessageExtraction") {
                Some("true") => spec.cloudwatch_extraction = true,
                Some("false") | None => {}
                Some(v) => perr(
                    errors,
                    "DataMessageExtraction",
                    format!("{v:?} is not true or false"),
                ),
            },
            "RecordDeAggregation" => {
                spec.deaggregation = match get("SubRecordType") {
                    Some("JSON") | None => Some(Deaggregation::Json),
                    Some("DELIMITED") => match get("Delimiter")
                        .map(|d| base64::engine::general_purpose::STANDARD.decode(d))
                    {
                        Some(Ok(d)) if !d.is_empty() => Some(Deaggregation::Delimited(d)),
                        Some(_) => {
                            perr(errors, "Delimiter", "is not non-empty base64".into());
                            None
                        }
                        None => {
                            err(
                                errors,
                                &here,
                                "DELIMITED needs a Delimiter parameter (base64)".into(),
                            );
                            None
                        }
                    },
                    Some(v) => {
                        perr(
                            errors,
                            "SubRecordType",
                            format!("{v:?} is not JSON or DELIMITED"),
                        );
                        None
                    }
                }
            }
            "AppendDelimiterToRecord" => {
                spec.append_delimiter = match get("Delimiter") {
                    None => Some(b"\n".to_vec()),
                    Some(d) => match base64::engine::general_purpose::STANDARD.decode(d) {
                        Ok(d) if !d.is_empty() => Some(d),
                        _ => {
                            perr(errors, "Delimiter", "is not non-empty base64".into());
                            None
                        }
                    },
                }
            }
            "Lambda" => {
                let mut lambda = LambdaSpec {
                    arn: String::new(),
                    function: String::new(),
                    retries: 3,
                    parameters: Vec::new(),
                };
                let mut interval = 60u64;
                let mut size = 1024 * 1024u64;
                for (n, v) in &params {
                    match n.as_str() {
                        "LambdaArn" => match function_name(v) {
                            Some(f) => {
                                lambda.arn = v.clone();
                                lambda.function = f.to_string();
                            }
                            None => perr(
                                errors,
                                n,
                                format!(
                                    "{v:?} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"
                                ),
                            ),
                        },
                        "NumberOfRetries" => match v.parse::<u32>() {
                            Ok(r) if r <= 300 => lambda.retries = r,
                            _ => perr(errors, n, format!("{v:?} is outside 0..=300")),
                        },
                        "BufferSizeInMBs" => match v.parse::<f64>() {
                            Ok(mb) if (0.2..=3.0).contains(&mb) => {
                                size = (mb * 1024.0 * 1024.0) as u64
                            }
                            _ => perr(errors, n, format!("{v:?} is outside 0.2..=3")),
                        },
                        "BufferIntervalInSeconds" => match v.parse::<u64>() {
                            Ok(s) if s <= 900 => interval = s,
                            _ => perr(errors, n, format!("{v:?} is outside 0..=900")),
                        },
                        // Firehose's IAM role for the invocation: nothing to do in-process.
                        "RoleArn" => {}
                        _ => lambda.parameters.push((n.clone(), v.clone())),
                    }
                }
                if lambda.arn.is_empty() && get("LambdaArn").is_none() {
                    err(errors, &here, "Lambda needs a LambdaArn parameter".into());
                }
                spec.limits = Limits {
                    size_bytes: size,
                    interval: Duration::from_secs(interval),
                };
                spec.lambda = Some(lambda);
            }
            "MetadataExtraction" => {
                match get("JsonParsingEngine") {
                    Some("JQ-1.6") | None => {}
                    Some(v) => perr(errors, "JsonParsingEngine", format!("{v:?} is not JQ-1.6")),
                }
                match get("MetadataExtractionQuery") {
                    None => err(
                        errors,
                        &here,
                        "MetadataExtraction needs a MetadataExtractionQuery parameter (jq)".into(),
                    ),
                    Some(q) => match crate::partition::jq::Query::compile(q) {
                        Ok(_) => spec.metadata_query = Some(q.to_string()),
                        Err(e) => perr(errors, "MetadataExtractionQuery", e),
                    },
                }
            }
            other => err(
                errors,
                &[&here[..], &["type"]].concat(),
                format!("{other:?} is not one of {TYPES}"),
            ),
        }
    }
    if spec.cloudwatch_extraction && !spec.decompression {
        err(errors, &["processors"], "CloudWatchLogProcessing needs a Decompression processor (CloudWatch Logs records are gzipped)".into());
    }
    if errors.len() > before {
        return None;
    }
    Some(spec)
}

/// `arn:aws:lambda:us-east-1:123456789012:function:NAME[:QUALIFIER]` → `NAME`.
pub fn function_name(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    if !(7..=8).contains(&parts.len())
        || parts[0] != "arn"
        || parts[2] != "lambda"
        || parts[5] != "function"
    {
        return None;
    }
    let name = parts[6];
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value) -> Result<Option<ProcessingSpec>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let spec = validate(
            &Some(v),
            &[
                "extended_s3_destination_configuration",
                "processing_configuration",
            ],
            &mut errors,
        );
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    fn lambda(params: Value) -> Value {
        json!({"Enabled": true, "Processors": [{"Type": "Lambda", "Parameters": params}]})
    }

    #[test]
    fn a_lambda_processor_with_its_parameters() {
        let spec = run(lambda(json!([
            {"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:us-east-1:123456789012:function:apache-log-to-json:$LATEST"},
            {"ParameterName": "NumberOfRetries", "ParameterValue": "5"},
            {"ParameterName": "BufferSizeInMBs", "ParameterValue": "0.5"},
            {"ParameterName": "BufferIntervalInSeconds", "ParameterValue": "10"},
            {"ParameterName": "AppendNewline", "ParameterValue": "false"},
        ])))
        .unwrap()
        .unwrap();
        let l = spec.lambda.unwrap();
        assert_eq!(l.function, "apache-log-to-json");
        assert_eq!(l.retries, 5);
        assert_eq!(
            l.parameters,
            vec![("AppendNewline".to_string(), "false".to_string())]
        );
        assert_eq!(spec.limits.size_bytes, 512 * 1024);
        assert_eq!(spec.limits.interval, Duration::from_secs(10));
    }

    #[test]
    fn native_processors() {
        let spec = run(json!({"Processors": [
            {"Type": "Decompression", "Parameters": [{"ParameterName": "CompressionFormat", "ParameterValue": "GZIP"}]},
            {"Type": "CloudWatchLogProcessing", "Parameters": [{"ParameterName": "DataMessageExtraction", "ParameterValue": "true"}]},
            {"Type": "RecordDeAggregation", "Parameters": [{"ParameterName": "SubRecordType", "ParameterValue": "DELIMITED"}, {"ParameterName": "Delimiter", "ParameterValue": "fHw="}]},
            {"Type": "AppendDelimiterToRecord"},
        ]})).unwrap().unwrap();
        assert!(spec.decompression && spec.cloudwatch_extraction);
        assert_eq!(
            spec.deaggregation,
            Some(Deaggregation::Delimited(b"||".to_vec()))
        );
        assert_eq!(spec.append_delimiter, Some(b"\n".to_vec()));
        assert_eq!(spec.limits.interval, Duration::ZERO);
        assert_eq!(
            run(json!({"Enabled": false, "Processors": [{"Type": "Nope"}]})).unwrap(),
            None
        );
    }

    #[test]
    fn bad_processors_name_the_field() {
        for (v, path, needle) in [
            (lambda(json!([])), "processors.0", "LambdaArn"),
            (
                lambda(json!([{"ParameterName": "LambdaArn", "ParameterValue": "apache"}])),
                "processors.0.parameters.0.parameter_value",
                "not a Lambda function ARN",
            ),
            (
                lambda(
                    json!([{"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:r:1:function:f"}, {"ParameterName": "NumberOfRetries", "ParameterValue": "301"}]),
                ),
                "processors.0.parameters.1.parameter_value",
                "0..=300",
            ),
            (
                lambda(
                    json!([{"ParameterName": "LambdaArn", "ParameterValue": "arn:aws:lambda:r:1:function:f"}, {"ParameterName": "BufferSizeInMBs", "ParameterValue": "4"}]),
                ),
                "processors.0.parameters.1.parameter_value",
                "0.2..=3",
            ),
            (
                json!({"Processors": [{"Type": "Magic"}]}),
                "processors.0.type",
                "not one of",
            ),
            (
                json!({"Processors": [{"Type": "Decompression", "Parameters": [{"ParameterName": "CompressionFormat", "ParameterValue": "ZSTD"}]}]}),
                "processors.0.parameters.0.parameter_value",
                "not GZIP",
            ),
            (
                json!({"Processors": [{"Type": "AppendDelimiterToRecord", "Parameters": [{"ParameterName": "SubRecordType", "ParameterValue": "JSON"}]}]}),
                "processors.0.parameters.0.parameter_value",
                "not a parameter",
            ),
            (
                json!({"Processors": [{"Type": "CloudWatchLogProcessing", "Parameters": [{"ParameterName": "DataMessageExtraction", "ParameterValue": "true"}]}]}),
                "processors",
                "needs a Decompression",
            ),
            (
                json!({"Processors": [{"Type": "AppendDelimiterToRecord"}, {"Type": "AppendDelimiterToRecord"}]}),
                "processors.1.type",
                "twice",
            ),
        ] {
            let errs = run(v.clone()).unwrap_err();
            assert!(
                errs.iter().any(|e| e.config_path()
                    == format!(
                        "extended_s3_destination_configuration.processing_configuration.{path}"
                    )
                    && e.message.contains(needle)),
                "{v}: {errs:?}"
            );
        }
    }

    #[test]
    fn function_names_from_arns() {
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:my_fn"),
            Some("my_fn")
        );
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:my_fn:prod"),
            Some("my_fn")
        );
        assert_eq!(function_name("arn:aws:s3:::bucket"), None);
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:bad/name"),
            None
        );
    }
}
