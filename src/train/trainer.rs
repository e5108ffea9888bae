//! The FLYT / M-FLYT training loop in `embedding` reference mode (notes §2.5–2.6, §3).

use tch::{Device, Kind, Tensor};

use super::adamw::AdamW;
use super::embedding::{DownstreamBatch, EmbeddingReference};
use super::lookahead::{Inner, Lookahead, ReferenceState};
use super::models::{GluHead, Mixer};
use super::optim::{ParamAdamW, cosine_lr};
use std::sync::Arc;

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

/// What the lookahead loop needs of the upstream pool: its size, and each step's rows — normalised image and
/// text embeddings and the scoring features, on the pool's device.
pub trait UpstreamRows {
    /// Rows in the pool.
    fn rows(&self) -> usize;
    /// Where the rows go.
    fn device(&self) -> Device;
    /// The rows `idx`: (image, text, features).
    fn gather(&self, idx: &[i64]) -> Result<(Tensor, Tensor, Tensor)>;
}

impl UpstreamRows for UpstreamPool {
    fn rows(&self) -> usize {
        self.image.size()[0] as usize
    }
    fn device(&self) -> Device {
        self.image.device()
    }
    fn gather(&self, idx: &[i64]) -> Result<(Tensor, Tensor, Tensor)> {
        let i = Tensor::from_slice(idx).to_device(self.device());
        Ok((self.image.index_select(0, &i), self.text.index_select(0, &i), self.features.index_select(0, &i)))
    }
}

/// The upstream pool with its embeddings left on disk ([`crate::PoolOnDisk`]): each step reads its rows in
/// place and normalises them as [`UpstreamPool`]'s are normalised, so memory does not grow with the pool and
/// the steps are those of the in-memory pool. The FLYT head's features are `[image, text]`; M-FLYT's (a few
/// score columns per row) are held in memory.
#[derive(Debug)]
pub struct StreamedPool {
    /// The pool's index.
    pub pool: crate::PoolOnDisk,
    /// M-FLYT's features (`P × K`), or `None` for the FLYT head's `[image, text]`.
    pub features: Option<Tensor>,
    /// The embeddings' dtype once read (f32, or f64 with `--dtype f64`).
    pub kind: Kind,
    /// Where the rows go.
    pub device: Device,
}

impl UpstreamRows for StreamedPool {
    fn rows(&self) -> usize {
        self.pool.len()
    }
    fn device(&self) -> Device {
        self.device
    }
    fn gather(&self, idx: &[i64]) -> Result<(Tensor, Tensor, Tensor)> {
        let (img, txt) = self.pool.gather(idx)?;
        let d = self.pool.dim as i64;
        let m = |v: &[f32]| {
            crate::clip::l2_normalize(&Tensor::from_slice(v).view([idx.len() as i64, d]).to_device(self.device))
                .to_kind(self.kind)
        };
        let (img, txt) = (m(&img), m(&txt));
        let feat = match &self.features {
            Some(f) => f.index_select(0, &Tensor::from_slice(idx).to_device(self.device)),
            None => Tensor::cat(&[&img, &txt], 1),
        };
        Ok((img, txt, feat))
    }
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
    /// Zero-shot top-1 of the frozen embeddings themselves (the reference before any step): each image's nearest
    /// class, a class being its normalised mean prompt embedding, as CLIP's zero-shot classifier averages its
    /// templates. FLYT learns from how a step on the pool changes the reference's loss on the task; on a task the
    /// reference cannot do at all (near chance) that signal is about confidence, not about the task (README: the
    /// evaluation's ablations).
    pub fn zero_shot_top1(&self) -> f64 {
        let _g = tch::no_grad_guard();
        let classes = crate::clip::l2_normalize(&self.prompts.mean_dim([1i64].as_slice(), false, self.prompts.kind()));
        let pred = self.image.matmul(&classes.transpose(0, 1)).argmax(1, false);
        pred.eq_tensor(&self.labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.prompts.size()[0] as usize
    }

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
    /// Explicit batches for every step instead of the seeded draws (to feed the same data to another
    /// implementation, or to replay a trace).
    pub batches: Option<Arc<BatchPlan>>,
    /// Steps whose every intermediate to write (see [`TraceSpec`]).
    pub trace: Option<Arc<TraceSpec>>,
    /// Full mode: random resized crops of the upstream and downstream images, as open_clip's training transform
    /// (the official default: scale (0.9, 1.0)); `None`: the preprocessed centre crops.
    pub augment: Option<Augment>,
}

/// open_clip's training augmentation, `RandomResizedCrop(size, scale, ratio)` with bicubic resizing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// The crop's area fraction range (official: (0.9, 1.0)).
    pub scale: (f64, f64),
    /// The crop's aspect ratio range (torchvision's default: (3/4, 4/3)).
    pub ratio: (f64, f64),
}

