//! One record on disk: a length-prefixed, CRC32-checksummed frame.
//!
//! Frame layout (segment format versions 1 and 2, all integers little-endian):
//!
//! ```text
//! offset size field
//!      0    4 body_len        bytes after the CRC: 21 + index (0 or 24) + payload length
//!      4    4 crc32           over bytes [0, 4) and [8, 8 + body_len): length prefix + body
//!      8    8 seq             u64, monotonic across segments and restarts
//!     16    8 received_at_ms  i64, epoch milliseconds when the frame was read off the socket
//!     24    4 shard           u32, the channel shard that received it
//!     28    1 kind            u8: bits 0-6 the kind (0 = Event, 1 = Gap/Status, 2..=127
//!                             reserved); bit 7 (format 2 only) = an event index follows
//!     29   24 event index     (bit 7 only) six u32: topic start, topic length, key start, key
//!                             length, CorrelationId start, CorrelationId length, as byte
//!                             offsets into the payload; start u32::MAX = none
//!  29/53    n payload         the raw frame bytes, exactly as received
//! ```
//!
//! The CRC covers the length prefix too, so a flipped bit in the length is caught even when it
//! still points at a plausible frame end. The event index is what the socket read from the
//! frame (topic, Kafka key, CorrelationId, each as it stands in the frame, without escapes), so
//! the producer does not parse the frame again; a record without one is parsed (format 1
//! segments, frames whose strings have escapes, anything unusual).

use std::ops::Range;

use bytes::Bytes;

/// Bytes of a frame before the payload (length prefix, CRC, seq, time, shard, kind), without an
/// event index.
pub const RECORD_HEADER_BYTES: usize = 29;

/// Bytes of an event index, when a record has one.
pub const EVENT_INDEX_BYTES: usize = 24;

/// The kind byte's flag for "an event index follows".
const INDEX_FLAG: u8 = 0x80;

/// The largest payload the spool accepts. It bounds what recovery will believe a length prefix
/// to mean, and a Genesys notification frame is far below it.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

const LEN_PREFIX_BYTES: usize = 4;
const CRC_END: usize = 8;
/// Body bytes besides the payload: seq (8) + received_at_ms (8) + shard (4) + kind (1).
const BODY_FIXED_BYTES: usize = RECORD_HEADER_BYTES - CRC_END;

/// What a record is. Stored in the kind byte's low seven bits; unknown values survive a round
/// trip as `Reserved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A notification frame received from Genesys (byte 0).
    Event,
    /// A gap or status record written by the bridge itself, e.g. "frames dropped between t1 and
    /// t2" (byte 1). Gap records may use the spool's reserved headroom when it is full.
    Gap,
    /// A kind this version does not know (2..=127), kept so newer writers do not break older
    /// readers. Do not construct it with 0, 1 or a value above 127 (bit 7 of the stored byte
    /// flags an event index).
    Reserved(u8),
}

impl RecordKind {
    /// The byte stored on disk.
    pub fn as_u8(self) -> u8 {
        match self {
            RecordKind::Event => 0,
            RecordKind::Gap => 1,
            RecordKind::Reserved(byte) => byte,
        }
    }

    /// The kind a stored byte means (its low seven bits).
    pub fn from_u8(byte: u8) -> Self {
        match byte & !INDEX_FLAG {
            0 => RecordKind::Event,
            1 => RecordKind::Gap,
            other => RecordKind::Reserved(other),
        }
    }
}

/// A record as appended and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Event, gap/status, or reserved.
    pub kind: RecordKind,
    /// The channel shard the frame arrived on.
    pub shard: u32,
    /// When the frame was read off the socket, epoch milliseconds.
    pub received_at_ms: i64,
    /// The raw frame bytes, never re-serialised.
    pub payload: Bytes,
    /// Where an event's topic, key and CorrelationId lie in the payload, when the socket found
    /// them (stored with the record in format 2 segments; `None` read back from format 1).
    pub index: Option<EventIndex>,
}

impl Record {
    /// A Genesys frame as received.
    pub fn event(shard: u32, received_at_ms: i64, payload: impl Into<Bytes>) -> Self {
        Record {
            kind: RecordKind::Event,
            shard,
            received_at_ms,
            payload: payload.into(),
            index: None,
        }
    }

