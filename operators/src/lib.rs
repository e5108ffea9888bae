//! # flyt-operators
//!
//! timely and differential-dataflow operators over the `flyt` domain crate, one operator per file, each an
//! extension trait named after its verb. Here now: [`DecodeShards`]. Coming with the streaming-curation
//! issue: `EmbedClip`, `ScoreFlyt`, `MixScores`, `SoftCapSample`.

mod decode_shards;

pub use decode_shards::{DecodeShards, ShardEvent};
pub use differential_dataflow;
pub use flyt;
pub use timely;
