//! DataComp's file formats: metadata parquet, embedding `.npz`, subset `.npy`.

mod metadata;
mod npy;
mod npz;
mod pool;
mod scores;
mod subset;
mod tasks;

pub use metadata::{MetadataRow, MetadataTable, read_metadata, write_metadata};
pub use npy::{NpyArray, NpyData, npy_bytes, parse_npy};
pub use npz::{read_npz, read_npz_matrix, write_npz};
pub use pool::{Pool, PoolEmbeddings, PoolOnDisk, pick_prefix, read_pool};
pub use scores::{
    RowMeta, ScoreTable, check_scores, digest_prefix, read_score_table, read_scores_npy, read_scores_parquet,
    sha256_hex, write_counts_parquet, write_duplicates_table, write_score_table,
};
pub use subset::{SubsetCounts, read_subset, write_subset};
pub use tasks::{DATACOMP_TASKS, datacomp_task_files};

/// Writes one record batch as a parquet file through a temporary name and a rename.
fn write_parquet_atomic(path: &std::path::Path, batch: &arrow_array::RecordBatch) -> crate::Result<()> {
    use crate::Error;
    let tmp = crate::temp_path(path);
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let pq = |source| Error::Parquet { path: path.to_path_buf(), source };
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(pq)?;
        w.write(batch).map_err(pq)?;
        w.close().map_err(pq)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