    /// A gap or status record written by the bridge.
    pub fn gap(shard: u32, received_at_ms: i64, payload: impl Into<Bytes>) -> Self {
        Record {
            kind: RecordKind::Gap,
            shard,
            received_at_ms,
            payload: payload.into(),
            index: None,
        }
    }

    /// This record with `index` (what the socket read from an event).
    pub fn with_index(mut self, index: Option<EventIndex>) -> Self {
        self.index = index;
        self
    }
}

/// A byte range of a record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    /// The span of `part`, a slice of `whole` (`None` when it is not inside it).
    pub fn of(part: &str, whole: &[u8]) -> Option<Span> {
        let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        if end > whole.len() {
            return None;
        }
        Some(Span {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(part.len()).ok()?,
        })
    }

    /// The text of this span in `payload`, when it is inside it and UTF-8.
    pub fn get<'a>(&self, payload: &'a [u8]) -> Option<&'a str> {
        let start = self.start as usize;
        let bytes = payload.get(start..start.checked_add(self.len as usize)?)?;
        std::str::from_utf8(bytes).ok()
    }
}

/// What the socket read from an event frame, as byte ranges of the frame: its `topicName`, its
/// Kafka key and its `metadata.CorrelationId`, each only where the JSON string has no escapes
/// (so the range is the value itself). The producer uses it instead of parsing the frame again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventIndex {
    pub topic: Span,
    pub key: Option<Span>,
    pub correlation: Option<Span>,
}

impl EventIndex {
    fn encode(&self, out: &mut Vec<u8>) {
        for span in [Some(self.topic), self.key, self.correlation] {
            let (start, len) = span.map_or((u32::MAX, 0), |span| (span.start, span.len));
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
    }

    /// The index stored in `bytes` (24 of them). A stored index without a topic is not one.
    fn decode(bytes: &[u8]) -> Option<EventIndex> {
        let span = |at: usize| {
            let start = u32::from_le_bytes(le_array(&bytes[at..at + 4]));
            let len = u32::from_le_bytes(le_array(&bytes[at + 4..at + 8]));
            (start != u32::MAX).then_some(Span { start, len })
        };
        Some(EventIndex {
            topic: span(0)?,
            key: span(8),
            correlation: span(16),
        })
    }
}

/// A record read back from the spool with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// The sequence number the spool gave the record on append.
    pub seq: u64,
    /// The record itself.
    pub record: Record,
}

/// The bytes a record occupies on disk.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Bytes `record` occupies on disk, with its event index when `with_index`.
pub(crate) fn encoded_len(record: &Record, with_index: bool) -> usize {
    frame_len(record.payload.len())
        + if with_index && record.index.is_some() {
            EVENT_INDEX_BYTES
        } else {
            0
        }
}

/// Appends `record`'s frame to `out` with its sequence number left zero (the CRC not yet
/// computed), and its event index when `with_index`. Returns where the frame starts.
fn encode_unsealed(out: &mut Vec<u8>, record: &Record, with_index: bool) -> usize {
    debug_assert!(record.payload.len() <= MAX_PAYLOAD_BYTES);
    let index = record.index.filter(|_| with_index);
    let start = out.len();
    let body_len = (encoded_len(record, with_index) - CRC_END) as u32;
    out.reserve(encoded_len(record, with_index));
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc
    out.extend_from_slice(&[0; 8]); // seq
    out.extend_from_slice(&record.received_at_ms.to_le_bytes());
    out.extend_from_slice(&record.shard.to_le_bytes());
    match index {
        Some(index) => {
            out.push(record.kind.as_u8() | INDEX_FLAG);
            index.encode(out);
        }
        None => out.push(record.kind.as_u8()),
    }
    out.extend_from_slice(&record.payload);
    start
}

