//! Generated protobuf and tonic code for `banditd.v1`, quarantined here. Only `grpc/` (and
//! clients such as the examples and tests) use it.

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

/// The encoded descriptor set of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("banditd_descriptor");
