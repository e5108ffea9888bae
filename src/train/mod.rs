//! FLYT / M-FLYT training (notes §2–3): the scoring models ([`GluHead`], [`Mixer`]), the two reference modes
//! ([`EmbeddingReference`] over frozen embeddings, [`FullReference`] over the CLIP towers), the training loops
//! ([`train_flyt`], [`train_flyt_full`]) with the exact one-step-lookahead hypergradient, checkpoints, and the
//! trained models ready to score a pool ([`FlytScorer`], [`MixWeights`]).
//!
//! The mathematics behind the loop — the negative-weighted CLIP loss, the functional AdamW step and its
//! closed-form Jacobian, the closed-form mixed derivative G — is crate-private and tested against finite
//! differences in f64.

mod adamw;
mod checkpoint;
mod embedding;
mod full;
mod full_pool;
mod lookahead;
mod loss;
mod mixed;
mod models;
mod optim;
mod scorer;
mod trainer;

pub use adamw::AdamW;
pub use checkpoint::{load_checkpoint, load_model, save_checkpoint};
pub use embedding::{DownstreamBatch, EmbeddingReference};
pub use full::{FullReference, FullTask, PixelTaskBatch, train_flyt_full};
pub use full_pool::{FullPool, FullRows, FullRowsBatch, RowAt, StreamedFeatures, StreamedFullPool};
pub use lookahead::{Inner, LOGIT_SCALE_RANGE, Lookahead, LossScaler, Multitask, RefSettings, ReferenceState};
pub use loss::{clip_loss, weighted_clip_loss};
pub use models::{GluHead, Mixer};
pub use optim::{ParamAdamW, cosine_lr};
pub use scorer::{CheckpointInfo, FlytScorer, MixWeights, ModelKind};
pub use trainer::{
    Augment, BatchPlan, DownstreamTask, FlytConfig, FlytState, ScoringModel, StepBatches, StepLog, StreamedPool,
    TaskBatch, TaskShape, TraceSpec, UpstreamPool, UpstreamRows, train_flyt,
};
