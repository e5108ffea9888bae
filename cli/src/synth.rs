//! `flyt synth`.

use std::path::PathBuf;

use flyt::synth::{SynthImage, SynthPool};

/// Image kind for `flyt synth`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ImageKind {
    /// Gradient PNGs.
    Png,
    /// Noisy JPEGs (about 30 KB at 160 px).
    Jpeg,
}

/// Arguments of `flyt synth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub samples_per_shard: usize,
    /// Image format.
    #[arg(long, value_enum, default_value_t = ImageKind::Jpeg)]
    pub image: ImageKind,
    /// Image side in pixels.
    #[arg(long, default_value_t = 160)]
    pub side: u32,
    /// Fraction of faulty samples (missing caption, bad json, bad uid, empty member, duplicate uid,
    /// non-adjacent member).
    #[arg(long, default_value_t = 0.0)]
    pub dirt: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write DataComp sidecars only (`NNNNNNNN.parquet` + `.npz` with `b32_img`/`b32_txt` of this dimension,
    /// no tars): a pool with precomputed embeddings, for `flyt curate` and benchmarks.
    #[arg(long)]
    pub sidecars: Option<usize>,
    /// With --sidecars: the fraction of rows that repeat an earlier shard's uid.
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// With --sidecars: the fraction of rows (new uids) whose image embedding is a near-copy of an earlier
    /// row's (cosine about 0.999), for SemDeDup.
    #[arg(long, default_value_t = 0.0)]
    pub near_duplicates: f64,
    /// With --sidecars: the number of the first shard (to add shards to an existing pool).
    #[arg(long, default_value_t = 0)]
    pub first_shard: usize,
}

/// Runs `flyt synth`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.dirt) {
        anyhow::bail!("--dirt must be in [0, 1], got {}", a.dirt);
    }
    if let Some(dim) = a.sidecars {
        let pool = flyt::synth::SynthSidecars {
            shards: a.shards,
            rows_per_shard: a.samples_per_shard,
            dim,
            prefix: "b32".into(),
            duplicates: a.duplicates,
            near_duplicates: a.near_duplicates,
            first_shard: a.first_shard,
            seed: a.seed,
        };
        let paths = pool.write(&a.out)?;
        println!("wrote {} sidecar pairs to {}", paths.len(), a.out.display());
        return Ok(());
    }
    let image = match a.image {
        ImageKind::Png => SynthImage::Png(a.side),
        ImageKind::Jpeg => SynthImage::Jpeg(a.side),
    };
    let pool =
        SynthPool { shards: a.shards, samples_per_shard: a.samples_per_shard, image, seed: a.seed, dirt: a.dirt };
    let paths = pool.write(&a.out)?;
    println!("wrote {} shards to {}", paths.len(), a.out.display());
    Ok(())
}
