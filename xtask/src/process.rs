//! Running the programs a task drives, installing those that come from
//! Debian's packages, and where cargo puts what it builds. Every program runs
//! through [`run`] (its output shown as it comes) or [`output`] (its output
//! captured); both fail naming the command line and its exit status.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context};

/// The workspace root, whatever directory `cargo xtask` was started from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    repo_root().join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

/// The cargo that runs this xtask, so tasks use the same toolchain.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(repo_root());
    // What `cargo run` set for xtask itself (CARGO_PKG_NAME...) would reach the
    // crates that read it, such as ring: their fingerprints would then differ
    // from a plain `cargo build`'s, and each nested cargo would rebuild them and
    // everything above them (minutes).
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("CARGO_PKG_")
            || name_text.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name_text.as_ref())
        {
            command.env_remove(&name);
        }
    }
    command
}

/// Runs `command` to completion after printing its command line, its output
/// going where ours goes.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let shown = show(command);
    eprintln!("$ {shown}");
    let status = command.status().with_context(|| cannot_start(&shown))?;
    check(&shown, status, "")
}

/// Runs `command` to completion without printing anything and returns its
/// standard output; when it fails, the error holds everything it printed.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = show(command);
    let output = command.output().with_context(|| cannot_start(&shown))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let printed = format!(
        "{}\n{}",
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    check(&shown, output.status, printed.trim())?;
    Ok(stdout)
}

/// Installs Debian package `package` unless `program` is already on PATH.
pub fn ensure_installed(program: &str, package: &str) -> anyhow::Result<()> {
    if is_installed(program) {
        return Ok(());
    }
    eprintln!("{program} is missing: installing Debian's {package} package");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "--yes", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh machine has no package lists yet.
    install()
        .or_else(|_| run(Command::new("apt-get").arg("update")).and_then(|()| install()))
        .with_context(|| {
            format!(
                "cannot install {program} with apt-get (Debian's {package} package), which needs \
                 root on Debian or Ubuntu: install {program} yourself and run again"
            )
        })?;
    if !is_installed(program) {
        bail!("installing Debian's {package} package did not put {program} on PATH; install it by hand");
    }
    Ok(())
}

/// Whether `program` is an executable file in one of PATH's directories, as
/// starting it would find it.
fn is_installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|file| file.is_file() && file.permissions().mode() & 0o111 != 0)
        })
    })
}

fn cannot_start(shown: &str) -> String {
    format!("cannot start `{shown}`: is it installed?")
}

fn check(shown: &str, status: ExitStatus, printed: &str) -> anyhow::Result<()> {
    match (status.success(), printed.is_empty()) {
        (true, _) => Ok(()),
        (false, true) => bail!("`{shown}` failed with {status}"),
        (false, false) => bail!("`{shown}` failed with {status}:\n{printed}"),
    }
}

fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(is_installed("sh"));
        assert!(!is_installed("no-such-program-here"));
    }

    #[test]
    fn output_returns_what_the_program_printed() {
        let printed = output(Command::new("sh").args(["-c", "echo out; echo err >&2"])).unwrap();
        assert_eq!(printed, "out\n");
    }

    #[test]
    fn a_failure_names_the_command_and_holds_its_output() {
        let error = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("`sh -c echo out;"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.ends_with(":\nout\nerr"), "{error}");
        let error = run(&mut Command::new("false")).unwrap_err().to_string();
        assert_eq!(error, "`false` failed with exit status: 1");
        let error = output(&mut Command::new("no-such-program-here"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot start `no-such-program-here`"),
            "{error}"
        );
    }
}
