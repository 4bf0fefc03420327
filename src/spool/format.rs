//! The segment file format: pure encoding and scanning, no I/O.

use bytes::Bytes;

use crate::buffer::Record;

pub const MAGIC: &[u8; 8] = b"HPSPOOL\x01";
pub const HEADER_LEN: usize = 16;
/// len + crc.
const FRAME_LEN: usize = 8;
/// seq + arrival.
const META_LEN: usize = 16;

/// Appends one record's frame to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, arrival_ms: i64, data: &[u8]) {
    let len = (META_LEN + data.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out[start + FRAME_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte is a whole, valid record.
    Clean,
    /// The data stops inside a record (or its last record fails its checksum): a torn write.
    Torn { at: u64 },
    /// A record fails its checksum or is malformed with more data after it.
    Corrupt { at: u64 },
}

/// What a segment holds.
#[derive(Debug)]
pub struct Scan {
    pub header_base: Option<u64>,
    pub records: Vec<Record>,
    pub end: ScanEnd,
}

/// Reads every valid record of a segment, stopping at the first damage.
pub fn scan_segment(data: &[u8]) -> Scan {
    if data.len() < HEADER_LEN {
        let end = if MAGIC.starts_with(&data[..data.len().min(8)]) {
            ScanEnd::Torn { at: 0 }
        } else {
            ScanEnd::Corrupt { at: 0 }
        };
        return Scan {
            header_base: None,
            records: Vec::new(),
            end,
        };
    }
    if &data[..8] != MAGIC {
        return Scan {
            header_base: None,
            records: Vec::new(),
            end: ScanEnd::Corrupt { at: 0 },
        };
    }
    let base = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let all = Bytes::copy_from_slice(data);
    let mut records = Vec::new();
    let mut pos = HEADER_LEN;
    let end = loop {
        if pos == data.len() {
            break ScanEnd::Clean;
        }
        if data.len() - pos < FRAME_LEN {
            break ScanEnd::Torn { at: pos as u64 };
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let body_start = pos + FRAME_LEN;
        if len < META_LEN {
            break ScanEnd::Corrupt { at: pos as u64 };
        }
        if data.len() - body_start < len {
            break ScanEnd::Torn { at: pos as u64 };
        }
        let body = &data[body_start..body_start + len];
        if crc32c::crc32c(body) != crc {
            // The last record of the file failing its checksum is a torn write; anything
            // after it means the damage is in the middle.
            break if body_start + len == data.len() {
                ScanEnd::Torn { at: pos as u64 }
            } else {
                ScanEnd::Corrupt { at: pos as u64 }
            };
        }
        let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let arrival_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        records.push(Record {
            data: all.slice(body_start + META_LEN..body_start + len),
            arrival_ms,
            seq,
            partition: None,
        });
        pos = body_start + len;
    };
    Scan {
        header_base: Some(base),
        records,
        end,
    }
}
