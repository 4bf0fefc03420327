//! The segment file format: pure encoding and scanning, no I/O.

use std::ops::Range;

use bytes::Bytes;

use crate::buffer::Record;
use crate::crypto::segment::SegmentCipher;

/// A segment of plain records.
pub const MAGIC: &[u8; 8] = b"HPSPOOL\x01";
/// A segment of sealed records (the stream's spool is encrypted at rest).
pub const SEALED_MAGIC: &[u8; 8] = b"HPSPOOL\x02";
/// Magic + base seq.
pub const HEADER_LEN: usize = 16;
/// A sealed segment's envelope header may not be longer than this.
pub(super) const MAX_ENVELOPE: usize = 64 * 1024;
/// len + crc.
const FRAME_LEN: usize = 8;
/// seq + arrival.
const META_LEN: usize = 16;

/// A plain segment's header.
pub fn plain_header(base: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&base.to_le_bytes());
    out
}

/// A sealed segment's header: magic, base, then the envelope header with its u32 length.
pub fn sealed_header(base: u64, envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + envelope.len());
    out.extend_from_slice(SEALED_MAGIC);
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
    out.extend_from_slice(envelope);
    out
}

/// Appends one record's frame to `out`, its data sealed when `cipher` is given.
pub fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    arrival_ms: i64,
    data: &[u8],
    cipher: Option<&SegmentCipher>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    match cipher {
        Some(c) => c.seal(seq, arrival_ms, data, out),
        None => out.extend_from_slice(data),
    }
    let len = (out.len() - start - FRAME_LEN) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte is a whole, valid record.
    Clean,
    /// The data stops inside a record (or its last record fails its checksum): a torn write.
    Torn { at: u64 },
    /// A record fails its checksum, does not authenticate, or is malformed with more data
    /// after it.
    Corrupt { at: u64 },
}

/// What a segment's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base: u64,
    /// Where a sealed segment's envelope header lies.
    pub envelope: Option<Range<usize>>,
    /// Where the records start.
    pub len: usize,
}

/// Reads a segment's header; a header cut short is a torn write at 0.
pub fn read_header(data: &[u8]) -> Result<SegmentHeader, ScanEnd> {
    let head = &data[..data.len().min(8)];
    if data.len() < HEADER_LEN {
        return Err(
            if MAGIC.starts_with(head) || SEALED_MAGIC.starts_with(head) {
                ScanEnd::Torn { at: 0 }
            } else {
                ScanEnd::Corrupt { at: 0 }
            },
        );
    }
    let base = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if head == MAGIC {
        return Ok(SegmentHeader {
            base,
            envelope: None,
            len: HEADER_LEN,
        });
    }
    if head != SEALED_MAGIC {
        return Err(ScanEnd::Corrupt { at: 0 });
    }
    let Some(n) = data.get(HEADER_LEN..HEADER_LEN + 4) else {
        return Err(ScanEnd::Torn { at: 0 });
    };
    let n = u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize;
    if n > MAX_ENVELOPE {
        return Err(ScanEnd::Corrupt { at: 0 });
    }
    let start = HEADER_LEN + 4;
    if data.len() < start + n {
        return Err(ScanEnd::Torn { at: 0 });
    }
    Ok(SegmentHeader {
        base,
        envelope: Some(start..start + n),
        len: start + n,
    })
}

/// What a segment holds.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Record>,
    pub end: ScanEnd,
}

/// One frame read at a position of a segment's bytes.
#[derive(Debug)]
pub enum Frame {
    /// A whole, valid record, and where the next frame starts.
    Record(Record, usize),
    /// The bytes stop inside the frame.
    Incomplete,
    /// The frame is whole but fails its checksum or does not authenticate; `last`: nothing
    /// follows it in `data`.
    Bad { last: bool },
}

/// Reads the frame at `pos` of `data` (a sealed segment's records opened with `cipher`). A
/// plain record's data is a slice of `data`.
pub fn next_frame(data: &Bytes, pos: usize, cipher: Option<&SegmentCipher>) -> Frame {
    if data.len() - pos < FRAME_LEN {
        return Frame::Incomplete;
    }
    let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
    let body_start = pos + FRAME_LEN;
    if len < META_LEN {
        return Frame::Bad { last: false };
    }
    if data.len() - body_start < len {
        return Frame::Incomplete;
    }
    let end = body_start + len;
    let body = &data[body_start..end];
    let last = end == data.len();
    if crc32c::crc32c(body) != crc {
        return Frame::Bad { last };
    }
    let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let arrival_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let data = match cipher {
        None => data.slice(body_start + META_LEN..end),
        // A record whose checksum holds but which does not authenticate was altered.
        Some(c) => match c.open_record(seq, arrival_ms, &body[META_LEN..]) {
            Some(plain) => Bytes::from(plain),
            None => return Frame::Bad { last },
        },
    };
    Frame::Record(
        Record {
            data,
            arrival_ms,
            seq,
            part: 0,
            partition: None,
            owed: Default::default(),
        },
        end,
    )
}

/// Reads every valid record after `header`, stopping at the first damage. A sealed segment
/// needs its `cipher`; a record that does not authenticate is damage.
pub fn scan_segment(data: &[u8], header: &SegmentHeader, cipher: Option<&SegmentCipher>) -> Scan {
    assert_eq!(
        header.envelope.is_some(),
        cipher.is_some(),
        "a sealed segment is scanned with its cipher"
    );
    let all = Bytes::copy_from_slice(data);
    let mut records = Vec::new();
    let mut pos = header.len;
    let end = loop {
        if pos == data.len() {
            break ScanEnd::Clean;
        }
        match next_frame(&all, pos, cipher) {
            Frame::Record(r, next) => {
                records.push(r);
                pos = next;
            }
            Frame::Incomplete => break ScanEnd::Torn { at: pos as u64 },
            // The last record of the file failing its checksum is a torn write; anything
            // after it means the damage is in the middle.
            Frame::Bad { last: true } => break ScanEnd::Torn { at: pos as u64 },
            Frame::Bad { last: false } => break ScanEnd::Corrupt { at: pos as u64 },
        }
    };
    Scan { records, end }
}
