//! A pending decision as the store holds it: one allocation for everything of variable size.
//!
//! [`Packed`] keeps the fixed-size fields inline and the scores, the network input, the id
//! and, when needed, the candidates' arm ids and the explanation in one byte buffer, instead
//! of a `Decision`'s separate id string, boxed slices and reference-counted header. The
//! values keep their types' precision (scores and explanation `f64`, input `f32`, stored
//! little-endian), so a decision read back is the one stored.
//!
//! A fixed-arm model's arm ids are held once per store in [`ArmSets`] and a decision keeps a
//! one-byte index; other arm ids (a per-arm model's, made up per request) are packed in the
//! buffer as their text and end offsets.

use std::sync::Arc;

use super::{Arms, Decision};
use crate::policy::Spread;

/// Arm lists a store holds at once (a model's own list, and a few subsets in use).
const SETS: usize = 8;

/// `Packed::arms` when the arm ids are in the buffer.
const INLINE: u8 = u8::MAX;

const HOLDOUT: u8 = 1;
const PROPENSITY: u8 = 2;
const EXPLANATION: u8 = 4;

/// A decision's fields, its variable-size ones in one buffer.
#[derive(Debug)]
pub(super) struct Packed {
    /// Little-endian: the scores (`f64`), the input (`f32`), the id; then, if `arms` is
    /// [`INLINE`], the number of arm ids (`u32`), their end offsets (`u32`) and their text;
    /// then, with [`EXPLANATION`], the number of spreads (`u32`) and each one's mean and std
    /// (`f64`).
    bytes: Box<[u8]>,
    model_version: u64,
    request_hash: u64,
    /// Meaningful with [`PROPENSITY`].
    propensity: f64,
    chosen: u32,
    head: u32,
    scores: u32,
    input: u32,
    id_len: u32,
    flags: u8,
    /// Index in the store's [`ArmSets`], or [`INLINE`].
    arms: u8,
}

/// Lengths beyond `u32` cannot occur: a request's ids, candidates and features are bounded
/// by `limits` far below 4 GiB. Saturating keeps the reads bounds-checked if one did.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A little-endian run of `f32`, borrowed from a held decision.
#[derive(Debug, Clone, Copy)]
pub struct F32s<'a>(&'a [u8]);

impl F32s<'_> {
    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = f32> + '_ {
        self.0
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The values, copied.
    pub fn to_vec(&self) -> Vec<f32> {
        self.iter().collect()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.len() < 4
    }
}

/// What a reward needs of the pending decision it joins, borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRef<'a> {
    /// The decision id.
    pub id: &'a str,
    /// The network input that trains on the reward.
    pub input: F32s<'a>,
    /// The output head that trains.
    pub head: u32,
    /// Served by the model's holdout control policy.
    pub holdout: bool,
}

/// Reads little-endian values of `N` bytes.
fn le<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|b| <[u8; N]>::try_from(b).unwrap_or([0; N]))
}

impl Packed {
    /// Packs `d`. With `shared_arms` its arm ids are left out of the buffer: the caller
    /// holds them in its [`ArmSets`] and records the index with [`Packed::share_arms`].
    pub(super) fn new(d: &Decision, shared_arms: bool) -> Self {
        let inline_arms = !shared_arms;
        let text_len: usize = if inline_arms {
            d.arms.iter().map(str::len).sum()
        } else {
            0
        };
        let explanation = d.explanation.as_deref();
        let size = 8 * d.scores.len()
            + 4 * d.input.len()
            + d.id.len()
            + if inline_arms {
                4 + 4 * d.arms.len() + text_len
            } else {
                0
            }
            + explanation.map_or(0, |e| 4 + 16 * e.len());
        let mut bytes = Vec::with_capacity(size);
        for s in d.scores.iter() {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        for x in d.input.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes.extend_from_slice(d.id.as_bytes());
        if inline_arms {
            bytes.extend_from_slice(&len32(d.arms.len()).to_le_bytes());
            let mut end = 0;
            for id in d.arms.iter() {
                end += id.len();
                bytes.extend_from_slice(&len32(end).to_le_bytes());
            }
            for id in d.arms.iter() {
                bytes.extend_from_slice(id.as_bytes());
            }
        }
        if let Some(spreads) = explanation {
            bytes.extend_from_slice(&len32(spreads.len()).to_le_bytes());
            for s in spreads {
                bytes.extend_from_slice(&s.mean.to_le_bytes());
                bytes.extend_from_slice(&s.std.to_le_bytes());
            }
        }
        let flags = if d.holdout { HOLDOUT } else { 0 }
            | if d.propensity.is_some() {
                PROPENSITY
            } else {
                0
            }
            | if explanation.is_some() {
                EXPLANATION
            } else {
                0
            };
        Self {
            bytes: bytes.into_boxed_slice(),
            model_version: d.model_version,
            request_hash: d.request_hash,
            propensity: d.propensity.unwrap_or(0.0),
            chosen: d.chosen,
            head: d.head,
            scores: len32(d.scores.len()),
            input: len32(d.input.len()),
            id_len: len32(d.id.len()),
            flags,
            arms: INLINE,
        }
    }

    /// Records where the store holds this decision's arm ids.
    pub(super) fn share_arms(&mut self, set: u8) {
        self.arms = set;
    }

    /// The index of this decision's arm ids in the store's [`ArmSets`], if they are there.
    pub(super) fn arm_set(&self) -> Option<u8> {
        (self.arms != INLINE).then_some(self.arms)
    }

    /// The buffer split into scores, input, id and the rest.
    fn sections(&self) -> (&[u8], &[u8], &[u8], &[u8]) {
        let scores_end = (8 * self.scores as usize).min(self.bytes.len());
        let (scores, rest) = self.bytes.split_at(scores_end);
        let (input, rest) = rest.split_at((4 * self.input as usize).min(rest.len()));
        let (id, rest) = rest.split_at((self.id_len as usize).min(rest.len()));
        (scores, input, id, rest)
    }

    /// The id's bytes (the store's key).
    pub(super) fn id_bytes(&self) -> &[u8] {
        self.sections().2
    }

    /// The id (always valid UTF-8: it was a `String`).
    pub(super) fn id(&self) -> &str {
        std::str::from_utf8(self.id_bytes()).unwrap_or_default()
    }

    /// The network input.
    pub(super) fn input(&self) -> F32s<'_> {
        F32s(self.sections().1)
    }

