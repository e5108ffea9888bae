//! Trained scoring models ready to score a pool: a FLYT head over frozen embeddings ([`FlytScorer`]) and an
//! M-FLYT mixer as plain arithmetic over per-method scores ([`MixWeights`]), each with the digest of the
//! checkpoint it came from (a changed file is a changed model).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::{GluHead, Mixer, ScoringModel, load_model};
use crate::{Error, Result, file_sha256};

/// Which scoring model a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A FLYT head over [u; t] embeddings (`flyt train flyt`).
    Flyt,
    /// An M-FLYT mixer over score columns (`flyt train mflyt`).
    Mflyt,
}

impl ModelKind {
    /// `flyt` or `mflyt`, as the sidecar spells it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Flyt => "flyt",
            ModelKind::Mflyt => "mflyt",
        }
    }
}

/// What a checkpoint's JSON sidecar (`<checkpoint>.json`) says: the model's kind and shape, the step it was
/// saved at, and the run's description (`meta`: mode, inputs, the CLIP model, the embedding prefix, ...).
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    /// The model kind.
    pub kind: ModelKind,
    /// FLYT: the embedding dimension the head takes (0 for a mixer).
    pub dim: usize,
    /// M-FLYT: the mixer's columns, in input order (empty for a head).
    pub columns: Vec<String>,
    /// The step the checkpoint was saved at.
    pub step: u64,
    /// The run's description as saved.
    pub meta: serde_json::Value,
}

impl CheckpointInfo {
    /// Reads `<checkpoint>.json`; a missing or wrong field is an error naming the sidecar and the field.
    pub fn read(checkpoint: &Path) -> Result<Self> {
        let side = checkpoint.with_extension("json");
        let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&side, "json", e.to_string()))?;
        let meta = json.get("meta").cloned().unwrap_or(serde_json::Value::Null);
        let kind = match meta["kind"].as_str() {
            Some("flyt") => ModelKind::Flyt,
            Some("mflyt") => ModelKind::Mflyt,
            Some(k) => return Err(Error::format(&side, "meta.kind", format!("unknown model kind {k:?}"))),
            None => return Err(Error::format(&side, "meta.kind", "missing")),
        };
        let dim = match kind {
            ModelKind::Flyt => {
                meta["dim"].as_u64().ok_or_else(|| Error::format(&side, "meta.dim", "missing"))? as usize
            }
            ModelKind::Mflyt => 0,
        };
        let columns: Vec<String> = meta["columns"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if kind == ModelKind::Mflyt && columns.is_empty() {
            return Err(Error::format(&side, "meta.columns", "no columns"));
        }
        Ok(CheckpointInfo { kind, dim, columns, step: json["step"].as_u64().unwrap_or(0), meta })
    }

    /// An error unless the checkpoint holds a `want` model.
    pub fn expect(&self, checkpoint: &Path, want: ModelKind) -> Result<()> {
        if self.kind == want {
            return Ok(());
        }
        Err(Error::format(
            checkpoint.with_extension("json"),
            "meta.kind",
            format!("a {} model, not {}", self.kind.name(), want.name()),
        ))
    }
}

/// A FLYT scoring head loaded from a `flyt train flyt` checkpoint, scoring (image, text) embedding pairs.
///
/// ```no_run
/// let s = flyt::train::FlytScorer::load("run/checkpoint.safetensors".as_ref(), tch::Device::Cpu).unwrap();
/// let scores = s.score(&vec![0.0; s.dim()], &vec![0.0; s.dim()]).unwrap();
/// assert_eq!(scores.len(), 1);
/// ```
pub struct FlytScorer {
    _vs: tch::nn::VarStore,
    head: GluHead,
    dim: usize,
    device: Device,
    digest: String,
    path: PathBuf,
}