/// Writes `seq` and the CRC of the frame `frame` (its whole bytes).
fn seal_in_place(frame: &mut [u8], seq: u64, tail_crc: Option<&crc32fast::Hasher>) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[0..LEN_PREFIX_BYTES]);
    crc.update(&frame[8..16]);
    match tail_crc {
        Some(tail_crc) => crc.combine(tail_crc),
        None => crc.update(&frame[16..]),
    }
    frame[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// Appends `record`'s finished frame for `seq` to `out` (the batch path, under the writer lock:
/// no buffer of its own, one copy of the payload). Returns the frame's length.
pub(crate) fn encode_sealed(
    out: &mut Vec<u8>,
    record: &Record,
    with_index: bool,
    seq: u64,
) -> usize {
    let start = encode_unsealed(out, record, with_index);
    seal_in_place(&mut out[start..], seq, None);
    out.len() - start
}

/// Frames above this many bytes get the CRC of everything after the seq computed before the
/// writer lock and combined with the seq's inside it; below it, computing the whole CRC inside
/// the lock is cheaper than the combine (a few matrix products over GF(2)).
const COMBINE_ABOVE_BYTES: usize = 16 * 1024;

/// A record encoded before its sequence number is known.
///
/// Encoding and, for a large frame, checksumming the payload happen outside the writer lock;
/// only [`seal`] runs inside it, which keeps the appenders' critical section short.
///
/// [`seal`]: UnsealedRecord::seal
pub(crate) struct UnsealedRecord {
    frame: Vec<u8>,
    /// CRC state over bytes [16, end) (everything after the seq), for a large frame.
    tail_crc: Option<crc32fast::Hasher>,
}

impl UnsealedRecord {
    /// Encodes `record`, with its event index when `with_index` (the active segment is of
    /// format 2). The caller has checked the payload against [`MAX_PAYLOAD_BYTES`].
    pub(crate) fn new(record: &Record, with_index: bool) -> Self {
        let mut frame = Vec::new();
        encode_unsealed(&mut frame, record, with_index);
        let tail_crc = (frame.len() > COMBINE_ABOVE_BYTES).then(|| {
            let mut tail_crc = crc32fast::Hasher::new();
            tail_crc.update(&frame[16..]);
            tail_crc
        });
        UnsealedRecord { frame, tail_crc }
    }

    /// Bytes this record occupies on disk.
    pub(crate) fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether it was encoded with an event index.
    pub(crate) fn indexed(&self) -> bool {
        self.frame[RECORD_HEADER_BYTES - 1] & INDEX_FLAG != 0
    }

    /// Writes `seq` and the checksum; returns the finished frame.
    pub(crate) fn seal(&mut self, seq: u64) -> &[u8] {
        seal_in_place(&mut self.frame, seq, self.tail_crc.as_ref());
        &self.frame
    }
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The buffer ends before the frame does; `needed` is the frame's full length when known
    /// (otherwise the length of the prefix).
    Truncated { needed: usize },
    /// The length prefix cannot be a frame (too small or above [`MAX_PAYLOAD_BYTES`]).
    BadLength { body_len: u32 },
    /// The stored CRC does not match the bytes.
    BadChecksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed } => {
                write!(f, "frame truncated (needs {needed} bytes)")
            }
            FrameError::BadLength { body_len } => {
                write!(f, "implausible length prefix {body_len}")
            }
            FrameError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
        }
    }
}

/// A frame that passed its checksum. Positions are relative to the decoded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedFrame {
    pub(crate) seq: u64,
    pub(crate) received_at_ms: i64,
    pub(crate) shard: u32,
    pub(crate) kind: RecordKind,
    pub(crate) index: Option<EventIndex>,
    pub(crate) payload: Range<usize>,
    /// Total bytes of the frame, length prefix included.
    pub(crate) frame_len: usize,
}

impl DecodedFrame {
    /// The record, with its payload sliced (not copied) out of `buf`, the buffer it was decoded
    /// from.
    pub(crate) fn into_entry(self, buf: &Bytes) -> SpoolEntry {
        SpoolEntry {
            seq: self.seq,
            record: Record {
                kind: self.kind,
                shard: self.shard,
                received_at_ms: self.received_at_ms,
                payload: buf.slice(self.payload),
                index: self.index,
            },
        }
    }
}

/// The full frame length a length prefix announces, if it is plausible.
pub(crate) fn frame_len_from_prefix(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let body_len = u32::from_le_bytes(prefix);
    let body = body_len as usize;
    if !(BODY_FIXED_BYTES..=BODY_FIXED_BYTES + EVENT_INDEX_BYTES + MAX_PAYLOAD_BYTES)
        .contains(&body)
    {
        return Err(FrameError::BadLength { body_len });
    }
    Ok(CRC_END + body)
}

