//! AdamW as a function of the gradient (decoupled weight decay, open_clip's defaults), and its exact
//! elementwise Jacobian ∂θ'/∂g (notes §2.5 step 5).

use tch::Tensor;

/// AdamW hyper-parameters (open_clip's ViT defaults: β = (0.9, 0.98), ε = 1e-6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate η.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay λ (0 for biases, norms and logit scales).
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 5e-5, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.2 }
    }
}

/// One AdamW step at step number `t` (1-based) from moments `m0`, `v0`: returns (θ', m, v) with
/// m = β1 m0 + (1−β1) g, v = β2 v0 + (1−β2) g², θ' = θ(1 − ηλ) − η m̂/(√v̂ + ε); an entry with v̂ = 0 gets only the
/// decay. Differentiable in `g` when `g` carries a graph.
pub(crate) fn adamw_step(
    theta: &Tensor,
    g: &Tensor,
    m0: &Tensor,
    v0: &Tensor,
    t: i64,
    o: &AdamW,
) -> (Tensor, Tensor, Tensor) {
    let m = m0 * o.beta1 + g * (1.0 - o.beta1);
    let v = v0 * o.beta2 + g * g * (1.0 - o.beta2);
    let bc1 = 1.0 - o.beta1.powi(t as i32);
    let bc2 = 1.0 - o.beta2.powi(t as i32);
    let (m_hat, v_hat) = (&m / bc1, &v / bc2);
    let denom = v_hat.sqrt() + o.eps;
    let step = (m_hat / denom).where_self(&v_hat.gt(0.0), &g.zeros_like());
    let theta2 = theta * (1.0 - o.lr * o.weight_decay) - step * o.lr;
    (theta2, m, v)
}

/// ∂θ'/∂g of [`adamw_step`], elementwise (the map is elementwise):
/// −η [ c1/(√v̂ + ε) − m̂ · c2 · g / (√v̂ (√v̂ + ε)²) ], c1 = (1−β1)/(1−β1^t), c2 = (1−β2)/(1−β2^t); 0 where v̂ = 0.
pub(crate) fn adamw_jacobian(g: &Tensor, m0: &Tensor, v0: &Tensor, t: i64, o: &AdamW) -> Tensor {
    let m = m0 * o.beta1 + g * (1.0 - o.beta1);
    let v = v0 * o.beta2 + g * g * (1.0 - o.beta2);
    let bc1 = 1.0 - o.beta1.powi(t as i32);
    let bc2 = 1.0 - o.beta2.powi(t as i32);
    let (c1, c2) = ((1.0 - o.beta1) / bc1, (1.0 - o.beta2) / bc2);
    let (m_hat, v_hat) = (&m / bc1, &v / bc2);
    let sq = v_hat.sqrt();
    let denom = &sq + o.eps;
    let safe_sq = sq.clamp_min(f64::MIN_POSITIVE);
    let j = (c1 / &denom - m_hat * c2 * g / (safe_sq * &denom * &denom)) * (-o.lr);
    j.where_self(&v_hat.gt(0.0), &g.zeros_like())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn jacobian_matches_central_differences() {
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let theta = Tensor::randn([50], opts);
        let g = Tensor::randn([50], opts) * 1e-2;
        let m0 = Tensor::randn([50], opts) * 1e-3;
        let v0 = Tensor::rand([50], opts) * 1e-4;
        let o = AdamW { lr: 1e-3, ..Default::default() };
        for t in [1i64, 2, 10] {
            let j = adamw_jacobian(&g, &m0, &v0, t, &o);
            let h = 1e-7;
            let (plus, _, _) = adamw_step(&theta, &(&g + h), &m0, &v0, t, &o);
            let (minus, _, _) = adamw_step(&theta, &(&g - h), &m0, &v0, t, &o);
            let fd = (plus - minus) / (2.0 * h);
            let err = (&fd - &j).abs().max().double_value(&[]);
            let scale = j.abs().max().double_value(&[]);
            assert!(err < 1e-6 * scale, "t = {t}: max error {err} (scale {scale})");
        }
        // zero gradient and zero second moment: only the decay moves θ, and the Jacobian is 0 there
        let z = Tensor::zeros([3], opts);
        let (th, _, _) = adamw_step(&Tensor::ones([3], opts), &z, &z, &z, 1, &o);
        assert!((th - (1.0 - o.lr * o.weight_decay)).abs().max().double_value(&[]) < 1e-15);
        assert_eq!(adamw_jacobian(&z, &z, &z, 1, &o).abs().sum(Kind::Double).double_value(&[]), 0.0);
    }
}
