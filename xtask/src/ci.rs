//! `cargo xtask ci`: everything CI runs, on a fresh machine too. It installs what
//! the tests need (a Python virtual environment with tests/requirements.txt, which
//! brings moto's server and shellcheck, LocalStack in one of its own, HAProxy,
//! QEMU and Prometheus from Debian's packages), builds every binary, then runs the
//! Rust tests and the end-to-end Python suites (the image's boots in QEMU among them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::process::{cargo, ensure_installed, output, repo_root, run, target_dir};

pub fn run_ci() -> anyhow::Result<()> {
    let root = repo_root();
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    let venv = target_dir().join("venv");
    // The Python client is installed editable from clients/python: its own
    // metadata changing needs a reinstall too.
    prepare_venv(
        "python3".as_ref(),
        &venv,
        &root.join("tests/requirements.txt"),
        &[root.join("clients/python/pyproject.toml")],
    )?;
    prepare_venv(
        &python_for_localstack()?,
        &target_dir().join("localstack-venv"),
        &root.join("tests/aws/localstack-requirements.txt"),
        &[],
    )?;
    // tests/pool balances replicas with it, as a load balancer would.
    ensure_installed("haproxy", "haproxy")?;
    // tests/infra/test_vm_boot.py boots the image (`cargo xtask image`, which installs
    // its own build tools) in QEMU, with the user data on a NoCloud seed image.
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("genisoimage", "genisoimage"),
    ] {
        ensure_installed(program, package)?;
    }
    // tests/monitoring checks and unit-tests the alerting rules with promtool and
    // runs a real Prometheus against a real server; the package brings both.
    ensure_installed("prometheus", "prometheus")?;
    ensure_installed("promtool", "prometheus")?;
    // The signer's keys and signed clients documents in tests/server, tests/aws and
    // tests/infra are made with minisign itself, as an operator makes them.
    ensure_installed("minisign", "minisign")?;
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

/// Creates the virtual environment `venv` with `python` and installs `requirements`
/// into it, again only when the requirements (or one of the `also_watched` files)
/// changed since the last install.
pub(crate) fn prepare_venv(
    python: &Path,
    venv: &Path,
    requirements: &Path,
    also_watched: &[PathBuf],
) -> anyhow::Result<()> {
    let mut digest = Sha256::new();
    for input in std::iter::once(requirements).chain(also_watched.iter().map(PathBuf::as_path)) {
        digest.update(
            std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?,
        );
    }
    let wanted = hex::encode(digest.finalize());
    let stamp = venv.join("requirements.sha256");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        run(Command::new(python).args(["-m", "venv"]).arg(venv)).with_context(|| {
            format!(
                "cannot create the Python virtual environment {}: install {} with its venv module",
                venv.display(),
                python.display()
            )
        })?;
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
        .arg(requirements)
        // pip reads the paths in a requirements file relative to its working directory.
        .current_dir(repo_root()))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))
}

/// A Python 3.13 for LocalStack (its code imports warnings.deprecated, new in 3.13):
/// `python3.13` on PATH, else one pyenv installed. Each candidate is run, since a
/// pyenv shim on PATH may exist without answering.
fn python_for_localstack() -> anyhow::Result<PathBuf> {
    let pyenv_versions = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from(".pyenv"))
        .join("versions");
    let mut candidates = vec![PathBuf::from("python3.13")];
    if let Ok(entries) = std::fs::read_dir(&pyenv_versions) {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("3.13."))
            .map(|entry| entry.path().join("bin/python3.13"))
            .collect();
        // Any 3.13 will do; sorted, the same one is chosen on every run.
        versions.sort();
        candidates.extend(versions);
    }
    candidates
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args([
                    "-c",
                    "import sys, venv; sys.exit(sys.version_info[:2] != (3, 13))",
                ])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .with_context(|| {
            format!(
                "LocalStack, which tests/aws runs against, needs Python 3.13: no working \
                 python3.13 on PATH nor under {}/3.13.*; install one (e.g. `pyenv install 3.13`)",
                pyenv_versions.display()
            )
        })
}
