//! Round trips with the real python clients: webdataset (shards), numpy (subset .npy, embedding .npz) and
//! pyarrow (DataComp metadata parquet). The interpreter is the project venv's (`./x test` installs them).

mod common;

use std::collections::BTreeMap;

use common::run_python;
use flyt::{NpyArray, NpyData, ReaderConfig, Record, SampleBuilder, ShardReader, ShardWriter, SubsetCounts, Uid};

#[test]
fn python_webdataset_reads_flyt_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ShardWriter::new(dir.path(), 4).unwrap();
    let mut expected = Vec::new();
    for i in 0..10u128 {
        let uid = Uid::from_u128(0xabc0_0000_0000_0000_0000_0000_0000_0000 + i);
        let s = SampleBuilder::new(format!("{i:012}"))
            .image("jpg", vec![0xFF, 0xD8, i as u8])
            .caption(format!("caption number {i} — ünïcode"))
            .uid(uid)
            .label(i as i64 % 3)
            .build();
        w.write(&s).unwrap();
        expected.push(format!("{} {} {} {}", s.key, uid, s.caption.as_ref().unwrap(), i % 3));
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.output_shard_count, 3);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["output_shard_count"], 3);
    let out = run_python(
        r#"
import sys, json, webdataset as wds
urls = [f"{sys.argv[1]}/{i:08d}.tar" for i in range(3)]
for s in wds.WebDataset(urls, shardshuffle=False):
    meta = json.loads(s["json"])
    assert s["jpg"][:2] == b"\xff\xd8"
    print(s["__key__"], meta["uid"], s["txt"].decode(), int(s["cls"]))
"#,
        &[dir.path().to_str().unwrap()],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn flyt_reads_python_webdataset_shards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.tar");
    run_python(
        r#"
import sys, json, webdataset as wds
with wds.TarWriter(sys.argv[1]) as sink:
    for i in range(7):
        sink.write({"__key__": f"sub/dir/{i:04d}", "png": b"\x89PNG fake", "txt": f"cap {i}",
                    "json": {"uid": f"{i:032x}", "width": 10}, "cls": i})
"#,
        &[path.to_str().unwrap()],
    );
    let mut reader = ShardReader::open(&path, ReaderConfig::default()).unwrap();
    let samples: Vec<_> = reader
        .by_ref()
        .map(|r| match r.unwrap() {
            Record::Sample(s) => s,
            Record::Rejected(r) => panic!("rejected: {r}"),
        })
        .collect();
    assert_eq!(samples.len(), 7);
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.key, format!("sub/dir/{i:04}"));
        assert_eq!(s.uid, Uid::from_u128(i as u128));
        assert_eq!(s.caption.as_deref(), Some(format!("cap {i}").as_str()));
        assert_eq!(s.label, Some(i as i64));
        assert_eq!(s.json.as_ref().unwrap()["width"], 10);
    }
    assert!(reader.stats().reconciles());
}

#[test]
fn subset_npy_round_trips_with_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.npy");
    let uids = vec![
        Uid::from_parts(u64::MAX, 1),
        Uid::from_parts(2, u64::MAX),
        Uid::from_parts(2, 3),
        Uid::from_parts(2, 3),
        Uid::from_parts(0, 0),
    ];
    flyt::write_subset(&ours, &uids).unwrap();
    let out = run_python(
        r#"
import sys, numpy as np
a = np.load(sys.argv[1])
assert a.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")]), a.dtype
assert a.shape == (5,)
assert (np.sort(a, order=["f0", "f1"]) == a).all(), "not sorted"
for r in a: print(f"{int(r['f0']):016x}{int(r['f1']):016x}")
b = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in sys.argv[3:]], dtype=[("f0", "<u8"), ("f1", "<u8")])
np.save(sys.argv[2], np.sort(b, order=["f0", "f1"]))
"#,
        &[
            ours.to_str().unwrap(),
            dir.path().join("theirs.npy").to_str().unwrap(),
            "00000000000000ff0000000000000001",
            "0000000000000001ffffffffffffffff",
            "00000000000000ff0000000000000001",
        ],
    );
    let mut sorted = uids.clone();
    sorted.sort();
    assert_eq!(out.lines().map(|l| l.parse::<Uid>().unwrap()).collect::<Vec<_>>(), sorted);
    let theirs = flyt::read_subset(dir.path().join("theirs.npy")).unwrap();
    assert_eq!(theirs, vec![Uid::from_parts(1, u64::MAX), Uid::from_parts(0xff, 1), Uid::from_parts(0xff, 1)]);
    let counts = SubsetCounts::from_uids(theirs);
    assert_eq!(counts.count(Uid::from_parts(0xff, 1)), 2);
}

