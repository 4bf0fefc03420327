//! What the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer) run: each entry takes
//! arbitrary bytes, must not panic, and asserts what no input may cause. The unit tests below
//! run every entry over the committed seed corpora, so the entries keep compiling and the seeds
//! stay meaningful.

use std::sync::OnceLock;

use bytes::Bytes;

/// The config file: TOML into a validated `Config` (errors are fine, panics are not).
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = toml::from_str::<crate::config::RawConfig>(text) {
        let _ = crate::config::Config::from_raw(raw, &Default::default(), &|_| None);
    }
}

/// The agent's config: agent.json (first byte even) or TOML.
pub fn agent_config(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = crate::agent::config::AgentConfig::parse(
            text,
            first % 2 == 0,
            std::path::Path::new("."),
        );
    }
}

/// Prefix expressions: parsed as each kind of prefix, and what parses renders (with partition
/// keys for every name it uses) without panicking.
pub fn prefix(data: &[u8]) {
    use crate::encode::prefix::{PrefixKind, RenderContext, Template};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let time = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .expect("a valid time")
        .with_timezone(&chrono_tz::Tz::Asia__Tokyo);
    for kind in [PrefixKind::Prefix, PrefixKind::ErrorOutputPrefix] {
        let Ok(template) = Template::parse(text, kind) else {
            continue;
        };
        let (query, lambda) = template.partition_keys();
        let keys = crate::partition::PartitionKeys {
            query: query.into_iter().map(|k| (k, "v/1".to_string())).collect(),
            lambda: lambda.into_iter().map(|k| (k, "w".to_string())).collect(),
        };
        let _ = template.render(&RenderContext {
            time: &time,
            error_output_type: Some(crate::encode::ErrorOutputType::ProcessingFailed),
            partition: Some(&keys),
        });
    }
}

/// The spool segment scanner (what recovery reads): never panics, and never invents a record —
/// every record it returns is, frame for frame, the bytes it was read from.
pub fn spool_segment(data: &[u8]) {
    let Ok(header) = crate::spool::read_header(data) else {
        return;
    };
    if header.envelope.is_some() {
        return; // sealed segments need their key: the HPEN target covers the cipher
    }
    let scan = crate::spool::scan_segment(data, &header, None);
    let mut framed = Vec::new();
    for r in &scan.records {
        crate::spool::encode_record(&mut framed, r.seq, r.arrival_ms, &r.data, None);
    }
    assert_eq!(
        &data[header.len..header.len + framed.len()],
        &framed[..],
        "the scan returned records that are not in the segment"
    );
    if scan.end == crate::spool::ScanEnd::Clean {
        assert_eq!(
            header.len + framed.len(),
            data.len(),
            "a clean scan read it all"
        );
    }
}

/// The object journal's scanner (what recovery reads): never panics, and returns only what its
/// whole frames say — scanning just those frames gives the same entries.
pub fn object_journal(data: &[u8]) {
    let (found, whole) = crate::journal::scan(data);
    assert!(whole <= data.len(), "the scan read past the end");
    let (again, whole_again) = crate::journal::scan(&data[..whole]);
    assert_eq!(
        (found, whole),
        (again, whole_again),
        "the scan used bytes past its frames"
    );
}

/// A JetStream message a fleet node reads (anyone who may publish on the stream's subject can
/// send one): the batch decoder never panics, and what it gives back frames the whole message
/// exactly (so re-encoding it gives the same bytes).
pub fn jetstream_batch(data: &[u8]) {
    let payload = bytes::Bytes::copy_from_slice(data);
    if let Ok(records) = crate::spool::jetstream::decode_batch(&payload) {
        let again: Vec<crate::buffer::Record> = records
            .into_iter()
            .map(|(arrival, data)| crate::buffer::Record::new(data, arrival))
            .collect();
        assert_eq!(
            crate::spool::jetstream::encode_batch(&again).as_ref(),
            data,
            "a batch decoded to what does not encode back to it"
        );
    }
}

/// The data key every HPEN input is opened with, and one object sealed with it.
fn hpen_sample() -> &'static (Vec<u8>, Vec<u8>) {
    static SAMPLE: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let plain = b"{\"fuzz\":1}\n".repeat(40);
        let sealed = crate::crypto::format::encrypt(&hpen_header(), &HPEN_KEY, &plain);
        (sealed, plain)
    })
}

const HPEN_KEY: [u8; 32] = [7; 32];

fn hpen_header() -> crate::crypto::format::Header {
    crate::crypto::format::Header {
        provider: "local".into(),
        key_id: "fuzz".into(),
        wrapped_key: vec![1; 60],
        context: vec![("stream".into(), "fuzz".into())],
        frame_size: 64,
        nonce_prefix: [3; 8],
    }
}