    /// What a reward needs of this decision.
    pub(super) fn view(&self) -> DecisionRef<'_> {
        DecisionRef {
            id: self.id(),
            input: self.input(),
            head: self.head,
            holdout: self.flags & HOLDOUT != 0,
        }
    }

    /// The arm ids' section and the explanation's, split.
    fn tail(&self) -> (Option<&[u8]>, &[u8]) {
        let rest = self.sections().3;
        if self.arms != INLINE {
            return (None, rest);
        }
        let count = le::<4>(rest).next().map_or(0, u32::from_le_bytes) as usize;
        let ends = rest.get(4..4 + 4 * count).unwrap_or_default();
        let text_len = le::<4>(ends).last().map_or(0, u32::from_le_bytes) as usize;
        let arms_len = (4 + 4 * count + text_len).min(rest.len());
        let (arms, explanation) = rest.split_at(arms_len);
        (Some(arms), explanation)
    }

    /// The decision as it was stored (its arm ids from `sets` or the buffer).
    pub(super) fn unpack(&self, sets: &ArmSets) -> Decision {
        let (scores, input, _, _) = self.sections();
        let (inline_arms, explanation) = self.tail();
        let arms = match inline_arms {
            Some(section) => {
                let count = le::<4>(section).next().map_or(0, u32::from_le_bytes) as usize;
                let ends = section.get(4..4 + 4 * count).unwrap_or_default();
                let text = section.get(4 + 4 * count..).unwrap_or_default();
                let mut start = 0;
                Arms::packed(le::<4>(ends).map(|end| {
                    let end = u32::from_le_bytes(end) as usize;
                    let id = text
                        .get(start..end)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or_default();
                    start = end;
                    id
                }))
            }
            None => sets
                .get(self.arms)
                .map_or_else(|| Arms::packed([]), |ids| Arms::shared(Arc::clone(ids))),
        };
        let explanation = (self.flags & EXPLANATION != 0).then(|| {
            le::<8>(explanation.get(4..).unwrap_or_default())
                .map(f64::from_le_bytes)
                .collect::<Vec<_>>()
                .chunks_exact(2)
                .map(|p| Spread {
                    mean: p[0],
                    std: p[1],
                })
                .collect()
        });
        Decision {
            id: self.id().to_owned(),
            arms,
            chosen: self.chosen,
            scores: le::<8>(scores).map(f64::from_le_bytes).collect(),
            model_version: self.model_version,
            input: F32s(input).iter().collect(),
            head: self.head,
            propensity: (self.flags & PROPENSITY != 0).then_some(self.propensity),
            explanation,
            request_hash: self.request_hash,
            holdout: self.flags & HOLDOUT != 0,
        }
    }

    /// Heap bytes of this decision's buffer.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// The arm lists of a store's fixed-arm decisions, each held once with the number of
/// decisions using it.
///
/// A model's decisions share its list (one `Arc`, or an equal one after UpdateModel swaps
/// the model), so one entry serves nearly all of them; a request's subset of the arms
/// (exclusions) comes as a list of its own and takes an entry while one is free, else its
/// ids go into the decision's buffer. An entry is freed when its last decision leaves.
#[derive(Debug, Default)]
pub(super) struct ArmSets {
    /// Each entry's list and how many held decisions use it.
    sets: Vec<Option<(ArmList, usize)>>,
}

/// A fixed-arm model's arm ids, as [`Arms::shared`] takes them.
type ArmList = Arc<[Arc<str>]>;

