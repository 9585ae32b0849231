//! Plain data shared by the layers: no behaviour, no imports from the rest of the crate.

use std::{
    hash::{Hash, Hasher},
    time::{SystemTime, UNIX_EPOCH},
};

/// One training example: a network input, the output head it trains, and the raw reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `input_dim` values: the context (fixed arms) or `concat(context, features)`.
    pub input: Vec<f32>,
    /// The output index trained: the chosen arm (fixed arms) or 0 (per-arm features).
    pub head: u32,
    /// The observed reward, unstandardised.
    pub reward: f64,
    /// Its position in the log: the log sequence number (LSN) of the reward (or window-close)
    /// record it came from. Increasing, not contiguous per model.
    pub seq: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A decision id as 64 bits, for remembering ids without their text. Stable within a
/// process (SipHash with fixed keys); the set it feeds is rebuilt from the log at each start.
/// Two ids share a hash with probability about n / 2^64 for n remembered ids.
pub fn id_hash(id: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}
