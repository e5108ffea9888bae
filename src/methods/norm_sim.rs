//! NormSim (Wang et al. 2024): how close an example's image embedding comes to a downstream set's.

use super::{normalized, rows_of, tensor, to_vec};
use crate::{Error, Result};

/// A downstream (target) set of image embeddings, prepared for [`norm_sim`].
///
/// NormSim_p(x) = ( Σ_{t ∈ target} |⟨ū_t, ū_x⟩|^p )^{1/p} over L2-normalised image embeddings ū (Wang, Chen,
/// Yan, Fang, Zhou, Jamieson, Du: "CLIPLoss and Norm-Based Data Selection Methods for Multimodal Contrastive
/// Learning", NeurIPS 2024, arXiv 2405.19547, §3.2). p = ∞ is the largest similarity to any target example;
/// p = 2 is √(ūᵀ Σ ū) with Σ = Σ_t ū_t ū_tᵀ (computed through Σ, so its cost does not grow with the target).
/// As in the authors' code (`cal_similarity_scores_norm`: `torch.norm(x @ targets.T, p)`), the p = 2 sum is not
/// divided by the target size; their older VAS form ūᵀ(Σ/|target|)ū ranks the same.
pub struct NormSimTarget {
    dim: usize,
    rows: usize,
    target: tch::Tensor,
    second_moment: tch::Tensor,
    device: tch::Device,
}

impl NormSimTarget {
    /// Prepares `rows × dim` target embeddings (normalised here) on `device`.
    pub fn new(target: &[f32], dim: usize, device: tch::Device) -> Result<Self> {
        let rows = rows_of("target embeddings", target, dim)?;
        if rows == 0 {
            return Err(Error::Config("NormSim: the target set is empty".into()));
        }
        let t = tensor(&normalized(target, dim), dim, device);
        let second_moment = t.transpose(0, 1).matmul(&t);
        Ok(Self { dim, rows, target: t, second_moment, device })
    }

    /// Number of target embeddings.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the target set is empty (never: [`NormSimTarget::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// NormSim₂ and NormSim∞ of each row of `pool` (`rows × dim` image embeddings, normalised here) against the
/// target; returns `(norm_sim_2, norm_sim_inf)`. Work is done in chunks of `chunk` rows on the target's device.
///
/// ```
/// use flyt::methods::{NormSimTarget, norm_sim};
/// let target = NormSimTarget::new(&[1.0, 0.0, 0.0, 1.0], 2, tch::Device::Cpu).unwrap();
/// let (p2, pinf) = norm_sim(&[1.0, 0.0, 1.0, 1.0], 2, &target, 1024).unwrap();
/// assert!((pinf[0] - 1.0).abs() < 1e-6 && (pinf[1] - 0.5f32.sqrt()).abs() < 1e-6);
/// assert!((p2[0] - 1.0).abs() < 1e-6 && (p2[1] - 1.0).abs() < 1e-6); // √(1² + 0²), √(½ + ½)
/// ```
pub fn norm_sim(pool: &[f32], dim: usize, target: &NormSimTarget, chunk: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if dim != target.dim {
        return Err(Error::Config(format!("NormSim: pool is {dim}-d but the target is {}-d", target.dim)));
    }
    let n = rows_of("pool embeddings", pool, dim)?;
    let _guard = tch::no_grad_guard();
    let (mut p2, mut pinf) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for part in pool.chunks(chunk.max(1) * dim) {
        let x = tensor(&normalized(part, dim), dim, target.device);
        let q = (x.matmul(&target.second_moment) * &x).sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float);
        p2.extend(to_vec(&q.clamp_min(0.0).sqrt())?);
        let sims = x.matmul(&target.target.transpose(0, 1)).abs();
        pinf.extend(to_vec(&sims.amax([1i64].as_slice(), false))?);
    }
    Ok((p2, pinf))
}