impl Default for Augment {
    fn default() -> Self {
        Augment { scale: (0.9, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }
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
            batches: None,
            trace: None,
            augment: None,
        }
    }
}

/// One downstream task's batch of a step: its rows, and the template chosen for each class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskBatch {
    /// Row indices into the task's images (with replacement).
    pub rows: Vec<i64>,
    /// Per class, the index of its template this step.
    pub templates: Vec<i64>,
}

/// A step's batches: upstream rows (with replacement) and each task's [`TaskBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepBatches {
    /// Row indices into the upstream pool.
    pub upstream: Vec<i64>,
    /// One per downstream task, in order.
    pub tasks: Vec<TaskBatch>,
}

/// A task's shape, as the batches need it: (images, classes, templates).
pub type TaskShape = (usize, usize, usize);

impl StepBatches {
    /// The seeded draw of step `step`, a function of (seed, step) only: `batch` upstream rows, then per task
    /// `down_batch` rows and one template per class.
    pub fn draw(
        seed: u64,
        step: usize,
        pool_rows: usize,
        tasks: &[TaskShape],
        batch: usize,
        down_batch: usize,
    ) -> Self {
        let mut rng = step_rng(seed, step);
        let upstream = draw(&mut rng, pool_rows, batch);
        let tasks = tasks
            .iter()
            .map(|&(m, c, nt)| {
                let rows = draw(&mut rng, m, down_batch);
                let templates = (0..c).map(|_| rng.below(nt as u64) as i64).collect();
                TaskBatch { rows, templates }
            })
            .collect();
        StepBatches { upstream, tasks }
    }

    /// An error unless every index is in range for the pool and the tasks.
    pub fn check(&self, step: usize, pool_rows: usize, tasks: &[TaskShape]) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("the batches of step {step}: {what}")));
        if self.upstream.is_empty() || self.upstream.iter().any(|&i| i < 0 || i as usize >= pool_rows) {
            return bad(format!("upstream rows must be in 0..{pool_rows} (and some)"));
        }
        if self.tasks.len() != tasks.len() {
            return bad(format!("{} tasks, the run has {}", self.tasks.len(), tasks.len()));
        }
        for (k, (b, &(m, c, nt))) in self.tasks.iter().zip(tasks).enumerate() {
            if b.rows.is_empty() || b.rows.iter().any(|&i| i < 0 || i as usize >= m) {
                return bad(format!("task {k}: rows must be in 0..{m} (and some)"));
            }
            if b.templates.len() != c || b.templates.iter().any(|&t| t < 0 || t as usize >= nt) {
                return bad(format!("task {k}: one template in 0..{nt} per class ({c} classes)"));
            }
        }
        Ok(())
    }

    /// Step `step`'s batches: the plan's (checked) if the config has one, else the seeded draw.
    pub(crate) fn for_step(config: &FlytConfig, step: usize, pool_rows: usize, tasks: &[TaskShape]) -> Result<Self> {
        match &config.batches {
            None => Ok(Self::draw(config.seed, step, pool_rows, tasks, config.batch, config.down_batch)),
            Some(plan) => {
                let b = plan.steps.get(step).cloned().ok_or_else(|| {
                    Error::Config(format!("the batch plan has {} steps; step {step} is not in it", plan.steps.len()))
                })?;
                b.check(step, pool_rows, tasks)?;
                Ok(b)
            }
        }
    }

    fn tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![(format!("{prefix}upstream"), Tensor::from_slice(&self.upstream))];
        for (k, t) in self.tasks.iter().enumerate() {
            out.push((format!("{prefix}task{k}.rows"), Tensor::from_slice(&t.rows)));
            out.push((format!("{prefix}task{k}.templates"), Tensor::from_slice(&t.templates)));
        }
        out
    }
}