impl ArmSets {
    /// The index holding `ids` for one more decision, or `None` when every entry holds
    /// other ids.
    pub(super) fn acquire(&mut self, ids: &ArmList) -> Option<u8> {
        let held = self.sets.iter().position(|s| {
            s.as_ref()
                .is_some_and(|(held, _)| Arc::ptr_eq(held, ids) || **held == **ids)
        });
        let at = match held {
            Some(at) => at,
            None => {
                let free = self.sets.iter().position(Option::is_none);
                let at = match free {
                    Some(at) => at,
                    None if self.sets.len() < SETS => {
                        self.sets.push(None);
                        self.sets.len() - 1
                    }
                    None => return None,
                };
                self.sets[at] = Some((Arc::clone(ids), 0));
                at
            }
        };
        let (_, users) = self.sets[at].as_mut()?;
        *users += 1;
        u8::try_from(at).ok()
    }

    /// One decision using entry `at` has left the store.
    pub(super) fn release(&mut self, at: u8) {
        if let Some(slot) = self.sets.get_mut(usize::from(at))
            && let Some((_, users)) = slot
        {
            *users = users.saturating_sub(1);
            if *users == 0 {
                *slot = None;
            }
        }
    }

    /// The ids held at `at`.
    pub(super) fn get(&self, at: u8) -> Option<&ArmList> {
        self.sets.get(usize::from(at))?.as_ref().map(|(ids, _)| ids)
    }

    /// Entries in use.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.sets.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[&str]) -> Arc<[Arc<str>]> {
        ids.iter().map(|&s| Arc::from(s)).collect()
    }

    fn decision(arms: Arms) -> Decision {
        Decision {
            id: "4b1c0d5e-2f6a-4c3b-9d8e-7f6a5b4c3d2e".into(),
            arms,
            chosen: 1,
            scores: vec![0.1, -2.5e-300, f64::MAX].into(),
            model_version: u64::MAX,
            input: vec![0.5, -0.0, f32::MIN_POSITIVE].into(),
            head: 2,
            propensity: Some(0.125),
            explanation: Some(
                vec![
                    Spread {
                        mean: 1.0,
                        std: 0.5,
                    },
                    Spread {
                        mean: -1.0,
                        std: 0.0,
                    },
                    Spread {
                        mean: 0.3,
                        std: 1e-9,
                    },
                ]
                .into(),
            ),
            request_hash: 0xdead_beef,
            holdout: true,
        }
    }

    /// Every field reads back exactly, with the arm ids inline or shared.
    #[test]
    fn round_trips() {
        let mut sets = ArmSets::default();
        let inline = decision(Arms::packed(["item-1", "", "ü-3"]));
        let packed = Packed::new(&inline, false);
        assert_eq!(packed.unpack(&sets), inline);
        assert_eq!(packed.id(), inline.id);
        assert_eq!(packed.input().to_vec(), inline.input.to_vec());

        let ids = list(&["a", "b", "c"]);
        let shared = decision(Arms::shared(Arc::clone(&ids)));
        let mut packed = Packed::new(&shared, true);
        packed.share_arms(sets.acquire(&ids).unwrap());
        assert_eq!(packed.unpack(&sets), shared);
        let view = packed.view();
        assert_eq!((view.id, view.head, view.holdout), (&*shared.id, 2, true));

        let mut bare = decision(Arms::packed([]));
        bare.explanation = None;
        bare.propensity = None;
        bare.holdout = false;
        bare.scores = Box::new([]);
        assert_eq!(Packed::new(&bare, false).unpack(&sets), bare);
    }

    /// The buffer holds the payload and nothing else: no arm ids for a shared list.
    #[test]
    fn buffer_is_the_payload() {
        let ids = list(&["0", "1", "2", "3", "4"]);
        let mut d = decision(Arms::shared(ids));
        d.explanation = None;
        d.scores = vec![0.0; 5].into();
        d.input = vec![0.0; 2].into();
        assert_eq!(Packed::new(&d, true).heap_bytes(), 40 + 8 + 36);
        d.arms = Arms::packed(["ab", "c"]);
        assert_eq!(Packed::new(&d, false).heap_bytes(), 40 + 8 + 36 + 4 + 8 + 3);
    }

    /// A list is held once however many decisions use it (the same `Arc` or equal ids), an
    /// entry is freed with its last user, and past `SETS` lists there is no entry.
    #[test]
    fn arm_sets_share_and_free() {
        let mut sets = ArmSets::default();
        let model = list(&["x", "y"]);
        let a = sets.acquire(&model).unwrap();
        assert_eq!(sets.acquire(&model), Some(a));
        assert_eq!(sets.acquire(&list(&["x", "y"])), Some(a));
        assert_eq!(sets.in_use(), 1);
        let others: Vec<u8> = (0..SETS - 1)
            .map(|i| sets.acquire(&list(&[&i.to_string()])).unwrap())
            .collect();
        assert_eq!(sets.acquire(&list(&["full"])), None);
        sets.release(others[0]);
        assert_eq!(sets.in_use(), SETS - 1);
        assert_eq!(sets.acquire(&list(&["full"])), Some(others[0]));
        for _ in 0..3 {
            sets.release(a);
        }
        assert!(sets.get(a).is_none());
        assert_eq!(sets.acquire(&list(&["new"])), Some(a));
    }
}
