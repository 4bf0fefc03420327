//! Delivering a flushed batch to OpenSearch / Elasticsearch: one gzip `_bulk` request per
//! attempt, every item of the answer read. Only the items that failed with a retryable status
//! (429, 5xx, `es_rejected_execution_exception`) are sent again, with backoff, until
//! `RetryOptions` runs out; items refused for good (mapping errors, other 4xx) are not. A
//! whole-request failure (connection refused, 5xx, 429, …) retries everything still pending.
//! Each document keeps its `_id` across attempts, so a retry overwrites rather than duplicates.

use std::time::Duration;

use bytes::Bytes;
use hosepipe_sinks::opensearch::{BulkClient, Item, RequestFailure};
use serde_json::Value;

use crate::buffer::Record;
use crate::config::opensearch::{OpenSearchSpec, index_name};

/// One record as a bulk item.
#[derive(Debug, Clone)]
pub struct Doc {
    pub record: Record,
    pub index: String,
    /// `_id` (`None` with `NO_DOCUMENT_ID`).
    pub id: Option<String>,
    /// The JSON object, one line.
    pub source: Bytes,
}

/// A document that did not make it, and why.
#[derive(Debug, Clone)]
pub struct FailedDoc {
    pub doc: Doc,
    pub attempts: u32,
    /// The cluster's HTTP status for the item (or the request), or hosepipe's code when there
    /// was none (`OS.MalformedDocument`, `OS.ConnectionFailed`).
    pub code: String,
    pub message: String,
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub indexed: Vec<Doc>,
    pub failed: Vec<FailedDoc>,
}

/// One `_bulk` attempt, as the caller hears of it.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// The request got a `_bulk` answer (its items may still have failed).
    pub answered: bool,
    /// Documents still to index, and whether they will be sent again.
    pub pending: usize,
    pub retrying: bool,
    /// Why the first of them failed.
    pub reason: &'a str,
}

/// The item code for a record that is not a JSON object.
pub const MALFORMED: &str = "OS.MalformedDocument";
/// The item code when the cluster could not be reached.
pub const CONNECTION_FAILED: &str = "OS.ConnectionFailed";

/// Turns records into bulk items: each must be one JSON object (a trailing newline is
/// dropped; a document spread over lines is put on one). `id_base` makes ids unique to the
/// stream; an id is the record's spool seq and content checksum, so it is the same on every
/// attempt and after a restart.
pub fn prepare(
    spec: &OpenSearchSpec,
    records: &[Record],
    id_base: &str,
) -> (Vec<Doc>, Vec<FailedDoc>) {
    let mut docs = Vec::with_capacity(records.len());
    let mut failed = Vec::new();
    let mut seen: std::collections::HashMap<(u64, u32), u32> = std::collections::HashMap::new();
    // Every rotation's name is the same within a UTC hour: name each hour once.
    let mut named: Option<(i64, String)> = None;
    let mut index_of = |arrival_ms: i64| -> String {
        let hour = arrival_ms.div_euclid(3_600_000);
        match &named {
            Some((h, name)) if *h == hour => name.clone(),
            _ => {
                let name = index_name(&spec.index, spec.rotation, arrival_ms);
                named = Some((hour, name.clone()));
                name
            }
        }
    };
    for r in records {
        let trimmed = r.data.trim_ascii();
        let is_object = trimmed.first() == Some(&b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok();
        let source = match is_object {
            true => {
                if trimmed.contains(&b'\n') {
                    // Put it on one line; the bulk format is line-delimited.
                    let v: Value = serde_json::from_slice(trimmed).expect("valid JSON reparses");
                    Bytes::from(serde_json::to_vec(&v).expect("JSON serialises"))
                } else {
                    r.data.slice_ref(trimmed)
                }
            }
            false => {
                failed.push(FailedDoc {
                    doc: Doc {
                        record: r.clone(),
                        index: index_of(r.arrival_ms),
                        id: None,
                        source: Bytes::new(),
                    },
                    attempts: 0,
                    code: MALFORMED.into(),
                    message: "the record is not a JSON object".into(),
                });
                continue;
            }
        };
        let id = spec.document_ids.then(|| {
            let crc = crc32c::crc32c(&r.data);
            let n = seen.entry((r.seq, crc)).or_insert(0);
            *n += 1;
            match *n {
                1 => format!("{id_base}-{}-{crc:08x}", r.seq),
                k => format!("{id_base}-{}-{crc:08x}-{}", r.seq, k - 1),
            }
        });
        docs.push(Doc {
            index: index_of(r.arrival_ms),
            id,
            source,
            record: r.clone(),
        });
    }
    (docs, failed)
}

/// The NDJSON body of a `_bulk` request for `docs` (`index` actions).
pub fn bulk_body<'a>(docs: impl Iterator<Item = &'a Doc>, type_name: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for d in docs {
        let mut action = serde_json::json!({ "_index": d.index });
        if let Some(id) = &d.id {
            action["_id"] = id.clone().into();
        }
        if let Some(t) = type_name {
            action["_type"] = t.into();
        }
        serde_json::to_writer(&mut out, &serde_json::json!({ "index": action }))
            .expect("JSON into memory");
        out.push(b'\n');
        out.extend_from_slice(&d.source);
        out.push(b'\n');
    }
    out
}

