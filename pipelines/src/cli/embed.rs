//! `flyt embed`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flyt::clip::{Embedder, EmbedderConfig};
use flyt::{NpyArray, NpyData, ReaderConfig, Record, RowMeta, ShardReader};

use crate::shards::{expand_shards, progress, show};

/// Stored embedding precision.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
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
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Preprocessing threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Decode JPEGs at full size, for bit-equality with CLIPImageProcessor (slower on large photos).
    #[arg(long)]
    pub exact_preprocessing: bool,
    /// Stored precision of the embeddings.
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    pub dtype: Dtype,
    /// Shards, or directories of them.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

/// `--device` of every command: auto, cpu, cuda or cuda:N. Opens libtorch_cuda first (a no-op on CPU-only
/// machines), so `auto` can see a GPU.
pub(crate) fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    flyt::init_torch_runtime();
    Ok(match s {
        "cpu" => tch::Device::Cpu,
        "auto" => tch::Device::cuda_if_available(),
        "cuda" => tch::Device::Cuda(0),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => tch::Device::Cuda(n),
            None => anyhow::bail!("--device must be auto, cpu, cuda or cuda:N, got {s:?}"),
        },
    })
}

/// Runs `flyt embed`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    if device.is_cuda() {
        flyt::init_torch_runtime();
        if !tch::Cuda::is_available() {
            anyhow::bail!("--device {} asked for, but CUDA is not available here", a.device);
        }
    }
    let shards = expand_shards(&a.shards)?;
    std::fs::create_dir_all(&a.out).map_err(|e| flyt::Error::io(&a.out, e))?;
    let mut config = EmbedderConfig {
        batch_size: a.batch_size,
        device,
        exact_preprocessing: a.exact_preprocessing,
        ..Default::default()
    };
    config.max_latency = Duration::from_millis(50);
    if let Some(w) = a.workers {
        config.workers = w.max(1);
    }
    let embedder = Embedder::load(&a.model, config)?;
    let pb = progress(shards.len() as u64, "embed");
    let (mut done, mut skipped, mut rows_total) = (0, 0, 0usize);
    let start = Instant::now();
    for path in &shards {
        let stem = flyt::shard_name(path);
        let (npz, table) = (a.out.join(format!("{stem}.npz")), a.out.join(format!("{stem}.parquet")));
        pb.set_message(show(path));
        if npz.exists() && table.exists() {
            skipped += 1;
            pb.inc(1);
            continue;
        }
        let mut reader = ShardReader::open(path, ReaderConfig::default())?;
        let mut rejects = Vec::new();
        let mut failure = None;
        let mut meta: HashMap<String, RowMeta> = HashMap::new();
        let samples = reader.by_ref().filter_map(|r| match r {
            Ok(Record::Sample(s)) => {
                meta.insert(s.key.clone(), RowMeta { text: s.caption.clone(), original_size: s.original_size() });
                Some(*s)
            }
            Ok(Record::Rejected(r)) => {
                rejects.push(r);
                None
            }
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        let (emb, unreadable) = embedder.embed(samples);
        if let Some(e) = failure {
            return Err(e.into());
        }
        rejects.extend(unreadable);
        let rows = emb.ids.len();
        let shape = vec![rows, emb.dim];
        let data = |v: &[f32]| match a.dtype {
            Dtype::F16 => NpyData::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect()),
            Dtype::F32 => NpyData::F32(v.to_vec()),
        };
        let mut arrays = BTreeMap::new();
        arrays.insert(format!("{}_img", a.prefix), NpyArray { shape: shape.clone(), data: data(&emb.image) });
        arrays.insert(format!("{}_txt", a.prefix), NpyArray { shape, data: data(&emb.text) });
        flyt::write_npz(&npz, &arrays, false)?;
        let score_col = format!("{}_clip_score", a.prefix);
        let meta: Vec<RowMeta> = emb.ids.iter().map(|(_, k)| meta.remove(k).unwrap_or_default()).collect();
        flyt::write_score_table(&table, &emb.ids, &meta, &[(score_col.as_str(), &emb.clip_score)])?;
        let lines: String =
            rejects.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap_or_default())).collect();
        flyt::write_atomic(&a.out.join(format!("{stem}.rejects.jsonl")), lines.as_bytes())?;
        rows_total += rows;
        done += 1;
        pb.println(format!("{}: {rows} embedded, {} rejected", show(path), rejects.len()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "embedded {done} shards ({rows_total} samples, {:.0} samples/s), skipped {skipped} already done; outputs in {}",
        rows_total as f64 / secs.max(1e-9),
        show(&a.out)
    );
    Ok(())
}
