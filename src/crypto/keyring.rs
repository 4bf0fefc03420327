//! The local keyring: named master keys in one JSON file (mode 0600), each with numbered
//! versions. New data keys are wrapped by a key's newest version; the wrapped form names the
//! version, so objects written before a rotation still open.
//!
//! Wrapped data key (64 bytes): `u32 version ‖ nonce[12] ‖ AES-256-GCM(version key, nonce,
//! data key[32], aad) ‖ tag[16]`, with `aad = "hosepipe-keyring-v1" ‖ str16 name ‖ u32 version
//! ‖ (str16 context name ‖ str16 context value)*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Context, DataKey, KeyError, KeyService};

const AAD_LABEL: &[u8] = b"hosepipe-keyring-v1";
const WRAPPED_LEN: usize = 4 + 12 + 32 + 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct File {
    keys: BTreeMap<String, Key>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    versions: Vec<Version>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Version {
    version: u32,
    /// Seconds since the epoch.
    created: i64,
    /// The 32-byte key, base64.
    material: String,
}

/// One key as `hosepipe keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub versions: u32,
    pub current: u32,
    pub created: i64,
}

/// A keyring file.
pub struct Keyring {
    path: PathBuf,
    /// The file as last read, with its modification time (re-read when it changes, so a
    /// rotation by `hosepipe keys` reaches a running daemon).
    cache: Mutex<(Option<std::time::SystemTime>, File)>,
}

impl Keyring {
    /// The keyring at `path` (read on use; the file need not exist yet).
    pub fn new(path: &Path) -> Keyring {
        Keyring {
            path: path.to_path_buf(),
            cache: Mutex::new((None, File::default())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<File, String> {
        let mut cache = self.cache.lock().expect("keyring lock");
        let modified = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        if cache.0.is_none() || cache.0 != modified {
            let text = std::fs::read_to_string(&self.path)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            let file: File = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a hosepipe keyring: {e}", self.path.display()))?;
            *cache = (modified, file);
        }
        Ok(cache.1.clone())
    }

    /// Writes the file with mode 0600 (write to a temporary file, fsync, rename).
    fn save(&self, file: &File) -> Result<(), String> {
        use std::io::Write;
        let text = serde_json::to_vec_pretty(file).expect("keyring serialises");
        crate::durable::write_with(&self.path, crate::durable::Access::Private, |w| {
            w.write_all(&text)
        })
        .map_err(|e| format!("{}: {e}", self.path.display()))?;
        *self.cache.lock().expect("keyring lock") = (None, File::default());
        Ok(())
    }

    /// Creates key `name` with its first version.
    pub fn create(&self, name: &str) -> Result<KeyInfo, String> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(format!(
                "{name:?} is not a key name (1-256 printable characters)"
            ));
        }
        let mut file = self.load()?;
        if file.keys.contains_key(name) {
            return Err(format!("key {name:?} already exists (rotate it instead)"));
        }
        file.keys.insert(
            name.to_string(),
            Key {
                versions: vec![new_version(1)],
            },
        );
        self.save(&file)?;
        self.info(name)
    }

    /// Adds a new version to `name`; new data keys use it, old objects still open.
    pub fn rotate(&self, name: &str) -> Result<KeyInfo, String> {
        let mut file = self.load()?;
        let key = file
            .keys
            .get_mut(name)
            .ok_or_else(|| format!("no key {name:?} in {}", self.path.display()))?;
        let next = key.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        key.versions.push(new_version(next));
        self.save(&file)?;
        self.info(name)
    }

    pub fn list(&self) -> Result<Vec<KeyInfo>, String> {
        let file = self.load()?;
        Ok(file.keys.iter().map(|(n, k)| info(n, k)).collect())
    }

    fn info(&self, name: &str) -> Result<KeyInfo, String> {
        let file = self.load()?;
        let key = file
            .keys
            .get(name)
            .ok_or_else(|| format!("no key {name:?}"))?;
        Ok(info(name, key))
    }

    fn version_key(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(u32, Zeroizing<[u8; 32]>), KeyError> {
        let file = self.load().map_err(KeyError::Unavailable)?;
        let key = file.keys.get(name).ok_or_else(|| {
            KeyError::NotFound(format!(
                "no key {name:?} in the keyring {} (create it with `hosepipe keys create {name}`)",
                self.path.display()
            ))
        })?;
        let v = match version {
            None => key.versions.iter().max_by_key(|v| v.version),
            Some(n) => key.versions.iter().find(|v| v.version == n),
        }
        .ok_or_else(|| KeyError::NotFound(format!("key {name:?} has no version {version:?}")))?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(&v.material)
                .map_err(|_| {
                    KeyError::InvalidState(format!("key {name:?} v{} is not base64", v.version))
                })?,
        );
        let material: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KeyError::InvalidState(format!("key {name:?} v{} is not 32 bytes", v.version))
        })?;
        Ok((v.version, Zeroizing::new(material)))
    }
}

/// The keyring name an `AWSKMSKeyARN` stands for: `arn:aws:kms:…:key/NAME`,
/// `arn:aws:kms:…:alias/NAME`, `alias/NAME` and `NAME` all name key `NAME`.
pub fn key_name(key_id: &str) -> &str {
    let tail = if key_id.starts_with("arn:") {
        key_id.rsplit('/').next().unwrap_or(key_id)
    } else {
        key_id
    };
    tail.strip_prefix("alias/").unwrap_or(tail)
}

