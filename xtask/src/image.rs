//! `cargo xtask image`: the sealed image as a bootable raw disk, built on this
//! machine the way Packer builds the AMI, so that every first boot can be tested in a
//! virtual machine before one happens on AWS (docs/image.md).
//!
//! The base is Debian 12 with the packages of Debian's own cloud image that the
//! sealed host uses, bootstrapped by mmdebstrap from Debian's mirror and given what
//! the cloud image's build gives it (a root filesystem by UUID, GRUB on the serial
//! console) and what cloud-init's first boot gives Packer's build instance (the build
//! user, with sudo and a key). Then the provisioners of `packer/cryptoserver.pkr.hcl`
//! run as Packer runs them, read from the template: the same files in the same order.
//! The one difference from the AMI is a drop-in naming QEMU's disk models
//! (`packer/qemu-devices.conf`). The result is cached by its inputs.

mod disk;
mod packer;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::dist::{build_dist, DistArgs};
use crate::process::{ensure_installed, repo_root, run, target_dir};
use disk::{Chroot, Disk};
use packer::{Step, Template};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// The packages of Debian's cloud image the sealed host needs: its kernel and boot
/// loader, systemd with udev and logind (ACPI power-off), cloud-init with the tools
/// its growpart and networking use, and what the install and first-boot scripts call.
const PACKAGES: [&str; 16] = [
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "grub-pc",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",
    "netplan.io",
    "openssh-server",
    "openssl",
    "e2fsprogs",
    "sudo",
    "python3",
    "procps",
    "ca-certificates",
];
/// The disk's size; cloud-init's growpart fills a larger root volume on AWS.
const DISK_BYTES: u64 = 2 << 30;
/// What Debian's cloud image sets for GRUB: the kernel's console on the first serial
/// port, which is what EC2's console output and serial console read.
const GRUB_CLOUD: &str = "# As Debian's cloud images: the console on the serial port EC2 reads.\n\
GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0\"\n\
GRUB_TERMINAL=\"console serial\"\n\
GRUB_SERIAL_COMMAND=\"serial --speed=115200\"\n";
/// Where the VM image's drop-in goes, and where the repository keeps it.
const QEMU_DROP_IN: (&str, &str) = (
    "packer/qemu-devices.conf",
    "etc/systemd/system/cryptoserver-secrets.service.d/qemu-devices.conf",
);
/// Packer's variables for a shell provisioner, as its amazon-ebs builder sets them.
const PACKER_VARS: &str = "PACKER_BUILDER_TYPE='amazon-ebs' PACKER_BUILD_NAME='cryptoserver'";
/// Stands for Packer's temporary key; remove-build-access.sh must remove it.
const BUILD_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNyeXB0b3NlcnZlciBpbWFnZSBidWlsZCBrZXkgb25seQ packer_build_key\n";

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Print the provisioning steps read from the Packer template, in order, and exit
    #[arg(long)]
    list_steps: bool,
}

pub fn run_image(args: &ImageArgs) -> anyhow::Result<()> {
    let template_path = repo_root().join("packer/cryptoserver.pkr.hcl");
    if args.list_steps {
        let template = Template {
            path: template_path,
            dist_tarball: PathBuf::from("target/dist/cryptoserver-VERSION-x86_64-linux.tar.gz"),
        };
        for step in template.steps()? {
            println!("{step}");
        }
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask image needs root: it attaches loop devices, mounts them and chroots into the image");
    }
    for (program, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("sfdisk", "fdisk"),
        ("partx", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
    ] {
        ensure_installed(program, package)?;
    }
    let tarball = build_dist(&DistArgs::default())?;
    let template = Template {
        path: template_path,
        dist_tarball: tarball.clone(),
    };
    let steps = template.steps()?;
    let build_user = template.variable_default("ssh_username")?;

    let version = version_of(&tarball)?;
    let image_dir = target_dir().join("image");
    let image = image_dir.join(format!("cryptoserver-{version}-x86_64.raw"));
    let stamp = image.with_extension("raw.inputs");
    let inputs = inputs_digest(&template, &steps, &tarball)?;
    if image.exists() && fs::read_to_string(&stamp).is_ok_and(|built| built.trim() == inputs) {
        eprintln!("{} is up to date with its inputs", image.display());
        println!("{}", image.display());
        return Ok(());
    }

    let base = base_system()?;
    fs::create_dir_all(&image_dir)
        .with_context(|| format!("cannot create {}", image_dir.display()))?;
    let partial = image.with_extension("raw.partial");
    let _ = fs::remove_file(&stamp);
    {
        let disk = Disk::create(&partial, DISK_BYTES)?;
        let chroot = Chroot::enter(&disk, &image_dir.join("mnt"), &base)?;
        prepare_base(&chroot, &build_user)?;
        for step in &steps {
            eprintln!("image: provisioner: {step}");
            provision(&chroot, &build_user, step)?;
        }
        let (source, destination) = QEMU_DROP_IN;
        chroot.install(&repo_root().join(source), destination, 0o644)?;
        chroot.finish()?;
    }
    fs::rename(&partial, &image)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), image.display()))?;
    fs::write(&stamp, format!("{inputs}\n"))
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    eprintln!("built {} (boot it as docs/image.md shows)", image.display());
    println!("{}", image.display());
    Ok(())
}

/// The release version in the tarball's name, cryptoserver-VERSION-x86_64-linux.tar.gz.
fn version_of(tarball: &Path) -> anyhow::Result<String> {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    name.strip_prefix("cryptoserver-")
        .and_then(|rest| rest.strip_suffix("-x86_64-linux.tar.gz"))
        .map(str::to_owned)
        .with_context(|| format!("{} is not named like a release tarball", tarball.display()))
}

