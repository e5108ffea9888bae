//! `flyt train flyt|mflyt` (embedding reference mode) and `flyt score`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use flyt::clip::l2_normalize;
use flyt::train::{
    AdamW, DownstreamTask, EmbeddingReference, FlytConfig, FlytState, GluHead, Inner, Mixer, ParamAdamW,
    ReferenceState, ScoringModel, StepLog, UpstreamPool, load_checkpoint, save_checkpoint, train_flyt,
};
use flyt::{PoolEmbeddings, Uid};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::shards::{progress, show};

/// Which scoring model.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// FLYT: a SwiGLU head over the frozen CLIP embeddings [u; t] of each example.
    Flyt(TrainArgs),
    /// M-FLYT: a linear mix of per-method scores (`--scores FILE --columns a,b,...`).
    Mflyt(TrainArgs),
}

/// The reference model FLYT steps through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceMode {
    /// Trainable projections and a logit scale over precomputed frozen embeddings (`--pool`, `--downstream`):
    /// cheap, for CPUs and very large pools.
    Embedding,
    /// The CLIP towers themselves (`--model`), trained on images and captions from WebDataset shards
    /// (`--shards`, `--down-shards`), as in the paper.
    Full,
}

/// Arguments of `flyt train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Reference mode.
    #[arg(long, value_enum, default_value_t = ReferenceMode::Embedding)]
    pub reference: ReferenceMode,
    /// Embedding mode: the upstream pool, a DataComp-layout directory (`<stem>.parquet` + `<stem>.npz` with
    /// `<prefix>_img`/`_txt`).
    #[arg(long, required_if_eq("reference", "embedding"))]
    pub pool: Option<PathBuf>,
    /// Full mode: the pretrained CLIP (Hugging Face folder) that starts the reference and, frozen, gives the
    /// scoring features [u; t].
    #[arg(long, required_if_eq("reference", "full"))]
    pub model: Option<PathBuf>,
    /// Full mode: upstream WebDataset shards (image + caption), or directories of them.
    #[arg(long)]
    pub shards: Vec<PathBuf>,
    /// Full mode: labelled downstream shards (image + `cls`), or directories (repeatable: one task each).
    #[arg(long)]
    pub down_shards: Vec<PathBuf>,
    /// Full mode: class names (one per line; line i is label i), one file per `--down-shards`.
    #[arg(long)]
    pub classnames: Vec<PathBuf>,
    /// Full mode: prompt templates with `{c}` (one per line); default "a photo of a {c}.".
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Full mode: run the towers on at most this many examples at a time (gradient caching: same result,
    /// bounded activation memory, about one extra forward pass), so large batches fit one GPU.
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Embedding prefix in the pool's `.npz` (default: l14, else b32, else the only pair).
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Downstream task `.npz` (repeatable): `image` (M × d frozen image embeddings), `labels` (M integers),
    /// `prompts` (C × T × d frozen text embeddings of class names × templates); with a `captions` array (M × d)
    /// the task's loss is the CLIP loss of its (image, caption) pairs instead (`flyt downstream --captions`).
    /// Embedding mode.
    #[arg(long, required_if_eq("reference", "embedding"))]
    pub downstream: Vec<PathBuf>,
    /// M-FLYT: parquet file(s) with `uid` and score columns (as `flyt scores` writes), joined on uid.
    #[arg(long)]
    pub scores: Vec<PathBuf>,
    /// M-FLYT: the score columns to mix (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Output directory: checkpoint.safetensors + checkpoint.json, losses.csv, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Iterations.
    #[arg(long, default_value_t = 5000)]
    pub steps: usize,
    /// Upstream batch size.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Downstream batch size per task.
    #[arg(long, default_value_t = 3072)]
    pub down_batch: usize,
    /// Reference learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub ref_lr: f64,
    /// Scoring learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub score_lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Reference projection width (default: the embedding width).
    #[arg(long)]
    pub ref_dim: Option<i64>,
    /// FLYT: start the head at s ≈ cos(u, t) (notes §2.1's cos-sim init).
    #[arg(long)]
    pub cos_sim_init: bool,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// Stop (with a checkpoint) after this many steps in this invocation; `--resume` continues. For
    /// time-limited job slots.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Arguments of `flyt score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// A checkpoint written by `flyt train` (`checkpoint.safetensors`, with its `.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// The pool to score (DataComp layout; M-FLYT also needs `--scores`). Or give shards.
    #[arg(long, required_unless_present = "shards")]
    pub pool: Option<PathBuf>,
    /// FLYT: the frozen CLIP that embeds shards given as SHARD... (default: the checkpoint's `--model`).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Shards (or directories) to score directly: embedded with the frozen CLIP (FLYT) or joined with
    /// `--scores` on uid (M-FLYT); one `<shard>_scores.parquet` (uid, key, score) each.
    pub shards: Vec<PathBuf>,
    /// M-FLYT: parquet file(s) with the model's score columns.
    #[arg(long)]
    pub scores: Vec<PathBuf>,
    /// Output directory: `<stem>_scores.parquet` (uid, score) per pool file or shard.
    #[arg(long)]
    pub out: PathBuf,
    /// Device.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn matrix(data: &[f32], dim: usize, dev: Device) -> Tensor {
    Tensor::from_slice(data).view([(data.len() / dim.max(1)) as i64, dim as i64]).to_device(dev)
}