#[test]
fn npz_embeddings_round_trip_with_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.npz");
    let theirs_c = dir.path().join("theirs_c.npz");
    run_python(
        r#"
import sys, numpy as np
rng = np.random.default_rng(0)
img = rng.standard_normal((6, 8)).astype(np.float16)
txt = rng.standard_normal((6, 8)).astype(np.float32)
np.savez(sys.argv[1], b32_img=img, b32_txt=txt)
np.savez_compressed(sys.argv[2], l14_img=img.astype(np.float32) * 2)
np.save(sys.argv[3], img)
"#,
        &[theirs.to_str().unwrap(), theirs_c.to_str().unwrap(), dir.path().join("img.npy").to_str().unwrap()],
    );
    let arrays = flyt::read_npz(&theirs).unwrap();
    assert_eq!(arrays.keys().collect::<Vec<_>>(), ["b32_img", "b32_txt"]);
    assert_eq!(arrays["b32_img"].shape, [6, 8]);
    assert!(matches!(arrays["b32_img"].data, NpyData::F16(_)));
    let (img, rows, cols) = flyt::read_npz_matrix(&theirs, "b32_img").unwrap();
    assert_eq!((rows, cols), (6, 8));
    let (l14, _, _) = flyt::read_npz_matrix(&theirs_c, "l14_img").unwrap();
    assert!(img.iter().zip(&l14).all(|(a, b)| (a * 2.0 - b).abs() < 1e-6));
    let npy =
        flyt::parse_npy(&std::fs::read(dir.path().join("img.npy")).unwrap(), std::path::Path::new("img.npy"), "img")
            .unwrap();
    assert_eq!(npy.to_f32().unwrap(), img);
    let missing = flyt::read_npz_matrix(&theirs, "l14_txt").unwrap_err().to_string();
    assert!(missing.contains("l14_txt") && missing.contains("b32_img"), "{missing}");

    // Ours, read by numpy.
    let ours = dir.path().join("ours.npz");
    let mut m = BTreeMap::new();
    m.insert(
        "b32_img".to_string(),
        NpyArray { shape: vec![2, 3], data: NpyData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]) },
    );
    m.insert(
        "b32_txt".to_string(),
        NpyArray {
            shape: vec![2, 3],
            data: NpyData::F16([0.5f32, -1.0, 2.0, 0.25, 8.0, -0.125].map(half::f16::from_f32).to_vec()),
        },
    );
    for compressed in [false, true] {
        flyt::write_npz(&ours, &m, compressed).unwrap();
        let out = run_python(
            r#"
import sys, numpy as np
z = np.load(sys.argv[1])
print(sorted(z.files), z["b32_img"].dtype, z["b32_img"].tolist(), z["b32_txt"].dtype, z["b32_txt"].tolist())
"#,
            &[ours.to_str().unwrap()],
        );
        assert_eq!(
            out.trim(),
            "['b32_img', 'b32_txt'] float32 [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]] float16 [[0.5, -1.0, 2.0], [0.25, 8.0, -0.125]]"
        );
    }
}

