//! # beamline_gpu
//!
//! The GPU pool of `beamline_worker`: feed-forward inference (`ai.inference`) and sentence
//! embeddings (`ai.embed`) on CUDA devices, with a multi-threaded CPU fallback that runs
//! everything when there is no GPU.
//!
//! Prerequisites: none at build time. CUDA is loaded dynamically (cudarc): at start-up
//! [`Scheduler::start`] opens `libcuda`, `libcublas` and `libnvrtc` if they are present
//! and uses every device it can open; otherwise it says why once in the log
//! ([`Scheduler::cpu_fallback_reason`]) and runs on the CPU. Nothing CUDA does can panic
//! the caller.
//!
//! # Layout
//! - `model.rs`: the network ([`Model`], [`Layer`], [`Activation`]) and its safetensors
//!   format (layer list in the header metadata); parse, validate, write.
//! - `scheduler.rs`: [`Scheduler`]: slots, dynamic batching, priority, memory admission,
//!   the host model cache; [`Request`] in, [`Inference`] out.
//! - `queue.rs`: the queue's data structure (groups by model, priority order, readiness).
//! - `cache.rs`: the byte-budgeted LRU used for host models and device weights alike.
//! - `cpu.rs`: the CPU path (SIMD GEMM from the `gemm` crate, bias and activation fused).
//! - `cuda.rs`: discovery, device weight copies, streams, cuBLAS SGEMM, NVRTC kernels.
//! - `encoder.rs`: the BERT sentence encoder of `ai.embed` ([`Encoder`]): model directory,
//!   tokenizer (the `tokenizers` crate), the CPU path; `cuda/embed.rs` its GPU path.
//! - `bin/embed_check.rs`: `beamline-embed-check`, the encoder's device check and bench.
//! - `bin/gpu_check.rs`: `beamline-gpu-check`, the device check and bench (`gpu/README.md`).
//!
//! `unsafe` is confined to `cpu.rs` (the GEMM calls and its GEMM threads' CPU clock) and
//! `cuda.rs` / `cuda/embed.rs` (library probes, GEMM and kernel launches), each block with
//! a `// SAFETY:` line.

mod cache;
mod cpu;
mod cuda;
mod encoder;
mod error;
mod model;
mod queue;
mod scheduler;

pub use cuda::driver_present;
pub use encoder::{BertConfig, Encoder, Tokens};
pub use error::{ErrorKind, InferError};
pub use model::{gelu, softmax_in_place, Activation, Layer, Model, ModelError, FORMAT, MAX_LAYERS};
pub use scheduler::{
    length_bucket, Device, DeviceInfo, DevicePref, EmbedRequest, EmbedTicket, Embeddings,
    Inference, ModelKey, Request, Scheduler, SchedulerConfig, Stats, Ticket,
};
