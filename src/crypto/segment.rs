//! Spool segments at rest (`StartDeliveryStreamEncryption`): the objects' envelope — an HPEN
//! header ([`super::format`]) holding a fresh data key wrapped by the master key — with each
//! record sealed on its own, so a segment grows by appends and a torn write costs only its last
//! record.
//!
//! ```text
//! sealed record = AES-256-GCM(data key, nonce = nonce_prefix ‖ u32 (seq − base),
//!                 aad = SHA-256(header) ‖ u64 seq ‖ i64 arrival_ms) ciphertext ‖ tag[16]
//! ```
//!
//! The header's context is the stream and the segment's base seq, so a segment copied into
//! another stream's spool, or renamed, does not open. Pure apart from the key-service calls.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;

use super::format::{self, FormatError, Header, TAG_LEN};
use super::{CONTEXT_STREAM, Context, KeyError, KeyService, OpenError, wrap_context};

/// The context name of a segment's base seq.
pub const CONTEXT_SEGMENT: &str = "hosepipe:spool-segment";
/// Records one segment may hold: its nonce counter (the last value is the header's).
pub const MAX_RECORDS: u64 = u32::MAX as u64;

/// Seals and opens the records of one segment.
pub struct SegmentCipher {
    cipher: Aes256Gcm,
    header_hash: [u8; 32],
    prefix: [u8; 8],
    base: u64,
}

fn context(stream: &str, base: u64) -> Context {
    vec![
        (CONTEXT_SEGMENT.to_string(), base.to_string()),
        (CONTEXT_STREAM.to_string(), stream.to_string()),
    ]
}

impl SegmentCipher {
    /// A fresh data key under `key_id` for the segment of `stream` starting at `base`; returns
    /// the cipher and the envelope header to write at the segment's start.
    pub fn create(
        keys: &dyn KeyService,
        key_id: &str,
        stream: &str,
        base: u64,
    ) -> Result<(SegmentCipher, Vec<u8>), KeyError> {
        let context = context(stream, base);
        let key = keys.generate(key_id, &wrap_context(&context))?;
        let mut prefix = [0u8; 8];
        rand::rng().fill_bytes(&mut prefix);
        let header = Header {
            provider: keys.provider().to_string(),
            key_id: key.key_id.clone(),
            wrapped_key: key.wrapped.clone(),
            context,
            frame_size: format::MAX_FRAME_SIZE,
            nonce_prefix: prefix,
        };
        let cipher = Aes256Gcm::new(key.plaintext.as_ref().into());
        let mut out = Vec::new();
        let header_hash = format::seal_header(&cipher, &header, &mut out);
        Ok((
            SegmentCipher {
                cipher,
                header_hash,
                prefix,
                base,
            },
            out,
        ))
    }

    /// Opens the envelope header `bytes` of the segment of `stream` starting at `base`.
    pub fn open(
        keys: &dyn KeyService,
        bytes: &[u8],
        stream: &str,
        base: u64,
    ) -> Result<SegmentCipher, OpenError> {
        let mut r = bytes;
        let (header, fields, tag) = Header::read(&mut r)?;
        if !r.is_empty() {
            return Err(FormatError::Malformed("bytes after the header".into()).into());
        }
        if header.provider != keys.provider() {
            return Err(OpenError::Provider {
                object: header.provider.clone(),
                configured: keys.provider(),
            });
        }
        let base_text = base.to_string();
        if header.context(CONTEXT_STREAM) != Some(stream)
            || header.context(CONTEXT_SEGMENT) != Some(base_text.as_str())
        {
            return Err(FormatError::Malformed(format!(
                "the header belongs to segment {:?} of stream {:?}, not {base} of {stream:?}",
                header.context(CONTEXT_SEGMENT).unwrap_or_default(),
                header.context(CONTEXT_STREAM).unwrap_or_default(),
            ))
            .into());
        }
        let data_key = keys.decrypt(
            &header.key_id,
            &header.wrapped_key,
            &wrap_context(&header.context),
        )?;
        let cipher = Aes256Gcm::new(data_key.as_ref().into());
        let header_hash = format::verify_header(&cipher, &header, &fields, &tag)?;
        Ok(SegmentCipher {
            cipher,
            header_hash,
            prefix: header.nonce_prefix,
            base,
        })
    }

    fn nonce_and_aad(&self, seq: u64, arrival_ms: i64) -> Option<([u8; 12], [u8; 48])> {
        let n = seq.checked_sub(self.base).filter(|n| *n < MAX_RECORDS)? as u32;
        let mut aad = [0u8; 48];
        aad[..32].copy_from_slice(&self.header_hash);
        aad[32..40].copy_from_slice(&seq.to_be_bytes());
        aad[40..].copy_from_slice(&arrival_ms.to_be_bytes());
        Some((format::nonce(&self.prefix, n), aad))
    }

    /// Appends `data` sealed as record `seq` to `out` (`data.len() + 16` bytes).
    pub fn seal(&self, seq: u64, arrival_ms: i64, data: &[u8], out: &mut Vec<u8>) {
        let (nonce, aad) = self
            .nonce_and_aad(seq, arrival_ms)
            .expect("a sealed segment rolls over before its nonce counter runs out");
        let start = out.len();
        out.extend_from_slice(data);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[start..])
            .expect("AES-GCM seals any record");
        out.extend_from_slice(&tag);
    }

    /// Record `seq`'s plaintext, or `None` when it does not authenticate.
    pub fn open_record(&self, seq: u64, arrival_ms: i64, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, aad) = self.nonce_and_aad(seq, arrival_ms)?;
        let body_len = sealed.len().checked_sub(TAG_LEN)?;
        let mut plain = sealed[..body_len].to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad,
                &mut plain,
                Tag::from_slice(&sealed[body_len..]),
            )
            .ok()?;
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::Keyring;

    fn ring() -> (tempfile::TempDir, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::new(&dir.path().join("keyring.json"));
        ring.create("spool").unwrap();
        (dir, ring)
    }

    #[test]
    fn records_open_only_where_they_were_sealed() {
        let (_dir, ring) = ring();
        let (cipher, header) = SegmentCipher::create(&ring, "spool", "orders", 100).unwrap();
        let mut sealed = Vec::new();
        cipher.seal(101, 7, b"secret", &mut sealed);
        assert_eq!(sealed.len(), 6 + TAG_LEN);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let opened = SegmentCipher::open(&ring, &header, "orders", 100).unwrap();
        assert_eq!(opened.open_record(101, 7, &sealed).unwrap(), b"secret");
        // Another seq, arrival time, or a flipped byte: refused.
        assert!(opened.open_record(102, 7, &sealed).is_none());
        assert!(opened.open_record(101, 8, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(opened.open_record(101, 7, &flipped).is_none());
        assert!(
            opened.open_record(99, 7, &sealed).is_none(),
            "below the base"
        );
        // The header names its stream and base.
        assert!(SegmentCipher::open(&ring, &header, "other", 100).is_err());
        assert!(SegmentCipher::open(&ring, &header, "orders", 101).is_err());
        let mut tampered = header.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(SegmentCipher::open(&ring, &tampered, "orders", 100).is_err());
    }

    #[test]
    fn an_unknown_master_key_gives_no_segment() {
        let (_dir, ring) = ring();
        assert!(matches!(
            SegmentCipher::create(&ring, "missing", "orders", 0),
            Err(KeyError::NotFound(_))
        ));
    }
}
