//! The closed-form mixed derivative G_k = ∂/∂w_k ⟨∂L_w/∂ℓ, δℓ⟩ (notes §2.5 step 6–7).

#[cfg(test)]
use tch::Kind;
use tch::Tensor;

/// G_k = ∂/∂w_k [ D_{δℓ} L_w ]: how the derivative of the weighted CLIP loss along a logit direction δℓ (the
/// JVP of the logits along the downstream direction v) changes with example k's weight. For one direction,
/// with P_ij = w_j e^{ℓ_ij} / Σ_m w_m e^{ℓ_im} and m_i = Σ_j P_ij δℓ_ij,
///
/// ```text
/// ∂/∂w_k [D_{δℓ} L_dir] = −(δℓ_kk − m_k) + (1/w_k) Σ_i w_i P_ik (δℓ_ik − m_i)
/// ```
///
/// and G = ½ (that for (ℓ, δℓ) + that for (ℓᵀ, δℓᵀ)). `w` are the (positive) weights, not their logs.
pub(crate) fn weight_gradient(logits: &Tensor, dlogits: &Tensor, w: &Tensor) -> Tensor {
    let dir = |l: &Tensor, dl: &Tensor| {
        let p = (l + w.log().unsqueeze(0)).softmax(1, l.kind());
        let m = (&p * dl).sum_dim_intlist([1i64].as_slice(), true, l.kind());
        let diag = dl.diagonal(0, 0, 1) - m.squeeze_dim(1);
        let cross = (w.unsqueeze(1) * &p * (dl - &m)).sum_dim_intlist([0i64].as_slice(), false, l.kind()) / w;
        -diag + cross
    };
    (dir(logits, dlogits) + dir(&logits.transpose(0, 1), &dlogits.transpose(0, 1))) / 2.0
}

/// The derivative of `weighted_clip_loss` along δℓ at weights `w`, by autograd.
#[cfg(test)]
fn directional(logits: &Tensor, dlogits: &Tensor, w: &Tensor) -> f64 {
    let l = logits.detach().set_requires_grad(true);
    let loss = super::weighted_clip_loss(&l, &w.log());
    let g = Tensor::run_backward(&[loss], &[&l], false, false).remove(0);
    (g * dlogits).sum(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn closed_form_matches_finite_differences_of_the_directional_derivative() {
        tch::manual_seed(9);
        let opts = (Kind::Double, Device::Cpu);
        let n = 10;
        let l = Tensor::randn([n, n], opts) * 3.0;
        let dl = Tensor::randn([n, n], opts);
        let w = Tensor::randn([n], opts).softmax(0, Kind::Double);
        let g = weight_gradient(&l, &dl, &w);
        let h = 1e-6;
        for k in 0..n {
            let e = Tensor::zeros([n], opts).index_fill(0, &Tensor::from_slice(&[k]), h);
            let fd = (directional(&l, &dl, &(&w + &e)) - directional(&l, &dl, &(&w - &e))) / (2.0 * h);
            let got = g.double_value(&[k]);
            assert!((fd - got).abs() < 1e-6 * (1.0 + fd.abs()), "k = {k}: closed form {got}, finite differences {fd}");
        }
    }
}
