//! # flyt-pipelines
//!
//! The curation graph and the jobs built from `flyt-operators` over the `flyt` domain crate:
//!
//! - [`curate`]: the streaming curation dataflow (`flyt curate`): shards as they arrive → embeddings → every
//!   configured scoring method → M-FLYT's mix → incremental Soft Cap Sampling → `subset.npy` + `manifest.json`,
//!   exactly once, resumable, on one machine or a timely cluster;
//! - the batch jobs, each a typed configuration in and a typed report out: [`embed`], [`scores`], [`filter`],
//!   [`score`] (the curation graph's front over a finite input), and [`clusters`], [`downstream`], [`train`],
//!   [`sample`], [`inspect`], [`embed_bench`];
//! - [`serve`]: the Arrow Flight service over a curation output directory.
//!
//! Running a batch job from Rust:
//! ```
//! # fn main() -> flyt_pipelines::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! flyt::synth::SynthSidecars { shards: 2, rows_per_shard: 50, dim: 8, ..Default::default() }.write(dir.path())?;
//! let report = flyt_pipelines::scores(&flyt_pipelines::ScoresConfig {
//!     inputs: flyt_pipelines::PoolInputs { pool: dir.path().to_path_buf(), ..Default::default() },
//!     out: dir.path().join("scores.parquet"),
//! })?;
//! assert_eq!(report.uids, 100);
//! assert!(report.columns.contains(&"clip_score".to_string()));
//! # Ok(()) }
//! ```

mod curate;
mod error;
mod flight;
mod graph;
mod jobs;
mod methods;
mod plot;
mod shards;

pub use curate::{
    Arrival, CurateConfig, Dedup, Embed, EmbeddingSource, Input, Output, STOP, Sample, Score, SemanticDedup, Summary,
    install_stop_signals, run as curate,
};
pub(crate) use error::Context;
pub use error::{Error, Result, report};
pub use flight::{FlightOptions, serve, serve_until_stopped, spawn as spawn_flight};
pub use flyt_operators::{Waiting, arrival_rule, dir_shows_marker_layout};
pub use jobs::{
    Arch, ClustersConfig, ClustersReport, DOWNSTREAM_LOGIT_SCALE, DownstreamConfig, DownstreamReport, Dtype,
    EmbedBenchConfig, EmbedBenchReport, EmbedConfig, EmbedReport, EmbeddedShard, FilterConfig, FilterMethod,
    FilterReport, InspectConfig, InspectReport, MixerInputs, OPENAI_LOGIT_SCALE, PoolInputs, ReferenceMode,
    SampleConfig, SampleMethod, SampleReport, ScoreConfig, ScoreReport, ScoresConfig, ScoresReport, TrainConfig,
    TrainReport, clusters, downstream, embed, embed_bench, filter, inspect, sample, score, scores, train,
};
pub use methods::{Method, NegClipLossParams};
pub use plot::font_ready;
pub use shards::{expand_shards, is_shard_name, progress as progress_bar};
