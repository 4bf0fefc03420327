//! hosepipe's encrypted-object format, version 1 (specified in `docs/encryption-format.md`).
//!
//! ```text
//! header  = fields ‖ header_tag[16]
//! fields  = "HPEN" ‖ version u8 (1) ‖ str16 provider ‖ str16 key_id ‖ bytes16 wrapped_key
//!         ‖ u16 n ‖ n × (str16 name ‖ str16 value)      encryption context, sorted by name
//!         ‖ u32 frame_size ‖ u8 nonce_scheme (1) ‖ nonce_prefix[8]
//! body    = frame*  — every frame but the last holds exactly frame_size plaintext bytes; the
//!           last holds fewer (0 when the plaintext is a multiple of frame_size)
//! frame i = AES-256-GCM(data key, nonce = nonce_prefix ‖ u32 i, aad = SHA-256(header) ‖ u32 i
//!           ‖ u8 final) ciphertext ‖ tag[16]
//! header_tag = AES-256-GCM tag of the empty plaintext, nonce = nonce_prefix ‖ 0xFFFFFFFF,
//!              aad = fields
//! ```
//!
//! All integers big-endian; `str16`/`bytes16` are a u16 length then the bytes. Streaming on both
//! sides: the encryptor holds one frame, the decryptor reads one frame at a time. Pure.

use std::io::{Read, Write};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 4] = b"HPEN";
pub const VERSION: u8 = 1;
/// `nonce_prefix ‖ u32 frame number`.
pub const NONCE_SCHEME: u8 = 1;
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per frame unless the writer says otherwise.
pub const DEFAULT_FRAME_SIZE: u32 = 64 * 1024;
/// Frames may not be larger than this (a reader allocates one).
pub const MAX_FRAME_SIZE: u32 = 16 * 1024 * 1024;
/// The frame number reserved for the header tag's nonce.
const HEADER_NONCE: u32 = u32::MAX;

/// Why an object cannot be read. Never comes with plaintext of a frame that failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a hosepipe encrypted object (no HPEN magic)")]
    NotEncrypted,
    #[error("encrypted-object format version {0} is not supported (this hosepipe reads 1)")]
    UnsupportedVersion(u8),
    #[error("the header is malformed: {0}")]
    Malformed(String),
    #[error(
        "the header does not authenticate: it was altered, or the data key is not this object's"
    )]
    Header,
    #[error("frame {0} does not authenticate: the object was altered, reordered or spliced")]
    Frame(u32),
    #[error("the object is truncated: it ends before its final frame")]
    Truncated,
    #[error("reading the object: {0}")]
    Io(#[from] std::io::Error),
}

/// An encrypted object's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which key service wrapped the data key (`local`, `aws-kms`).
    pub provider: String,
    /// The master key, as the provider names it (e.g. `orders` or a KMS key ARN).
    pub key_id: String,
    /// The data key, wrapped by the master key.
    pub wrapped_key: Vec<u8>,
    /// Name/value pairs authenticated with the object (stream, object key), sorted by name.
    pub context: Vec<(String, String)>,
    pub frame_size: u32,
    pub nonce_prefix: [u8; 8],
}

