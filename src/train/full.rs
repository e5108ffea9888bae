//! The `full` reference mode: the CLIP model itself (image and text towers) is the reference, trained on
//! images and captions as in the paper; the embedding JVP is taken by double backward through the towers.

use tch::{Device, Kind, Tensor, nn};

use super::adamw::AdamW;
use super::full_pool::{FullRows, pixels_in_memory};
use super::lookahead::{
    Inner, LOGIT_SCALE_RANGE, Lookahead, LossScaler, Pieces, RefSettings, ReferenceState, downstream_direction, unscale,
};
use super::loss::weighted_clip_loss;
use super::optim::ParamAdamW;
use crate::clip::{Clip, ClipConfig, l2_normalize};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// A downstream task's batch in full mode: preprocessed images with labels, and one tokenised prompt per class.
#[derive(Debug)]
pub struct PixelTaskBatch {
    /// `M × 3 × H × W` preprocessed pixels.
    pub pixels: Tensor,
    /// `M` int64 labels.
    pub labels: Tensor,
    /// `C × L` prompt token ids (one template per class).
    pub prompts: Tensor,
    /// `M × L` caption token ids: when present, the CLIP loss of (image, caption) pairs at scale exp(ρ) replaces
    /// the prompt classifier (notes §2.4 (b)).
    pub captions: Option<Tensor>,
}

/// The reference CLIP (trainable, with AdamW and ρ) and a shadow copy used to evaluate the downstream loss at
/// θ' while the upstream graph at θ is still alive (the JVP needs it).
pub struct FullReference {
    vs: nn::VarStore,
    model: Clip,
    shadow_vs: nn::VarStore,
    shadow: Clip,
    names: Vec<String>,
    params: Vec<Tensor>,
    shadow_params: Vec<Tensor>,
    logit_scale: usize,
    /// The downstream logit scale ρ (initialised to ln(1/0.07)).
    pub rho: Tensor,
    /// AdamW over the reference's parameters (sorted by name).
    pub opt: ParamAdamW,
    /// Adam (no decay) over ρ.
    pub rho_opt: ParamAdamW,
    /// How it commits and combines tasks.
    pub settings: RefSettings,
    chunk: Option<i64>,
    amp: Option<LossScaler>,
}

impl std::fmt::Debug for FullReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullReference").field("parameters", &self.names.len()).finish()
    }
}

