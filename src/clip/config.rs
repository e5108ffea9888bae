//! CLIP configuration, read from (and written as) a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

/// The text tower (Hugging Face `text_config`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TextConfig {
    /// Vocabulary size.
    #[serde(default = "TextConfig::d_vocab")]
    pub vocab_size: i64,
    /// Width.
    #[serde(default = "TextConfig::d_hidden")]
    pub hidden_size: i64,
    /// MLP width.
    #[serde(default = "TextConfig::d_inter")]
    pub intermediate_size: i64,
    /// Layers.
    #[serde(default = "TextConfig::d_layers")]
    pub num_hidden_layers: i64,
    /// Attention heads.
    #[serde(default = "TextConfig::d_heads")]
    pub num_attention_heads: i64,
    /// Context length.
    #[serde(default = "TextConfig::d_pos")]
    pub max_position_embeddings: i64,
    /// `quick_gelu` (OpenAI) or `gelu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// End-of-text token id; 2 in legacy configs, which pool at the largest token id instead.
    #[serde(default = "TextConfig::d_eos")]
    pub eos_token_id: i64,
}

impl TextConfig {
    fn d_vocab() -> i64 {
        49408
    }
    fn d_hidden() -> i64 {
        512
    }
    fn d_inter() -> i64 {
        2048
    }
    fn d_layers() -> i64 {
        12
    }
    fn d_heads() -> i64 {
        8
    }
    fn d_pos() -> i64 {
        77
    }
    fn d_eos() -> i64 {
        49407
    }
}

/// The vision tower (Hugging Face `vision_config`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    /// Width.
    #[serde(default = "VisionConfig::d_hidden")]
    pub hidden_size: i64,
    /// MLP width.
    #[serde(default = "VisionConfig::d_inter")]
    pub intermediate_size: i64,
    /// Layers.
    #[serde(default = "VisionConfig::d_layers")]
    pub num_hidden_layers: i64,
    /// Attention heads.
    #[serde(default = "VisionConfig::d_heads")]
    pub num_attention_heads: i64,
    /// Input side in pixels.
    #[serde(default = "VisionConfig::d_image")]
    pub image_size: i64,
    /// Patch side in pixels.
    #[serde(default = "VisionConfig::d_patch")]
    pub patch_size: i64,
    /// Input channels.
    #[serde(default = "VisionConfig::d_channels")]
    pub num_channels: i64,
    /// `quick_gelu` (OpenAI) or `gelu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    fn d_hidden() -> i64 {
        768
    }
    fn d_inter() -> i64 {
        3072
    }
    fn d_layers() -> i64 {
        12
    }
    fn d_heads() -> i64 {
        12
    }
    fn d_image() -> i64 {
        224
    }
    fn d_patch() -> i64 {
        32
    }
    fn d_channels() -> i64 {
        3
    }
}

/// A CLIP model's configuration: both towers and the shared embedding size. Defaults are OpenAI ViT-B/32's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: TextConfig,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// Embedding dimension of both projections.
    #[serde(default = "ClipConfig::d_proj")]
    pub projection_dim: i64,
    /// Initial logit scale (log of the inverse temperature).
    #[serde(default = "ClipConfig::d_scale")]
    pub logit_scale_init_value: f64,
}

impl ClipConfig {
    fn d_proj() -> i64 {
        512
    }
    fn d_scale() -> f64 {
        2.6592
    }

    /// OpenAI ViT-B/32's architecture (openai/clip-vit-base-patch32).
    pub fn vit_b32() -> Self {
        serde_json::from_value(serde_json::json!({"text_config": {}, "vision_config": {}})).expect("defaults")
    }

    /// OpenAI ViT-L/14's architecture (openai/clip-vit-large-patch14).
    pub fn vit_l14() -> Self {
        serde_json::from_value(serde_json::json!({
            "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "patch_size": 14},
            "projection_dim": 768
        }))
        .expect("valid preset")
    }

    /// Reads a Hugging Face `config.json` (a `CLIPModel` config with `text_config` and `vision_config`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: ClipConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, "config", format!("not a CLIP config: {e}")))?;
        c.validate().map_err(|reason| Error::format(path, "config", reason))?;
        Ok(c)
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (t, v) = (&self.text_config, &self.vision_config);
        for (name, width, heads) in
            [("text", t.hidden_size, t.num_attention_heads), ("vision", v.hidden_size, v.num_attention_heads)]
        {
            if width <= 0 || heads <= 0 || width % heads != 0 {
                return Err(format!("{name} hidden_size {width} is not a positive multiple of its {heads} heads"));
            }
        }
        if v.patch_size <= 0 || v.image_size % v.patch_size != 0 {
            return Err(format!("image_size {} is not a multiple of patch_size {}", v.image_size, v.patch_size));
        }
        for act in [&t.hidden_act, &v.hidden_act] {
            if !matches!(act.as_str(), "quick_gelu" | "gelu") {
                return Err(format!("activation {act:?} is not supported (quick_gelu, gelu)"));
            }
        }
        Ok(())
    }

    /// The JSON Hugging Face writes for a `CLIPModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["architectures"] = serde_json::json!(["CLIPModel"]);
        v["model_type"] = serde_json::json!("clip");
        v
    }
}