/// Decodes and verifies the frame at the start of `buf`.
pub(crate) fn decode_frame(buf: &[u8]) -> Result<DecodedFrame, FrameError> {
    let Some(prefix) = buf.get(0..LEN_PREFIX_BYTES) else {
        return Err(FrameError::Truncated {
            needed: LEN_PREFIX_BYTES,
        });
    };
    let frame_len = frame_len_from_prefix(le_array(prefix))?;
    let Some(frame) = buf.get(0..frame_len) else {
        return Err(FrameError::Truncated { needed: frame_len });
    };
    let stored = u32::from_le_bytes(le_array(&frame[4..8]));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[0..LEN_PREFIX_BYTES]);
    crc.update(&frame[CRC_END..]);
    let computed = crc.finalize();
    if stored != computed {
        return Err(FrameError::BadChecksum { stored, computed });
    }
    let kind_byte = frame[28];
    // An index is only believed with room for it; a short flagged frame (which no writer of
    // this format makes) keeps its bytes as the payload. An index that does not fit the
    // payload is dropped when it is used (`Span::get`).
    let (index, payload_start) =
        if kind_byte & INDEX_FLAG != 0 && frame_len >= RECORD_HEADER_BYTES + EVENT_INDEX_BYTES {
            let end = RECORD_HEADER_BYTES + EVENT_INDEX_BYTES;
            (EventIndex::decode(&frame[RECORD_HEADER_BYTES..end]), end)
        } else {
            (None, RECORD_HEADER_BYTES)
        };
    Ok(DecodedFrame {
        seq: u64::from_le_bytes(le_array(&frame[8..16])),
        received_at_ms: i64::from_le_bytes(le_array(&frame[16..24])),
        shard: u32::from_le_bytes(le_array(&frame[24..28])),
        kind: RecordKind::from_u8(kind_byte),
        index,
        payload: payload_start..frame_len,
        frame_len,
    })
}

