//! CLIP in tch: Hugging Face checkpoints (config + safetensors), the BPE tokenizer.

mod config;
mod embed;
mod model;
mod open_clip;
pub mod preprocess;
mod tokenizer;

pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use embed::{Embedder, EmbedderConfig, Embeddings};
pub use model::{Clip, l2_normalize, read_logit_scale};
pub use open_clip::{from_open_clip, to_open_clip};
pub use preprocess::{DecodeBudget, MAX_DECODED_BYTES, POOL_DECODED_BYTES, Reservation};
pub use tokenizer::ClipTokenizer;
