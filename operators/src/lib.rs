//! # flyt-operators
//!
//! timely and differential-dataflow operators over the `flyt` domain crate, one operator per file, each an
//! extension trait named after its verb. Here now: [`DecodeShards`], and one scoring operator per method
//! ([`ScoreClip`], [`ScoreNegClipLoss`], [`ScoreNormSim`], [`ScoreImageClusters`] over embedding batches;
//! [`ScoreBasic`], [`ScoreTextMatch`] over sample batches), each emitting named per-uid score columns;
//! [`EmbedClip`] (samples to CLIP embeddings in batches) and [`ScoreFlyt`] (a trained FLYT head). Over
//! differential collections keyed by uid: [`DedupUids`] (one row per uid, arrival-order free), [`MixScores`]
//! (M-FLYT's mixer, joining external score files on uid) and [`SoftCapSample`] (incremental SCS, its output a
//! collection of uids with their counts as multiplicities).

mod decode_shards;
mod dedup_uids;
mod embed_clip;
mod mix_scores;
mod pool_row;
mod score_basic;
mod score_clip;
mod score_each;
mod score_flyt;
mod score_image_clusters;
mod score_neg_clip_loss;
mod score_norm_sim;
mod score_text_match;
mod soft_cap_sample;

pub use decode_shards::{DecodeShards, ShardEvent};
pub use dedup_uids::DedupUids;
pub use differential_dataflow;
pub use embed_clip::{EmbedClip, EmbedCounters};
pub use flyt;
pub use mix_scores::{Mix, MixScores};
pub use pool_row::{ExternalScore, PoolRow};
pub use score_basic::ScoreBasic;
pub use score_clip::ScoreClip;
pub use score_flyt::ScoreFlyt;
pub use score_image_clusters::ScoreImageClusters;
pub use score_neg_clip_loss::ScoreNegClipLoss;
pub use score_norm_sim::ScoreNormSim;
pub use score_text_match::ScoreTextMatch;
pub use soft_cap_sample::{ScsCounters, SoftCapSample};
pub use timely;
