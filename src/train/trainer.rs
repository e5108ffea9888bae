//! The FLYT / M-FLYT training loop in `embedding` reference mode (notes §2.5–2.6, §3).

use tch::{Kind, Tensor};

use super::adamw::AdamW;
use super::embedding::{DownstreamBatch, EmbeddingReference};
use super::lookahead::{Inner, Lookahead, ReferenceState};
use super::models::{GluHead, Mixer};
use super::optim::{ParamAdamW, cosine_lr};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// A scoring model trained by FLYT: scores from per-example features.
pub trait ScoringModel {
    /// Scores of `N` examples from their `N × F` features.
    fn forward(&self, features: &Tensor) -> Tensor;
    /// The trainable parameters with their names (for weight decay and checkpoints).
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
    /// State that is saved with the model but not trained (the mixer's z-scoring statistics).
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
}

impl ScoringModel for GluHead {
    /// Features are [u; t], the frozen normalised image and text embeddings side by side (`N × 2·dim`).
    fn forward(&self, features: &Tensor) -> Tensor {
        let d = features.size()[1] / 2;
        self.score(&features.narrow(1, 0, d), &features.narrow(1, d, d))
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters()
    }
}

impl ScoringModel for Mixer {
    /// Features are the K per-method scores (`N × K`).
    fn forward(&self, features: &Tensor) -> Tensor {
        self.score(features)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters()
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.buffers()
    }
}

/// The upstream pool in embedding mode: frozen image and text embeddings (`P × in`) for the reference model,
/// and the scoring model's features (`P × F`).
#[derive(Debug)]
pub struct UpstreamPool {
    /// Frozen image embeddings.
    pub image: Tensor,
    /// Frozen text embeddings.
    pub text: Tensor,
    /// Scoring features.
    pub features: Tensor,
}

/// A downstream task: frozen image embeddings with labels, and frozen prompt embeddings `C × T × in` (class ×
/// template); each step draws a batch of images and one random template per class.
#[derive(Debug)]
pub struct DownstreamTask {
    /// `M × in`.
    pub image: Tensor,
    /// `M` int64 labels in `0..C`.
    pub labels: Tensor,
    /// `C × T × in`.
    pub prompts: Tensor,
    /// `M × in` caption embeddings for the downstream CLIP loss (notes §2.4 (b)) instead of the classifier.
    pub captions: Option<Tensor>,
}

impl DownstreamTask {
    /// Reads a task `.npz` as `flyt downstream` writes it: `image` (M × d), `labels` (M integers in `0..C`),
    /// `prompts` (C × T × d), optionally `captions` (M × d); every embedding is normalised. `dim` is the pool's
    /// embedding dimension; anything else is an error naming the file and the array.
    pub fn from_npz(path: &std::path::Path, dim: usize, device: tch::Device) -> Result<Self> {
        let arrays = crate::read_npz(path)?;
        let bad = |reason: String| Error::format(path, "array", reason);
        let get = |k: &str| arrays.get(k).ok_or_else(|| bad(format!("no array {k:?} (need image, labels, prompts)")));
        let img = get("image")?;
        let [m, d] = img.shape[..] else { return Err(bad("image must be M × d".into())) };
        let prompts = get("prompts")?;
        let [c, t, d2] = prompts.shape[..] else { return Err(bad("prompts must be C × T × d".into())) };
        if d != dim || d2 != dim {
            return Err(bad(format!("{d}-d images / {d2}-d prompts, the pool's embeddings are {dim}-d")));
        }
        let labels: Vec<i64> = match &get("labels")?.data {
            crate::NpyData::I64(v) => v.clone(),
            crate::NpyData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            crate::NpyData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return Err(bad("labels must be integers".into())),
        };
        if labels.len() != m {
            return Err(bad(format!("{m} images but {} labels", labels.len())));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0 || **l >= c as i64) {
            return Err(bad(format!("label {l} of row {i} is not a class in 0..{c}")));
        }
        let f = |a: &crate::NpyArray, k: &str| a.to_f32().ok_or_else(|| bad(format!("{k} is not a float array")));
        let matrix =
            |data: Vec<f32>, rows: usize| Tensor::from_slice(&data).view([rows as i64, d as i64]).to_device(device);
        let l2 = crate::clip::l2_normalize;
        Ok(DownstreamTask {
            image: l2(&matrix(f(img, "image")?, m)),
            labels: Tensor::from_slice(&labels).to_device(device),
            prompts: l2(&Tensor::from_slice(&f(prompts, "prompts")?).view([c as i64, t as i64, d as i64]))
                .to_device(device),
            captions: match arrays.get("captions") {
                None => None,
                Some(cap) => {
                    if cap.shape != [m, d] {
                        return Err(bad(format!("captions must be M × d like image, shape is {:?}", cap.shape)));
                    }
                    Some(l2(&matrix(f(cap, "captions")?, m)))
                }
            },
        })
    }
}

