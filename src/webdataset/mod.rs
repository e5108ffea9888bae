//! WebDataset shards: the streaming reader, the writer, and resharding.

mod reader;
mod reshard;
pub(crate) mod tar;
mod writer;

pub use reader::{ReaderConfig, Record, ShardReader, shard_name, split_member_name};
pub use reshard::{ReshardReport, StampReport, StampedShard, reshard, stamp_uids, stamped_json, uid_text};
pub use writer::{SampleBuilder, ShardWriter, WriterSummary, WrittenShard, temp_path, write_atomic};