/// The HPEN decoder: never panics, and never hands out plaintext that was not authenticated —
/// under the fuzz key only the one object sealed with it opens, to its own plaintext.
pub fn hpen_object(data: &[u8]) {
    use crate::crypto::format::{Decryptor, Header};
    let mut reader = data;
    let Ok((header, fields, tag)) = Header::read(&mut reader) else {
        return;
    };
    let Ok(decryptor) = Decryptor::new(reader, &header, &fields, &tag, &HPEN_KEY) else {
        return;
    };
    let mut out = Vec::new();
    if decryptor.decrypt_to(&mut out).is_ok() {
        let (sealed, plain) = hpen_sample();
        assert_eq!(data, &sealed[..], "an object opened that was never sealed");
        assert_eq!(out, *plain);
    }
}

/// The OpenSearch `_bulk` answer parser: an answer it accepts has one item per document.
pub fn bulk_answer(data: &[u8]) {
    let Some((n, body)) = data.split_first() else {
        return;
    };
    if let Ok(items) = hosepipe_sinks::opensearch::parse_bulk_response(body, *n as usize) {
        assert_eq!(items.len(), *n as usize);
    }
}

/// The Splunk HEC answer readers (a post's, an ack poll's).
pub fn hec_answer(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let body = &data[2..];
    if hosepipe_sinks::hec::post_answer(status, body).is_ok() {
        assert_eq!(status, 200, "only a 200 gives an ackId");
    }
    let _ = hosepipe_sinks::hec::acknowledged(body, u64::from(status));
}

/// A daemon for the API target: local buckets under a temporary directory, no keys, one
/// declared stream; its router is called directly, without a socket.
struct ApiDaemon {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl ApiDaemon {
    /// The router's answer to `request`.
    fn call(&self, request: axum::http::Request<axum::body::Body>) -> axum::response::Response {
        use tower::ServiceExt;
        self.runtime
            .block_on(self.router.clone().oneshot(request))
            .expect("the router answers")
    }
}

fn api_daemon() -> &'static ApiDaemon {
    static DAEMON: OnceLock<ApiDaemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw: crate::config::RawConfig = toml::from_str(
            r#"
object_store = "local"
[spool]
sync = "os"
[receiver]
access_keys = ["fuzz"]
[streams.fuzz.extended_s3_destination_configuration]
bucket_arn = "arn:aws:s3:::fuzz"
buffering_hints = { size_in_mbs = 1, interval_in_seconds = 60 }
"#,
        )
        .expect("the fuzz daemon's config");
        let overrides = crate::config::Overrides {
            listen: None,
            data_dir: Some(dir.path().to_path_buf()),
        };
        let config = crate::config::Config::from_raw(raw, &overrides, &|_| None)
            .expect("the fuzz daemon's config validates");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(crate::server::Server::start(config))
            .expect("the fuzz daemon starts");
        ApiDaemon {
            router: server.router(),
            runtime,
            _dir: dir,
        }
    })
}

/// One API request: the first byte picks the operation, the rest is the body. Every answer is
/// Firehose's: a 2xx, a 4xx with its exception, or 503 "Slow down."; never a 500 or a panic.
pub fn api_request(data: &[u8]) {
    let Some((op, body)) = data.split_first() else {
        return;
    };
    let operations = crate::api::operations();
    let operation = operations[*op as usize % operations.len()];
    let daemon = api_daemon();
    let request = axum::http::Request::post("/")
        .header("x-amz-target", format!("Firehose_20150804.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(axum::body::Body::from(Bytes::copy_from_slice(body)))
        .expect("a request");
    let response = daemon.call(request);
    let status = response.status().as_u16();
    assert!(
        status < 500 || status == 503,
        "{operation} answered {status} to {:?}",
        String::from_utf8_lossy(body)
    );
}

/// HTTP endpoint deliveries both ways. First byte even: a delivery posted to the daemon's
/// receiver (bit 1: gzipped), answered in the specification's shape (`requestId`, `timestamp`)
/// with one of its statuses, never a 500 or a panic. Odd: an endpoint's answer read by the
/// destination's client, which accepts only a 200 naming the request.
pub fn http_endpoint(data: &[u8]) {
    let Some((mode, body)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        let status = [200, 201, 400, 413, 500][(*mode as usize / 2) % 5];
        if hosepipe_sinks::http_endpoint::answer(status, body, "rid").is_ok() {
            assert_eq!(status, 200, "only a 200 is a success");
        }
        return;
    }
    let daemon = api_daemon();
    let mut request = axum::http::Request::post("/http-endpoint/fuzz")
        .header("content-type", "application/json")
        .header("x-amz-firehose-request-id", "rid")
        .header("x-amz-firehose-access-key", "fuzz");
    if mode & 2 != 0 {
        request = request.header("content-encoding", "gzip");
    }
    let request = request
        .body(axum::body::Body::from(Bytes::copy_from_slice(body)))
        .expect("a request");
    let response = daemon.call(request);
    let status = response.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 404 | 413 | 503),
        "the receiver answered {status} to {:?}",
        String::from_utf8_lossy(body)
    );
    let answer = daemon
        .runtime
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
        .expect("the answer");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(answer["requestId"], "rid");
    assert!(answer["timestamp"].is_i64());
    assert_eq!(answer.get("errorMessage").is_some(), status != 200);
}

