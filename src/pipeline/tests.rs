//! One stream's stages end to end against a scripted in-memory destination, under paused time:
//! the spool, its reader, the buffers, encoding and delivery are the real ones; the destination
//! fails when told to. What is checked is what the records become and that each is settled
//! once (the spool forgets it, the memory budget gets its bytes back).

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::{Config, Overrides, RawConfig};
use crate::journal::Kind;
use crate::spool::{Log, Sealing, Spool};
use crate::testing::ScriptedSink;

/// A running stream `t` writing UNCOMPRESSED objects under `data/` to `sink`.
struct Harness {
    _dir: tempfile::TempDir,
    spool: Arc<Log>,
    admission: Arc<Admission>,
    handle: StreamHandle,
    sink: Arc<ScriptedSink>,
}

fn start(sink: ScriptedSink) -> Harness {
    start_with(sink, "")
}

/// [`start`] with more of the S3 block (`extra`, TOML lines).
fn start_with(sink: ScriptedSink, extra: &str) -> Harness {
    start_stream(
        sink,
        &format!(
            r#"
[streams.t.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bucket"
prefix = "data/"
error_output_prefix = "errors/!{{firehose:error-output-type}}/"
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 1 }}
{extra}
"#
        ),
    )
}

/// A running stream `t` as `stream` (TOML) declares it, its S3 objects written to `sink`.
fn start_stream(sink: ScriptedSink, stream: &str) -> Harness {
    open_stream(sink, stream).start()
}

/// Stream `t` with its spool open and its pipeline not started yet (a daemon starting).
struct Opened {
    dir: tempfile::TempDir,
    spool: Arc<Log>,
    admission: Arc<Admission>,
    shared: Shared,
    spec: StreamSpec,
    sink: Arc<ScriptedSink>,
}

fn open_stream(sink: ScriptedSink, stream: &str) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let raw: RawConfig = toml::from_str(&format!(
        r#"
object_store = "local"
[spool]
sync = "os"
retention_seconds = 60
{stream}
"#
    ))
    .unwrap();
    let overrides = Overrides {
        listen: None,
        data_dir: Some(dir.path().to_path_buf()),
    };
    let config = Config::from_raw(raw, &overrides, &|_| None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let admission = Arc::new(Admission::new(
        u64::MAX / 4,
        64 << 20,
        Duration::from_millis(10),
        &config.quotas,
        metrics.clone(),
    ));
    let sink = Arc::new(sink);
    let shared =
        crate::server::shared_parts(&config, sink.clone(), metrics, admission.clone()).unwrap();
    let (spool, _) = Spool::open(
        &dir.path().join("spool/t"),
        &config.spool.settings,
        admission.spool_observer("t"),
        Sealing {
            keys: shared.keys.clone(),
            stream: "t".into(),
            key_id: None,
        },
    )
    .unwrap();
    Opened {
        dir,
        spool: Arc::new(Log::local(spool)),
        admission,
        shared,
        spec: config.streams[0].spec.clone(),
        sink,
    }
}

impl Opened {
    /// Starts the pipeline and the spool's reader.
    fn start(self) -> Harness {
        let Opened {
            dir,
            spool,
            admission,
            shared,
            spec,
            sink,
        } = self;
        let processing = spec.processing().map(|p| shared.catalog.build(p).unwrap());
        let (handle, ingest) = spawn_pipeline(
            "t",
            Versioned {
                spec,
                version: 1,
                processing,
                converter: None,
            },
            shared,
            spool.clone(),
            "test".into(),
        );
        spool.start_reader(ingest, admission.clone()).unwrap();
        Harness {
            _dir: dir,
            spool,
            admission,
            handle,
            sink,
        }
    }
}

/// Appends one record per item of `data` to `spool`.
async fn append(spool: &Log, data: impl Iterator<Item = String>, arrival_ms: i64) {
    let mut records: Vec<Record> = data
        .map(|d| Record::new(Bytes::from(d), arrival_ms))
        .collect();
    spool.append(&mut records).await.unwrap();
}

impl Harness {
    /// Appends `n` records that arrived at `arrival_ms`.
    async fn put(&self, n: usize, arrival_ms: i64) {
        self.put_data((0..n).map(|i| format!("{{\"n\":{i}}}\n")), arrival_ms)
            .await;
    }

    /// Appends one record per item of `data`.
    async fn put_data(&self, data: impl Iterator<Item = String>, arrival_ms: i64) {
        append(&self.spool, data, arrival_ms).await;
    }

