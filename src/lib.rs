//! # flyt — Filter Like You Test
//!
//! The domain crate of flyt: sample and uid types, WebDataset and DataComp formats, the curation output
//! directory's format ([`curation`]), CLIP models in libtorch ([`clip`]), the scoring methods ([`methods`]),
//! FLYT / M-FLYT training ([`train`]) and the samplers, Soft Cap Sampling among them ([`sampling`]). It has no
//! dataflow: the `flyt-operators` crate wraps it in timely operators, and `flyt-pipelines` builds the curation
//! graph and the batch jobs from those.
//!
//! Reading a shard:
//! ```
//! # fn main() -> flyt::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! flyt::synth::SynthPool { shards: 1, samples_per_shard: 5, ..Default::default() }.write(dir.path())?;
//! let mut ingest = flyt::Ingest::new(flyt::ReaderConfig::default());
//! let mut captions = Vec::new();
//! let stats = ingest.read_shard(dir.path().join("00000000.tar"), |r| {
//!     if let flyt::Record::Sample(s) = r { captions.push(s.caption.clone().unwrap()); }
//! })?;
//! assert_eq!(stats.accepted, 5);
//! assert!(stats.reconciles());
//! # Ok(()) }
//! ```

pub mod clip;
pub mod curation;
mod datacomp;
mod device;
mod digest;
mod error;
mod fsio;
mod image_info;
mod ingest;
pub mod methods;
pub mod rng;
mod sample;
pub mod sampling;
pub mod synth;
mod tensor_file;
mod torch_runtime;
pub mod train;
mod uid;
mod webdataset;

pub use datacomp::{
    DATACOMP_TASKS, MetadataRow, MetadataTable, NpyArray, NpyData, Pool, PoolEmbeddings, PoolOnDisk, SubsetCounts,
    datacomp_task_files, npy_bytes, parse_npy, pick_prefix, read_metadata, read_npz, read_npz_matrix, read_pool,
    read_subset, write_metadata, write_npz, write_subset,
};
pub use datacomp::{
    RowMeta, ScoreTable, check_scores, digest_prefix, read_score_table, read_scores_npy, read_scores_parquet,
    sha256_hex, write_counts_parquet, write_duplicates_table, write_score_table,
};
pub use device::DeviceSpec;
pub use digest::{file_sha256, file_sha256_interruptible};
pub use error::{Error, Result};
pub use fsio::{check_regular, interrupted, is_interruption, open_regular, request_stop, stop_requested};
pub use image_info::{ImageInfo, sniff_image};
pub use ingest::Ingest;
pub use sample::{ImageFormat, Member, RejectReason, Rejected, Sample, ShardStats, UidSource};
pub use tensor_file::{DeclaredTensor, check_safetensors, safetensors_header, torch_message};
pub use torch_runtime::{TorchReport, init_torch_runtime, torch_report};
pub use uid::{Uid, UidError};
pub use webdataset::{
    ReaderConfig, Record, ReshardReport, SampleBuilder, ShardReader, ShardWriter, StampReport, StampedShard,
    WriterSummary, WrittenShard, dir_shows_marker_layout, reshard, shard_name, shows_marker_layout, split_member_name,
    stamp_uids, stamped_json, temp_path, uid_text, write_atomic,
};