/// Explicit batches, step by step, as a safetensors file of int64 tensors `step{n}.upstream`,
/// `step{n}.task{k}.rows` and `step{n}.task{k}.templates` (what `--batches` reads and a trace writes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchPlan {
    /// Step 0, 1, ...
    pub steps: Vec<StepBatches>,
}

impl BatchPlan {
    /// Reads a plan, or (a directory) a trace's steps 0, 1, ... (their `batch.*` arrays); a missing step, task or
    /// array, or a non-integer one, is an error naming it.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        if path.is_dir() {
            let mut steps = Vec::new();
            loop {
                let file = path.join(format!("step{:06}.safetensors", steps.len()));
                if !file.exists() {
                    break;
                }
                let one = Self::read_prefixed(&file, |_| "batch.".to_string())?;
                steps.extend(one.steps.into_iter().take(1));
            }
            if steps.is_empty() {
                return Err(Error::format(path, "step000000.safetensors", "no traced steps from step 0"));
            }
            return Ok(BatchPlan { steps });
        }
        Self::read_prefixed(path, |n| format!("step{n}."))
    }

    /// A plan whose step `n`'s arrays are named `prefix(n)` + `upstream`, `task{k}.rows`, `task{k}.templates`
    /// (read until a step is missing; a trace file has one step, named `batch.`).
    fn read_prefixed(path: &std::path::Path, prefix: impl Fn(usize) -> String) -> Result<Self> {
        crate::safetensors_header(path)?;
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::format(path, "safetensors", crate::torch_message(&e)))?
            .into_iter()
            .collect();
        let ints = |name: &str| -> Result<Option<Vec<i64>>> {
            match tensors.get(name) {
                None => Ok(None),
                Some(t) if t.kind() == Kind::Int64 && t.dim() == 1 => {
                    Ok(Some(Vec::<i64>::try_from(t).map_err(|e| Error::format(path, name, e.to_string()))?))
                }
                Some(_) => Err(Error::format(path, name, "must be a 1-D int64 array")),
            }
        };
        let mut steps = Vec::new();
        while let Some(upstream) = ints(&format!("{}upstream", prefix(steps.len())))? {
            let p = prefix(steps.len());
            let mut tasks = Vec::new();
            while let Some(rows) = ints(&format!("{p}task{}.rows", tasks.len()))? {
                let k = tasks.len();
                let templates = ints(&format!("{p}task{k}.templates"))?
                    .ok_or_else(|| Error::format(path, format!("{p}task{k}.templates"), "missing"))?;
                tasks.push(TaskBatch { rows, templates });
            }
            steps.push(StepBatches { upstream, tasks });
            if prefix(steps.len()) == p {
                break; // one step under a fixed prefix
            }
        }
        if steps.is_empty() {
            return Err(Error::format(path, format!("{}upstream", prefix(0)), "no steps in the batch plan"));
        }
        Ok(BatchPlan { steps })
    }

    /// Writes the plan.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let named: Vec<(String, Tensor)> =
            self.steps.iter().enumerate().flat_map(|(n, b)| b.tensors(&format!("step{n}."))).collect();
        Tensor::write_safetensors(&named, path).map_err(|e| Error::format(path, "safetensors", e.to_string()))
    }
}

