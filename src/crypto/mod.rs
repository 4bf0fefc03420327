//! Envelope encryption of objects: a fresh data key per object (or per few objects, with
//! reuse) encrypts the body with AES-256-GCM ([`format`]); the data key is kept only wrapped by
//! a master key that a [`KeyService`] holds — the local keyring ([`keyring`]) or AWS KMS
//! ([`kms`]).

pub mod cli;
pub mod format;
pub mod keyring;
pub mod kms;
pub mod segment;
pub mod sink;

use zeroize::Zeroizing;

/// Authenticated name/value pairs, sorted by name.
pub type Context = Vec<(String, String)>;

/// The context names hosepipe writes.
pub const CONTEXT_STREAM: &str = "hosepipe:stream";
pub const CONTEXT_OBJECT_KEY: &str = "hosepipe:object-key";

/// A data key: its plaintext (wiped when dropped) and its wrapped form.
pub struct DataKey {
    pub plaintext: Zeroizing<[u8; 32]>,
    pub wrapped: Vec<u8>,
    /// The master key as the service names it in answers (e.g. a KMS key ARN).
    pub key_id: String,
}

/// Why a key service call failed, with Firehose's metric meanings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("KMSKeyNotFound: {0}")]
    NotFound(String),
    #[error("KMSKeyAccessDenied: {0}")]
    AccessDenied(String),
    #[error("KMSKeyDisabled: {0}")]
    Disabled(String),
    #[error("KMSKeyInvalidState: {0}")]
    InvalidState(String),
    /// The wrapped data key does not open under this master key (or its context differs).
    #[error("InvalidCiphertext: {0}")]
    WrongKey(String),
    /// The service could not be reached or answered with a server error: retry.
    #[error("the key service is unavailable: {0}")]
    Unavailable(String),
}

impl KeyError {
    /// Firehose's name for the condition (the `code` label of the failure metric).
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::NotFound(_) => "KMSKeyNotFound",
            KeyError::AccessDenied(_) => "KMSKeyAccessDenied",
            KeyError::Disabled(_) => "KMSKeyDisabled",
            KeyError::InvalidState(_) => "KMSKeyInvalidState",
            KeyError::WrongKey(_) => "KMSInvalidCiphertext",
            KeyError::Unavailable(_) => "KMSUnavailable",
        }
    }
}

/// A service holding master keys. Blocking: callers run it on the blocking pool.
pub trait KeyService: Send + Sync {
    /// The provider name written in object headers (`local`, `aws-kms`).
    fn provider(&self) -> &'static str;
    /// A fresh data key under `key_id`, wrapped with `context` bound to it.
    fn generate(&self, key_id: &str, context: &Context) -> Result<DataKey, KeyError>;
    /// Unwraps a data key written by [`KeyService::generate`].
    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &Context,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError>;
    /// Makes sure the daemon's own master key `key_id` exists (the local keyring creates it;
    /// other services only check it by use).
    fn ensure_own_key(&self, _key_id: &str) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Opens an encrypted object read from `reader`: reads its header, unwraps its data key with
/// `keys` and returns a frame reader. `expected_key` (the object's S3 key, when known) must match
/// the key in the header's context, so a header grafted onto another object's name is refused.
pub fn open<R: std::io::Read>(
    mut reader: R,
    keys: &dyn KeyService,
    expected_key: Option<&str>,
) -> Result<(format::Header, format::Decryptor<R>), OpenError> {
    let (header, fields, tag) = format::Header::read(&mut reader)?;
    if header.provider != keys.provider() {
        return Err(OpenError::Provider {
            object: header.provider.clone(),
            configured: keys.provider(),
        });
    }
    if let Some(expected) = expected_key {
        let written = header.context(CONTEXT_OBJECT_KEY).unwrap_or_default();
        // The object key in the header is the name the object was written under.
        if written != expected {
            return Err(OpenError::KeyMismatch {
                header: written.to_string(),
                object: expected.to_string(),
            });
        }
    }
    let wrap_context = wrap_context(&header.context);
    let data_key = keys.decrypt(&header.key_id, &header.wrapped_key, &wrap_context)?;
    let decryptor = format::Decryptor::new(reader, &header, &fields, &tag, &data_key)?;
    Ok((header, decryptor))
}

/// The part of an object's context its data key is bound to: the stream (not the object key,
/// so that one data key can serve several objects of the stream).
pub fn wrap_context(object_context: &Context) -> Context {
    object_context
        .iter()
        .filter(|(k, _)| k == CONTEXT_STREAM)
        .cloned()
        .collect()
}

/// Why an encrypted object cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error("cannot unwrap the data key: {0}")]
    Key(#[from] KeyError),
    #[error(
        "the object was encrypted with key provider {object:?}, but {configured:?} is configured"
    )]
    Provider {
        object: String,
        configured: &'static str,
    },
    #[error("the header names object {header:?}, not {object:?}: it belongs to another object")]
    KeyMismatch { header: String, object: String },
}
