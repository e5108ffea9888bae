//! Training a CLIP from scratch on an image-text multiset (what a curated subset is for), and zero-shot
//! classification with class-name prompts: the two halves of "train on the subset, measure downstream".

use tch::{Device, Kind, Tensor, nn};

use flyt::clip::preprocess::to_pixels;
use flyt::clip::{Clip, ClipConfig, l2_normalize};
use flyt::rng::SplitMix64;
use flyt::train::{AdamW, LOGIT_SCALE_RANGE, ParamAdamW, clip_loss, cosine_lr};
use flyt::{Error, Result};

/// Hyper-parameters of [`pretrain_clip`].
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainConfig {
    /// Optimiser steps (the budget: `steps × batch` samples seen, whatever the subset's size).
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate (AdamW, warmup then cosine decay).
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Decoupled weight decay (matrices only, open_clip's rule).
    pub weight_decay: f64,
    /// Seed of the initialisation and of the batch order.
    pub seed: u64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self { steps: 500, batch: 256, lr: 1e-3, warmup: 50, weight_decay: 0.1, seed: 0 }
    }
}

/// Preprocessed examples: images as `crop × crop × 3` bytes (HWC) and caption token ids (`N × L`, int64).
#[derive(Debug)]
pub struct ImageTextStore {
    /// Preprocessed images.
    pub images: Vec<Vec<u8>>,
    /// Caption token ids, one row per image.
    pub ids: Tensor,
    /// The image side.
    pub crop: usize,
}

impl ImageTextStore {
    /// Checks that the parts agree.
    pub fn check(&self) -> Result<()> {
        let n = self.images.len() as i64;
        if self.ids.dim() != 2 || self.ids.size()[0] != n {
            return Err(Error::Config(format!("{} images but token ids of shape {:?}", n, self.ids.size())));
        }
        if let Some(bad) = self.images.iter().position(|i| i.len() != self.crop * self.crop * 3) {
            return Err(Error::Config(format!("image {bad} is not {0}×{0}×3 bytes", self.crop)));
        }
        Ok(())
    }

    /// Pixels (`B × 3 × crop × crop`, normalised) of the examples at `rows`.
    pub fn pixels(&self, rows: &[usize]) -> Tensor {
        let imgs: Vec<Vec<u8>> = rows.iter().map(|&r| self.images[r].clone()).collect();
        to_pixels(&imgs, self.crop)
    }

    /// Token ids of the examples at `rows`.
    pub fn token_ids(&self, rows: &[usize]) -> Tensor {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        self.ids.index_select(0, &Tensor::from_slice(&idx))
    }
}

/// Batches drawn from a multiset of example indices: each pass over it is a fresh seeded shuffle, and a batch
/// that runs past the end of a pass continues into the next. A subset smaller than the budget is repeated; a
/// multiset as large as the budget (SCS's) is seen exactly once.
#[derive(Debug)]
pub struct EpochOrder {
    items: Vec<usize>,
    pos: usize,
    rng: SplitMix64,
    /// Completed passes.
    pub epochs: usize,
}

impl EpochOrder {
    /// An order over `items` (repeats allowed) with `seed`.
    pub fn new(items: &[usize], seed: u64) -> Self {
        let mut o = Self { items: items.to_vec(), pos: 0, rng: SplitMix64::new(seed), epochs: 0 };
        o.rng.shuffle(&mut o.items);
        o
    }

    /// The next `n` indices.
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if self.items.is_empty() {
            return out;
        }
        while out.len() < n {
            if self.pos == self.items.len() {
                self.pos = 0;
                self.epochs += 1;
                self.rng.shuffle(&mut self.items);
            }
            out.push(self.items[self.pos]);
            self.pos += 1;
        }
        out
    }
}

/// A CLIP trained by [`pretrain_clip`].
pub struct Pretrained {
    /// The weights.
    pub vs: nn::VarStore,
    /// The model.
    pub model: Clip,
    /// The training loss at every step.
    pub losses: Vec<f64>,
    /// Passes over the multiset.
    pub epochs: usize,
}

impl std::fmt::Debug for Pretrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pretrained").field("steps", &self.losses.len()).field("epochs", &self.epochs).finish()
    }
}

