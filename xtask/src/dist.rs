//! `cargo xtask dist`: the release tarball that the Packer image installs
//! (`packer/cryptoserver.pkr.hcl`): the server and the secret generator built in
//! release mode, the systemd units, the first-boot script and the installer. It
//! first checks that the binaries run on the image's base OS: a binary linked
//! against a newer glibc than the image's would fail there at its first start.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use anyhow::{bail, ensure, Context};
use flate2::write::GzEncoder;
use flate2::Compression;
use object::read::elf::{ElfFile64, Sym};
use object::{elf, Architecture, Endianness, Object};
use sha2::{Digest, Sha256};

use crate::process::{cargo, output, repo_root, run, target_dir};

/// The base OS of the image (`base_image_name_filter` in packer/cryptoserver.pkr.hcl)
/// and the glibc it ships.
const BASE_OS: &str = "Debian 12 (bookworm)";
const BASE_GLIBC: &str = "2.36";

const BINARIES: [&str; 2] = ["cryptoserver", "cryptoserver-secrets"];

/// Files of `deploy/` the tarball holds besides the binaries, with their modes.
const DEPLOY_FILES: [(&str, u32); 7] = [
    ("install.sh", 0o755),
    ("cryptoserver-secrets-setup.sh", 0o755),
    ("cryptoserver-user-data.py", 0o755),
    ("env.example", 0o644),
    ("systemd/cryptoserver-user-data.service", 0o644),
    ("systemd/cryptoserver-secrets.service", 0o644),
    ("systemd/cryptoserver.service", 0o644),
];

#[derive(Debug, clap::Args)]
pub struct DistArgs {
    /// Newest glibc the binaries may need: that of the image's base OS [default: 2.36,
    /// Debian 12's]. Change it together with Packer's base_image_name_filter.
    #[arg(long, default_value = BASE_GLIBC, hide_default_value = true)]
    pub max_glibc: GlibcVersion,
}

impl Default for DistArgs {
    fn default() -> Self {
        Self {
            max_glibc: BASE_GLIBC.parse().expect("BASE_GLIBC is a glibc version"),
        }
    }
}

pub fn run_dist(args: &DistArgs) -> anyhow::Result<()> {
    build_dist(args).map(|_| ())
}

/// Builds the release tarball and returns its path (`cargo xtask image` installs it).
pub fn build_dist(args: &DistArgs) -> anyhow::Result<PathBuf> {
    // Only the root package: the AWS tooling is never shipped, so never built here.
    run(cargo().args(["build", "--release", "--package", "cryptoserver", "--bins"]))?;
    let release = target_dir().join("release");
    let binaries = BINARIES.map(|name| release.join(name));
    let version = shipped_version(&binaries)?;
    for binary in &binaries {
        let needs = match check_glibc(binary, &args.max_glibc)? {
            Some(newest) => format!("needs glibc {newest} or newer"),
            None => "needs no glibc".to_owned(),
        };
        eprintln!(
            "{}: x86_64, {needs}; the image allows up to {}",
            binary.display(),
            args.max_glibc
        );
    }

    let name = format!("cryptoserver-{version}-x86_64-linux");
    let tarball = target_dir().join("dist").join(format!("{name}.tar.gz"));
    pack(&tarball, &name, &binaries)?;
    let digest = hex::encode(Sha256::digest(
        fs::read(&tarball).with_context(|| format!("cannot read {}", tarball.display()))?,
    ));
    let checksum = tarball.with_extension("gz.sha256");
    fs::write(&checksum, format!("{digest}  {name}.tar.gz\n"))
        .with_context(|| format!("cannot write {}", checksum.display()))?;

    println!("{}", tarball.display());
    eprintln!("sha256 {digest} (also in {})", checksum.display());
    eprintln!(
        "next: packer init packer && packer build -var cryptoserver_version={version} packer"
    );
    Ok(tarball)
}

/// The version both binaries report; they come from one package, so they must agree.
fn shipped_version(binaries: &[PathBuf]) -> anyhow::Result<String> {
    let mut versions = Vec::new();
    for binary in binaries {
        let text = output(Command::new(binary).arg("--version"))?;
        let version = text.split_whitespace().nth(1).with_context(|| {
            format!(
                "`{} --version` printed {text:?}, not a name and a version",
                binary.display()
            )
        })?;
        versions.push(version.to_owned());
    }
    if let Some(other) = versions.iter().find(|version| **version != versions[0]) {
        bail!(
            "the binaries report different versions ({} and {other}): rebuild them together",
            versions[0]
        );
    }
    Ok(versions.swap_remove(0))
}

/// Checks that `binary` is an x86_64 executable whose glibc symbol versions are all
/// at most `max`; returns the newest one it needs (none when statically linked).
fn check_glibc(binary: &Path, max: &GlibcVersion) -> anyhow::Result<Option<GlibcVersion>> {
    let data = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let needs = glibc_needs(&data).with_context(|| format!("{}", binary.display()))?;
    let mut too_new: Vec<&(String, GlibcVersion)> =
        needs.iter().filter(|(_, version)| version > max).collect();
    if !too_new.is_empty() {
        too_new.sort_by(|a, b| b.1.cmp(&a.1));
        let mut shown: Vec<String> = too_new
            .iter()
            .take(5)
            .map(|(symbol, version)| format!("{symbol}@GLIBC_{version}"))
            .collect();
        if too_new.len() > shown.len() {
            shown.push(format!("and {} more", too_new.len() - shown.len()));
        }
        bail!(
            "{} needs a glibc newer than {max}, the newest the image's base OS may have \
             (--max-glibc; the default base, {BASE_OS}, has {BASE_GLIBC}): {}. Build it on a \
             system whose glibc is at most {max} (the base OS itself, or a container of it), or \
             move the image to a newer base OS (Packer's base_image_name_filter) and pass its \
             glibc version with --max-glibc",
            binary.display(),
            shown.join(", ")
        );
    }
    Ok(needs.into_iter().map(|(_, version)| version).max())
}