/// Score columns for the pool's uids from parquet files; every uid needs every column.
fn score_matrix(files: &[PathBuf], columns: &[String], uids: &[Uid]) -> anyhow::Result<Vec<f32>> {
    if columns.is_empty() {
        bail!("M-FLYT needs --columns: the score columns to mix");
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
            bail!("score column {col:?} is in none of the --scores files");
        }
    }
    let mut out = Vec::with_capacity(uids.len() * columns.len());
    for u in uids {
        for col in columns {
            match found[col.as_str()].get(u) {
                Some(&v) => out.push(v as f32),
                None => {
                    let missing = uids.iter().filter(|u| !found[col.as_str()].contains_key(u)).count();
                    bail!("{missing} pool uids have no {col:?} score (first: {u}); a missing score is not zero-filled");
                }
            }
        }
    }
    Ok(out)
}

fn read_task(path: &Path, dim: usize, dev: Device) -> anyhow::Result<DownstreamTask> {
    let arrays = flyt::read_npz(path)?;
    let get = |k: &str| {
        arrays.get(k).with_context(|| format!("{}: no array {k:?} (need image, labels, prompts)", path.display()))
    };
    let img = get("image")?;
    let [m, d] = img.shape[..] else { bail!("{}: image must be M × d", path.display()) };
    let prompts = get("prompts")?;
    let [c, t, d2] = prompts.shape[..] else { bail!("{}: prompts must be C × T × d", path.display()) };
    if d != dim || d2 != dim {
        bail!("{}: {d}-d images / {d2}-d prompts, the pool's embeddings are {dim}-d", path.display());
    }
    let labels: Vec<i64> = match &get("labels")?.data {
        flyt::NpyData::I64(v) => v.clone(),
        flyt::NpyData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        flyt::NpyData::U8(v) => v.iter().map(|&x| x as i64).collect(),
        _ => bail!("{}: labels must be integers", path.display()),
    };
    if labels.len() != m {
        bail!("{}: {m} images but {} labels", path.display(), labels.len());
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0 || **l >= c as i64) {
        bail!("{}: label {l} of row {i} is not a class in 0..{c}", path.display());
    }
    let f = |a: &flyt::NpyArray, k: &str| {
        a.to_f32().with_context(|| format!("{}: {k} is not a float array", path.display()))
    };
    Ok(DownstreamTask {
        image: l2_normalize(&matrix(&f(img, "image")?, d, dev)),
        labels: Tensor::from_slice(&labels).to_device(dev),
        prompts: l2_normalize(&Tensor::from_slice(&f(prompts, "prompts")?).view([c as i64, t as i64, d as i64]))
            .to_device(dev),
        captions: match arrays.get("captions") {
            None => None,
            Some(c) => {
                if c.shape != [m, d] {
                    bail!("{}: captions must be M × d like image, shape is {:?}", path.display(), c.shape);
                }
                Some(l2_normalize(&matrix(&f(c, "captions")?, d, dev)))
            }
        },
    })
}

enum Model {
    Glu(GluHead),
    Mix(Mixer, Vec<String>),
}

impl Model {
    fn scorer(&self) -> &dyn ScoringModel {
        match self {
            Model::Glu(h) => h,
            Model::Mix(m, _) => m,
        }
    }
}

