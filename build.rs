//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so a fresh machine needs no
//! system `protoc`, and writes the descriptor set that server reflection serves. For the API
//! package (`banditd.v1`) it also generates serde impls in the proto3 JSON mapping (pbjson),
//! which the HTTP/JSON face uses: camelCase field names out, either spelling in, 64-bit
//! integers as strings, and unknown fields refused.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(
        ["banditd/v1/bandit.proto", "banditd/log/v1/log.proto"],
        ["proto"],
    )?;
    let encoded = fds.encode_to_vec();
    fs::write(out.join("banditd_descriptor.bin"), &encoded)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // Unknown fields are an error (pbjson's default, kept on purpose): a misspelt optional
    // field such as "excludedArmIdz" would otherwise be dropped without a word.
    // Fields at their default are written too (the proto3 JSON option "emit default
    // values"): a response has one shape whatever its values, `{"duplicate": false}` rather
    // than `{}`, which is what callers without the proto expect.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .emit_fields()
        .build(&[".banditd.v1"])?;
    Ok(())
}
