//! Recovery on open: read the committed position, scan the segments after it, cut torn or
//! corrupt data, and say exactly what was cut.
//!
//! Rules:
//! - Segments whose records are all at or below the committed position are deleted unscanned.
//! - Every other segment is read frame by frame (length, CRC, expected seq). At a bad frame
//!   the file is cut there; nothing before it is ever skipped. Behind the damage, recovery
//!   looks for the next frame that passes every check (length, CRC, a seq in the expected
//!   range): the frames from there on move to a segment of their own (`salvage.rs`), and only
//!   the seqs in between are lost, counted exactly and treated as acked.
//! - With no good frame behind it, in a non-last segment the records after the cut are counted
//!   exactly (the next segment's name says where they ended) and treated as acked.
//! - In the last segment such a cut is usually a torn write from a crash; the count is the
//!   frames that can still be framed after the cut point (at least one).
//! - A missing or corrupt committed-position file means starting at the first record on disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::committed::{
    read_committed, sync_dir, write_committed, AckWatermark, CommittedFileStatus,
    COMMITTED_TMP_FILE,
};
use super::config::SpoolConfig;
use super::error::SpoolError;
use super::record::{decode_frame, frame_len_from_prefix};
use super::segment::{
    check_segment_header, parse_segment_file_name, HeaderCheck, Segment, SparseIndex,
    FORMAT_VERSION, SEGMENT_HEADER_BYTES,
};
use super::state::WriterState;

const SCAN_BUFFER_BYTES: usize = 1024 * 1024;

/// What [`Spool::open`](super::Spool::open) found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records after the committed position: they will be read (again) and sent to Kafka.
    pub records_replayable: u64,
    /// Bytes cut off segment files (torn writes, garbage, damaged records and what followed).
    pub bytes_truncated: u64,
    /// Records lost to corruption: exact for segments followed by another segment, a lower
    /// bound for the last segment (the frames still recognisable after the cut, at least 1).
    pub corrupt_records_cut: u64,
    /// Segment files after recovery, including the active one.
    pub segments: usize,
    /// Where reading starts: `committed_seq + 1`.
    pub committed_seq: u64,
    /// The seq the next append gets.
    pub next_seq: u64,
    /// What the committed-position file held.
    pub committed_file: CommittedFileStatus,
    /// Segments deleted because every record in them was already acked.
    pub acked_segments_deleted: usize,
    /// Each cut, as also logged.
    pub cuts: Vec<RecoveryCut>,
}

/// One place where recovery cut a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryCut {
    /// The segment file.
    pub file: PathBuf,
    /// Where the cut starts (0: the whole file was unusable and removed).
    pub offset: u64,
    /// Bytes removed.
    pub bytes_cut: u64,
    /// Records lost (see [`RecoveryReport::corrupt_records_cut`]).
    pub records_lost: u64,
    /// What was wrong.
    pub reason: String,
}

/// The recovered state, ready for `Shared`.
pub(crate) struct Recovered {
    pub(crate) state: WriterState,
    pub(crate) watermark: AckWatermark,
    pub(crate) persisted_committed: u64,
    pub(crate) report: RecoveryReport,
}

/// Accumulates what recovery does.
struct Findings {
    cuts: Vec<RecoveryCut>,
    acked_segments_deleted: usize,
    /// One past the highest seq seen in a frame with a valid CRC, cut or not: the next seq
    /// never reuses a seq a reader may already have seen.
    seq_floor: u64,
}

impl Findings {
    fn cut(&mut self, cut: RecoveryCut) {
        tracing::warn!(
            file = %cut.file.display(),
            offset = cut.offset,
            bytes_cut = cut.bytes_cut,
            records_lost = cut.records_lost,
            reason = %cut.reason,
            "spool recovery cut a corrupt or torn segment"
        );
        self.cuts.push(cut);
    }
}

