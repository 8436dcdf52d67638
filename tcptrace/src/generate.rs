//! `tcptrace generate`: the man page and shell completions, made from the clap
//! definitions at run time so packaging (`cargo xtask install`, `cargo xtask
//! deb`) ships files that always match the binary.

use std::io::Write;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateKind};

/// Writes the requested file to `out`.
pub fn write(kind: GenerateKind, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let shell = match kind {
        GenerateKind::Man => {
            clap_mangen::Man::new(cmd).render(out)?;
            return Ok(());
        }
        GenerateKind::CompleteBash => Shell::Bash,
        GenerateKind::CompleteZsh => Shell::Zsh,
        GenerateKind::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "tcptrace", out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(kind: GenerateKind) -> String {
        let mut out = Vec::new();
        write(kind, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn man_page_names_every_visible_command() {
        let man = generated(GenerateKind::Man);
        assert!(man.starts_with(".ie"), "{}", &man[..40]);
        for command in [
            "top", "trace", "stats", "record", "replay", "report", "watch",
        ] {
            assert!(
                man.contains(&format!("tcptrace\\-{command}")),
                "{command} missing"
            );
        }
        assert!(!man.contains("tcptrace\\-generate"));
    }

    #[test]
    fn completions_know_the_subcommands_and_flags() {
        for kind in [
            GenerateKind::CompleteBash,
            GenerateKind::CompleteZsh,
            GenerateKind::CompleteFish,
        ] {
            let script = generated(kind);
            assert!(script.contains("watch"), "{kind:?}");
            assert!(script.contains("exit-on-alert"), "{kind:?}");
        }
    }
}
