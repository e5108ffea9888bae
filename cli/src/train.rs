//! `flyt train flyt|mflyt` and `flyt score`.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt::train::{FlytConfig, ModelKind};
use flyt_pipelines::{ReferenceMode, ScoreConfig, TrainConfig, score, train};

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
pub enum Reference {
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
    #[arg(long, value_enum, default_value_t = Reference::Embedding)]
    pub reference: Reference,
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
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
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
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
}

/// Runs `flyt train`.
pub fn run(which: Which) -> anyhow::Result<()> {
    let (a, kind) = match which {
        Which::Flyt(a) => (a, ModelKind::Flyt),
        Which::Mflyt(a) => (a, ModelKind::Mflyt),
    };
    let r = train(&TrainConfig {
        kind,
        reference: match a.reference {
            Reference::Embedding => ReferenceMode::Embedding,
            Reference::Full => ReferenceMode::Full,
        },
        pool: a.pool,
        model: a.model,
        shards: a.shards,
        down_shards: a.down_shards,
        classnames: a.classnames,
        templates: a.templates,
        chunk: a.chunk,
        embeddings: a.embeddings,
        downstream: a.downstream,
        scores: a.scores,
        columns: a.columns,
        out: a.out,
        resume: a.resume,
        training: FlytConfig {
            steps: a.steps,
            batch: a.batch,
            down_batch: a.down_batch,
            ref_lr: a.ref_lr,
            score_lr: a.score_lr,
            warmup: a.warmup,
            seed: a.seed,
            ..FlytConfig::default()
        },
        ref_dim: a.ref_dim,
        cos_sim_init: a.cos_sim_init,
        checkpoint_every: a.checkpoint_every,
        stop_after: a.stop_after,
        device: a.device,
    })?;
    for n in &r.notes {
        eprintln!("flyt: {n}");
    }
    let done = r.last - r.first;
    match &r.log {
        Some(l) => println!(
            "trained {done} steps {}..{} in {:.1} s ({:.2} s/step): upstream loss {:.4}, downstream loss {:.4}; \
             wrote {}, {} and {}",
            r.first,
            r.last,
            r.seconds,
            r.seconds / done.max(1) as f64,
            l.up_loss,
            l.down_loss,
            r.checkpoint.display(),
            r.losses.display(),
            r.plot.display()
        ),
        None => println!("nothing to do: {} is at step {} of {}", r.checkpoint.display(), r.last, r.steps),
    }
    Ok(())
}

/// Runs `flyt score`.
pub fn run_score(a: ScoreArgs) -> anyhow::Result<()> {
    let from_pool = a.pool.is_some();
    let r = score(&ScoreConfig {
        model: a.model,
        pool: a.pool,
        clip: a.clip,
        shards: a.shards,
        scores: a.scores,
        out: a.out.clone(),
        device: a.device,
    })?;
    if from_pool {
        println!(
            "scored {} uids with the {} model at step {}; wrote {} files to {}",
            r.rows,
            r.kind.name(),
            r.step,
            r.files,
            a.out.display()
        );
    } else {
        println!(
            "scored {} samples of {} shards with the model at step {}; wrote {}",
            r.rows,
            r.files,
            r.step,
            a.out.display()
        );
    }
    Ok(())
}