pub(crate) fn recover(config: &SpoolConfig) -> Result<Recovered, SpoolError> {
    let dir = config.dir.as_path();
    let committed_file = read_committed(dir);
    let known_committed = match &committed_file {
        CommittedFileStatus::Loaded(committed) => Some(*committed),
        CommittedFileStatus::Missing => None,
        CommittedFileStatus::Corrupt(reason) => {
            tracing::warn!(
                dir = %dir.display(),
                %reason,
                "spool committed-position file is corrupt; replaying from the first record on disk"
            );
            None
        }
    };
    let listed = list_segments(dir)?;
    // Refuse a newer format before changing anything on disk.
    for (first_seq, path) in &listed {
        let header = read_header(path)?;
        if let HeaderCheck::UnsupportedVersion(found) = check_segment_header(&header, *first_seq) {
            return Err(SpoolError::UnsupportedVersion {
                file: path.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
    }
    remove_if_present(&dir.join(COMMITTED_TMP_FILE))?;
    if known_committed.is_none() && !listed.is_empty() {
        tracing::warn!(dir = %dir.display(), "spool has segments but no committed position; replaying all");
    }
    let mut findings = Findings {
        cuts: Vec::new(),
        acked_segments_deleted: 0,
        seq_floor: 0,
    };
    let mut kept: Vec<Segment> = Vec::new();
    let mut listed = listed;
    let mut index = 0;
    while index < listed.len() {
        let (first_seq, path) = listed[index].clone();
        let next_first_seq = listed.get(index + 1).map(|(next, _)| *next);
        index += 1;
        if let (Some(committed), Some(next_first)) = (known_committed, next_first_seq) {
            if next_first - 1 <= committed {
                remove_if_present(&path)?;
                findings.acked_segments_deleted += 1;
                continue;
            }
        }
        let recovered = recover_segment(dir, &path, first_seq, next_first_seq, &mut findings)?;
        if let Some(segment) = recovered.segment {
            kept.push(segment);
        }
        if let Some(salvaged) = recovered.salvaged {
            // The good frames after a damaged one, copied into a segment of their own: it is
            // recovered next, like any other (it may hold more damage).
            listed.insert(index, salvaged);
        }
    }

    // Where replay starts. Seqs between a known committed position and the first segment are
    // gone (acked and deleted, or lost to damage that was reported above).
    let first_seq_on_disk = kept
        .iter()
        .find(|segment| segment.record_count() > 0)
        .or(kept.first())
        .map(|segment| segment.first_seq);
    let committed = match (known_committed, first_seq_on_disk) {
        (Some(committed), Some(first)) => committed.max(first.saturating_sub(1)),
        (Some(committed), None) => committed,
        (None, Some(first)) => first.saturating_sub(1),
        (None, None) => 0,
    };
    let next_seq = kept
        .last()
        .map_or(0, |segment| segment.next_seq)
        .max(committed + 1)
        .max(findings.seq_floor);

    // The active segment: the last one if appends can continue in it, else a new one.
    // A segment of an older format is not appended to (its frames would mix formats).
    let reusable = kept.last().is_some_and(|segment| {
        segment.next_seq == next_seq
            && segment.len < config.segment_bytes
            && segment.version == super::segment::FORMAT_VERSION
    });
    let mut created = false;
    if !reusable {
        let continues_last = kept
            .last()
            .is_some_and(|segment| segment.next_seq == next_seq);
        match Segment::create(dir, next_seq).and_then(|segment| {
            segment.file.sync_all()?;
            Ok(segment)
        }) {
            Ok(segment) => {
                kept.push(segment);
                created = true;
            }
            Err(error) if continues_last => {
                // A full disk: what is in the spool can still be read and delivered, which
                // is what makes room. The last segment stays active (past its size); the
                // first append after it tries to rotate again.
                let _ = std::fs::remove_file(dir.join(super::segment::segment_file_name(next_seq)));
                tracing::warn!(
                    dir = %dir.display(),
                    error = %error,
                    "no room for a new spool segment; appending to the last one until there is"
                );
            }
            Err(error) => {
                return Err(SpoolError::io(
                    format!("creating segment {next_seq} in {}", dir.display()),
                    error,
                ))
            }
        }
    }
    // Empty segments other than the active one only get in the way.
    let active_first = kept.last().map(|segment| segment.first_seq);
    let mut segments = BTreeMap::new();
    for segment in kept {
        if segment.record_count() == 0 && Some(segment.first_seq) != active_first {
            remove_if_present(&segment.path)?;
            continue;
        }
        segments.insert(segment.first_seq, segment);
    }

    // Seqs missing between segments (cut or removed) count as acked, or the watermark would
    // wait for them forever.
    let mut watermark = AckWatermark::new(committed);
    let firsts_and_nexts: Vec<(u64, u64)> = segments
        .values()
        .map(|segment| (segment.first_seq, segment.next_seq))
        .collect();
    for pair in firsts_and_nexts.windows(2) {
        let (_, end_of_earlier) = pair[0];
        let (start_of_later, _) = pair[1];
        if end_of_earlier < start_of_later {
            watermark.ack_range(end_of_earlier, start_of_later - 1);
        }
    }

    let records_replayable = segments
        .values()
        .map(|segment| {
            let start = segment.first_seq.max(committed + 1);
            segment.next_seq.saturating_sub(start)
        })
        .sum();
    let persisted_committed = if known_committed == Some(committed) {
        committed
    } else {
        write_committed(dir, committed).map_err(|error| {
            SpoolError::io(
                format!("writing committed position in {}", dir.display()),
                error,
            )
        })?;
        committed
    };
    if created || !findings.cuts.is_empty() || findings.acked_segments_deleted > 0 {
        sync_dir(dir)
            .map_err(|error| SpoolError::io(format!("fsync of {}", dir.display()), error))?;
    }

    let corrupt_records_cut: u64 = findings.cuts.iter().map(|cut| cut.records_lost).sum();
    let report = RecoveryReport {
        records_replayable,
        bytes_truncated: findings.cuts.iter().map(|cut| cut.bytes_cut).sum(),
        corrupt_records_cut,
        segments: segments.len(),
        committed_seq: committed,
        next_seq,
        committed_file,
        acked_segments_deleted: findings.acked_segments_deleted,
        cuts: findings.cuts,
    };
    tracing::info!(
        dir = %dir.display(),
        records_replayable,
        committed_seq = committed,
        next_seq,
        segments = report.segments,
        bytes_truncated = report.bytes_truncated,
        corrupt_records_cut,
        "spool recovered"
    );
    Ok(Recovered {
        state: WriterState::new(segments, next_seq, corrupt_records_cut),
        watermark,
        persisted_committed,
        report,
    })
}

/// Segment files in `dir`, by first seq. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let read_error = |error| SpoolError::io(format!("listing {}", dir.display()), error);
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// What recovering one segment file left.
struct RecoveredSegment {
    /// `None` when the file was removed.
    segment: Option<Segment>,
    /// A new segment holding the good frames found after damage, to recover next.
    salvaged: Option<(u64, PathBuf)>,
}

/// Recovers one segment file.
fn recover_segment(
    dir: &Path,
    path: &Path,
    first_seq: u64,
    next_first_seq: Option<u64>,
    findings: &mut Findings,
) -> Result<RecoveredSegment, SpoolError> {
    let io_error = |what: &str, error| SpoolError::io(format!("{what} {}", path.display()), error);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| io_error("opening", error))?;
    // Written 0644 by versions before 0600 was enforced.
    crate::private_fs::narrow(path, crate::private_fs::FILE_MODE);
    let file_len = file
        .metadata()
        .map_err(|error| io_error("reading metadata of", error))?
        .len();
    let header = read_header(path)?;
    match check_segment_header(&header, first_seq) {
        HeaderCheck::Valid => {}
        HeaderCheck::UnsupportedVersion(found) => {
            return Err(SpoolError::UnsupportedVersion {
                file: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            })
        }
        HeaderCheck::Damaged(reason) => {
            let (framed, max_seq) = count_frames_from(&file, SEGMENT_HEADER_BYTES as u64, file_len)
                .map_err(|error| io_error("reading", error))?;
            findings.seq_floor = findings.seq_floor.max(max_seq.map_or(0, |seq| seq + 1));
            let records_lost = match next_first_seq {
                Some(next_first) => next_first - first_seq,
                None => framed,
            };
            drop(file);
            remove_if_present(path)?;
            findings.cut(RecoveryCut {
                file: path.to_path_buf(),
                offset: 0,
                bytes_cut: file_len,
                records_lost,
                reason: format!("damaged segment header ({reason}); file removed"),
            });
            return Ok(RecoveredSegment {
                segment: None,
                salvaged: None,
            });
        }
    }

    let seq_limit = next_first_seq.unwrap_or(u64::MAX);
    let scan = scan_frames(&file, first_seq, seq_limit, file_len)
        .map_err(|error| io_error("scanning", error))?;
    let mut salvaged = None;
    if let Some(damage) = scan.damage {
        let resync = if scan.valid_len < file_len {
            super::salvage::find_resync(&file, scan.valid_len, file_len, scan.next_seq, seq_limit)
                .map_err(|error| io_error("searching for a good frame in", error))?
        } else {
            None
        };
        let (bytes_cut, records_lost, reason) = if let Some(resync) = resync {
            // Only the frames between the damage and the next good one are lost.
            let copy = super::salvage::copy_into_segment(dir, &file, resync, file_len)
                .map_err(|error| io_error("copying the good frames after damage in", error))?;
            salvaged = Some((copy.first_seq, copy.path.clone()));
            let reason = format!(
                "{damage}; reading resumed at offset {} with seq {} (moved to {})",
                resync.offset,
                resync.seq,
                copy.path.display()
            );
            (
                resync.offset - scan.valid_len,
                resync.seq - scan.next_seq,
                reason,
            )
        } else {
            let records_lost = match next_first_seq {
                Some(next_first) => next_first - scan.next_seq,
                None => {
                    let (framed, max_seq) = count_frames_from(&file, scan.valid_len, file_len)
                        .map_err(|error| io_error("reading", error))?;
                    findings.seq_floor = findings.seq_floor.max(max_seq.map_or(0, |seq| seq + 1));
                    framed.max(1)
                }
            };
            (file_len - scan.valid_len, records_lost, damage)
        };
        file.set_len(scan.valid_len)
            .map_err(|error| io_error("truncating", error))?;
        file.sync_all()
            .map_err(|error| io_error("fsync of", error))?;
        findings.cut(RecoveryCut {
            file: path.to_path_buf(),
            offset: scan.valid_len,
            bytes_cut,
            records_lost,
            reason,
        });
    }
    Ok(RecoveredSegment {
        segment: Some(Segment {
            first_seq,
            path: path.to_path_buf(),
            file: Arc::new(file),
            len: scan.valid_len,
            next_seq: scan.next_seq,
            index: scan.index,
            tail_dirty: false,
            version: header[4],
        }),
        salvaged,
    })
}

struct Scan {
    /// Header plus the frames that passed every check.
    valid_len: u64,
    /// Seq after the last good frame.
    next_seq: u64,
    index: SparseIndex,
    /// Why scanning stopped before the end of the file.
    damage: Option<String>,
}

/// Reads the frames after the header until the end or the first bad one.
fn scan_frames(file: &File, first_seq: u64, seq_limit: u64, file_len: u64) -> io::Result<Scan> {
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    reader.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES as u64))?;
    let mut scan = Scan {
        valid_len: SEGMENT_HEADER_BYTES as u64,
        next_seq: first_seq,
        index: SparseIndex::default(),
        damage: None,
    };
    let mut frame = Vec::new();
    while scan.valid_len < file_len {
        let offset = scan.valid_len;
        let left = file_len - offset;
        if left < 4 {
            scan.damage = Some(format!("torn length prefix ({left} bytes at the end)"));
            break;
        }
        let mut prefix = [0; 4];
        reader.read_exact(&mut prefix)?;
        let frame_len = match frame_len_from_prefix(prefix) {
            Ok(frame_len) => frame_len,
            Err(error) => {
                scan.damage = Some(error.to_string());
                break;
            }
        };
        if frame_len as u64 > left {
            scan.damage = Some(format!(
                "torn frame: {frame_len} bytes announced, {left} left in the file"
            ));
            break;
        }
        frame.resize(frame_len, 0);
        frame[..4].copy_from_slice(&prefix);
        reader.read_exact(&mut frame[4..])?;
        let decoded = match decode_frame(&frame) {
            Ok(decoded) => decoded,
            Err(error) => {
                scan.damage = Some(error.to_string());
                break;
            }
        };
        if decoded.seq != scan.next_seq {
            scan.damage = Some(format!(
                "frame has seq {}, expected {}",
                decoded.seq, scan.next_seq
            ));
            break;
        }
        if decoded.seq >= seq_limit {
            scan.damage = Some(format!(
                "frame seq {} overlaps the next segment, which starts at {seq_limit}",
                decoded.seq
            ));
            break;
        }
        scan.index.note(decoded.seq, offset);
        scan.valid_len += frame_len as u64;
        scan.next_seq += 1;
    }
    Ok(scan)
}

