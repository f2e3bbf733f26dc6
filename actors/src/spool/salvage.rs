//! After a damaged frame the frames behind it are usually intact: find the next one that passes
//! every check and keep it and what follows, in a segment of its own.
//!
//! A segment holds consecutive seqs, so the good frames after a hole cannot stay in the file
//! that has the hole: they are copied into a new segment named by the first of them, and the
//! damaged file is cut at the damage. The seqs in the hole are the only ones lost; between two
//! segments they count as acknowledged, as any other missing seqs do.
//!
//! Order on disk: the new segment is written and fsynced (and the directory with it) before the
//! damaged file is cut. A crash in between leaves both; the next recovery then finds the copy as
//! the segment that follows and cuts the damaged file at the same place without copying again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{decode_frame, frame_len_from_prefix, RECORD_HEADER_BYTES};
use super::segment::{Segment, SEGMENT_HEADER_BYTES};

/// Where reading can start again after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resync {
    /// Offset of the first good frame after the damage.
    pub(crate) offset: u64,
    /// Its seq; the seqs from the damaged one up to this one are lost.
    pub(crate) seq: u64,
}

/// Finds the first frame in `file[from..end)` whose length is plausible, whose CRC is valid
/// and whose seq lies in `lowest..limit` (a valid CRC at a random offset is a 1 in 2^32
/// chance; the seq range makes it smaller still). `from` is the damaged frame's offset; the
/// search starts there, so a good frame with an unexpected (later) seq is taken as it is.
pub(crate) fn find_resync(
    file: &File,
    from: u64,
    end: u64,
    lowest: u64,
    limit: u64,
) -> io::Result<Option<Resync>> {
    let start = from;
    if end <= start || end - start < RECORD_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut region = vec![0; (end - start) as usize];
    file.read_exact_at(&mut region, start)?;
    for position in 0..=region.len() - RECORD_HEADER_BYTES {
        let seq = u64::from_le_bytes(
            region[position + 8..position + 16]
                .try_into()
                .expect("8 bytes"),
        );
        if seq < lowest || seq >= limit {
            continue;
        }
        let prefix: [u8; 4] = region[position..position + 4].try_into().expect("4 bytes");
        let Ok(frame_len) = frame_len_from_prefix(prefix) else {
            continue;
        };
        if frame_len > region.len() - position {
            continue;
        }
        if let Ok(decoded) = decode_frame(&region[position..position + frame_len]) {
            if decoded.seq == seq {
                return Ok(Some(Resync {
                    offset: start + position as u64,
                    seq,
                }));
            }
        }
    }
    Ok(None)
}

/// Copies `file[resync.offset..end)` into a new segment named by `resync.seq`, fsynced with
/// its directory. The returned segment knows its length and first seq only: whoever adds it
/// sets `next_seq` and the index (recovery scans it; the reader already knows where it ends).
pub(crate) fn copy_into_segment(
    dir: &Path,
    file: &File,
    resync: Resync,
    end: u64,
) -> io::Result<Segment> {
    let mut tail = vec![0; (end - resync.offset) as usize];
    file.read_exact_at(&mut tail, resync.offset)?;
    let mut segment = Segment::create(dir, resync.seq)?;
    let written = segment
        .file
        .write_all_at(&tail, SEGMENT_HEADER_BYTES as u64)
        .and_then(|()| segment.file.sync_all())
        .and_then(|()| super::committed::sync_dir(dir));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&segment.path);
        return Err(error);
    }
    segment.len = SEGMENT_HEADER_BYTES as u64 + tail.len() as u64;
    Ok(segment)
}
