//! `flyt train flyt|mflyt` and `flyt score`.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt::train::{FlytConfig, ModelKind, Multitask};
use flyt_pipelines::{MixerInputs, ReferenceMode, ScoreConfig, TrainConfig, score, train};

/// Which scoring model.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// FLYT: a SwiGLU head over the frozen CLIP embeddings [u; t] of each example.
    Flyt(Box<TrainArgs>),
    /// M-FLYT: a linear mix of per-method scores (`--scores FILE --columns a,b,...`).
    Mflyt(Box<TrainArgs>),
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

/// M-FLYT's mixer inputs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inputs {
    /// The raw scores (the official MixingModel).
    Raw,
    /// z-scored with the pool's statistics.
    Zscore,
}

/// How several downstream tasks combine.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tasks {
    /// One θ′, the mean loss (flyt's).
    Mean,
    /// A θ′ per task, as the official loop.
    Official,
}

/// The precision of a step.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// float32.
    F32,
    /// float64.
    F64,
}

/// A downstream logit scale: learned from a start, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale(pub Option<f64>);

fn logit_scale(s: &str) -> Result<Scale, String> {
    if s == "none" {
        return Ok(Scale(None));
    }
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| Scale(Some(x)))
        .ok_or_else(|| format!("a log-scale or `none`, got {s:?}"))
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
    /// Full mode: class names (one per line; line i is label i), one file per `--down-shards` (default: the
    /// --down-task's, from --datacomp-eval-dir).
    #[arg(long)]
    pub classnames: Vec<PathBuf>,
    /// Full mode: prompt templates with `{c}` (one per line), one file per `--down-shards` or one for all. Default:
    /// each task's DataComp templates (--down-task with --datacomp-eval-dir), one drawn per class per step as the
    /// official code does; else the single prompt "a photo of a {c}.".
    #[arg(long)]
    pub templates: Vec<PathBuf>,
    /// Full mode: the DataComp task each `--down-shards` is (imagenet, cifar10, mnist, ...: the official
    /// `--downstream_task_names`), one per `--down-shards`.
    #[arg(long)]
    pub down_task: Vec<String>,
    /// DataComp's evaluation directory, where each task's classnames.txt and zeroshot_classification_templates.txt
    /// are (the official `--datacomp_eval_dir`).
    #[arg(long)]
    pub datacomp_eval_dir: Option<PathBuf>,
    /// Full mode: run the towers on at most this many examples at a time (gradient caching: same result,
    /// bounded activation memory, about one extra forward pass), so large batches fit one GPU.
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Embedding prefix in the pool's `.npz`. Default: b32 when present — the official scorer reads OpenAI
    /// ViT-B/32's [u; t] — else l14, else the only pair.
    #[arg(long)]
    pub embeddings: Option<String>,
    /// Leave the pool on disk and read each step's rows in place, so memory does not grow with the pool; the
    /// steps are those of the in-memory pool. Embedding mode: the `.npz` arrays must be stored, as `np.savez`
    /// and `flyt embed` write them. Full mode: the shards must be uncompressed tars, left unchanged while
    /// training; the frozen CLIP's [u; t] go to a scratch file beside --out (deleted at exit), and the next
    /// step's images are read and decoded on all cores while a step runs.
    #[arg(long)]
    pub stream_pool: bool,
    /// Embedding mode: the frozen CLIP (Hugging Face folder) the pool's embeddings came from; the reference
    /// starts at its logit scale, as the official reference (the pretrained CLIP) does. Default: the curation's
    /// model when --pool is a `flyt curate` output's embeddings/, else OpenAI CLIP's ln 100 (DataComp's
    /// embeddings are OpenAI's).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Embedding mode: the reference's starting logit scale (log τ) instead of the frozen CLIP's.
    #[arg(long)]
    pub ref_logit_scale: Option<f64>,
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
    /// Iterations (the paper's 5000: 20.48 M upstream samples at batch 4096).
    #[arg(long, default_value_t = 5000)]
    pub steps: usize,
    /// Upstream batch size (the paper's global 4096), drawn with replacement.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Downstream batch size per task (the paper's global 3072).
    #[arg(long, default_value_t = 3072)]
    pub down_batch: usize,
    /// Reference learning rate (the paper's 5e-5; open_clip's warmup + cosine schedule).
    #[arg(long, default_value_t = 5e-5)]
    pub ref_lr: f64,
    /// Scoring learning rate (the paper's 1e-3; warmup + cosine).
    #[arg(long, default_value_t = 1e-3)]
    pub score_lr: f64,
    /// Warmup steps of both schedules (the paper's 100).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Reference projection width (default: the embedding width).
    #[arg(long)]
    pub ref_dim: Option<i64>,
    /// FLYT: start the head at s ≈ cos(u, t) (notes §2.1's cos-sim init; the official --cos_sim_init, off by
    /// default there too). Without it the head starts as PyTorch's nn.Linear does (uniform ±1/√fan_in).
    #[arg(long)]
    pub cos_sim_init: bool,
    /// M-FLYT: the mixer's inputs. raw (default): the scores as they are, PyTorch's random init (the official
    /// MixingModel); zscore: each z-scored with the pool's statistics (saved with the mixer), zero init — ahead in
    /// short runs, where raw inputs leave the mix flat (the README's evaluation has both).
    #[arg(long, value_enum, default_value_t = Inputs::Raw)]
    pub mixer_inputs: Inputs,
    /// Several downstream tasks. mean (default, a deliberate difference): one θ′ for all, the mean of their
    /// losses, the objective the paper writes; official: a θ′ per task from the same gradient, the AdamW moments
    /// updated once per task and one step counter shared with the downstream logit scale, as the official loop
    /// runs. With one task the two differ only in that counter.
    #[arg(long, value_enum, default_value_t = Tasks::Mean)]
    pub multitask: Tasks,
    /// Keep the reference model fixed (the official script without --update_reference_model; the authors'
    /// command updates it, as flyt does by default).
    #[arg(long)]
    pub freeze_reference: bool,
    /// The downstream logit scale ρ: learned from this log-scale (default 2.65926 = ln(1/0.07), the authors'
    /// command), or `none`: no scale (1), not learned (the official default without --downstream_logit_scale).
    #[arg(long, default_value = "2.65926", value_parser = logit_scale)]
    pub downstream_logit_scale: Scale,
    /// Full mode: no augmentation (default: RandomResizedCrop, scale (0.9, 1.0), of the upstream and downstream
    /// images each step, seeded: open_clip's training transform, which the official code trains through).
    #[arg(long)]
    pub no_augment: bool,
    /// Initial weights under the official code's names, so two implementations start from the same point: the
    /// head's glu_model.layers.0.{w1,w2,w3}.{weight,bias} (a mixer's layers.0.{weight,bias}), the reference's
    /// (full mode: open_clip's names; embedding mode: w_img, w_txt, logit_scale) and downstream_logit_scale.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Replay explicit batches instead of the seeded draws: a safetensors file with, per step n, int64
    /// step{n}.upstream, step{n}.task{k}.rows and step{n}.task{k}.templates (one template per class), or a
    /// --trace directory (each traced step's batch.*).
    #[arg(long)]
    pub batches: Option<PathBuf>,
    /// Write every intermediate of the --trace-steps into this directory, one step{N}.safetensors each (see the
    /// README's FLYT section for the names).
    #[arg(long, requires = "trace_steps")]
    pub trace: Option<PathBuf>,
    /// The steps to trace (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub trace_steps: Vec<usize>,
    /// Precision of the whole step: f32, or f64 (to compare with another implementation to the last digits).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Full mode on CUDA: the official `amp` path (--precision amp there) — the towers under fp16 autocast, the
    /// losses scaled by a dynamic loss scaler (×0.5 and the step skipped on an overflow, ×2 after 2000 clean
    /// updates). Default off: f32. Refused on a CPU, which stays f32.
    #[arg(long)]
    pub amp: bool,
    /// The loss scaler's start with --amp (the official --scaler_scale in its amp runs).
    #[arg(long, default_value_t = 1024.0)]
    pub scaler_scale: f64,
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
        down_tasks: a.down_task,
        datacomp_eval_dir: a.datacomp_eval_dir,
        chunk: a.chunk,
        embeddings: a.embeddings,
        stream_pool: a.stream_pool,
        clip: a.clip,
        ref_logit_scale: a.ref_logit_scale,
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
        mixer_inputs: match a.mixer_inputs {
            Inputs::Raw => MixerInputs::Raw,
            Inputs::Zscore => MixerInputs::Zscore,
        },
        multitask: match a.multitask {
            Tasks::Mean => Multitask::Mean,
            Tasks::Official => Multitask::Official,
        },
        freeze_reference: a.freeze_reference,
        downstream_logit_scale: a.downstream_logit_scale.0,
        augment: !a.no_augment,
        init: a.init,
        batches: a.batches,
        trace: a.trace,
        trace_steps: a.trace_steps,
        f64: a.dtype == Dtype::F64,
        amp: a.amp,
        scaler_scale: a.scaler_scale,
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
