//! What both reference modes share: the inner step the lookahead differentiates through, the lookahead's result
//! and its closing step (G and ∂L_down/∂s from the logits' derivative), and the reference's state as a
//! checkpoint and a commit see it.

use tch::Tensor;

use super::adamw::adamw_jacobian;
use super::mixed::weight_gradient;
use super::optim::ParamAdamW;
use crate::Result;

/// The inner (reference) step the lookahead differentiates through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inner {
    /// θ' = θ − η g (for tests: its Jacobian is −η).
    Sgd,
    /// θ' = AdamW(θ, g) with the reference optimiser's moments (the paper's).
    AdamW,
}

/// How a lookahead combines several downstream tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Multitask {
    /// One θ′ for every task and the mean of their losses (flyt's default).
    #[default]
    Mean,
    /// As the official code runs it: a θ′ₖ per task from the same g, the AdamW moments updated once per task
    /// (with the same g) and one step counter shared with ρ's update; v and ∂L/∂ρ are the tasks' means and the
    /// last task's θ′ and moments are committed. With one task it differs from [`Multitask::Mean`] only in the
    /// step counter.
    Official,
}

/// How a reference model commits its lookaheads, and how it combines tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefSettings {
    /// How several downstream tasks combine.
    pub multitask: Multitask,
    /// Whether θ ← θ′ (the official `--update_reference_model`; frozen, only the optimiser's moments and step
    /// counter move, as in the official code).
    pub update: bool,
    /// Whether the downstream logit scale ρ is learned (else it stays fixed: 0, a scale of 1, without a
    /// downstream logit scale).
    pub rho_learned: bool,
}

impl Default for RefSettings {
    fn default() -> Self {
        RefSettings { multitask: Multitask::Mean, update: true, rho_learned: true }
    }
}

/// The official `amp` path's dynamic loss scaler (its `DifferentiableGradScaler`, updated as torch's
/// `_amp_update_scale_`): losses are multiplied by `scale` before a backward pass and the gradients divided by
/// it after; an update after an overflow (an inf or NaN among the unscaled gradients) halves the scale and
/// resets the count, and 2000 clean updates in a row double it. A power-of-two scale changes no bit of a
/// gradient that does not overflow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    /// The current scale (the official `--scaler_scale`, 1024 in its `amp` runs).
    pub scale: f64,
    /// Clean updates since the last change.
    pub growth_tracker: i64,
}

impl LossScaler {
    /// Clean updates before the scale doubles.
    pub const GROWTH_INTERVAL: i64 = 2000;

    /// A scaler starting at `scale`.
    pub fn new(scale: f64) -> Self {
        LossScaler { scale, growth_tracker: 0 }
    }

    /// One update: after an overflow ×0.5, after the 2000th clean update in a row ×2 (if that stays finite).
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= 0.5;
            self.growth_tracker = 0;
            return;
        }
        self.growth_tracker += 1;
        if self.growth_tracker == Self::GROWTH_INTERVAL {
            if (self.scale * 2.0).is_finite() {
                self.scale *= 2.0;
            }
            self.growth_tracker = 0;
        }
    }
}

/// Gradients of a loss that was multiplied by `scale`, divided back, and whether any is inf or NaN (checked
/// only when scaling: `scale` is `None` without a scaler).
pub(crate) fn unscale(grads: Vec<Tensor>, scale: Option<f64>) -> (Vec<Tensor>, bool) {
    match scale {
        None => (grads, false),
        Some(sc) => {
            let _g = tch::no_grad_guard();
            let out: Vec<Tensor> = grads.iter().map(|g| g / sc).collect();
            let inf = out.iter().any(|g| g.isfinite().all().int64_value(&[]) == 0);
            (out, inf)
        }
    }
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
    /// g = ∇_θ L_w(θ), per reference parameter.
    pub grads: Vec<Tensor>,
    /// v = (∂θ′/∂g) ⊙ ∇_θ′ L_down, per reference parameter (0 for the reference logit scale).
    pub dir: Vec<Tensor>,
    /// Each task's downstream loss (at its θ′).
    pub task_losses: Vec<f64>,
    /// With [`Multitask::Official`]: the step counter ρ's update continues from (shared with θ′'s).
    pub(crate) shared_t: Option<i64>,
    /// With a loss scaler: a scaled gradient overflowed, and the step is skipped (as the official `amp` path
    /// skips it).
    pub overflow: bool,
}

/// What a lookahead has computed before its last step (everything [`Lookahead`] holds but G).
pub(crate) struct Pieces {
    pub(crate) up_loss: f64,
    pub(crate) grad_norm: f64,
    pub(crate) grads: Vec<Tensor>,
    pub(crate) down: Downstream,
    pub(crate) overflow: bool,
}

/// The downstream half of a lookahead: θ′ (with the new moments and counter), v, ∂L/∂ρ and the losses.
pub(crate) struct Downstream {
    pub(crate) next: (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, i64),
    pub(crate) dir: Vec<Tensor>,
    pub(crate) d_rho: Tensor,
    pub(crate) task_losses: Vec<f64>,
    pub(crate) shared_t: Option<i64>,
}

