//! Generates the gRPC tunnel's messages and service (`proto/tunnel.proto`,
//! seed 002's transport) when the `grpc` feature is on. protoc comes from
//! the protoc-bin-vendored crate, so a fresh machine needs nothing
//! installed.

fn main() {
    println!("cargo:rerun-if-changed=proto/tunnel.proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return;
    }
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_transport(false)
        // `bytes` fields as `Bytes`: a chunk is the memory HTTP/2 filled.
        .bytes(".")
        .compile_protos(&["proto/tunnel.proto"], &["proto"])
        .expect("compile proto/tunnel.proto");
}
