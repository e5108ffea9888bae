//! `flyt embed-bench`.

use flyt::DeviceSpec;
use flyt_pipelines::{Arch, EmbedBenchConfig, embed_bench};

/// Architecture presets.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Preset {
    /// ViT-B/32.
    B32,
    /// ViT-L/14.
    L14,
}

/// Arguments of `flyt embed-bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Preset::B32)]
    pub arch: Preset,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch: i64,
    /// Timed iterations (after 3 warm-up ones).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda", value_parser = crate::device)]
    pub device: DeviceSpec,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flyt embed-bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let arch = match a.arch {
        Preset::B32 => Arch::B32,
        Preset::L14 => Arch::L14,
    };
    let r = embed_bench(&EmbedBenchConfig { arch, batch: a.batch, iters: a.iters, device: a.device })?;
    let rate = r.images_per_second;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"arch": format!("{:?}", a.arch), "batch": a.batch, "device": a.device.to_string(), "img_per_s": rate})
        );
    } else {
        println!("flyt image tower {:?} batch {} on {}: {rate:.0} img/s", a.arch, a.batch, a.device);
    }
    Ok(())
}