/// The head a new run trains: M-FLYT's mixer (z-scored with `features`' statistics, zero weights) or FLYT's
/// SwiGLU head over `dim`-d embeddings (seeded, optionally cos-sim initialised).
fn scoring_model(a: &TrainArgs, mflyt: bool, features: &Tensor, dim: usize, vs: &tch::nn::VarStore) -> Model {
    if mflyt {
        let mut m = Mixer::new(&vs.root(), (a.columns.len() as i64).max(1));
        m.set_stats(features);
        m.zero_init();
        Model::Mix(m, a.columns.clone())
    } else {
        tch::manual_seed(a.seed as i64);
        let mut h = GluHead::new(&vs.root(), dim as i64);
        if a.cos_sim_init {
            h.cos_sim_init(0.01);
        }
        Model::Glu(h)
    }
}

fn flyt_config(a: &TrainArgs) -> FlytConfig {
    FlytConfig {
        steps: a.steps,
        batch: a.batch,
        down_batch: a.down_batch,
        ref_lr: a.ref_lr,
        score_lr: a.score_lr,
        warmup: a.warmup,
        adam: AdamW::default(),
        inner: Inner::AdamW,
        seed: a.seed,
    }
}

/// Runs `flyt train`.
pub fn run(which: Which) -> anyhow::Result<()> {
    let (a, mflyt) = match which {
        Which::Flyt(a) => (a, false),
        Which::Mflyt(a) => (a, true),
    };
    let dev = super::embed::parse_device(&a.device)?;
    if a.reference == ReferenceMode::Full {
        return run_full(a, mflyt, dev);
    }
    let pool_dir = a.pool.clone().context("--pool is needed in embedding mode")?;
    if a.downstream.is_empty() {
        bail!("embedding mode needs --downstream task.npz (made by flyt downstream)");
    }
    let emb = match &a.embeddings {
        Some(p) => PoolEmbeddings::Prefix(p.clone()),
        None => PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(&pool_dir, &emb)?;
    if pool.rows.is_empty() {
        bail!("{}: the pool has no rows", pool_dir.display());
    }
    let dim = pool.dim;
    let uids: Vec<Uid> = pool.rows.iter().map(|r| r.uid).collect();
    let image = l2_normalize(&matrix(&pool.image, dim, dev));
    let text = l2_normalize(&matrix(&pool.text, dim, dev));
    let tasks: Vec<DownstreamTask> =
        a.downstream.iter().map(|p| read_task(p, dim, dev)).collect::<anyhow::Result<_>>()?;
    let vs = tch::nn::VarStore::new(dev);
    let features = if mflyt {
        matrix(&score_matrix(&a.scores, &a.columns, &uids)?, a.columns.len(), dev)
    } else {
        Tensor::cat(&[&image, &text], 1)
    };
    let model = scoring_model(&a, mflyt, &features, dim, &vs);
    let scorer = model.scorer();
    let config = flyt_config(&a);
    tch::manual_seed(a.seed as i64 ^ 0x5eed);
    let ref_dim = a.ref_dim.unwrap_or(dim as i64);
    let mut state = FlytState {
        reference: EmbeddingReference::new(dim as i64, ref_dim, 0.0, config.adam, Kind::Float, dev),
        score_opt: ParamAdamW::new(config.adam, &scorer.named_parameters()),
        step: 0,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let meta = json!({
        "kind": if mflyt { "mflyt" } else { "flyt" },
        "mode": "embedding",
        "dim": dim,
        "ref_dim": ref_dim,
        "columns": a.columns,
        "pool": pool_dir.display().to_string(),
        "pool_files": pool.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "pool_rows": uids.len(),
        "embeddings": pool.prefix,
        "downstream": a.downstream.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "scores": a.scores.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "config": format!("{config:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&[pool_dir.clone()][..], &a.downstream, &a.scores].concat()),
    });
    let pool_t = UpstreamPool { image, text, features };
    drive(&a, mflyt, scorer, &mut state, &meta, config.steps, |st, cb| {
        train_flyt(scorer, st, &pool_t, &tasks, &config, cb)
    })
}

/// The part every mode shares: resume or start, run in checkpoint-sized pieces (`train` runs until its
/// callback says stop), append losses.csv, checkpoint, draw the loss curve, report.
fn drive<R: ReferenceState>(
    a: &TrainArgs,
    mflyt: bool,
    scorer: &dyn ScoringModel,
    state: &mut FlytState<R>,
    meta: &serde_json::Value,
    steps: usize,
    mut train: impl FnMut(&mut FlytState<R>, &mut dyn FnMut(&StepLog) -> flyt::Result<bool>) -> flyt::Result<()>,
) -> anyhow::Result<()> {
    let ckpt = a.out.join("checkpoint.safetensors");
    let csv_path = a.out.join("losses.csv");
    if a.resume {
        let saved = load_checkpoint(&ckpt, scorer, state)?;
        for key in ["kind", "mode", "dim"] {
            if saved.get(key) != meta.get(key) {
                bail!(
                    "{}: its {key} is {}, this run's is {}: it cannot be resumed here",
                    ckpt.display(),
                    saved[key],
                    meta[key]
                );
            }
        }
        eprintln!("flyt: resuming at step {} of {steps}", state.step);
    } else if ckpt.exists() {
        bail!("{} exists: pass --resume to continue it, or choose another --out", ckpt.display());
    } else {
        std::fs::write(&csv_path, "step,up_loss,down_loss,ref_grad_norm,score_grad_norm,ref_lr,score_lr\n")?;
    }
    let mut csv = std::fs::OpenOptions::new().append(true).create(true).open(&csv_path)?;
    let pb = progress(steps as u64, if mflyt { "mflyt" } else { "flyt" });
    pb.set_position(state.step as u64);
    let start = Instant::now();
    let first = state.step;
    let every = a.checkpoint_every.max(1);
    let mut last: Option<StepLog> = None;
    let stop = a.stop_after.map_or(steps, |n| (first + n).min(steps));
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
            )?;
        }
        csv.flush()?;
        save_checkpoint(&ckpt, scorer, state, meta)?;
        last = rows.last().cloned().or(last);
    }
    pb.finish_and_clear();
    let plot = loss_plot(&csv_path, &a.out.join("loss.png"))?;
    let secs = start.elapsed().as_secs_f64();
    let done = state.step - first;
    match last {
        Some(l) => println!(
            "trained {} steps {first}..{} in {secs:.1} s ({:.2} s/step): upstream loss {:.4}, downstream loss {:.4}; \
             wrote {}, {} and {}",
            done,
            state.step,
            secs / done.max(1) as f64,
            l.up_loss,
            l.down_loss,
            show(&ckpt),
            show(&csv_path),
            show(&plot)
        ),
        None => println!("nothing to do: {} is at step {} of {steps}", show(&ckpt), state.step),
    }
    Ok(())
}

