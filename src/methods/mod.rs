//! Per-example scoring methods: the scores M-FLYT mixes and DataComp's baseline filters.
//!
//! Each method turns what a user has (CLIP embeddings, captions, image sizes, a downstream set) into one or more
//! named per-uid score columns ([`ScoreColumn`]). Embeddings are row-major `rows × dim` `f32` slices, as the
//! `.npz` files and [`crate::clip::Embeddings`] hold them.
//!
//! | method | function | column(s) |
//! |---|---|---|
//! | CLIP score (cosine of image and caption embeddings) | [`clip_score`] | `clip_score` |
//! | negCLIPLoss (Wang et al. 2024) | [`neg_clip_loss`] | `neg_clip_loss` |
//! | NormSim₂ / NormSim∞ (Wang et al. 2024) | [`norm_sim`] | `norm_sim_2`, `norm_sim_inf` |
//! | DataComp basic-filter features | [`BasicFeatures`] | `caption_words`, `caption_chars`, `image_min_side`, `image_aspect`, `english`, `basic` |
//! | image-based clustering (DataComp) | [`KMeans`], [`ImageClusters`] | `image_based`, `image_based_sim` |
//! | text-based (DataComp) | [`ClassNameMatcher`] | `text_based` |
//! | SemDeDup (Abbas et al. 2023) | [`semdedup`], [`IncrementalSemDedup`] | `semdedup_keep`, `semdedup_sim` |

mod basic;
mod clip_score;
mod kmeans;
mod neg_clip_loss;
mod norm_sim;
mod semdedup;
mod text_based;

pub use basic::{BasicFeatures, BasicFilter, ImageSize, english_flags, is_english};
pub use clip_score::clip_score;
pub use kmeans::{ImageClusters, KMeans, KMeansConfig};
pub use neg_clip_loss::{NegClipLossConfig, neg_clip_loss, neg_clip_loss_in_batches, random_batches};
pub use norm_sim::{NormSimTarget, norm_sim};
pub use semdedup::{
    IncrementalSemDedup, Rank, SemDedupInput, Verdict, normalize, rank, semdedup, semdedup_brute_force,
};
pub use text_based::ClassNameMatcher;

use crate::{Error, Result, Uid};

/// One named per-uid score column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreColumn {
    /// Column name (`clip_score`, `norm_sim_inf`, ...).
    pub name: String,
    /// The uids, one per value.
    pub uids: Vec<Uid>,
    /// The scores.
    pub values: Vec<f32>,
}

impl ScoreColumn {
    /// A column from uids and values of equal length.
    pub fn new(name: impl Into<String>, uids: Vec<Uid>, values: Vec<f32>) -> Result<Self> {
        let name = name.into();
        if uids.len() != values.len() {
            return Err(Error::Config(format!("score column {name}: {} uids but {} values", uids.len(), values.len())));
        }
        Ok(Self { name, uids, values })
    }

    /// (uid, score) pairs as the samplers take them.
    pub fn pairs(&self) -> Vec<(Uid, f64)> {
        self.uids.iter().zip(&self.values).map(|(&u, &v)| (u, v as f64)).collect()
    }
}

/// Checks that `data` is a `rows × dim` matrix; returns `rows`.
pub(crate) fn rows_of(what: &str, data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::Config(format!("{what}: embedding dimension is 0")));
    }
    if !data.len().is_multiple_of(dim) {
        return Err(Error::Config(format!("{what}: {} values is not a whole number of {dim}-d rows", data.len())));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::Config(format!("{what}: row {} has a non-finite value", i / dim)));
    }
    Ok(data.len() / dim)
}

/// Dot product with a fixed summation order (8 lanes, then the lanes in order): the same bits on every call,
/// whatever thread runs it. The compiler vectorises the lane loop.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// L2-normalised copy of a `rows × dim` matrix (zero rows stay zero).
pub(crate) fn normalized(data: &[f32], dim: usize) -> Vec<f32> {
    let mut out = data.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let n = dot(row, row).sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|x| *x /= n);
        }
    }
    out
}

/// A `rows × dim` f32 matrix as a tensor on `device`.
pub(crate) fn tensor(data: &[f32], dim: usize, device: tch::Device) -> tch::Tensor {
    tch::Tensor::from_slice(data).view([(data.len() / dim) as i64, dim as i64]).to_device(device)
}

/// A 1-d f32 tensor back to a vector.
pub(crate) fn to_vec(t: &tch::Tensor) -> Result<Vec<f32>> {
    let t = t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float).contiguous();
    Vec::<f32>::try_from(&t).map_err(|e| Error::Config(format!("tensor to vector: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        for n in [0usize, 1, 7, 8, 9, 31, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn rows_of_rejects_ragged_and_non_finite() {
        assert_eq!(rows_of("x", &[0.0; 6], 3).unwrap(), 2);
        assert!(rows_of("x", &[0.0; 5], 3).is_err());
        assert!(rows_of("x", &[0.0; 3], 0).is_err());
        let e = rows_of("x", &[0.0, 0.0, 0.0, 1.0, f32::NAN, 0.0], 3).unwrap_err().to_string();
        assert!(e.contains("row 1"), "{e}");
    }
}
