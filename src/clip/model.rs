//! CLIP (ViT image tower, causal text transformer, projections, logit scale) in `tch::nn`, with Hugging Face
//! `transformers` parameter names, so a checkpoint folder (`config.json` + `model.safetensors`) loads as it is
//! and a model flyt trains saves in the same layout.

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::config::ClipConfig;
use crate::{Error, Result};

#[derive(Debug)]
struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, width: i64, heads: i64) -> Self {
        let lin = |name: &str| nn::linear(&p / name, width, width, Default::default());
        Attention { q: lin("q_proj"), k: lin("k_proj"), v: lin("v_proj"), out: lin("out_proj"), heads }
    }

    /// Multi-head self-attention; `causal` masks future positions (text tower). On CUDA without gradients
    /// it uses libtorch's fused scaled-dot-product attention; otherwise the explicit softmax(QKᵀ/√d)V, which
    /// also supports the double backward FLYT's hypergradient needs.
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let size = x.size();
        let (b, l, d) = (size[0], size[1], size[2]);
        let hd = d / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, hd]).transpose(1, 2);
        let (q, k, v) = (split(self.q.forward(x)), split(self.k.forward(x)), split(self.v.forward(x)));
        let y = if x.device().is_cuda() && !x.requires_grad() {
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false)
        } else {
            let mut att = (q * (hd as f64).powf(-0.5)).matmul(&k.transpose(-1, -2));
            if causal {
                att += Tensor::full([l, l], f64::NEG_INFINITY, (att.kind(), att.device())).triu(1);
            }
            att.softmax(-1, att.kind()).matmul(&v)
        };
        self.out.forward(&y.transpose(1, 2).contiguous().view([b, l, d]))
    }
}

#[derive(Debug)]
struct Layer {
    attn: Attention,
    ln1: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    ln2: nn::LayerNorm,
    quick_gelu: bool,
}

impl Layer {
    fn new(p: nn::Path, width: i64, inter: i64, heads: i64, eps: f64, act: &str) -> Self {
        let ln = |name: &str| nn::layer_norm(&p / name, vec![width], nn::LayerNormConfig { eps, ..Default::default() });
        let mlp = &p / "mlp";
        Layer {
            attn: Attention::new(&p / "self_attn", width, heads),
            ln1: ln("layer_norm1"),
            fc1: nn::linear(&mlp / "fc1", width, inter, Default::default()),
            fc2: nn::linear(&mlp / "fc2", inter, width, Default::default()),
            ln2: ln("layer_norm2"),
            quick_gelu: act == "quick_gelu",
        }
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attn.forward(&self.ln1.forward(x), causal);
        let h = self.fc1.forward(&self.ln2.forward(&x));
        let h = if self.quick_gelu { &h * (&h * 1.702).sigmoid() } else { h.gelu("none") };
        x + self.fc2.forward(&h)
    }
}

fn encoder(p: nn::Path, layers: i64, width: i64, inter: i64, heads: i64, eps: f64, act: &str) -> Vec<Layer> {
    let p = &p / "encoder" / "layers";
    (0..layers).map(|i| Layer::new(&p / i, width, inter, heads, eps, act)).collect()
}

/// A CLIP model. Build it with [`Clip::new`] on a `VarStore` path (random weights) or [`Clip::load`] from a
/// Hugging Face checkpoint folder.
#[derive(Debug)]
pub struct Clip {
    config: ClipConfig,
    // text
    token_embedding: nn::Embedding,
    text_position: Tensor,
    text_layers: Vec<Layer>,
    final_ln: nn::LayerNorm,
    text_projection: nn::Linear,
    // vision
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    vision_position: Tensor,
    pre_ln: nn::LayerNorm,
    vision_layers: Vec<Layer>,
    post_ln: nn::LayerNorm,
    visual_projection: nn::Linear,
    /// The learned logit scale (log of the inverse temperature).
    pub logit_scale: Tensor,
}

