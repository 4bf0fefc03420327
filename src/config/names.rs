//! Field names: the config file spells every Firehose API field in snake_case
//! (`BucketARN` → `bucket_arn`, `SizeInMBs` → `size_in_mbs`). These two functions are inverses
//! over every API field name, including its acronyms.

/// Words that the API spells in capitals (or mixed) inside a PascalCase name.
const ACRONYMS: &[(&str, &str)] = &[
    ("arn", "ARN"),
    ("aws", "AWS"),
    ("hec", "HEC"),
    ("jdbc", "JDBC"),
    ("kms", "KMS"),
    ("mbs", "MBs"),
    ("msk", "MSK"),
    ("url", "URL"),
];

/// `aws_kms_key_arn` → `AWSKMSKeyARN`.
pub fn snake_to_api(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    for word in snake.split('_') {
        if let Some((_, api)) = ACRONYMS.iter().find(|(w, _)| *w == word) {
            out.push_str(api);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
    }
    out
}

/// `AWSKMSKeyARN` → `aws_kms_key_arn`. Names that are not PascalCase (map keys, list indexes)
/// come back unchanged.
pub fn api_to_snake(api: &str) -> String {
    if !api.starts_with(|c: char| c.is_ascii_uppercase()) {
        return api.to_string();
    }
    // Greedily peel known acronyms and capitalised words off the front.
    let mut words: Vec<String> = Vec::new();
    let mut rest = api;
    'outer: while !rest.is_empty() {
        for (word, spelled) in ACRONYMS {
            if let Some(tail) = rest.strip_prefix(spelled) {
                // An acronym only counts when a new word (or the end) follows it.
                if tail.is_empty() || tail.starts_with(|c: char| c.is_ascii_uppercase()) {
                    words.push((*word).to_string());
                    rest = tail;
                    continue 'outer;
                }
            }
        }
        let mut end = rest.len();
        for (i, c) in rest.char_indices().skip(1) {
            if c.is_ascii_uppercase() {
                end = i;
                break;
            }
        }
        words.push(rest[..end].to_ascii_lowercase());
        rest = &rest[end..];
    }
    words.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_NAMES: &[&str] = &[
        "BucketARN",
        "RoleARN",
        "AWSKMSKeyARN",
        "KMSEncryptionConfig",
        "SizeInMBs",
        "IntervalInSeconds",
        "HECEndpoint",
        "HECAcknowledgmentTimeoutInSeconds",
        "ClusterJDBCURL",
        "S3BackupMode",
        "ExtendedS3DestinationConfiguration",
        "AmazonopensearchserviceDestinationConfiguration",
        "OpenXJsonSerDe",
        "DeliveryStreamEncryptionConfigurationInput",
        "KeyARN",
        "KeyType",
        "MSKSourceConfiguration",
        "CompressionFormat",
        "ErrorOutputPrefix",
        "CatalogARN",
        "DestinationTableConfigurationList",
        "S3ErrorOutputPrefix",
        "AppendOnly",
    ];

    #[test]
    fn names_round_trip() {
        for name in API_NAMES {
            let snake = api_to_snake(name);
            assert_eq!(snake_to_api(&snake), *name, "via {snake}");
        }
        assert_eq!(api_to_snake("AWSKMSKeyARN"), "aws_kms_key_arn");
        assert_eq!(api_to_snake("SizeInMBs"), "size_in_mbs");
        assert_eq!(api_to_snake("S3BackupMode"), "s3_backup_mode");
        assert_eq!(api_to_snake("0"), "0");
    }
}