fn sorted_vars(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl FullReference {
    /// A reference from a CLIP configuration and weights (`None`: random), in `kind` on `device`.
    pub fn new(
        config: &ClipConfig,
        weights: Option<&std::path::Path>,
        adam: AdamW,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let model = Clip::new(&vs.root(), config)?;
        if let Some(w) = weights {
            vs.load(w).map_err(|e| Error::format(w, "weights", e.to_string()))?;
        }
        vs.set_kind(kind);
        let mut shadow_vs = nn::VarStore::new(device);
        let shadow = Clip::new(&shadow_vs.root(), config)?;
        shadow_vs.set_kind(kind);
        shadow_vs.copy(&vs).map_err(|e| Error::Config(format!("shadow model: {e}")))?;
        let vars = sorted_vars(&vs);
        let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
        let logit_scale = names
            .iter()
            .position(|n| n == "logit_scale")
            .ok_or_else(|| Error::Config("the CLIP model has no logit_scale".into()))?;
        let params: Vec<Tensor> = vars.into_iter().map(|(_, t)| t).collect();
        let shadow_params: Vec<Tensor> = sorted_vars(&shadow_vs).into_iter().map(|(_, t)| t).collect();
        let named: Vec<(String, Tensor)> =
            names.iter().cloned().zip(params.iter().map(|p| p.shallow_clone())).collect();
        let rho = Tensor::from_slice(&[(1.0f64 / 0.07).ln()]).to_kind(kind).to_device(device).squeeze();
        let rho_opt =
            ParamAdamW::new(AdamW { weight_decay: 0.0, ..adam }, &[("logit_scale_down".into(), rho.shallow_clone())]);
        Ok(Self {
            vs,
            model,
            shadow_vs,
            shadow,
            opt: ParamAdamW::new(adam, &named),
            names,
            params,
            shadow_params,
            logit_scale,
            rho: rho.set_requires_grad(true),
            rho_opt,
            settings: RefSettings::default(),
            chunk: None,
            amp: None,
        })
    }

    /// Processes every batch in chunks of at most `rows` examples (gradient caching): the towers' activations
    /// for one chunk are alive at a time, so the upstream and downstream batches can be far larger than what fits
    /// at once, for about one extra forward pass per tower. The result is the same as unchunked. `None`: off.
    pub fn set_chunk(&mut self, rows: Option<usize>) {
        self.chunk = rows.filter(|&r| r > 0).map(|r| r as i64);
    }

    /// The official `amp` path: the towers run under fp16 autocast on CUDA (their outputs cast to f32, so the
    /// losses and the lookahead's algebra stay f32), and every backward pass through them is of a loss multiplied
    /// by the scaler's scale, its gradients divided back and checked: an overflow skips the step and lowers the
    /// scale. The scaler is updated as the official one is: once per θ′ with the upstream gradient's check,
    /// once with the downstream gradients', once with the JVP's. Off CUDA autocast does nothing and only the
    /// scaling applies, which with a power-of-two scale changes no bit (tested). `None`: off (f32 or f64).
    pub fn set_amp(&mut self, scaler: Option<LossScaler>) {
        self.amp = scaler;
    }

    /// The reference model (at θ).
    pub fn model(&self) -> &Clip {
        &self.model
    }

    /// The var store holding θ (e.g. to save the reference).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Parameter names, sorted (the order of the optimiser state).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The exact one-step lookahead (notes §2.5) with the CLIP towers as the reference: upstream images
    /// (`N × 3 × H × W`) and caption token ids (`N × L`), scores `s`. The JVP of the normalised embeddings
    /// along v is taken by double backward through the upstream graph at θ. Nothing changes until
    /// [`FullReference::apply`].
    pub fn lookahead(
        &mut self,
        s: &Tensor,
        pixels: &Tensor,
        ids: &Tensor,
        tasks: &[PixelTaskBatch],
        inner: Inner,
        lr: f64,
    ) -> Result<Lookahead> {
        if tasks.is_empty() {
            return Err(Error::Config("FLYT needs at least one downstream task".into()));
        }
        if let Some(chunk) = self.chunk {
            return self.lookahead_chunked(s, pixels, ids, tasks, inner, lr, chunk);
        }
        let s = s.detach();
        let w = s.softmax(0, s.kind());
        let log_w = s.log_softmax(0, s.kind());
        let amp = self.amp.is_some();
        // (i) g at θ, keeping the upstream graph for the JVP
        let u = image_embed(&self.model, pixels, amp);
        let v = text_embed(&self.model, ids, amp);
        let tau = self.params[self.logit_scale].exp();
        let logits = u.matmul(&v.transpose(0, 1)) * &tau;
        let up = weighted_clip_loss(&logits, &log_w);
        let up_loss = up.double_value(&[]);
        let sc = scale_of(&self.amp);
        let (grads, inf) = unscale(Tensor::run_backward(&[&scaled(&up, sc)], &self.params, true, false), sc);
        let thetas = self.thetas(tasks.len());
        if inf {
            self.update_scaler(true, thetas);
            return Ok(Lookahead::overflowed(&self.params, &self.opt, grads, &s, up_loss));
        }
        let grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        // (ii)–(iv) θ′ (one, or one per task), ∇L_down there on the shadow model, v = (∂θ′/∂g) ⊙ ∇L_down; the
        // reference logit scale's entry is dropped (notes §2.5)
        let ls = self.logit_scale;
        let rho_learned = self.settings.rho_learned;
        let (shadow, shadow_params, rho0) = (&self.shadow, &mut self.shadow_params, &self.rho);
        let scaler = &mut self.amp;
        let mut down_inf = false;
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
                next[ls] = next[ls].clamp(lo, hi);
            },
            |next, range| {
                tch::no_grad(|| {
                    for (sp, n) in shadow_params.iter_mut().zip(next) {
                        sp.copy_(n);
                    }
                });
                let rho = rho0.detach().set_requires_grad(rho_learned);
                let losses: Vec<Tensor> = tasks[range].iter().map(|t| task_loss(shadow, &rho, t, amp)).collect();
                let values = losses.iter().map(|l| l.double_value(&[])).collect();
                let n = losses.len() as f64;
                let down = losses.into_iter().reduce(|a, b| a + b).expect("at least one task") / n;
                let mut inputs: Vec<&Tensor> =
                    shadow_params.iter().enumerate().filter(|(i, _)| *i != ls).map(|(_, p)| p).collect();
                if rho_learned {
                    inputs.push(&rho);
                }
                // the official loop updates its scaler with the upstream check as it computes each θ′
                if let Some(a) = scaler.as_mut() {
                    a.update(false);
                }
                let sc = scale_of(scaler);
                let (mut dg, inf) = unscale(Tensor::run_backward(&[&scaled(&down, sc)], &inputs, false, false), sc);
                down_inf |= inf;
                let d_rho = if rho_learned { dg.pop().expect("rho gradient") } else { rho.zeros_like() };
                dg.insert(ls, shadow_params[ls].zeros_like());
                Ok((values, dg, d_rho))
            },
        )?;
        self.update_scaler(down_inf, 1);
        let dir = &down.dir;
        // (v) JVP of (U, V) along v by double backward: J v = ∂/∂r ⟨Jᵀ r, v⟩ (along v × the loss scale, then
        // divided back)
        let sc = scale_of(&self.amp);
        let r_u = u.zeros_like().detach().set_requires_grad(true);
        let r_v = v.zeros_like().detach().set_requires_grad(true);
        let dot = (&u * &r_u).sum(u.kind()) + (&v * &r_v).sum(v.kind());
        let inputs: Vec<&Tensor> =
            self.params.iter().enumerate().filter(|(i, _)| *i != self.logit_scale).map(|(_, p)| p).collect();
        let vjp = Tensor::run_backward(&[&dot], &inputs, false, true);
        let dirs: Vec<&Tensor> = dir.iter().enumerate().filter(|(i, _)| *i != ls).map(|(_, d)| d).collect();
        let mut inner_prod: Option<Tensor> = None;
        for (g, d) in vjp.iter().zip(dirs) {
            let term = (g * scaled(d, sc)).sum(g.kind());
            inner_prod = Some(match inner_prod {
                None => term,
                Some(x) => x + term,
            });
        }
        let (jv, jvp_inf) =
            unscale(Tensor::run_backward(&[inner_prod.expect("parameters")], &[&r_u, &r_v], false, false), sc);
        self.update_scaler(jvp_inf, 1);
        let _ng = tch::no_grad_guard();
        let (u, v, tau) = (u.detach(), v.detach(), tau.detach());
        let pieces = Pieces { up_loss, grad_norm, grads, down, overflow: down_inf || jvp_inf };
        Ok(Lookahead::close(&u, &jv[0], &v, &jv[1], &tau, &w, pieces))
    }

    /// [`FullReference::lookahead`] in chunks (gradient caching): embeddings are computed chunk by chunk
    /// without a graph, the loss is differentiated with respect to the embeddings, and each chunk is
    /// re-forwarded to push its share of that gradient into the parameters; the JVP is taken chunk by chunk.
    #[allow(clippy::too_many_arguments)]
    fn lookahead_chunked(
        &mut self,
        s: &Tensor,
        pixels: &Tensor,
        ids: &Tensor,
        tasks: &[PixelTaskBatch],
        inner: Inner,
        lr: f64,
        chunk: i64,
    ) -> Result<Lookahead> {
        let ls = self.logit_scale;
        let s = s.detach();
        let w = s.softmax(0, s.kind());
        let log_w = s.log_softmax(0, s.kind());
        let others = |params: &[Tensor]| -> Vec<Tensor> {
            params.iter().enumerate().filter(|(i, _)| *i != ls).map(|(_, p)| p.shallow_clone()).collect()
        };
        let amp = self.amp.is_some();
        // (i) g at θ
        let (u, v) = {
            let m = &self.model;
            (no_graph(pixels, chunk, |x| image_embed(m, x, amp)), no_graph(ids, chunk, |x| text_embed(m, x, amp)))
        };
        let ul = u.detach().set_requires_grad(true);
        let vl = v.detach().set_requires_grad(true);
        let tau_leaf = &self.params[ls];
        let up = weighted_clip_loss(&(ul.matmul(&vl.transpose(0, 1)) * tau_leaf.exp()), &log_w);
        let up_loss = up.double_value(&[]);
        // the loss × the scale down to the embeddings, through the towers chunk by chunk, then divided back
        let sc = scale_of(&self.amp);
        let mut d = Tensor::run_backward(&[&scaled(&up, sc)], &[&ul, &vl, tau_leaf], false, false);
        let d_tau = d.pop().expect("logit scale gradient");
        let (du_loss, dv_loss) = (&d[0], &d[1]);
        let ps = others(&self.params);
        let mut acc: Vec<Tensor> = ps.iter().map(|p| p.zeros_like()).collect();
        backprop_chunks(pixels, du_loss, chunk, |x| image_embed(&self.model, x, amp), &ps, &mut acc);
        backprop_chunks(ids, dv_loss, chunk, |x| text_embed(&self.model, x, amp), &ps, &mut acc);
        acc.insert(ls, d_tau);
        let (grads, inf) = unscale(acc, sc);
        let thetas = self.thetas(tasks.len());
        if inf {
            self.update_scaler(true, thetas);
            return Ok(Lookahead::overflowed(&self.params, &self.opt, grads, &s, up_loss));
        }
        let grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        // (ii)–(iv) θ′ (one, or one per task), ∇L_down there on the shadow model through embedding leaves, and
        // v = (∂θ′/∂g) ⊙ ∇L_down, the reference logit scale's entry dropped
        let rho_learned = self.settings.rho_learned;
        let (shadow, shadow_params, rho0) = (&self.shadow, &mut self.shadow_params, &self.rho);
        let scaler = &mut self.amp;
        let mut down_inf = false;
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
                next[ls] = next[ls].clamp(lo, hi);
            },
            |next, range| {
                tch::no_grad(|| {
                    for (sp, n) in shadow_params.iter_mut().zip(next) {
                        sp.copy_(n);
                    }
                });
                if let Some(a) = scaler.as_mut() {
                    a.update(false);
                }
                let sc = scale_of(scaler);
                let tasks = &tasks[range];
                let rho = rho0.detach().set_requires_grad(rho_learned);
                let mut leaves = Vec::new();
                let mut losses = Vec::new();
                for task in tasks {
                    let img = no_graph(&task.pixels, chunk, |x| image_embed(shadow, x, amp)).set_requires_grad(true);
                    let text_in = task.captions.as_ref().unwrap_or(&task.prompts);
                    let txt = no_graph(text_in, chunk, |x| text_embed(shadow, x, amp)).set_requires_grad(true);
                    losses.push(super::loss::downstream_task_loss(
                        &img,
                        &txt,
                        &task.labels,
                        task.captions.is_some(),
                        &rho,
                    ));
                    leaves.push((img, txt));
                }
                let values = losses.iter().map(|l| l.double_value(&[])).collect();
                let n = losses.len() as f64;
                let down = losses.into_iter().reduce(|a, b| a + b).expect("at least one task") / n;
                let mut inputs: Vec<&Tensor> = leaves.iter().flat_map(|(a, b)| [a, b]).collect();
                if rho_learned {
                    inputs.push(&rho);
                }
                let mut dl = Tensor::run_backward(&[&scaled(&down, sc)], &inputs, false, false);
                let d_rho = if rho_learned { dl.pop().expect("rho gradient") } else { rho.zeros_like() };
                let sps = others(shadow_params);
                let mut dg: Vec<Tensor> = sps.iter().map(|p| p.zeros_like()).collect();
                for (k, task) in tasks.iter().enumerate() {
                    let text_in = task.captions.as_ref().unwrap_or(&task.prompts);
                    let (img, txt) = (&dl[2 * k], &dl[2 * k + 1]);
                    backprop_chunks(&task.pixels, img, chunk, |x| image_embed(shadow, x, amp), &sps, &mut dg);
                    backprop_chunks(text_in, txt, chunk, |x| text_embed(shadow, x, amp), &sps, &mut dg);
                }
                dg.push(d_rho);
                let (mut dg, inf) = unscale(dg, sc);
                down_inf |= inf;
                let d_rho = dg.pop().expect("rho gradient");
                dg.insert(ls, shadow_params[ls].zeros_like());
                Ok((values, dg, d_rho))
            },
        )?;
        self.update_scaler(down_inf, 1);
        // (v) the JVP of (U, V) along v, chunk by chunk, by double backward (along v × the loss scale, then
        // divided back)
        let sc = scale_of(&self.amp);
        let dir: Vec<Tensor> = others(&down.dir).iter().map(|d| scaled(d, sc)).collect();
        let du = jvp_chunks(pixels, chunk, |x| image_embed(&self.model, x, amp), &ps, &dir);
        let dv = jvp_chunks(ids, chunk, |x| text_embed(&self.model, x, amp), &ps, &dir);
        let (jv, jvp_inf) = unscale(vec![du, dv], sc);
        self.update_scaler(jvp_inf, 1);
        let (du, dv) = (&jv[0], &jv[1]);
        let _ng = tch::no_grad_guard();
        let tau = self.params[ls].detach().exp();
        let pieces = Pieces { up_loss, grad_norm, grads, down, overflow: down_inf || jvp_inf };
        Ok(Lookahead::close(&u, du, &v, dv, &tau, &w, pieces))
    }

    /// How many θ′ a lookahead computes: one, or one per task ([`super::Multitask::Official`]).
    fn thetas(&self, tasks: usize) -> usize {
        match self.settings.multitask {
            super::Multitask::Mean => 1,
            super::Multitask::Official => tasks,
        }
    }

    /// `n` updates of the loss scaler (if any) with the same check.
    fn update_scaler(&mut self, found_inf: bool, n: usize) {
        if let Some(a) = self.amp.as_mut() {
            for _ in 0..n {
                a.update(found_inf);
            }
        }
    }

    /// Commits a lookahead: θ ← θ', the moments, and one Adam step of ρ at `lr`.
    pub fn apply(&mut self, look: Lookahead, lr: f64) {
        ReferenceState::apply(self, look, lr)
    }

    /// One plain CLIP training step (standard loss, AdamW at `lr`): the baseline FLYT's cost is compared to.
    pub fn plain_step(&mut self, pixels: &Tensor, ids: &Tensor, lr: f64) -> f64 {
        let ls = self.logit_scale;
        let (value, grads) = match self.chunk {
            None => {
                let u = image_embed(&self.model, pixels, false);
                let v = text_embed(&self.model, ids, false);
                let loss = super::loss::clip_loss(&(u.matmul(&v.transpose(0, 1)) * self.params[ls].exp()));
                (loss.double_value(&[]), Tensor::run_backward(&[&loss], &self.params, false, false))
            }
            Some(chunk) => {
                // gradient caching, as in the chunked lookahead
                let m = &self.model;
                let u = no_graph(pixels, chunk, |x| image_embed(m, x, false)).set_requires_grad(true);
                let v = no_graph(ids, chunk, |x| text_embed(m, x, false)).set_requires_grad(true);
                let loss = super::loss::clip_loss(&(u.matmul(&v.transpose(0, 1)) * self.params[ls].exp()));
                let mut d = Tensor::run_backward(&[&loss], &[&u, &v, &self.params[ls]], false, false);
                let d_tau = d.pop().expect("logit scale gradient");
                let ps: Vec<Tensor> =
                    self.params.iter().enumerate().filter(|(i, _)| *i != ls).map(|(_, p)| p.shallow_clone()).collect();
                let mut acc: Vec<Tensor> = ps.iter().map(|p| p.zeros_like()).collect();
                backprop_chunks(pixels, &d[0], chunk, |x| image_embed(m, x, false), &ps, &mut acc);
                backprop_chunks(ids, &d[1], chunk, |x| text_embed(m, x, false), &ps, &mut acc);
                acc.insert(ls, d_tau);
                (loss.double_value(&[]), acc)
            }
        };
        let mut params: Vec<Tensor> = self.params.iter().map(|p| p.shallow_clone()).collect();
        self.opt.step(&mut params, &grads, lr);
        let (lo, hi) = LOGIT_SCALE_RANGE;
        tch::no_grad(|| {
            let _ = self.params[self.logit_scale].clamp_(lo, hi);
        });
        value
    }

    /// The shadow var store (for tests: it holds θ' after a lookahead).
    #[doc(hidden)]
    pub fn shadow_store(&self) -> &nn::VarStore {
        &self.shadow_vs
    }
}

