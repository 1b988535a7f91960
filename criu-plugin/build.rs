//! Generates the AMDGPU image types (`proto/criu-amdgpu.proto`) with prost. Needs `protoc`
//! (Debian `protobuf-compiler`, installed by `scripts/install-deps`); `PROTOC` overrides it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/criu-amdgpu.proto");
    prost_build::Config::new().compile_protos(&["proto/criu-amdgpu.proto"], &["proto/"])?;
    Ok(())
}
