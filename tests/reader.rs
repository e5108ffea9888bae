//! The WebDataset reader over hand-made shards: every reject reason, truncation at every offset, gzip,
//! sub-directories, re-delivered shards, split samples at shard boundaries, image headers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{RawTar, hex_uid, json_uid};
use flyt::{Ingest, ReaderConfig, Record, RejectReason, Sample, ShardReader, ShardStats};

fn read(path: &Path, config: ReaderConfig) -> (Vec<Sample>, Vec<flyt::Rejected>, ShardStats) {
    let mut reader = ShardReader::open(path, config).unwrap();
    let mut samples = Vec::new();
    let mut rejects = Vec::new();
    for r in reader.by_ref() {
        match r.unwrap() {
            Record::Sample(s) => samples.push(*s),
            Record::Rejected(r) => rejects.push(r),
        }
    }
    let stats = reader.stats().clone();
    assert!(stats.reconciles(), "stats do not reconcile: {stats:?}");
    assert_eq!(stats.accepted as usize, samples.len());
    assert_eq!(stats.rejected as usize, rejects.len());
    (samples, rejects, stats)
}

fn reasons(rejects: &[flyt::Rejected]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rejects {
        m.entry(r.reason.name().to_string()).or_default().push(r.key.clone());
    }
    m
}

#[test]
fn every_reject_reason_is_produced_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![7u8; 5000];
    let path = RawTar::default()
        .file("good0.jpg", b"\xff\xd8img")
        .file("good0.txt", b"a good caption")
        .file("good0.json", &json_uid(&hex_uid(1)))
        .file("noimg.txt", b"caption without image")
        .file("nocap.jpg", b"\xff\xd8img")
        .file("empty.jpg", b"")
        .file("empty.txt", b"caption")
        .file("huge.jpg", &big)
        .file("huge.txt", b"caption")
        .file("badjson.jpg", b"\xff\xd8")
        .file("badjson.txt", b"caption")
        .file("badjson.json", b"{\"uid\": ")
        .file("arrjson.jpg", b"\xff\xd8")
        .file("arrjson.txt", b"caption")
        .file("arrjson.json", b"[1, 2]")
        .file("baduid.jpg", b"\xff\xd8")
        .file("baduid.txt", b"caption")
        .file("baduid.json", b"{\"uid\": \"xyz\"}")
        .file("badcap.jpg", b"\xff\xd8")
        .file("badcap.txt", b"\xff\xfe not utf-8")
        .file("blankcap.jpg", b"\xff\xd8")
        .file("blankcap.txt", b"  \n ")
        .file("badcls.jpg", b"\xff\xd8")
        .file("badcls.txt", b"caption")
        .file("badcls.cls", b"seven")
        .file("dupmem.jpg", b"\xff\xd8")
        .file("dupmem.txt", b"one")
        .file("dupmem.txt", b"two")
        .file("split.jpg", b"\xff\xd8")
        .file("split.txt", b"caption")
        .file("other.jpg", b"\xff\xd8")
        .file("other.txt", b"caption")
        .file("split.json", &json_uid(&hex_uid(2)))
        .file("good0.jpg", b"\xff\xd8img")
        .file("good0.txt", b"a good caption")
        .file("good0.json", &json_uid(&hex_uid(1)))
        .file("dupuid.jpg", b"\xff\xd8")
        .file("dupuid.txt", b"caption")
        .file("dupuid.json", &json_uid(&hex_uid(1)))
        .file("README", b"no extension")
        .entry("link.jpg", b'2', b"")
        .file("__meta__", b"webdataset metadata")
        .file("last.jpg", b"\xff\xd8")
        .write(&dir.path().join("00000000.tar"));
    let (samples, rejects, stats) = read(&path, ReaderConfig::default().with_max_member_bytes(4096));
    let got = reasons(&rejects);
    let expect: BTreeMap<String, Vec<String>> = [
        ("missing_image", vec!["noimg"]),
        ("missing_caption", vec!["nocap"]),
        ("empty_member", vec!["empty"]),
        ("oversized_member", vec!["huge"]),
        ("bad_json", vec!["badjson", "arrjson"]),
        ("bad_uid", vec!["baduid"]),
        ("bad_caption", vec!["badcap", "blankcap"]),
        ("bad_label", vec!["badcls"]),
        ("duplicate_member", vec!["dupmem"]),
        ("non_adjacent_members", vec!["split"]),
        ("duplicate_key", vec!["good0"]),
        ("duplicate_uid", vec!["dupuid"]),
        ("not_a_sample_member", vec!["README", "link.jpg", "__meta__"]),
        ("incomplete_at_shard_boundary", vec!["last"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(got, expect);
    // Accepted: good0 (first time), the first half of split (jpg + txt, derived uid), other.
    let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["good0", "split", "other"]);
    assert_eq!(samples[0].uid.to_string(), hex_uid(1));
    assert_eq!(samples[0].uid_source, flyt::UidSource::Json);
    assert_eq!(samples[1].uid, flyt::Uid::derive("00000000", "split"));
    assert_eq!(stats.members, 43);
    let huge = rejects.iter().find(|r| r.reason == RejectReason::OversizedMember).unwrap();
    assert!(huge.detail.contains("5000"), "{}", huge.detail);
    assert_eq!(huge.members, 2);
}

#[test]
fn labels_and_required_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = RawTar::default()
        .file("a.png", b"\x89PNG")
        .file("a.cls", b" 3\n")
        .file("b.png", b"\x89PNG")
        .file("c.png", b"\x89PNG")
        .file("c.cls", b"-1")
        .write(&dir.path().join("labels.tar"));
    let config = ReaderConfig::default().require_caption(false).require_label(true);
    let (samples, rejects, _) = read(&path, config);
    assert_eq!(samples.iter().map(|s| s.label).collect::<Vec<_>>(), [Some(3), Some(-1)]);
    assert_eq!(reasons(&rejects)["missing_label"], ["b"]);
}

