//! WebDataset read throughput: parse + group (no image decode) over a generated shard in img2dataset's layout
//! (jpg ≈ 30 KB + txt + json), single-threaded, against a baseline measured in the same run: reading the same
//! file's bytes into memory with nothing else (the I/O and memcpy ceiling).
//!
//! `cargo bench --bench wds_read -- [SAMPLES] [REPEATS]` (default 10000 samples, 5 repeats; best run reported).

use std::io::Read;
use std::time::Instant;

use flyt::synth::{SynthImage, SynthPool};
use flyt::{ReaderConfig, Record, ShardReader};

fn best<F: FnMut() -> u64>(repeats: usize, mut f: F) -> (f64, u64) {
    let mut best = f64::INFINITY;
    let mut out = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test at a tiny size.
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let samples: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(if bench { 10_000 } else { 200 });
    let repeats: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(if bench { 5 } else { 1 });
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = SynthPool { shards: 1, samples_per_shard: samples, image: SynthImage::Jpeg(124), seed: 1, dirt: 0.0 };
    let shard = pool.write(dir.path()).expect("writing the shard").remove(0);
    let size = std::fs::metadata(&shard).expect("stat").len();
    println!(
        "shard: {samples} samples, {:.1} MB ({:.1} KB/sample)",
        size as f64 / 1e6,
        size as f64 / 1e3 / samples as f64
    );

    let (t_raw, n_raw) = best(repeats, || {
        let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&shard).expect("open"));
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf).expect("read");
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    assert_eq!(n_raw, size);
    let read_all = |path: &std::path::Path| {
        let mut accepted = 0u64;
        for r in ShardReader::open(path, ReaderConfig::default()).expect("open") {
            if let Record::Sample(_) = r.expect("read") {
                accepted += 1;
            }
        }
        accepted
    };
    let (t_wds, accepted) = best(repeats, || read_all(&shard));
    assert_eq!(accepted as usize, samples);

    // The same shard gzip-compressed.
    let gz = dir.path().join("shard.tar.gz");
    {
        let mut enc =
            flate2::write::GzEncoder::new(std::fs::File::create(&gz).expect("create"), flate2::Compression::fast());
        std::io::copy(&mut std::fs::File::open(&shard).expect("open"), &mut enc).expect("compress");
        enc.finish().expect("finish");
    }
    let (t_gz, accepted_gz) = best(repeats, || read_all(&gz));
    assert_eq!(accepted_gz as usize, samples);

    let sps = samples as f64 / t_wds;
    println!(
        "baseline raw read     : {:>10.0} samples/s  {:>7.0} MB/s",
        samples as f64 / t_raw,
        size as f64 / 1e6 / t_raw
    );
    println!("flyt parse+group .tar : {:>10.0} samples/s  {:>7.0} MB/s", sps, size as f64 / 1e6 / t_wds);
    println!(
        "flyt parse+group .gz  : {:>10.0} samples/s  {:>7.0} MB/s (uncompressed)",
        samples as f64 / t_gz,
        size as f64 / 1e6 / t_gz
    );
    println!("ratio parse+group / raw read: {:.2}", t_raw / t_wds);
    println!("goal ≥ 100000 samples/s per core: {}", if sps >= 100_000.0 { "met" } else { "NOT met" });
}
