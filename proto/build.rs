//! Generates the Rust code for Concord's `.proto` files at build time.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so building needs
//! nothing but cargo: no system protoc and no environment variables.

use std::io;

/// Include directories: `import` statements in the `.proto` files are
/// relative to one of these.
const INCLUDES: [&str; 2] = ["proto/etcd", "proto/concord"];

const PROTOS: [&str; 7] = [
    "proto/etcd/kv.proto",
    "proto/etcd/auth.proto",
    "proto/etcd/rpc.proto",
    "proto/etcd/v3lock.proto",
    "proto/etcd/v3election.proto",
    "proto/concord/peer.proto",
    "proto/concord/demo.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // A key-value's key and value are shared, not copied, when one change goes to many watchers
    // (`bytes::Bytes` clones are a reference count).
    config.bytes([".mvccpb.KeyValue"]);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Server methods nobody implemented answer with gRPC `Unimplemented`.
        .generate_default_stubs(true)
        // The rerun-if-changed lines above already cover the whole tree.
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &PROTOS, &INCLUDES)
}
