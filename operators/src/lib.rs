//! # flyt-operators
//!
//! timely and differential-dataflow operators over the `flyt` domain crate, one operator per file, each an
//! extension trait named after its verb (`DecodeShards`, `EmbedClip`, `ScoreFlyt`, `MixScores`,
//! `SoftCapSample`). They arrive with the streaming-curation issue; this crate fixes the dependency arrows
//! (pipelines → operators → flyt) and re-exports the dataflow crates at the versions flyt is built against.

pub use differential_dataflow;
pub use flyt;
pub use timely;