#[test]
fn metadata_parquet_round_trips_with_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.parquet");
    run_python(
        r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pa.table({
    "uid": ["0" * 31 + "1", "not-a-uid", "f" * 32],
    "url": ["http://a", None, "http://c"],
    "text": ["a cat", "b", None],
    "original_width": pa.array([640, 10, None], pa.int64()),
    "original_height": pa.array([480, 10, 7], pa.int64()),
    "clip_b32_similarity_score": pa.array([0.31, 0.2, None], pa.float32()),
    "clip_l14_similarity_score": pa.array([0.27, 0.1, 0.05], pa.float32()),
    "face_bboxes": [[[0.1, 0.2, 0.3, 0.4]], [], None],
    "sha256": ["ab" * 32, None, "cd" * 32],
})
pq.write_table(t, sys.argv[1])
"#,
        &[theirs.to_str().unwrap()],
    );
    let table = flyt::read_metadata(&theirs).unwrap();
    assert_eq!(table.rows.len(), 2);
    assert_eq!(table.rejected.len(), 1);
    assert_eq!(table.rejected[0].0, 1);
    assert!(table.rejected[0].1.contains("not-a-uid"));
    let r0 = &table.rows[0];
    assert_eq!((r0.row, r0.uid, r0.original_width, r0.original_height), (0, Uid::from_u128(1), Some(640), Some(480)));
    assert_eq!(r0.text.as_deref(), Some("a cat"));
    assert!((r0.clip_b32_similarity_score.unwrap() - 0.31).abs() < 1e-6);
    assert_eq!(r0.face_bboxes, Some(vec![[0.1, 0.2, 0.3, 0.4]]));
    let r2 = &table.rows[1];
    assert_eq!((r2.row, r2.text.clone(), r2.original_width, r2.face_bboxes.clone()), (2, None, None, None));

    let ours = dir.path().join("ours.parquet");
    flyt::write_metadata(&ours, &table.rows).unwrap();
    let out = run_python(
        r#"
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(t.schema.names)
print(t.column("uid").to_pylist(), t.column("original_width").to_pylist(), t.column("face_bboxes").to_pylist())
print(str(t.schema.field("clip_b32_similarity_score").type), str(t.schema.field("original_width").type))
"#,
        &[ours.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "['uid', 'url', 'text', 'original_width', 'original_height', 'clip_b32_similarity_score', 'clip_l14_similarity_score', 'face_bboxes', 'sha256']"
    );
    assert_eq!(
        lines[1],
        format!("['{}', '{}'] [640, None] [[[0.1, 0.2, 0.3, 0.4]], None]", Uid::from_u128(1), "f".repeat(32))
    );
    assert_eq!(lines[2], "float int64");
}

