//! AdamW over a set of tensors (decoupled weight decay on matrices only, as open_clip), and open_clip's
//! warmup + cosine learning-rate schedule.

use tch::Tensor;

use super::adamw::{AdamW, adamw_step};

/// open_clip's `cosine_lr`: base·(step+1)/warmup during warmup, then 0.5·(1 + cos(π·e/es))·base with
/// e = step − warmup, es = total − warmup (0-based steps).
///
/// ```
/// use flyt::train::cosine_lr;
/// assert_eq!(cosine_lr(1.0, 0, 100, 1000), 0.01);
/// assert_eq!(cosine_lr(1.0, 100, 100, 1000), 1.0);
/// assert!(cosine_lr(1.0, 999, 100, 1000) < 1e-4);
/// ```
pub fn cosine_lr(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = (total.saturating_sub(warmup)).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
}

/// AdamW state over named tensors; decay applies to tensors with two or more dimensions whose name has no
/// `bn`/`ln`/`bias`/`logit_scale` (open_clip's rule).
#[derive(Debug)]
pub struct ParamAdamW {
    /// Hyper-parameters (the learning rate is passed to each step).
    pub config: AdamW,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    /// Steps taken.
    pub t: i64,
}

/// Whether open_clip decays a parameter of this name and shape.
pub(crate) fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !["bn", "ln", "bias", "logit_scale"].iter().any(|k| name.contains(k))
}

impl ParamAdamW {
    /// State for `(name, tensor)` parameters.
    pub fn new(config: AdamW, params: &[(String, Tensor)]) -> Self {
        Self {
            config,
            m: params.iter().map(|(_, p)| p.zeros_like().detach()).collect(),
            v: params.iter().map(|(_, p)| p.zeros_like().detach()).collect(),
            decay: params.iter().map(|(n, p)| decays(n, p.dim())).collect(),
            t: 0,
        }
    }

    /// The moments (m, v) of parameter `i`.
    pub fn moments(&self, i: usize) -> (&Tensor, &Tensor) {
        (&self.m[i], &self.v[i])
    }

    /// Whether parameter `i` is decayed.
    pub fn decayed(&self, i: usize) -> bool {
        self.decay[i]
    }

    /// Hyper-parameters for parameter `i` at learning rate `lr`.
    pub fn config_for(&self, i: usize, lr: f64) -> AdamW {
        AdamW { lr, weight_decay: if self.decay[i] { self.config.weight_decay } else { 0.0 }, ..self.config }
    }

    /// The new values of every parameter after one step with gradients `grads` at `lr` (parameters are not
    /// changed; the moments and the step count are).
    pub fn step_values(&mut self, params: &[Tensor], grads: &[Tensor], lr: f64) -> Vec<Tensor> {
        let _g = tch::no_grad_guard();
        self.t += 1;
        let mut out = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let cfg = self.config_for(i, lr);
            let (theta, m, v) =
                adamw_step(&params[i].detach(), &grads[i].detach(), &self.m[i], &self.v[i], self.t, &cfg);
            self.m[i] = m;
            self.v[i] = v;
            out.push(theta);
        }
        out
    }

    /// One step applied in place to leaf parameters.
    pub fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], lr: f64) {
        let new = self.step_values(params, grads, lr);
        let _g = tch::no_grad_guard();
        for (p, n) in params.iter_mut().zip(new) {
            p.copy_(&n);
        }
    }

    /// Replaces the moments and step count (after a lookahead computed them).
    pub fn set_state(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, t: i64) {
        self.m = m;
        self.v = v;
        self.t = t;
    }

    /// The moments as named tensors, for checkpoints.
    pub fn state(&self) -> (Vec<Tensor>, Vec<Tensor>, i64) {
        (self.m.iter().map(|t| t.shallow_clone()).collect(), self.v.iter().map(|t| t.shallow_clone()).collect(), self.t)
    }
}
