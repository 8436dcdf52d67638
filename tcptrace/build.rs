//! Compiles `tcptrace-ebpf` with aya-build (nightly, bpfel-unknown-none) and
//! leaves the object in OUT_DIR, where `src/ebpf` embeds it.
use anyhow::Context as _;
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .context("workspace root")?
        .join("tcptrace-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let package = aya_build::Package {
        name: "tcptrace-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
