//! The processor chain, the catalog, and the sandbox with real components. The components are
//! built by `scripts/build-transforms` (the test command runs it first) into
//! `target/transforms`, or the directory `HOSEPIPE_TRANSFORMS_DIR` names.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use super::catalog::{Catalog, CatalogSettings};
use super::wasm::{SandboxLimits, WasmError, WasmRuntime, WasmTransform};
use super::*;
use crate::config::processing::{Deaggregation, LambdaSpec, ProcessingSpec};

fn components() -> PathBuf {
    let dir = std::env::var_os("HOSEPIPE_TRANSFORMS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/transforms"));
    assert!(
        dir.join("hostile-guest.wasm").is_file(),
        "no components in {}: run scripts/build-transforms first",
        dir.display()
    );
    dir
}

fn records(data: &[&str]) -> Vec<Record> {
    data.iter()
        .enumerate()
        .map(|(i, d)| Record {
            data: Bytes::copy_from_slice(d.as_bytes()),
            arrival_ms: 1_000 + i as i64,
            seq: i as u64,
            part: 0,
            partition: None,
            owed: Default::default(),
        })
        .collect()
}

fn wasm(name: &str, params: &[(&str, &str)], limits: SandboxLimits) -> WasmTransform {
    let runtime = WasmRuntime::new(None, limits).unwrap();
    let compiled = runtime
        .compile(&components().join(format!("{name}.wasm")))
        .unwrap();
    let params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    runtime.transform(&compiled, params, 2).unwrap()
}

fn quick() -> SandboxLimits {
    SandboxLimits {
        timeout: Duration::from_millis(300),
        memory_bytes: 64 * 1024 * 1024,
    }
}

fn failure(p: &Processed) -> &Failure {
    match &p.outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn data(p: &Processed) -> &[u8] {
    match &p.outcome {
        Outcome::Ok { data, .. } => data,
        other => panic!("expected Ok, got {other:?}"),
    }
}

/// A batch of 500 with `bad` at `at`: only that record fails, the rest pass through.
fn only_the_poison_fails(t: &WasmTransform, bad: &str, at: usize) -> Failure {
    let mut input: Vec<String> = (0..500).map(|i| format!("record {i}")).collect();
    input[at] = bad.to_string();
    let refs: Vec<&str> = input.iter().map(String::as_str).collect();
    let out = t.process(&records(&refs));
    assert_eq!(out.len(), 500);
    for (i, p) in out.iter().enumerate() {
        if i != at {
            assert_eq!(data(p), input[i].as_bytes(), "record {i}");
        }
    }
    failure(&out[at]).clone()
}

#[test]
fn a_trap_fails_only_its_record_and_the_transform_goes_on() {
    let t = wasm("hostile-guest", &[], quick());
    let f = only_the_poison_fails(&t, "trap", 137);
    assert_eq!(f.code, "Lambda.FunctionError");
    assert!(f.message.contains("poison record"), "{}", f.message);
    let again = t.process(&records(&["fine"]));
    assert_eq!(data(&again[0]), b"fine");
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let t = wasm("hostile-guest", &[], quick());
    let f = only_the_poison_fails(&t, "loop", 499);
    assert_eq!(f.code, "Lambda.FunctionTimeout");
    assert!(f.message.contains("300 ms"), "{}", f.message);
}

#[test]
fn a_huge_allocation_hits_the_memory_cap() {
    let t = wasm("hostile-guest", &[], quick());
    let f = only_the_poison_fails(&t, "alloc", 0);
    assert_eq!(f.code, "Lambda.FunctionError");
    assert!(
        f.message.contains("memory limit of 64 MiB") || f.message.contains("memory allocation"),
        "{}",
        f.message
    );
}

#[test]
fn a_wrong_length_answer_fails_the_batch_after_the_retries() {
    let t = wasm("hostile-guest", &[("WrongLength", "true")], quick());
    let out = t.process(&records(&["a", "b", "c"]));
    assert_eq!(out.len(), 3);
    for p in &out {
        let f = failure(p);
        assert_eq!(f.code, "Lambda.MissingRecordId");
        assert!(
            f.message.contains("2 results for 3 records"),
            "{}",
            f.message
        );
        assert_eq!(p.attempts, 3, "NumberOfRetries 2 → 3 attempts");
    }
}

#[test]
fn rejected_parameters_are_an_error_at_load() {
    let runtime = WasmRuntime::new(None, quick()).unwrap();
    let compiled = runtime
        .compile(&components().join("hostile-guest.wasm"))
        .unwrap();
    let err = runtime
        .transform(&compiled, vec![("Reject".into(), "no thanks".into())], 0)
        .err()
        .expect("init rejects");
    assert!(
        matches!(&err, WasmError::Init(m) if m.contains("no thanks")),
        "{err}"
    );
    let junk = std::env::temp_dir().join(format!("hosepipe-junk-{}.wasm", std::process::id()));
    std::fs::write(&junk, b"\0asm junk").unwrap();
    assert!(matches!(
        runtime.compile(&junk),
        Err(WasmError::Compile { .. })
    ));
    std::fs::remove_file(junk).ok();
}

#[test]
fn guests_see_no_environment_and_no_files() {
    // The test process has environment variables; the guest must see none of them.
    let t = wasm("hostile-guest", &[], quick());
    let out = t.process(&records(&["env", "fs", "stderr"]));
    assert_eq!(data(&out[0]), b"0");
    let fs = String::from_utf8_lossy(data(&out[1])).to_string();
    assert!(fs.starts_with("denied"), "{fs}");
    assert_eq!(data(&out[2]), b"stderr");
}

#[test]
fn compiled_code_is_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = WasmRuntime::new(Some(cache.path().to_path_buf()), quick()).unwrap();
    let path = components().join("general-processing.wasm");
    runtime.compile(&path).unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let again = WasmRuntime::new(Some(cache.path().to_path_buf()), quick()).unwrap();
    let compiled = again.compile(&path).unwrap();
    let t = again.transform(&compiled, vec![], 0).unwrap();
    assert_eq!(data(&t.process(&records(&["x"]))[0]), b"x");
}