impl Header {
    /// The context value for `name`.
    pub fn context(&self, name: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The header's fields, before its tag.
    pub fn fields(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.wrapped_key.len() + self.key_id.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put16(&mut out, self.provider.as_bytes());
        put16(&mut out, self.key_id.as_bytes());
        put16(&mut out, &self.wrapped_key);
        let mut context = self.context.clone();
        context.sort();
        out.extend_from_slice(&(context.len() as u16).to_be_bytes());
        for (k, v) in &context {
            put16(&mut out, k.as_bytes());
            put16(&mut out, v.as_bytes());
        }
        out.extend_from_slice(&self.frame_size.to_be_bytes());
        out.push(NONCE_SCHEME);
        out.extend_from_slice(&self.nonce_prefix);
        out
    }

    /// Reads a header's fields and tag from the start of an object.
    pub fn read(r: &mut impl Read) -> Result<(Header, Vec<u8>, [u8; TAG_LEN]), FormatError> {
        let mut f = FieldReader { r, raw: Vec::new() };
        if f.take(4)? != MAGIC {
            return Err(FormatError::NotEncrypted);
        }
        let version = f.take(1)?[0];
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let provider = f.text("the provider")?;
        let key_id = f.text("the key id")?;
        let wrapped_key = f.take16()?;
        let n = f.take(2)?;
        let mut context = Vec::new();
        for _ in 0..u16::from_be_bytes([n[0], n[1]]) {
            let k = f.text("a context name")?;
            let v = f.text("a context value")?;
            context.push((k, v));
        }
        if !context.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(FormatError::Malformed(
                "the encryption context is not sorted by name".into(),
            ));
        }
        let b = f.take(4)?;
        let frame_size = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if frame_size == 0 || frame_size > MAX_FRAME_SIZE {
            return Err(FormatError::Malformed(format!(
                "frame size {frame_size} is outside 1..={MAX_FRAME_SIZE}"
            )));
        }
        let scheme = f.take(1)?[0];
        if scheme != NONCE_SCHEME {
            return Err(FormatError::Malformed(format!(
                "nonce scheme {scheme} is not 1"
            )));
        }
        let prefix = f.take(8)?;
        let fields = f.raw.clone();
        let tag = f.take(TAG_LEN)?;
        let header = Header {
            provider,
            key_id,
            wrapped_key,
            context,
            frame_size,
            nonce_prefix: prefix.try_into().expect("8 bytes"),
        };
        Ok((header, fields, tag.try_into().expect("16 bytes")))
    }
}

/// Reads header fields, keeping the bytes read (they are the header tag's AAD).
struct FieldReader<'r, R> {
    r: &'r mut R,
    raw: Vec<u8>,
}

impl<R: Read> FieldReader<'_, R> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, FormatError> {
        let mut buf = vec![0; n];
        self.r.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof if self.raw.len() < 4 => FormatError::NotEncrypted,
            std::io::ErrorKind::UnexpectedEof => FormatError::Truncated,
            _ => FormatError::Io(e),
        })?;
        self.raw.extend_from_slice(&buf);
        Ok(buf)
    }

    fn take16(&mut self) -> Result<Vec<u8>, FormatError> {
        let n = self.take(2)?;
        self.take(u16::from_be_bytes([n[0], n[1]]) as usize)
    }

    fn text(&mut self, what: &str) -> Result<String, FormatError> {
        String::from_utf8(self.take16()?)
            .map_err(|_| FormatError::Malformed(format!("{what} is not UTF-8")))
    }
}

/// `u16 length ‖ bytes` (the format's `str16` / `bytes16`).
pub(crate) fn put16(out: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).expect("header strings are bounded by their producers");
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn nonce(prefix: &[u8; 8], n: u32) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(prefix);
    out[8..].copy_from_slice(&n.to_be_bytes());
    out
}

/// Writes `header`'s fields and tag to `out`; returns SHA-256 of both (the frames' AAD).
pub(crate) fn seal_header(cipher: &Aes256Gcm, header: &Header, out: &mut Vec<u8>) -> [u8; 32] {
    let fields = header.fields();
    let mut empty = [0u8; 0];
    let tag = cipher
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce(&header.nonce_prefix, HEADER_NONCE)),
            &fields,
            &mut empty,
        )
        .expect("AES-GCM encrypts any length under 64 GiB");
    let start = out.len();
    out.extend_from_slice(&fields);
    out.extend_from_slice(&tag);
    Sha256::digest(&out[start..]).into()
}

/// Checks a header's tag under the data key; returns SHA-256 of its fields and tag.
pub(crate) fn verify_header(
    cipher: &Aes256Gcm,
    header: &Header,
    fields: &[u8],
    tag: &[u8; TAG_LEN],
) -> Result<[u8; 32], FormatError> {
    let mut empty = [0u8; 0];
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&nonce(&header.nonce_prefix, HEADER_NONCE)),
            fields,
            &mut empty,
            Tag::from_slice(tag),
        )
        .map_err(|_| FormatError::Header)?;
    let mut hasher = Sha256::new();
    hasher.update(fields);
    hasher.update(tag);
    Ok(hasher.finalize().into())
}