/// Full mode: the CLIP towers as the reference over WebDataset shards.
fn run_full(a: TrainArgs, mflyt: bool, dev: Device) -> anyhow::Result<()> {
    use flyt::clip::{ClipConfig, ClipTokenizer, Embedder, EmbedderConfig, preprocess};
    use flyt::train::{FullPool, FullReference, FullTask, train_flyt_full};
    let model_dir = a.model.clone().context("--model is needed in full mode")?;
    if a.shards.is_empty() || a.down_shards.is_empty() {
        bail!("full mode needs --shards (upstream) and --down-shards (labelled downstream)");
    }
    if a.classnames.len() != a.down_shards.len() {
        bail!("give one --classnames file per --down-shards ({} and {})", a.classnames.len(), a.down_shards.len());
    }
    let config = ClipConfig::from_file(model_dir.join("config.json"))?;
    let crop = config.vision_config.image_size as usize;
    let tokenizer = ClipTokenizer::for_model(&model_dir, &config)?;
    let embedder = Embedder::load(&model_dir, EmbedderConfig { device: dev, ..Default::default() })?;
    let dim = embedder.dim();
    // upstream: the frozen CLIP's [u; t] for the scoring model, preprocessed images and caption tokens
    let mut images = Vec::new();
    let mut captions = Vec::new();
    let mut uids = Vec::new();
    let mut feats_img = Vec::new();
    let mut feats_txt = Vec::new();
    let mut rejected = 0usize;
    for shard in crate::shards::expand_shards(&a.shards)? {
        let mut reader = flyt::ShardReader::open(&shard, flyt::ReaderConfig::default())?;
        let mut samples = Vec::new();
        for r in reader.by_ref() {
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
        bail!("no upstream samples could be read");
    }
    let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
    let ids = tokenizer.encode_batch(&refs);
    let templates = match &a.templates {
        Some(p) => {
            std::fs::read_to_string(p)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        }
        None => vec!["a photo of a {c}.".to_string()],
    };
    if templates.is_empty() || templates.iter().any(|t| !t.contains("{c}")) {
        bail!("--templates needs one or more lines, each with {{c}} for the class name");
    }
    let mut tasks = Vec::new();
    for (dir, names) in a.down_shards.iter().zip(&a.classnames) {
        let classes: Vec<String> = std::fs::read_to_string(names)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let (mut imgs, mut labels) = (Vec::new(), Vec::new());
        let cfg = flyt::ReaderConfig::default().require_caption(false).require_label(true);
        for shard in crate::shards::expand_shards(std::slice::from_ref(dir))? {
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
            bail!("{}: no labelled images", dir.display());
        }
        let texts: Vec<String> =
            classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{c}", c))).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let prompts = tokenizer.encode_batch(&refs).view([classes.len() as i64, templates.len() as i64, -1]);
        tasks.push(FullTask { images: imgs, labels, prompts, captions: None });
    }
    let features = if mflyt {
        matrix(&score_matrix(&a.scores, &a.columns, &uids)?, a.columns.len(), dev)
    } else {
        Tensor::cat(&[matrix(&feats_img, dim, dev), matrix(&feats_txt, dim, dev)], 1)
    };
    let vs = tch::nn::VarStore::new(dev);
    let model = scoring_model(&a, mflyt, &features, dim, &vs);
    let scorer = model.scorer();
    let fc = flyt_config(&a);
    let weights = model_dir.join("model.safetensors");
    let mut reference = FullReference::new(&config, Some(&weights), fc.adam, Kind::Float, dev)?;
    reference.set_chunk(a.chunk);
    let mut state = FlytState { reference, score_opt: ParamAdamW::new(fc.adam, &scorer.named_parameters()), step: 0 };
    if rejected > 0 {
        eprintln!("flyt: {rejected} samples left out (rejected or unreadable)");
    }
    let pool = FullPool { images, ids, features };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let meta = json!({
        "kind": if mflyt { "mflyt" } else { "flyt" },
        "mode": "full",
        "dim": dim,
        "columns": a.columns,
        "model": model_dir.display().to_string(),
        "shards": a.shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "down_shards": a.down_shards.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "classnames": a.classnames.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "pool_rows": uids.len(),
        "config": format!("{fc:?}"),
        "flyt_version": env!("CARGO_PKG_VERSION"),
        "inputs": input_versions(&[&a.shards[..], &a.down_shards, &a.classnames, &a.scores, &[model_dir.join("model.safetensors")]].concat()),
    });
    drive(&a, mflyt, scorer, &mut state, &meta, fc.steps, |st, cb| train_flyt_full(scorer, st, &pool, &tasks, &fc, cb))
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
fn loss_plot(csv: &Path, png: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
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

/// Runs `flyt score`: per pool file, `<stem>_scores.parquet` with `uid` and `score`.
pub fn run_score(a: ScoreArgs) -> anyhow::Result<()> {
    let dev = super::embed::parse_device(&a.device)?;
    let side = a.model.with_extension("json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&side).with_context(|| format!("reading {}", side.display()))?)
            .with_context(|| format!("{}: not JSON", side.display()))?;
    let meta = &json["meta"];
    let kind = meta["kind"].as_str().unwrap_or_default().to_string();
    let dim = meta["dim"].as_u64().with_context(|| format!("{}: no meta.dim", side.display()))? as usize;
    let columns: Vec<String> = meta["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let vs = tch::nn::VarStore::new(dev);
    let model = match kind.as_str() {
        "flyt" => Model::Glu(GluHead::new(&vs.root(), dim as i64)),
        "mflyt" => Model::Mix(Mixer::new(&vs.root(), columns.len() as i64), columns.clone()),
        k => bail!("{}: unknown model kind {k:?}", side.display()),
    };
    let scorer = model.scorer();
    flyt::train::load_model(&a.model, scorer)?;
    let step = json["step"].as_u64().unwrap_or(0);
    std::fs::create_dir_all(&a.out)?;
    let Some(pool_dir) = &a.pool else {
        return score_shards(&a, &model, meta, dim, step, dev);
    };
    let emb = match (&model, meta["embeddings"].as_str()) {
        (Model::Mix(..), _) => PoolEmbeddings::None,
        (_, Some(p)) => PoolEmbeddings::Prefix(p.to_string()),
        _ => PoolEmbeddings::Auto,
    };
    let pool = flyt::read_pool(pool_dir, &emb)?;
    let uids: Vec<Uid> = pool.rows.iter().map(|r| r.uid).collect();
    let scores: Vec<f32> = tch::no_grad(|| -> anyhow::Result<Vec<f32>> {
        let s = match &model {
            Model::Glu(h) => {
                if pool.dim != dim {
                    bail!("the pool's embeddings are {}-d, the model's {dim}-d", pool.dim);
                }
                let x = Tensor::cat(
                    &[l2_normalize(&matrix(&pool.image, dim, dev)), l2_normalize(&matrix(&pool.text, dim, dev))],
                    1,
                );
                h.forward(&x)
            }
            Model::Mix(m, cols) => m.forward(&matrix(&score_matrix(&a.scores, cols, &uids)?, cols.len(), dev)),
        };
        Ok(Vec::<f32>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float))?)
    })?;
    // one output per pool file, rows in the pool's order
    let mut at = 0;
    for (file, &n) in pool.files.iter().zip(&pool.file_rows) {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let ids: Vec<(Uid, String)> = uids[at..at + n].iter().map(|u| (*u, String::new())).collect();
        let out = a.out.join(format!("{stem}_scores.parquet"));
        flyt::write_score_table(&out, &ids, &[], &[("score", &scores[at..at + n])])?;
        at += n;
    }
    println!(
        "scored {} uids with the {kind} model at step {step}; wrote {} files to {}",
        uids.len(),
        pool.files.len(),
        show(&a.out)
    );
    Ok(())
}

/// `flyt score SHARD...`: per shard, the head's scores of the frozen CLIP's embeddings (or the mixer's of the
/// joined score columns).
fn score_shards(
    a: &ScoreArgs,
    model: &Model,
    meta: &serde_json::Value,
    dim: usize,
    step: u64,
    dev: Device,
) -> anyhow::Result<()> {
    use flyt::clip::{Embedder, EmbedderConfig};
    let shards = crate::shards::expand_shards(&a.shards)?;
    let embedder = match model {
        Model::Glu(_) => {
            let clip = a.clip.clone().or_else(|| meta["model"].as_str().map(PathBuf::from)).context(
                "scoring shards with a FLYT head needs the frozen CLIP: pass --clip DIR (the one the pool was embedded with)",
            )?;
            let e = Embedder::load(&clip, EmbedderConfig { device: dev, ..Default::default() })?;
            if e.dim() != dim {
                bail!("{}: {}-d embeddings, the head takes {dim}-d", clip.display(), e.dim());
            }
            Some(e)
        }
        Model::Mix(..) => None,
    };
    let mut total = 0;
    for shard in &shards {
        let stem = flyt::shard_name(shard);
        let (ids, scores): (Vec<(Uid, String)>, Vec<f32>) = match (model, &embedder) {
            (Model::Glu(h), Some(e)) => {
                let mut reader = flyt::ShardReader::open(shard, flyt::ReaderConfig::default())?;
                let samples: Vec<flyt::Sample> = reader
                    .by_ref()
                    .filter_map(|r| match r {
                        Ok(flyt::Record::Sample(s)) => Some(*s),
                        _ => None,
                    })
                    .collect();
                let (emb, _) = e.embed(samples.into_iter());
                let x = Tensor::cat(&[matrix(&emb.image, dim, dev), matrix(&emb.text, dim, dev)], 1);
                let s = tch::no_grad(|| h.forward(&x));
                (emb.ids, Vec::<f32>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float))?)
            }
            (Model::Mix(m, cols), _) => {
                let mut reader = flyt::ShardReader::open(shard, flyt::ReaderConfig::default().require_image(false))?;
                let ids: Vec<(Uid, String)> = reader
                    .by_ref()
                    .filter_map(|r| match r {
                        Ok(flyt::Record::Sample(s)) => Some((s.uid, s.key.clone())),
                        _ => None,
                    })
                    .collect();
                let uids: Vec<Uid> = ids.iter().map(|p| p.0).collect();
                let x = matrix(&score_matrix(&a.scores, cols, &uids)?, cols.len(), dev);
                let s = tch::no_grad(|| m.forward(&x));
                (ids, Vec::<f32>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float))?)
            }
            (Model::Glu(_), None) => bail!("no CLIP to embed the shards with"),
        };
        total += ids.len();
        flyt::write_score_table(a.out.join(format!("{stem}_scores.parquet")), &ids, &[], &[("score", &scores)])?;
    }
    println!("scored {total} samples of {} shards with the model at step {step}; wrote {}", shards.len(), show(&a.out));
    Ok(())
}
