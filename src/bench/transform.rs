//! `hosepipe bench transform`: the sandbox's per-record cost, measured against the same logic
//! compiled natively in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::Record;
use crate::transform::catalog::{BUILTINS, CatalogSettings};
use crate::transform::wasm::{SandboxLimits, WasmRuntime};
use crate::transform::{Outcome, Transform};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchTransformArgs {
    /// Directory with general-processing.wasm and apache-log-to-json.wasm
    /// (scripts/build-transforms).
    #[arg(long, default_value = "target/transforms")]
    pub dir: PathBuf,
    /// Records per batch (one call).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Bytes per record for the identity transform.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Only the identity transform in the sandbox (for profiling).
    #[arg(long)]
    pub wasm_identity_only: bool,
    /// A component of Python Lambda handlers holding `general_processing` and
    /// `apache_log_to_json` (`hosepipe transform build tests/lambda/python`): measured beside
    /// the Rust ones.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The same for Node.js handlers (`hosepipe transform build tests/lambda/node`).
    #[arg(long)]
    pub node: Option<PathBuf>,
}

/// Runs `t` over `batch` repeatedly for `seconds`; nanoseconds per record.
fn measure(t: &dyn Transform, batch: &[Record], seconds: f64) -> Result<f64, String> {
    // Warm up (instances, caches), and check the answers once.
    let out = t.process(batch);
    if let Some(p) = out
        .iter()
        .find(|p| !matches!(p.outcome, Outcome::Ok { .. }))
    {
        return Err(format!(
            "the transform did not accept the benchmark input: {p:?}"
        ));
    }
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut records = 0u64;
    while started.elapsed() < deadline {
        std::hint::black_box(t.process(batch));
        records += batch.len() as u64;
    }
    Ok(started.elapsed().as_nanos() as f64 / records as f64)
}

fn batch_of(lines: impl Iterator<Item = Vec<u8>>) -> Vec<Record> {
    lines
        .enumerate()
        .map(|(i, data)| Record {
            data: Bytes::from(data),
            arrival_ms: 1_700_000_000_000 + i as i64,
            seq: i as u64,
            part: 0,
            partition: None,
            owed: Default::default(),
        })
        .collect()
}

fn builtin(name: &str) -> Result<Arc<dyn Transform>, String> {
    let (_, make) = BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("no built-in {name}"))?;
    make(&hosepipe_transform::Params::default())
}

pub fn run(args: BenchTransformArgs) -> Result<(), String> {
    let settings = CatalogSettings::default();
    let runtime = WasmRuntime::new(None, settings.limits).map_err(|e| e.to_string())?;
    let limits: SandboxLimits = runtime.limits();
    let wasm = |name: &str| -> Result<Arc<dyn Transform>, String> {
        let path = args.dir.join(format!("{name}.wasm"));
        let compiled = runtime.compile(&path).map_err(|e| e.to_string())?;
        Ok(Arc::new(
            runtime
                .transform(&compiled, Vec::new(), 0)
                .map_err(|e| e.to_string())?,
        ))
    };
    println!(
        "batches of {} records, {:.1} s per measurement, sandbox timeout {} ms, memory {} MiB",
        args.batch,
        args.seconds,
        limits.timeout.as_millis(),
        limits.memory_bytes >> 20
    );
    let identity = batch_of((0..args.batch).map(|i| {
        let mut v = vec![b'x'; args.size];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v
    }));
    let copy_ns = {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs_f64(args.seconds.min(1.0)) {
            for r in &identity {
                std::hint::black_box(Bytes::copy_from_slice(&r.data));
            }
            n += identity.len() as u64;
        }
        started.elapsed().as_nanos() as f64 / n as f64
    };
    if args.wasm_identity_only {
        let ns = measure(
            wasm("general-processing")?.as_ref(),
            &identity,
            args.seconds,
        )?;
        println!("wasm identity: {ns:.1} ns/record");
        return Ok(());
    }
    let native_id = measure(
        builtin("general-processing")?.as_ref(),
        &identity,
        args.seconds,
    )?;
    let wasm_id = measure(
        wasm("general-processing")?.as_ref(),
        &identity,
        args.seconds,
    )?;
    println!("\nidentity (general-processing), {} B records:", args.size);
    println!("  baseline: copy each record once      {copy_ns:>9.1} ns/record");
    println!("  native (same crate, linked in)       {native_id:>9.1} ns/record");
    println!("  wasm component in the sandbox        {wasm_id:>9.1} ns/record");
    println!(
        "  host overhead (wasm - native)        {:>9.1} ns/record   (floor: <= 150)",
        wasm_id - native_id
    );
    let apache = batch_of((0..args.batch).map(|i| {
        format!(
            "10.{}.{}.{} - user{} [22/Nov/2026:10:{:02}:{:02} +0000] \"GET /products/{}?ref=home HTTP/1.1\" 200 {} \"https://example.com/\" \"Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0\"",
            i % 256, (i / 7) % 256, (i / 13) % 256, i % 97, i % 60, (i * 7) % 60, i, 1000 + i
        )
        .into_bytes()
    }));
    let native_ap = measure(
        builtin("apache-log-to-json")?.as_ref(),
        &apache,
        args.seconds,
    )?;
    let wasm_ap = measure(wasm("apache-log-to-json")?.as_ref(), &apache, args.seconds)?;
    let avg = apache.iter().map(|r| r.data.len()).sum::<usize>() / apache.len();
    println!("\napache-log-to-json, combined-format lines of ~{avg} B:");
    println!(
        "  native                               {:>9.0} records/s ({native_ap:.0} ns/record)",
        1e9 / native_ap
    );
    println!(
        "  wasm component in the sandbox        {:>9.0} records/s ({wasm_ap:.0} ns/record)",
        1e9 / wasm_ap
    );
    println!(
        "  wasm / native time                   {:>9.2}x",
        wasm_ap / native_ap
    );
    if args.python.is_some() || args.node.is_some() {
        languages(&args, &runtime, &apache, native_ap)?;
    }
    Ok(())
}

