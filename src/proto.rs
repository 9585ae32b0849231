//! Generated protobuf and tonic code, quarantined here: `banditd.v1` (the API; only `grpc/`
//! and clients such as the examples and tests use it) and, in [`log`], `banditd.log.v1` (the
//! log's record format; only `storage/` uses it).

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]

#[rustfmt::skip]
mod generated {
    tonic::include_proto!("banditd.v1");
}

pub use generated::*;

/// The log's record format (`proto/banditd/log/v1/log.proto`).
pub mod log {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("banditd.log.v1");
}

/// The encoded descriptor set of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("banditd_descriptor");
