//! Compile the XDP program with the system clang and generate its libbpf-rs skeleton.

use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/steer.bpf.c";

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("steer.skel.rs");
    // Debian keeps <asm/types.h> under the multiarch include directory, which clang's BPF target
    // does not search by itself.
    let arch_include = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        // Kept beside the skeleton: `xdp-steer object` writes it out for `xdp-loader`.
        .obj(out_dir.join("steer.bpf.o"))
        .clang_args([arch_include.as_str(), "-Isrc/bpf"])
        .build_and_generate(&out)
    {
        panic!(
            "building the XDP program failed: {e:#}\n\
             It needs clang and the kernel headers: apt-get install clang libelf-dev zlib1g-dev pkgconf make"
        );
    }
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/steer.h");
}