/// Every blueprint gives the same answers as a component as it does natively.
#[test]
fn blueprints_behave_the_same_in_the_sandbox() {
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(
            br#"{"messageType":"DATA_MESSAGE","logEvents":[{"message":"m1"},{"message":"m2"}]}"#,
        )
        .unwrap();
        String::from_utf8_lossy(&enc.finish().unwrap()).to_string()
    };
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<String>);
    let cases: &[Case] = &[
        (
            "general-processing",
            &[("AppendNewline", "true")],
            vec!["a".into(), "b\n".into()],
        ),
        (
            "apache-log-to-json",
            &[],
            vec![
                r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 2326"#
                    .into(),
                "garbage".into(),
            ],
        ),
        (
            "syslog-to-json",
            &[],
            vec!["<34>Oct 11 22:14:15 host su: hi".into(), "nope".into()],
        ),
        (
            "cloudwatch-logs-processor",
            &[],
            vec!["not gzip".into(), gz],
        ),
        (
            "json-field-filter",
            &[("Drop", "b")],
            vec![r#"{"a":1,"b":2}"#.into(), "[]".into()],
        ),
        (
            "partition-key-from-field",
            &[("Fields", "a")],
            vec![r#"{"a":"x"}"#.into(), "{}".into()],
        ),
    ];
    let catalog = Catalog::new(CatalogSettings::default());
    for (name, params, input) in cases {
        let refs: Vec<&str> = input.iter().map(String::as_str).collect();
        let recs = records(&refs);
        let sandboxed = wasm(name, params, quick()).process(&recs);
        let spec = ProcessingSpec {
            decompression: false,
            cloudwatch_extraction: false,
            deaggregation: None,
            lambda: Some(LambdaSpec {
                arn: format!("arn:aws:lambda:us-east-1:1:function:{name}"),
                function: name.to_string(),
                retries: 0,
                parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            append_delimiter: None,
            metadata_query: None,
            limits: crate::buffer::Limits {
                size_bytes: 1,
                interval: Duration::ZERO,
            },
        };
        let native = catalog
            .build(&spec)
            .unwrap()
            .lambda
            .as_ref()
            .unwrap()
            .transform
            .process(&recs);
        assert_eq!(sandboxed, native, "{name}");
        assert!(
            matches!(native[0].outcome, Outcome::Ok { .. }) || *name == "cloudwatch-logs-processor",
            "{name}: {native:?}"
        );
        assert!(
            *name == "general-processing"
                || native
                    .iter()
                    .any(|p| matches!(p.outcome, Outcome::Failed(_))),
            "{name}: a malformed input fails"
        );
    }
}

fn chain(spec_lambda: Option<&str>, f: impl FnOnce(&mut ProcessingSpec)) -> Arc<Processing> {
    let mut spec = ProcessingSpec {
        decompression: false,
        cloudwatch_extraction: false,
        deaggregation: None,
        lambda: spec_lambda.map(|name| LambdaSpec {
            arn: format!("arn:aws:lambda:us-east-1:1:function:{name}"),
            function: name.to_string(),
            retries: 0,
            parameters: vec![("Fields".into(), "k".into())],
        }),
        append_delimiter: None,
        metadata_query: None,
        limits: crate::buffer::Limits {
            size_bytes: 1,
            interval: Duration::ZERO,
        },
    };
    f(&mut spec);
    Catalog::new(CatalogSettings::default())
        .build(&spec)
        .unwrap()
}

#[test]
fn native_processors_decompress_extract_and_delimit() {
    let p = chain(None, |s| {
        s.decompression = true;
        s.cloudwatch_extraction = true;
        s.append_delimiter = Some(b"\n".to_vec());
    });
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(
        br#"{"messageType":"DATA_MESSAGE","logEvents":[{"message":"m1"},{"message":"m2"}]}"#,
    )
    .unwrap();
    let mut ctl = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    ctl.write_all(br#"{"messageType":"CONTROL_MESSAGE"}"#)
        .unwrap();
    let recs = vec![
        Record {
            data: enc.finish().unwrap().into(),
            arrival_ms: 1,
            seq: 0,
            part: 0,
            partition: None,
            owed: Default::default(),
        },
        Record {
            data: Bytes::from_static(b"plain"),
            arrival_ms: 2,
            seq: 1,
            part: 0,
            partition: None,
            owed: Default::default(),
        },
        Record {
            data: ctl.finish().unwrap().into(),
            arrival_ms: 3,
            seq: 2,
            part: 0,
            partition: None,
            owed: Default::default(),
        },
    ];
    let fates = p.run(&recs);
    let emitted = |f: &Fate| match f {
        Fate::Emit(v) => v.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(emitted(&fates[0]), vec!["m1\n", "m2\n"]);
    assert!(matches!(
        &fates[1],
        Fate::Failed {
            error_type: ErrorOutputType::DecompressionFailed,
            ..
        }
    ));
    assert!(emitted(&fates[2]).is_empty());
}

#[test]
fn a_failed_fragment_fails_its_whole_record_with_the_lambda_arn() {
    let p = chain(Some("partition-key-from-field"), |s| {
        s.deaggregation = Some(Deaggregation::Json)
    });
    let fates = p.run(&records(&[
        r#"{"k":"a"}{"k":"b"}"#,
        r#"{"k":"c"}{"x":1}"#,
        "{oops",
    ]));
    match &fates[0] {
        Fate::Emit(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(
                v[1].partition_keys,
                vec![("k".to_string(), "b".to_string())]
            );
        }
        other => panic!("{other:?}"),
    }
    match &fates[1] {
        Fate::Failed {
            error_type,
            failure,
            lambda_arn,
            ..
        } => {
            assert_eq!(*error_type, ErrorOutputType::ProcessingFailed);
            assert!(failure.message.contains("k is missing"));
            assert!(
                lambda_arn
                    .as_deref()
                    .unwrap()
                    .ends_with(":partition-key-from-field")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &fates[2],
        Fate::Failed {
            lambda_arn: None,
            ..
        }
    ));
}

#[test]
fn the_catalog_prefers_components_and_names_what_it_has() {
    let spec = |name: &str| ProcessingSpec {
        decompression: false,
        cloudwatch_extraction: false,
        deaggregation: None,
        lambda: Some(LambdaSpec {
            arn: format!("arn:aws:lambda:r:1:function:{name}"),
            function: name.into(),
            retries: 0,
            parameters: vec![],
        }),
        append_delimiter: None,
        metadata_query: None,
        limits: crate::buffer::Limits {
            size_bytes: 1,
            interval: Duration::ZERO,
        },
    };
    let none = Catalog::new(CatalogSettings::default());
    let err = none.build(&spec("nope")).err().unwrap();
    assert!(
        err.contains("apache-log-to-json") && err.contains("nope.wasm"),
        "{err}"
    );
    assert!(
        none.build(&spec("json-field-filter"))
            .err()
            .unwrap()
            .contains("Keep, Drop or Mask")
    );
    let with_dir = Catalog::new(CatalogSettings {
        dir: Some(components()),
        cache_dir: None,
        limits: quick(),
    });
    assert!(with_dir.component_path("my-transform").is_some());
    let t = with_dir.build(&spec("my-transform")).unwrap();
    let out = t
        .lambda
        .as_ref()
        .unwrap()
        .transform
        .process(&records(&["hi"]));
    assert_eq!(data(&out[0]), b"HI");
}
