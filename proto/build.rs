//! Compiles `berth/bgp/v1/*.proto` with protox (pure Rust): no protoc on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=berth");
    let fds = protox::compile(["berth/bgp/v1/speaker.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