/// Trains a freshly initialised CLIP of `config` with the standard contrastive loss on the examples `multiset`
/// (indices into `store`, repeats meaning repeated exposure) for `cfg.steps` steps. The same inputs and seed
/// give the same model on the same device and thread count. `on_step(step, loss)` is called after each step.
pub fn pretrain_clip(
    config: &ClipConfig,
    store: &ImageTextStore,
    multiset: &[usize],
    cfg: &PretrainConfig,
    device: Device,
    mut on_step: impl FnMut(usize, f64),
) -> Result<Pretrained> {
    store.check()?;
    if multiset.is_empty() {
        return Err(Error::Config("cannot train a CLIP on an empty subset".into()));
    }
    if let Some(&bad) = multiset.iter().find(|&&i| i >= store.images.len()) {
        return Err(Error::Config(format!("example {bad} is outside the store ({} examples)", store.images.len())));
    }
    if cfg.batch < 2 {
        return Err(Error::Config("the contrastive loss needs a batch of at least 2".into()));
    }
    // libtorch's generator is global: seeding and initialising under one lock keeps the initial weights a
    // function of the seed alone when several trainings run at once (threads of one process).
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let (vs, model) = {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = Clip::new(&vs.root(), config)?;
        (vs, model)
    };
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let ls = named
        .iter()
        .position(|(n, _)| n == "logit_scale")
        .ok_or_else(|| Error::Config("the CLIP model has no logit_scale".into()))?;
    let mut params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let adam = AdamW { lr: cfg.lr, weight_decay: cfg.weight_decay, ..AdamW::default() };
    let mut opt = ParamAdamW::new(adam, &named);
    let mut order = EpochOrder::new(multiset, cfg.seed ^ 0x005e_ed0f_0de7);
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let rows = order.next_batch(cfg.batch);
        let pixels = store.pixels(&rows).to_device(device);
        let ids = store.token_ids(&rows).to_device(device);
        let u = l2_normalize(&model.image_features(&pixels));
        let v = l2_normalize(&model.text_features(&ids));
        let loss = clip_loss(&(u.matmul(&v.transpose(0, 1)) * params[ls].exp()));
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::Config(format!("the training loss diverged at step {step} ({value})")));
        }
        let grads = Tensor::run_backward(&[&loss], &params, false, false);
        opt.step(&mut params, &grads, cosine_lr(cfg.lr, step, cfg.warmup, cfg.steps));
        let (lo, hi) = LOGIT_SCALE_RANGE;
        tch::no_grad(|| {
            let _ = params[ls].clamp_(lo.min(0.0), hi);
        });
        losses.push(value);
        on_step(step, value);
    }
    Ok(Pretrained { vs, model, losses, epochs: order.epochs })
}

/// Zero-shot classification results.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroShot {
    /// Top-1 accuracy over all examples.
    pub accuracy: f64,
    /// Accuracy per class (NaN for a class without examples).
    pub per_class: Vec<f64>,
    /// The predicted class of every example.
    pub predictions: Vec<i64>,
}

/// Classifier weights: per class, the normalised mean of the normalised text embeddings of its prompts
/// (`prompts`: `C × T × L` token ids), as CLIP's zero-shot evaluation does.
pub fn class_weights(model: &Clip, prompts: &Tensor, device: Device) -> Tensor {
    let s = prompts.size();
    let (c, t) = (s[0], s[1]);
    tch::no_grad(|| {
        let flat = prompts.view([c * t, -1]).to_device(device);
        let e = l2_normalize(&model.text_features(&flat).to_kind(Kind::Float)).view([c, t, -1]);
        l2_normalize(&e.mean_dim(Some([1i64].as_slice()), false, Kind::Float))
    })
}

/// Zero-shot top-1 classification of `store`'s images by the class prompts (`C × T × L` token ids); `labels`
/// in `0..C`, one per image. Runs in batches of `batch`.
pub fn zero_shot(
    model: &Clip,
    images: &[Vec<u8>],
    crop: usize,
    labels: &[i64],
    prompts: &Tensor,
    device: Device,
    batch: usize,
) -> Result<ZeroShot> {
    if images.len() != labels.len() {
        return Err(Error::Config(format!("{} images but {} labels", images.len(), labels.len())));
    }
    let c = prompts.size()[0];
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= c) {
        return Err(Error::Config(format!("label {bad} is outside 0..{c}")));
    }
    let w = class_weights(model, prompts, device);
    let mut predictions = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let px = to_pixels(chunk, crop).to_device(device);
        let pred = tch::no_grad(|| {
            let u = l2_normalize(&model.image_features(&px).to_kind(Kind::Float));
            u.matmul(&w.transpose(0, 1)).argmax(-1, false).to_device(Device::Cpu)
        });
        predictions.extend(Vec::<i64>::try_from(&pred).map_err(|e| Error::Config(e.to_string()))?);
    }
    let mut hit = vec![0usize; c as usize];
    let mut all = vec![0usize; c as usize];
    for (&p, &l) in predictions.iter().zip(labels) {
        all[l as usize] += 1;
        hit[l as usize] += usize::from(p == l);
    }
    let correct: usize = hit.iter().sum();
    Ok(ZeroShot {
        accuracy: if labels.is_empty() { f64::NAN } else { correct as f64 / labels.len() as f64 },
        per_class: hit.iter().zip(&all).map(|(&h, &a)| if a == 0 { f64::NAN } else { h as f64 / a as f64 }).collect(),
        predictions,
    })
}
