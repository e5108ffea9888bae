//! FLYT training's memory against the size of its pool: the pool held in memory against `--stream-pool` (left
//! on disk, each step's rows read in place), each run in a child process of its own so that its peak RSS
//! (VmHWM) is its own; same seed, so the loss curves are compared line by line.
//!
//! `cargo bench -p flyt-pipelines --bench train_pool -- embedding [N] [STEPS] [BATCH] [DOWN_BATCH] [RUNS]`
//!   a generated DataComp pool of N rows with 512-d f16 `b32` sidecars (B/32's width; written once under
//!   `target/bench-data/`, or `$FLYT_BENCH_DATA`, and reused), a 1,000-class downstream task of 10,000
//!   embedded images and 1 template a class; RUNS is `both` (in memory, then streamed) or `stream`. Default
//!   10⁷ rows, 200 steps, batch 4096, downstream batch 3072 (the paper's), streamed only.
//! `cargo bench -p flyt-pipelines --bench train_pool -- score [N]`
//!   `flyt score` with the head the last streamed `embedding` run over N rows trained, over that pool: rows/s
//!   and peak RSS (in a child process), against reading the pool's `.npz` arrays alone in the same run.
//! `cargo bench -p flyt-pipelines --bench train_pool -- full [N] [STEPS] [BATCH]`
//!   full reference mode (the CLIP towers) over N generated 160-px JPEG samples in uncompressed shards, a small
//!   randomly initialised CLIP at 224 px with B/32's 512-d projection, 10 classes of labelled images; both runs.
//!   Default 4,000 samples, 5 steps, batch 32.
//! Under `cargo test` each mode runs once at a tiny size as a smoke test.

mod peak_rss;
use peak_rss::peak_rss_mb;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flyt_pipelines::{ReferenceMode, TrainConfig};

