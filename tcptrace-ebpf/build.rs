//! Rebuild when `bpf-linker` changes: the crate links with it but cargo cannot
//! see that dependency (see aya-template).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found ({err}): run `cargo xtask setup`"),
    }
}
