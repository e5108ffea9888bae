//! The `embedding` reference mode: a CLIP-like reference model made of trainable projections and a logit scale
//! on top of precomputed frozen embeddings, and the exact one-step-lookahead hypergradient of notes §2.5 for it.

use tch::{Device, Kind, Tensor};

use super::adamw::{AdamW, adamw_jacobian};
use super::loss::weighted_clip_loss;
use super::mixed::weight_gradient;
use super::optim::ParamAdamW;
use crate::clip::l2_normalize;
use crate::{Error, Result};

/// The inner (reference) step the lookahead differentiates through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inner {
    /// θ' = θ − η g (for tests: its Jacobian is −η).
    Sgd,
    /// θ' = AdamW(θ, g) with the reference optimiser's moments (the paper's).
    AdamW,
}

/// The reference model: U = normalise(X_img W_imgᵀ), V = normalise(X_txt W_txtᵀ), logits exp(logit_scale)·U Vᵀ.
/// Parameters in order: `w_img` (out × in), `w_txt` (out × in), `logit_scale` (scalar).
#[derive(Debug)]
pub struct EmbeddingReference {
    /// The parameters (leaves).
    pub params: Vec<Tensor>,
    /// The downstream logit scale ρ (learned; initialised to ln(1/0.07)).
    pub rho: Tensor,
    /// AdamW over `params`.
    pub opt: ParamAdamW,
    /// Adam (no decay) over ρ.
    pub rho_opt: ParamAdamW,
}

