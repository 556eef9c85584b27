fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // protoc comes from a crate, so building needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("spine_descriptor.bin"))
        .compile_with_config(config, &["proto/spine.proto"], &["proto"])?;

    // The agent API imports spine.proto's messages; they resolve to the code generated above,
    // and this run writes to its own directory so it does not regenerate spine.v1. Its
    // descriptor set is separate so the Spine's reflection lists only the Spine's services.
    let agent_out = out.join("agent");
    std::fs::create_dir_all(&agent_out)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .out_dir(&agent_out)
        .extern_path(".spine.v1", "crate::spine::v1")
        .file_descriptor_set_path(out.join("agent_descriptor.bin"))
        .compile_with_config(config, &["proto/agent.proto"], &["proto"])?;

    // The CA host's client API stands alone.
    let ca_out = out.join("ca");
    std::fs::create_dir_all(&ca_out)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .out_dir(&ca_out)
        .file_descriptor_set_path(out.join("ca_descriptor.bin"))
        .compile_with_config(config, &["proto/ca.proto"], &["proto"])?;

    println!("cargo:rerun-if-changed=proto/spine.proto");
    println!("cargo:rerun-if-changed=proto/ca.proto");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    Ok(())
}