fn sample_shard(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut t = RawTar::default();
    for i in 0..n {
        let key = format!("{i:06}");
        t = t
            .file(&format!("{key}.jpg"), &vec![0xAB; 300 + i * 37])
            .file(&format!("{key}.txt"), format!("caption {i}").as_bytes())
            .file(&format!("{key}.json"), &json_uid(&hex_uid(1000 + i as u128)));
    }
    t.write(&dir.join("00000001.tar"))
}

#[test]
fn truncation_at_any_offset_keeps_the_prefix_and_rejects_once() {
    let dir = tempfile::tempdir().unwrap();
    let full_path = sample_shard(dir.path(), 12);
    let (full, _, _) = read(&full_path, ReaderConfig::default());
    let bytes = std::fs::read(&full_path).unwrap();
    let end_of_data = bytes.len() - 1024;
    let cut_path = dir.path().join("00000001-cut.tar");
    let mut offsets: Vec<usize> = (0..bytes.len()).step_by(512).collect();
    offsets.extend((1..bytes.len()).step_by(389));
    for cut in offsets {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let (samples, rejects, _) = read(&cut_path, ReaderConfig::default());
        let truncs = rejects.iter().filter(|r| r.reason == RejectReason::TruncatedTar).count();
        if cut > end_of_data {
            // Cut inside the end-of-archive marker: nothing is lost.
            assert_eq!(truncs, 0, "cut at {cut}");
            assert_eq!(samples.len(), full.len());
        } else {
            // Cut before it: a truncation, one reject. When the cut spares the last member's data (it falls in
            // the padding after it, or exactly before the marker) the last sample arrived whole, with every
            // member the others have, and is kept; otherwise samples are lost.
            assert_eq!(truncs, 1, "cut at {cut}: {rejects:?}");
            assert!(samples.len() < full.len() || cut + 512 > end_of_data, "cut at {cut}");
        }
        if cut == end_of_data {
            assert_eq!(samples.len(), full.len());
        }
        // The accepted samples are a prefix of the full shard's samples.
        let keys: Vec<&str> = samples.iter().map(|s| s.key.as_str()).collect();
        let full_keys: Vec<&str> = full.iter().take(keys.len()).map(|s| s.key.as_str()).collect();
        assert_eq!(keys, full_keys, "cut at {cut}");
        assert!(samples.iter().zip(&full).all(|(a, b)| a.members == b.members));
    }
}

