//! FLYT / M-FLYT training building blocks (notes §2–3): the negative-weighted CLIP loss, the functional AdamW
//! step with its closed-form Jacobian, the closed-form mixed derivative G, and the scoring models (`GluHead`,
//! `Mixer`) that carries the downstream
//! gradient back to the example weights.
//!
//! Work in progress toward the full trainer (`flyt train`): these pieces are exact and tested against finite
//! differences in f64; the reference models, the downstream losses and the training loop build on them.

mod adamw;
mod checkpoint;
mod embedding;
mod full;
mod loss;
mod mixed;
mod models;
mod optim;
mod pretrain;
mod scorer;
mod trainer;

pub use adamw::{AdamW, adamw_jacobian, adamw_step};
pub use checkpoint::{load_checkpoint, load_model, save_checkpoint};
pub use embedding::{DownstreamBatch, EmbeddingReference, Inner, LOGIT_SCALE_RANGE, Lookahead};
pub use full::{FullPool, FullReference, FullTask, PixelTaskBatch, train_flyt_full};
pub use loss::{clip_loss, weighted_clip_loss};
pub use mixed::weight_gradient;
pub use models::{GluHead, Mixer};
pub use optim::{ParamAdamW, cosine_lr, decays};
pub use pretrain::{
    EpochOrder, ImageTextStore, PretrainConfig, Pretrained, ZeroShot, class_weights, pretrain_clip, zero_shot,
};
pub use scorer::{FlytScorer, MixWeights, file_sha256};
pub use trainer::{
    DownstreamTask, FlytConfig, FlytState, ReferenceState, ScoringModel, StepLog, UpstreamPool, train_flyt,
};
