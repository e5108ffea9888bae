//! `flyt embed`.

use std::path::PathBuf;

use flyt::DeviceSpec;
use flyt_pipelines::{Dtype, EmbedConfig, embed};

/// Stored embedding precision.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// float16, as DataComp stores embeddings.
    F16,
    /// float32.
    F32,
}

/// Arguments of `flyt embed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face CLIP folder: config.json, model.safetensors, vocab.json + merges.txt (or tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory: per shard `<shard>.npz` (embeddings) and `<shard>.parquet` (uid, key, text,
    /// original_width, original_height, CLIP score: a DataComp-style pool `flyt filter` reads).
    #[arg(long)]
    pub out: PathBuf,
    /// Array and column name prefix (`b32`, `l14` give DataComp's names).
    #[arg(long, default_value = "emb")]
    pub prefix: String,
    /// Largest batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = crate::device)]
    pub device: DeviceSpec,
    /// Preprocessing threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Decode JPEGs at full size, for bit-equality with CLIPImageProcessor (slower on large photos).
    #[arg(long)]
    pub exact_preprocessing: bool,
    /// Stored precision of the embeddings.
    #[arg(long, value_enum, default_value_t = Precision::F16)]
    pub dtype: Precision,
    /// Shards, or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

/// Runs `flyt embed`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let r = embed(&EmbedConfig {
        model: a.model,
        out: a.out.clone(),
        prefix: a.prefix,
        batch_size: a.batch_size,
        device: a.device,
        workers: a.workers,
        exact_preprocessing: a.exact_preprocessing,
        dtype: match a.dtype {
            Precision::F16 => Dtype::F16,
            Precision::F32 => Dtype::F32,
        },
        shards: a.shards,
    })?;
    println!(
        "embedded {} shards ({} samples, {:.0} samples/s), skipped {} already done; outputs in {}",
        r.embedded.len(),
        r.rows,
        r.rows as f64 / r.seconds.max(1e-9),
        r.skipped,
        a.out.display()
    );
    Ok(())
}
