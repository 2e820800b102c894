//! Compiles weft's XDP program (src/io/xdp/weft_xdp.c) to BPF bytecode with clang, into OUT_DIR, where
//! src/io/xdp/program.rs embeds it with `include_bytes!`. The C file is self-contained (no libbpf or kernel
//! headers), so clang's BPF target is the only tool needed; `scripts/setup.sh` installs it. `WEFT_CLANG` names
//! another clang.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/io/xdp/weft_xdp.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=WEFT_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("weft_xdp.o");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let clang = std::env::var("WEFT_CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        // -g gives the BTF that libbpf needs to read the .maps section; the prefix map keeps the build's own path
        // out of the object, so the bytes depend only on the source and the compiler.
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-fdebug-prefix-map={manifest}=."))
        .arg("-c")
        .arg(format!("{manifest}/{SOURCE}"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} could not compile {SOURCE} to BPF ({s}); see its messages above"),
        Err(e) => panic!(
            "cannot run `{clang}` to compile the XDP program {SOURCE}: {e}. Install clang (scripts/setup.sh does), \
             or point WEFT_CLANG at one"
        ),
    }
}