/// ∇L_down at θ′ for some tasks: (each task's loss, the gradient of their mean per reference parameter — zeros
/// where L_down does not depend on it, the reference logit scale — and ∂/∂ρ).
pub(crate) type DownGrad = (Vec<f64>, Vec<Tensor>, Tensor);

/// The downstream half, for either task combination: θ′ = inner(θ, g), clamped by `clamp`, ∇L_down at θ′ by
/// `grad_at(θ′, tasks)`, and v = (∂θ′/∂g) ⊙ ∇L_down. [`Multitask::Mean`]: one θ′ for the `n_tasks`;
/// [`Multitask::Official`]: a θ′ₖ per task, the moments and the counter chained from task to task, v and ∂L/∂ρ
/// averaged, the last θ′ kept.
#[allow(clippy::too_many_arguments)]
pub(crate) fn downstream_direction(
    params: &[Tensor],
    grads: &[Tensor],
    opt: &ParamAdamW,
    inner: Inner,
    lr: f64,
    multitask: Multitask,
    n_tasks: usize,
    clamp: impl Fn(&mut [Tensor]),
    mut grad_at: impl FnMut(&[Tensor], std::ops::Range<usize>) -> Result<DownGrad>,
) -> Result<Downstream> {
    let (m0, v0, t0) = opt.state();
    match multitask {
        Multitask::Mean => {
            let (mut next, jac, ms, vs, t) = inner_step_from(params, grads, opt, &m0, &v0, t0, inner, lr);
            clamp(&mut next);
            let (task_losses, dg, d_rho) = grad_at(&next, 0..n_tasks)?;
            let _ng = tch::no_grad_guard();
            let dir = jac.iter().zip(&dg).map(|(j, d)| j * d).collect();
            Ok(Downstream { next: (next, ms, vs, t), dir, d_rho, task_losses, shared_t: None })
        }
        Multitask::Official => {
            let (mut m, mut v, mut t) = (m0, v0, t0);
            let mut sum_dir: Option<Vec<Tensor>> = None;
            let mut sum_rho: Option<Tensor> = None;
            let mut task_losses = Vec::with_capacity(n_tasks);
            let mut last = Vec::new();
            for k in 0..n_tasks {
                let (mut next, jac, ms, vs, tk) = inner_step_from(params, grads, opt, &m, &v, t, inner, lr);
                clamp(&mut next);
                let (losses, dg, d_rho) = grad_at(&next, k..k + 1)?;
                let _ng = tch::no_grad_guard();
                task_losses.extend(losses);
                let dir: Vec<Tensor> = jac.iter().zip(&dg).map(|(j, d)| j * d).collect();
                sum_dir = Some(match sum_dir {
                    None => dir,
                    Some(acc) => acc.iter().zip(&dir).map(|(a, d)| a + d).collect(),
                });
                sum_rho = Some(match sum_rho {
                    None => d_rho,
                    Some(acc) => acc + d_rho,
                });
                (m, v, t) = (ms, vs, tk);
                last = next;
            }
            let k = n_tasks as f64;
            let dir = sum_dir.unwrap_or_default().iter().map(|d| d / k).collect();
            let d_rho =
                sum_rho.map(|r| r / k).unwrap_or_else(|| Tensor::zeros([], (params[0].kind(), params[0].device())));
            Ok(Downstream { next: (last, m, v, t), dir, d_rho, task_losses, shared_t: Some(t) })
        }
    }
}

impl Lookahead {
    /// The last step of a lookahead in either reference mode (notes §2.5 vi–vii), under no-grad: the logits at θ,
    /// ℓ = τ U Vᵀ, their derivative along v, δℓ = τ (U' Vᵀ + U V'ᵀ), and from them G and ∂L_down/∂s for the
    /// weights `w`. `u`, `v` are the normalised upstream embeddings at θ, `du`, `dv` their JVPs along v.
    pub(crate) fn close(u: &Tensor, du: &Tensor, v: &Tensor, dv: &Tensor, tau: &Tensor, w: &Tensor, p: Pieces) -> Self {
        let l0 = u.matmul(&v.transpose(0, 1)) * tau;
        let dl = (du.matmul(&v.transpose(0, 1)) + u.matmul(&dv.transpose(0, 1))) * tau;
        let (g_w, g_s) = weight_and_score_gradients(&l0, &dl, w);
        let d = p.down;
        let down_loss = d.task_losses.iter().sum::<f64>() / d.task_losses.len().max(1) as f64;
        Lookahead {
            g_w,
            g_s,
            up_loss: p.up_loss,
            down_loss,
            next: d.next,
            d_rho: d.d_rho,
            grad_norm: p.grad_norm,
            grads: p.grads,
            dir: d.dir,
            task_losses: d.task_losses,
            shared_t: d.shared_t,
            overflow: p.overflow,
        }
    }

