//! # flyt-operators
//!
//! timely and differential-dataflow operators over the `flyt` domain crate, one operator per file, each an
//! extension trait named after its verb. Here now: [`DecodeShards`], and one scoring operator per method
//! ([`ScoreClip`], [`ScoreNegClipLoss`], [`ScoreNormSim`], [`ScoreImageClusters`] over embedding batches;
//! [`ScoreBasic`], [`ScoreTextMatch`] over sample batches), each emitting named per-uid score columns.
//! Coming with the streaming-curation issue: `EmbedClip`, `ScoreFlyt`, `MixScores`, `SoftCapSample`.

mod decode_shards;
mod score_basic;
mod score_clip;
mod score_each;
mod score_image_clusters;
mod score_neg_clip_loss;
mod score_norm_sim;
mod score_text_match;

pub use decode_shards::{DecodeShards, ShardEvent};
pub use differential_dataflow;
pub use flyt;
pub use score_basic::ScoreBasic;
pub use score_clip::ScoreClip;
pub use score_image_clusters::ScoreImageClusters;
pub use score_neg_clip_loss::ScoreNegClipLoss;
pub use score_norm_sim::ScoreNormSim;
pub use score_text_match::ScoreTextMatch;
pub use timely;
