//! `cargo xtask ci`: everything CI runs, on a fresh machine too. It installs what
//! the tests need (a Python virtual environment with tests/requirements.txt, which
//! brings moto's server, checkov and shellcheck), builds every binary, then runs
//! the Rust tests and the end-to-end Python suites.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::process::{cargo, output, repo_root, run, target_dir};

pub fn run_ci() -> anyhow::Result<()> {
    let root = repo_root();
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    let venv = prepare_python(&root)?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    if has_nextest() {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
    } else {
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    }
    let mut path = std::ffi::OsString::from(venv.join("bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    run(Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "tests", "-ra"])
        .current_dir(&root)
        .env("PATH", path))
}

fn has_nextest() -> bool {
    output(cargo().args(["nextest", "--version"])).is_ok()
}

/// Creates `venv` in cargo's target directory and installs tests/requirements.txt into it, again only
/// when the requirements or the Python client's own (it is installed editable
/// from clients/python) changed since the last install.
fn prepare_python(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let venv = target_dir().join("venv");
    let requirements = root.join("tests/requirements.txt");
    let mut digest = Sha256::new();
    for input in [&requirements, &root.join("clients/python/pyproject.toml")] {
        digest.update(
            std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?,
        );
    }
    let wanted = hex::encode(digest.finalize());
    let stamp = venv.join("requirements.sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(venv);
    }
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "cannot create the Python virtual environment: install python3 with its venv module",
        )?;
    }
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        // pip reads the paths in a requirements file relative to its working directory.
        .current_dir(root))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(venv)
}
