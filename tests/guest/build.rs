//! Link the guest as a freestanding, statically placed ELF image.
//!
//! The code is compiled with the host target's default (position-independent)
//! code model; `-no-pie -static` makes the linker resolve every address at link
//! time, so the image needs no relocation and runs where the linker script
//! puts it (1 MiB, physical == virtual). `-C relocation-model=static` is not
//! used because, without `--target`, RUSTFLAGS also reach proc-macro crates
//! (zerocopy-derive), which must stay position-independent.
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    let args = [
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        "-static".to_string(),
        "-no-pie".to_string(),
        "-Wl,--build-id=none".to_string(),
        "-Wl,-z,norelro".to_string(),
        "-Wl,-z,max-page-size=4096".to_string(),
        format!("-Wl,-T,{}", script.display()),
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
