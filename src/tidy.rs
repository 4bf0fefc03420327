//! Rules about the code itself, checked by reading the sources.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text up to its test module (tests may do as they
/// like: simulate a log rotation, corrupt a file).
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("tests.rs")
            {
                let text = std::fs::read_to_string(&path).expect("source text");
                let product = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.push((path, product));
            }
        }
    }
    out
}

fn crate_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![root.join("src"), root.join("sinks/src")]
}

/// `path: pattern` for every source under `dirs` (but this file and those `exempt` says)
/// whose product code contains one of `patterns`.
fn uses(dirs: &[PathBuf], exempt: impl Fn(&Path) -> bool, patterns: &[&str]) -> Vec<String> {
    let mut offenders = Vec::new();
    for dir in dirs {
        for (path, text) in sources(dir) {
            if path.ends_with("src/tidy.rs") || exempt(&path) {
                continue;
            }
            for pattern in patterns {
                if text.contains(pattern) {
                    offenders.push(format!("{}: {pattern}", path.display()));
                }
            }
        }
    }
    offenders
}

#[test]
fn only_durable_renames_files_into_place() {
    // Benchmarks move their scratch directories about (an outage); the product never does.
    let offenders = uses(
        &crate_dirs(),
        |p| p.ends_with("src/durable.rs") || p.components().any(|c| c.as_os_str() == "bench"),
        &["fs::rename(", ".persist(", ".persist_noclobber("],
    );
    assert!(
        offenders.is_empty(),
        "write files that must survive a crash through crate::durable: {offenders:#?}"
    );
}

/// The names that follow `prefix` (`crate::`, `super::`) in a file: the modules it uses.
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn product_modules_never_import_the_benchmarks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bench = root.join("bench");
    let offenders: Vec<String> = sources(&root)
        .into_iter()
        .filter(|(path, _)| !path.starts_with(&bench) && !path.ends_with("src/tidy.rs"))
        .filter(|(_, text)| names_after(text, "crate::").iter().any(|m| m == "bench"))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "{offenders:#?} import crate::bench");
}

#[test]
fn producers_reach_the_daemon_only_over_http() {
    // What `hosepipe agent`, `hosepipe generate` and their shared producer may use.
    const ALLOWED: [&str; 6] = [
        "agent",
        "generate",
        "producer",
        "aws_client",
        "credentials",
        "durable",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for producer in ["agent", "generate", "producer"] {
        for (path, text) in sources(&root.join(producer)) {
            for m in names_after(&text, "crate::") {
                if !ALLOWED.contains(&m.as_str()) {
                    offenders.push(format!("{}: crate::{m}", path.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "producers talk to the daemon over HTTP, not through its modules: {offenders:#?}"
    );
}

#[test]
fn config_files_import_each_other_without_a_circle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let files: Vec<(String, Vec<String>)> = sources(&dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("mod.rs"))
        .map(|(p, text)| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let mut uses = names_after(&text, "super::");
            uses.retain(|m| *m != name);
            (name, uses)
        })
        .collect();
    // Peel off files that import no file still left; a circle is what cannot be peeled.
    let mut left: Vec<&(String, Vec<String>)> = files.iter().collect();
    while let Some(i) = left
        .iter()
        .position(|(_, uses)| !uses.iter().any(|u| left.iter().any(|(n, _)| n == u)))
    {
        left.remove(i);
    }
    let circle: Vec<&String> = left.iter().map(|(n, _)| n).collect();
    assert!(
        circle.is_empty(),
        "config files import each other in a circle: {circle:?}"
    );
}

#[test]
fn only_the_api_names_firehose_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let api = root.join("api");
    let offenders = uses(&[root], |p| p.starts_with(&api), &["ApiError"]);
    assert!(
        offenders.is_empty(),
        "{offenders:#?} use ApiError: return the module's own error type and map it in api/"
    );
}

#[test]
fn only_settling_releases_the_spool_and_the_memory_budget() {
    // The spool forgets records and the budget gets memory back only through `pipeline::Ledger`
    // settling each record's token (and the reader, for what it never handed on; the API, for
    // what it never spooled). Only the reader mints tokens; only the ledger reads them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = [
        "src/pipeline/mod.rs",
        "src/buffer/mod.rs",
        "src/admission.rs",
        "src/spool/reader.rs",
        "src/spool/mod.rs",
        "src/spool/jetstream.rs",
        "src/spool/log.rs",
        "src/api/mod.rs",
    ];
    let bench = root.join("bench");
    let offenders = uses(
        std::slice::from_ref(&root),
        |p| allowed.iter().any(|a| p.ends_with(a)) || p.starts_with(&bench),
        &[
            ".release(",
            ".force_reserve(",
            ".delivered(",
            "memory_cost(",
            "Owed::reserved(",
            "Owed {",
            ".owed.",
        ],
    );
    assert!(
        offenders.is_empty(),
        "settle records through pipeline::Ledger: {offenders:#?}"
    );
}

#[test]
fn only_a_destinations_own_places_name_it() {
    // A destination is its config (`config/`), its encoding (`encode/`), its client (`sinks`)
    // and its delivery (`deliver/`); the pipeline, the API, the registry, the metrics and the
    // server go through `DestinationSpec`'s methods and `deliver::send_http`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let own = ["config", "encode", "deliver", "bench"].map(|d| root.join(d));
    let offenders = uses(
        std::slice::from_ref(&root),
        |p| {
            own.iter().any(|d| p.starts_with(d))
                || p.ends_with("src/main.rs")
                || p.ends_with("src/fuzzing.rs")
        },
        &[
            "DestinationSpec::OpenSearch",
            "DestinationSpec::Splunk",
            "DestinationSpec::HttpEndpoint",
            "DestinationSpec::Iceberg",
            "OpenSearchSpec",
            "SplunkSpec",
            "HttpEndpointSpec",
            "IcebergSpec",
            "opensearch::",
            "splunk::",
            "http_endpoint::",
            "iceberg::",
            "hosepipe_sinks::hec",
            "hosepipe_sinks::http_endpoint",
        ],
    );
    assert!(
        offenders.is_empty(),
        "name destinations only in config/, encode/, deliver/ and sinks: {offenders:#?}"
    );
}