/// Copies a slice of known length into an array (the callers slice exact ranges).
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(bytes);
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(record: &Record, seq: u64) -> Vec<u8> {
        UnsealedRecord::new(record, true).seal(seq).to_vec()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let record = Record {
            kind: RecordKind::Reserved(7),
            shard: 3,
            received_at_ms: -5,
            payload: Bytes::from_static(b"{\"topicName\":\"x\"}"),
            index: None,
        };
        let bytes = sealed(&record, 42);
        assert_eq!(bytes.len(), frame_len(record.payload.len()));
        let decoded = decode_frame(&bytes).expect("valid frame");
        assert_eq!(decoded.frame_len, bytes.len());
        let entry = decoded.into_entry(&Bytes::from(bytes));
        assert_eq!(entry.seq, 42);
        assert_eq!(entry.record, record);
    }

    #[test]
    fn combined_crc_equals_plain_crc_over_the_same_bytes() {
        let bytes = sealed(&Record::event(1, 2, vec![9u8; 100_000]), 7);
        let mut covered = bytes[0..4].to_vec();
        covered.extend_from_slice(&bytes[8..]);
        let stored = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(stored, crc32fast::hash(&covered));
    }

    #[test]
    fn a_frame_encoded_in_place_equals_the_sealed_one() {
        for record in [
            Record::event(1, 2, vec![7u8; 100]),
            Record::event(1, 2, vec![7u8; COMBINE_ABOVE_BYTES + 1]),
            indexed_event(),
            Record::gap(3, 4, Bytes::new()),
        ] {
            for with_index in [true, false] {
                let mut out = vec![0xaa; 3];
                let len = encode_sealed(&mut out, &record, with_index, 99);
                let unsealed = UnsealedRecord::new(&record, with_index).seal(99).to_vec();
                assert_eq!(len, unsealed.len());
                assert_eq!(len, encoded_len(&record, with_index));
                assert_eq!(&out[3..], &unsealed[..]);
                assert!(decode_frame(&out[3..]).is_ok());
            }
        }
    }

    #[test]
    fn empty_payload_is_a_valid_frame() {
        let bytes = sealed(&Record::gap(0, 0, Bytes::new()), 1);
        assert_eq!(bytes.len(), RECORD_HEADER_BYTES);
        assert!(decode_frame(&bytes).is_ok());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sealed(&Record::event(1, 1_700_000_000_000, &b"abc"[..]), 9);
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[index] ^= 1 << bit;
                assert!(
                    decode_frame(&damaged).is_err(),
                    "flip of bit {bit} in byte {index} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn short_buffers_are_truncated_not_errors_of_content() {
        let bytes = sealed(&Record::event(1, 1, &b"hello"[..]), 1);
        assert_eq!(
            decode_frame(&bytes[..2]),
            Err(FrameError::Truncated { needed: 4 })
        );
        assert_eq!(
            decode_frame(&bytes[..bytes.len() - 1]),
            Err(FrameError::Truncated {
                needed: bytes.len()
            })
        );
    }

    #[test]
    fn the_largest_payload_with_an_index_has_a_plausible_length() {
        // Before: the bound left out the index, so the largest event the spool accepts, once
        // indexed, read back as damage.
        let body = (BODY_FIXED_BYTES + EVENT_INDEX_BYTES + MAX_PAYLOAD_BYTES) as u32;
        assert_eq!(
            frame_len_from_prefix(body.to_le_bytes()),
            Ok(CRC_END + body as usize)
        );
        assert!(frame_len_from_prefix((body + 1).to_le_bytes()).is_err());
    }

    #[test]
    fn implausible_lengths_are_rejected_before_reading() {
        assert!(matches!(
            frame_len_from_prefix(u32::MAX.to_le_bytes()),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            frame_len_from_prefix(3u32.to_le_bytes()),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn kind_bytes_round_trip() {
        for byte in 0..=127 {
            assert_eq!(RecordKind::from_u8(byte).as_u8(), byte);
        }
        // Bit 7 is the index flag, not part of the kind.
        assert_eq!(RecordKind::from_u8(0x80), RecordKind::Event);
        assert_eq!(RecordKind::from_u8(0x84), RecordKind::Reserved(4));
    }

    fn indexed_event() -> Record {
        let frame =
            br#"{"topicName":"v2.users.u1.conversations","metadata":{"CorrelationId":"k9"}}"#;
        let index = EventIndex {
            topic: Span { start: 14, len: 25 },
            key: Some(Span { start: 23, len: 2 }),
            correlation: Some(Span {
                start: frame.windows(2).position(|w| w == b"k9").unwrap() as u32,
                len: 2,
            }),
        };
        Record::event(2, 1_700_000_000_000, &frame[..]).with_index(Some(index))
    }

    #[test]
    fn an_event_index_round_trips_and_points_at_the_frame() {
        let record = indexed_event();
        let index = record.index.unwrap();
        assert_eq!(
            index.topic.get(&record.payload),
            Some("v2.users.u1.conversations")
        );
        assert_eq!(index.key.unwrap().get(&record.payload), Some("u1"));
        assert_eq!(index.correlation.unwrap().get(&record.payload), Some("k9"));
        let bytes = sealed(&record, 5);
        assert_eq!(
            bytes.len(),
            frame_len(record.payload.len()) + EVENT_INDEX_BYTES
        );
        let entry = decode_frame(&bytes)
            .unwrap()
            .into_entry(&Bytes::from(bytes));
        assert_eq!(entry.record, record, "payload as received, index beside it");
        // Without an index (a format 1 segment): the same record, no index.
        let plain = UnsealedRecord::new(&record, false).seal(5).to_vec();
        assert_eq!(plain.len(), frame_len(record.payload.len()));
        let entry = decode_frame(&plain)
            .unwrap()
            .into_entry(&Bytes::from(plain));
        assert_eq!(entry.record, record.clone().with_index(None));
    }

    #[test]
    fn an_index_that_does_not_fit_its_payload_is_not_used() {
        let record = indexed_event();
        let outside = Span {
            start: record.payload.len() as u32 - 1,
            len: 2,
        };
        assert_eq!(outside.get(&record.payload), None);
        let huge = Span {
            start: u32::MAX - 1,
            len: u32::MAX,
        };
        assert_eq!(huge.get(&record.payload), None);
        let not_utf8 = Span { start: 0, len: 2 };
        assert_eq!(not_utf8.get(&[0xff, 0xfe]), None);
        // A slice from elsewhere has no span in the frame.
        assert_eq!(Span::of("elsewhere", &record.payload), None);
        let text = std::str::from_utf8(&record.payload).unwrap();
        assert_eq!(
            Span::of(&text[14..39], &record.payload),
            Some(Span { start: 14, len: 25 })
        );
    }

    #[test]
    fn a_flagged_frame_too_short_for_an_index_keeps_its_bytes_as_payload() {
        let mut record = Record::event(0, 0, &b"ab"[..]);
        record.kind = RecordKind::Reserved(0x80 | 3);
        let bytes = UnsealedRecord::new(&record, false).seal(1).to_vec();
        let decoded = decode_frame(&bytes).unwrap();
        assert_eq!(decoded.index, None);
        assert_eq!(&bytes[decoded.payload], b"ab");
    }
}
