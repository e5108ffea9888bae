//! `flyt train flyt|mflyt`: a FLYT scoring head or an M-FLYT score mixer, trained with the one-step-lookahead
//! hypergradient from downstream tasks. Two reference modes: projections over a pool's frozen embeddings
//! (`embedding`), or the CLIP towers over WebDataset shards (`full`, the paper's). Checkpoints, `losses.csv`
//! and a loss curve land in the output directory; a run resumes from its checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flyt::clip::l2_normalize;
use flyt::train::{
    DownstreamTask, EmbeddingReference, FlytConfig, FlytState, GluHead, Mixer, ModelKind, ParamAdamW, ReferenceState,
    ScoringModel, StepLog, UpstreamPool, load_checkpoint, save_checkpoint, train_flyt,
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
    /// Full mode: class names, one file per `down_shards`.
    pub classnames: Vec<PathBuf>,
    /// Full mode: prompt templates with `{c}` (default "a photo of a {c}.").
    pub templates: Option<PathBuf>,
    /// Full mode: run the towers on at most this many examples at a time (gradient caching).
    pub chunk: Option<usize>,
    /// Embedding mode: the pool's `.npz` prefix (default: l14, else b32, else the only pair).
    pub embeddings: Option<String>,
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
            templates: None,
            chunk: None,
            embeddings: None,
            downstream: Vec::new(),
            scores: Vec::new(),
            columns: Vec::new(),
            out: PathBuf::new(),
            resume: false,
            training: FlytConfig::default(),
            ref_dim: None,
            cos_sim_init: false,
            checkpoint_every: 500,
            stop_after: None,
            device: DeviceSpec::Auto,
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
    /// Samples left out (full mode), and lines worth telling (resumed at step N).
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

/// The head a new run trains: M-FLYT's mixer (z-scored with `features`' statistics, zero weights) or FLYT's
/// SwiGLU head over `dim`-d embeddings (seeded, optionally cos-sim initialised).
fn scoring_model(c: &TrainConfig, features: &Tensor, dim: usize, vs: &tch::nn::VarStore) -> Model {
    match c.kind {
        ModelKind::Mflyt => {
            let mut m = Mixer::new(&vs.root(), (c.columns.len() as i64).max(1));
            m.set_stats(features);
            m.zero_init();
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

/// Trains (or resumes) a FLYT head or an M-FLYT mixer.
pub fn train(c: &TrainConfig) -> Result<TrainReport> {
    let dev = c.device.resolve()?;
    if c.reference == ReferenceMode::Full {
        return train_full(c, dev);
    }
    let pool_dir = c.pool.clone().ok_or_else(|| Error::Config("--pool is needed in embedding mode".into()))?;
    if c.downstream.is_empty() {
        return Err(Error::Config("embedding mode needs --downstream task.npz (made by flyt downstream)".into()));
    }
    let emb = match &c.embeddings {
        Some(p) => PoolEmbeddings::Prefix(p.clone()),
        None => PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(&pool_dir, &emb)?;
    if pool.rows.is_empty() {
        return Err(Error::Incomplete(format!("{}: the pool has no rows", pool_dir.display())));
    }
    let dim = pool.dim;
    let uids: Vec<Uid> = pool.rows.iter().map(|r| r.uid).collect();
    let image = l2_normalize(&matrix(&pool.image, dim, dev));
    let text = l2_normalize(&matrix(&pool.text, dim, dev));
    let tasks: Vec<DownstreamTask> =
        c.downstream.iter().map(|p| DownstreamTask::from_npz(p, dim, dev)).collect::<flyt::Result<_>>()?;
    let vs = tch::nn::VarStore::new(dev);
    let features = match c.kind {
        ModelKind::Mflyt => matrix(&score_matrix(&c.scores, &c.columns, &uids)?, c.columns.len(), dev),
        ModelKind::Flyt => Tensor::cat(&[&image, &text], 1),
    };
    let model = scoring_model(c, &features, dim, &vs);
    let scorer = model.scorer();
    let config = c.training.clone();
    tch::manual_seed(c.training.seed as i64 ^ 0x5eed);
    let ref_dim = c.ref_dim.unwrap_or(dim as i64);
    let mut state = FlytState {
        reference: EmbeddingReference::new(dim as i64, ref_dim, 0.0, config.adam, Kind::Float, dev),
        score_opt: ParamAdamW::new(config.adam, &scorer.named_parameters()),
        step: 0,
    };
    crate::jobs::create_dir(&c.out)?;
    let meta = json!({
        "kind": c.kind.name(),
        "mode": "embedding",
        "dim": dim,
        "ref_dim": ref_dim,
        "columns": c.columns,
        "pool": pool_dir.display().to_string(),
        "pool_files": pool.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "pool_rows": uids.len(),
        "embeddings": pool.prefix,
        "downstream": c.downstream.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "scores": c.scores.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "config": format!("{config:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&[pool_dir.clone()][..], &c.downstream, &c.scores].concat()),
    });
    let pool_t = UpstreamPool { image, text, features };
    drive(c, scorer, &mut state, &meta, config.steps, Vec::new(), |st, cb| {
        train_flyt(scorer, st, &pool_t, &tasks, &config, cb)
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
    use flyt::train::{FullPool, FullReference, FullTask, train_flyt_full};
    let model_dir = c.model.clone().ok_or_else(|| Error::Config("--model is needed in full mode".into()))?;
    if c.shards.is_empty() || c.down_shards.is_empty() {
        return Err(Error::Config(
            "full mode needs --shards (upstream) and --down-shards (labelled downstream)".into(),
        ));
    }
    if c.classnames.len() != c.down_shards.len() {
        return Err(Error::Config(format!(
            "give one --classnames file per --down-shards ({} and {})",
            c.classnames.len(),
            c.down_shards.len()
        )));
    }
    let config = ClipConfig::from_file(model_dir.join("config.json"))?;
    let crop = config.vision_config.image_size as usize;
    let tokenizer = ClipTokenizer::for_model(&model_dir, &config)?;
    let embedder = Embedder::load(&model_dir, EmbedderConfig { device: dev, ..Default::default() })?;
    let dim = embedder.dim();
    // upstream: the frozen CLIP's [u; t] for the scoring model, preprocessed images and caption tokens
    let (mut images, mut captions, mut uids, mut feats_img, mut feats_txt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rejected = 0usize;
    for shard in expand_shards(&c.shards)? {
        let mut samples = Vec::new();
        for r in flyt::ShardReader::open(&shard, flyt::ReaderConfig::default())? {
            match r? {
                flyt::Record::Sample(s) => samples.push(*s),
                flyt::Record::Rejected(_) => rejected += 1,
            }
        }
        let by_key: HashMap<String, (Vec<u8>, String)> = samples
            .iter()
            .map(|s| (s.key.clone(), (s.image().unwrap_or_default().to_vec(), s.caption.clone().unwrap_or_default())))
            .collect();
        let (emb, bad) = embedder.embed(samples.into_iter());
        rejected += bad.len();
        for (i, (uid, key)) in emb.ids.iter().enumerate() {
            let (bytes, caption) = &by_key[key];
            match preprocess::preprocess(bytes, crop, crop) {
                Ok(px) => {
                    images.push(px);
                    captions.push(caption.clone());
                    uids.push(*uid);
                    feats_img.extend_from_slice(&emb.image[i * dim..(i + 1) * dim]);
                    feats_txt.extend_from_slice(&emb.text[i * dim..(i + 1) * dim]);
                }
                Err(_) => rejected += 1,
            }
        }
    }
    if images.is_empty() {
        return Err(Error::Incomplete("no upstream samples could be read".into()));
    }
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let ids = tokenizer.encode_batch(&refs);
    let templates = templates(c.templates.as_deref())?;
    let mut tasks = Vec::new();
    for (dir, names) in c.down_shards.iter().zip(&c.classnames) {
        let classes = lines(names)?;
        let (mut imgs, mut labels) = (Vec::new(), Vec::new());
        let cfg = flyt::ReaderConfig::default().require_caption(false).require_label(true);
        for shard in expand_shards(std::slice::from_ref(dir))? {
            for r in flyt::ShardReader::open(&shard, cfg.clone())? {
                if let flyt::Record::Sample(s) = r? {
                    match (s.label, s.image().map(|b| preprocess::preprocess(b, crop, crop))) {
                        (Some(l), Some(Ok(px))) if l >= 0 && (l as usize) < classes.len() => {
                            imgs.push(px);
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
        tasks.push(FullTask { images: imgs, labels, prompts, captions: None });
    }
    let features = match c.kind {
        ModelKind::Mflyt => matrix(&score_matrix(&c.scores, &c.columns, &uids)?, c.columns.len(), dev),
        ModelKind::Flyt => Tensor::cat(&[matrix(&feats_img, dim, dev), matrix(&feats_txt, dim, dev)], 1),
    };
    let vs = tch::nn::VarStore::new(dev);
    let model = scoring_model(c, &features, dim, &vs);
    let scorer = model.scorer();
    let fc = c.training.clone();
    let weights = model_dir.join("model.safetensors");
    let mut reference = FullReference::new(&config, Some(&weights), fc.adam, Kind::Float, dev)?;
    reference.set_chunk(c.chunk);
    let mut state = FlytState { reference, score_opt: ParamAdamW::new(fc.adam, &scorer.named_parameters()), step: 0 };
    let notes =
        if rejected > 0 { vec![format!("{rejected} samples left out (rejected or unreadable)")] } else { vec![] };
    let pool = FullPool { images, ids, features };
    crate::jobs::create_dir(&c.out)?;
    let meta = json!({
        "kind": c.kind.name(),
        "mode": "full",
        "dim": dim,
        "columns": c.columns,
        "model": model_dir.display().to_string(),
        "shards": c.shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "down_shards": c.down_shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "classnames": c.classnames.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "pool_rows": uids.len(),
        "config": format!("{fc:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&c.shards[..], &c.down_shards, &c.classnames, &c.scores, std::slice::from_ref(&weights)].concat()),
    });
    drive(c, scorer, &mut state, &meta, fc.steps, notes, |st, cb| train_flyt_full(scorer, st, &pool, &tasks, &fc, cb))
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