impl ReferenceState for FullReference {
    fn parts(&self) -> (&[Tensor], &Tensor, &ParamAdamW, &ParamAdamW) {
        (&self.params, &self.rho, &self.opt, &self.rho_opt)
    }
    fn parts_mut(&mut self) -> (&mut [Tensor], &mut Tensor, &mut ParamAdamW, &mut ParamAdamW) {
        (&mut self.params, &mut self.rho, &mut self.opt, &mut self.rho_opt)
    }
    fn param_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn settings(&self) -> RefSettings {
        self.settings
    }
    fn settings_mut(&mut self) -> &mut RefSettings {
        &mut self.settings
    }
    fn logit_scale_index(&self) -> usize {
        self.logit_scale
    }
    fn scaler(&self) -> Option<LossScaler> {
        self.amp
    }
    fn set_scaler(&mut self, scaler: Option<LossScaler>) {
        if self.amp.is_some() {
            self.amp = scaler;
        }
    }
}

/// A downstream task in full mode: preprocessed images with labels, prompt token ids `C × T × L` (class ×
/// template), and optionally caption token ids `M × L` for the downstream CLIP loss.
#[derive(Debug)]
pub struct FullTask {
    /// Preprocessed images, HWC bytes.
    pub images: Vec<Vec<u8>>,
    /// The images as read (encoded), for augmentation (see [`FullPool::sources`]).
    pub sources: Option<Vec<Vec<u8>>>,
    /// Labels in `0..C`.
    pub labels: Vec<i64>,
    /// `C × T × L` prompt token ids.
    pub prompts: Tensor,
    /// `M × L` caption token ids.
    pub captions: Option<Tensor>,
}

