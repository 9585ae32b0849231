//! The log's record schema and framing: what one event looks like on disk.
//!
//! The messages are `proto/banditd/log/v1/log.proto` (generated into [`crate::proto::log`]),
//! so other tools can read the log with any protobuf library. A frame is
//! `len: u32 LE | crc: u32 LE | kind: u8 | payload`, where `crc` is CRC-32 (IEEE, the
//! `crc32fast` crate: SIMD-accelerated and widely used) over the kind byte and the payload.
//! The kind byte lets a reader skip records it does not want (a learner skips every
//! decision) without decoding them.

use prost::Message;

pub use crate::proto::log::{
    Candidate, Closed as ClosedRecord, Decision as DecisionRecord, Example as ExampleRecord, How,
    Reward as RewardRecord,
};

/// Bytes before a frame's payload.
pub(super) const FRAME_HEADER: usize = 9;

/// A frame longer than this is taken for corruption, not read: no legitimate record comes
/// near it (a request is at most `server.max_message_bytes`, 4 MiB by default).
pub(super) const MAX_FRAME: u32 = 256 << 20;

/// Which message a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    /// A [`DecisionRecord`].
    Decision = 1,
    /// A [`RewardRecord`].
    Reward = 2,
    /// A [`ClosedRecord`].
    Closed = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Decision),
            2 => Some(Self::Reward),
            3 => Some(Self::Closed),
            _ => None,
        }
    }
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Record {
    /// A decision.
    Decision(DecisionRecord),
    /// A reward.
    Reward(RewardRecord),
    /// A window's end.
    Closed(ClosedRecord),
}

impl Record {
    /// The model the event belongs to.
    pub(super) fn model(&self) -> &str {
        match self {
            Self::Decision(d) => &d.model,
            Self::Reward(r) => &r.model,
            Self::Closed(c) => &c.model,
        }
    }

    /// The training example this event produces, if any (a reward, or a default reward at the
    /// window's end).
    pub(super) fn example(&self) -> Option<&ExampleRecord> {
        match self {
            Self::Decision(_) => None,
            Self::Reward(r) => r.example.as_ref(),
            Self::Closed(c) => c.example.as_ref(),
        }
    }

    /// The training example this event gives `model` at log position `lsn`, if any.
    pub(crate) fn example_for(&self, model: &str, lsn: u64) -> Option<crate::domain::Example> {
        if self.model() != model {
            return None;
        }
        self.example().map(|e| crate::domain::Example {
            input: e.input.clone(),
            head: e.head,
            reward: e.reward,
            seq: lsn,
        })
    }

    /// Appends this record as one frame to `out`.
    pub(super) fn encode_frame(&self, out: &mut Vec<u8>) {
        let (kind, len) = match self {
            Self::Decision(m) => (Kind::Decision, m.encoded_len()),
            Self::Reward(m) => (Kind::Reward, m.encoded_len()),
            Self::Closed(m) => (Kind::Closed, m.encoded_len()),
        };
        let start = out.len();
        out.reserve(FRAME_HEADER + len);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(kind as u8);
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = match self {
            Self::Decision(m) => m.encode(out),
            Self::Reward(m) => m.encode(out),
            Self::Closed(m) => m.encode(out),
        };
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FrameError {
    /// The bytes end inside the frame: a write that a crash cut short (at a segment's end).
    Torn,
    /// The frame is complete but wrong: its checksum, kind or payload does not verify.
    Corrupt(String),
}

/// A frame's header, parsed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// Payload bytes after the header.
    pub len: u32,
    crc: u32,
    kind_byte: u8,
}

impl Header {
    /// Parses the first [`FRAME_HEADER`] bytes of a frame.
    pub(super) fn parse(bytes: &[u8; FRAME_HEADER]) -> Result<Self, FrameError> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if len > MAX_FRAME {
            return Err(FrameError::Corrupt(format!(
                "frame length {len} is implausible"
            )));
        }
        Ok(Self {
            len,
            crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind_byte: bytes[8],
        })
    }

    /// Checks the payload against the checksum and returns the record kind.
    pub(super) fn verify(&self, payload: &[u8]) -> Result<Kind, FrameError> {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[self.kind_byte]);
        hasher.update(payload);
        if hasher.finalize() != self.crc {
            return Err(FrameError::Corrupt("checksum mismatch".into()));
        }
        Kind::from_byte(self.kind_byte)
            .ok_or_else(|| FrameError::Corrupt(format!("unknown record kind {}", self.kind_byte)))
    }
}

/// Decodes a verified payload of `kind`.
pub(super) fn decode(kind: Kind, payload: &[u8]) -> Result<Record, FrameError> {
    let corrupt = |e: prost::DecodeError| FrameError::Corrupt(format!("undecodable record: {e}"));
    Ok(match kind {
        Kind::Decision => Record::Decision(DecisionRecord::decode(payload).map_err(corrupt)?),
        Kind::Reward => Record::Reward(RewardRecord::decode(payload).map_err(corrupt)?),
        Kind::Closed => Record::Closed(ClosedRecord::decode(payload).map_err(corrupt)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reward() -> Record {
        Record::Reward(RewardRecord {
            model: "m".into(),
            decision_id: "d1".into(),
            at_ms: 7,
            regret: Some(0.5),
            example: Some(ExampleRecord {
                input: vec![1.0, -2.0],
                head: 3,
                reward: 1.25,
            }),
        })
    }

    fn parse(frame: &[u8]) -> Result<Record, FrameError> {
        let header = Header::parse(frame[..FRAME_HEADER].try_into().unwrap())?;
        let payload = &frame[FRAME_HEADER..];
        assert_eq!(payload.len(), header.len as usize);
        decode(header.verify(payload)?, payload)
    }

    /// A frame decodes back to the record it was encoded from.
    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        reward().encode_frame(&mut out);
        assert_eq!(parse(&out).unwrap(), reward());
    }

    /// Any flipped bit in the kind byte or payload fails the checksum.
    #[test]
    fn flipped_bits_are_detected() {
        let mut out = Vec::new();
        reward().encode_frame(&mut out);
        for byte in 8..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(parse(&bad), Err(FrameError::Corrupt(_))),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }
}
