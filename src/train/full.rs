//! The `full` reference mode: the CLIP model itself (image and text towers) is the reference, trained on
//! images and captions as in the paper; the embedding JVP is taken by double backward through the towers.

use tch::{Device, Kind, Tensor, nn};

use super::adamw::AdamW;
use super::lookahead::{Inner, LOGIT_SCALE_RANGE, Lookahead, Pieces, ReferenceState, inner_step};
use super::loss::weighted_clip_loss;
use super::optim::ParamAdamW;
use crate::clip::{Clip, ClipConfig, l2_normalize};
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
    chunk: Option<i64>,
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
            chunk: None,
        })
    }

    /// Processes every batch in chunks of at most `rows` examples (gradient caching): the towers' activations
    /// for one chunk are alive at a time, so the upstream and downstream batches can be far larger than what fits
    /// at once, for about one extra forward pass per tower. The result is the same as unchunked. `None`: off.
    pub fn set_chunk(&mut self, rows: Option<usize>) {
        self.chunk = rows.filter(|&r| r > 0).map(|r| r as i64);
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

    fn downstream_loss(model: &Clip, rho: &Tensor, tasks: &[PixelTaskBatch]) -> Tensor {
        let mut total: Option<Tensor> = None;
        for t in tasks {
            let img = image_embed(model, &t.pixels);
            let txt = text_embed(model, t.captions.as_ref().unwrap_or(&t.prompts));
            let ce = super::loss::downstream_task_loss(&img, &txt, &t.labels, t.captions.is_some(), rho);
            total = Some(match total {
                None => ce,
                Some(x) => x + ce,
            });
        }
        total.expect("at least one task") / tasks.len() as f64
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
        // (i) g at θ, keeping the upstream graph for the JVP
        let u = l2_normalize(&self.model.image_features(pixels));
        let v = l2_normalize(&self.model.text_features(ids));
        let tau = self.params[self.logit_scale].exp();
        let logits = u.matmul(&v.transpose(0, 1)) * &tau;
        let up = weighted_clip_loss(&logits, &log_w);
        let up_loss = up.double_value(&[]);
        let grads = Tensor::run_backward(&[&up], &self.params, true, false);
        let grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        // (ii) θ' and the step's Jacobian
        let (mut next, jac, ms, vs, t) = inner_step(&self.params, &grads, &self.opt, inner, lr);
        let (lo, hi) = LOGIT_SCALE_RANGE;
        next[self.logit_scale] = next[self.logit_scale].clamp(lo, hi);
        // (iii) ∇ L_down at θ' on the shadow model
        tch::no_grad(|| {
            for (sp, n) in self.shadow_params.iter_mut().zip(&next) {
                sp.copy_(n);
            }
        });
        let rho = self.rho.detach().set_requires_grad(true);
        let down = Self::downstream_loss(&self.shadow, &rho, tasks);
        let down_loss = down.double_value(&[]);
        let mut inputs: Vec<&Tensor> =
            self.shadow_params.iter().enumerate().filter(|(i, _)| *i != self.logit_scale).map(|(_, p)| p).collect();
        inputs.push(&rho);
        let mut dg = Tensor::run_backward(&[&down], &inputs, false, false);
        let d_rho = dg.pop().expect("rho gradient");
        // (iv) v = (∂θ'/∂g) ⊙ ∇_{θ'} L_down; the reference logit scale's entry is dropped (notes §2.5)
        let mut dir: Vec<Tensor> = Vec::with_capacity(self.params.len());
        let mut it = dg.into_iter();
        for (i, j) in jac.iter().enumerate() {
            if i == self.logit_scale {
                dir.push(j.zeros_like());
            } else {
                dir.push(j * it.next().expect("one gradient per parameter"));
            }
        }
        // (v) JVP of (U, V) along v by double backward: J v = ∂/∂r ⟨Jᵀ r, v⟩
        let r_u = u.zeros_like().detach().set_requires_grad(true);
        let r_v = v.zeros_like().detach().set_requires_grad(true);
        let dot = (&u * &r_u).sum(u.kind()) + (&v * &r_v).sum(v.kind());
        let inputs: Vec<&Tensor> =
            self.params.iter().enumerate().filter(|(i, _)| *i != self.logit_scale).map(|(_, p)| p).collect();
        let vjp = Tensor::run_backward(&[&dot], &inputs, false, true);
        let dirs: Vec<&Tensor> =
            dir.iter().enumerate().filter(|(i, _)| *i != self.logit_scale).map(|(_, d)| d).collect();
        let mut inner_prod: Option<Tensor> = None;
        for (g, d) in vjp.iter().zip(dirs) {
            let term = (g * d).sum(g.kind());
            inner_prod = Some(match inner_prod {
                None => term,
                Some(x) => x + term,
            });
        }
        let jv = Tensor::run_backward(&[inner_prod.expect("parameters")], &[&r_u, &r_v], false, false);
        let _ng = tch::no_grad_guard();
        let (u, v, tau) = (u.detach(), v.detach(), tau.detach());
        let pieces = Pieces { up_loss, down_loss, grad_norm, next: (next, ms, vs, t), d_rho };
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
        // (i) g at θ
        let (u, v) = {
            let m = &self.model;
            (no_graph(pixels, chunk, |x| image_embed(m, x)), no_graph(ids, chunk, |x| text_embed(m, x)))
        };
        let ul = u.detach().set_requires_grad(true);
        let vl = v.detach().set_requires_grad(true);
        let tau_leaf = &self.params[ls];
        let up = weighted_clip_loss(&(ul.matmul(&vl.transpose(0, 1)) * tau_leaf.exp()), &log_w);
        let up_loss = up.double_value(&[]);
        let mut d = Tensor::run_backward(&[&up], &[&ul, &vl, tau_leaf], false, false);
        let d_tau = d.pop().expect("logit scale gradient");
        let (du_loss, dv_loss) = (&d[0], &d[1]);
        let ps = others(&self.params);
        let mut acc: Vec<Tensor> = ps.iter().map(|p| p.zeros_like()).collect();
        backprop_chunks(pixels, du_loss, chunk, |x| image_embed(&self.model, x), &ps, &mut acc);
        backprop_chunks(ids, dv_loss, chunk, |x| text_embed(&self.model, x), &ps, &mut acc);
        let mut grads = acc;
        grads.insert(ls, d_tau);
        let grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        // (ii) θ' and the step's Jacobian
        let (mut next, jac, ms, vs, t) = inner_step(&self.params, &grads, &self.opt, inner, lr);
        let (lo, hi) = LOGIT_SCALE_RANGE;
        next[ls] = next[ls].clamp(lo, hi);
        // (iii) ∇ L_down at θ' on the shadow model, through embedding leaves
        tch::no_grad(|| {
            for (sp, n) in self.shadow_params.iter_mut().zip(&next) {
                sp.copy_(n);
            }
        });
        let rho = self.rho.detach().set_requires_grad(true);
        let mut leaves = Vec::new();
        let mut total: Option<Tensor> = None;
        for task in tasks {
            let sh = &self.shadow;
            let img = no_graph(&task.pixels, chunk, |x| image_embed(sh, x)).set_requires_grad(true);
            let text_in = task.captions.as_ref().unwrap_or(&task.prompts);
            let txt = no_graph(text_in, chunk, |x| text_embed(sh, x)).set_requires_grad(true);
            let ce = super::loss::downstream_task_loss(&img, &txt, &task.labels, task.captions.is_some(), &rho);
            total = Some(match total {
                None => ce,
                Some(x) => x + ce,
            });
            leaves.push((img, txt));
        }
        let down = total.expect("at least one task") / tasks.len() as f64;
        let down_loss = down.double_value(&[]);
        let mut inputs: Vec<&Tensor> = leaves.iter().flat_map(|(a, b)| [a, b]).collect();
        inputs.push(&rho);
        let mut dl = Tensor::run_backward(&[&down], &inputs, false, false);
        let d_rho = dl.pop().expect("rho gradient");
        let sps = others(&self.shadow_params);
        let mut dg: Vec<Tensor> = sps.iter().map(|p| p.zeros_like()).collect();
        for (k, task) in tasks.iter().enumerate() {
            let text_in = task.captions.as_ref().unwrap_or(&task.prompts);
            backprop_chunks(&task.pixels, &dl[2 * k], chunk, |x| image_embed(&self.shadow, x), &sps, &mut dg);
            backprop_chunks(text_in, &dl[2 * k + 1], chunk, |x| text_embed(&self.shadow, x), &sps, &mut dg);
        }
        // (iv) v = (∂θ'/∂g) ⊙ ∇_{θ'} L_down, the reference logit scale's entry dropped
        let jac_others = others(&jac);
        let dir: Vec<Tensor> = jac_others.iter().zip(&dg).map(|(j, g)| j * g).collect();
        // (v) the JVP of (U, V) along v, chunk by chunk, by double backward
        let du = jvp_chunks(pixels, chunk, |x| image_embed(&self.model, x), &ps, &dir);
        let dv = jvp_chunks(ids, chunk, |x| text_embed(&self.model, x), &ps, &dir);
        let _ng = tch::no_grad_guard();
        let tau = self.params[ls].detach().exp();
        let pieces = Pieces { up_loss, down_loss, grad_norm, next: (next, ms, vs, t), d_rho };
        Ok(Lookahead::close(&u, &du, &v, &dv, &tau, &w, pieces))
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
                let u = l2_normalize(&self.model.image_features(pixels));
                let v = l2_normalize(&self.model.text_features(ids));
                let loss = super::loss::clip_loss(&(u.matmul(&v.transpose(0, 1)) * self.params[ls].exp()));
                (loss.double_value(&[]), Tensor::run_backward(&[&loss], &self.params, false, false))
            }
            Some(chunk) => {
                // gradient caching, as in the chunked lookahead
                let m = &self.model;
                let u = no_graph(pixels, chunk, |x| image_embed(m, x)).set_requires_grad(true);
                let v = no_graph(ids, chunk, |x| text_embed(m, x)).set_requires_grad(true);
                let loss = super::loss::clip_loss(&(u.matmul(&v.transpose(0, 1)) * self.params[ls].exp()));
                let mut d = Tensor::run_backward(&[&loss], &[&u, &v, &self.params[ls]], false, false);
                let d_tau = d.pop().expect("logit scale gradient");
                let ps: Vec<Tensor> =
                    self.params.iter().enumerate().filter(|(i, _)| *i != ls).map(|(_, p)| p.shallow_clone()).collect();
                let mut acc: Vec<Tensor> = ps.iter().map(|p| p.zeros_like()).collect();
                backprop_chunks(pixels, &d[0], chunk, |x| image_embed(m, x), &ps, &mut acc);
                backprop_chunks(ids, &d[1], chunk, |x| text_embed(m, x), &ps, &mut acc);
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
}

/// The upstream pool in full mode: preprocessed images (`crop × crop × 3` bytes each, decoded once), caption
/// token ids (`P × L`), and the scoring model's features (`P × F`, e.g. the frozen CLIP's [u; t]).
#[derive(Debug)]
pub struct FullPool {
    /// Preprocessed images, HWC bytes.
    pub images: Vec<Vec<u8>>,
    /// Caption token ids.
    pub ids: Tensor,
    /// Scoring features.
    pub features: Tensor,
}

/// A downstream task in full mode: preprocessed images with labels, prompt token ids `C × T × L` (class ×
/// template), and optionally caption token ids `M × L` for the downstream CLIP loss.
#[derive(Debug)]
pub struct FullTask {
    /// Preprocessed images, HWC bytes.
    pub images: Vec<Vec<u8>>,
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
    pool: &FullPool,
    tasks: &[FullTask],
    config: &super::FlytConfig,
    mut on_step: impl FnMut(&super::StepLog) -> Result<bool>,
) -> Result<()> {
    use super::trainer::{check_inputs, draw, finish_step, step_rng};
    let p = pool.images.len();
    let shapes: Vec<(usize, Vec<i64>)> = tasks.iter().map(|t| (t.images.len(), t.prompts.size())).collect();
    check_inputs(p, &shapes, config)?;
    let crop = state.reference.model.config().vision_config.image_size as usize;
    let device = state.reference.rho.device();
    let kind = state.reference.rho.kind();
    let pixels = |images: &[&Vec<u8>]| -> Tensor {
        let owned: Vec<Vec<u8>> = images.iter().map(|v| (*v).clone()).collect();
        crate::clip::preprocess::to_pixels(&owned, crop).to_device(device).to_kind(kind)
    };
    let rows =
        |t: &Tensor, idx: &[i64]| t.index_select(0, &Tensor::from_slice(idx).to_device(t.device())).to_device(device);
    let mut params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    while state.step < config.steps {
        let step = state.step;
        let mut rng = step_rng(config.seed, step);
        let idx = draw(&mut rng, p, config.batch);
        let px = pixels(&idx.iter().map(|&i| &pool.images[i as usize]).collect::<Vec<_>>());
        let (ids, feat) = (rows(&pool.ids, &idx), rows(&pool.features, &idx));
        let batches: Vec<PixelTaskBatch> = tasks
            .iter()
            .map(|t| {
                let di = draw(&mut rng, t.images.len(), config.down_batch);
                let (c, nt) = (t.prompts.size()[0], t.prompts.size()[1]);
                let tmpl: Vec<i64> = (0..c).map(|_| rng.below(nt as u64) as i64).collect();
                let prompts = t
                    .prompts
                    .index(&[
                        Some(Tensor::arange(c, (Kind::Int64, t.prompts.device()))),
                        Some(Tensor::from_slice(&tmpl)),
                    ])
                    .to_device(device);
                PixelTaskBatch {
                    pixels: pixels(&di.iter().map(|&i| &t.images[i as usize]).collect::<Vec<_>>()),
                    labels: Tensor::from_slice(&di.iter().map(|&i| t.labels[i as usize]).collect::<Vec<_>>())
                        .to_device(device),
                    prompts,
                    captions: t.captions.as_ref().map(|c| rows(c, &di)),
                }
            })
            .collect();
        let ref_lr = super::cosine_lr(config.ref_lr, step, config.warmup, config.steps);
        let s = model.forward(&feat);
        let look = state.reference.lookahead(&s, &px, &ids, &batches, config.inner, ref_lr)?;
        let log = finish_step(state, &mut params, &s, look, config, ref_lr);
        if !on_step(&log)? {
            break;
        }
    }
    Ok(())
}

fn image_embed(model: &Clip, x: &Tensor) -> Tensor {
    l2_normalize(&model.image_features(x))
}

fn text_embed(model: &Clip, x: &Tensor) -> Tensor {
    l2_normalize(&model.text_features(x))
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
