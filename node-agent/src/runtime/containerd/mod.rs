//! The node's containerd: the checkpoint image a kubelet archive becomes ([`image`]), `ctr`
//! ([`ctr`]), importing checkpoint images as a restore ([`import`]) and removing them once
//! nothing needs them ([`gc`]).

pub mod ctr;
pub mod gc;
pub mod image;
pub mod import;

pub use ctr::Ctr;
pub use image::{CheckpointImageLayout, ContainerdCheckpointImage, media_type, pack_layout};
pub use import::CheckpointImageImport;
