//! Between img2dataset and DataComp's tools (issue 18): the real img2dataset downloading from a loopback HTTP
//! server into a directory `flyt curate --follow` watches with the default arrival rule; reshard output that
//! keeps every uid and is shaped like DataComp's; runs that could do nothing exit non-zero; a bad model file
//! is one line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{flyt, manifest, ok, py, tiny_clip};
use flyt::{ReaderConfig, Record, ShardReader, Uid};

fn img2dataset() -> PathBuf {
    std::env::var("FLYT_IMG2DATASET")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/img2dataset/bin/img2dataset"))
}

/// Serves the files of `dir` over HTTP/1.0 on 127.0.0.1 (a missing file is a 404), each response held back
/// `delay` so that img2dataset's shards stay half-written on disk for a while. Returns the port.
fn serve(dir: PathBuf, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf);
                let path = req.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                std::thread::sleep(delay);
                let _ = match std::fs::read(dir.join(&path)) {
                    Ok(body) => s
                        .write_all(
                            format!(
                                "HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| s.write_all(&body)),
                    Err(_) => s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
            });
        }
    });
    port
}

/// The uid of every accepted sample of the tars in `dir`.
fn uids_of(dir: &Path) -> Vec<Uid> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tar") {
            for r in ShardReader::open(&p, ReaderConfig::default()).unwrap() {
                if let Record::Sample(s) = r.unwrap() {
                    v.push(s.uid);
                }
            }
        }
    }
    v.sort();
    v
}

/// With the default `--arrival rename`, flyt read img2dataset's in-place shards half-written ("changed while
/// read" retries, half a shard committed and published). The default is now `auto`: img2dataset's directory
/// (its `_tmp/`, its `_stats.json`) makes flyt wait for each shard's marker; every shard is committed once,
/// whole, with img2dataset's counts, and the status line says what the manifest says. Then the subset,
/// resharded, keeps every uid, is shaped like DataComp's output and passes `--arrival marker`.
#[test]
fn img2dataset_into_a_followed_directory_then_reshard_and_reingest() {
    let exe = img2dataset();
    assert!(exe.exists(), "{} is missing: ./x test installs img2dataset", exe.display());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    tiny_clip(&p.join("clip"));
    std::fs::create_dir_all(p.join("www")).unwrap();
    let port = serve(p.join("www"), Duration::from_millis(40));
    // 96 images (every 16th url is missing: failed_to_download) in shards of 10.
    py(
        &format!(
            r#"
import random, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
rng = random.Random(7)
urls, caps = [], []
for i in range(96):
    if i % 16 != 5:
        Image.new("RGB", (24 + i % 9, 20 + i % 7), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(f"www/img{{i}}.png")
    urls.append(f"http://127.0.0.1:{port}/img{{i}}.png")
    caps.append(f"a picture number {{i}}")
pq.write_table(pa.table({{"url": urls, "caption": caps}}), "urls.parquet")
"#
        ),
        p,
    );
    std::fs::create_dir_all(p.join("watch")).unwrap();
    let curate = Command::new(env!("CARGO_BIN_EXE_flyt"))
        .args(["curate", "--follow", "--poll-ms", "50", "--publish-ms", "50"])
        .args(["--shards", "watch", "--out", "out", "--model", "clip"])
        .env("FLYT_LOG", "info")
        .current_dir(p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let i2d = Command::new(&exe)
        .args(["--url_list", "urls.parquet", "--input_format", "parquet", "--url_col", "url", "--caption_col"])
        .args(["caption", "--output_format", "webdataset", "--output_folder", "watch", "--number_sample_per_shard"])
        .args(["10", "--processes_count", "1", "--thread_count", "4", "--image_size", "16", "--retries", "0"])
        .env("NO_ALBUMENTATIONS_UPDATE", "1")
        .current_dir(p)
        .output()
        .unwrap();
    assert!(i2d.status.success(), "img2dataset: {}", String::from_utf8_lossy(&i2d.stderr));
    // Once the manifest lists img2dataset's 10 shards (or after a minute), stop the following run.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && std::fs::read(p.join("out/manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_none_or(|m| m["shards"].as_array().map(|a| a.len()) != Some(10))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) with the pid of a child this test spawned and has not waited for.
    unsafe { libc::kill(curate.id() as i32, libc::SIGTERM) };
    let out = curate.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Said at start (no markers yet, unless img2dataset was quicker to start than flyt), and once the layout
    // showed.
    assert!(stderr.contains("flyt: watch: --arrival auto: "), "said at start: {stderr}");
    assert!(stderr.contains("--arrival auto: img2dataset's layout"), "and when img2dataset began: {stderr}");
    assert!(!stderr.contains("changed while"), "no shard was read while written: {stderr}");
    assert!(!stderr.contains("replaced with different bytes"), "no shard was committed half: {stderr}");
    // img2dataset's own counts, shard by shard.
    let mut stats: BTreeMap<String, u64> = BTreeMap::new();
    for e in std::fs::read_dir(p.join("watch")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix("_stats.json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.join("watch").join(&name)).unwrap()).unwrap();
            stats.insert(stem.to_string(), v["successes"].as_u64().unwrap());
        }
    }
    assert_eq!(stats.len(), 10);
    assert_eq!(stats.values().sum::<u64>(), 90);
    let m = manifest(&p.join("out"));
    let shards: BTreeMap<String, u64> = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["rows"].as_u64().unwrap()))
        .collect();
    assert_eq!(shards, stats, "every shard committed once, whole, with img2dataset's counts: {stderr}\n{m}");
    assert_eq!(m["ingest"]["rejected"], 0, "{}", m["ingest"]);
    assert_eq!(m["pool"]["rows"], 90);
    // The status line (the summary's first line) counts what the manifest lists.
    let line = stdout.lines().next().unwrap();
    assert!(line.contains("shards 10 in the pool,") && line.contains("· 90 samples ·"), "{line}");

    // Reshard the subset: uids in every .json, keys `<uid>-<j>`, DataComp's stats files and sample_ids.npy.
    let subset: Vec<Uid> = flyt::read_subset(p.join("out/subset.npy")).unwrap();
    assert!(!subset.is_empty());
    ok(flyt(&["reshard", "--subset", "out/subset.npy", "--out", "resharded", "--shard-size", "16", "watch"], p));
    let checked = py(
        r#"
import glob, json, numpy as np, webdataset as wds
tars = sorted(glob.glob("resharded/*.tar"))
n = 0
for t in tars:
    stats = json.load(open(t[:-4] + "_stats.json"))
    count = sum(1 for _ in wds.WebDataset([t], shardshuffle=False))
    assert stats == {"successes": count}, (t, stats, count)
for s in wds.WebDataset(tars, shardshuffle=False):
    uid, j = s["__key__"].rsplit("-", 1)
    meta = json.loads(s["json"])
    assert meta["uid"] == uid and meta["url"].startswith("http://127.0.0.1:"), meta
    n += 1
ids = np.load("resharded/sample_ids.npy")
assert ids.dtype == np.dtype("u8,u8"), ids.dtype
print(n, len(ids))
"#,
        p,
    );
    assert_eq!(checked.trim(), format!("{} {}", subset.len(), subset.len()));
    // Read again, the output has the subset's uids (none re-derived; a uid's copies after the first are
    // duplicates to a reader), and `--arrival marker` takes every shard.
    let want: BTreeSet<Uid> = subset.iter().copied().collect();
    assert_eq!(uids_of(&p.join("resharded")).into_iter().collect::<BTreeSet<_>>(), want);
    ok(flyt(&["curate", "--arrival", "marker", "--shards", "resharded", "--out", "out2", "--model", "clip"], p));
    let m2 = manifest(&p.join("out2"));
    assert_eq!(m2["pool"]["uids"], want.len());
    assert!(m2["waiting"].as_object().unwrap().is_empty(), "{}", m2["waiting"]);
    // Stamping the derived uids in place of a copy: the same keys, uids in .json, equal to what flyt derived.
    let before = uids_of(&p.join("watch"));
    ok(flyt(&["reshard", "--stamp-uids", "--out", "stamped", "watch"], p));
    assert_eq!(uids_of(&p.join("stamped")), before);
    let derived = py(
        r#"
import glob, json, webdataset as wds
print(sum(1 for s in wds.WebDataset(sorted(glob.glob("stamped/*.tar")), shardshuffle=False) if "uid" in json.loads(s["json"])))
"#,
        p,
    );
    assert_eq!(derived.trim(), "90");
}

