//! Batched CLIP embedding of samples: a CPU worker pool decodes and preprocesses images, the calling thread
//! forms batches (a size cap and a latency cap) and runs both towers (bf16 on CUDA, f32 on CPU), returning
//! L2-normalised f32 embeddings in input order and the CLIP score of each pair.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::preprocess::{preprocess_digested, to_pixels};
use super::{Clip, ClipTokenizer, l2_normalize};
use crate::sample::{RejectReason, Rejected};
use crate::{Result, Sample};

/// How an [`Embedder`] runs.
#[derive(Clone, Debug)]
pub struct EmbedderConfig {
    /// Largest batch.
    pub batch_size: usize,
    /// A partial batch is run once no new image has arrived for this long.
    pub max_latency: Duration,
    /// Preprocessing threads (default: the machine's cores).
    pub workers: usize,
    /// Decode JPEGs at full size (bit-equal to `CLIPImageProcessor`) instead of DCT-downscaling large ones.
    pub exact_preprocessing: bool,
    /// Where the model runs.
    pub device: Device,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            batch_size: 256,
            max_latency: Duration::from_millis(50),
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            exact_preprocessing: false,
            device: Device::Cpu,
        }
    }
}

/// Embeddings of a run of samples, row i for the i-th accepted sample.
#[derive(Clone, Debug, Default)]
pub struct Embeddings {
    /// Embedding dimension.
    pub dim: usize,
    /// `rows × dim` image embeddings, L2-normalised.
    pub image: Vec<f32>,
    /// `rows × dim` text embeddings, L2-normalised.
    pub text: Vec<f32>,
    /// Cosine of each pair.
    pub clip_score: Vec<f32>,
    /// (uid, key) of each row.
    pub ids: Vec<(crate::Uid, String)>,
    /// Each row's caption and original image size (what the text and image-size methods read), aligned with
    /// `ids`; empty when not known.
    pub meta: Vec<crate::RowMeta>,
}

impl Embeddings {
    /// Appends another batch's rows (same dimension).
    pub fn append(&mut self, other: Embeddings) {
        if self.ids.is_empty() && self.dim == 0 {
            self.dim = other.dim;
        }
        self.image.extend(other.image);
        self.text.extend(other.text);
        self.clip_score.extend(other.clip_score);
        self.ids.extend(other.ids);
        self.meta.extend(other.meta);
    }

    /// The uids, in row order.
    pub fn uids(&self) -> Vec<crate::Uid> {
        self.ids.iter().map(|(u, _)| *u).collect()
    }
}

/// A decoded image: its preprocessed pixels and the SHA-256 of its bytes and of its decoded pixels (or why it
/// could not be decoded).
type Digested = std::result::Result<Decoded, String>;

/// Preprocessed pixels, the bytes' SHA-256 and the decoded pixels' SHA-256.
type Decoded = (Vec<u8>, String, String);

/// A loaded CLIP model and tokenizer ready to embed samples.
pub struct Embedder {
    _vs: tch::nn::VarStore,
    model: Clip,
    tokenizer: ClipTokenizer,
    config: EmbedderConfig,
    kind: Kind,
    size: usize,
}

impl Embedder {
    /// Loads a Hugging Face CLIP folder (weights, config, and `vocab.json` + `merges.txt` or
    /// `tokenizer.json`). On CUDA the weights are converted to bf16.
    pub fn load(dir: impl AsRef<Path>, config: EmbedderConfig) -> Result<Self> {
        let dir = dir.as_ref();
        if config.device != Device::Cpu {
            crate::init_torch_runtime();
        }
        let (mut vs, model) = Clip::load(dir, config.device)?;
        let kind = if config.device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
        if kind == Kind::BFloat16 {
            vs.bfloat16();
        }
        let tokenizer = ClipTokenizer::for_model(dir, model.config())?;
        let size = model.config().vision_config.image_size as usize;
        Ok(Embedder { _vs: vs, model, tokenizer, config, kind, size })
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.model.config().projection_dim as usize
    }

    /// Normalised text embeddings (`texts.len() × dim`, row-major) of texts, in batches of the configured size.
    pub fn embed_texts(&self, texts: &[&str]) -> Vec<f32> {
        let mut out = Vec::with_capacity(texts.len() * self.dim());
        for chunk in texts.chunks(self.config.batch_size.max(1)) {
            let ids = self.tokenizer.encode_batch(chunk).to_device(self.config.device);
            let t = tch::no_grad(|| l2_normalize(&self.model.text_features(&ids).to_kind(Kind::Float)));
            let t = t.to_device(Device::Cpu).contiguous().view([-1]);
            let n = t.numel();
            let mut v = vec![0f32; n];
            t.copy_data(&mut v, n);
            out.extend(v);
        }
        out
    }