/// A fuzz target's entry.
pub type Target = fn(&[u8]);

/// Every target by name, for the unit test over the seed corpora.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_request", api_request),
    ("config_file", config_file),
    ("agent_config", agent_config),
    ("prefix", prefix),
    ("spool_segment", spool_segment),
    ("object_journal", object_journal),
    ("jetstream_batch", jetstream_batch),
    ("hpen_object", hpen_object),
    ("bulk_answer", bulk_answer),
    ("hec_answer", hec_answer),
    ("http_endpoint", http_endpoint),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_runs_over_its_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                target(&data);
                seeds += 1;
            }
            assert!(seeds > 0, "{name} has no seeds");
        }
        // Every entry has its cargo-fuzz target, and every target an entry.
        let dir = root.parent().unwrap().join("fuzz_targets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut named: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        named.sort();
        assert_eq!(on_disk, named);
    }

    /// Writes the seeds made by code (a spool segment, an HPEN object) into `fuzz/corpus`:
    /// `cargo test --lib fuzzing -- --ignored`.
    #[test]
    #[ignore]
    fn write_generated_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut segment = crate::spool::plain_header(100);
        for (i, data) in ["{\"a\":1}\n", "", "line\n"].iter().enumerate() {
            crate::spool::encode_record(
                &mut segment,
                100 + i as u64,
                1_700_000_000_000,
                data.as_bytes(),
                None,
            );
        }
        std::fs::write(root.join("spool_segment/three-records"), &segment).unwrap();
        let torn = &segment[..segment.len() - 3];
        std::fs::write(root.join("spool_segment/torn-tail"), torn).unwrap();
        std::fs::write(root.join("hpen_object/sealed"), &hpen_sample().0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = crate::journal::Journal::open(dir.path(), false).unwrap();
        let item = |seq, part| crate::journal::Item { seq, part };
        let records = crate::journal::Intent {
            id: 0,
            bucket: "b".into(),
            keys: vec!["data/o.gz".into(), "errors/o".into()],
            encrypted: false,
            items: vec![item(5, 0), item(6, 1), item(6, 2)],
            kind: crate::journal::Kind::Records,
        };
        let id = journal.intend(records.clone()).unwrap();
        journal.done(id).unwrap();
        let why = crate::journal::Why {
            attempts: 1,
            code: "Lambda.FunctionError".into(),
            message: "boom".into(),
            lambda_arn: None,
            catalog_table: None,
            extra: Some("{\"k\":1}".into()),
        };
        let failed = crate::journal::Intent {
            kind: crate::journal::Kind::failed("processing-failed", 9, vec![why; 3]),
            encrypted: true,
            ..records
        };
        journal.intend(failed).unwrap();
        let file = std::fs::read(dir.path().join(crate::journal::FILE_NAME)).unwrap();
        // The frames, without the zeros the file's space is allocated ahead with.
        let bytes = &file[..crate::journal::scan(&file).1];
        std::fs::create_dir_all(root.join("object_journal")).unwrap();
        std::fs::write(root.join("object_journal/two-objects"), bytes).unwrap();
        std::fs::write(root.join("object_journal/torn"), &bytes[..bytes.len() - 5]).unwrap();
        let batch: Vec<crate::buffer::Record> = ["{\"a\":1}\n", "", "line\n"]
            .iter()
            .map(|d| {
                crate::buffer::Record::new(
                    bytes::Bytes::from_static(d.as_bytes()),
                    1_700_000_000_000,
                )
            })
            .collect();
        let batch = crate::spool::jetstream::encode_batch(&batch);
        std::fs::create_dir_all(root.join("jetstream_batch")).unwrap();
        std::fs::write(root.join("jetstream_batch/three-records"), &batch).unwrap();
        std::fs::write(root.join("jetstream_batch/cut"), &batch[..batch.len() - 2]).unwrap();
    }

    #[test]
    fn the_hpen_sample_opens_and_a_changed_byte_does_not() {
        let (sealed, _) = hpen_sample();
        hpen_object(sealed);
        let mut changed = sealed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        hpen_object(&changed);
    }
}