/// One language's components: the pass-through and the Apache parser, each started once.
struct Language {
    name: &'static str,
    /// The component files, and the `Handler` parameter for each transform (none for Rust).
    identity: (PathBuf, Option<String>),
    apache: (PathBuf, Option<String>),
}

/// The same pass-through and Apache-log transforms written in Rust, Python and Node.js (the
/// last two as unchanged Lambda handlers), against the native build: ns per record, and what
/// compiling and starting each component costs.
fn languages(
    args: &BenchTransformArgs,
    runtime: &WasmRuntime,
    apache: &[Record],
    native_ap: f64,
) -> Result<(), String> {
    // Text records (the handlers decode UTF-8), ~1 KiB each.
    let identity = batch_of((0..args.batch).map(|i| {
        let mut line = format!("{{\"n\":{i},\"pad\":\"");
        line.push_str(&"x".repeat(args.size.saturating_sub(line.len() + 2)));
        line.push_str("\"}");
        line.into_bytes()
    }));
    let rust = |name: &str| (args.dir.join(format!("{name}.wasm")), None);
    let handler = |file: &PathBuf, module: &str, function: &str| {
        (file.clone(), Some(format!("{module}.{function}")))
    };
    let mut all = vec![Language {
        name: "Rust",
        identity: rust("general-processing"),
        apache: rust("apache-log-to-json"),
    }];
    if let Some(p) = &args.python {
        all.push(Language {
            name: "Python",
            identity: handler(p, "general_processing", "lambda_handler"),
            apache: handler(p, "apache_log_to_json", "lambda_handler"),
        });
    }
    if let Some(n) = &args.node {
        all.push(Language {
            name: "Node.js",
            identity: handler(n, "general_processing", "handler"),
            apache: handler(n, "apache_log_to_json", "handler"),
        });
    }
    let native_id = measure(
        builtin("general-processing")?.as_ref(),
        &identity,
        args.seconds,
    )?;
    println!(
        "\nby language ({} B JSON text records for the pass-through, the Apache lines above):",
        args.size
    );
    println!(
        "  {:<8} {:>12} {:>12} {:>12} {:>14} {:>12}",
        "", "compile", "start", "size", "pass-through", "apache"
    );
    println!(
        "  {:<8} {:>12} {:>12} {:>12} {:>11.0} ns {:>9.0} ns",
        "native", "-", "-", "-", native_id, native_ap
    );
    // Each file is compiled once (a Lambda component holds both handlers).
    let mut compiled: std::collections::HashMap<PathBuf, (_, Duration)> = Default::default();
    for lang in &all {
        let mut start = |(file, handler): &(PathBuf, Option<String>)| {
            let size = std::fs::metadata(file)
                .map_err(|e| format!("{}: {e}", file.display()))?
                .len();
            if !compiled.contains_key(file) {
                let t = Instant::now();
                let c = runtime.compile(file).map_err(|e| e.to_string())?;
                compiled.insert(file.clone(), (c, t.elapsed()));
            }
            let (compiled, compile) = compiled[file].clone();
            let params = handler
                .iter()
                .map(|h| ("Handler".to_string(), h.clone()))
                .collect();
            let t = Instant::now();
            let transform = runtime
                .transform(&compiled, params, 0)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((transform, compile, t.elapsed(), size))
        };
        let (id, compile, started, size) = start(&lang.identity)?;
        let id_ns = measure(&id, &identity, args.seconds)?;
        let (ap, ..) = start(&lang.apache)?;
        let ap_ns = measure(&ap, apache, args.seconds)?;
        println!(
            "  {:<8} {:>10.2} s {:>9.1} ms {:>9.1} MB {:>11.0} ns {:>9.0} ns",
            lang.name,
            compile.as_secs_f64(),
            started.as_secs_f64() * 1e3,
            size as f64 / 1e6,
            id_ns,
            ap_ns
        );
    }
    println!(
        "  (compile: the component's machine code, once, then cached; start: an instance and \
         init; ns per record)"
    );
    Ok(())
}