/// Training settings (defaults: notes §2.6, except the step count).
#[derive(Clone, Debug)]
pub struct FlytConfig {
    /// Iterations.
    pub steps: usize,
    /// Upstream batch size (sampled with replacement).
    pub batch: usize,
    /// Downstream batch size per task.
    pub down_batch: usize,
    /// Reference learning rate (5e-5) and scoring learning rate (1e-3).
    pub ref_lr: f64,
    /// Scoring learning rate.
    pub score_lr: f64,
    /// Linear warmup steps before the cosine decay (100).
    pub warmup: usize,
    /// AdamW β, ε, weight decay for both models (lr is scheduled).
    pub adam: AdamW,
    /// The inner step differentiated through.
    pub inner: Inner,
    /// Seed for batch sampling and templates.
    pub seed: u64,
}

impl Default for FlytConfig {
    fn default() -> Self {
        Self {
            steps: 5000,
            batch: 4096,
            down_batch: 3072,
            ref_lr: 5e-5,
            score_lr: 1e-3,
            warmup: 100,
            adam: AdamW::default(),
            inner: Inner::AdamW,
            seed: 0,
        }
    }
}

/// One step's record.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// Step index (0-based).
    pub step: usize,
    /// Weighted upstream loss at θ.
    pub up_loss: f64,
    /// Downstream loss at θ'.
    pub down_loss: f64,
    /// ‖∇_θ L_w‖.
    pub ref_grad_norm: f64,
    /// ‖∇_φ J‖.
    pub score_grad_norm: f64,
    /// Learning rates used.
    pub ref_lr: f64,
    /// Scoring learning rate used.
    pub score_lr: f64,
}

fn sample_rows(rng: &mut SplitMix64, n: i64, k: usize, device: tch::Device) -> Tensor {
    Tensor::from_slice(&draw(rng, n as usize, k)).to_device(device)
}

/// Checks what both training loops need before the first step: a non-empty pool, at least one task, each with
/// images and at least one class × template prompt, and batch sizes of at least 1.
pub(crate) fn check_inputs(pool_rows: usize, task_shapes: &[(usize, Vec<i64>)], config: &FlytConfig) -> Result<()> {
    if pool_rows == 0 || task_shapes.is_empty() || task_shapes.iter().any(|(m, _)| *m == 0) {
        return Err(Error::Config("FLYT needs a non-empty pool and non-empty downstream tasks".into()));
    }
    if let Some((_, p)) = task_shapes.iter().find(|(_, p)| p.len() < 2 || p[0] < 1 || p[1] < 1) {
        return Err(Error::Config(format!(
            "a downstream task needs prompts of at least 1 class × 1 template, got {p:?}"
        )));
    }
    if config.batch == 0 || config.down_batch == 0 {
        return Err(Error::Config("the upstream and downstream batch sizes must be at least 1".into()));
    }
    Ok(())
}