    /// A lookahead cut short by an overflow of the scaled upstream gradient: nothing to commit (the step is
    /// skipped), zeros in place of what was not computed.
    pub(crate) fn overflowed(
        params: &[Tensor],
        opt: &ParamAdamW,
        grads: Vec<Tensor>,
        s: &Tensor,
        up_loss: f64,
    ) -> Self {
        let _g = tch::no_grad_guard();
        let (m, v, t) = opt.state();
        let zeros: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect();
        Lookahead {
            g_w: s.zeros_like(),
            g_s: s.zeros_like(),
            up_loss,
            down_loss: f64::NAN,
            next: (params.iter().map(|p| p.detach().copy()).collect(), m, v, t),
            d_rho: Tensor::zeros([], (s.kind(), s.device())),
            grad_norm: f64::NAN,
            grads,
            dir: zeros,
            task_losses: Vec::new(),
            shared_t: None,
            overflow: true,
        }
    }
}

/// The inner step for every parameter: (θ', ∂θ'/∂g, m, v, t) — shared by both reference modes.
pub(crate) type InnerStep = (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, Vec<Tensor>, i64);

/// θ' = inner(θ, g) per parameter with its elementwise Jacobian, from moments `m`, `v` at step count `t` (the
/// optimiser's, or chained from an earlier task's step); the optimiser gives the hyper-parameters and is not
/// changed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn inner_step_from(
    params: &[Tensor],
    grads: &[Tensor],
    opt: &ParamAdamW,
    m: &[Tensor],
    v: &[Tensor],
    t: i64,
    inner: Inner,
    lr: f64,
) -> InnerStep {
    let _ng = tch::no_grad_guard();
    let t = t + 1;
    let (mut next, mut jac, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        let (m0, v0) = (&m[i], &v[i]);
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

/// What a checkpoint, a trace and a commit need of a reference model: its parameters by name, ρ, both
/// optimisers, and its settings.
pub trait ReferenceState {
    /// (parameters, ρ, AdamW over the parameters, Adam over ρ).
    fn parts(&self) -> (&[Tensor], &Tensor, &ParamAdamW, &ParamAdamW);
    /// The same, mutable (to load a checkpoint).
    fn parts_mut(&mut self) -> (&mut [Tensor], &mut Tensor, &mut ParamAdamW, &mut ParamAdamW);
    /// The parameters' names, in [`ReferenceState::parts`]' order.
    fn param_names(&self) -> Vec<String>;
    /// How it commits and combines tasks.
    fn settings(&self) -> RefSettings;
    /// The same, mutable.
    fn settings_mut(&mut self) -> &mut RefSettings;
    /// Where the reference's own logit scale is among the parameters.
    fn logit_scale_index(&self) -> usize;
    /// Sets the reference's logit scale (log τ; clamped to [`LOGIT_SCALE_RANGE`]).
    fn set_logit_scale(&mut self, log_tau: f64) {
        let i = self.logit_scale_index();
        let (lo, hi) = LOGIT_SCALE_RANGE;
        let _g = tch::no_grad_guard();
        let _ = self.parts_mut().0[i].fill_(log_tau.clamp(lo, hi));
    }
    /// The loss scaler, for a reference that runs under `amp` (None: no scaling).
    fn scaler(&self) -> Option<LossScaler> {
        None
    }
    /// Sets the loss scaler (from a checkpoint); a reference without `amp` ignores it.
    fn set_scaler(&mut self, _scaler: Option<LossScaler>) {}
    /// The downstream logit scale: learned from log-scale `start`, or (None) none — a fixed scale of 1.
    fn set_downstream_logit_scale(&mut self, start: Option<f64>) {
        self.settings_mut().rho_learned = start.is_some();
        let _g = tch::no_grad_guard();
        let _ = self.parts_mut().1.fill_(start.unwrap_or(0.0));
    }
    /// Commits a lookahead as the settings say: θ ← θ′ (unless frozen), the moments and step count, and one
    /// Adam step of ρ at `lr` (when learned and not frozen; with [`Multitask::Official`] on the counter θ′'s step
    /// left, which ρ's step then advances for both, as the official code's one optimiser does).
    fn apply(&mut self, look: Lookahead, lr: f64) {
        let settings = self.settings();
        let (next, m, v, t) = look.next;
        let (params, rho, opt, rho_opt) = self.parts_mut();
        let _g = tch::no_grad_guard();
        if settings.update {
            for (p, n) in params.iter_mut().zip(&next) {
                p.copy_(n);
            }
        }
        opt.set_state(m, v, t);
        if !settings.rho_learned {
            return;
        }
        if let Some(shared) = look.shared_t {
            rho_opt.t = shared;
        }
        let new = rho_opt.step_values(&[rho.shallow_clone()], &[look.d_rho], lr);
        if settings.update {
            rho.copy_(&new[0]);
        }
        if look.shared_t.is_some() {
            opt.t = rho_opt.t;
        }
    }
}