#[test]
fn resharded_output_has_the_counted_copies_for_webdataset() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let shards =
        flyt::synth::SynthPool { shards: 3, samples_per_shard: 20, ..Default::default() }.write(&pool).unwrap();
    // Pick uids from the shards and give them 1, 2 or 3 copies, plus one uid that is nowhere.
    let mut all = Vec::new();
    for s in &shards {
        for r in ShardReader::open(s, ReaderConfig::default()).unwrap() {
            if let Record::Sample(s) = r.unwrap() {
                all.push(s.uid);
            }
        }
    }
    let mut subset = Vec::new();
    for (i, u) in all.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
        for _ in 0..1 + i % 3 {
            subset.push(*u);
        }
    }
    let ghost = Uid::from_u128(12345);
    subset.push(ghost);
    let subset_path = dir.path().join("subset.npy");
    flyt::write_subset(&subset_path, &subset).unwrap();
    let counts = SubsetCounts::read(&subset_path).unwrap();
    let out = dir.path().join("out");
    let report = flyt::reshard(&counts, &shards, &out, 7, false, |_, _| {}).unwrap();
    assert_eq!(report.not_found, vec![ghost]);
    assert_eq!(report.written_samples, subset.len() as u64 - 1);
    let listing = run_python(
        r#"
import sys, json, glob, collections, webdataset as wds
meta = json.load(open(sys.argv[1] + "/meta.json"))
urls = sorted(glob.glob(sys.argv[1] + "/*.tar"))
assert len(urls) == meta["output_shard_count"], (urls, meta)
c = collections.Counter()
for s in wds.WebDataset(urls, shardshuffle=False):
    uid, j = s["__key__"].split("-")
    assert json.loads(s["json"])["uid"] == uid
    c[uid] += 1
for uid, n in sorted(c.items()): print(uid, n)
"#,
        &[out.to_str().unwrap()],
    );
    let got: Vec<(Uid, u32)> = listing
        .lines()
        .map(|l| {
            let (u, n) = l.split_once(' ').unwrap();
            (u.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let want: Vec<(Uid, u32)> = counts.iter().filter(|(u, _)| *u != ghost).collect();
    assert_eq!(got, want);
    // Refuses to write into the now non-empty directory without overwrite.
    let err = flyt::reshard(&counts, &shards, &out, 7, false, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("not empty") && err.contains("--overwrite"), "{err}");
    flyt::reshard(&counts, &shards, &out, 7, true, |_, _| {}).unwrap();
}

/// SemDeDup against a numpy transcription of the authors' `semdedup.py` (`keep_hard=True`: each cluster sorted
/// farthest from its centroid first, `M = max(triu(X Xᵀ, 1), axis=0)`, removed when `M ≥ 1 − ε`), in float64,
/// on a random pool with planted near-duplicates.
#[test]
fn semdedup_equals_a_numpy_reference() {
    use flyt::methods::{SemDedupInput, normalize, semdedup};
    let (n, dim, k, eps) = (600usize, 32usize, 7u32, 0.04f32);
    let mut rng = flyt::rng::SplitMix64::new(11);
    let mut image: Vec<f32> = Vec::new();
    for i in 0..n {
        let mut v: Vec<f32> = if i > 10 && rng.unit() < 0.35 {
            let j = rng.below(i as u64) as usize;
            let s = [0.005f32, 0.03, 0.08][rng.below(3) as usize];
            image[j * dim..(j + 1) * dim].iter().map(|x| x + s * (rng.unit() as f32 - 0.5)).collect()
        } else {
            (0..dim).map(|_| rng.unit() as f32 - 0.5).collect()
        };
        normalize(&mut v);
        image.extend(v);
    }
    let uids: Vec<Uid> = (0..n as u128).map(|i| Uid::from_u128(i + 1)).collect();
    let cluster: Vec<u32> = (0..n).map(|_| rng.below(k as u64) as u32).collect();
    let sims: Vec<f32> = (0..n).map(|_| (rng.below(40) as f32) / 40.0).collect(); // ties: uid (= row) decides
    let ours =
        semdedup(&SemDedupInput { dim, uids: &uids, cluster: &cluster, centroid_sim: &sims, image: &image }, eps, 2)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("pool.npz");
    let mut arrays = BTreeMap::new();
    arrays.insert("image".to_string(), NpyArray { shape: vec![n, dim], data: NpyData::F32(image.clone()) });
    arrays.insert(
        "cluster".to_string(),
        NpyArray { shape: vec![n], data: NpyData::I64(cluster.iter().map(|c| *c as i64).collect()) },
    );
    arrays.insert("centroid_sim".to_string(), NpyArray { shape: vec![n], data: NpyData::F32(sims.clone()) });
    flyt::write_npz(&npz, &arrays, false).unwrap();
    let out = run_python(
        r#"
import sys, numpy as np
d = np.load(sys.argv[1]); eps = float(sys.argv[2])
X = d["image"].astype(np.float64); cl = d["cluster"]; cs = d["centroid_sim"].astype(np.float64)
n = len(cl); M = np.full(n, np.nan); keep = np.ones(n, dtype=bool)
for c in np.unique(cl):
    rows = np.where(cl == c)[0]
    # keep_hard: largest distance to the centroid (1 - cosine) first; ties by uid (= row here)
    order = rows[np.lexsort((rows, -(1.0 - cs[rows])))]
    x = X[order]
    sim = x @ x.T
    np.fill_diagonal(sim, 0.0)
    tri = np.triu(sim, k=1)
    m = tri.max(axis=0)
    m[0] = np.nan
    M[order] = m
    keep[order] = ~(m >= 1.0 - eps)
    keep[order[0]] = True
for i in range(n): print(int(keep[i]), repr(float(M[i])))
"#,
        &[npz.to_str().unwrap(), &eps.to_string()],
    );
    let theirs: Vec<(bool, f64)> = out
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a == "1", b.parse::<f64>().unwrap())
        })
        .collect();
    assert_eq!(theirs.len(), n);
    let threshold = 1.0 - eps as f64;
    let (mut removed, mut near) = (0, 0);
    for (i, (v, (keep, m))) in ours.iter().zip(&theirs).enumerate() {
        match v.similarity() {
            None => assert!(m.is_nan(), "row {i}: numpy has {m}, we have no earlier member"),
            Some(s) => {
                // numpy's triu max counts a negative best as 0 (the zeroed lower triangle); compare above 0
                if *m > 0.0 || s > 0.0 {
                    assert!((s as f64 - m.max(0.0)).abs() < 1e-5, "row {i}: sim {s} vs numpy {m}");
                }
            }
        }
        if (m - threshold).abs() < 1e-5 {
            near += 1;
            continue; // f32 against f64 at the threshold: either answer is right
        }
        assert_eq!(v.keep, *keep, "row {i}: keep {} vs numpy {keep} (sim {m})", v.keep);
        removed += usize::from(!keep);
    }
    assert!(removed > 50, "the planted near-duplicates are found ({removed} removed)");
    assert!(near < 3, "{near} rows sit on the threshold");
}