fn info(name: &str, key: &Key) -> KeyInfo {
    let current = key.versions.iter().map(|v| v.version).max().unwrap_or(0);
    KeyInfo {
        name: name.to_string(),
        versions: key.versions.len() as u32,
        current,
        created: key.versions.iter().map(|v| v.created).min().unwrap_or(0),
    }
}

fn new_version(version: u32) -> Version {
    let mut material = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(material.as_mut());
    Version {
        version,
        created: chrono::Utc::now().timestamp(),
        material: base64::engine::general_purpose::STANDARD.encode(material.as_ref()),
    }
}

fn aad(name: &str, version: u32, context: &Context) -> Vec<u8> {
    use super::format::put16;
    let mut out = AAD_LABEL.to_vec();
    put16(&mut out, name.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    let mut sorted = context.clone();
    sorted.sort();
    for (k, v) in &sorted {
        put16(&mut out, k.as_bytes());
        put16(&mut out, v.as_bytes());
    }
    out
}

impl KeyService for Keyring {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn generate(&self, key_id: &str, context: &Context) -> Result<DataKey, KeyError> {
        let key_id = key_name(key_id);
        let (version, master) = self.version_key(key_id, None)?;
        let mut plaintext = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(plaintext.as_mut());
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = *plaintext;
        let tag = Aes256Gcm::new(master.as_ref().into())
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad(key_id, version, context),
                &mut sealed,
            )
            .expect("AES-GCM seals 32 bytes");
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.extend_from_slice(&version.to_be_bytes());
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&sealed);
        wrapped.extend_from_slice(&tag);
        Ok(DataKey {
            plaintext,
            wrapped,
            key_id: key_id.to_string(),
        })
    }

    fn ensure_own_key(&self, key_id: &str) -> Result<(), KeyError> {
        let name = key_name(key_id);
        match self.version_key(name, None) {
            Err(KeyError::NotFound(_)) => match self.create(name) {
                Ok(_) => {
                    tracing::info!(key = name, keyring = %self.path.display(), "created the daemon's own master key");
                    Ok(())
                }
                // Created meanwhile by another stream.
                Err(_) if self.version_key(name, None).is_ok() => Ok(()),
                Err(e) => Err(KeyError::Unavailable(e)),
            },
            other => other.map(drop),
        }
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &Context,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let key_id = key_name(key_id);
        if wrapped.len() != WRAPPED_LEN {
            return Err(KeyError::WrongKey(format!(
                "a keyring data key is {WRAPPED_LEN} bytes, this one {}",
                wrapped.len()
            )));
        }
        let version = u32::from_be_bytes(wrapped[..4].try_into().expect("4 bytes"));
        let (_, master) = self.version_key(key_id, Some(version))?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&wrapped[16..48]);
        Aes256Gcm::new(master.as_ref().into())
            .decrypt_in_place_detached(
                Nonce::from_slice(&wrapped[4..16]),
                &aad(key_id, version, context),
                key.as_mut(),
                Tag::from_slice(&wrapped[48..]),
            )
            .map_err(|_| {
                KeyError::WrongKey(format!(
                    "key {key_id:?} v{version} does not open this data key (another keyring, or another stream's context)"
                ))
            })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(stream: &str) -> Context {
        vec![(super::super::CONTEXT_STREAM.into(), stream.into())]
    }

    #[test]
    fn keys_wrap_rotate_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&dir.path().join("keyring.json"));
        assert!(matches!(
            ring.generate("orders", &ctx("s")),
            Err(KeyError::NotFound(_))
        ));
        ring.create("orders").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ring.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = ring.generate("orders", &ctx("s")).unwrap();
        assert_eq!(before.wrapped.len(), WRAPPED_LEN);
        let info = ring.rotate("orders").unwrap();
        assert_eq!((info.versions, info.current), (2, 2));
        let after = ring.generate("orders", &ctx("s")).unwrap();
        assert_eq!(&after.wrapped[..4], &2u32.to_be_bytes());
        // Both versions open their data keys.
        for dk in [&before, &after] {
            let plain = ring.decrypt("orders", &dk.wrapped, &ctx("s")).unwrap();
            assert_eq!(*plain, *dk.plaintext);
        }
        // Another stream's context, another key, a tampered blob: refused.
        assert!(matches!(
            ring.decrypt("orders", &before.wrapped, &ctx("other")),
            Err(KeyError::WrongKey(_))
        ));
        ring.create("other").unwrap();
        assert!(matches!(
            ring.decrypt("other", &before.wrapped, &ctx("s")),
            Err(KeyError::WrongKey(_))
        ));
        let mut bad = before.wrapped.clone();
        bad[20] ^= 1;
        assert!(ring.decrypt("orders", &bad, &ctx("s")).is_err());
        assert!(ring.create("orders").is_err());
        let names: Vec<String> = ring.list().unwrap().into_iter().map(|k| k.name).collect();
        assert_eq!(names, vec!["orders", "other"]);
        for id in [
            "orders",
            "alias/orders",
            "arn:aws:kms:us-east-1:123456789012:key/orders",
            "arn:aws:kms:us-east-1:123456789012:alias/orders",
        ] {
            assert_eq!(key_name(id), "orders");
            assert!(ring.decrypt(id, &before.wrapped, &ctx("s")).is_ok());
        }
    }
}