fn main() {
    flyt::init_torch_runtime();
    if let Ok(spec) = std::env::var("FLYT_TRAIN_CHILD") {
        child(&spec);
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mode = args.first().cloned();
    let rest: Vec<String> = args.iter().skip(1).cloned().collect();
    if mode.is_none() || mode.as_deref() == Some("embedding") {
        embedding(bench, &rest);
    }
    if mode.is_none() || mode.as_deref() == Some("score") {
        score(bench, &rest);
    }
    if mode.is_none() || mode.as_deref() == Some("full") {
        full(bench, &rest);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, bench: bool, full: T, smoke: T) -> T {
    if !bench {
        return smoke;
    }
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(full)
}

/// One training run in this process: `mode|stream|steps|batch|down_batch|out|inputs...`; prints
/// `RESULT seconds peak_rss_mb`.
fn child(spec: &str) {
    let f: Vec<&str> = spec.split('|').collect();
    let (mode, stream) = (f[0], f[1] == "1");
    if mode == "score" {
        let t = Instant::now();
        let r = flyt_pipelines::score(&flyt_pipelines::ScoreConfig {
            model: PathBuf::from(f[2]),
            pool: Some(PathBuf::from(f[3])),
            clip: None,
            shards: Vec::new(),
            scores: Vec::new(),
            out: PathBuf::from(f[4]),
            device: flyt::DeviceSpec::Cpu,
        })
        .expect("scoring");
        println!("RESULT {:.3} {:.1} {}", t.elapsed().as_secs_f64(), peak_rss_mb(), r.rows);
        return;
    }
    let mut c = TrainConfig {
        stream_pool: stream,
        out: PathBuf::from(f[5]),
        device: flyt::DeviceSpec::Cpu,
        checkpoint_every: 1_000_000,
        ..Default::default()
    };
    c.training.steps = f[2].parse().expect("steps");
    c.training.batch = f[3].parse().expect("batch");
    c.training.down_batch = f[4].parse().expect("down batch");
    c.training.warmup = 1;
    if mode == "embedding" {
        c.pool = Some(PathBuf::from(f[6]));
        c.downstream = vec![PathBuf::from(f[7])];
    } else {
        c.reference = ReferenceMode::Full;
        c.model = Some(PathBuf::from(f[6]));
        c.shards = vec![PathBuf::from(f[7])];
        c.down_shards = vec![PathBuf::from(f[8])];
        c.classnames = vec![PathBuf::from(f[9])];
        c.augment = true;
    }
    let t = Instant::now();
    flyt_pipelines::train(&c).expect("training");
    println!("RESULT {:.3} {:.1}", t.elapsed().as_secs_f64(), peak_rss_mb());
}

/// Runs `spec` in a child process of this binary; returns the numbers of its `RESULT` line.
fn child_result(spec: &[String]) -> Vec<f64> {
    let o = Command::new(std::env::current_exe().expect("this binary"))
        .env("FLYT_TRAIN_CHILD", spec.join("|"))
        .output()
        .expect("running a child");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout.lines().find(|l| l.starts_with("RESULT ")).expect("a RESULT line");
    line.split_whitespace().skip(1).map(|x| x.parse().expect("a number")).collect()
}

/// Runs one training in a child process; returns (seconds, peak RSS in MB, the loss curve).
fn run(spec: &[String]) -> (f64, f64, String) {
    let out = Path::new(&spec[5]).to_path_buf();
    let _ = std::fs::remove_dir_all(&out);
    let v = child_result(spec);
    let curve = std::fs::read_to_string(out.join("losses.csv")).expect("losses.csv");
    (v[0], v[1], curve)
}

/// Where the generated data go: `$FLYT_BENCH_DATA` or `target/bench-data/` (kept for the next run), or, under
/// `cargo test`, one temporary directory for the whole smoke run.
fn data_dir(bench: bool) -> PathBuf {
    static SMOKE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    if !bench {
        return SMOKE.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path().to_path_buf();
    }
    let d = std::env::var("FLYT_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"));
    std::fs::create_dir_all(&d).expect("the bench data directory");
    d
}

fn report(what: &str, runs: &[(&str, (f64, f64, String))], steps: usize) {
    for (name, (s, rss, _)) in runs {
        println!("{what}: {name:>9}: {s:8.1} s ({:.3} s/step incl. loading), peak RSS {rss:8.0} MB", s / steps as f64);
    }
    if let [(_, a), (_, b)] = runs {
        println!(
            "{what}: streamed / in memory: peak RSS {:.3}, time {:.3}; loss curves {}",
            b.1 / a.1,
            b.0 / a.0,
            if a.2 == b.2 { "equal" } else { "DIFFER" }
        );
        assert_eq!(a.2, b.2, "{what}: the streamed loss curve differs from the in-memory one");
    }
}

/// The generated embedding-mode pool of about `n` rows (written once), and its directory.
fn pool_of(dir: &Path, n: usize, dim: usize) -> PathBuf {
    let per_shard = 100_000.min(n);
    let shards = n.div_ceil(per_shard);
    let pool = dir.join(format!("pool-{shards}x{per_shard}-{dim}"));
    let done = pool.join(".complete");
    if !done.exists() {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(&pool);
        flyt::synth::SynthSidecars { shards, rows_per_shard: per_shard, dim, seed: 11, ..Default::default() }
            .write(&pool)
            .expect("writing the pool");
        std::fs::write(&done, b"").expect("marking the pool complete");
        println!("wrote {} rows in {:.1} s to {}", shards * per_shard, t.elapsed().as_secs_f64(), pool.display());
    }
    pool
}

fn score(bench: bool, args: &[String]) {
    let n = arg(args, 0, bench, 10_000_000usize, 20_000);
    let dir = data_dir(bench);
    let pool = pool_of(&dir, n, 512);
    let model = dir.join("train-streamed/checkpoint.safetensors");
    if !model.exists() {
        if bench {
            println!("score: run the embedding mode over {n} rows first (its head is what is scored)");
            return;
        }
        embedding(false, &[]);
    }
    // Baseline: the pool's arrays read alone (every row of every `.npz`), as the scorer reads them.
    let t = Instant::now();
    let mut rows = 0usize;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&pool)
        .expect("the pool")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "npz"))
        .collect();
    files.sort();
    for f in &files {
        let a = flyt::read_npz(f).expect("an npz");
        rows += a.get("b32_img").map_or(0, |x| x.shape[0]);
    }
    let read_s = t.elapsed().as_secs_f64();
    let out = dir.join("scored");
    let _ = std::fs::remove_dir_all(&out);
    let spec = ["score", "0", &model.to_string_lossy(), &pool.to_string_lossy(), &out.to_string_lossy()];
    let v = child_result(&spec.map(|s| s.to_string()));
    assert_eq!(v[2] as usize, rows, "every row scored once");
    println!(
        "score: {rows} rows in {:.1} s = {:.0} rows/s, peak RSS {:.0} MB; reading the arrays alone: {read_s:.1} s \
         ({:.0} rows/s); scoring / reading {:.2}",
        v[0],
        rows as f64 / v[0],
        v[1],
        rows as f64 / read_s,
        v[0] / read_s
    );
}

