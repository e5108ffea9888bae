//! `flyt embed-bench`: the image tower's throughput on a randomly initialised CLIP (for GPU checks).

use std::time::Instant;

use flyt::DeviceSpec;
use flyt::clip::{Clip, ClipConfig};

use crate::Result;

/// Architecture presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arch {
    /// ViT-B/32.
    #[default]
    B32,
    /// ViT-L/14.
    L14,
}

/// What to time.
#[derive(Clone, Debug)]
pub struct EmbedBenchConfig {
    /// The architecture.
    pub arch: Arch,
    /// Batch size.
    pub batch: i64,
    /// Timed iterations (after 3 warm-up ones).
    pub iters: usize,
    /// Where it runs (bf16 on CUDA).
    pub device: DeviceSpec,
}

/// The measured rate.
#[derive(Clone, Debug)]
pub struct EmbedBenchReport {
    /// Images per second.
    pub images_per_second: f64,
}

/// Times the image tower.
pub fn embed_bench(c: &EmbedBenchConfig) -> Result<EmbedBenchReport> {
    let device = c.device.resolve()?;
    let config = match c.arch {
        Arch::B32 => ClipConfig::vit_b32(),
        Arch::L14 => ClipConfig::vit_l14(),
    };
    let mut vs = tch::nn::VarStore::new(device);
    let model = Clip::new(&vs.root(), &config)?;
    let kind = if device.is_cuda() { tch::Kind::BFloat16 } else { tch::Kind::Float };
    if device.is_cuda() {
        vs.bfloat16();
    }
    let side = config.vision_config.image_size;
    let x = tch::Tensor::randn([c.batch, 3, side, side], (kind, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let secs = tch::no_grad(|| {
        for _ in 0..3 {
            let _ = model.image_features(&x);
        }
        sync();
        let t = Instant::now();
        for _ in 0..c.iters {
            let _ = model.image_features(&x);
        }
        sync();
        t.elapsed().as_secs_f64()
    });
    Ok(EmbedBenchReport { images_per_second: (c.batch as f64 * c.iters as f64) / secs })
}