    /// Waits (virtual time passing, real time bounded) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record settled: the spool holds none and the stages hold no memory.
    async fn settled(&self) {
        self.until("every record settled", |h| {
            h.spool.stats.records.load(Ordering::Relaxed) == 0 && h.admission.memory_used() == 0
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn records_are_written_once_and_settled() {
    let h = start(ScriptedSink::default());
    h.put(500, now_ms()).await;
    h.put(500, now_ms()).await;
    h.until("1000 lines written", |h| {
        h.sink.lines("data/").len() >= 1000
    })
    .await;
    h.settled().await;
    let mut lines = h.sink.lines("data/");
    assert_eq!(lines.len(), 1000, "no record written twice");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 500, "each put's 500 distinct records");
    assert_eq!(
        h.handle.stats.delivered_records.load(Ordering::Relaxed),
        1000
    );
    assert!(h.sink.lines("errors/").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_write_is_retried_until_it_is_written_once() {
    let h = start(ScriptedSink::failing_first(3));
    h.put(200, now_ms()).await;
    h.until("200 lines written", |h| h.sink.lines("data/").len() >= 200)
        .await;
    h.settled().await;
    assert_eq!(h.sink.lines("data/").len(), 200);
    assert_eq!(h.handle.stats.failed_attempts.load(Ordering::Relaxed), 3);
    assert_eq!(h.sink.attempts.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn records_past_the_retention_age_go_to_the_error_output() {
    let h = start(ScriptedSink::refusing("data/"));
    // Arrived two minutes ago: past the 60 s retention at the first failed write.
    h.put(100, now_ms() - 120_000).await;
    h.until("100 error documents", |h| {
        h.sink.lines("errors/").len() >= 100
    })
    .await;
    h.settled().await;
    let docs = h.sink.lines("errors/");
    assert_eq!(docs.len(), 100);
    let doc: serde_json::Value = serde_json::from_str(&docs[0]).unwrap();
    assert!(doc["rawData"].is_string(), "{doc}");
    assert!(doc["errorCode"].is_string(), "{doc}");
    assert!(h.sink.lines("data/").is_empty());
    assert_eq!(h.handle.stats.delivered_records.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_record_split_by_the_processors_settles_once_all_its_parts_are_written() {
    // RecordDeAggregation (DELIMITED on "|"): each spool record becomes three.
    let h = start_with(
        ScriptedSink::failing_first(1),
        r#"processing_configuration = { enabled = true, processors = [{ type = "RecordDeAggregation", parameters = [{ parameter_name = "SubRecordType", parameter_value = "DELIMITED" }, { parameter_name = "Delimiter", parameter_value = "fA==" }] }] }"#,
    );
    h.put_data((0..50).map(|i| format!("{i}a|{i}b|{i}c")), now_ms())
        .await;
    h.settled().await;
    // Parts carry no delimiter of their own: an object holds them back to back.
    let written: String = h.sink.lines("data/").concat();
    let expected: String = (0..50).map(|i| format!("{i}a{i}b{i}c")).collect();
    assert_eq!(written, expected, "every part written once, in order");
    assert_eq!(h.sink.delivered(), 1, "one object, written once");
    assert!(h.sink.lines("errors/").is_empty());
}

/// The `(seq, part)` items of `seqs`, parts `parts`.
fn items(seqs: std::ops::Range<u64>, parts: &[u32]) -> Vec<Item> {
    seqs.flat_map(|seq| parts.iter().map(move |&part| Item { seq, part }))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_each_journaled_record_is_written_once() {
    // RecordDeAggregation (DELIMITED on "|"): spool record i becomes parts 1, 2, 3.
    let opened = open_stream(
        ScriptedSink::default(),
        r#"
[streams.t.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::bucket"
prefix = "data/"
error_output_prefix = "errors/!{firehose:error-output-type}/"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 1 }
processing_configuration = { enabled = true, processors = [{ type = "RecordDeAggregation", parameters = [{ parameter_name = "SubRecordType", parameter_value = "DELIMITED" }, { parameter_name = "Delimiter", parameter_value = "fA==" }] }] }
"#,
    );
    // What a crash left: 45 records in the spool, none settled, and the journal of the
    // objects that were being uploaded.
    append(
        &opened.spool,
        (0..45).map(|i| format!("{i}a\n|{i}b\n|{i}c\n")),
        now_ms(),
    )
    .await;
    let (journal, _) = Journal::open(opened.spool.dir().unwrap(), false).unwrap();
    let stored = |key: &str| {
        let attempt = (key.to_string(), Bytes::new(), true);
        opened.sink.attempts.lock().unwrap().push(attempt);
    };
    let intend = |keys: &[&str], items: Vec<Item>, kind: Kind| {
        let keys = keys.iter().map(|k| k.to_string()).collect();
        let (bucket, encrypted) = ("bucket".into(), false);
        let intent = crate::journal::Intent {
            id: 0,
            bucket,
            keys,
            encrypted,
            items,
            kind,
        };
        journal.intend(intent).unwrap()
    };
    // Records 0..10 (all parts): the object is in the bucket.
    intend(&["data/a"], items(0..10, &[1, 2, 3]), Kind::Records);
    stored("data/a");
    // Records 10..20: not in the bucket (the upload may still land): made again as it was.
    intend(
        &["data/b", "errors/b"],
        items(10..20, &[1, 2, 3]),
        Kind::Records,
    );
    // Records 20..30: marked done (written and settled) before the checkpoint caught up.
    let c = intend(&["data/c"], items(20..30, &[1, 2, 3]), Kind::Records);
    journal.done(c).unwrap();
    // Records 30..40, their first two parts: written under the error-output key.
    intend(
        &["data/d", "errors/d"],
        items(30..40, &[1, 2]),
        Kind::Records,
    );
    stored("errors/d");
    // Records 40..45 as they arrived: failed processing, not in the bucket.
    let why = crate::journal::Why {
        attempts: 3,
        code: "Lambda.FunctionError".into(),
        message: "boom".into(),
        lambda_arn: None,
        catalog_table: None,
        extra: None,
    };
    let failed = Kind::failed("processing-failed", 1_000, vec![why; 5]);
    intend(&["errors/p"], items(40..45, &[0]), failed);
    drop(journal);

    let h = opened.start();
    h.settled().await;
    let parts = |seqs: std::ops::Range<u64>, parts: &[&str]| -> Vec<String> {
        seqs.flat_map(|i| parts.iter().map(move |p| format!("{i}{p}")))
            .collect()
    };
    let written = |key: &str| -> Vec<Vec<String>> {
        let attempts = h.sink.attempts.lock().unwrap();
        let bodies = attempts
            .iter()
            .filter(|(k, body, ok)| *ok && k == key && !body.is_empty());
        bodies
            .map(|(_, body, _)| String::from_utf8(body.to_vec()).unwrap())
            .map(|b| b.lines().map(str::to_string).collect())
            .collect()
    };
    assert_eq!(
        written("data/b"),
        [parts(10..20, &["a", "b", "c"])],
        "made again once, as it was"
    );
    let mut lines = h.sink.lines("data/");
    lines.sort();
    // Records 40..45 are not processed again: their failure documents are made again.
    let mut expected = [parts(10..20, &["a", "b", "c"]), parts(30..40, &["c"])].concat();
    expected.sort();
    assert_eq!(
        lines, expected,
        "only what no stored object holds is written"
    );
    let docs = written("errors/p");
    assert_eq!(docs.len(), 1, "the failed records' object made again once");
    let docs: Vec<serde_json::Value> = docs[0]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 5);
    assert!(
        docs.iter()
            .all(|d| d["errorCode"] == "Lambda.FunctionError" && d["attemptsMade"] == 3)
    );
    assert_eq!(
        h.sink.lines("errors/b").len() + h.sink.lines("errors/d").len(),
        0
    );
}

/// A stream `t` to an OpenSearch cluster nobody answers for, retried for 5 s, with its S3
/// backup under `backup/`; `extra`: more TOML lines of the destination.
fn start_unreachable_opensearch(extra: &str) -> Harness {
    // Nothing listens on the cluster's port: every `_bulk` request fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    start_stream(
        ScriptedSink::default(),
        &format!(
            r#"
[streams.t.amazonopensearchservice_destination_configuration]
cluster_endpoint = "http://127.0.0.1:{port}"
index_name = "logs"
retry_options = {{ duration_in_seconds = 5 }}
buffering_hints = {{ size_in_mbs = 1, interval_in_seconds = 1 }}
s3_configuration = {{ bucket_arn = "arn:aws:s3:::bucket", prefix = "backup/" }}
{extra}
"#
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn when_retry_options_run_out_an_http_batch_goes_to_the_s3_backup() {
    let h = start_unreachable_opensearch("");
    h.put(20, now_ms()).await;
    h.settled().await;
    let docs = h.sink.lines("backup/AmazonOpenSearchService-failed/");
    assert_eq!(docs.len(), 20, "every document in the backup once");
    for doc in &docs {
        let doc: serde_json::Value = serde_json::from_str(doc).unwrap();
        assert!(doc["attemptsMade"].as_u64().unwrap() > 1, "{doc}");
        assert_eq!(doc["esIndexName"].as_str().unwrap().get(..5), Some("logs-"));
        assert!(doc["rawData"].is_string(), "{doc}");
    }
    assert_eq!(h.sink.delivered(), 1, "one backup object");
    assert_eq!(h.handle.stats.delivered_records.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_record_backed_up_and_failed_settles_once_both_objects_are_written() {
    // With AllDocuments each record goes to two objects: the backup of every record, and
    // (the cluster being unreachable) the failed documents. The first backup write fails.
    let h = start_unreachable_opensearch(r#"s3_backup_mode = "AllDocuments""#);
    h.sink.fail_first.store(1, Ordering::Relaxed);
    h.put(30, now_ms()).await;
    h.settled().await;
    let failed = h.sink.lines("backup/AmazonOpenSearchService-failed/");
    assert_eq!(failed.len(), 30);
    let all = h.sink.lines("backup/");
    assert_eq!(
        all.len(),
        60,
        "each record in the backup and in the failed documents"
    );
    assert_eq!(h.sink.delivered(), 2);
}