fn embedding(bench: bool, args: &[String]) {
    let n = arg(args, 0, bench, 10_000_000usize, 20_000);
    let steps = arg(args, 1, bench, 200usize, 3);
    let batch = arg(args, 2, bench, 4096usize, 64);
    let down_batch = arg(args, 3, bench, 3072usize, 48);
    let runs = arg(args, 4, bench, "stream".to_string(), "both".to_string());
    let (classes, images, dim) = if bench { (1000, 10_000, 512) } else { (10, 200, 512) };
    let dir = data_dir(bench);
    let pool = pool_of(&dir, n, dim);
    let task = dir.join(format!("task-{classes}x{images}-{dim}.npz"));
    if !task.exists() {
        use flyt::{NpyArray, NpyData};
        let mut rng = flyt::rng::SplitMix64::new(3);
        let mut arrays = std::collections::BTreeMap::new();
        let mut gauss = |k: usize| NpyData::F32((0..k).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect());
        arrays.insert("image".to_string(), NpyArray { shape: vec![images, dim], data: gauss(images * dim) });
        arrays.insert("prompts".to_string(), NpyArray { shape: vec![classes, 1, dim], data: gauss(classes * dim) });
        let labels = NpyData::I64((0..images).map(|i| (i % classes) as i64).collect());
        arrays.insert("labels".to_string(), NpyArray { shape: vec![images], data: labels });
        flyt::write_npz(&task, &arrays, false).expect("writing the task");
    }
    let spec = |stream: bool| -> Vec<String> {
        let out = dir.join(if stream { "train-streamed" } else { "train-in-memory" });
        [
            "embedding",
            if stream { "1" } else { "0" },
            &steps.to_string(),
            &batch.to_string(),
            &down_batch.to_string(),
            &out.to_string_lossy(),
            &pool.to_string_lossy(),
            &task.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    println!(
        "embedding: {n} rows × 512-d f16 [u; t], {steps} steps, batch {batch}, downstream {down_batch} of {images} \
         images, {classes} classes"
    );
    let mut results = Vec::new();
    if runs == "both" {
        results.push(("in memory", run(&spec(false))));
    }
    results.push(("streamed", run(&spec(true))));
    report("embedding", &results, steps);
}

fn full(bench: bool, args: &[String]) {
    let n = arg(args, 0, bench, 4000usize, 48);
    let steps = arg(args, 1, bench, 5usize, 2);
    let batch = arg(args, 2, bench, 32usize, 8);
    let Some(bpe) = std::env::var("FLYT_CLIP_BPE")
        .map(PathBuf::from)
        .ok()
        .or_else(|| Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/clip/bpe_simple_vocab_16e6.txt.gz")))
        .filter(|p| p.exists())
    else {
        println!("full: skipped (no CLIP BPE vocabulary: run ./x setup, or set FLYT_CLIP_BPE)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    // A small CLIP at 224 px with B/32's patch and 512-d projection: the pool's pixels and [u; t] are B/32's
    // size, the towers cheap enough for a CPU.
    let config: flyt::clip::ClipConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4},
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                          "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
        "projection_dim": 512
    }))
    .expect("a valid config");
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let clip = flyt::clip::Clip::new(&vs.root(), &config).expect("a CLIP");
    let model = d.join("clip");
    clip.save(&vs, &model).expect("saving the model");
    flyt::clip::ClipTokenizer::write_hf_vocab(&bpe, &model).expect("writing the vocabulary");
    let per_shard = 1000.min(n);
    flyt::synth::SynthPool {
        shards: n.div_ceil(per_shard),
        samples_per_shard: per_shard,
        image: flyt::synth::SynthImage::Jpeg(160),
        seed: 2,
        dirt: 0.0,
    }
    .write(&d.join("pool"))
    .expect("writing the pool");
    let mut w = flyt::ShardWriter::new(d.join("down"), 1000).expect("a shard writer");
    let mut rng = flyt::rng::SplitMix64::new(4);
    for i in 0..60 {
        let s = flyt::SampleBuilder::new(format!("{i:06}"))
            .image("jpg", flyt::synth::jpeg_image(160, &mut rng))
            .label(i % 10)
            .build();
        w.write(&s).expect("writing a labelled sample");
    }
    w.finish().expect("finishing the labelled shard");
    std::fs::write(d.join("classes.txt"), (0..10).map(|c| format!("class {c}\n")).collect::<String>())
        .expect("class names");
    let spec = |stream: bool| -> Vec<String> {
        [
            "full",
            if stream { "1" } else { "0" },
            &steps.to_string(),
            &batch.to_string(),
            &batch.min(24).to_string(),
            &d.join(if stream { "streamed" } else { "in-memory" }).to_string_lossy(),
            &model.to_string_lossy(),
            &d.join("pool").to_string_lossy(),
            &d.join("down").to_string_lossy(),
            &d.join("classes.txt").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    println!(
        "full: {n} samples (160-px JPEGs), 224-px CLIP with 512-d [u; t], {steps} steps, batch {batch}, augmented"
    );
    let results = vec![("in memory", run(&spec(false))), ("streamed", run(&spec(true)))];
    report("full", &results, steps);
}
