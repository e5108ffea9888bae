//! The batch jobs: a typed configuration in, a typed report out. Those that score (`embed`, `scores`, `filter`,
//! `score`) run the curation graph's front over a finite list of shards ([`crate::graph`]), so each method has
//! one implementation; the others (`clusters`, `downstream`, `train`, `sample`, `inspect`, `embed_bench`) call
//! the domain crate directly.

mod clusters;
mod downstream;
mod embed;
mod embed_bench;
mod inspect;
mod sample;
mod score;
mod scores;
mod train;

pub use clusters::{ClustersConfig, ClustersReport, clusters};
pub use downstream::{DownstreamConfig, DownstreamReport, downstream};
pub use embed::{Dtype, EmbedConfig, EmbedReport, EmbeddedShard, embed};
pub use embed_bench::{Arch, EmbedBenchConfig, EmbedBenchReport, embed_bench};
pub use inspect::{InspectConfig, InspectReport, inspect};
pub use sample::{SampleConfig, SampleMethod, SampleReport, sample};
pub use score::{ScoreConfig, ScoreReport, score};
pub use scores::{FilterConfig, FilterMethod, FilterReport, PoolInputs, ScoresConfig, ScoresReport, filter, scores};
pub use train::{
    DOWNSTREAM_LOGIT_SCALE, MixerInputs, OPENAI_LOGIT_SCALE, ReferenceMode, TrainConfig, TrainReport, train,
};

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The metadata parquet files of a DataComp-layout pool directory, in name order (`*_scores.parquet`, score
/// files, are not pool files). None is an error naming the directory.
pub(crate) fn pool_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet")
                && !p.to_string_lossy().ends_with("_scores.parquet")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(flyt::Error::format(dir, "*.parquet", "no metadata parquet files in this directory").into());
    }
    Ok(files)
}

/// The `.npz` prefix of a pool: the one asked for, else the one the first file's arrays have
/// ([`flyt::pick_prefix`]).
pub(crate) fn pool_prefix(files: &[PathBuf], asked: Option<&str>) -> Result<String> {
    if let Some(p) = asked {
        return Ok(p.to_string());
    }
    let npz = files[0].with_extension("npz");
    let keys: Vec<String> = flyt::read_npz(&npz)?.into_keys().collect();
    flyt::pick_prefix(&keys).ok_or_else(|| {
        flyt::Error::format(&npz, "*_img/*_txt", format!("no single embedding pair; arrays: {}", keys.join(", ")))
            .into()
    })
}

/// Creates `dir` (and its parents).
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}
