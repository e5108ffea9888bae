//! # flyt-operators
//!
//! timely and differential-dataflow operators over the `flyt` domain crate, one operator per file, each an
//! extension trait named after its verb. Read top to bottom, they are the curation graph:
//!
//! - the source: [`WatchShards`] (shard jobs, one timestamp per shard);
//! - ingest: [`DecodeShards`] and [`EmbedClip`] (tars to CLIP embeddings, pixels staying on their worker), or
//!   [`ReadSidecars`] (DataComp `.parquet` + `.npz` pairs); [`GatherShards`] (one batch per shard);
//! - scoring, one operator per method, each emitting named per-uid score columns: [`ScoreClip`],
//!   [`ScoreNegClipLoss`], [`ScoreNormSim`], [`ScoreImageClusters`], [`ScoreBasic`], [`ScoreTextMatch`],
//!   [`ScoreFlyt`];
//! - per shard: [`AssembleShards`] (its rows, columns, counts and rejects) and [`CommitShards`] (its files, then
//!   its commit record), or [`ReplayShards`] (a shard committed earlier, from its score table);
//! - the pool, as differential collections keyed by uid: [`PoolRows`], [`DedupUids`] (one row per uid,
//!   arrival-order free), [`DedupContent`] (exact content duplicates), [`SemDedup`]
//!   (SemDeDup's near duplicates, incremental), [`ReadScoreFiles`] and [`MixScores`] (M-FLYT's mixer, joining external score files on
//!   uid), [`SoftCapSample`] (incremental SCS: uids with their counts as multiplicities);
//! - the sink: [`PublishSubset`] (`subset.npy`, then `manifest.json`).
//!
//! [`Counters`] are what they count, per process.

mod assemble_shards;
mod commit_shards;
mod counters;
mod decode_shards;
mod dedup_content;
mod dedup_uids;
mod embed_clip;
mod gather_shards;
mod mix_scores;
mod pool_row;
mod publish_subset;
mod read_score_files;
mod read_sidecars;
mod replay_shards;
mod score_basic;
mod score_clip;
mod score_each;
mod score_flyt;
mod score_image_clusters;
mod score_neg_clip_loss;
mod score_norm_sim;
mod score_text_match;
mod sem_dedup;
mod soft_cap_sample;
mod watch_shards;

pub use assemble_shards::{AssembleShards, AssembledShard, Part, ShardFailure};
pub use commit_shards::{CommitOptions, CommitShards};
pub use counters::Counters;
pub use decode_shards::{DecodeShards, ShardEvent};
pub use dedup_content::{DedupContent, Deduped, Duplicate, DuplicateReason};
pub use dedup_uids::DedupUids;
pub use differential_dataflow;
pub use embed_clip::{EmbedClip, EmbedCounters};
pub use flyt;
pub use flyt::{dir_shows_marker_layout, shows_marker_layout};
pub use gather_shards::GatherShards;
pub use mix_scores::{Mix, MixScores};
pub use pool_row::{ExternalScore, PoolRow, PoolRows, PoolUpdate, pool_rows};
pub use publish_subset::{PublishOptions, PublishSubset, ShardSummary, SinkEvent};
pub use read_score_files::{ExternalUpdate, ReadScoreFiles};
pub use read_sidecars::ReadSidecars;
pub use replay_shards::ReplayShards;
pub use score_basic::ScoreBasic;
pub use score_clip::ScoreClip;
pub use score_flyt::ScoreFlyt;
pub use score_image_clusters::ScoreImageClusters;
pub use score_neg_clip_loss::ScoreNegClipLoss;
pub use score_norm_sim::ScoreNormSim;
pub use score_text_match::ScoreTextMatch;
pub use sem_dedup::{SemDedup, SemDedupCounters, SemDedupOptions};
pub use soft_cap_sample::{ScsCounters, SoftCapSample};
pub use timely;
pub use watch_shards::{
    Arrival, Decision, EmbeddingSource, Identities, Job, Unit, Via, Waiting, WatchOptions, WatchShards, Watcher,
    arrival_rule, decide, list_score_files, list_units,
};
