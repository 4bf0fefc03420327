//! `hosepipe decrypt` and `hosepipe keys`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::keyring::Keyring;
use super::{CONTEXT_OBJECT_KEY, OpenError};
use crate::config::{Config, KeyProvider};

/// `hosepipe keys …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysAction {
    /// Create a master key in the local keyring.
    Create { name: String },
    /// List the local keyring's keys.
    List,
    /// Add a new version to a key: new objects use it, older ones still decrypt.
    Rotate { name: String },
}

fn keyring(cfg: &Config) -> Result<Keyring, String> {
    match &cfg.encryption.provider {
        KeyProvider::Local { keyring } => Ok(Keyring::new(keyring)),
        KeyProvider::AwsKms { .. } => Err(
            "the configured key service is AWS KMS: manage its keys with KMS (hosepipe keys manages the local keyring)"
                .into(),
        ),
    }
}

/// Runs `hosepipe keys`; returns what to print.
pub fn keys(cfg: &Config, action: &KeysAction) -> Result<String, String> {
    let ring = keyring(cfg)?;
    let line = |k: &super::keyring::KeyInfo| {
        format!(
            "{}\tversion {} of {}\tcreated {}",
            k.name,
            k.current,
            k.versions,
            chrono::DateTime::from_timestamp(k.created, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        )
    };
    Ok(match action {
        KeysAction::Create { name } => format!("created {}", line(&ring.create(name)?)),
        KeysAction::Rotate { name } => format!("rotated {}", line(&ring.rotate(name)?)),
        KeysAction::List => {
            let keys = ring.list()?;
            if keys.is_empty() {
                format!("no keys in {}", ring.path().display())
            } else {
                keys.iter().map(line).collect::<Vec<_>>().join("\n")
            }
        }
    })
}

/// Where `hosepipe decrypt` reads from.
enum Input {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

fn input(text: &str) -> Result<Input, String> {
    match text.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, key) = rest
                .split_once('/')
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                .ok_or_else(|| format!("{text:?} is not s3://bucket/key"))?;
            Ok(Input::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
        }
        None => Ok(Input::File(PathBuf::from(text))),
    }
}

/// Runs `hosepipe decrypt`: the plaintext goes to `output` (written whole or not at all) or to
/// stdout (only once every frame has authenticated). Returns the plaintext length.
pub fn decrypt(cfg: &Config, from: &str, output: Option<&Path>) -> Result<u64, String> {
    let keys = cfg.encryption.key_service()?;
    let explain = |e: OpenError| format!("{from}: {e}");
    let source = input(from)?;
    let (reader, expected): (Box<dyn std::io::Read>, Option<String>) = match &source {
        Input::File(path) => {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (Box::new(std::io::BufReader::new(f)), None)
        }
        Input::S3 { bucket, key } => {
            let sink = hosepipe_sinks::S3Sink::new(cfg.store.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let body = runtime
                .block_on(sink.get(bucket, key))
                .map_err(|e| format!("{from}: {e}"))?;
            (Box::new(std::io::Cursor::new(body)), Some(key.clone()))
        }
    };
    let (header, decryptor) =
        super::open(reader, keys.as_ref(), expected.as_deref()).map_err(explain)?;
    if let (Input::File(path), Some(written)) = (&source, header.context(CONTEXT_OBJECT_KEY)) {
        // A local copy keeps its name: a header grafted from another object shows here.
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !written.ends_with(name) {
            return Err(format!(
                "{from}: the header names object {written:?}, not a file called {name:?}: it belongs to another object"
            ));
        }
    }
    match output {
        Some(path) => {
            // Written whole or not at all: a failed check leaves no partial plaintext.
            let mut failed = None;
            crate::durable::write_with(path, crate::durable::Access::Default, |w| {
                decryptor.decrypt_to(w).map_err(|e| {
                    failed = Some(explain(e.into()));
                    std::io::Error::other("decryption failed")
                })
            })
            .map_err(|e| failed.unwrap_or_else(|| format!("{}: {e}", path.display())))
        }
        None => {
            let mut plain = Vec::new();
            let n = decryptor
                .decrypt_to(&mut plain)
                .map_err(|e| explain(e.into()))?;
            std::io::stdout()
                .write_all(&plain)
                .map_err(|e| format!("stdout: {e}"))?;
            Ok(n)
        }
    }
}
