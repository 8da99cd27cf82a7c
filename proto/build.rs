//! Compiles the .proto files with a vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        // Zero-copy slices of the snapshot buffer, decoded only when needed.
        .bytes(".adclick.snapshot.AggregateSnapshotParts")
        .compile_protos(
            &["cluster.proto", "dataflow.proto", "snapshot.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=cluster.proto");
    println!("cargo:rerun-if-changed=dataflow.proto");
    println!("cargo:rerun-if-changed=snapshot.proto");
    Ok(())
}
