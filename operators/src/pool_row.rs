//! The record the pool collection holds per uid (where the row came from and its per-method scores), and
//! `PoolRows`: a committed shard's rows as pool updates.

use flyt::Uid;
use flyt::curation::ShardScores;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

/// One scored row of a shard (the value of a `(Uid, PoolRow)` pool collection). Ordered by shard name, then
/// values, so "the least row of a uid" is a choice that does not depend on arrival order or on the number of
/// workers. The sample's key and text stay in the shard's own tables (`OUT/shards/`), not in the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PoolRow {
    /// The shard's name (its file name without extension).
    pub shard: String,
    /// Per-method scores as `f32` bit patterns, in the pipeline's internal column order.
    pub values: Vec<u32>,
    /// The first 128 bits of the SHA-256 of the image's bytes (DataComp's `sha256`), when known.
    #[serde(default)]
    pub bytes: Option<u128>,
    /// The first 128 bits of the SHA-256 of the decoded image, when known.
    #[serde(default)]
    pub pixels: Option<u128>,
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

/// A pool update: `((uid, row), time, ±1)`, as differential collections hold them.
pub type PoolUpdate = ((Uid, PoolRow), u64, isize);

/// The rows of a shard as pool records.
pub fn pool_rows(s: &ShardScores) -> Vec<(Uid, PoolRow)> {
    s.ids
        .iter()
        .enumerate()
        .map(|(i, (uid, _key))| {
            (
                *uid,
                PoolRow {
                    shard: s.name.clone(),
                    values: s.columns.iter().map(|c| c[i].to_bits()).collect(),
                    bytes: s.content.get(i).and_then(|c| c.0),
                    pixels: s.content.get(i).and_then(|c| c.1),
                },
            )
        })
        .collect()
}

/// Pool updates (`+1` at the shard's time) for freshly committed shards' rows.
pub trait PoolRows<'scope> {
    /// One update per row.
    fn pool_rows(self) -> Stream<'scope, u64, Vec<PoolUpdate>>;
}

impl<'scope> PoolRows<'scope> for Stream<'scope, u64, Vec<ShardScores>> {
    fn pool_rows(self) -> Stream<'scope, u64, Vec<PoolUpdate>> {
        self.unary::<CapacityContainerBuilder<Vec<PoolUpdate>>, _, _, _>(Pipeline, "PoolRows", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(t) = cap.least().copied() else { return };
                    let mut session = output.session(&cap);
                    for s in data.drain(..) {
                        for u in pool_rows(&s) {
                            session.give((u, t, 1));
                        }
                    }
                });
            }
        })
    }
}
