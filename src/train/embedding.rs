//! The `embedding` reference mode: a CLIP-like reference model made of trainable projections and a logit scale
//! on top of precomputed frozen embeddings, and the exact one-step-lookahead hypergradient of notes §2.5 for it.

use tch::{Device, Kind, Tensor};

use super::adamw::AdamW;
use super::lookahead::{
    Inner, LOGIT_SCALE_RANGE, Lookahead, Pieces, RefSettings, ReferenceState, downstream_direction,
};
use super::loss::weighted_clip_loss;
use super::optim::ParamAdamW;
use crate::clip::l2_normalize;
use crate::{Error, Result};

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
    /// How it commits and combines tasks.
    pub settings: RefSettings,
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

/// u = a/‖a‖ and its directional derivative along da: (da − u⟨u, da⟩)/‖a‖.
fn normalize_jvp(a: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
    let n = a.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
    let u = a / &n;
    let du = (da - &u * (&u * da).sum_dim_intlist([1i64].as_slice(), true, a.kind())) / n;
    (u, du)
}

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
        Self {
            opt: ParamAdamW::new(config, &named),
            params,
            rho: rho.set_requires_grad(true),
            rho_opt,
            settings: RefSettings::default(),
        }
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
        let n = tasks.len() as f64;
        tasks.iter().map(|t| Self::task_loss(params, rho, t)).reduce(|a, b| a + b).expect("at least one task") / n
    }

    /// One task's downstream loss at `params`.
    fn task_loss(params: &[Tensor], rho: &Tensor, t: &DownstreamBatch) -> Tensor {
        let img = Self::encode_image(params, &t.image);
        let txt = Self::encode_text(params, t.captions.as_ref().unwrap_or(&t.prompts));
        super::loss::downstream_task_loss(&img, &txt, &t.labels, t.captions.is_some(), rho)
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
        // (ii)–(iv) θ′ (one, or one per task), ∇L_down there, v = (∂θ′/∂g) ⊙ ∇_θ′ L_down
        let rho_learned = self.settings.rho_learned;
        let down = downstream_direction(
            &self.params,
            &grads,
            &self.opt,
            inner,
            lr,
            self.settings.multitask,
            tasks.len(),
            |next| {
                let (lo, hi) = LOGIT_SCALE_RANGE;
                next[2] = next[2].clamp(lo, hi);
            },
            |next, range| {
                let leaves: Vec<Tensor> = next.iter().map(|p| p.detach().set_requires_grad(true)).collect();
                let rho = self.rho.detach().set_requires_grad(rho_learned);
                let losses: Vec<Tensor> = tasks[range].iter().map(|t| Self::task_loss(&leaves, &rho, t)).collect();
                let values = losses.iter().map(|l| l.double_value(&[])).collect();
                let n = losses.len() as f64;
                let down = losses.into_iter().reduce(|a, b| a + b).expect("at least one task") / n;
                // the reference logit scale is not an input of L_down: only the projections and ρ are differentiated
                let mut inputs = vec![&leaves[0], &leaves[1]];
                if rho_learned {
                    inputs.push(&rho);
                }
                let mut dg = Tensor::run_backward(&[&down], &inputs, false, false);
                let d_rho = if rho_learned { dg.pop().expect("rho gradient") } else { rho.zeros_like() };
                dg.push(leaves[2].zeros_like());
                Ok((values, dg, d_rho))
            },
        )?;
        let _ng = tch::no_grad_guard();
        let dir = &down.dir;
        // (v) JVP of the embeddings along v
        let (u0, du) =
            normalize_jvp(&up_image.matmul(&self.params[0].transpose(0, 1)), &up_image.matmul(&dir[0].transpose(0, 1)));
        let (v0, dv) =
            normalize_jvp(&up_text.matmul(&self.params[1].transpose(0, 1)), &up_text.matmul(&dir[1].transpose(0, 1)));
        let pieces = Pieces { up_loss, grad_norm, grads, down, overflow: false };
        Ok(Lookahead::close(&u0, &du, &v0, &dv, &tau.detach(), &w, pieces))
    }

    /// Commits a lookahead: θ ← θ', the reference moments, and one Adam step of ρ at `lr`.
    pub fn apply(&mut self, look: Lookahead, lr: f64) {
        ReferenceState::apply(self, look, lr)
    }
}

impl ReferenceState for EmbeddingReference {
    fn parts(&self) -> (&[Tensor], &Tensor, &ParamAdamW, &ParamAdamW) {
        (&self.params, &self.rho, &self.opt, &self.rho_opt)
    }
    fn parts_mut(&mut self) -> (&mut [Tensor], &mut Tensor, &mut ParamAdamW, &mut ParamAdamW) {
        (&mut self.params, &mut self.rho, &mut self.opt, &mut self.rho_opt)
    }
    fn param_names(&self) -> Vec<String> {
        ["w_img", "w_txt", "logit_scale"].map(String::from).to_vec()
    }
    fn settings(&self) -> RefSettings {
        self.settings
    }
    fn settings_mut(&mut self) -> &mut RefSettings {
        &mut self.settings
    }
    fn logit_scale_index(&self) -> usize {
        2
    }
}