/// `--embeddings sidecar` over tars without sidecars, `--arrival marker` with no markers, and a reshard that
/// finds none of the subset's uids all exited 0 having done nothing. Each now exits non-zero saying why.
#[test]
fn runs_that_did_nothing_exited_0() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    tiny_clip(&p.join("clip"));
    flyt::synth::SynthPool { shards: 3, samples_per_shard: 4, ..Default::default() }.write(&p.join("pool")).unwrap();
    let o = flyt(&["curate", "--shards", "pool", "--out", "o1", "--embeddings", "sidecar"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("3 shard(s) wait for their sidecars") && err.contains("nothing was curated"), "{err}");
    let o = flyt(&["curate", "--shards", "pool", "--out", "o2", "--arrival", "marker", "--model", "clip"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("3 shard(s) wait for their completion markers"), "{err}");
    std::fs::create_dir_all(p.join("empty")).unwrap();
    let o = flyt(&["curate", "--shards", "empty", "--out", "o3"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no shards") && err.contains("empty"), "{err}");
    flyt::write_subset(p.join("subset.npy"), &[Uid::from_u128(1), Uid::from_u128(2)]).unwrap();
    let o = flyt(&["reshard", "--subset", "subset.npy", "--out", "r", "pool"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("none of the 2 uids") && err.contains("12 input samples"), "{err}");
}

/// A CLIP folder whose weights had a tensor of the wrong shape ended in libtorch's message and C++
/// backtrace. It is one line naming the file, the tensor, the expected and the found shape.
#[test]
fn a_wrong_shaped_clip_tensor_printed_a_libtorch_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    tiny_clip(&p.join("clip"));
    py(
        r#"
from safetensors.torch import load_file, save_file
t = load_file("clip/model.safetensors")
k = "text_model.encoder.layers.0.mlp.fc1.weight"
t[k] = t[k].t().contiguous()
save_file(t, "clip/model.safetensors")
"#,
        p,
    );
    flyt::synth::SynthPool { shards: 1, samples_per_shard: 2, ..Default::default() }.write(&p.join("pool")).unwrap();
    let o = flyt(&["curate", "--shards", "pool", "--out", "o", "--model", "clip"], p);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err.lines().find(|l| l.contains("error")).unwrap_or("");
    assert!(
        line.contains("model.safetensors")
            && line.contains("text_model.encoder.layers.0.mlp.fc1.weight")
            && line.contains("[16, 32]")
            && line.contains("[32, 16]"),
        "{err}"
    );
    assert!(!err.contains("frame #") && !err.contains("Exception raised"), "{err}");
}