/// [`super::train_flyt`] with the CLIP towers as the reference (the paper's setting): each step draws an
/// upstream batch and downstream batches (one template per class), turns the images into pixels, and runs
/// [`FullReference::lookahead`]. Batches depend only on (seed, step).
pub fn train_flyt_full(
    model: &(impl super::ScoringModel + ?Sized),
    state: &mut super::FlytState<FullReference>,
    pool: &(impl FullRows + ?Sized),
    tasks: &[FullTask],
    config: &super::FlytConfig,
    mut on_step: impl FnMut(&super::StepLog) -> Result<bool>,
) -> Result<()> {
    use super::trainer::{StepBatches, TaskShape, check_inputs, finish_step, reference_lr};
    let p = pool.rows();
    let shapes: Vec<(usize, Vec<i64>)> = tasks.iter().map(|t| (t.images.len(), t.prompts.size())).collect();
    check_inputs(p, &shapes, config)?;
    let task_shapes: Vec<TaskShape> = shapes.iter().map(|(m, pr)| (*m, pr[0] as usize, pr[1] as usize)).collect();
    let crop = state.reference.model.config().vision_config.image_size as usize;
    let device = state.reference.rho.device();
    let kind = state.reference.rho.kind();
    let augment = config.augment.as_ref();
    let to_pixels =
        |images: &[Vec<u8>]| crate::clip::preprocess::to_pixels(images, crop).to_device(device).to_kind(kind);
    let rows =
        |t: &Tensor, idx: &[i64]| t.index_select(0, &Tensor::from_slice(idx).to_device(t.device())).to_device(device);
    let (names, mut params): (Vec<String>, Vec<Tensor>) = model.named_parameters().into_iter().unzip();
    while state.step < config.steps {
        let step = state.step;
        let b = StepBatches::for_step(config, step, p, &task_shapes)?;
        // Each row's pixels: its preprocessed image, or with augmentation a random resized crop of the image as
        // read (the draws seeded by (seed, step), in batch order: the upstream rows, then each task's).
        let mut aug = SplitMix64::new(config.seed ^ 0xa06e_e17d ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let up = pool.batch(&b.upstream, augment, crop, &mut aug)?;
        if step + 1 < config.steps {
            // The next step's rows, read ahead while this one runs (a pool on disk).
            pool.ahead(&StepBatches::for_step(config, step + 1, p, &task_shapes)?.upstream, augment.is_some(), crop);
        }
        let px = to_pixels(&up.images);
        let (ids, feat) = (up.ids.to_device(device), up.features.to_device(device));
        let batches: Vec<PixelTaskBatch> = tasks
            .iter()
            .zip(&b.tasks)
            .map(|(t, tb)| {
                let c = t.prompts.size()[0];
                let prompts = t
                    .prompts
                    .index(&[
                        Some(Tensor::arange(c, (Kind::Int64, t.prompts.device()))),
                        Some(Tensor::from_slice(&tb.templates)),
                    ])
                    .to_device(device);
                PixelTaskBatch {
                    pixels: to_pixels(&pixels_in_memory(
                        &t.images,
                        t.sources.as_ref(),
                        &tb.rows,
                        augment,
                        crop,
                        &mut aug,
                    )),
                    labels: Tensor::from_slice(&tb.rows.iter().map(|&i| t.labels[i as usize]).collect::<Vec<_>>())
                        .to_device(device),
                    prompts,
                    captions: t.captions.as_ref().map(|c| rows(c, &tb.rows)),
                }
            })
            .collect();
        let ref_lr = reference_lr(&state.reference, config, step);
        let s = model.forward(&feat);
        let look = state.reference.lookahead(&s, &px, &ids, &batches, config.inner, ref_lr)?;
        let log = finish_step(state, &names, &mut params, &s, look, config, ref_lr, &b)?;
        if !on_step(&log)? {
            break;
        }
    }
    Ok(())
}

/// One task's downstream loss on `model`.
fn task_loss(model: &Clip, rho: &Tensor, t: &PixelTaskBatch, amp: bool) -> Tensor {
    let img = image_embed(model, &t.pixels, amp);
    let txt = text_embed(model, t.captions.as_ref().unwrap_or(&t.prompts), amp);
    super::loss::downstream_task_loss(&img, &txt, &t.labels, t.captions.is_some(), rho)
}

/// `f` (a tower's forward pass) under fp16 autocast with `amp` (on CUDA; elsewhere autocast does nothing), its
/// output cast to f32 so that what follows stays f32.
fn towers(amp: bool, f: impl FnOnce() -> Tensor) -> Tensor {
    if amp { tch::autocast(true, f).to_kind(Kind::Float) } else { f() }
}

fn image_embed(model: &Clip, x: &Tensor, amp: bool) -> Tensor {
    l2_normalize(&towers(amp, || model.image_features(x)))
}

fn text_embed(model: &Clip, x: &Tensor, amp: bool) -> Tensor {
    l2_normalize(&towers(amp, || model.text_features(x)))
}

/// The loss scale to multiply by, if scaling.
fn scale_of(scaler: &Option<LossScaler>) -> Option<f64> {
    scaler.map(|a| a.scale)
}

/// `x` × the scale (unchanged without one).
fn scaled(x: &Tensor, sc: Option<f64>) -> Tensor {
    match sc {
        Some(v) => x * v,
        None => x.shallow_clone(),
    }
}

/// f over the rows of `x` in chunks, without a graph.
fn no_graph(x: &Tensor, chunk: i64, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    tch::no_grad(|| Tensor::cat(&x.split(chunk, 0).iter().map(&f).collect::<Vec<_>>(), 0))
}

/// Adds Σ_chunks ∂⟨f(x_c), g_c⟩/∂p to `acc` for each parameter p of `ps` (one chunk's graph at a time;
/// parameters a chunk does not reach get nothing).
fn backprop_chunks(
    x: &Tensor,
    g: &Tensor,
    chunk: i64,
    f: impl Fn(&Tensor) -> Tensor,
    ps: &[Tensor],
    acc: &mut [Tensor],
) {
    for (xc, gc) in x.split(chunk, 0).iter().zip(g.split(chunk, 0).iter()) {
        let y = f(xc);
        let obj = (&y * gc).sum(y.kind());
        let grads = Tensor::run_backward(&[&obj], ps, false, false);
        let _ng = tch::no_grad_guard();
        for (a, gr) in acc.iter_mut().zip(grads) {
            if gr.defined() {
                let _ = a.g_add_(&gr);
            }
        }
    }
}

/// The JVP of f along the parameter direction `dir` (one tensor per parameter of `ps`), chunk by chunk:
/// J v = ∂/∂r ⟨Jᵀ r, v⟩ by double backward.
fn jvp_chunks(x: &Tensor, chunk: i64, f: impl Fn(&Tensor) -> Tensor, ps: &[Tensor], dir: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = x
        .split(chunk, 0)
        .iter()
        .map(|xc| {
            let y = f(xc);
            let r = y.zeros_like().detach().set_requires_grad(true);
            let vjp = Tensor::run_backward(&[(&y * &r).sum(y.kind())], ps, false, true);
            let mut ip: Option<Tensor> = None;
            for (g, d) in vjp.iter().zip(dir) {
                if g.defined() {
                    let term = (g * d).sum(g.kind());
                    ip = Some(match ip {
                        None => term,
                        Some(t) => t + term,
                    });
                }
            }
            match ip {
                Some(ip) => Tensor::run_backward(&[&ip], &[&r], false, false).remove(0),
                None => y.zeros_like().detach(),
            }
        })
        .collect();
    Tensor::cat(&parts, 0)
}