/// `flyt reshard` copied `.json` as it was, so a sample whose uid was derived (no `.json`, or none in it) got
/// a new uid when the output was read again, and DataComp's tools found no uid. Now every written copy's
/// `.json` carries the uid (added after the opening brace, every other byte kept), keys keep the `.json`
/// string's spelling (`<uid>-<j>`, not re-cased), and re-reading the output gives back the same uids.
#[test]
fn resharding_lost_derived_uids() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let mut w = ShardWriter::new(&pool, 100).unwrap();
    let upper = "ABCDEF0123456789ABCDEF0123456789";
    let mut kept_json = serde_json::Map::new();
    kept_json.insert("uid".into(), upper.into());
    let samples = [
        // No .json: derived uid.
        SampleBuilder::new("a0").shard("00000000").image("png", vec![1]).caption("no json").build(),
        // A .json without a uid: derived, the uid is inserted.
        SampleBuilder::new("a1").shard("00000000").image("png", vec![2]).caption("json without uid").build(),
        // A .json with an upper-case uid: kept byte for byte, the key keeps its spelling.
        SampleBuilder::new("a2").shard("00000000").image("png", vec![3]).caption("upper").json(kept_json).build(),
    ];
    for s in &samples[..1] {
        w.write(s).unwrap();
    }
    let original_json = br#"{ "url": "http://x/1.png",  "caption":"json without uid" , "n": [1, 2]}"#.to_vec();
    let mut m = samples[1].members.clone();
    m.push(flyt::Member { ext: "json".into(), data: original_json.clone() });
    w.write_members("a1", &m).unwrap();
    w.write(&samples[2]).unwrap();
    w.finish().unwrap();
    let shard = pool.join("00000000.tar");
    let uids: Vec<Uid> = ShardReader::open(&shard, ReaderConfig::default())
        .unwrap()
        .filter_map(|r| match r.unwrap() {
            Record::Sample(s) => Some(s.uid),
            _ => None,
        })
        .collect();
    assert_eq!(uids.len(), 3);
    assert_eq!(uids[2], upper.parse().unwrap());
    let subset_path = dir.path().join("subset.npy");
    flyt::write_subset(&subset_path, &[uids[0], uids[1], uids[1], uids[2]]).unwrap();
    let counts = SubsetCounts::read(&subset_path).unwrap();
    let out = dir.path().join("out");
    let report = flyt::reshard(&counts, std::slice::from_ref(&shard), &out, 10, false, |_, _| {}).unwrap();
    assert_eq!(report.written_samples, 4);
    // Read back with python webdataset: every .json has the uid of its key.
    let listing = run_python(
        r#"
import sys, json, glob, webdataset as wds
for s in wds.WebDataset(sorted(glob.glob(sys.argv[1] + "/*.tar")), shardshuffle=False):
    uid, j = s["__key__"].rsplit("-", 1)
    meta = json.loads(s["json"])
    assert meta["uid"] == uid, (s["__key__"], meta)
    print(s["__key__"], s["json"].decode())
"#,
        &[out.to_str().unwrap()],
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 4, "{listing}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("{upper}-0 "))), "the key keeps the .json spelling: {listing}");
    // The inserted field, every other byte of the object kept.
    let original = std::str::from_utf8(&original_json).unwrap();
    let want = format!("{{\"uid\": \"{}\", {}", uids[1], &original[1..]);
    let a1: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&uids[1].to_string())).collect();
    assert_eq!(a1.len(), 2);
    assert_eq!(a1[0].split_once(' ').unwrap().1, want);
    // Re-reading the output gives the same uids (the derived ones now from .json).
    let mut again: Vec<Uid> = Vec::new();
    for t in std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
    {
        for r in ShardReader::open(&t, ReaderConfig::default()).unwrap() {
            if let Record::Sample(s) = r.unwrap() {
                assert_eq!(s.uid_source, flyt::UidSource::Json);
                again.push(s.uid);
            }
        }
    }
    // (A uid's second copy is a duplicate to a reader: the distinct uids are compared.)
    again.sort();
    again.dedup();
    let mut want_uids = uids.clone();
    want_uids.sort();
    assert_eq!(again, want_uids);

    // --stamp-uids: the shard written again under its own name and keys, uids in .json; in place is allowed.
    let stamped = dir.path().join("stamped");
    let r = flyt::stamp_uids(std::slice::from_ref(&shard), &stamped, false, |_| {}).unwrap();
    assert_eq!((r.samples, r.stamped, r.rejected), (3, 2, 0));
    let keys = run_python(
        r#"
import sys, json, webdataset as wds
for s in wds.WebDataset([sys.argv[1]], shardshuffle=False):
    print(s["__key__"], json.loads(s["json"])["uid"])
"#,
        &[stamped.join("00000000.tar").to_str().unwrap()],
    );
    let want_keys = format!("a0 {}\na1 {}\na2 {upper}\n", uids[0], uids[1]);
    assert_eq!(keys, want_keys);
    let before = std::fs::read(&shard).unwrap();
    flyt::stamp_uids(std::slice::from_ref(&shard), &pool, false, |_| {}).unwrap();
    assert_ne!(std::fs::read(&shard).unwrap(), before, "stamped in place");
    assert_eq!(std::fs::read(&shard).unwrap(), std::fs::read(stamped.join("00000000.tar")).unwrap());
    let err = flyt::stamp_uids(std::slice::from_ref(&shard), &stamped, false, |_| {}).unwrap_err().to_string();
    assert!(err.contains("--overwrite"), "{err}");
    // In place, a shard with a rejected sample (no caption) is refused: stamping would drop that sample.
    let damaged = dir.path().join("damaged");
    let mut w = ShardWriter::new(&damaged, 100).unwrap();
    w.write(&SampleBuilder::new("b0").shard("00000000").image("png", vec![1]).caption("fine").build()).unwrap();
    w.write(&SampleBuilder::new("b1").shard("00000000").image("png", vec![2]).build()).unwrap();
    w.finish().unwrap();
    let tar = damaged.join("00000000.tar");
    let before = std::fs::read(&tar).unwrap();
    let err = flyt::stamp_uids(std::slice::from_ref(&tar), &damaged, false, |_| {}).unwrap_err().to_string();
    assert!(err.contains("1 sample(s) rejected") && err.contains("another --out"), "{err}");
    assert_eq!(std::fs::read(&tar).unwrap(), before, "the shard is untouched");
    // ... and so is a shard of a directory img2dataset is still writing.
    std::fs::create_dir_all(pool.join("_tmp")).unwrap();
    let err = flyt::stamp_uids(std::slice::from_ref(&shard), &stamped, true, |_| {}).unwrap_err().to_string();
    assert!(err.contains("_tmp"), "{err}");
}