fn frame_aad(header_hash: &[u8; 32], n: u32, last: bool) -> [u8; 37] {
    let mut aad = [0; 37];
    aad[..32].copy_from_slice(header_hash);
    aad[32..36].copy_from_slice(&n.to_be_bytes());
    aad[36] = u8::from(last);
    aad
}

/// Encrypts an object's body frame by frame into `out`.
pub struct Encryptor {
    cipher: Aes256Gcm,
    header_hash: [u8; 32],
    prefix: [u8; 8],
    frame_size: usize,
    next: u32,
    pending: Vec<u8>,
}

impl Encryptor {
    /// Starts an object: writes its header to `out`.
    pub fn start(header: &Header, data_key: &[u8; 32], out: &mut Vec<u8>) -> Encryptor {
        let cipher = Aes256Gcm::new(data_key.into());
        let header_hash = seal_header(&cipher, header, out);
        Encryptor {
            cipher,
            header_hash,
            prefix: header.nonce_prefix,
            frame_size: header.frame_size as usize,
            next: 0,
            pending: Vec::with_capacity(header.frame_size as usize),
        }
    }

    /// Encrypts more plaintext; every full frame goes to `out` at once.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let room = self.frame_size - self.pending.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = rest;
            if self.pending.len() == self.frame_size {
                self.seal(false, out);
            }
        }
    }

    /// Writes the final frame (shorter than a full one, possibly empty).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.seal(true, out);
    }

    fn seal(&mut self, last: bool, out: &mut Vec<u8>) {
        assert!(
            self.next < HEADER_NONCE,
            "frame numbers run out at 2^32 - 1"
        );
        let start = out.len();
        out.extend_from_slice(&self.pending);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce(&self.prefix, self.next)),
                &frame_aad(&self.header_hash, self.next, last),
                &mut out[start..],
            )
            .expect("AES-GCM encrypts any frame");
        out.extend_from_slice(&tag);
        self.pending.clear();
        self.next += 1;
    }
}

/// Encrypts a whole body at once (header included).
pub fn encrypt(header: &Header, data_key: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let frames = body.len() / header.frame_size as usize + 1;
    let mut out = Vec::with_capacity(body.len() + frames * TAG_LEN + 256);
    let mut e = Encryptor::start(header, data_key, &mut out);
    e.update(body, &mut out);
    e.finish(&mut out);
    out
}

/// Reads an object's frames one at a time, after its header was read and its data key
/// unwrapped.
pub struct Decryptor<R> {
    reader: R,
    cipher: Aes256Gcm,
    header_hash: [u8; 32],
    prefix: [u8; 8],
    next: u32,
    done: bool,
    buf: Vec<u8>,
}

impl<R: Read> Decryptor<R> {
    /// Checks the header's tag with the data key; `reader` is positioned after the header.
    pub fn new(
        reader: R,
        header: &Header,
        fields: &[u8],
        tag: &[u8; TAG_LEN],
        data_key: &[u8; 32],
    ) -> Result<Self, FormatError> {
        let cipher = Aes256Gcm::new(data_key.into());
        let header_hash = verify_header(&cipher, header, fields, tag)?;
        Ok(Decryptor {
            reader,
            cipher,
            header_hash,
            prefix: header.nonce_prefix,
            next: 0,
            done: false,
            buf: vec![0; header.frame_size as usize + TAG_LEN],
        })
    }