#[test]
fn gzip_shards_read_like_plain_ones_and_truncated_gzip_is_a_reject() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let plain = sample_shard(dir.path(), 20);
    let bytes = std::fs::read(&plain).unwrap();
    let gz_path = dir.path().join("00000001.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&bytes).unwrap();
    let gz = enc.finish().unwrap();
    std::fs::write(&gz_path, &gz).unwrap();
    let (a, _, sa) = read(&plain, ReaderConfig::default());
    let (b, _, sb) = read(&gz_path, ReaderConfig::default());
    assert_eq!(sa, sb);
    assert_eq!(
        a.iter().map(|s| (&s.key, s.uid)).collect::<Vec<_>>(),
        b.iter().map(|s| (&s.key, s.uid)).collect::<Vec<_>>()
    );
    // Read from a plain file, each member's bytes are found again where the sample says they lie (what
    // `flyt train --stream-pool` reads each step); from gzip there are no such places.
    for s in &a {
        assert_eq!(s.member_at.len(), s.members.len());
        for (m, &at) in s.members.iter().zip(&s.member_at) {
            assert_eq!(&bytes[at as usize..at as usize + m.data.len()], &m.data[..], "{} .{}", s.key, m.ext);
        }
        let (at, len) = s.image_at().unwrap();
        assert_eq!(&bytes[at as usize..at as usize + len], s.image().unwrap());
        let (at, len) = s.caption_at().unwrap();
        assert_eq!(&bytes[at as usize..at as usize + len], s.caption.as_deref().unwrap().as_bytes());
    }
    assert!(b.iter().all(|s| s.member_at.is_empty() && s.image_at().is_none()));
    // Same shard name, so derived uids agree too.
    assert_eq!(flyt::shard_name(&gz_path), "00000001");
    let cut = dir.path().join("00000002.tar.gz");
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    let (c, rejects, _) = read(&cut, ReaderConfig::default());
    assert!(!c.is_empty() && c.len() < a.len());
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason, RejectReason::TruncatedTar);
}

#[test]
fn corrupt_header_stops_the_shard_with_one_reject() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_shard(dir.path(), 5);
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage the 7th member's header (sample 2's json): checksum no longer matches.
    let mut pos = 0;
    for _ in 0..7 {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[pos + 124..pos + 135]).unwrap(), 8).unwrap();
        pos += 512 + size.div_ceil(512) * 512;
    }
    bytes[pos + 10] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let (samples, rejects, _) = read(&path, ReaderConfig::default());
    assert_eq!(samples.len(), 2);
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason, RejectReason::CorruptTar);
    assert_eq!(rejects[0].key, "000002");
    assert!(rejects[0].detail.contains("checksum"), "{}", rejects[0].detail);
}

#[test]
fn members_in_subdirectories_and_directory_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = RawTar::default()
        .entry("images/", b'5', b"")
        .entry("images/part.1/", b'5', b"")
        .file("images/part.1/000.JPG", b"\xff\xd8")
        .file("images/part.1/000.txt", b"caption")
        .file("images/part.1/000.seg.png", b"\x89PNG")
        .write(&dir.path().join("sub.tar"));
    let (samples, rejects, stats) = read(&path, ReaderConfig::default());
    // Directory entries are members (as `tarfile` lists them) that belong to no sample.
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    assert!(rejects.iter().all(|r| r.reason == RejectReason::NotASampleMember && r.detail == "a directory entry"));
    assert_eq!(samples[0].key, "images/part.1/000");
    assert_eq!(samples[0].image_ext(), Some("jpg"));
    assert_eq!(samples[0].members.iter().map(|m| m.ext.as_str()).collect::<Vec<_>>(), ["jpg", "txt", "seg.png"]);
    assert_eq!(stats.members, 5, "directories are members");
    assert!(stats.reconciles());
}

#[test]
fn a_shard_delivered_twice_adds_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_shard(dir.path(), 10);
    let copy = dir.path().join("elsewhere.tar");
    std::fs::copy(&path, &copy).unwrap();
    let mut ingest = Ingest::new(ReaderConfig::default());
    let first = ingest.read_shard(&path, |_| {}).unwrap();
    let mut second_rejects = Vec::new();
    let second = ingest
        .read_shard(&copy, |r| {
            if let Record::Rejected(r) = r {
                second_rejects.push(r)
            }
        })
        .unwrap();
    assert_eq!(first.accepted, 10);
    assert_eq!((second.accepted, second.rejected), (0, 10));
    assert_eq!(second.rejected_by_reason["duplicate_uid"], 10);
    assert!(second.reconciles());
    assert!(second_rejects.iter().all(|r| r.reason == RejectReason::DuplicateUid && r.members == 3));
    assert_eq!(ingest.accepted_uids(), 10);
}