impl Clip {
    /// A model with freshly initialised weights under `root` (the var-store root for HF names).
    pub fn new(root: &nn::Path, config: &ClipConfig) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let (t, v) = (&config.text_config, &config.vision_config);
        let tp = root / "text_model";
        let te = &tp / "embeddings";
        let vp = root / "vision_model";
        let ve = &vp / "embeddings";
        let grid = v.image_size / v.patch_size;
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let ln = |p: nn::Path, w: i64, eps: f64| {
            nn::layer_norm(p, vec![w], nn::LayerNormConfig { eps, ..Default::default() })
        };
        let std = |s: f64| nn::Init::Randn { mean: 0.0, stdev: s };
        Ok(Clip {
            config: config.clone(),
            token_embedding: nn::embedding(&te / "token_embedding", t.vocab_size, t.hidden_size, Default::default()),
            text_position: (&te / "position_embedding").var(
                "weight",
                &[t.max_position_embeddings, t.hidden_size],
                std(0.01),
            ),
            text_layers: encoder(
                tp.clone(),
                t.num_hidden_layers,
                t.hidden_size,
                t.intermediate_size,
                t.num_attention_heads,
                t.layer_norm_eps,
                &t.hidden_act,
            ),
            final_ln: ln(&tp / "final_layer_norm", t.hidden_size, t.layer_norm_eps),
            text_projection: nn::linear(root / "text_projection", t.hidden_size, config.projection_dim, no_bias),
            class_embedding: ve.var("class_embedding", &[v.hidden_size], std((v.hidden_size as f64).powf(-0.5))),
            patch_embedding: nn::conv2d(
                &ve / "patch_embedding",
                v.num_channels,
                v.hidden_size,
                v.patch_size,
                nn::ConvConfig { stride: v.patch_size, bias: false, ..Default::default() },
            ),
            vision_position: (&ve / "position_embedding").var("weight", &[grid * grid + 1, v.hidden_size], std(0.02)),
            pre_ln: ln(&vp / "pre_layrnorm", v.hidden_size, v.layer_norm_eps),
            vision_layers: encoder(
                vp.clone(),
                v.num_hidden_layers,
                v.hidden_size,
                v.intermediate_size,
                v.num_attention_heads,
                v.layer_norm_eps,
                &v.hidden_act,
            ),
            post_ln: ln(&vp / "post_layernorm", v.hidden_size, v.layer_norm_eps),
            visual_projection: nn::linear(root / "visual_projection", v.hidden_size, config.projection_dim, no_bias),
            logit_scale: root.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init_value)),
        })
    }

    /// Loads a Hugging Face CLIP checkpoint folder (`config.json` + `model.safetensors`) onto `device`, as f32.
    /// Returns the var store (owning the weights) and the model.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<(nn::VarStore, Clip)> {
        let dir = dir.as_ref();
        let config = ClipConfig::from_file(dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = Clip::new(&vs.root(), &config)?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::format(
                dir,
                "model.safetensors",
                "missing: flyt loads CLIP weights in safetensors format",
            ));
        }
        // Shapes and dtypes are checked from the file's header first, so a wrong file is one line naming the
        // tensor rather than libtorch's message and backtrace.
        let mut want: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
        want.sort();
        crate::check_safetensors(&weights, &want)?;
        vs.load(&weights).map_err(|e| Error::format(&weights, "weights", crate::torch_message(&e)))?;
        vs.set_kind(Kind::Float);
        Ok((vs, model))
    }

    /// Saves `vs` (holding this model) as a Hugging Face checkpoint folder: `config.json` + `model.safetensors`.
    pub fn save(&self, vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_vec_pretty(&self.config.to_hf_json()).map_err(|e| Error::Config(e.to_string()))?;
        crate::write_atomic(&dir.join("config.json"), &json)?;
        vs.save(dir.join("model.safetensors"))?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Image embeddings (projected, not normalised) of preprocessed pixels `[B, 3, H, W]`.
    pub fn image_features(&self, pixels: &Tensor) -> Tensor {
        let b = pixels.size()[0];
        let w = self.config.vision_config.hidden_size;
        let patches = self.patch_embedding.forward(pixels).flatten(2, -1).transpose(1, 2);
        let cls = self.class_embedding.to_kind(patches.kind()).view([1, 1, w]).expand([b, 1, w], false);
        let mut x = Tensor::cat(&[cls, patches], 1) + &self.vision_position;
        x = self.pre_ln.forward(&x);
        for layer in &self.vision_layers {
            x = layer.forward(&x, false);
        }
        let pooled = self.post_ln.forward(&x.select(1, 0));
        self.visual_projection.forward(&pooled)
    }

    /// Text embeddings (projected, not normalised) of token ids `[B, L]` (int64, L ≤ context length).
    pub fn text_features(&self, ids: &Tensor) -> Tensor {
        let size = ids.size();
        let (b, l) = (size[0], size[1]);
        let mut x = self.token_embedding.forward(ids) + self.text_position.narrow(0, 0, l);
        for layer in &self.text_layers {
            x = layer.forward(&x, true);
        }
        x = self.final_ln.forward(&x);
        let eos = self.config.text_config.eos_token_id;
        let pos = if eos == 2 { ids.argmax(-1, false) } else { ids.eq(eos).to_kind(Kind::Int).argmax(-1, false) };
        let rows = Tensor::arange(b, (Kind::Int64, x.device()));
        let pooled = x.index(&[Some(rows), Some(pos)]);
        self.text_projection.forward(&pooled)
    }
}

