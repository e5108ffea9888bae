//! FLYT checkpoints: one safetensors file with the scoring model, the reference model and every optimiser
//! moment, and a JSON sidecar (step counters and the run's description) written last, as the commit marker.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::lookahead::ReferenceState;
use super::trainer::{FlytState, ScoringModel};
use crate::{Error, Result};

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("json")
}

fn tch_err(path: &Path, e: tch::TchError) -> Error {
    Error::format(path, "safetensors", crate::torch_message(&e))
}

/// Saves the model and the run state to `path` (`.safetensors`) and `path` with `.json` (counters plus
/// `meta`, e.g. the inputs and their versions). Both are written under temporary names and renamed, the JSON
/// last, so a reader never sees a half-written checkpoint.
pub fn save_checkpoint<R: ReferenceState>(
    path: &Path,
    model: &(impl ScoringModel + ?Sized),
    state: &FlytState<R>,
    meta: &serde_json::Value,
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in model.named_parameters().into_iter().chain(model.named_buffers()) {
        named.push((format!("model.{n}"), t.detach()));
    }
    let (params, rho, opt, rho_opt) = state.reference.parts();
    for (i, p) in params.iter().enumerate() {
        named.push((format!("reference.{i}"), p.detach()));
    }
    named.push(("reference.rho".into(), rho.detach()));
    let (m, v, ref_t) = opt.state();
    for (i, (m, v)) in m.iter().zip(&v).enumerate() {
        named.push((format!("reference_opt.m.{i}"), m.shallow_clone()));
        named.push((format!("reference_opt.v.{i}"), v.shallow_clone()));
    }
    let (m, v, rho_t) = rho_opt.state();
    named.push(("rho_opt.m".into(), m[0].shallow_clone()));
    named.push(("rho_opt.v".into(), v[0].shallow_clone()));
    let (m, v, score_t) = state.score_opt.state();
    for (i, (m, v)) in m.iter().zip(&v).enumerate() {
        named.push((format!("score_opt.m.{i}"), m.shallow_clone()));
        named.push((format!("score_opt.v.{i}"), v.shallow_clone()));
    }
    let tmp = crate::temp_path(path);
    Tensor::write_safetensors(&named, &tmp).map_err(|e| tch_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    let json = serde_json::json!({
        "format": "flyt-checkpoint-v1",
        "step": state.step,
        "reference_t": ref_t,
        "rho_t": rho_t,
        "score_t": score_t,
        "loss_scale": state.reference.scaler().map(|s| serde_json::json!({"scale": s.scale, "growth_tracker": s.growth_tracker})),
        "meta": meta,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Config(e.to_string()))?;
    crate::write_atomic(&sidecar(path), text.as_bytes())
}

/// Loads a checkpoint written by [`save_checkpoint`] into an existing model and state of the same shapes;
/// returns the saved `meta`. A missing tensor or a shape mismatch is an error naming the tensor.
pub fn load_checkpoint<R: ReferenceState>(
    path: &Path,
    model: &(impl ScoringModel + ?Sized),
    state: &mut FlytState<R>,
) -> Result<serde_json::Value> {
    let side = sidecar(path);
    let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&side, "json", e.to_string()))?;
    let counter = |k: &str| {
        json.get(k).and_then(|v| v.as_i64()).ok_or_else(|| Error::format(&side, k, "missing or not an integer"))
    };
    crate::safetensors_header(path)?; // a cut or foreign file: one line, before libtorch reads it
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(path).map_err(|e| tch_err(path, e))?.into_iter().collect();
    let get = |k: &str, like: &Tensor| -> Result<Tensor> {
        let t = tensors.get(k).ok_or_else(|| Error::format(path, k, "missing from the checkpoint"))?;
        if t.size() != like.size() {
            return Err(Error::format(path, k, format!("shape {:?}, the model has {:?}", t.size(), like.size())));
        }
        Ok(t.to_kind(like.kind()).to_device(like.device()))
    };
    let _g = tch::no_grad_guard();
    for (n, mut t) in model.named_parameters().into_iter().chain(model.named_buffers()) {
        let v = get(&format!("model.{n}"), &t)?;
        t.copy_(&v);
    }
    let (params, rho, opt, rho_opt) = state.reference.parts_mut();
    for (i, p) in params.iter_mut().enumerate() {
        let v = get(&format!("reference.{i}"), p)?;
        p.copy_(&v);
    }
    let v = get("reference.rho", rho)?;
    rho.copy_(&v);
    let (m0, v0, _) = opt.state();
    let mut ms = Vec::new();
    let mut vs = Vec::new();
    for i in 0..m0.len() {
        ms.push(get(&format!("reference_opt.m.{i}"), &m0[i])?);
        vs.push(get(&format!("reference_opt.v.{i}"), &v0[i])?);
    }
    opt.set_state(ms, vs, counter("reference_t")?);
    let (m0, v0, _) = rho_opt.state();
    let (m, v) = (get("rho_opt.m", &m0[0])?, get("rho_opt.v", &v0[0])?);
    rho_opt.set_state(vec![m], vec![v], counter("rho_t")?);
    let (m0, v0, _) = state.score_opt.state();
    let mut ms = Vec::new();
    let mut vs = Vec::new();
    for i in 0..m0.len() {
        ms.push(get(&format!("score_opt.m.{i}"), &m0[i])?);
        vs.push(get(&format!("score_opt.v.{i}"), &v0[i])?);
    }
    state.score_opt.set_state(ms, vs, counter("score_t")?);
    state.step = counter("step")? as usize;
    if let (Some(_), Some(saved)) = (state.reference.scaler(), json.get("loss_scale").filter(|v| !v.is_null())) {
        let scale = saved.get("scale").and_then(|v| v.as_f64());
        let tracker = saved.get("growth_tracker").and_then(|v| v.as_i64());
        match (scale, tracker) {
            (Some(scale), Some(growth_tracker)) => {
                state.reference.set_scaler(Some(super::LossScaler { scale, growth_tracker }))
            }
            _ => return Err(Error::format(&side, "loss_scale", "needs a scale and a growth_tracker")),
        }
    }
    Ok(json.get("meta").cloned().unwrap_or(serde_json::Value::Null))
}

/// Loads only the scoring model (parameters and buffers) from a checkpoint, whatever its reference mode, for
/// scoring a pool; returns the sidecar's `meta`.
pub fn load_model(path: &Path, model: &(impl ScoringModel + ?Sized)) -> Result<serde_json::Value> {
    let side = sidecar(path);
    let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&side, "json", e.to_string()))?;
    let want: Vec<(String, Vec<i64>)> = model
        .named_parameters()
        .into_iter()
        .chain(model.named_buffers())
        .map(|(n, t)| (format!("model.{n}"), t.size()))
        .collect();
    crate::check_safetensors(path, &want)?;
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(path).map_err(|e| tch_err(path, e))?.into_iter().collect();
    let _g = tch::no_grad_guard();
    for (n, mut t) in model.named_parameters().into_iter().chain(model.named_buffers()) {
        let k = format!("model.{n}");
        let v = tensors.get(&k).ok_or_else(|| Error::format(path, &k, "missing from the checkpoint"))?;
        if v.size() != t.size() {
            return Err(Error::format(path, &k, format!("shape {:?}, the model has {:?}", v.size(), t.size())));
        }
        t.copy_(&v.to_kind(t.kind()).to_device(t.device()));
    }
    Ok(json.get("meta").cloned().unwrap_or(serde_json::Value::Null))
}
