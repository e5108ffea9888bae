//! `flyt train flyt|mflyt`: a FLYT scoring head or an M-FLYT score mixer, trained with the one-step-lookahead
//! hypergradient from downstream tasks. Two reference modes: projections over a pool's frozen embeddings
//! (`embedding`), or the CLIP towers over WebDataset shards (`full`, the paper's). Checkpoints, `losses.csv`
//! and a loss curve land in the output directory; a run resumes from its checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use flyt::clip::l2_normalize;
use flyt::train::{
    Augment, BatchPlan, DownstreamTask, EmbeddingReference, FlytConfig, FlytState, GluHead, Mixer, ModelKind,
    Multitask, ParamAdamW, ReferenceState, ScoringModel, StepLog, TraceSpec, UpstreamPool, load_checkpoint,
    save_checkpoint, train_flyt,
};
use flyt::{DeviceSpec, PoolEmbeddings, Uid};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::downstream::{lines, templates};
use crate::shards::{expand_shards, progress};
use crate::{Error, Result};

/// The reference model FLYT steps through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReferenceMode {
    /// Trainable projections and a logit scale over precomputed frozen embeddings (`pool`, `downstream`):
    /// cheap, for CPUs and very large pools.
    #[default]
    Embedding,
    /// The CLIP towers themselves (`model`), trained on images and captions from WebDataset shards (`shards`,
    /// `down_shards`), as in the paper.
    Full,
}

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// FLYT (a SwiGLU head over [u; t]) or M-FLYT (a linear mix of score columns).
    pub kind: ModelKind,
    /// The reference mode.
    pub reference: ReferenceMode,
    /// Embedding mode: the upstream pool (DataComp layout).
    pub pool: Option<PathBuf>,
    /// Full mode: the pretrained CLIP (Hugging Face folder) that starts the reference and, frozen, gives the
    /// scoring features [u; t].
    pub model: Option<PathBuf>,
    /// Full mode: upstream WebDataset shards, or directories of them.
    pub shards: Vec<PathBuf>,
    /// Full mode: labelled downstream shards (one task each).
    pub down_shards: Vec<PathBuf>,
    /// Full mode: class names, one file per `down_shards` (or from `datacomp_eval_dir` for a known task).
    pub classnames: Vec<PathBuf>,
    /// Full mode: prompt templates with `{c}`, one file per task or one for all (default: DataComp's for a known
    /// task, with `datacomp_eval_dir`; else "a photo of a {c}.").
    pub templates: Vec<PathBuf>,
    /// Full mode: the DataComp task each `down_shards` is (`imagenet`, `cifar10`, ...: the official code's names),
    /// whose class names and templates `datacomp_eval_dir` holds.
    pub down_tasks: Vec<String>,
    /// DataComp's evaluation directory (`wds_<task>_test/classnames.txt`, `…/zeroshot_classification_templates.txt`).
    pub datacomp_eval_dir: Option<PathBuf>,
    /// Full mode: run the towers on at most this many examples at a time (gradient caching).
    pub chunk: Option<usize>,
    /// Embedding mode: the pool's `.npz` prefix (default: `b32`, the official scorer's OpenAI ViT-B/32 features,
    /// when the pool has it; else l14, else the only pair).
    pub embeddings: Option<String>,
    /// Leave the pool on disk and read each step's rows in place, so memory does not grow with the pool; the
    /// steps are the in-memory pool's. Embedding mode: stored `.npz` arrays; full mode: uncompressed tars (the
    /// frozen CLIP's [u; t] in a scratch file beside `out`).
    pub stream_pool: bool,
    /// Embedding mode: the frozen CLIP (Hugging Face folder) the pool's embeddings came from, whose logit scale
    /// starts the reference (default: the curation's model when the pool is a `flyt curate` output's
    /// `embeddings/`; else OpenAI CLIP's, ln 100, which DataComp's embeddings come from).
    pub clip: Option<PathBuf>,
    /// Embedding mode: the reference's starting logit scale (log τ), instead of the frozen CLIP's.
    pub ref_logit_scale: Option<f64>,
    /// Embedding mode: downstream task `.npz` files (`flyt downstream`).
    pub downstream: Vec<PathBuf>,
    /// M-FLYT: parquet files with `uid` and score columns, joined on uid.
    pub scores: Vec<PathBuf>,
    /// M-FLYT: the columns to mix.
    pub columns: Vec<String>,
    /// The output directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors`.
    pub resume: bool,
    /// The loop's settings: steps, batch sizes, learning rates, warmup, the optimiser, the seed.
    pub training: FlytConfig,
    /// Embedding mode: the reference projection width (default: the embedding width).
    pub ref_dim: Option<i64>,
    /// FLYT: start the head at s ≈ cos(u, t) (notes §2.1).
    pub cos_sim_init: bool,
    /// M-FLYT: the mixer's inputs — raw scores with PyTorch's random init (the official `MixingModel`), or
    /// z-scored with zero init.
    pub mixer_inputs: MixerInputs,
    /// How several downstream tasks combine (flyt's mean of one θ′, or the official code's θ′ per task).
    pub multitask: Multitask,
    /// Keep the reference at its start (the official script without `--update_reference_model`).
    pub freeze_reference: bool,
    /// The downstream logit scale: learned from this log-scale (the authors' README: 2.65926 = ln(1/0.07)), or
    /// `None`, none (a scale of 1).
    pub downstream_logit_scale: Option<f64>,
    /// Full mode: RandomResizedCrop(scale (0.9, 1.0)) of the upstream and downstream images each step, as the
    /// official training transform.
    pub augment: bool,
    /// Initial weights under the official code's names (`glu_model.layers.0.*` for a head, `layers.0.*` for a
    /// mixer, the reference's open_clip names — `w_img`, `w_txt`, `logit_scale` in embedding mode — and
    /// `downstream_logit_scale`), so two implementations start from the same point.
    pub init: Option<PathBuf>,
    /// Explicit batches (a [`flyt::train::BatchPlan`] file, or a trace directory) instead of the seeded draws.
    pub batches: Option<PathBuf>,
    /// Write the traced steps' intermediates here (see [`flyt::train::TraceSpec`]).
    pub trace: Option<PathBuf>,
    /// The steps to trace.
    pub trace_steps: Vec<usize>,
    /// Run every step in f64 (the head, the reference, the embeddings).
    pub f64: bool,
    /// Full mode on CUDA: the official `amp` path — the towers under fp16 autocast, the losses scaled by a
    /// dynamic loss scaler starting at `scaler_scale` ([`flyt::train::FullReference::set_amp`]).
    pub amp: bool,
    /// The loss scaler's start (the official `--scaler_scale`: 1024).
    pub scaler_scale: f64,
    /// A checkpoint every N steps (and at the end).
    pub checkpoint_every: usize,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    pub stop_after: Option<usize>,
    /// Where the models run.
    pub device: DeviceSpec,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kind: ModelKind::Flyt,
            reference: ReferenceMode::Embedding,
            pool: None,
            model: None,
            shards: Vec::new(),
            down_shards: Vec::new(),
            classnames: Vec::new(),
            templates: Vec::new(),
            down_tasks: Vec::new(),
            datacomp_eval_dir: None,
            chunk: None,
            embeddings: None,
            stream_pool: false,
            clip: None,
            ref_logit_scale: None,
            downstream: Vec::new(),
            scores: Vec::new(),
            columns: Vec::new(),
            out: PathBuf::new(),
            resume: false,
            training: FlytConfig::default(),
            ref_dim: None,
            cos_sim_init: false,
            mixer_inputs: MixerInputs::Raw,
            multitask: Multitask::Mean,
            freeze_reference: false,
            downstream_logit_scale: Some(DOWNSTREAM_LOGIT_SCALE),
            augment: true,
            init: None,
            batches: None,
            trace: None,
            trace_steps: Vec::new(),
            f64: false,
            amp: false,
            scaler_scale: 1024.0,
            checkpoint_every: 500,
            stop_after: None,
            device: DeviceSpec::Auto,
        }
    }
}