#[test]
fn a_sample_split_across_two_shards_is_rejected_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let a = RawTar::default()
        .file("0001.jpg", b"\xff\xd8")
        .file("0001.txt", b"c")
        .file("0002.jpg", b"\xff\xd8")
        .write(&dir.path().join("a.tar"));
    let b = RawTar::default()
        .file("0002.txt", b"the rest of 0002")
        .file("0002.json", &json_uid(&hex_uid(9)))
        .file("0003.jpg", b"\xff\xd8")
        .file("0003.txt", b"c")
        .write(&dir.path().join("b.tar"));
    let mut ingest = Ingest::new(ReaderConfig::default());
    let mut rejects = Vec::new();
    let mut keys = Vec::new();
    for p in [&a, &b] {
        let s = ingest
            .read_shard(p, |r| match r {
                Record::Sample(s) => keys.push(s.key.clone()),
                Record::Rejected(r) => rejects.push(r),
            })
            .unwrap();
        assert!(s.reconciles());
    }
    assert_eq!(keys, ["0001", "0003"]);
    assert_eq!(rejects.len(), 2);
    assert!(rejects.iter().all(|r| r.key == "0002" && r.reason == RejectReason::IncompleteAtShardBoundary));
    assert_eq!(rejects.iter().map(|r| r.members).sum::<u64>(), 3);
}

#[test]
fn image_headers_cmyk_progressive_png() {
    let dir = tempfile::tempdir().unwrap();
    let pixels4 = vec![128u8; 24 * 16 * 4];
    let mut cmyk = Vec::new();
    jpeg_encoder::Encoder::new(&mut cmyk, 85).encode(&pixels4, 24, 16, jpeg_encoder::ColorType::Cmyk).unwrap();
    let pixels3 = vec![90u8; 40 * 30 * 3];
    let mut prog = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut prog, 85);
    enc.set_progressive(true);
    enc.encode(&pixels3, 40, 30, jpeg_encoder::ColorType::Rgb).unwrap();
    let mut rng = flyt::rng::SplitMix64::new(3);
    let png = flyt::synth::png_image(17, &mut rng);
    let path = RawTar::default()
        .file("cmyk.jpg", &cmyk)
        .file("cmyk.txt", b"cmyk")
        .file("prog.jpeg", &prog)
        .file("prog.txt", b"progressive")
        .file("png.png", &png)
        .file("png.txt", b"png")
        .write(&dir.path().join("img.tar"));
    let (samples, rejects, _) = read(&path, ReaderConfig::default());
    assert!(rejects.is_empty());
    let info: Vec<flyt::ImageInfo> = samples.iter().map(|s| s.image_info.unwrap()).collect();
    assert_eq!(
        (info[0].width, info[0].height, info[0].components, info[0].cmyk, info[0].progressive),
        (24, 16, 4, true, false)
    );
    assert_eq!((info[1].width, info[1].height, info[1].components, info[1].progressive), (40, 30, 3, true));
    assert_eq!((info[2].format, info[2].width, info[2].height), (flyt::ImageFormat::Png, 17, 17));
    assert_eq!(samples[1].image_format, Some(flyt::ImageFormat::Jpeg));
}

#[test]
fn random_damage_never_panics_and_always_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_shard(dir.path(), 8);
    let bytes = std::fs::read(&path).unwrap();
    let mut rng = flyt::rng::SplitMix64::new(42);
    let damaged = dir.path().join("damaged.tar");
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.below(256) as u8;
        }
        if rng.below(3) == 0 {
            b.truncate(rng.below(b.len() as u64) as usize);
        }
        std::fs::write(&damaged, &b).unwrap();
        let _ = read(&damaged, ReaderConfig::default());
    }
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = ShardReader::open("/nonexistent/shard.tar", ReaderConfig::default()).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/shard.tar"), "{err}");
}

/// Where each member lies in the file (what `flyt train --stream-pool` reads again each step) is right after
/// GNU long-name entries and pax headers, as Python's `tarfile` writes them.
#[test]
fn member_places_survive_long_names_and_pax_headers() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["GNU_FORMAT", "PAX_FORMAT"] {
        let path = dir.path().join(format!("{format}.tar"));
        common::run_python(
            r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=getattr(tarfile, sys.argv[2])) as t:
    for i in range(5):
        key = ("k" * (150 if i % 2 else 8)) + str(i)
        for ext, data in (("jpg", bytes([i]) * (700 + 91 * i)), ("txt", f"caption é {i}".encode())):
            info = tarfile.TarInfo(f"{key}.{ext}")
            if i == 3:
                info.pax_headers = {"comment": "x" * 600}
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
"#,
            &[path.to_str().unwrap(), format],
        );
        let bytes = std::fs::read(&path).unwrap();
        let (samples, rejects, _) = read(&path, ReaderConfig::default());
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(samples.len(), 5);
        for s in &samples {
            for (m, &at) in s.members.iter().zip(&s.member_at) {
                assert_eq!(&bytes[at as usize..at as usize + m.data.len()], &m.data[..], "{format} {}", s.key);
            }
        }
    }
}
