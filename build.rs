//! Compiles `proto/` with `protox` (pure Rust, no system `protoc`) and feeds the
//! descriptor set to `tonic-prost-build`. The descriptor set keeps source info
//! so that server reflection shows the proto's doc comments to grpcurl.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    git_revision();
    let proto = "proto/presence/v1/presence.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_file(proto)?
        .file_descriptor_set();

    // Written by hand: `compile_fds` takes a ready descriptor set and does not
    // write `file_descriptor_set_path` itself.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("presence_descriptor.bin"), fds.encode_to_vec())?;
    // The health service's schema with its doc comments, for reflection only
    // (tonic-health's own descriptor set has no source info).
    let health = "grpc/health/v1/health.proto";
    println!("cargo:rerun-if-changed=third_party/{health}");
    let health_fds = protox::Compiler::new(["third_party"])?
        .include_source_info(true)
        .open_file(health)?
        .file_descriptor_set();
    std::fs::write(
        out.join("health_descriptor.bin"),
        health_fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Hand-written so a watched snapshot is encoded once per change and
        // shared by its watchers (see src/grpc/wire.rs).
        .extern_path(
            ".presence.v1.WatchRoomResponse",
            "crate::grpc::wire::WatchRoomResponse",
        )
        .codec_path("crate::grpc::wire::Codec")
        .compile_fds(fds)?;
    Ok(())
}

/// `PRESENCED_GIT_REVISION` for the `presenced_build_info` metric: the
/// environment's `PRESENCED_GIT_REVISION` if set (a container build, whose
/// context has no `.git`), else the commit checked out when it was built,
/// else `unknown` (a source tarball).
fn git_revision() {
    println!("cargo:rerun-if-env-changed=PRESENCED_GIT_REVISION");
    if let Ok(given) = std::env::var("PRESENCED_GIT_REVISION") {
        println!("cargo:rustc-env=PRESENCED_GIT_REVISION={given}");
        return;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PRESENCED_GIT_REVISION={revision}");
    // Rebuilt when the checked-out commit moves.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &reference]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