/// Walks length prefixes from `offset` as far as they stay plausible; returns how many frames
/// could be framed and the highest seq among those with a valid CRC. Used only to count what a
/// cut at the end of the last segment loses.
fn count_frames_from(file: &File, offset: u64, file_len: u64) -> io::Result<(u64, Option<u64>)> {
    let mut position = offset;
    let mut framed = 0;
    let mut max_seq = None;
    let mut frame = Vec::new();
    while file_len.saturating_sub(position) >= 4 {
        let mut prefix = [0; 4];
        file.read_exact_at(&mut prefix, position)?;
        let Ok(frame_len) = frame_len_from_prefix(prefix) else {
            break;
        };
        if frame_len as u64 > file_len - position {
            break;
        }
        frame.resize(frame_len, 0);
        file.read_exact_at(&mut frame, position)?;
        if let Ok(decoded) = decode_frame(&frame) {
            max_seq = max_seq.max(Some(decoded.seq));
        }
        framed += 1;
        position += frame_len as u64;
    }
    Ok((framed, max_seq))
}

/// The first (up to) 16 bytes of a segment file.
fn read_header(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    File::open(path)
        .and_then(|file| {
            file.take(SEGMENT_HEADER_BYTES as u64)
                .read_to_end(&mut header)
        })
        .map_err(|error| SpoolError::io(format!("reading header of {}", path.display()), error))?;
    Ok(header)
}

fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(SpoolError::io(
            format!("removing {}", path.display()),
            error,
        )),
    }
}