/// Which steps to trace, and where: one `step{:06}.safetensors` per traced step in `dir`, holding `scores`,
/// `weights` (softmax(s)), `up_loss`, `g.<param>` (∇_θ L_w per reference tensor), `theta_next.<param>` (θ′),
/// `down_loss.<task>`, `v.<param>`, `d_rho` (∂L/∂ρ), `G` (∂L/∂w), `dJ_ds`, `head_grad.<param>` (∇_φ J), and
/// after the step `theta.<param>`, `m.<param>`, `adam_v.<param>`, `t`, `rho`, `phi.<param>`; and the step's
/// batches (`batch.upstream`, `batch.task<k>.rows`, `batch.task<k>.templates`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSpec {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// The steps traced.
    pub steps: std::collections::BTreeSet<usize>,
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

/// The reference's learning rate at `step`: open_clip's warmup + cosine schedule, or — with the reference
/// frozen — its base rate throughout (the official code steps its schedule only when the reference is updated).
pub(crate) fn reference_lr<R: ReferenceState>(reference: &R, config: &FlytConfig, step: usize) -> f64 {
    if reference.settings().update {
        cosine_lr(config.ref_lr, step, config.warmup, config.steps)
    } else {
        config.ref_lr
    }
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
/// finite — then the step count, and the step's trace when it is traced. `s` are the scores (with their graph
/// to the head's `params`, named `names`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_step<R: ReferenceState>(
    state: &mut FlytState<R>,
    names: &[String],
    params: &mut [Tensor],
    s: &Tensor,
    look: Lookahead,
    config: &FlytConfig,
    ref_lr: f64,
    batches: &StepBatches,
) -> Result<StepLog> {
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
    let trace = config.trace.as_ref().filter(|t| t.steps.contains(&step));
    let mut traced: Vec<(String, Tensor)> = Vec::new();
    if trace.is_some() {
        traced = trace_before(state, names, s, &look, &grads, batches);
    }
    if look.overflow {
        let scale = state.reference.scaler().map(|s| s.scale);
        tracing::warn!(step, ?scale, "the scaled gradients overflowed: step skipped, the loss scale lowered");
    } else if log.up_loss.is_finite() && log.down_loss.is_finite() && score_grad_norm.is_finite() {
        state.score_opt.step(params, &grads, score_lr);
        state.reference.apply(look, ref_lr);
    } else {
        tracing::warn!(step, "non-finite loss or gradient: step skipped");
    }
    state.step += 1;
    if let Some(t) = trace {
        trace_after(state, names, params, &mut traced);
        let path = t.dir.join(format!("step{step:06}.safetensors"));
        std::fs::create_dir_all(&t.dir).map_err(|e| Error::io(&t.dir, e))?;
        Tensor::write_safetensors(&traced, &path).map_err(|e| Error::format(&path, "safetensors", e.to_string()))?;
    }
    Ok(log)
}

/// What a trace holds from before the step's commit.
fn trace_before<R: ReferenceState>(
    state: &FlytState<R>,
    names: &[String],
    s: &Tensor,
    look: &Lookahead,
    head_grads: &[Tensor],
    batches: &StepBatches,
) -> Vec<(String, Tensor)> {
    let _g = tch::no_grad_guard();
    let refs = state.reference.param_names();
    let scalar = |v: f64| Tensor::from_slice(&[v]).squeeze();
    let mut out = vec![
        ("scores".to_string(), s.detach().copy()),
        ("weights".to_string(), s.detach().softmax(0, s.kind())),
        ("up_loss".to_string(), scalar(look.up_loss)),
        ("G".to_string(), look.g_w.copy()),
        ("dJ_ds".to_string(), look.g_s.copy()),
        ("d_rho".to_string(), look.d_rho.detach().copy()),
    ];
    for (n, g) in refs.iter().zip(&look.grads) {
        out.push((format!("g.{n}"), g.detach().copy()));
    }
    for (n, t) in refs.iter().zip(&look.next.0) {
        out.push((format!("theta_next.{n}"), t.detach().copy()));
    }
    for (n, v) in refs.iter().zip(&look.dir) {
        out.push((format!("v.{n}"), v.detach().copy()));
    }
    for (k, l) in look.task_losses.iter().enumerate() {
        out.push((format!("down_loss.{k}"), scalar(*l)));
    }
    for (n, g) in names.iter().zip(head_grads) {
        out.push((format!("head_grad.{n}"), g.detach().copy()));
    }
    out.extend(batches.tensors("batch."));
    out
}

