//! `flyt embed-bench`: image-tower throughput of a randomly initialised CLIP (for GPU checks).

use std::time::Instant;

use flyt::clip::{Clip, ClipConfig};

/// Architecture presets.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Arch {
    /// ViT-B/32.
    B32,
    /// ViT-L/14.
    L14,
}

/// Arguments of `flyt embed-bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Arch::B32)]
    pub arch: Arch,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch: i64,
    /// Timed iterations (after 3 warm-up ones).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flyt embed-bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    flyt::init_torch_runtime();
    let device = match a.device.as_str() {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        s => tch::Device::Cuda(
            s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).ok_or_else(|| anyhow::anyhow!("bad --device {s}"))?,
        ),
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        anyhow::bail!("CUDA is not available here");
    }
    let config = match a.arch {
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
    let x = tch::Tensor::randn([a.batch, 3, side, side], (kind, device));
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    tch::no_grad(|| {
        for _ in 0..3 {
            let _ = model.image_features(&x);
        }
        sync();
        let t = Instant::now();
        for _ in 0..a.iters {
            let _ = model.image_features(&x);
        }
        sync();
        let secs = t.elapsed().as_secs_f64();
        let rate = (a.batch as f64 * a.iters as f64) / secs;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"arch": format!("{:?}", a.arch), "batch": a.batch, "device": a.device, "img_per_s": rate})
            );
        } else {
            println!("flyt image tower {:?} batch {} on {}: {rate:.0} img/s", a.arch, a.batch, a.device);
        }
    });
    Ok(())
}
