//! The scoring models: `GluHead` (FLYT, notes §2.1) and `Mixer` (M-FLYT, notes §3).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// FLYT's scoring head: one SwiGLU feed-forward layer over x = [u; t] (the frozen CLIP's normalised image and
/// text embeddings), s = W2 · (silu(W1 x + b1) ⊙ (W3 x + b3)) + b2, hidden width 2·dim, one output.
#[derive(Debug)]
pub struct GluHead {
    w1: nn::Linear,
    w3: nn::Linear,
    w2: nn::Linear,
    dim: i64,
}

/// A linear layer initialised as PyTorch's `nn.Linear` is: weights and biases uniform in ±1/√fan_in
/// (`kaiming_uniform_(a=√5)`; tch's own default is Kaiming-uniform with the ReLU gain, √6 ≈ 2.45× wider).
fn torch_linear(vs: nn::Path, fan_in: i64, out: i64) -> nn::Linear {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(vs, fan_in, out, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

impl GluHead {
    /// A head for `dim`-d embeddings, initialised as the official code's `nn.Linear` layers are (PyTorch's
    /// default: uniform in ±1/√fan_in, weights and biases).
    pub fn new(vs: &nn::Path, dim: i64) -> Self {
        let h = 2 * dim;
        Self {
            w1: torch_linear(vs / "w1", 2 * dim, h),
            w3: torch_linear(vs / "w3", 2 * dim, h),
            w2: torch_linear(vs / "w2", h, 1),
            dim,
        }
    }

    /// The cosine-similarity initialisation (notes §2.1): W1 = diag(+1, …, −1, …), W3 maps [u; t] to [t; −u],
    /// W2 all ones, biases 0, plus N(0, noise²) on every weight and bias, so that initially s ≈ ⟨u, t⟩.
    pub fn cos_sim_init(&mut self, noise: f64) {
        let _g = tch::no_grad_guard();
        let d = self.dim;
        let dev = self.w1.ws.device();
        let kind = self.w1.ws.kind();
        let eye = Tensor::eye(d, (kind, dev));
        let z = Tensor::zeros([d, d], (kind, dev));
        let w1 = Tensor::cat(&[Tensor::cat(&[&eye, &z], 1), Tensor::cat(&[&z, &(-&eye)], 1)], 0);
        let w3 = Tensor::cat(&[Tensor::cat(&[&z, &eye], 1), Tensor::cat(&[&(-&eye), &z], 1)], 0);
        self.w1.ws.copy_(&w1);
        self.w3.ws.copy_(&w3);
        let _ = self.w2.ws.fill_(1.0);
        for b in [&mut self.w1.bs, &mut self.w3.bs, &mut self.w2.bs].into_iter().flatten() {
            let _ = b.zero_();
        }
        if noise > 0.0 {
            for t in [&mut self.w1.ws, &mut self.w3.ws, &mut self.w2.ws] {
                let n = t.randn_like() * noise;
                let _ = t.g_add_(&n);
            }
            for b in [&mut self.w1.bs, &mut self.w3.bs, &mut self.w2.bs].into_iter().flatten() {
                let n = b.randn_like() * noise;
                let _ = b.g_add_(&n);
            }
        }
    }

    /// The trainable parameters by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (n, l) in [("w1", &self.w1), ("w3", &self.w3), ("w2", &self.w2)] {
            out.push((format!("{n}.weight"), l.ws.shallow_clone()));
            if let Some(b) = &l.bs {
                out.push((format!("{n}.bias"), b.shallow_clone()));
            }
        }
        out
    }

    /// Scores of `N` examples from their normalised image and text embeddings (`N × dim` each).
    pub fn score(&self, image: &Tensor, text: &Tensor) -> Tensor {
        let x = Tensor::cat(&[image, text], 1);
        let h = self.w1.forward(&x).silu() * self.w3.forward(&x);
        self.w2.forward(&h).squeeze_dim(1)
    }
}

/// M-FLYT's mixer: one linear layer with bias over K per-method scores, as the official `MixingModel`
/// (`Linear(K, 1)`, PyTorch's default init, raw inputs), or with each input z-scored with pool statistics stored
/// in the model (`mean`, `std`, not trained; [`Mixer::set_stats`]) and zero init ([`Mixer::zero_init`]).
#[derive(Debug)]
pub struct Mixer {
    linear: nn::Linear,
    mean: Tensor,
    std: Tensor,
}

