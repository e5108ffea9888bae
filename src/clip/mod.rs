//! CLIP in tch: Hugging Face checkpoints (config + safetensors), the BPE tokenizer.

mod config;
mod model;
pub mod preprocess;
mod tokenizer;

pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use model::{l2_normalize, Clip};
pub use tokenizer::ClipTokenizer;
