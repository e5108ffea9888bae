//! `DedupUids`: a pool collection with one row per uid, the same whatever the arrival order.

use differential_dataflow::VecCollection;
use flyt::Uid;
use timely::progress::Timestamp;

use crate::PoolRow;

/// Keeps one row per uid: the least [`PoolRow`] (the one from the shard whose name sorts first). A uid seen
/// in several shards (a re-delivered or duplicated shard) counts once; if the kept row's shard is retracted,
/// the next one takes its place.
///
/// ```
/// use differential_dataflow::input::Input;
/// use flyt::Uid;
/// use flyt_operators::{DedupUids, PoolRow};
///
/// timely::example(|scope| {
///     let row = |shard: &str| PoolRow { shard: shard.into(), key: "k".into(), values: vec![1.0f32.to_bits()], ..Default::default() };
///     let (_, rows) = scope.new_collection_from(vec![(Uid::from_u128(1), row("b")), (Uid::from_u128(1), row("a"))]);
///     let (_, want) = scope.new_collection_from(vec![(Uid::from_u128(1), row("a"))]);
///     rows.dedup_uids().assert_eq(want);
/// });
/// ```
pub trait DedupUids<'scope, T: Timestamp> {
    /// One row per uid.
    fn dedup_uids(self) -> VecCollection<'scope, T, (Uid, PoolRow)>;
}

impl<'scope, T> DedupUids<'scope, T> for VecCollection<'scope, T, (Uid, PoolRow)>
where
    T: Timestamp + differential_dataflow::lattice::Lattice + timely::ExchangeData + Ord,
{
    fn dedup_uids(self) -> VecCollection<'scope, T, (Uid, PoolRow)> {
        self.reduce_named("DedupUids", |_uid, rows, out| {
            if let Some((row, _)) = rows.iter().find(|(_, d)| *d > 0) {
                out.push(((*row).clone(), 1));
            }
        })
    }
}
