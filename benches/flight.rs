//! DoGet throughput of the Flight service (`flyt serve`) against pyarrow's own Flight server serving the same
//! score table from the same files, measured by the same python client in the same run.
//!
//! `cargo bench -p flyt-pipelines --bench flight -- [ROWS] [SHARDS] [THREADS]`: default 10,000,000 rows in 100
//! shards, 4 client threads. Needs the project venv's python with pyarrow (`./x setup`). Under `cargo test` it
//! runs once at 20,000 rows as a smoke test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flyt::curation::{FileId, ShardRecord};
use flyt_pipelines::CurateConfig;

fn python() -> PathBuf {
    std::env::var("FLYT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/py/flight_bench.py")
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port()
}

fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(port: u16, threads: usize) -> serde_json::Value {
    let o = Command::new(python())
        .arg(script())
        .args(["read", &port.to_string(), &threads.to_string()])
        .output()
        .expect("running the python client");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("the client's JSON line")
}

/// A curation output with `shards` score tables of `rows / shards` rows (what `flyt curate` writes).
fn fake_output(out: &Path, rows: usize, shards: usize) {
    std::fs::create_dir_all(out.join("shards")).expect("a directory");
    let per = rows / shards;
    let mut listed = Vec::new();
    for s in 0..shards {
        let name = format!("{s:08}");
        let ids: Vec<(flyt::Uid, String)> =
            (0..per).map(|i| (flyt::Uid::from_parts(s as u64, i as u64), format!("{:09}", i))).collect();
        let scores: Vec<f32> = (0..per).map(|i| ((i * 7919 + s) % 1000) as f32 / 1000.0).collect();
        flyt::write_score_table(
            out.join(format!("shards/{name}.scores.parquet")),
            &ids,
            &[],
            &[("clip_score", &scores)],
        )
        .expect("a score table");
        let record = ShardRecord {
            name: name.clone(),
            inputs: Vec::<FileId>::new(),
            via: "sidecar".into(),
            models: Default::default(),
            columns: vec!["clip_score".into()],
            rows: per as u64,
            stats: Default::default(),
            embeddings: None,
            prefix: "b32".into(),
            dim: 0,
            flyt_version: env!("CARGO_PKG_VERSION").into(),
            content_digests: true,
            scores: None,
        };
        std::fs::write(out.join(format!("shards/{name}.json")), serde_json::to_vec(&record).expect("JSON"))
            .expect("a record");
        listed.push(serde_json::json!({"name": name, "rows": per}));
    }
    flyt::write_subset(out.join("subset.npy"), &[]).expect("a subset");
    let sha = flyt::file_sha256(&out.join("subset.npy")).expect("a digest");
    let mut config = CurateConfig::default();
    config.output.dir = out.to_path_buf();
    let manifest = serde_json::json!({
        "version": 1, "complete": true, "frontier": null, "subset": {"sha256": sha, "uids": 0, "samples": 0},
        "shards": listed, "failed": [], "external_scores": [], "config": config,
    });
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&manifest).expect("JSON")).expect("a manifest");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let args: Vec<usize> =
        std::env::args().skip(1).filter(|a| !a.starts_with("--")).filter_map(|a| a.parse().ok()).collect();
    let (rows, shards, threads) = if bench {
        (
            args.first().copied().unwrap_or(10_000_000),
            args.get(1).copied().unwrap_or(100),
            args.get(2).copied().unwrap_or(4),
        )
    } else {
        (20_000, 4, 2)
    };
    if !python().exists() {
        println!("flight: skipped (no project venv: run ./x setup)");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("out");
    let t = Instant::now();
    fake_output(&out, rows, shards);
    println!("flight: {rows} rows in {shards} score tables written in {:.1} s", t.elapsed().as_secs_f64());

    let p1 = port();
    let opts = flyt_pipelines::FlightOptions {
        addr: format!("127.0.0.1:{p1}").parse().expect("an address"),
        ..Default::default()
    };
    let (stop, handle) = flyt_pipelines::spawn_flight(out.clone(), opts).expect("the flyt service");
    wait_listening(p1);
    std::thread::sleep(Duration::from_millis(300)); // the first directory read
    let _ = read(p1, threads);
    let ours = read(p1, threads);
    let _ = stop.send(());
    let _ = handle.join();

    let p2 = port();
    let mut server = Command::new(python())
        .arg(script())
        .args(["serve", &p2.to_string(), out.to_str().expect("a UTF-8 path")])
        .spawn()
        .expect("the pyarrow server");
    wait_listening(p2);
    let _ = read(p2, threads);
    let theirs = read(p2, threads);
    let _ = server.kill();
    let _ = server.wait();

    let rate = |v: &serde_json::Value| {
        let s = v["seconds"].as_f64().unwrap_or(f64::NAN);
        (v["rows"].as_f64().unwrap_or(0.0) / s, v["bytes"].as_f64().unwrap_or(0.0) / s / 1e6)
    };
    let ((r1, m1), (r2, m2)) = (rate(&ours), rate(&theirs));
    assert_eq!(ours["rows"], theirs["rows"]);
    println!(
        "flight DoGet of the score table ({} rows, {} endpoints, {threads} client threads): flyt serve {:.2} M rows/s \
         ({m1:.0} MB/s), pyarrow's Flight server {:.2} M rows/s ({m2:.0} MB/s): {:.2}×",
        ours["rows"],
        shards,
        r1 / 1e6,
        r2 / 1e6,
        r1 / r2
    );
}
