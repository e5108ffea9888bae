//! `flyt downstream`.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt_pipelines::{DownstreamConfig, downstream};

/// Arguments of `flyt downstream`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The frozen CLIP (a Hugging Face folder) whose embeddings the pool uses.
    #[arg(long)]
    pub model: PathBuf,
    /// Class names, one per line (DataComp's `classnames.txt`); line i is label i. Default: the --task's.
    #[arg(long, required_unless_present = "task")]
    pub classnames: Option<PathBuf>,
    /// Prompt templates, one per line with `{c}` for the class name (DataComp's
    /// `zeroshot_classification_templates.txt`); default: the --task's, else "a photo of a {c}.".
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// The DataComp task the shards are (imagenet, cifar10, mnist, ...: the official code's names): its class names
    /// and templates come from --datacomp-eval-dir, as the official code reads them.
    #[arg(long, requires = "datacomp_eval_dir")]
    pub task: Option<String>,
    /// DataComp's evaluation directory (`wds_<task>_test/classnames.txt` and
    /// `zeroshot_classification_templates.txt`).
    #[arg(long)]
    pub datacomp_eval_dir: Option<PathBuf>,
    /// Output `.npz`: `image` (M × d), `labels` (M), `prompts` (C × T × d), all from the frozen CLIP.
    #[arg(long)]
    pub out: PathBuf,
    /// Also store the samples' caption embeddings (`captions`, M × d): `flyt train` then uses the downstream CLIP
    /// loss over (image, caption) pairs for this task (notes §2.4 (b)). Samples need a `txt` caption.
    #[arg(long)]
    pub captions: bool,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
    /// Labelled shards (images with `cls`), or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

/// Runs `flyt downstream`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let r = downstream(&DownstreamConfig {
        model: a.model,
        classnames: a.classnames,
        templates: a.templates,
        task: a.task,
        datacomp_eval_dir: a.datacomp_eval_dir,
        out: a.out.clone(),
        captions: a.captions,
        batch_size: a.batch_size,
        device: a.device,
        shards: a.shards,
    })?;
    for line in &r.left_out {
        eprintln!("flyt: {line}");
    }
    println!(
        "{} images of {} classes, {} templates ({}-d); {} rejected, {} with a label outside the classes; wrote {}",
        r.images,
        r.classes,
        r.templates,
        r.dim,
        r.rejected,
        r.bad_label,
        a.out.display()
    );
    Ok(())
}
