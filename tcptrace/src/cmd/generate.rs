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
        GenerateKind::Man => return man_page(cmd, out),
        GenerateKind::CompleteBash => Shell::Bash,
        GenerateKind::CompleteZsh => Shell::Zsh,
        GenerateKind::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "tcptrace", out);
    Ok(())
}

/// One page, `tcptrace(1)`, with a section per command (synopsis and
/// options), so nothing refers to per-command pages that are not installed.
fn man_page(mut cmd: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    cmd.build();
    let main = clap_mangen::Man::new(cmd.clone());
    main.render_title(out)?;
    main.render_name_section(out)?;
    main.render_synopsis_section(out)?;
    main.render_description_section(out)?;
    main.render_options_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(out, ".SH \"TCPTRACE {}\"", name.to_uppercase())?;
        writeln!(out, "{}", about.replace('\\', "\\\\"))?;
        let page = clap_mangen::Man::new(sub.clone());
        for render in [
            clap_mangen::Man::render_synopsis_section,
            clap_mangen::Man::render_options_section,
        ] {
            let mut section = Vec::new();
            render(&page, &mut section)?;
            // Sub-sections of this command's section.
            let text = String::from_utf8_lossy(&section)
                .replace(".SH SYNOPSIS", ".SS Synopsis")
                .replace(".SH OPTIONS", ".SS Options");
            out.write_all(text.as_bytes())?;
        }
    }
    writeln!(
        out,
        ".SH \"EXIT STATUS\"\n0 success; 1 runtime failure, and \\fBwatch \\-\\-exit\\-on\\-alert\\fR when an alert fires; 2 bad arguments or an environment problem to fix (not root, no BTF, no tracefs, a bad recording or config)."
    )?;
    main.render_version_section(out)?;
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
    fn man_page_has_a_section_per_visible_command_with_its_options() {
        let man = generated(GenerateKind::Man);
        assert!(man.starts_with(".ie"), "{}", &man[..40]);
        for command in [
            "top", "trace", "stats", "record", "replay", "report", "watch",
        ] {
            let section = format!(".SH \"TCPTRACE {}\"", command.to_uppercase());
            assert!(man.contains(&section), "{command} missing");
        }
        assert!(man.contains("exit\\-on\\-alert"), "watch's options");
        assert!(man.contains("\\-\\-metrics"));
        assert!(man.contains("EXIT STATUS"));
        // No references to per-command pages, which are not installed.
        assert!(!man.contains("tcptrace\\-top"));
        assert!(!man.to_lowercase().contains("generate"));
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
