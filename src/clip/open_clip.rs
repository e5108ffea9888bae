//! open_clip's parameter names (the official FLYT code's reference model), to and from flyt's CLIP, whose
//! parameters carry Hugging Face's names: a checkpoint of either implementation starts the other.
//!
//! | open_clip | Hugging Face |
//! |---|---|
//! | `token_embedding.weight`, `positional_embedding` | `text_model.embeddings.{token,position}_embedding.weight` |
//! | `[visual.]transformer.resblocks.{i}.attn.in_proj_{weight,bias}` | `{text,vision}_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*` (split in three) |
//! | `….attn.out_proj.*`, `….ln_1.*`, `….ln_2.*`, `….mlp.c_fc.*`, `….mlp.c_proj.*` | `….self_attn.out_proj.*`, `….layer_norm1.*`, `….layer_norm2.*`, `….mlp.fc1.*`, `….mlp.fc2.*` |
//! | `ln_final.*`, `text_projection` (width × embed) | `text_model.final_layer_norm.*`, `text_projection.weight` (its transpose) |
//! | `visual.class_embedding`, `visual.conv1.weight`, `visual.positional_embedding` | `vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}` |
//! | `visual.ln_pre.*`, `visual.ln_post.*`, `visual.proj` (width × embed) | `vision_model.pre_layrnorm.*`, `vision_model.post_layernorm.*`, `visual_projection.weight` (its transpose) |
//! | `logit_scale` | `logit_scale` |

use tch::Tensor;

use crate::{Error, Result};

fn layer_part(rest: &str) -> Option<String> {
    let (kind, p) = rest.split_once('.')?;
    let hf = match kind {
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "mlp" => match p.split_once('.')?.0 {
            "c_fc" => return Some(format!("mlp.fc1.{}", p.split_once('.')?.1)),
            "c_proj" => return Some(format!("mlp.fc2.{}", p.split_once('.')?.1)),
            _ => return None,
        },
        "attn" if p.starts_with("out_proj.") => return Some(format!("self_attn.{p}")),
        _ => return None,
    };
    Some(format!("{hf}.{p}"))
}

/// Tensors under open_clip's names, renamed (and split or transposed) to flyt's CLIP names. A name open_clip's
/// CLIP does not have is an error naming it.
pub fn from_open_clip(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(tensors.len() + 16);
    for (name, t) in tensors {
        let unknown = || Error::Config(format!("{name}: not a parameter of open_clip's CLIP"));
        let (tower, rest) = match name.strip_prefix("visual.") {
            Some(r) => ("vision_model", r),
            None => ("text_model", name.as_str()),
        };
        let renamed = match (tower, rest) {
            ("text_model", "token_embedding.weight") => "text_model.embeddings.token_embedding.weight".to_string(),
            ("text_model", "positional_embedding") => "text_model.embeddings.position_embedding.weight".into(),
            ("text_model", "text_projection") => {
                out.push(("text_projection.weight".into(), t.transpose(0, 1).contiguous()));
                continue;
            }
            ("text_model", "logit_scale") => "logit_scale".into(),
            ("text_model", r) if r.starts_with("ln_final.") => format!("text_model.final_layer_norm.{}", &r[9..]),
            ("vision_model", "class_embedding") => "vision_model.embeddings.class_embedding".into(),
            ("vision_model", "conv1.weight") => "vision_model.embeddings.patch_embedding.weight".into(),
            ("vision_model", "positional_embedding") => "vision_model.embeddings.position_embedding.weight".into(),
            ("vision_model", "proj") => {
                out.push(("visual_projection.weight".into(), t.transpose(0, 1).contiguous()));
                continue;
            }
            ("vision_model", r) if r.starts_with("ln_pre.") => format!("vision_model.pre_layrnorm.{}", &r[7..]),
            ("vision_model", r) if r.starts_with("ln_post.") => format!("vision_model.post_layernorm.{}", &r[8..]),
            (tower, r) => {
                let layer = r.strip_prefix("transformer.resblocks.").ok_or_else(unknown)?;
                let (i, part) = layer.split_once('.').ok_or_else(unknown)?;
                let i: usize = i.parse().map_err(|_| unknown())?;
                let base = format!("{tower}.encoder.layers.{i}");
                if let Some(which) = part.strip_prefix("attn.in_proj_") {
                    if which != "weight" && which != "bias" {
                        return Err(unknown());
                    }
                    let parts = t.chunk(3, 0);
                    if parts.len() != 3 {
                        return Err(Error::Config(format!("{name}: shape {:?} does not split in three", t.size())));
                    }
                    for (p, q) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
                        out.push((format!("{base}.self_attn.{p}.{which}"), q.contiguous()));
                    }
                    continue;
                }
                format!("{base}.{}", layer_part(part).ok_or_else(unknown)?)
            }
        };
        out.push((renamed, t));
    }
    Ok(out)
}