/// One downstream task's batch in embedding mode: frozen image embeddings with labels, and one frozen prompt
/// text embedding per class (one template per class, chosen by the caller each step) — or, for the
/// alternative downstream loss (notes §2.4 (b)), a frozen caption embedding per image.
#[derive(Debug)]
pub struct DownstreamBatch {
    /// `M × in` image embeddings.
    pub image: Tensor,
    /// `M` class indices (int64).
    pub labels: Tensor,
    /// `C × in` prompt text embeddings.
    pub prompts: Tensor,
    /// `M × in` caption embeddings: when present, this task's loss is the CLIP loss of (image, caption) pairs
    /// with logit scale exp(ρ) instead of the prompt classifier's cross-entropy.
    pub captions: Option<Tensor>,
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

/// u = a/‖a‖ and its directional derivative along da: (da − u⟨u, da⟩)/‖a‖.
fn normalize_jvp(a: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
    let n = a.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    let u = a / &n;
    let du = (da - &u * (&u * da).sum_dim_intlist([1i64].as_slice(), true, a.kind())) / n;
    (u, du)
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

impl EmbeddingReference {
    /// A reference `in_dim → out_dim`: projections initialised to the identity (padded/truncated) plus
    /// N(0, init_noise²), logit scale ln(1/0.07), ρ = ln(1/0.07).
    pub fn new(in_dim: i64, out_dim: i64, init_noise: f64, config: AdamW, kind: Kind, device: Device) -> Self {
        let eye = Tensor::eye_m(out_dim, in_dim, (kind, device));
        let w = |_: ()| (&eye + Tensor::randn([out_dim, in_dim], (kind, device)) * init_noise).set_requires_grad(true);
        let ls = Tensor::from_slice(&[(1.0f64 / 0.07).ln()]).to_kind(kind).to_device(device).squeeze();
        let params = vec![w(()), w(()), ls.set_requires_grad(true)];
        let named: Vec<(String, Tensor)> = ["w_img", "w_txt", "logit_scale"]
            .iter()
            .zip(&params)
            .map(|(n, p)| (n.to_string(), p.shallow_clone()))
            .collect();
        let rho = Tensor::from_slice(&[(1.0f64 / 0.07).ln()]).to_kind(kind).to_device(device).squeeze();
        let rho_opt =
            ParamAdamW::new(AdamW { weight_decay: 0.0, ..config }, &[("logit_scale_down".into(), rho.shallow_clone())]);
        Self { opt: ParamAdamW::new(config, &named), params, rho: rho.set_requires_grad(true), rho_opt }
    }

    /// Normalised image embeddings under `params`.
    pub fn encode_image(params: &[Tensor], x: &Tensor) -> Tensor {
        l2_normalize(&x.matmul(&params[0].transpose(0, 1)))
    }

    /// Normalised text embeddings under `params`.
    pub fn encode_text(params: &[Tensor], x: &Tensor) -> Tensor {
        l2_normalize(&x.matmul(&params[1].transpose(0, 1)))
    }

    /// Mean over tasks of the prompt classifier's cross-entropy, logits exp(ρ)·⟨image, class⟩ built from
    /// `params`' text projection (notes §2.4 (a)), or for a task with captions the CLIP loss of its (image,
    /// caption) pairs at scale exp(ρ) (notes §2.4 (b)).
    pub fn downstream_loss(params: &[Tensor], rho: &Tensor, tasks: &[DownstreamBatch]) -> Tensor {
        let mut total: Option<Tensor> = None;
        for t in tasks {
            let img = Self::encode_image(params, &t.image);
            let txt = Self::encode_text(params, t.captions.as_ref().unwrap_or(&t.prompts));
            let ce = super::loss::downstream_task_loss(&img, &txt, &t.labels, t.captions.is_some(), rho);
            total = Some(match total {
                None => ce,
                Some(x) => x + ce,
            });
        }
        total.expect("at least one task") / tasks.len() as f64
    }

    /// The exact one-step lookahead for scores `s` (notes §2.5): g = ∇_θ L_w(θ) with w = softmax(s),
    /// θ' = inner(θ, g) at learning rate `lr`, L_down(θ'), v = (∂θ'/∂g) ⊙ ∇_{θ'}L_down, the embedding JVP along v,
    /// and the closed-form G. The reference logit scale's path is dropped (L_down does not depend on it).
    /// Nothing is changed until [`EmbeddingReference::apply`].
    pub fn lookahead(
        &self,
        s: &Tensor,
        up_image: &Tensor,
        up_text: &Tensor,
        tasks: &[DownstreamBatch],
        inner: Inner,
        lr: f64,
    ) -> Result<Lookahead> {
        if tasks.is_empty() {
            return Err(Error::Config("FLYT needs at least one downstream task".into()));
        }
        let s = s.detach();
        let w = s.softmax(0, s.kind());
        let log_w = s.log_softmax(0, s.kind());
        // (i) g at θ
        let u = Self::encode_image(&self.params, up_image);
        let v_emb = Self::encode_text(&self.params, up_text);
        let tau = self.params[2].exp();
        let logits = u.matmul(&v_emb.transpose(0, 1)) * &tau;
        let up = weighted_clip_loss(&logits, &log_w);
        let up_loss = up.double_value(&[]);
        let grads = Tensor::run_backward(&[&up], &self.params, false, false);
        let grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        // (ii) θ' and the Jacobian of the step
        let (mut next_params, jac, ms, vs, t) = inner_step(&self.params, &grads, &self.opt, inner, lr);
        let (lo, hi) = LOGIT_SCALE_RANGE;
        next_params[2] = next_params[2].clamp(lo, hi);
        // (iii) ∇ L_down at θ'
        let leaves: Vec<Tensor> = next_params.iter().map(|p| p.detach().set_requires_grad(true)).collect();
        let rho = self.rho.detach().set_requires_grad(true);
        let down = Self::downstream_loss(&leaves, &rho, tasks);
        let down_loss = down.double_value(&[]);
        // the reference logit scale is not an input of L_down: only the projections and ρ are differentiated
        let mut dg = Tensor::run_backward(&[&down], &[&leaves[0], &leaves[1], &rho], false, false);
        let d_rho = dg.pop().expect("rho gradient");
        let _ng = tch::no_grad_guard();
        // (iv) v = (∂θ'/∂g) ⊙ ∇_{θ'} L_down
        let dir: Vec<Tensor> = jac.iter().zip(&dg).map(|(j, d)| j * d).collect();
        // (v) JVP of the embeddings along v
        let (u0, du) =
            normalize_jvp(&up_image.matmul(&self.params[0].transpose(0, 1)), &up_image.matmul(&dir[0].transpose(0, 1)));
        let (v0, dv) =
            normalize_jvp(&up_text.matmul(&self.params[1].transpose(0, 1)), &up_text.matmul(&dir[1].transpose(0, 1)));
        let tau = tau.detach();
        let l0 = u0.matmul(&v0.transpose(0, 1)) * &tau;
        let dl = (du.matmul(&v0.transpose(0, 1)) + u0.matmul(&dv.transpose(0, 1))) * &tau;
        // (vi) G and ∂L_down/∂s
        let (g_w, g_s) = weight_and_score_gradients(&l0, &dl, &w);
        Ok(Lookahead { g_w, g_s, up_loss, down_loss, next: (next_params, ms, vs, t), d_rho, grad_norm })
    }

    /// Commits a lookahead: θ ← θ', the reference moments, and one Adam step of ρ at `lr`.
    pub fn apply(&mut self, look: Lookahead, lr: f64) {
        let (next, m, v, t) = look.next;
        let _g = tch::no_grad_guard();
        for (p, n) in self.params.iter_mut().zip(&next) {
            p.copy_(n);
        }
        self.opt.set_state(m, v, t);
        let mut rho = [self.rho.shallow_clone()];
        self.rho_opt.step(&mut rho, &[look.d_rho], lr);
    }
}