/// The downstream logit scale the authors' README command starts from: ln(1/0.07).
pub const DOWNSTREAM_LOGIT_SCALE: f64 = 2.65926;

/// A downstream task on which the frozen reference's zero-shot top-1 is under this multiple of chance gets a
/// warning in the training's notes (embedding mode).
pub const NEAR_CHANCE: f64 = 1.5;

/// OpenAI CLIP's logit scale, ln 100: the reference's start when nothing names the frozen CLIP (DataComp's
/// embeddings are OpenAI's).
pub const OPENAI_LOGIT_SCALE: f64 = 4.605_170_185_988_091;

/// M-FLYT's mixer inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MixerInputs {
    /// The raw per-method scores, PyTorch's default init (the official `MixingModel`).
    #[default]
    Raw,
    /// Each score z-scored with the pool's statistics (stored with the mixer), zero init.
    Zscore,
}

impl MixerInputs {
    fn name(self) -> &'static str {
        match self {
            MixerInputs::Raw => "raw",
            MixerInputs::Zscore => "zscore",
        }
    }
}

/// What `train` did.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The step the run started at (0, or where it resumed).
    pub first: usize,
    /// The step it stopped at.
    pub last: usize,
    /// The configured number of steps.
    pub steps: usize,
    /// The last step's record (None when there was nothing to do).
    pub log: Option<StepLog>,
    /// Seconds.
    pub seconds: f64,
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// `losses.csv`.
    pub losses: PathBuf,
    /// The loss curve (PNG, or SVG without a font).
    pub plot: PathBuf,
    /// Samples left out (full mode), and lines worth telling (resumed at step N, where the reference's logit
    /// scale came from).
    pub notes: Vec<String>,
}

fn matrix(data: &[f32], dim: usize, dev: Device) -> Tensor {
    Tensor::from_slice(data).view([(data.len() / dim.max(1)) as i64, dim as i64]).to_device(dev)
}

