//! The record the pool collection holds per uid: where the row came from and its per-method scores.

use serde::{Deserialize, Serialize};

/// One scored row of a shard (the value of a `(Uid, PoolRow)` pool collection). Ordered by shard name, then
/// key, then values, so "the least row of a uid" is a choice that does not depend on arrival order or on the
/// number of workers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PoolRow {
    /// The shard's name (its file name without extension).
    pub shard: String,
    /// The sample's key in the shard.
    pub key: String,
    /// Per-method scores as `f32` bit patterns, in the pipeline's internal column order.
    pub values: Vec<u32>,
}

impl PoolRow {
    /// The i-th score.
    pub fn value(&self, i: usize) -> f32 {
        self.values.get(i).map(|b| f32::from_bits(*b)).unwrap_or(f32::NAN)
    }
}

/// One external score of a uid: a column of a score file that arrived on its own schedule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExternalScore {
    /// The column name.
    pub column: String,
    /// The file it came from (the least file name wins when two files score the same uid and column).
    pub file: String,
    /// The value as `f64` bits.
    pub value: u64,
}
