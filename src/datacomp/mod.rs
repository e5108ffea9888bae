//! DataComp's file formats: metadata parquet, embedding `.npz`, subset `.npy`.

mod metadata;
mod npy;
mod npz;
mod scores;
mod subset;

pub use metadata::{MetadataRow, MetadataTable, read_metadata, write_metadata};
pub use npy::{NpyArray, NpyData, npy_bytes, parse_npy};
pub use npz::{read_npz, read_npz_matrix, write_npz};
pub use scores::{check_scores, read_scores_npy, read_scores_parquet, write_counts_parquet, write_score_table};
pub use subset::{SubsetCounts, read_subset, write_subset};