impl Mixer {
    /// A mixer over `k` raw inputs (mean 0, std 1 until [`Mixer::set_stats`]), initialised as PyTorch's
    /// `nn.Linear(k, 1)` is (uniform in ±1/√k).
    pub fn new(vs: &nn::Path, k: i64) -> Self {
        Self {
            linear: torch_linear(vs / "linear", k, 1),
            mean: vs.zeros_no_train("mean", &[k]),
            std: vs.ones_no_train("std", &[k]),
        }
    }

    /// Sets the z-scoring statistics from a pool's `N × K` score matrix (population std, floored at 1e-12).
    pub fn set_stats(&mut self, pool: &Tensor) {
        let _g = tch::no_grad_guard();
        let mean = pool.mean_dim([0i64].as_slice(), false, self.mean.kind());
        let std = pool.std_dim([0i64].as_slice(), false, false).clamp_min(1e-12).to_kind(self.std.kind());
        self.mean.copy_(&mean.to_kind(self.mean.kind()));
        self.std.copy_(&std);
    }

    /// The learned weights (per z-scored input) and bias.
    pub fn weights(&self) -> (Tensor, Tensor) {
        let b = self
            .linear
            .bs
            .as_ref()
            .map(|b| b.shallow_clone())
            .unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, self.mean.device())));
        (self.linear.ws.squeeze_dim(0), b)
    }

    /// The trainable parameters by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("linear.weight".to_string(), self.linear.ws.shallow_clone())];
        if let Some(b) = &self.linear.bs {
            out.push(("linear.bias".into(), b.shallow_clone()));
        }
        out
    }

    /// The z-scoring statistics by name (saved with the model, not trained).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        vec![("mean".into(), self.mean.shallow_clone()), ("std".into(), self.std.shallow_clone())]
    }

    /// Starts from zero weights and bias (every example scores the same: uniform upstream weights) instead of
    /// PyTorch's random default, so no input starts with an arbitrary sign (the z-scored variant).
    pub fn zero_init(&mut self) {
        let _g = tch::no_grad_guard();
        let _ = self.linear.ws.zero_();
        if let Some(b) = &mut self.linear.bs {
            let _ = b.zero_();
        }
    }

    /// Mixed scores of an `N × K` matrix of per-method scores.
    pub fn score(&self, scores: &Tensor) -> Tensor {
        self.linear.forward(&((scores - &self.mean) / &self.std)).squeeze_dim(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn cos_sim_init_scores_close_to_the_cosine() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut head = GluHead::new(&vs.root(), 64);
        head.cos_sim_init(0.0);
        let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        let u = norm(Tensor::randn([200, 64], (Kind::Float, Device::Cpu)));
        let t = norm(&u * 0.5 + Tensor::randn([200, 64], (Kind::Float, Device::Cpu)));
        let cos = (&u * &t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let s = tch::no_grad(|| head.score(&u, &t));
        // s = Σ u_i t_i (σ(u_i) + 1 − σ(t_i)) ≈ ⟨u, t⟩ + Σ u_i t_i (u_i − t_i)/4: close, not equal
        let err = (&s - &cos).abs().max().double_value(&[]);
        assert!(err < 0.05, "max |s − cos| = {err}");
        let st = Tensor::stack(&[&s, &cos], 0);
        let corr = st.corrcoef().double_value(&[0, 1]);
        assert!(corr > 0.99, "correlation {corr}");
        assert_eq!(vs.trainable_variables().len(), 6);
    }

    #[test]
    fn mixer_z_scores_with_stored_statistics() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Mixer::new(&vs.root(), 2);
        let pool = Tensor::from_slice(&[1.0f32, 10.0, 3.0, 30.0, 5.0, 50.0]).view([3, 2]);
        m.set_stats(&pool);
        tch::no_grad(|| {
            m.linear.ws.copy_(&Tensor::from_slice(&[2.0f32, -1.0]).view([1, 2]));
            let _ = m.linear.bs.as_mut().unwrap().fill_(0.5);
        });
        // population std of (1, 3, 5) is √(8/3): row 0 z-scores to (−√1.5, −√1.5) ⇒ 2·z − z + 0.5 = 0.5 − √1.5
        let s = tch::no_grad(|| m.score(&pool));
        assert!((s.double_value(&[0]) - (0.5 - 1.5f64.sqrt())).abs() < 1e-6, "{s:?}");
        assert!((s.double_value(&[1]) - 0.5).abs() < 1e-6);
        assert_eq!(vs.trainable_variables().len(), 2, "mean and std are not trained");
        let (w, b) = m.weights();
        assert_eq!(w.size(), vec![2]);
        assert!((b.double_value(&[0]) - 0.5).abs() < 1e-6);
    }
}