    /// Embeds preprocessed images (HWC bytes, `size²·3`) and their captions.
    fn run_batch(&self, images: &[Vec<u8>], captions: &[&str], out: &mut Embeddings) {
        let device = self.config.device;
        let mut pixels = to_pixels(images, self.size);
        let mut ids = self.tokenizer.encode_batch(captions);
        if device.is_cuda() {
            pixels = pixels.pin_memory(device);
            ids = ids.pin_memory(device);
        }
        let pixels = pixels.to_device_(device, self.kind, true, false);
        let ids = ids.to_device_(device, Kind::Int64, true, false);
        let (img, txt) = tch::no_grad(|| {
            let img = l2_normalize(&self.model.image_features(&pixels).to_kind(Kind::Float));
            let txt = l2_normalize(&self.model.text_features(&ids).to_kind(Kind::Float));
            (img, txt)
        });
        let score = (&img * &txt).sum_dim_intlist(&[-1i64][..], false, Kind::Float);
        let to_vec = |t: &Tensor| -> Vec<f32> {
            let t = t.to_device(Device::Cpu).contiguous().view([-1]);
            let n = t.numel();
            let mut v = vec![0f32; n];
            t.copy_data(&mut v, n);
            v
        };
        out.image.extend(to_vec(&img));
        out.text.extend(to_vec(&txt));
        out.clip_score.extend(to_vec(&score));
    }

    /// Embeds samples: decoding and preprocessing on the worker pool, batches on the device, results in input
    /// order. A sample whose image cannot be decoded is rejected ([`RejectReason::UnreadableImage`]) and has no
    /// row.
    pub fn embed(&self, samples: impl Iterator<Item = Sample> + Send) -> (Embeddings, Vec<Rejected>) {
        let mut out = Embeddings { dim: self.dim(), ..Default::default() };
        let mut rejects = Vec::new();
        let (size, exact) = (self.size, self.config.exact_preprocessing);
        let cap = self.config.batch_size.max(1);
        let (job_tx, job_rx) = crossbeam_channel::bounded::<(u64, Sample)>(4 * cap);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<(u64, Sample, Digested)>(4 * cap);
        std::thread::scope(|s| {
            s.spawn(move || {
                for (seq, sample) in (0u64..).zip(samples) {
                    if job_tx.send((seq, sample)).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..self.config.workers.max(1) {
                let (rx, tx) = (job_rx.clone(), done_tx.clone());
                s.spawn(move || {
                    for (seq, sample) in rx {
                        let bytes = sample.image().unwrap_or_default();
                        let r = preprocess_digested(bytes, size, size, !exact)
                            .map(|(px, pixels)| (px, crate::sha256_hex(bytes), pixels));
                        if tx.send((seq, sample, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((job_rx, done_tx));
            // Reorder, batch and run on this thread.
            let mut pending: BTreeMap<u64, (Sample, Digested)> = BTreeMap::new();
            let mut next = 0u64;
            let mut batch: Vec<(Sample, Decoded)> = Vec::with_capacity(cap);
            let mut last_arrival = Instant::now();
            let mut open = true;
            while open || !pending.is_empty() || !batch.is_empty() {
                if open {
                    match done_rx.recv_timeout(self.config.max_latency) {
                        Ok((seq, sample, r)) => {
                            pending.insert(seq, (sample, r));
                            last_arrival = Instant::now();
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => open = false,
                    }
                }
                while let Some((sample, r)) = pending.remove(&next) {
                    next += 1;
                    match r {
                        Ok(px) => batch.push((sample, px)),
                        Err(reason) => rejects.push(Rejected {
                            shard: sample.shard.clone(),
                            key: sample.key.clone(),
                            reason: RejectReason::UnreadableImage,
                            detail: reason,
                            members: sample.members.len() as u64,
                        }),
                    }
                }
                let stalled = last_arrival.elapsed() >= self.config.max_latency;
                if batch.len() >= cap || (!batch.is_empty() && (stalled || !open)) {
                    let (samples, decoded): (Vec<Sample>, Vec<Decoded>) = batch.drain(..batch.len().min(cap)).unzip();
                    let mut images = Vec::with_capacity(decoded.len());
                    let mut digests = Vec::with_capacity(decoded.len());
                    for (px, sha, pixels) in decoded {
                        images.push(px);
                        digests.push((sha, pixels));
                    }
                    let captions: Vec<&str> = samples.iter().map(|s| s.caption.as_deref().unwrap_or("")).collect();
                    self.run_batch(&images, &captions, &mut out);
                    out.ids.extend(samples.iter().map(|s| (s.uid, s.key.clone())));
                    out.meta.extend(samples.iter().zip(digests).map(|(s, (sha, pixels))| crate::RowMeta {
                        text: s.caption.clone(),
                        original_size: s.original_size(),
                        sha256: Some(sha),
                        pixels_sha256: Some(pixels),
                    }));
                }
                if !open && pending.is_empty() && batch.is_empty() {
                    break;
                }
            }
        });
        (out, rejects)
    }
}
