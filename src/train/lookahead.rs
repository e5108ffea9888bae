//! What both reference modes share: the inner step the lookahead differentiates through, the lookahead's result
//! and its closing step (G and ∂L_down/∂s from the logits' derivative), and the reference's state as a
//! checkpoint and a commit see it.

use tch::Tensor;

use super::adamw::adamw_jacobian;
use super::mixed::weight_gradient;
use super::optim::ParamAdamW;

/// The inner (reference) step the lookahead differentiates through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inner {
    /// θ' = θ − η g (for tests: its Jacobian is −η).
    Sgd,
    /// θ' = AdamW(θ, g) with the reference optimiser's moments (the paper's).
    AdamW,
}

/// What one lookahead computed.
#[derive(Debug)]
pub struct Lookahead {
    /// G_k = ∂L_down/∂w_k (weights as free variables).
    pub g_w: Tensor,
    /// ∂L_down/∂s_k = w_k (G_k − Σ_j w_j G_j) with w = softmax(s).
    pub g_s: Tensor,
    /// The weighted upstream loss at θ.
    pub up_loss: f64,
    /// The downstream loss at θ'.
    pub down_loss: f64,
    /// θ' (new parameter values), the new moments and step count.
    pub(crate) next: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, i64),
    /// ∂L_down/∂ρ at θ'.
    pub(crate) d_rho: Tensor,
    /// Norm of the reference gradient g.
    pub grad_norm: f64,
}

/// What a lookahead has computed before its last step (everything [`Lookahead`] holds but G).
pub(crate) struct Pieces {
    pub(crate) up_loss: f64,
    pub(crate) down_loss: f64,
    pub(crate) grad_norm: f64,
    pub(crate) next: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, i64),
    pub(crate) d_rho: Tensor,
}

impl Lookahead {
    /// The last step of a lookahead in either reference mode (notes §2.5 vi–vii), under no-grad: the logits at θ,
    /// ℓ = τ U Vᵀ, their derivative along v, δℓ = τ (U' Vᵀ + U V'ᵀ), and from them G and ∂L_down/∂s for the
    /// weights `w`. `u`, `v` are the normalised upstream embeddings at θ, `du`, `dv` their JVPs along v.
    pub(crate) fn close(u: &Tensor, du: &Tensor, v: &Tensor, dv: &Tensor, tau: &Tensor, w: &Tensor, p: Pieces) -> Self {
        let l0 = u.matmul(&v.transpose(0, 1)) * tau;
        let dl = (du.matmul(&v.transpose(0, 1)) + u.matmul(&dv.transpose(0, 1))) * tau;
        let (g_w, g_s) = weight_and_score_gradients(&l0, &dl, w);
        Lookahead {
            g_w,
            g_s,
            up_loss: p.up_loss,
            down_loss: p.down_loss,
            next: p.next,
            d_rho: p.d_rho,
            grad_norm: p.grad_norm,
        }
    }
}

/// The inner step for every parameter: (θ', ∂θ'/∂g, m, v, t) — shared by both reference modes.
pub(crate) type InnerStep = (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, i64);

/// θ' = inner(θ, g) per parameter with its elementwise Jacobian, from the optimiser's moments (not changed).
pub(crate) fn inner_step(params: &[Tensor], grads: &[Tensor], opt: &ParamAdamW, inner: Inner, lr: f64) -> InnerStep {
    let _ng = tch::no_grad_guard();
    let t = opt.t + 1;
    let (mut next, mut jac, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        let (m0, v0) = opt.moments(i);
        match inner {
            Inner::Sgd => {
                next.push(p.detach() - g * lr);
                jac.push(g.ones_like() * (-lr));
                ms.push(m0.shallow_clone());
                vs.push(v0.shallow_clone());
            }
            Inner::AdamW => {
                let cfg = opt.config_for(i, lr);
                let (th, m, v) = super::adamw::adamw_step(&p.detach(), g, m0, v0, t, &cfg);
                next.push(th);
                jac.push(adamw_jacobian(g, m0, v0, t, &cfg));
                ms.push(m);
                vs.push(v);
            }
        }
    }
    (next, jac, ms, vs, t)
}

/// G = ∂L_down/∂w (closed form, [`weight_gradient`]) and ∂L_down/∂s = w ⊙ (G − ⟨w, G⟩) for w = softmax(s).
pub(crate) fn weight_and_score_gradients(logits: &Tensor, dlogits: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
    let g_w = weight_gradient(logits, dlogits, w);
    let g_s = w * (&g_w - (w * &g_w).sum(g_w.kind()));
    (g_w, g_s)
}

/// The logit scale's clamp after each step: [2, ln 100] (notes §2.2).
pub const LOGIT_SCALE_RANGE: (f64, f64) = (2.0, 4.605_170_185_988_091);

/// What a checkpoint needs of a reference model: its parameters, ρ, and both optimisers.
pub trait ReferenceState {
    /// (parameters, ρ, AdamW over the parameters, Adam over ρ).
    fn parts(&self) -> (&[Tensor], &Tensor, &ParamAdamW, &ParamAdamW);
    /// The same, mutable (to load a checkpoint).
    fn parts_mut(&mut self) -> (&mut [Tensor], &mut Tensor, &mut ParamAdamW, &mut ParamAdamW);
    /// Commits a lookahead: θ ← θ', the moments, and one Adam step of ρ at `lr`.
    fn apply(&mut self, look: Lookahead, lr: f64) {
        let (next, m, v, t) = look.next;
        let (params, rho, opt, rho_opt) = self.parts_mut();
        let _g = tch::no_grad_guard();
        for (p, n) in params.iter_mut().zip(&next) {
            p.copy_(n);
        }
        opt.set_state(m, v, t);
        let mut rho = [rho.shallow_clone()];
        rho_opt.step(&mut rho, &[look.d_rho], lr);
    }
}