    /// The next frame's plaintext, `None` after the final frame.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let mut got = 0;
        while got < self.buf.len() {
            match self.reader.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got < TAG_LEN {
            return Err(FormatError::Truncated);
        }
        // Only the final frame is shorter than a full one.
        let last = got < self.buf.len();
        let n = self.next;
        let (body, tag) = self.buf[..got].split_at_mut(got - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce(&self.prefix, n)),
                &frame_aad(&self.header_hash, n, last),
                body,
                Tag::from_slice(tag),
            )
            .map_err(|_| FormatError::Frame(n))?;
        self.next += 1;
        self.done = last;
        Ok(Some(&self.buf[..got - TAG_LEN]))
    }

    /// Writes every frame's plaintext to `out`; returns the plaintext length. On an error,
    /// `out` holds only frames that authenticated (callers writing a file should discard it).
    pub fn decrypt_to(mut self, out: &mut impl Write) -> Result<u64, FormatError> {
        let mut total = 0u64;
        while let Some(plain) = self.next_frame()? {
            out.write_all(plain)?;
            total += plain.len() as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(frame_size: u32) -> Header {
        Header {
            provider: "local".into(),
            key_id: "orders".into(),
            wrapped_key: vec![7; 64],
            context: vec![
                ("hosepipe:object-key".into(), "a/b.gz.enc".into()),
                ("hosepipe:stream".into(), "orders".into()),
            ],
            frame_size,
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    const KEY: [u8; 32] = [42; 32];

    fn open(object: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, FormatError> {
        let mut r = object;
        let (h, fields, tag) = Header::read(&mut r)?;
        let mut out = Vec::new();
        Decryptor::new(r, &h, &fields, &tag, key)?.decrypt_to(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_the_edges() {
        for (frame, len) in [
            (16, 0),
            (16, 1),
            (16, 15),
            (16, 16),
            (16, 17),
            (16, 48),
            (4096, 10_000),
        ] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let object = encrypt(&header(frame), &KEY, &body);
            // Full frames plus one final frame shorter than a full one.
            let frames = len / frame as usize + 1;
            assert_eq!(
                object.len(),
                header(frame).fields().len() + TAG_LEN + len + frames * TAG_LEN
            );
            assert_eq!(
                open(&object, &KEY).unwrap(),
                body,
                "frame {frame}, {len} bytes"
            );
        }
        let mut r = &encrypt(&header(16), &KEY, b"x")[..];
        assert_eq!(Header::read(&mut r).unwrap().0, header(16));
    }

    #[test]
    fn streaming_writes_match_one_shot() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        let mut e = Encryptor::start(&header(64), &KEY, &mut out);
        for chunk in body.chunks(37) {
            e.update(chunk, &mut out);
        }
        e.finish(&mut out);
        assert_eq!(out, encrypt(&header(64), &KEY, &body));
    }

    #[test]
    fn every_tampering_is_detected() {
        let body: Vec<u8> = (0..100u8).collect();
        let object = encrypt(&header(16), &KEY, &body);
        // Any flipped byte, header or body.
        for i in 0..object.len() {
            let mut bad = object.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&bad, &KEY).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        // Any truncation.
        for len in 0..object.len() {
            assert!(open(&object[..len], &KEY).is_err(), "truncated to {len}");
        }
        assert!(matches!(
            open(&object[..object.len() - 2], &KEY),
            Err(FormatError::Frame(_))
        ));
        let header_len = header(16).fields().len() + TAG_LEN;
        let frame = 16 + TAG_LEN;
        // Cut exactly at a frame boundary: the final frame is missing.
        assert!(matches!(
            open(&object[..header_len + 2 * frame], &KEY),
            Err(FormatError::Truncated)
        ));
        // Swapped frames.
        let mut swapped = object[..header_len].to_vec();
        swapped.extend_from_slice(&object[header_len + frame..header_len + 2 * frame]);
        swapped.extend_from_slice(&object[header_len..header_len + frame]);
        swapped.extend_from_slice(&object[header_len + 2 * frame..]);
        assert!(matches!(open(&swapped, &KEY), Err(FormatError::Frame(0))));
        // A header grafted from another object with the same data key.
        let mut other_header = header(16);
        other_header.context[0].1 = "another/object".into();
        let other = encrypt(&other_header, &KEY, &body);
        let other_len = other_header.fields().len() + TAG_LEN;
        let mut grafted = other[..other_len].to_vec();
        grafted.extend_from_slice(&object[header_len..]);
        assert!(matches!(open(&grafted, &KEY), Err(FormatError::Frame(0))));
        // The wrong data key.
        assert!(matches!(open(&object, &[1; 32]), Err(FormatError::Header)));
        // Not ours at all.
        assert!(matches!(
            open(b"\x1f\x8b\x08", &KEY),
            Err(FormatError::NotEncrypted)
        ));
    }

    proptest! {
        #[test]
        fn any_size_round_trips(len in 0usize..5000, frame in 1u32..300) {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let object = encrypt(&header(frame), &KEY, &body);
            prop_assert_eq!(open(&object, &KEY).unwrap(), body);
        }
    }
}