/// What a trace holds from after the step: θ, the moments and counter, ρ and φ.
fn trace_after<R: ReferenceState>(
    state: &FlytState<R>,
    names: &[String],
    params: &[Tensor],
    out: &mut Vec<(String, Tensor)>,
) {
    let _g = tch::no_grad_guard();
    let refs = state.reference.param_names();
    let (theta, rho, opt, _) = state.reference.parts();
    let (m, v, t) = opt.state();
    for (i, n) in refs.iter().enumerate() {
        out.push((format!("theta.{n}"), theta[i].detach().copy()));
        out.push((format!("m.{n}"), m[i].copy()));
        out.push((format!("adam_v.{n}"), v[i].copy()));
    }
    out.push(("t".to_string(), Tensor::from_slice(&[t]).squeeze()));
    if let Some(sc) = state.reference.scaler() {
        out.push(("loss_scale".to_string(), Tensor::from_slice(&[sc.scale]).squeeze()));
    }
    out.push(("rho".to_string(), rho.detach().copy()));
    for (n, p) in names.iter().zip(params) {
        out.push((format!("phi.{n}"), p.detach().copy()));
    }
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
    pool: &(impl UpstreamRows + ?Sized),
    tasks: &[DownstreamTask],
    config: &FlytConfig,
    mut on_step: impl FnMut(&StepLog) -> Result<bool>,
) -> Result<()> {
    let p = pool.rows();
    let shapes: Vec<(usize, Vec<i64>)> = tasks.iter().map(|t| (t.image.size()[0] as usize, t.prompts.size())).collect();
    check_inputs(p, &shapes, config)?;
    let task_shapes: Vec<TaskShape> = shapes.iter().map(|(m, pr)| (*m, pr[0] as usize, pr[1] as usize)).collect();
    let device = pool.device();
    let rows = |idx: &[i64]| Tensor::from_slice(idx).to_device(device);
    let (names, mut params): (Vec<String>, Vec<Tensor>) = model.named_parameters().into_iter().unzip();
    while state.step < config.steps {
        let step = state.step;
        let b = StepBatches::for_step(config, step, p, &task_shapes)?;
        let (img, txt, feat) = pool.gather(&b.upstream)?;
        let batches: Vec<DownstreamBatch> = tasks
            .iter()
            .zip(&b.tasks)
            .map(|(t, tb)| {
                let di = rows(&tb.rows);
                let c = t.prompts.size()[0];
                let classes = Tensor::arange(c, (Kind::Int64, device));
                let prompts = t.prompts.index(&[Some(classes), Some(rows(&tb.templates))]);
                DownstreamBatch {
                    image: t.image.index_select(0, &di),
                    labels: t.labels.index_select(0, &di),
                    prompts,
                    captions: t.captions.as_ref().map(|c| c.index_select(0, &di)),
                }
            })
            .collect();
        let ref_lr = reference_lr(&state.reference, config, step);
        let s = model.forward(&feat);
        let look = state.reference.lookahead(&s, &img, &txt, &batches, config.inner, ref_lr)?;
        let log = finish_step(state, &names, &mut params, &s, look, config, ref_lr, &b)?;
        if !on_step(&log)? {
            break;
        }
    }
    Ok(())
}