/// Indexes `docs` through `client`, retrying what failed for a retryable reason until `retry`
/// (counted from the first attempt) runs out. `observe` hears of every attempt.
pub async fn deliver(
    client: &BulkClient,
    spec: &OpenSearchSpec,
    docs: Vec<Doc>,
    observe: impl Fn(Attempt<'_>),
) -> BulkOutcome {
    let started = tokio::time::Instant::now();
    let mut out = BulkOutcome::default();
    // Pending documents with the last reason they failed.
    let mut pending: Vec<(Doc, String, String)> = docs
        .into_iter()
        .map(|d| (d, String::new(), String::new()))
        .collect();
    let mut attempt = 0u32;
    while !pending.is_empty() {
        attempt += 1;
        let body = bulk_body(pending.iter().map(|(d, _, _)| d), spec.type_name.as_deref());
        let result = client.bulk(&spec.endpoint, &body, pending.len()).await;
        let mut next = Vec::new();
        let answered = result.is_ok();
        match result {
            Ok(items) => {
                for ((doc, _, _), item) in pending.into_iter().zip(items) {
                    match item {
                        Item::Indexed => out.indexed.push(doc),
                        Item::Retry { status, reason } => {
                            next.push((doc, status.to_string(), reason))
                        }
                        Item::Refused { status, reason } => out.failed.push(FailedDoc {
                            doc,
                            attempts: attempt,
                            code: status.to_string(),
                            message: reason,
                        }),
                    }
                }
            }
            Err(f) => {
                // Firehose's code for the documents of a request that failed whole.
                let code = match &f {
                    RequestFailure::Unreachable(_) => CONNECTION_FAILED.to_string(),
                    RequestFailure::Status { status, .. } => status.to_string(),
                    RequestFailure::BadAnswer(_) => "500".to_string(),
                };
                let message = f.to_string();
                next = pending
                    .into_iter()
                    .map(|(d, _, _)| (d, code.clone(), message.clone()))
                    .collect();
            }
        }
        pending = next;
        let wait = super::backoff(attempt - 1);
        let retrying = !pending.is_empty() && started.elapsed() + wait <= spec.retry;
        observe(Attempt {
            answered,
            pending: pending.len(),
            retrying,
            reason: pending.first().map_or("", |p| p.2.as_str()),
        });
        if !retrying {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    out.failed
        .extend(pending.into_iter().map(|(doc, code, message)| FailedDoc {
            doc,
            attempts: attempt,
            code,
            message,
        }));
    out
}

/// Firehose's failed-document fields for the error output.
pub fn failed_fields(f: &FailedDoc, type_name: Option<&str>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(
        "esDocumentId".into(),
        f.doc.id.clone().map(Value::from).unwrap_or(Value::Null),
    );
    m.insert("esIndexName".into(), f.doc.index.clone().into());
    m.insert(
        "esTypeName".into(),
        type_name.map(Value::from).unwrap_or(Value::Null),
    );
    m
}

/// Requests time out after this long (Firehose gives a cluster no longer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::{CreateDeliveryStreamInput, DestinationSpec, validate};

    fn spec(extra: Value) -> OpenSearchSpec {
        let mut conf = serde_json::json!({
            "ClusterEndpoint": "http://127.0.0.1:9200/", "IndexName": "logs",
            "S3Configuration": {"BucketARN": "arn:aws:s3:::bkt", "RoleARN": "r"},
        });
        conf.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let input: CreateDeliveryStreamInput = serde_json::from_value(
            serde_json::json!({ "AmazonopensearchserviceDestinationConfiguration": conf }),
        )
        .unwrap();
        match validate("s", &input).unwrap().destination {
            DestinationSpec::OpenSearch(os) => *os,
            other => panic!("{other:?}"),
        }
    }

    fn rec(seq: u64, data: &str) -> Record {
        Record {
            data: Bytes::from(data.to_string()),
            arrival_ms: 1_456_405_200_000,
            seq,
            partition: None,
        }
    }

    #[test]
    fn records_become_items_with_stable_ids_and_rotated_indexes() {
        let s = spec(serde_json::json!({}));
        assert_eq!(s.endpoint, "http://127.0.0.1:9200");
        let records = [
            rec(7, "{\"a\":1}\n"),
            rec(7, "{\"a\":1}"),
            rec(8, "{\n \"b\": 2\n}"),
            rec(9, "[1]"),
            rec(10, "not json"),
        ];
        let (docs, failed) = prepare(&s, &records, "base");
        assert_eq!(docs.len(), 3);
        assert_eq!(failed.len(), 2);
        assert!(failed.iter().all(|f| f.code == MALFORMED));
        assert_eq!(docs[0].index, "logs-2016-02-25");
        assert_eq!(&docs[0].source[..], b"{\"a\":1}");
        assert_eq!(&docs[2].source[..], b"{\"b\":2}");
        // The same data under the same seq (de-aggregated duplicates) still get distinct ids.
        assert_ne!(docs[0].id, docs[1].id);
        let (again, _) = prepare(&s, &records, "base");
        assert_eq!(
            docs.iter().map(|d| &d.id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        let body = String::from_utf8(bulk_body(docs.iter(), Some("_doc"))).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 6);
        let action: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(action["index"]["_index"], "logs-2016-02-25");
        assert_eq!(action["index"]["_type"], "_doc");
        assert_eq!(action["index"]["_id"], docs[0].id.clone().unwrap());
        let no_ids = spec(serde_json::json!({
            "DocumentIdOptions": {"DefaultDocumentIdFormat": "NO_DOCUMENT_ID"}
        }));
        assert!(
            prepare(&no_ids, &records, "base")
                .0
                .iter()
                .all(|d| d.id.is_none())
        );
    }

    #[test]
    fn the_api_rules_hold() {
        let errs = |conf: Value| {
            let input: CreateDeliveryStreamInput = serde_json::from_value(
                serde_json::json!({ "ElasticsearchDestinationConfiguration": conf }),
            )
            .unwrap();
            validate("s", &input)
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.api_path())
                .collect::<Vec<_>>()
        };
        let base = serde_json::json!({
            "ClusterEndpoint": "https://search:9200", "IndexName": "i",
            "S3Configuration": {"BucketARN": "arn:aws:s3:::bkt"},
        });
        assert!(errs(base.clone()).is_empty());
        let mut bad = base.clone();
        bad["BufferingHints"] = serde_json::json!({"SizeInMBs": 101});
        bad["RetryOptions"] = serde_json::json!({"DurationInSeconds": 7201});
        bad["IndexRotationPeriod"] = "OneYear".into();
        bad["S3BackupMode"] = "Some".into();
        bad["S3Configuration"] = serde_json::json!({"BucketARN": "nope"});
        assert_eq!(
            errs(bad),
            [
                "ElasticsearchDestinationConfiguration.IndexRotationPeriod",
                "ElasticsearchDestinationConfiguration.BufferingHints.SizeInMBs",
                "ElasticsearchDestinationConfiguration.RetryOptions.DurationInSeconds",
                "ElasticsearchDestinationConfiguration.S3BackupMode",
                "ElasticsearchDestinationConfiguration.S3Configuration.BucketARN",
            ]
        );
        let mut no_endpoint = base.clone();
        no_endpoint
            .as_object_mut()
            .unwrap()
            .remove("ClusterEndpoint");
        no_endpoint["DomainARN"] = "arn:aws:es:us-east-1:1:domain/d".into();
        assert_eq!(
            errs(no_endpoint),
            ["ElasticsearchDestinationConfiguration.ClusterEndpoint"]
        );
    }
}
