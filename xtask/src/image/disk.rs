//! The image's disk while it is built: a sparse file with a GPT (a BIOS boot partition
//! for GRUB and the root filesystem) on a loop device, and the root filesystem mounted
//! as a chroot with the kernel filesystems its tools need. Everything attached or
//! mounted is detached again when the values are dropped, on failure too.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{output, run};

/// GPT partition types: GRUB's core image, and a Linux filesystem.
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const LINUX_FILESYSTEM: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The device nodes the chroot's tools use besides the disk's own.
const DEVICE_NODES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The image file attached to a loop device with its partitions.
pub struct Disk {
    device: String,
}

impl Disk {
    /// Makes `path` a blank sparse disk of `bytes`, partitions it and attaches it.
    pub fn create(path: &Path, bytes: u64) -> anyhow::Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        file.set_len(bytes)
            .with_context(|| format!("cannot size {}", path.display()))?;
        drop(file);
        let layout = format!(
            "label: gpt\nsize=1MiB, type={BIOS_BOOT}, name=bios-boot\ntype={LINUX_FILESYSTEM}, name=root\n"
        );
        let mut sfdisk = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot start sfdisk")?;
        sfdisk
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(layout.as_bytes())?;
        let status = sfdisk.wait()?;
        if !status.success() {
            bail!("sfdisk could not partition {} ({status})", path.display());
        }
        let device = output(
            Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(path),
        )?
        .trim()
        .to_owned();
        let disk = Disk { device };
        // losetup --partscan does not always make the partitions' nodes; partx does
        // (and fails harmlessly when they exist).
        let _ = output(Command::new("partx").args(["--add", &disk.device]));
        disk.wait_for(&disk.partition(2))?;
        Ok(disk)
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn partition(&self, number: u32) -> String {
        format!("{}p{number}", self.device)
    }

    fn wait_for(&self, node: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while !Path::new(node).exists() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{node} did not appear after attaching {}", self.device);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .args(["--detach", &self.device])
            .status();
    }
}

/// The root filesystem mounted at a directory, with /proc, /sys, a /dev of its own
/// and an empty /run, none of which ends up in the image.
pub struct Chroot<'a> {
    disk: &'a Disk,
    root: PathBuf,
    uuid: String,
    /// Mount points, innermost last: unmounted in reverse.
    mounts: Vec<PathBuf>,
}

impl<'a> Chroot<'a> {
    /// Makes the root filesystem on the disk's second partition, unpacks `base` into
    /// it and mounts what a chroot needs.
    pub fn enter(disk: &'a Disk, root: &Path, base: &Path) -> anyhow::Result<Self> {
        let partition = disk.partition(2);
        run(Command::new("mkfs.ext4").args(["-q", "-L", "root", &partition]))?;
        let uuid = output(Command::new("blkid").args(["-s", "UUID", "-o", "value", &partition]))?
            .trim()
            .to_owned();
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let mut chroot = Chroot {
            disk,
            root: root.to_owned(),
            uuid,
            mounts: Vec::new(),
        };
        chroot.mount(&["-t", "ext4", &partition], root)?;
        run(Command::new("tar")
            .args(["--extract", "--preserve-permissions", "--numeric-owner"])
            .args(["--xattrs", "--xattrs-include=*", "--file"])
            .arg(base)
            .arg("--directory")
            .arg(root))?;
        chroot.mount(&["-t", "proc", "proc"], &root.join("proc"))?;
        chroot.mount(&["-t", "sysfs", "sysfs"], &root.join("sys"))?;
        chroot.mount(
            &["-t", "tmpfs", "-o", "mode=0755", "run"],
            &root.join("run"),
        )?;
        chroot.mount(
            &["-t", "tmpfs", "-o", "mode=0755", "dev"],
            &root.join("dev"),
        )?;
        chroot.make_devices()?;
        Ok(chroot)
    }

    /// The root filesystem's UUID, as fstab and GRUB name it.
    pub fn root_uuid(&self) -> &str {
        &self.uuid
    }

    /// The whole disk, as the chroot sees it (GRUB is installed on it).
    pub fn disk_device(&self) -> String {
        self.disk.device().to_owned()
    }