/// Everything the image is made of: the base's recipe, the release, the template,
/// the files its steps upload or run, the drop-in, and this builder's own code.
fn inputs_digest(template: &Template, steps: &[Step], tarball: &Path) -> anyhow::Result<String> {
    let mut digest = Sha256::new();
    digest.update(base_recipe());
    digest.update(GRUB_CLOUD);
    digest.update(BUILD_KEY);
    for code in [
        include_str!("image.rs"),
        include_str!("image/disk.rs"),
        include_str!("image/packer.rs"),
    ] {
        digest.update(code);
    }
    let mut files = vec![
        template.path.clone(),
        repo_root().join(QEMU_DROP_IN.0),
        tarball.to_owned(),
    ];
    for step in steps {
        match step {
            Step::Upload { source, .. } => files.push(source.clone()),
            Step::Shell { script, .. } => digest.update(script.contents()?),
        }
    }
    for file in files {
        digest.update(fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
    }
    Ok(hex::encode(digest.finalize()))
}

fn base_recipe() -> String {
    format!("{SUITE} {MIRROR} {}", PACKAGES.join(","))
}

/// Where downloads are kept between builds, outside the repository.
fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set: nowhere to cache Debian's packages")?;
    let dir = base.join("cryptoserver").join("image");
    fs::create_dir_all(dir.join("debs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The bootstrapped Debian system as a tarball, made once per package list. The
/// packages themselves are kept too, so a changed list downloads only what is new.
fn base_system() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let recipe = hex::encode(Sha256::digest(base_recipe()));
    let base = cache.join(format!("debian-{SUITE}-{}.tar", &recipe[..16]));
    if base.exists() {
        return Ok(base);
    }
    let partial = base.with_extension("tar.partial");
    let debs = cache.join("debs");
    run(Command::new("mmdebstrap")
        .args(["--variant=apt", "--format=tar", "--skip=essential/unlink"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            debs.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            debs.display()
        ))
        .args([SUITE])
        .arg(&partial)
        .arg(MIRROR))
    .context(
        "mmdebstrap could not bootstrap the image's Debian system (is Debian's mirror reachable?)",
    )?;
    fs::rename(&partial, &base)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), base.display()))?;
    Ok(base)
}

/// What Debian's cloud image and the build instance's first boot give Packer: the root
/// filesystem in fstab, GRUB on the disk and the serial console, and the build user
/// cloud-init made, with passwordless sudo and Packer's key.
fn prepare_base(chroot: &Chroot, build_user: &str) -> anyhow::Result<()> {
    chroot.write(
        "etc/fstab",
        &format!(
            "UUID={} / ext4 rw,discard,errors=remount-ro 0 1\n",
            chroot.root_uuid()
        ),
        0o644,
    )?;
    chroot.write("etc/default/grub.d/10-cloud.cfg", GRUB_CLOUD, 0o644)?;
    chroot.run(&["grub-install", "--target=i386-pc", &chroot.disk_device()])?;
    chroot.run(&["update-grub"])?;
    chroot.run(&[
        "useradd",
        "--create-home",
        "--shell",
        "/bin/bash",
        "--groups",
        "sudo,adm",
        build_user,
    ])?;
    chroot.write(
        "etc/sudoers.d/90-cloud-init-users",
        &format!("# Created by cloud-init v. 22.4.2\n{build_user} ALL=(ALL) NOPASSWD:ALL\n"),
        0o440,
    )?;
    let ssh = format!("home/{build_user}/.ssh");
    chroot.write(&format!("{ssh}/authorized_keys"), BUILD_KEY, 0o600)?;
    chroot.run(&[
        "chown",
        "-R",
        &format!("{build_user}:{build_user}"),
        &format!("/{ssh}"),
    ])?;
    // The build instance's cloud-init has finished its boot: `cloud-init status
    // --wait`, the first provisioner's first line, returns at once.
    chroot.write("run/cloud-init/enabled", "", 0o644)?;
    chroot.write(
        "run/cloud-init/result.json",
        "{\"v1\": {\"datasource\": \"DataSourceEc2Local\", \"errors\": []}}\n",
        0o644,
    )?;
    chroot.write(
        "run/cloud-init/status.json",
        "{\"v1\": {\"datasource\": \"DataSourceEc2Local\", \"stage\": null, \"modules-final\": \
         {\"start\": 1.0, \"finished\": 2.0, \"errors\": []}}}\n",
        0o644,
    )
}

/// Runs one provisioner as Packer does over SSH: uploads as the build user, scripts
/// uploaded to /tmp and run by the build user through their execute_command, then
/// removed unless the step skips cleaning.
fn provision(chroot: &Chroot, build_user: &str, step: &Step) -> anyhow::Result<()> {
    match step {
        Step::Upload {
            source,
            destination,
        } => {
            let contents =
                fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
            chroot.upload(destination, &contents, build_user)
        }
        Step::Shell {
            script,
            execute_command,
            skip_clean,
        } => {
            let remote = format!("/tmp/script_{}.sh", std::process::id());
            chroot.upload(&remote, &script.contents()?, build_user)?;
            chroot.run_as(
                build_user,
                &Step::command(execute_command, &remote, PACKER_VARS),
            )?;
            if !skip_clean {
                chroot.run_as(build_user, &format!("rm -f {remote}"))?;
            }
            Ok(())
        }
    }
}
