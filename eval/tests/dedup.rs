//! Exact content dedup on the evaluation's pool (the CI configuration's mini-DataComp): `truth.csv` says which
//! samples are planted byte-for-byte copies. `[dedup] exact` must take out every planted copy but the one that
//! stands for its group (the least uid), only samples whose image bytes equal a kept one's (checked here by
//! reading the tars, not by the pipeline's digests), and leave no two identical images in the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use flyt::Uid;
use flyt_pipelines::{CurateConfig, Method};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn ci_config(dir: &Path) -> flyt_eval::EvalConfig {
    let root = repo();
    let text = std::fs::read_to_string(root.join("cli/tests/data/eval-ci.toml")).unwrap();
    let text = text
        .replace("\".venv/", &format!("\"{}/.venv/", root.display()))
        .replace("\"../shared/", &format!("\"{}/../shared/", root.display()));
    assert!(root.join(".venv/data/openclipart/.complete").exists(), "run ./x setup (./x test does)");
    let path = dir.join("eval-ci.toml");
    std::fs::write(&path, text).unwrap();
    flyt_eval::EvalConfig::from_file(&path).unwrap()
}

fn read_duplicates(path: &Path) -> Vec<(Uid, Uid, String)> {
    let file = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
        let batch = batch.unwrap();
        let col = |n: &str| batch.column(batch.schema().index_of(n).unwrap()).clone();
        let (uid, of, reason) = (col("uid"), col("duplicate_of"), col("reason"));
        for r in 0..batch.num_rows() {
            let s = |a: &arrow_array::ArrayRef| a.as_string::<i32>().value(r).to_string();
            out.push((Uid::parse_hex(&s(&uid)).unwrap(), Uid::parse_hex(&s(&of)).unwrap(), s(&reason)));
        }
        assert_eq!(col("similarity").null_count(), batch.num_rows(), "exact duplicates have no similarity");
    }
    out
}

#[test]
fn exact_dedup_removes_every_planted_copy_of_the_evaluation_pool_and_only_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ci_config(tmp.path());
    let data = tmp.path().join("data");
    let kinds = flyt_eval::build_data(&cfg, &data).unwrap();
    let planted = kinds["duplicate"];
    assert!(planted > 10, "the CI pool plants {planted} duplicates");

    let truth: BTreeMap<Uid, String> = std::fs::read_to_string(data.join("truth.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (Uid::parse_hex(f.next().unwrap()).unwrap(), f.next().unwrap().to_string())
        })
        .collect();

    let run = |dedup: bool, out: &Path| {
        let mut c = CurateConfig::default();
        c.input.shards = vec![data.join("pool")];
        c.score.methods = Some(vec![Method::Basic]); // decoded, not embedded: no model needed
        c.score.column = Some("basic".into());
        c.dedup.exact = dedup;
        c.output.dir = out.to_path_buf();
        flyt_pipelines::curate(c, timely::Config::process(2)).unwrap().manifest
    };
    let plain = run(false, &tmp.path().join("plain"));
    let out = tmp.path().join("dedup");
    let manifest = run(true, &out);
    let accepted = plain["pool"]["uids"].as_i64().unwrap();
    let dups = read_duplicates(&out.join("duplicates.parquet"));

    // the images, read independently of the pipeline
    let mut image: BTreeMap<Uid, Vec<u8>> = BTreeMap::new();
    let mut ingest = flyt::Ingest::new(flyt::ReaderConfig::default());
    let mut tars: Vec<PathBuf> = std::fs::read_dir(data.join("pool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tars.sort();
    for t in &tars {
        ingest
            .read_shard(t, |r| {
                if let flyt::Record::Sample(s) = r
                    && let Some(b) = s.image()
                {
                    image.insert(s.uid, b.to_vec());
                }
            })
            .unwrap();
    }
    // every removed sample has the same bytes as the uid it is said to duplicate, which stays
    let removed: BTreeSet<Uid> = dups.iter().map(|d| d.0).collect();
    assert!(dups.iter().all(|(_, _, r)| r == "duplicate_content"));
    for (u, of, _) in &dups {
        assert_eq!(image[u], image[of], "{u} is not a copy of {of}");
        assert!(!removed.contains(of), "{u} duplicates {of}, which was removed too");
        assert!(of < u, "{of} kept over the lesser uid {u}");
    }
    // among the samples left, no two images are the same; so every planted copy is gone but one per group
    let mut left: BTreeMap<&[u8], Uid> = BTreeMap::new();
    for (u, b) in &image {
        if !removed.contains(u) {
            assert!(left.insert(b.as_slice(), *u).is_none(), "{u} and another kept sample have the same image");
        }
    }
    // each group (the survivor and those it stands for) holds one original, or only originals the source
    // itself repeats (Openclipart ships a few identical images under different names): nothing that is not a
    // copy is removed
    let mut groups: BTreeMap<Uid, Vec<Uid>> = BTreeMap::new();
    for (u, of, _) in &dups {
        groups.entry(*of).or_default().push(*u);
    }
    let mut natural = 0;
    for (kept, members) in &groups {
        let all: Vec<&Uid> = std::iter::once(kept).chain(members).collect();
        let originals = all.iter().filter(|u| truth[**u] != "duplicate").count();
        assert!(originals >= 1, "the group of {kept} has no original");
        natural += originals - 1;
    }
    let planted_removed = dups.iter().filter(|(u, _, _)| truth[u] == "duplicate").count();
    let planted_kept = groups.keys().filter(|u| truth[*u] == "duplicate").count();
    assert_eq!(planted_removed + planted_kept, planted, "every planted copy is removed or stands for its group");
    assert_eq!(dups.len(), planted + natural, "removed: the planted copies plus the source's own repeats");
    eprintln!("planted {planted}, removed {}, of them repeats in the source images {natural}", dups.len());
    assert_eq!(manifest["pool"]["uids"].as_i64().unwrap(), accepted - dups.len() as i64);
    assert_eq!(manifest["dedup"]["uids"].as_u64().unwrap(), dups.len() as u64);
    let subset: BTreeSet<Uid> = flyt::read_subset(out.join("subset.npy")).unwrap().into_iter().collect();
    assert!(subset.is_disjoint(&removed));
    assert!(!subset.is_empty());
}