    /// Writes `contents` to `path` inside the image (relative to its root).
    pub fn write(&self, path: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        self.write_bytes(path, contents.as_bytes(), mode)
    }

    /// Copies the file `source` of this machine to `path` inside the image.
    pub fn install(&self, source: &Path, path: &str, mode: u32) -> anyhow::Result<()> {
        let contents =
            fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
        self.write_bytes(path, &contents, mode)
    }

    /// Puts a file where Packer would upload it, owned by `user`.
    pub fn upload(&self, path: &str, contents: &[u8], user: &str) -> anyhow::Result<()> {
        let relative = path.trim_start_matches('/');
        self.write_bytes(relative, contents, 0o644)?;
        self.run(&["chown", &format!("{user}:"), &format!("/{relative}")])
    }

    /// Runs a program inside the image as root.
    pub fn run(&self, command: &[&str]) -> anyhow::Result<()> {
        run(self.command().args(command))
    }

    /// Runs a shell command inside the image as `user`, in a login-like environment,
    /// as Packer's SSH session does.
    pub fn run_as(&self, user: &str, command: &str) -> anyhow::Result<()> {
        run(self.command().args([
            "/usr/sbin/runuser",
            "-u",
            user,
            "--",
            "/usr/bin/env",
            "-i",
            &format!("HOME=/home/{user}"),
            &format!("USER={user}"),
            &format!("LOGNAME={user}"),
            "SHELL=/bin/bash",
            "LANG=C.UTF-8",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games",
            "/bin/sh",
            "-c",
            command,
        ]))
    }

    /// Unmounts everything, checks the filesystem and leaves the disk ready to boot.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.unmount_all()?;
        run(Command::new("e2fsck").args(["-f", "-y", &self.disk.partition(2)]))
            .context("the image's root filesystem does not check clean")
    }

    fn command(&self) -> Command {
        let mut command = Command::new("chroot");
        command
            .arg(&self.root)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    fn write_bytes(&self, path: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
        let target = self.root.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        file.write_all(contents)
            .with_context(|| format!("cannot write {}", target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", target.display()))
    }

    fn mount(&mut self, args: &[&str], at: &Path) -> anyhow::Result<()> {
        run(Command::new("mount").args(args).arg(at))?;
        self.mounts.push(at.to_owned());
        Ok(())
    }

    /// A /dev with the usual nodes, the disk and its partitions, and the by-uuid
    /// link update-grub looks for (without it, GRUB boots root=/dev/loopNp2).
    fn make_devices(&self) -> anyhow::Result<()> {
        let dev = self.root.join("dev");
        let make_node = |name: &str, major: u32, minor: u32, block: bool| {
            run(Command::new("mknod")
                .args(["-m", "0660"])
                .arg(dev.join(name))
                .arg(if block { "b" } else { "c" })
                .args([major.to_string(), minor.to_string()]))
        };
        for (name, major, minor) in DEVICE_NODES {
            make_node(name, major, minor, false)?;
        }
        fs::set_permissions(dev.join("null"), fs::Permissions::from_mode(0o666))?;
        for node in [
            self.disk.device().to_owned(),
            self.disk.partition(1),
            self.disk.partition(2),
        ] {
            let rdev = fs::metadata(&node)
                .with_context(|| format!("cannot read {node}"))?
                .rdev();
            let name = node.trim_start_matches("/dev/");
            make_node(name, libc::major(rdev), libc::minor(rdev), true)?;
        }
        fs::create_dir_all(dev.join("disk/by-uuid"))?;
        std::os::unix::fs::symlink(
            format!(
                "../../{}",
                self.disk.partition(2).trim_start_matches("/dev/")
            ),
            dev.join("disk/by-uuid").join(&self.uuid),
        )?;
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(link))?;
        }
        Ok(())
    }

    fn unmount_all(&mut self) -> anyhow::Result<()> {
        while let Some(at) = self.mounts.pop() {
            run(Command::new("umount").arg(&at))
                .with_context(|| format!("cannot unmount {}", at.display()))?;
        }
        Ok(())
    }
}

impl Drop for Chroot<'_> {
    fn drop(&mut self) {
        while let Some(at) = self.mounts.pop() {
            let _ = Command::new("umount").arg("--lazy").arg(&at).status();
        }
    }
}
