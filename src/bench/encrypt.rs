//! `hosepipe bench encrypt`: the encryption stage (HPEN framing, header, data key from the local
//! keyring) against bare AES-256-GCM of the same bytes in the same run, and key-service calls
//! per object with and without data-key reuse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::crypto::keyring::Keyring;
use crate::crypto::sink::{DataKeyCache, Reuse};
use crate::crypto::{CONTEXT_STREAM, KeyError, KeyService};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchEncryptArgs {
    /// Object size in MiB (an object body as compression or Parquet left it).
    #[arg(long, default_value_t = 8)]
    pub object_mb: usize,
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Objects for the key-service count.
    #[arg(long, default_value_t = 1000)]
    pub objects: u32,
}

pub fn run(args: BenchEncryptArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ring = Keyring::new(&dir.path().join("keyring.json"));
    ring.create("bench")?;
    let mut body = vec![0u8; args.object_mb * 1024 * 1024];
    rand::rng().fill_bytes(&mut body);
    let context = vec![(CONTEXT_STREAM.to_string(), "bench".to_string())];
    println!(
        "{} MiB objects (random bytes), {:.1} s per measurement",
        args.object_mb, args.seconds
    );
    let key = [7u8; 32];
    let cipher = Aes256Gcm::new(&key.into());
    let mut scratch = body.clone();
    let bare = crate::bench::per_second(args.seconds, || {
        scratch.copy_from_slice(&body);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&[0; 12]), b"", &mut scratch)
            .expect("AES-GCM");
        std::hint::black_box(tag);
        body.len()
    });
    let stage = crate::bench::per_second(args.seconds, || {
        let data_key = ring.generate("bench", &context).expect("data key");
        let sealed =
            crate::crypto::sink::seal("local", &data_key, "bench", "bench/object.gz.enc", &body);
        std::hint::black_box(sealed);
        body.len()
    });
    let mib = |r: f64| r / 1048576.0;
    println!(
        "\n  baseline: bare AES-256-GCM, one call, in place   {:>8.1} MiB/s",
        mib(bare)
    );
    println!(
        "  encryption stage (data key + HPEN frames)        {:>8.1} MiB/s   {:.2}× the bare cipher",
        mib(stage),
        stage / bare
    );
    println!("\n  key-service calls for {} objects:", args.objects);
    for (label, reuse) in [
        ("a fresh data key per object (default)", Reuse::default()),
        (
            "reuse: 100 objects / 300 s",
            Reuse {
                max_objects: 100,
                max_age: Duration::from_secs(300),
            },
        ),
    ] {
        let cache = DataKeyCache::default();
        let calls = AtomicU64::new(0);
        let on_call = |_: Result<(), &KeyError>| {
            calls.fetch_add(1, Ordering::Relaxed);
        };
        for _ in 0..args.objects {
            cache
                .take(&ring, "bench", "bench", reuse, &on_call)
                .map_err(|e| e.to_string())?;
        }
        let n = calls.load(Ordering::Relaxed);
        println!(
            "    {label:<40} {n:>6} calls   {:.2} per object",
            n as f64 / args.objects as f64
        );
    }
    println!("\n  floor: the stage >= 0.9× the bare cipher");
    Ok(())
}