/// Score columns for `uids` from parquet files, row-major (`uids × columns`); every uid needs every column.
pub(crate) fn score_matrix(files: &[PathBuf], columns: &[String], uids: &[Uid]) -> Result<Vec<f32>> {
    if columns.is_empty() {
        return Err(Error::Config("M-FLYT needs --columns: the score columns to mix".into()));
    }
    let mut found: HashMap<&str, HashMap<Uid, f64>> = HashMap::new();
    for col in columns {
        for f in files {
            match flyt::read_scores_parquet(f, col) {
                Ok(pairs) => {
                    found.entry(col.as_str()).or_default().extend(pairs);
                }
                Err(flyt::Error::Format { what, .. }) if what == *col => {} // not in this file
                Err(e) => return Err(e.into()),
            }
        }
        if !found.contains_key(col.as_str()) {
            return Err(Error::Config(format!("score column {col:?} is in none of the --scores files")));
        }
    }
    let mut out = Vec::with_capacity(uids.len() * columns.len());
    for u in uids {
        for col in columns {
            match found[col.as_str()].get(u) {
                Some(&v) => out.push(v as f32),
                None => {
                    let missing = uids.iter().filter(|u| !found[col.as_str()].contains_key(u)).count();
                    return Err(Error::Config(format!(
                        "{missing} pool uids have no {col:?} score (first: {u}); a missing score is not zero-filled"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The scoring model a run trains.
enum Model {
    Glu(GluHead),
    Mix(Mixer),
}

impl Model {
    fn scorer(&self) -> &dyn ScoringModel {
        match self {
            Model::Glu(h) => h,
            Model::Mix(m) => m,
        }
    }
}

/// The head a new run trains: M-FLYT's mixer (raw inputs with PyTorch's init, or z-scored with `features`'
/// statistics and zero weights) or FLYT's SwiGLU head over `dim`-d embeddings (seeded, PyTorch's init or cos-sim).
fn scoring_model(c: &TrainConfig, features: Option<&Tensor>, dim: usize, vs: &tch::nn::VarStore) -> Model {
    match c.kind {
        ModelKind::Mflyt => {
            tch::manual_seed(c.training.seed as i64);
            let mut m = Mixer::new(&vs.root(), (c.columns.len() as i64).max(1));
            if c.mixer_inputs == MixerInputs::Zscore
                && let Some(features) = features
            {
                m.set_stats(features);
                m.zero_init();
            }
            Model::Mix(m)
        }
        ModelKind::Flyt => {
            tch::manual_seed(c.training.seed as i64);
            let mut h = GluHead::new(&vs.root(), dim as i64);
            if c.cos_sim_init {
                h.cos_sim_init(0.01);
            }
            Model::Glu(h)
        }
    }
}

/// The pool's embeddings: the prefix asked for; else `b32` when the pool has it (the official scorer's OpenAI
/// ViT-B/32 features); else [`flyt::pick_prefix`]'s.
fn flyt_prefix(dir: &Path, asked: Option<&str>) -> Result<PoolEmbeddings> {
    if let Some(p) = asked {
        return Ok(PoolEmbeddings::Prefix(p.to_string()));
    }
    let files = super::pool_files(dir)?;
    let keys: Vec<String> = flyt::read_npz(files[0].with_extension("npz"))?.into_keys().collect();
    if keys.iter().any(|k| k == "b32_img") && keys.iter().any(|k| k == "b32_txt") {
        return Ok(PoolEmbeddings::Prefix("b32".into()));
    }
    Ok(PoolEmbeddings::Auto)
}

/// The reference's starting logit scale (log τ) in embedding mode, and where it came from: `ref_logit_scale`;
/// else the frozen CLIP's (`clip`, or the model of the curation whose `embeddings/` the pool is); else OpenAI
/// CLIP's, ln 100.
fn reference_logit_scale(c: &TrainConfig, pool_dir: &Path) -> Result<(f64, String)> {
    if let Some(x) = c.ref_logit_scale {
        return Ok((x, "--ref-logit-scale".into()));
    }
    let from_manifest = || -> Option<PathBuf> {
        let m = pool_dir.parent()?.join("manifest.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(m).ok()?).ok()?;
        let model = PathBuf::from(v["config"]["embed"]["model"].as_str()?);
        model.join("model.safetensors").exists().then_some(model)
    };
    match c.clip.clone().or_else(from_manifest) {
        Some(clip) => Ok((flyt::clip::read_logit_scale(&clip)?, format!("the frozen CLIP {}", clip.display()))),
        None => Ok((OPENAI_LOGIT_SCALE, "OpenAI CLIP's, ln 100 (no --clip names the frozen CLIP)".into())),
    }
}

/// Applies the run's reference settings: how tasks combine, frozen or not, the downstream logit scale.
fn configure<R: ReferenceState>(reference: &mut R, c: &TrainConfig) {
    let s = reference.settings_mut();
    s.multitask = c.multitask;
    s.update = !c.freeze_reference;
    reference.set_downstream_logit_scale(c.downstream_logit_scale);
}

/// The loop's configuration: the settings, explicit batches, the trace, full mode's augmentation.
fn loop_config(c: &TrainConfig) -> Result<FlytConfig> {
    let mut f = c.training.clone();
    if let Some(p) = &c.batches {
        f.batches = Some(Arc::new(BatchPlan::read(p)?));
    }
    if let Some(dir) = &c.trace {
        if c.trace_steps.is_empty() {
            return Err(Error::Config("--trace needs the steps to trace: --trace-steps 0,1,...".into()));
        }
        f.trace = Some(Arc::new(TraceSpec { dir: dir.clone(), steps: c.trace_steps.iter().copied().collect() }));
    }
    if c.reference == ReferenceMode::Full && c.augment {
        f.augment = Some(Augment::default());
    }
    Ok(f)
}

/// Loads initial weights under the official code's names into the scoring model and the reference (`full`:
/// open_clip's names for the CLIP towers). Returns how many tensors were set; an unknown name or a wrong shape
/// is an error naming it.
fn load_init<R: ReferenceState>(
    path: &Path,
    scorer: &dyn ScoringModel,
    reference: &mut R,
    full: bool,
) -> Result<usize> {
    let tensors =
        Tensor::read_safetensors(path).map_err(|e| flyt::Error::format(path, "safetensors", e.to_string()))?;
    let mut head: Vec<(String, Tensor)> = Vec::new();
    let mut refs: Vec<(String, Tensor)> = Vec::new();
    let mut rho: Option<Tensor> = None;
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("glu_model.layers.0.") {
            head.push((n.to_string(), t));
        } else if let Some(n) = name.strip_prefix("layers.0.") {
            head.push((format!("linear.{n}"), t));
        } else if name == "downstream_logit_scale" {
            rho = Some(t);
        } else {
            refs.push((name, t));
        }
    }
    if full {
        refs = flyt::clip::from_open_clip(refs)?;
    }
    let copy = |what: &str, dst: &mut Tensor, src: &Tensor| -> Result<()> {
        if dst.size() != src.size() {
            return Err(flyt::Error::format(
                path,
                what,
                format!("shape {:?}, the model's is {:?}", src.size(), dst.size()),
            )
            .into());
        }
        let _g = tch::no_grad_guard();
        dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
        Ok(())
    };
    let mut set = 0;
    let mut params = scorer.named_parameters();
    for (n, t) in &head {
        let (_, dst) = params
            .iter_mut()
            .find(|(p, _)| p == n)
            .ok_or_else(|| flyt::Error::format(path, n, "not a parameter of the scoring model"))?;
        copy(n, dst, t)?;
        set += 1;
    }
    let names = reference.param_names();
    let learned = reference.settings().rho_learned;
    let (ps, r, _, _) = reference.parts_mut();
    for (n, t) in &refs {
        let i = names
            .iter()
            .position(|p| p == n)
            .ok_or_else(|| flyt::Error::format(path, n, "not a parameter of the reference model"))?;
        copy(n, &mut ps[i], t)?;
        set += 1;
    }
    if let Some(t) = rho {
        if !learned {
            return Err(flyt::Error::format(
                path,
                "downstream_logit_scale",
                "given, but this run has no downstream logit scale (--downstream-logit-scale none)",
            )
            .into());
        }
        copy("downstream_logit_scale", r, &t.reshape(r.size()))?;
        set += 1;
    }
    Ok(set)
}

/// The reference's logit scale (log τ) as the first step sees it.
fn start_logit_scale<R: ReferenceState>(reference: &R) -> f64 {
    reference.parts().0[reference.logit_scale_index()].double_value(&[])
}

/// Trains (or resumes) a FLYT head or an M-FLYT mixer.
pub fn train(c: &TrainConfig) -> Result<TrainReport> {
    let dev = c.device.resolve()?;
    if c.amp {
        if c.reference != ReferenceMode::Full {
            return Err(Error::Config("--amp is for full mode (the towers); embedding mode has none".into()));
        }
        if !dev.is_cuda() {
            return Err(Error::Config(format!("--amp needs a CUDA device (this run's is {dev:?}); CPUs stay f32")));
        }
        if c.f64 {
            return Err(Error::Config("--amp and --dtype f64 exclude each other".into()));
        }
        if !(c.scaler_scale.is_finite() && c.scaler_scale > 0.0) {
            return Err(Error::Config(format!("--scaler-scale must be positive, got {}", c.scaler_scale)));
        }
    }
    if c.reference == ReferenceMode::Full {
        return train_full(c, dev);
    }
    let pool_dir = c.pool.clone().ok_or_else(|| Error::Config("--pool is needed in embedding mode".into()))?;
    if c.downstream.is_empty() {
        return Err(Error::Config("embedding mode needs --downstream task.npz (made by flyt downstream)".into()));
    }
    let prefix = flyt_prefix(&pool_dir, c.embeddings.as_deref())?;
    let kind = if c.f64 { Kind::Double } else { Kind::Float };
    // In memory, or on disk (each step's rows read in place): the same rows, in the same order.
    let non_empty = |uids: &[Uid]| {
        if uids.is_empty() {
            return Err(Error::Incomplete(format!("{}: the pool has no rows", pool_dir.display())));
        }
        Ok(())
    };
    let mflyt_features = |uids: &[Uid]| -> Result<Option<Tensor>> {
        Ok(match c.kind {
            ModelKind::Mflyt => {
                Some(matrix(&score_matrix(&c.scores, &c.columns, uids)?, c.columns.len(), dev).to_kind(kind))
            }
            ModelKind::Flyt => None,
        })
    };
    let (dim, uids, pool_files, pool_prefix, upstream) = if c.stream_pool {
        let pool = flyt::PoolOnDisk::open(&pool_dir, &prefix)?;
        non_empty(&pool.uids)?;
        // FLYT's [u; t] are read with each step's rows.
        let features = mflyt_features(&pool.uids)?;
        let (dim, uids, files, prefix) = (pool.dim, pool.uids.clone(), pool.files.clone(), Some(pool.prefix.clone()));
        (dim, uids, files, prefix, Upstream::OnDisk(flyt::train::StreamedPool { pool, features, kind, device: dev }))
    } else {
        let pool = flyt::read_pool(&pool_dir, &prefix)?;
        let uids: Vec<Uid> = pool.rows.iter().map(|r| r.uid).collect();
        non_empty(&uids)?;
        // The whole pool's normalised embeddings.
        let image = l2_normalize(&matrix(&pool.image, pool.dim, dev)).to_kind(kind);
        let text = l2_normalize(&matrix(&pool.text, pool.dim, dev)).to_kind(kind);
        let features = match mflyt_features(&uids)? {
            Some(f) => f,
            None => Tensor::cat(&[&image, &text], 1),
        };
        (pool.dim, uids, pool.files, pool.prefix, Upstream::InMemory(UpstreamPool { image, text, features }))
    };
    let tasks: Vec<DownstreamTask> = c
        .downstream
        .iter()
        .map(|p| {
            DownstreamTask::from_npz(p, dim, dev).map(|t| DownstreamTask {
                image: t.image.to_kind(kind),
                labels: t.labels,
                prompts: t.prompts.to_kind(kind),
                captions: t.captions.map(|x| x.to_kind(kind)),
            })
        })
        .collect::<flyt::Result<_>>()?;
    let mut vs = tch::nn::VarStore::new(dev);
    let model = scoring_model(c, upstream.features(), dim, &vs);
    if c.f64 {
        vs.double();
    }
    let scorer = model.scorer();
    let config = loop_config(c)?;
    tch::manual_seed(c.training.seed as i64 ^ 0x5eed);
    let ref_dim = c.ref_dim.unwrap_or(dim as i64);
    let mut reference = EmbeddingReference::new(dim as i64, ref_dim, 0.0, config.adam, kind, dev);
    let (log_tau, from) = reference_logit_scale(c, &pool_dir)?;
    reference.set_logit_scale(log_tau);
    configure(&mut reference, c);
    let mut notes = vec![format!("the reference starts at logit scale {log_tau:.5} ({from})")];
    let zero_shot: Vec<f64> = tasks.iter().map(DownstreamTask::zero_shot_top1).collect();
    for ((t, p), z) in tasks.iter().zip(&c.downstream).zip(&zero_shot) {
        let chance = 1.0 / t.classes() as f64;
        if *z < NEAR_CHANCE * chance {
            notes.push(format!(
                "warning: downstream task {}: the frozen reference's zero-shot top-1 is {:.1} % (chance {:.1} %); \
                 the lookahead cannot learn what the task needs from a reference that cannot do it, and may learn \
                 to prefer data that makes the reference less confident (README: the evaluation's ablations)",
                p.display(),
                100.0 * z,
                100.0 * chance
            ));
        }
    }
    if let Some(init) = &c.init {
        let n = load_init(init, scorer, &mut reference, false)?;
        notes.push(format!("{n} tensors set from {}", init.display()));
    }
    let start_log_tau = start_logit_scale(&reference);
    if start_log_tau != log_tau {
        notes.push(format!("the init sets the reference's logit scale to {start_log_tau:.5}"));
    }
    let mut state =
        FlytState { reference, score_opt: ParamAdamW::new(config.adam, &scorer.named_parameters()), step: 0 };
    crate::jobs::create_dir(&c.out)?;
    let meta = json!({
        "kind": c.kind.name(),
        "mode": "embedding",
        "downstream_zero_shot": zero_shot,
        "dim": dim,
        "ref_dim": ref_dim,
        "columns": c.columns,
        "pool": pool_dir.display().to_string(),
        "pool_files": pool_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "pool_rows": uids.len(),
        "pool_streamed": c.stream_pool,
        "embeddings": pool_prefix,
        "downstream": c.downstream.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "scores": c.scores.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "ref_logit_scale": start_log_tau,
        "settings": settings_json(c),
        "config": format!("{config:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&[pool_dir.clone()][..], &c.downstream, &c.scores].concat()),
    });
    match &upstream {
        Upstream::InMemory(pool) => drive(c, scorer, &mut state, &meta, config.steps, notes, |st, cb| {
            train_flyt(scorer, st, pool, &tasks, &config, cb)
        }),
        Upstream::OnDisk(pool) => drive(c, scorer, &mut state, &meta, config.steps, notes, |st, cb| {
            train_flyt(scorer, st, pool, &tasks, &config, cb)
        }),
    }
}

/// Embedding mode's upstream pool: in memory, or left on disk with each step's rows read in place.
enum Upstream {
    InMemory(UpstreamPool),
    OnDisk(flyt::train::StreamedPool),
}

impl Upstream {
    /// The scoring features the head is built with: M-FLYT's columns, or FLYT's `[u; t]` when in memory.
    fn features(&self) -> Option<&Tensor> {
        match self {
            Upstream::InMemory(p) => Some(&p.features),
            Upstream::OnDisk(p) => p.features.as_ref(),
        }
    }
}

/// The run's settings, for the checkpoint's sidecar.
fn settings_json(c: &TrainConfig) -> serde_json::Value {
    json!({
        "mixer_inputs": c.mixer_inputs.name(),
        "multitask": format!("{:?}", c.multitask).to_lowercase(),
        "update_reference": !c.freeze_reference,
        "downstream_logit_scale": c.downstream_logit_scale,
        "augment": c.reference == ReferenceMode::Full && c.augment,
        "dtype": if c.f64 { "f64" } else { "f32" },
        "amp": c.amp.then_some(c.scaler_scale),
        "init": c.init.as_ref().map(|p| p.display().to_string()),
        "batches": c.batches.as_ref().map(|p| p.display().to_string()),
    })
}

/// The part every mode shares: resume or start, run in checkpoint-sized pieces (`train` runs until its
/// callback says stop), append losses.csv, checkpoint, draw the loss curve, report.
fn drive<R: ReferenceState>(
    c: &TrainConfig,
    scorer: &dyn ScoringModel,
    state: &mut FlytState<R>,
    meta: &serde_json::Value,
    steps: usize,
    mut notes: Vec<String>,
    mut train: impl FnMut(&mut FlytState<R>, &mut dyn FnMut(&StepLog) -> flyt::Result<bool>) -> flyt::Result<()>,
) -> Result<TrainReport> {
    let ckpt = c.out.join("checkpoint.safetensors");
    let csv_path = c.out.join("losses.csv");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::io(p.clone(), e)
    };
    if c.resume {
        let saved = load_checkpoint(&ckpt, scorer, state)?;
        for key in ["kind", "mode", "dim"] {
            if saved.get(key) != meta.get(key) {
                return Err(Error::Config(format!(
                    "{}: its {key} is {}, this run's is {}: it cannot be resumed here",
                    ckpt.display(),
                    saved[key],
                    meta[key]
                )));
            }
        }
        notes.push(format!("resuming at step {} of {steps}", state.step));
    } else if ckpt.exists() {
        return Err(Error::Config(format!(
            "{} exists: pass --resume to continue it, or choose another --out",
            ckpt.display()
        )));
    } else {
        std::fs::write(&csv_path, "step,up_loss,down_loss,ref_grad_norm,score_grad_norm,ref_lr,score_lr\n")
            .map_err(io(&csv_path))?;
    }
    let mut csv = std::fs::OpenOptions::new().append(true).create(true).open(&csv_path).map_err(io(&csv_path))?;
    let pb = progress(steps as u64, c.kind.name());
    pb.set_position(state.step as u64);
    let start = Instant::now();
    let first = state.step;
    let every = c.checkpoint_every.max(1);
    let mut last: Option<StepLog> = None;
    let stop = c.stop_after.map_or(steps, |n| (first + n).min(steps));
    while state.step < stop {
        let mut rows = Vec::new();
        train(state, &mut |l: &StepLog| {
            rows.push(l.clone());
            pb.set_message(format!("up {:.4} down {:.4}", l.up_loss, l.down_loss));
            pb.inc(1);
            Ok(!(l.step + 1).is_multiple_of(every) && l.step + 1 < stop)
        })?;
        for r in &rows {
            writeln!(
                csv,
                "{},{},{},{},{},{},{}",
                r.step, r.up_loss, r.down_loss, r.ref_grad_norm, r.score_grad_norm, r.ref_lr, r.score_lr
            )
            .map_err(io(&csv_path))?;
        }
        csv.flush().map_err(io(&csv_path))?;
        save_checkpoint(&ckpt, scorer, state, meta)?;
        last = rows.last().cloned().or(last);
    }
    pb.finish_and_clear();
    let plot = loss_plot(&csv_path, &c.out.join("loss.png"))?;
    Ok(TrainReport {
        first,
        last: state.step,
        steps,
        log: last,
        seconds: start.elapsed().as_secs_f64(),
        checkpoint: ckpt,
        losses: csv_path,
        plot,
        notes,
    })
}

/// Full mode: the CLIP towers as the reference over WebDataset shards.
fn train_full(c: &TrainConfig, dev: Device) -> Result<TrainReport> {
    use flyt::clip::{ClipConfig, ClipTokenizer, Embedder, EmbedderConfig, preprocess};
    use flyt::train::{
        FullPool, FullReference, FullRows, FullTask, StreamedFeatures, StreamedFullPool, train_flyt_full,
    };
    let model_dir = c.model.clone().ok_or_else(|| Error::Config("--model is needed in full mode".into()))?;
    if c.shards.is_empty() || c.down_shards.is_empty() {
        return Err(Error::Config(
            "full mode needs --shards (upstream) and --down-shards (labelled downstream)".into(),
        ));
    }
    let task_files = task_files(c)?;
    let kind = if c.f64 { Kind::Double } else { Kind::Float };
    let config = ClipConfig::from_file(model_dir.join("config.json"))?;
    let crop = config.vision_config.image_size as usize;
    let tokenizer = ClipTokenizer::for_model(&model_dir, &config)?;
    let embedder = Embedder::load(&model_dir, EmbedderConfig { device: dev, ..Default::default() })?;
    let dim = embedder.dim();
    // upstream: the frozen CLIP's [u; t] for the scoring model, preprocessed images (and the images as read, for
    // augmentation) and caption tokens; with --stream-pool, where each row's image and caption lie instead, and
    // the [u; t] rows in a scratch file beside the output (deleted when the run ends)
    let tokenizer = std::sync::Arc::new(tokenizer);
    let (mut images, mut sources, mut captions, mut uids, mut feats_img, mut feats_txt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut files, mut at) = (Vec::new(), Vec::new());
    let mut scratch = match (c.stream_pool, c.kind) {
        (true, ModelKind::Flyt) => {
            crate::jobs::create_dir(&c.out)?;
            let f = tempfile::tempfile_in(&c.out).map_err(|e| Error::io(&c.out, e))?;
            Some(std::io::BufWriter::with_capacity(1 << 20, f))
        }
        _ => None,
    };
    let mut rejected = 0usize;
    for shard in expand_shards(&c.shards)? {
        let mut samples = Vec::new();
        for r in flyt::ShardReader::open(&shard, flyt::ReaderConfig::default())? {
            match r? {
                flyt::Record::Sample(s) => samples.push(*s),
                flyt::Record::Rejected(_) => rejected += 1,
            }
        }
        if c.stream_pool && samples.iter().any(|s| s.image_at().is_none()) {
            return Err(flyt::Error::format(
                &shard,
                "shard",
                "compressed: --stream-pool reads each step's images and captions in place, which needs an \
                 uncompressed tar; store the shards uncompressed or train without --stream-pool",
            )
            .into());
        }
        let by_key: HashMap<String, (Vec<u8>, String, Option<flyt::train::RowAt>)> = samples
            .iter()
            .map(|s| {
                let place = s.image_at().map(|(image_at, image_len)| {
                    let (caption_at, caption_len) = s.caption_at().unwrap_or((0, 0));
                    flyt::train::RowAt {
                        file: files.len() as u32,
                        image_len: image_len as u32,
                        image_at,
                        caption_at,
                        caption_len: caption_len as u32,
                    }
                });
                let caption = s.caption.clone().unwrap_or_default();
                (s.key.clone(), (s.image().unwrap_or_default().to_vec(), caption, place))
            })
            .collect();
        let (emb, bad) = embedder.embed(samples.into_iter());
        rejected += bad.len();
        for (i, (uid, key)) in emb.ids.iter().enumerate() {
            let (bytes, caption, place) = &by_key[key];
            let (u, t) = (&emb.image[i * dim..(i + 1) * dim], &emb.text[i * dim..(i + 1) * dim]);
            match preprocess::preprocess(bytes, crop, crop) {
                Ok(_) if c.stream_pool => {
                    at.push(place.ok_or_else(|| flyt::Error::format(&shard, key.as_str(), "no place in the shard"))?);
                    if let Some(w) = scratch.as_mut() {
                        use std::io::Write;
                        for v in u.iter().chain(t) {
                            w.write_all(&v.to_le_bytes()).map_err(|e| Error::io(&c.out, e))?;
                        }
                    }
                    uids.push(*uid);
                }
                Ok(px) => {
                    images.push(px);
                    if c.augment {
                        sources.push(bytes.clone());
                    }
                    captions.push(caption.clone());
                    uids.push(*uid);
                    feats_img.extend_from_slice(u);
                    feats_txt.extend_from_slice(t);
                }
                Err(_) => rejected += 1,
            }
        }
        files.push(shard);
    }
    if uids.is_empty() {
        return Err(Error::Incomplete("no upstream samples could be read".into()));
    }
    let mut tasks = Vec::new();
    for (dir, (names, template_file)) in c.down_shards.iter().zip(&task_files) {
        let classes = lines(names)?;
        let templates = templates(template_file.as_deref())?;
        let (mut imgs, mut srcs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let cfg = flyt::ReaderConfig::default().require_caption(false).require_label(true);
        for shard in expand_shards(std::slice::from_ref(dir))? {
            for r in flyt::ShardReader::open(&shard, cfg.clone())? {
                if let flyt::Record::Sample(s) = r? {
                    match (s.label, s.image().map(|b| (b, preprocess::preprocess(b, crop, crop)))) {
                        (Some(l), Some((bytes, Ok(px)))) if l >= 0 && (l as usize) < classes.len() => {
                            imgs.push(px);
                            if c.augment {
                                srcs.push(bytes.to_vec());
                            }
                            labels.push(l);
                        }
                        _ => rejected += 1,
                    }
                }
            }
        }
        if imgs.is_empty() {
            return Err(Error::Incomplete(format!("{}: no labelled images", dir.display())));
        }
        let texts: Vec<String> =
            classes.iter().flat_map(|cl| templates.iter().map(move |t| t.replace("{c}", cl))).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let prompts = tokenizer.encode_batch(&refs).view([classes.len() as i64, templates.len() as i64, -1]);
        let sources = c.augment.then_some(srcs);
        tasks.push(FullTask { images: imgs, sources, labels, prompts, captions: None });
    }
    // the scoring features in memory: M-FLYT's score columns, or (not streamed) the FLYT head's [u; t]
    let features = match c.kind {
        ModelKind::Mflyt => Some(matrix(&score_matrix(&c.scores, &c.columns, &uids)?, c.columns.len(), dev)),
        ModelKind::Flyt if c.stream_pool => None,
        ModelKind::Flyt => Some(Tensor::cat(&[matrix(&feats_img, dim, dev), matrix(&feats_txt, dim, dev)], 1)),
    }
    .map(|f| f.to_kind(kind));
    drop((feats_img, feats_txt));
    let mut vs = tch::nn::VarStore::new(dev);
    let model = scoring_model(c, features.as_ref(), dim, &vs);
    if c.f64 {
        vs.double();
    }
    let scorer = model.scorer();
    let fc = loop_config(c)?;
    let weights = model_dir.join("model.safetensors");
    let mut reference = FullReference::new(&config, Some(&weights), fc.adam, kind, dev)?;
    reference.set_chunk(c.chunk);
    if c.amp {
        reference.set_amp(Some(flyt::train::LossScaler::new(c.scaler_scale)));
    }
    configure(&mut reference, c);
    let mut notes =
        if rejected > 0 { vec![format!("{rejected} samples left out (rejected or unreadable)")] } else { vec![] };
    if let Some(init) = &c.init {
        let n = load_init(init, scorer, &mut reference, true)?;
        notes.push(format!("{n} tensors set from {}", init.display()));
    }
    let start_log_tau = start_logit_scale(&reference);
    let mut state = FlytState { reference, score_opt: ParamAdamW::new(fc.adam, &scorer.named_parameters()), step: 0 };
    let pool_rows = uids.len();
    let pool: Box<dyn FullRows> = match (c.stream_pool, features) {
        (true, features) => {
            let features = match (features, scratch) {
                (Some(f), _) => StreamedFeatures::InMemory(f),
                (None, Some(w)) => StreamedFeatures::OnDisk {
                    file: w.into_inner().map_err(|e| Error::io(&c.out, e.into_error()))?,
                    width: 2 * dim,
                    kind,
                },
                (None, None) => return Err(Error::Config("no scoring features for the streamed pool".into())),
            };
            Box::new(StreamedFullPool::new(files, at, tokenizer, features)?)
        }
        (false, features) => {
            let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
            let ids = tokenizer.encode_batch(&refs);
            let features = features.ok_or_else(|| Error::Config("no scoring features for the pool".into()))?;
            Box::new(FullPool { images, sources: c.augment.then_some(sources), ids, features })
        }
    };
    crate::jobs::create_dir(&c.out)?;
    let classnames: Vec<String> = task_files.iter().map(|(n, _)| n.display().to_string()).collect();
    let meta = json!({
        "kind": c.kind.name(),
        "mode": "full",
        "dim": dim,
        "columns": c.columns,
        "model": model_dir.display().to_string(),
        "shards": c.shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "down_shards": c.down_shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "classnames": classnames,
        "templates": task_files.iter().map(|(_, t)| t.as_ref().map(|p| p.display().to_string())).collect::<Vec<_>>(),
        "pool_rows": pool_rows,
        "pool_streamed": c.stream_pool,
        "ref_logit_scale": start_log_tau,
        "settings": settings_json(c),
        "config": format!("{fc:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&c.shards[..], &c.down_shards, &c.classnames, &c.templates, &c.scores, std::slice::from_ref(&weights)].concat()),
    });
    drive(c, scorer, &mut state, &meta, fc.steps, notes, |st, cb| {
        train_flyt_full(scorer, st, pool.as_ref(), &tasks, &fc, cb)
    })
}

/// Full mode: each downstream task's class-name file and template file (None: the one default prompt) — given,
/// or DataComp's for a task named in `down_tasks` under `datacomp_eval_dir`.
fn task_files(c: &TrainConfig) -> Result<Vec<(PathBuf, Option<PathBuf>)>> {
    let k = c.down_shards.len();
    let per =
        |what: &str, n: usize| Error::Config(format!("give one {what} per --down-shards, or none ({n} for {k} tasks)"));
    if !c.classnames.is_empty() && c.classnames.len() != k {
        return Err(per("--classnames file", c.classnames.len()));
    }
    if !c.down_tasks.is_empty() && c.down_tasks.len() != k {
        return Err(per("--down-task", c.down_tasks.len()));
    }
    if c.templates.len() > 1 && c.templates.len() != k {
        return Err(Error::Config(format!(
            "give one --templates file per --down-shards, or one for all ({} for {k} tasks)",
            c.templates.len()
        )));
    }
    (0..k)
        .map(|i| {
            let known = match (c.down_tasks.get(i), &c.datacomp_eval_dir) {
                (Some(t), Some(dir)) => Some(flyt::datacomp_task_files(dir, t).ok_or_else(|| {
                    Error::Config(format!(
                        "--down-task {t:?} is not a DataComp task the official code knows (known: {})",
                        flyt::DATACOMP_TASKS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ))
                })?),
                _ => None,
            };
            let names = match (c.classnames.get(i), &known) {
                (Some(n), _) => n.clone(),
                (None, Some((n, _))) => n.clone(),
                (None, None) => {
                    return Err(Error::Config(format!(
                        "task {i} ({}) has no class names: give --classnames, or --down-task with --datacomp-eval-dir",
                        c.down_shards[i].display()
                    )));
                }
            };
            let templates = match (c.templates.len(), &known) {
                (1, _) => Some(c.templates[0].clone()),
                (n, _) if n > 1 => Some(c.templates[i].clone()),
                (_, Some((_, t))) => Some(t.clone()),
                _ => None,
            };
            Ok((names, templates))
        })
        .collect()
}

/// The version of each input file (size and modification time; directories list their files), for the
/// checkpoint's sidecar: a resumed or scored run can tell when its inputs changed.
fn input_versions(paths: &[PathBuf]) -> serde_json::Value {
    let mut out = Vec::new();
    let mut add = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            let modified =
                m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
            out.push(json!({"path": p.display().to_string(), "bytes": m.len(), "modified": modified}));
        }
    };
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            files.iter().for_each(|f| add(f));
        } else {
            add(p);
        }
    }
    serde_json::Value::Array(out)
}

/// Draws the upstream and downstream losses of `losses.csv` against the step.
fn loss_plot(csv: &Path, png: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<f64> = line.split(',').filter_map(|x| x.parse().ok()).collect();
        if f.len() >= 3 {
            up.push((f[0], f[1]));
            down.push((f[0], f[2]));
        }
    }
    crate::plot::line_chart(
        png,
        "FLYT training",
        "step",
        "loss",
        &[("upstream (weighted CLIP loss at θ)", &up), ("downstream (CE at θ')", &down)],
    )
}
