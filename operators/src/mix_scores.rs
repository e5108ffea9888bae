//! `MixScores`: per-method score collections in, one score per uid out (M-FLYT's mixer, or one column).

use differential_dataflow::VecCollection;
use flyt::Uid;
use flyt::train::MixWeights;
use timely::progress::Timestamp;

use crate::{ExternalScore, PoolRow};

/// How a uid's score is made from its columns.
#[derive(Clone, Debug)]
pub enum Mix {
    /// One internal column as is (its index in the rows' values).
    Column(usize),
    /// M-FLYT's linear mixer over named columns: each is either internal (by name, from `internal`) or
    /// external (from score files joined on uid).
    Linear {
        /// The mixer.
        weights: MixWeights,
        /// The internal column names, in [`PoolRow::values`] order.
        internal: Vec<String>,
    },
}

impl Mix {
    /// The mixer's columns that are not internal: they must come from external score files.
    pub fn external_columns(&self) -> Vec<String> {
        match self {
            Mix::Column(_) => Vec::new(),
            Mix::Linear { weights, internal } => {
                weights.columns.iter().filter(|c| !internal.contains(c)).cloned().collect()
            }
        }
    }
}

/// Scores a deduplicated pool: `(uid, score as f64 bits)`.
///
/// With M-FLYT columns that are not computed in the pipeline, the external scores (`(uid, ExternalScore)`,
/// from files that arrive on their own schedule) are reduced to one value per (uid, column) — the least file
/// name wins — and joined with the pool on uid (a differential join): a uid enters the output once all its
/// columns are present, and its score moves when a column changes.
///
/// ```
/// use differential_dataflow::input::Input;
/// use flyt::Uid;
/// use flyt::train::MixWeights;
/// use flyt_operators::{ExternalScore, Mix, MixScores, PoolRow};
///
/// timely::example(|scope| {
///     let row = PoolRow { shard: "s".into(), values: vec![0.5f32.to_bits()], ..Default::default() };
///     let (_, pool) = scope.new_collection_from(vec![(Uid::from_u128(1), row)]);
///     let ext = ExternalScore { column: "aes".into(), file: "f.parquet".into(), value: 2.0f64.to_bits() };
///     let (_, external) = scope.new_collection_from(vec![(Uid::from_u128(1), ext)]);
///     let weights = MixWeights {
///         columns: vec!["clip_score".into(), "aes".into()],
///         mean: vec![0.0, 0.0], std: vec![1.0, 1.0], weight: vec![1.0, 10.0], bias: 0.0, digest: String::new(),
///     };
///     let mix = Mix::Linear { weights, internal: vec!["clip_score".into()] };
///     let (_, want) = scope.new_collection_from(vec![(Uid::from_u128(1), 20.5f64.to_bits())]);
///     pool.mix_scores(&mix, Some(external)).assert_eq(want);
/// });
/// ```
pub trait MixScores<'scope, T: Timestamp> {
    /// `(uid, score bits)` for every uid whose columns are all present.
    fn mix_scores(
        self,
        mix: &Mix,
        external: Option<VecCollection<'scope, T, (Uid, ExternalScore)>>,
    ) -> VecCollection<'scope, T, (Uid, u64)>;
}

impl<'scope, T> MixScores<'scope, T> for VecCollection<'scope, T, (Uid, PoolRow)>
where
    T: Timestamp + differential_dataflow::lattice::Lattice + timely::ExchangeData + Ord,
{
    fn mix_scores(
        self,
        mix: &Mix,
        external: Option<VecCollection<'scope, T, (Uid, ExternalScore)>>,
    ) -> VecCollection<'scope, T, (Uid, u64)> {
        match mix.clone() {
            Mix::Column(i) => self.map(move |(uid, row)| (uid, (row.value(i) as f64).to_bits())),
            Mix::Linear { weights, internal } => {
                let ext_cols = mix.external_columns();
                // Where each mixer input comes from: Ok(internal index) or Err(external index).
                let source: Vec<Result<usize, usize>> = weights
                    .columns
                    .iter()
                    .map(|c| match internal.iter().position(|n| n == c) {
                        Some(i) => Ok(i),
                        None => {
                            Err(ext_cols.iter().position(|n| n == c).expect("every non-internal column is external"))
                        }
                    })
                    .collect();
                let score = move |row: &PoolRow, ext: &[u64]| -> u64 {
                    let values: Vec<f64> = source
                        .iter()
                        .map(|s| match s {
                            Ok(i) => row.value(*i) as f64,
                            Err(j) => f64::from_bits(ext[*j]),
                        })
                        .collect();
                    weights.mix(&values).to_bits()
                };
                if ext_cols.is_empty() {
                    return self.map(move |(uid, row)| (uid, score(&row, &[])));
                }
                let Some(external) = external else {
                    // Nothing can complete the rows: an empty collection.
                    return self.filter(|_| false).map(|(uid, _)| (uid, 0u64));
                };
                let wanted = ext_cols.clone();
                let per_uid = external.filter(move |(_, e)| wanted.contains(&e.column)).reduce_named(
                    "ExternalColumns",
                    move |_uid, scores, out: &mut Vec<(Vec<u64>, isize)>| {
                        let mut got: Vec<Option<u64>> = vec![None; ext_cols.len()];
                        // Values arrive sorted by (column, file, value): the first positive one per column wins.
                        for (e, d) in scores {
                            if *d > 0
                                && let Some(j) = ext_cols.iter().position(|c| *c == e.column)
                                && got[j].is_none()
                            {
                                got[j] = Some(e.value);
                            }
                        }
                        if let Some(all) = got.into_iter().collect::<Option<Vec<u64>>>() {
                            out.push((all, 1));
                        }
                    },
                );
                self.join_map(per_uid, move |uid, row, ext| (*uid, score(row, ext)))
            }
        }
    }
}
