//! Helpers shared by the CLI tests: run the `flyt` binary, run python from the project venv.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `flyt ARGS` in `cwd`.
pub fn flyt(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flyt")).args(args).current_dir(cwd).output().expect("running flyt")
}

/// Asserts success; returns stdout.
pub fn ok(o: impl std::borrow::Borrow<Output>) -> String {
    let o = o.borrow();
    assert!(
        o.status.success(),
        "flyt failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The project venv's python (or `FLYT_PYTHON`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FLYT_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Runs a python script in `cwd`; asserts success; returns stdout.
pub fn py(script: &str, cwd: &Path) -> String {
    run_py(Command::new(python()).arg("-c").arg(script).current_dir(cwd))
}

/// Runs a python script with arguments; asserts success; returns stdout.
pub fn py_args(script: &str, args: &[&str]) -> String {
    run_py(Command::new(python()).arg("-c").arg(script).args(args))
}

fn run_py(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The CLIP BPE vocabulary (`FLYT_CLIP_BPE`, or the one `./x` fetches).
pub fn bpe() -> PathBuf {
    std::env::var("FLYT_CLIP_BPE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/clip/bpe_simple_vocab_16e6.txt.gz"))
}

/// Per uid: the kept row's (shard, key) and its CLIP score.
pub type Rows = std::collections::BTreeMap<flyt::Uid, ((String, String), f32)>;

/// The CLIP score of every uid of a sidecar pool directory (`*.parquet` + `*.npz` with `b32_*`), one row per
/// uid: the first row of a file, and of files the least (name, row). The batch reference for `flyt curate`.
pub fn sidecar_rows(dir: &Path) -> (Rows, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "parquet") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    let mut best: Rows = Default::default();
    let mut rows = 0;
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let (img, n, d) = flyt::read_npz_matrix(f.with_extension("npz"), "b32_img").unwrap();
        let (txt, _, _) = flyt::read_npz_matrix(f.with_extension("npz"), "b32_txt").unwrap();
        assert_eq!(n * d, img.len());
        let meta = flyt::read_metadata(&f).unwrap();
        let mut seen = std::collections::HashSet::new();
        for r in meta.rows {
            if !seen.insert(r.uid) {
                continue;
            }
            rows += 1;
            let s = flyt::methods::clip_score(&img[r.row * d..(r.row + 1) * d], &txt[r.row * d..(r.row + 1) * d], d)
                .unwrap()[0];
            let key = (stem.clone(), format!("{:09}", r.row));
            match best.get(&r.uid) {
                Some((k, _)) if *k <= key => {}
                _ => {
                    best.insert(r.uid, (key, s));
                }
            }
        }
    }
    (best, rows)
}

/// [`sidecar_rows`]' CLIP scores.
pub fn sidecar_clip_scores(dir: &Path) -> std::collections::BTreeMap<flyt::Uid, f32> {
    sidecar_rows(dir).0.into_iter().map(|(u, (_, s))| (u, s)).collect()
}

/// Writes an M-FLYT checkpoint (safetensors + JSON sidecar) mixing `columns` with `weights` (z-scored with
/// mean 0 and std 1, bias 0).
pub fn mixer(path: &Path, columns: &[&str], weights: &[f32]) {
    use tch::{Device, Tensor, nn};
    let vs = nn::VarStore::new(Device::Cpu);
    let m = flyt::train::Mixer::new(&vs.root(), columns.len() as i64);
    let mut tensors = m.parameters();
    tch::no_grad(|| {
        tensors[0].1.copy_(&Tensor::from_slice(weights).view([1, columns.len() as i64]));
        tensors[1].1.copy_(&Tensor::from_slice(&[0.0f32]));
    });
    tensors.extend(m.buffers());
    let named: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    Tensor::write_safetensors(&named, path).unwrap();
    let meta = serde_json::json!({"meta": {"kind": "mflyt", "columns": columns}});
    std::fs::write(path.with_extension("json"), serde_json::to_vec(&meta).unwrap()).unwrap();
}

/// Starts `flyt ARGS` in `cwd` with its output captured.
pub fn spawn(args: &[&str], cwd: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_flyt"))
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A curation's subset as (uid, count).
pub fn subset(out: &Path) -> std::collections::BTreeMap<flyt::Uid, u32> {
    flyt::SubsetCounts::read(out.join("subset.npy")).unwrap().iter().collect()
}

/// A curation's manifest.
pub fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// A tiny random CLIP (16-d towers, 8-d projection, 16 px images) with the real tokenizer, saved as a Hugging
/// Face folder.
pub fn tiny_clip(dir: &Path) {
    let cfg: flyt::clip::ClipConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "image_size": 16, "patch_size": 8},
        "projection_dim": 8
    }))
    .unwrap();
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let clip = flyt::clip::Clip::new(&vs.root(), &cfg).unwrap();
    clip.save(&vs, dir).unwrap();
    flyt::clip::ClipTokenizer::write_hf_vocab(bpe(), dir).unwrap();
}