/// Every glibc-versioned symbol an x86_64 ELF file imports, with the version it needs.
fn glibc_needs(data: &[u8]) -> anyhow::Result<Vec<(String, GlibcVersion)>> {
    let file = ElfFile64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    ensure!(
        file.architecture() == Architecture::X86_64,
        "built for {:?}, but the image and the tarball's name are x86_64",
        file.architecture()
    );
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Some(versions) = sections.versions(endian, data)? else {
        // Statically linked: no glibc to depend on.
        return Ok(Vec::new());
    };
    let symbols = sections.symbols(endian, data, elf::SHT_DYNSYM)?;
    let mut needs = Vec::new();
    for (index, symbol) in symbols.enumerate() {
        if !symbol.is_undefined(endian) {
            continue;
        }
        let Some(version) = versions.version(versions.version_index(endian, index))? else {
            continue;
        };
        let Some(glibc) = version.name().strip_prefix(b"GLIBC_") else {
            continue;
        };
        let name = String::from_utf8_lossy(symbols.symbol_name(endian, symbol)?).into_owned();
        let glibc = String::from_utf8_lossy(glibc);
        let Ok(glibc) = glibc.parse() else {
            bail!("{name} needs GLIBC_{glibc}, which is not a released glibc version");
        };
        needs.push((name, glibc));
    }
    Ok(needs)
}

/// A glibc version such as 2.36 or 2.2.5, ordered component by component.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(Vec<u32>);

impl FromStr for GlibcVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split('.')
            .map(|part| part.parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map(GlibcVersion)
            .map_err(|_| format!("`{text}` is not a glibc version such as {BASE_GLIBC}"))
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// Writes the tarball under a temporary name and renames it, so that a failed run
/// never leaves a truncated tarball under the name Packer uploads.
fn pack(tarball: &Path, top: &str, binaries: &[PathBuf]) -> anyhow::Result<()> {
    let dir = tarball.parent().expect("the tarball is inside dist/");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = tarball.with_extension("partial");
    let file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut archive = tar::Builder::new(GzEncoder::new(file, Compression::best()));
    // The newest input's time, not the clock's: the same inputs make the same bytes,
    // so `cargo xtask image` can tell an unchanged release by its digest.
    let mut mtime = 0;
    for source in binaries.iter().cloned().chain(
        DEPLOY_FILES
            .iter()
            .map(|(path, _)| repo_root().join("deploy").join(path)),
    ) {
        let modified = fs::metadata(&source)
            .and_then(|metadata| metadata.modified())
            .with_context(|| format!("cannot read the time of {}", source.display()))?;
        mtime = mtime.max(
            modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        );
    }
    for dir in ["", "bin/", "systemd/"] {
        let mut header = header(tar::EntryType::Directory, 0, 0o755, mtime);
        archive.append_data(&mut header, format!("{top}/{dir}"), io::empty())?;
    }
    let deploy = repo_root().join("deploy");
    let files = binaries
        .iter()
        .map(|binary| {
            let name = binary.file_name().expect("a binary path ends in its name");
            (
                binary.clone(),
                format!("bin/{}", name.to_string_lossy()),
                0o755,
            )
        })
        .chain(
            DEPLOY_FILES
                .iter()
                .map(|&(path, mode)| (deploy.join(path), path.to_owned(), mode)),
        );
    for (source, path, mode) in files {
        let contents =
            fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let mut header = header(tar::EntryType::Regular, contents.len() as u64, mode, mtime);
        archive.append_data(&mut header, format!("{top}/{path}"), contents.as_slice())?;
    }
    let file = archive.into_inner()?.finish()?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, tarball).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            tarball.display()
        )
    })
}

/// A tar header owned by root, as the files are installed.
fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(text: &str) -> GlibcVersion {
        text.parse().unwrap()
    }

    #[test]
    fn glibc_versions_compare_component_by_component() {
        assert!(version("2.2.5") < version("2.3"));
        assert!(version("2.9") < version("2.34"));
        assert!(version("2.34") < version("2.36"));
        assert_eq!(version("2.36").to_string(), "2.36");
        assert!("2.x".parse::<GlibcVersion>().is_err());
        assert!("".parse::<GlibcVersion>().is_err());
    }

    /// This test binary is itself a glibc-linked x86_64 executable.
    #[test]
    fn reads_the_glibc_symbols_a_real_executable_needs() {
        let data = fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = glibc_needs(&data).unwrap();
        assert!(
            needs.iter().any(|(symbol, _)| symbol == "malloc"),
            "{needs:?}"
        );
        assert!(needs.iter().all(|(_, version)| version.0[0] == 2));
    }

    #[test]
    fn refuses_a_binary_that_needs_a_newer_glibc_naming_the_symbols() {
        let exe = std::env::current_exe().unwrap();
        let newest = check_glibc(&exe, &version("99")).unwrap().unwrap();
        let error = check_glibc(&exe, &version("2.0")).unwrap_err().to_string();
        assert!(error.contains(&format!("@GLIBC_{newest}")), "{error}");
        assert!(error.contains("--max-glibc"), "{error}");
    }

    #[test]
    fn refuses_a_file_that_is_not_an_elf_executable() {
        let error = glibc_needs(b"#!/bin/sh\n").unwrap_err();
        assert!(
            error.to_string().contains("not a 64-bit ELF file"),
            "{error}"
        );
    }
}
