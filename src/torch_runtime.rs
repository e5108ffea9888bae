//! Making libtorch's CUDA backend visible, and reporting what libtorch sees.

use std::sync::OnceLock;

use serde::Serialize;

static CUDA_LOADED: OnceLock<bool> = OnceLock::new();

/// Loads `libtorch_cuda.so` into the process (once), so that libtorch registers its CUDA backend.
///
/// rustc links with `--as-needed`, which drops `libtorch_cuda.so` because no Rust code calls into it directly;
/// without it, CUDA stays invisible even on a GPU machine. Call this before the first tch call. On a machine
/// without CUDA libraries the load fails and is ignored: the program runs on CPU. Returns whether it loaded.
pub fn init_torch_runtime() -> bool {
    *CUDA_LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: `name` is a valid NUL-terminated string. dlopen runs the library's initialisers, which is
        // what we want (they register the CUDA dispatch keys with the already-linked libtorch_cpu). The handle
        // is deliberately never closed, so the library stays loaded for the life of the process and nothing
        // can refer to unloaded code.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !handle.is_null()
    })
}

/// What libtorch sees on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct TorchReport {
    /// Whether `libtorch_cuda.so` was loaded.
    pub cuda_library_loaded: bool,
    /// `torch::cuda::is_available()`.
    pub cuda_available: bool,
    /// Number of CUDA devices.
    pub cuda_devices: i64,
    /// cuDNN availability.
    pub cudnn_available: bool,
    /// The device the check ran on (`cpu` or `cuda:0`).
    pub device: String,
    /// Result of the check: the sum of `ones(1024×1024) · full(1024×1024, 0.5)`, which is exactly 2^29.
    pub matmul_check: f64,
    /// Whether the check gave the expected value.
    pub matmul_ok: bool,
    /// Side of the square f32 matrices timed (4096 on CUDA, 1024 on CPU).
    pub matmul_side: i64,
    /// Milliseconds for ten such matrix products on the device.
    pub matmul_ms: f64,
}

/// Loads CUDA if present and runs a small tensor check on the best device: `ones(1024×1024) · full(0.5)` sums
/// to 1024³/2 exactly.
pub fn torch_report() -> TorchReport {
    let loaded = init_torch_runtime();
    let cuda = tch::Cuda::is_available();
    let device = if cuda { tch::Device::Cuda(0) } else { tch::Device::Cpu };
    let opts = (tch::Kind::Float, device);
    let a = tch::Tensor::ones([1024, 1024], opts);
    let b = tch::Tensor::full([1024, 1024], 0.5, opts);
    let check = a.matmul(&b).sum(tch::Kind::Double).double_value(&[]);
    let side: i64 = if cuda { 4096 } else { 1024 };
    let x = tch::Tensor::randn([side, side], opts);
    let _ = x.matmul(&x); // warm-up
    if cuda {
        tch::Cuda::synchronize(0);
    }
    let start = std::time::Instant::now();
    let mut y = x.shallow_clone();
    for _ in 0..10 {
        y = x.matmul(&y) / (side as f64).sqrt();
    }
    let _ = y.sum(tch::Kind::Double).double_value(&[]);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    TorchReport {
        cuda_library_loaded: loaded,
        cuda_available: cuda,
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        device: if cuda { "cuda:0".into() } else { "cpu".into() },
        matmul_check: check,
        matmul_ok: check == 1024.0 * 1024.0 * 1024.0 / 2.0,
        matmul_side: side,
        matmul_ms: ms,
    }
}
