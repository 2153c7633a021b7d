//! `dlock completions SHELL` and `dlock man [COMMAND]`: shell completions and man pages,
//! generated from the same clap definitions as the parser (`cli`), so they never disagree
//! with it. Hidden commands (the guardian) appear in neither.

use std::io::Write as _;

use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::exit;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dlock", &mut script);
    write_out(&script)
}

/// Writes dlock's man page, or `command`'s (`dlock-run(1)`), to stdout.
pub fn man(command: Option<&str>) -> u8 {
    match page(command) {
        Some(page) => write_out(&page),
        None => {
            errln!(
                "dlock: no such command: {} (one of: {})",
                command.unwrap_or_default(),
                commands().join(", ")
            );
            exit::USAGE
        }
    }
}

/// The roff text of dlock's page (`None`) or of one command's; `None` if there is no such
/// (visible) command.
fn page(command: Option<&str>) -> Option<Vec<u8>> {
    let mut cli = Cli::command();
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => {
            // Not clap's own `help` command: it has no page of its own.
            let sub = cli
                .get_subcommands()
                .find(|sub| sub.get_name() == name && name != "help" && !sub.is_hide_set())?;
            // The page's title and synopsis name it as people type it: `dlock run`.
            sub.clone()
                .name(format!("dlock-{name}"))
                .bin_name(format!("dlock {name}"))
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff).ok()?;
    Some(roff)
}

/// The commands people use (not the hidden guardian).
fn commands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| sub.get_name().to_owned())
        .collect()
}

/// Writes `bytes` to stdout: 0, or (a broken pipe, a full disk) a message and exit 70, so a
/// truncated script or page never passes for a whole one. (A stdout closed before dlock
/// started is /dev/null to Rust's runtime, so that run writes nothing and exits 0.)
fn write_out(bytes: &[u8]) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(e) => {
            errln!("dlock: cannot write to stdout: {e}");
            exit::INTERNAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command, and every long flag of each (its own and the global ones).
    fn flags() -> Vec<(String, Vec<String>)> {
        let mut cli = Cli::command();
        cli.build();
        cli.get_subcommands()
            .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
            .map(|sub| {
                let longs = sub
                    .get_arguments()
                    .filter(|arg| !arg.is_hide_set())
                    .filter_map(|arg| arg.get_long().map(str::to_owned))
                    .collect();
                (sub.get_name().to_owned(), longs)
            })
            .collect()
    }

    fn completion(shell: Shell) -> String {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "dlock", &mut script);
        String::from_utf8(script).expect("a script is text")
    }

    #[test]
    fn completions_name_every_command_and_flag() {
        let all = flags();
        assert!(all.iter().any(|(name, _)| name == "run"));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion(shell);
            for (command, longs) in &all {
                assert!(script.contains(command.as_str()), "{shell}: no {command}");
                for long in longs {
                    // bash and zsh spell flags out; fish names them with `-l run-flag`.
                    let named = script.contains(&format!("--{long}"))
                        || script.contains(&format!("-l {long}"));
                    assert!(named, "{shell}: no --{long} of dlock {command}");
                }
            }
            assert!(
                !script.contains(crate::job::GUARD_COMMAND),
                "{shell}: the hidden guardian is offered"
            );
        }
    }

    /// roff escapes '-' as '\-'; read the page as people see it.
    fn text(page: &[u8]) -> String {
        String::from_utf8_lossy(page).replace("\\-", "-")
    }

    #[test]
    fn man_pages_name_every_command_and_flag() {
        let main = text(&page(None).expect("dlock's page"));
        assert!(main.contains(".TH dlock"), "{main}");
        for (command, longs) in flags() {
            assert!(main.contains(&command), "dlock(1) lists no {command}");
            let own = text(&page(Some(&command)).expect("a command's page"));
            assert!(own.contains(&format!(".TH dlock-{command}")), "{own}");
            for long in longs {
                assert!(
                    own.contains(&format!("--{long}")),
                    "dlock-{command}(1) has no --{long}"
                );
            }
        }
        assert!(!main.contains(crate::job::GUARD_COMMAND));
        assert!(page(Some(crate::job::GUARD_COMMAND)).is_none());
        assert!(page(Some("no-such-command")).is_none());
        assert!(
            page(Some("help")).is_none(),
            "clap's help command has no page"
        );
    }
}
