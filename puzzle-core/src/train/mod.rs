//! Training: losses, AdamW, schedules, initialisation, pretraining.

pub mod checkpoint;
pub mod init;
pub mod loss;
pub mod optim;
pub mod pretrain;
pub mod recipe;
pub mod schedule;
