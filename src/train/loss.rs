//! The standard and the negative-weighted CLIP losses.

use tch::Tensor;

/// The standard CLIP loss of an `N × N` logit matrix ℓ_ij = τ⟨u_i, t_j⟩: the mean of the image→text and
/// text→image cross-entropies with the diagonal as targets.
pub fn clip_loss(logits: &Tensor) -> Tensor {
    // in the logits' own precision (tch's cross_entropy_for_logits computes in f32)
    let dir = |l: &Tensor| -l.log_softmax(1, l.kind()).diagonal(0, 0, 1).mean(l.kind());
    (dir(logits) + dir(&logits.transpose(0, 1))) / 2.0
}

/// One downstream task's loss at scale exp(ρ) from normalised embeddings (notes §2.4): with `captions`, the
/// CLIP loss of the (image, caption) pairs (row i of `text` is image i's caption); otherwise the prompt
/// classifier's cross-entropy against `labels` (row c of `text` is class c's prompt).
pub(crate) fn downstream_task_loss(
    image: &Tensor,
    text: &Tensor,
    labels: &Tensor,
    captions: bool,
    rho: &Tensor,
) -> Tensor {
    let logits = image.matmul(&text.transpose(0, 1)) * rho.exp();
    if captions {
        clip_loss(&logits)
    } else {
        -logits.log_softmax(1, logits.kind()).gather(1, &labels.unsqueeze(1), false).mean(logits.kind())
    }
}

/// The negative-weighted CLIP loss of FLYT (notes §2.3), in its stable log-sum-exp form:
///
/// ```text
/// L_dir(w, ℓ) = − Σ_i w_i · [ log w_i + ℓ_ii − logsumexp_j (log w_j + ℓ_ij) ],   L_w = ½ [L_dir(w, ℓ) + L_dir(w, ℓᵀ)]
/// ```
///
/// `log_w` are the log-weights (with w = softmax(s), `log_softmax(s)`). The weights enter as the per-example
/// weight, on the positive and on every negative; uniform weights 1/N give [`clip_loss`], and L_{c·w} = c·L_w.
///
/// ```
/// use tch::Tensor;
/// let logits = Tensor::from_slice(&[3.0f64, 0.5, -1.0, 2.0]).view([2, 2]);
/// let uniform = Tensor::from_slice(&[0.5f64, 0.5]).log();
/// let a = flyt::train::weighted_clip_loss(&logits, &uniform).double_value(&[]);
/// let b = flyt::train::clip_loss(&logits).double_value(&[]);
/// assert!((a - b).abs() < 1e-12);
/// ```
pub fn weighted_clip_loss(logits: &Tensor, log_w: &Tensor) -> Tensor {
    let dir = |l: &Tensor| {
        let diag = l.diagonal(0, 0, 1);
        let lse = (l + log_w.unsqueeze(0)).logsumexp([1i64].as_slice(), false);
        -(log_w.exp() * (log_w + diag - lse)).sum(l.kind())
    };
    (dir(logits) + dir(&logits.transpose(0, 1))) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn logits(n: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let u = Tensor::randn([n, 8], (Kind::Double, Device::Cpu));
        let t = Tensor::randn([n, 8], (Kind::Double, Device::Cpu));
        let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        norm(u).matmul(&norm(t).transpose(0, 1)) * 30.0
    }

    /// The naive form, as the authors' code writes it: exponentiated logits, no max subtraction.
    fn naive(l: &Tensor, w: &Tensor) -> Tensor {
        let dir = |l: &Tensor| {
            let e = l.exp() * w.unsqueeze(0);
            let p = e.diagonal(0, 0, 1) / e.sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
            -(w * p.log()).sum(Kind::Double)
        };
        (dir(l) + dir(&l.transpose(0, 1))) / 2.0
    }

    #[test]
    fn uniform_weights_give_the_standard_loss() {
        let l = logits(16, 1);
        let lw = Tensor::full([16], -(16f64.ln()), (Kind::Double, Device::Cpu));
        let a = weighted_clip_loss(&l, &lw).double_value(&[]);
        let b = clip_loss(&l).double_value(&[]);
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn scaling_the_weights_scales_the_loss_and_stable_equals_naive() {
        let l = logits(12, 2);
        tch::manual_seed(3);
        let s = Tensor::randn([12], (Kind::Double, Device::Cpu)) * 2.0;
        let lw = s.log_softmax(0, Kind::Double);
        let base = weighted_clip_loss(&l, &lw).double_value(&[]);
        for c in [0.1f64, 3.0, 17.0] {
            let scaled = weighted_clip_loss(&l, &(&lw + c.ln())).double_value(&[]);
            assert!((scaled - c * base).abs() < 1e-10 * c.max(1.0), "c = {c}: {scaled} vs {}", c * base);
        }
        let n = naive(&l, &lw.exp()).double_value(&[]);
        assert!((n - base).abs() < 1e-10, "{n} vs {base}");
    }
}