/// flyt's CLIP tensors (Hugging Face names) under open_clip's names: the inverse of [`from_open_clip`].
pub fn to_open_clip(tensors: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut qkv: std::collections::BTreeMap<String, [Option<Tensor>; 3]> = Default::default();
    for (name, t) in tensors {
        let unknown = || Error::Config(format!("{name}: not a parameter of flyt's CLIP"));
        let renamed = match name.as_str() {
            "text_model.embeddings.token_embedding.weight" => "token_embedding.weight".to_string(),
            "text_model.embeddings.position_embedding.weight" => "positional_embedding".into(),
            "text_projection.weight" => {
                out.push(("text_projection".into(), t.transpose(0, 1).contiguous()));
                continue;
            }
            "visual_projection.weight" => {
                out.push(("visual.proj".into(), t.transpose(0, 1).contiguous()));
                continue;
            }
            "logit_scale" => "logit_scale".into(),
            "vision_model.embeddings.class_embedding" => "visual.class_embedding".into(),
            "vision_model.embeddings.patch_embedding.weight" => "visual.conv1.weight".into(),
            "vision_model.embeddings.position_embedding.weight" => "visual.positional_embedding".into(),
            n => {
                if let Some(r) = n.strip_prefix("text_model.final_layer_norm.") {
                    format!("ln_final.{r}")
                } else if let Some(r) = n.strip_prefix("vision_model.pre_layrnorm.") {
                    format!("visual.ln_pre.{r}")
                } else if let Some(r) = n.strip_prefix("vision_model.post_layernorm.") {
                    format!("visual.ln_post.{r}")
                } else {
                    let (prefix, layer) = if let Some(l) = n.strip_prefix("text_model.encoder.layers.") {
                        ("", l)
                    } else if let Some(l) = n.strip_prefix("vision_model.encoder.layers.") {
                        ("visual.", l)
                    } else {
                        return Err(unknown());
                    };
                    let (i, part) = layer.split_once('.').ok_or_else(unknown)?;
                    let base = format!("{prefix}transformer.resblocks.{i}");
                    if let Some(p) = part.strip_prefix("self_attn.") {
                        let (proj, which) = p.split_once('.').ok_or_else(unknown)?;
                        let slot = match proj {
                            "q_proj" => 0,
                            "k_proj" => 1,
                            "v_proj" => 2,
                            "out_proj" => {
                                out.push((format!("{base}.attn.out_proj.{which}"), t.shallow_clone()));
                                continue;
                            }
                            _ => return Err(unknown()),
                        };
                        qkv.entry(format!("{base}.attn.in_proj_{which}")).or_default()[slot] = Some(t.shallow_clone());
                        continue;
                    }
                    let mapped = match part.split_once('.') {
                        Some(("layer_norm1", w)) => format!("ln_1.{w}"),
                        Some(("layer_norm2", w)) => format!("ln_2.{w}"),
                        Some(("mlp", m)) => match m.split_once('.') {
                            Some(("fc1", w)) => format!("mlp.c_fc.{w}"),
                            Some(("fc2", w)) => format!("mlp.c_proj.{w}"),
                            _ => return Err(unknown()),
                        },
                        _ => return Err(unknown()),
                    };
                    format!("{base}.{mapped}")
                }
            }
        };
        out.push((renamed, t.shallow_clone()));
    }
    for (name, parts) in qkv {
        let [Some(q), Some(k), Some(v)] = parts else {
            return Err(Error::Config(format!("{name}: q, k and v are not all there")));
        };
        out.push((name, Tensor::cat(&[q, k, v], 0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn};

    #[test]
    fn open_clip_names_round_trip_every_parameter() {
        let cfg: crate::clip::ClipConfig = serde_json::from_value(serde_json::json!({
            "text_config": {"vocab_size": 100, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "max_position_embeddings": 7},
            "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
            "projection_dim": 4
        }))
        .unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _clip = crate::clip::Clip::new(&vs.root(), &cfg).unwrap();
        let mut hf: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        hf.sort_by(|a, b| a.0.cmp(&b.0));
        let oc = to_open_clip(&hf).unwrap();
        // open_clip's shapes: fused q/k/v, projections width × embed
        let get = |n: &str| oc.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n}")).1.size();
        assert_eq!(get("transformer.resblocks.1.attn.in_proj_weight"), vec![24, 8]);
        assert_eq!(get("visual.transformer.resblocks.0.attn.in_proj_bias"), vec![24]);
        assert_eq!(get("visual.proj"), vec![8, 4]);
        assert_eq!(get("text_projection"), vec![8, 4]);
        assert!(oc.iter().any(|(k, _)| k == "visual.transformer.resblocks.1.mlp.c_proj.weight"));
        assert_eq!(oc.len(), hf.len() - 2 * 2 * 2 * 2, "q, k, v fused: 3 weights and 3 biases become 1 each");
        let mut back = from_open_clip(oc).unwrap();
        back.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back.len(), hf.len());
        for ((a, x), (b, y)) in hf.iter().zip(&back) {
            assert_eq!(a, b);
            assert!(x.equal(y), "{a} differs");
        }
        let bad = from_open_clip(vec![("visual.nonsense".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)))]);
        assert!(bad.unwrap_err().to_string().contains("visual.nonsense"));
    }
}
