fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate, so building needs no system package.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("spine_descriptor.bin"))
        .compile_with_config(config, &["proto/spine.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/spine.proto");
    Ok(())
}