impl FlytScorer {
    /// Loads the head of a FLYT checkpoint (`<path>` and its `.json` sidecar).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let info = CheckpointInfo::read(path)?;
        info.expect(path, ModelKind::Flyt)?;
        let dim = info.dim;
        let vs = tch::nn::VarStore::new(device);
        let head = GluHead::new(&vs.root(), dim as i64);
        load_model(path, &head)?;
        Ok(FlytScorer { _vs: vs, head, dim, device, digest: file_sha256(path)?, path: path.to_path_buf() })
    }

    /// The embedding dimension the head expects.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// SHA-256 of the checkpoint file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scores `n × dim` image and text embeddings (row-major; normalised here as in training).
    pub fn score(&self, image: &[f32], text: &[f32]) -> Result<Vec<f32>> {
        let d = self.dim;
        if d == 0 || !image.len().is_multiple_of(d) || image.len() != text.len() {
            return Err(Error::Config(format!(
                "the FLYT head takes {d}-d embeddings; got {} image and {} text values",
                image.len(),
                text.len()
            )));
        }
        let n = (image.len() / d) as i64;
        if n == 0 {
            return Ok(Vec::new());
        }
        let m =
            |v: &[f32]| crate::clip::l2_normalize(&Tensor::from_slice(v).view([n, d as i64]).to_device(self.device));
        let s = tch::no_grad(|| self.head.forward(&Tensor::cat(&[m(image), m(text)], 1)));
        Vec::<f32>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float))
            .map_err(|e| Error::Config(format!("FLYT head output: {e}")))
    }
}

/// An M-FLYT mixer as arithmetic: `score = bias + Σ_k weight_k · (x_k − mean_k) / std_k` over named columns,
/// in f64 (the same function the mixer computes in training).
#[derive(Clone, Debug, PartialEq)]
pub struct MixWeights {
    /// The score columns, in the mixer's input order.
    pub columns: Vec<String>,
    /// Per-column means (the pool statistics stored in the checkpoint).
    pub mean: Vec<f64>,
    /// Per-column standard deviations.
    pub std: Vec<f64>,
    /// Per-column weights.
    pub weight: Vec<f64>,
    /// The bias.
    pub bias: f64,
    /// SHA-256 of the checkpoint file (empty when built by hand).
    pub digest: String,
}

impl MixWeights {
    /// Loads an M-FLYT checkpoint (`<path>` and its `.json` sidecar, which names the columns).
    pub fn load(path: &Path) -> Result<Self> {
        let info = CheckpointInfo::read(path)?;
        info.expect(path, ModelKind::Mflyt)?;
        let columns = info.columns;
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let mixer = Mixer::new(&vs.root(), columns.len() as i64);
        load_model(path, &mixer)?;
        let v =
            |t: &Tensor| -> Vec<f64> { Vec::<f64>::try_from(t.to_kind(Kind::Double).view([-1])).unwrap_or_default() };
        let (w, b) = mixer.weights();
        let buffers = mixer.buffers();
        let mw = MixWeights {
            mean: v(&buffers[0].1),
            std: v(&buffers[1].1),
            weight: v(&w),
            bias: v(&b).first().copied().unwrap_or(0.0),
            columns,
            digest: file_sha256(path)?,
        };
        mw.check().map_err(|why| Error::format(path, "model", why))?;
        Ok(mw)
    }

    /// Checks the shapes and that every std is positive and finite.
    pub fn check(&self) -> std::result::Result<(), String> {
        let k = self.columns.len();
        if self.mean.len() != k || self.std.len() != k || self.weight.len() != k {
            return Err(format!(
                "{k} columns but {} means, {} stds, {} weights",
                self.mean.len(),
                self.std.len(),
                self.weight.len()
            ));
        }
        if let Some(i) = self.std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!("std of column {:?} is {}", self.columns[i], self.std[i]));
        }
        Ok(())
    }

    /// The mixed score of one row of column values (in [`MixWeights::columns`] order).
    pub fn mix(&self, values: &[f64]) -> f64 {
        let terms = values.iter().zip(&self.weight).zip(self.mean.iter().zip(&self.std));
        self.bias + terms.map(|((x, w), (m, s))| w * (x - m) / s).sum::<f64>()
    }
}