/// The step's random generator: a function of (seed, step) only, so resumed runs draw the same batches.
pub(crate) fn step_rng(seed: u64, step: usize) -> SplitMix64 {
    SplitMix64::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `k` row indices in `0..n`, with replacement.
pub(crate) fn draw(rng: &mut SplitMix64, n: usize, k: usize) -> Vec<i64> {
    (0..k).map(|_| rng.below(n as u64) as i64).collect()
}

/// The end of a step, shared by both reference modes: the scoring model's step on J(φ) = Σ_k softmax(s)_k G_k
/// (G constant) and the reference's commit — both skipped, with a warning, when a loss or ‖∇_φ J‖ is not
/// finite — then the step count. `s` are the scores (with their graph to the head's `params`).
pub(crate) fn finish_step<R: ReferenceState>(
    state: &mut FlytState<R>,
    params: &mut [Tensor],
    s: &Tensor,
    look: Lookahead,
    config: &FlytConfig,
    ref_lr: f64,
) -> StepLog {
    let step = state.step;
    let score_lr = cosine_lr(config.score_lr, step, config.warmup, config.steps);
    let surrogate = (s.softmax(0, s.kind()) * look.g_w.detach()).sum(s.kind());
    let grads = Tensor::run_backward(&[&surrogate], params, false, false);
    let score_grad_norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    let log = StepLog {
        step,
        up_loss: look.up_loss,
        down_loss: look.down_loss,
        ref_grad_norm: look.grad_norm,
        score_grad_norm,
        ref_lr,
        score_lr,
    };
    if log.up_loss.is_finite() && log.down_loss.is_finite() && score_grad_norm.is_finite() {
        state.score_opt.step(params, &grads, score_lr);
        state.reference.apply(look, ref_lr);
    } else {
        tracing::warn!(step, "non-finite loss or gradient: step skipped");
    }
    state.step += 1;
    log
}

/// The state a FLYT run carries from step to step (and a checkpoint saves): the reference model with its
/// optimisers, the scoring model's optimiser, and the next step.
#[derive(Debug)]
pub struct FlytState<R = EmbeddingReference> {
    /// The reference model, its AdamW and ρ.
    pub reference: R,
    /// AdamW over the scoring model's parameters.
    pub score_opt: ParamAdamW,
    /// The next step to run (0 for a new run).
    pub step: usize,
}

/// Trains `model` with FLYT's lookahead loop from `state.step` to `config.steps`, calling `on_step` after each
/// step; `on_step` returns whether to go on (false pauses: call again to continue, e.g. after a checkpoint).
/// Batches depend only on (seed, step), so a resumed run draws what an uninterrupted one would.
pub fn train_flyt(
    model: &(impl ScoringModel + ?Sized),
    state: &mut FlytState,
    pool: &UpstreamPool,
    tasks: &[DownstreamTask],
    config: &FlytConfig,
    mut on_step: impl FnMut(&StepLog) -> Result<bool>,
) -> Result<()> {
    let p = pool.image.size()[0];
    let shapes: Vec<(usize, Vec<i64>)> = tasks.iter().map(|t| (t.image.size()[0] as usize, t.prompts.size())).collect();
    check_inputs(p as usize, &shapes, config)?;
    let device = pool.image.device();
    let mut params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    while state.step < config.steps {
        let step = state.step;
        let mut rng = step_rng(config.seed, step);
        let idx = sample_rows(&mut rng, p, config.batch, device);
        let (img, txt, feat) =
            (pool.image.index_select(0, &idx), pool.text.index_select(0, &idx), pool.features.index_select(0, &idx));
        let batches: Vec<DownstreamBatch> = tasks
            .iter()
            .map(|t| {
                let m = t.image.size()[0];
                let di = sample_rows(&mut rng, m, config.down_batch, device);
                let (c, nt) = (t.prompts.size()[0], t.prompts.size()[1]);
                let tmpl: Vec<i64> = (0..c).map(|_| rng.below(nt as u64) as i64).collect();
                let rows = Tensor::arange(c, (Kind::Int64, device));
                let prompts = t.prompts.index(&[Some(rows), Some(Tensor::from_slice(&tmpl).to_device(device))]);
                DownstreamBatch {
                    image: t.image.index_select(0, &di),
                    labels: t.labels.index_select(0, &di),
                    prompts,
                    captions: t.captions.as_ref().map(|c| c.index_select(0, &di)),
                }
            })
            .collect();
        let ref_lr = cosine_lr(config.ref_lr, step, config.warmup, config.steps);
        let s = model.forward(&feat);
        let look = state.reference.lookahead(&s, &img, &txt, &batches, config.inner, ref_lr)?;
        let log = finish_step(state, &mut params, &s, look, config, ref_lr);
        if !on_step(&log)? {
            break;
        }
    }
    Ok(())
}
