//! CLIP in tch: Hugging Face checkpoints (config + safetensors), the BPE tokenizer.

mod config;
mod embed;
mod model;
pub mod preprocess;
mod tokenizer;

pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use embed::{Embedder, EmbedderConfig, Embeddings};
pub use model::{Clip, l2_normalize};
pub use tokenizer::ClipTokenizer;