/// L2-normalises rows.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
}

/// The logit scale (log τ) of a Hugging Face CLIP folder's `model.safetensors`, read from the file's header and
/// that one tensor alone (not the whole model): what the frozen CLIP that made a pool's embeddings scaled its
/// logits by. A missing tensor, or one that is not a float scalar, is an error naming the file.
pub fn read_logit_scale(dir: &std::path::Path) -> crate::Result<f64> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join("model.safetensors");
    let err = |what: &str, why: String| crate::Error::format(&path, what, why);
    let mut f = std::fs::File::open(&path).map_err(|e| crate::Error::io(&path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| crate::Error::io(&path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(err("header", format!("{n} bytes: not a safetensors file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| crate::Error::io(&path, e))?;
    let h: serde_json::Value = serde_json::from_slice(&header).map_err(|e| err("header", e.to_string()))?;
    let t = h.get("logit_scale").ok_or_else(|| err("logit_scale", "no such tensor".into()))?;
    let dtype = t["dtype"].as_str().unwrap_or_default();
    let numel: u64 = t["shape"].as_array().map(|s| s.iter().filter_map(|d| d.as_u64()).product()).unwrap_or(0);
    let (a, b) = match t["data_offsets"].as_array().map(|o| o.iter().filter_map(|x| x.as_u64()).collect::<Vec<_>>()) {
        Some(o) if o.len() == 2 && o[0] <= o[1] && o[1] - o[0] <= 8 => (o[0], o[1]),
        _ => return Err(err("logit_scale", "bad data_offsets".into())),
    };
    if numel != 1 {
        return Err(err("logit_scale", format!("{numel} values, a scalar expected")));
    }
    f.seek(SeekFrom::Start(8 + n + a)).map_err(|e| crate::Error::io(&path, e))?;
    let mut bytes = vec![0u8; (b - a) as usize];
    f.read_exact(&mut bytes).map_err(|e| crate::Error::io(&path, e))?;
    let v = match (dtype, bytes.len()) {
        ("F32", 4) => f32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as f64,
        ("F64", 8) => f64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        ("F16", 2) => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f64(),
        ("BF16", 2) => half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f64(),
        _ => return Err(err("logit_scale", format!("dtype {dtype} with {} bytes", bytes.len()))),
    };
    if !v.is_finite() {
        return Err(err("logit_scale", format!("{v} is not finite")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    #[test]
    fn the_logit_scale_is_read_from_the_header_and_its_one_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        let big = Tensor::ones([64, 64], (Kind::Float, tch::Device::Cpu));
        let scale = Tensor::from_slice(&[4.6052f32]).squeeze();
        Tensor::write_safetensors(&[("a.weight", &big), ("logit_scale", &scale), ("z", &big)], &file).unwrap();
        let v = super::read_logit_scale(dir.path()).unwrap();
        assert_eq!(v, 4.6052f32 as f64);
        Tensor::write_safetensors(&[("a.weight", &big)], &file).unwrap();
        let e = super::read_logit_scale(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("logit_scale") && e.contains("no such tensor"), "{e}");
        let two = Tensor::from_slice(&[1.0f32, 2.0]);
        Tensor::write_safetensors(&[("logit_scale", &two)], &file).unwrap();
        let e = super::read_logit_scale(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a scalar"), "{e}");
        std::fs::write(&file, b"\x08\0\0\0\0\0\0\0{oops}").unwrap();
        assert!(super::read_logit_scale(dir.path()).is_err());
    }
}
