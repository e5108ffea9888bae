//! `DedupContent`: exact content duplicates out of a pool collection, the same whatever the arrival order.

use differential_dataflow::VecCollection;
use differential_dataflow::lattice::Lattice;
use flyt::Uid;
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

use crate::PoolRow;

/// Why a uid left the pool as a duplicate of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DuplicateReason {
    /// The same image bytes (SHA-256, DataComp's `sha256`) or the same decoded pixels as `of`.
    DuplicateContent,
    /// SemDeDup: cosine ≥ 1 − ε to `of`, an earlier-ranked member of its cluster.
    NearDuplicate,
}

impl DuplicateReason {
    /// The name in `duplicates.parquet` and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            DuplicateReason::DuplicateContent => "duplicate_content",
            DuplicateReason::NearDuplicate => "near_duplicate",
        }
    }
}

/// A uid left out of the pool: the uid it duplicates, why, and (near duplicates) the cosine as `f32` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Duplicate {
    /// The uid kept in its place.
    pub of: Uid,
    /// Why.
    pub reason: DuplicateReason,
    /// The cosine to `of` (near duplicates), as bits.
    pub similarity: Option<u32>,
}

/// Exact content dedup: among rows with the same image bytes (first by [`PoolRow::bytes`], then among the
/// survivors by [`PoolRow::pixels`]), the least uid survives. Returns (the surviving rows, the others with the
/// uid they duplicate). Rows without a digest pass through. A pure function of the pool, so it does not depend
/// on arrival order or worker count, and a retracted survivor hands its place to the next least uid.
///
/// ```
/// use differential_dataflow::input::Input;
/// use flyt::Uid;
/// use flyt_operators::{DedupContent, PoolRow};
///
/// timely::example(|scope| {
///     let row = |b: u128| PoolRow { shard: "s".into(), bytes: Some(b), ..Default::default() };
///     let u = Uid::from_u128;
///     let (_, rows) = scope.new_collection_from(vec![(u(3), row(7)), (u(1), row(7)), (u(2), row(8))]);
///     let (kept, dups) = rows.dedup_content();
///     let (_, want) = scope.new_collection_from(vec![(u(1), row(7)), (u(2), row(8))]);
///     kept.assert_eq(want);
///     let (_, want) = scope.new_collection_from(vec![u(3)]);
///     dups.map(|(uid, d)| { assert_eq!(d.of, Uid::from_u128(1)); uid }).assert_eq(want);
/// });
/// ```
pub trait DedupContent<'scope, T: Timestamp> {
    /// (survivors, duplicates).
    #[allow(clippy::type_complexity)]
    fn dedup_content(self) -> Deduped<'scope, T>;
}

type Decided = (Uid, PoolRow, Option<Uid>);

/// (survivors, duplicates).
pub type Deduped<'scope, T> = (VecCollection<'scope, T, (Uid, PoolRow)>, VecCollection<'scope, T, (Uid, Duplicate)>);

fn by<'scope, T>(
    rows: VecCollection<'scope, T, (Uid, PoolRow)>,
    name: &str,
    digest: fn(&PoolRow) -> Option<u128>,
) -> Deduped<'scope, T>
where
    T: Timestamp + Lattice + timely::ExchangeData + Ord,
{
    let without = rows.clone().filter(move |(_, r)| digest(r).is_none());
    let decided: VecCollection<'scope, T, (u128, Decided)> =
        rows.flat_map(move |(u, r)| digest(&r).map(|d| (d, (u, r)))).reduce_named(name, |_digest, rows, out| {
            // rows are sorted: the first one with a positive count has the least uid
            let mut first: Option<Uid> = None;
            for ((uid, row), d) in rows.iter() {
                if *d <= 0 {
                    continue;
                }
                let of = *first.get_or_insert(*uid);
                out.push(((*uid, row.clone(), (of != *uid).then_some(of)), 1));
            }
        });
    let kept = decided.clone().flat_map(|(_, (u, r, of))| of.is_none().then_some((u, r))).concat(without);
    let dups = decided.flat_map(|(_, (u, _, of))| {
        of.map(|of| (u, Duplicate { of, reason: DuplicateReason::DuplicateContent, similarity: None }))
    });
    (kept, dups)
}

impl<'scope, T> DedupContent<'scope, T> for VecCollection<'scope, T, (Uid, PoolRow)>
where
    T: Timestamp + Lattice + timely::ExchangeData + Ord,
{
    fn dedup_content(self) -> Deduped<'scope, T> {
        let (kept, by_bytes) = by(self, "DedupContentBytes", |r| r.bytes);
        let (kept, by_pixels) = by(kept, "DedupContentPixels", |r| r.pixels);
        (kept, by_bytes.concat(by_pixels))
    }
}
