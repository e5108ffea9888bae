//! `flyt doctor`.

/// Arguments of `flyt doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flyt doctor`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let r = flyt::torch_report();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("libtorch_cuda.so loaded: {}", r.cuda_library_loaded);
        println!("CUDA available: {} ({} devices), cuDNN: {}", r.cuda_available, r.cuda_devices, r.cudnn_available);
        println!(
            "check on {}: ones·0.5 sum = {} ({})",
            r.device,
            r.matmul_check,
            if r.matmul_ok { "ok" } else { "WRONG" }
        );
        println!("10 × {}² f32 matmul on {}: {:.1} ms", r.matmul_side, r.device, r.matmul_ms);
    }
    if !r.matmul_ok {
        anyhow::bail!("the tensor check gave a wrong result");
    }
    Ok(())
}
