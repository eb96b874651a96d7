//! `cargo xtask bench mode32 --ebs-iops N`: MODE32 on a volume shaped like EBS.
//!
//! The MODE32 directory of the `mode32` benchmark (sparse files, planted cold
//! key blocks) lives in an ext4 image kept in `bench-ebs` in cargo's target
//! directory. Each run attaches it as a loop device, and a copy of it (the "hot
//! copy", as on an instance-store disk) as a second one. The benchmark moves
//! itself into a blkio cgroup of its own (cgroup v1) whose
//! `blkio.throttle.read_iops_device` limits the reads of the first loop device;
//! everything it starts from then on (the server, fio) is in that cgroup too.
//! The throttle counts the bios submitted to the loop device, which is where
//! the server's reads arrive; the loop worker's reads of the backing file are
//! not limited, so the limit is the loop device's alone. fio on the same
//! blocks checks that it holds.
//!
//! Rows: cold MODE32 over HTTP against the throttle's limit, with fio on the
//! throttled device as a check; the same on the hot copy against fio on it; and
//! a hot copy at boot: 2 MiB files copied and hashed (SHA-256, checked) from
//! the throttled volume, and between two places of the unthrottled one, as
//! rates that BENCHMARKS.md scales to 128 GiB.
//!
//! It needs root (loop devices, mounts, cgroups). The cgroup, the mounts and the
//! loop devices are removed at the end, also on error; after an interrupted
//! run, the next run removes what that one left.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cryptoserver::keystore::mode32_files_kept_open;
use cryptoserver::layout::{Mode, KEY_FILE_LEN};
use cryptoserver::secrets::generate::fill_secret;
use cryptoserver::secrets::jobs;
use cryptoserver::sys;
use sha2::{Digest, Sha256};

use super::mode32::{IoRate, Message, Mode32Dir};
use super::report::{thousands, Goal, Report, Row};
use super::scratch;
use super::server::{Bench, CONCURRENCY, WARM_UP};
use super::wrk::LoadResult;
use crate::process::{ensure_installed, output};

/// Apparent size of the volume image. Its MODE32 files are sparse, so it needs
/// room only for the planted blocks (1 GiB by default) and the boot-copy files;
/// the image file itself is sparse too.
const IMAGE_BYTES: u64 = 16 << 30;
/// Prefix of the benchmark's cgroup names, the process id follows.
const CGROUP_PREFIX: &str = "cryptoserver-bench-ebs-";
const BLKIO: &str = "/sys/fs/cgroup/blkio";

#[derive(clap::Args, Clone)]
pub struct EbsArgs {
    /// Measure MODE32 on a loop-mounted ext4 volume whose reads the kernel limits
    /// to this many per second (gp3's baseline: 3000), and on an unthrottled hot
    /// copy of it, instead of the usual mode32 benchmark; needs root (loop
    /// devices, mounts and a blkio cgroup)
    #[arg(long)]
    ebs_iops: Option<u32>,

    /// With --ebs-iops: also limit the volume's reads to this many MiB/s (gp3's
    /// baseline: 125), which bounds the copy at boot
    #[arg(long, requires = "ebs_iops")]
    ebs_mibps: Option<u32>,

    /// With --ebs-iops: 2 MiB files of random data the boot-to-ready copy copies
    /// and hashes (kept in the volume image)
    #[arg(long, default_value_t = 256, requires = "ebs_iops")]
    boot_files: usize,
}

/// The volume's shape, when one was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EbsShape {
    pub iops: u32,
    pub mibps: Option<u32>,
    pub boot_files: usize,
}

impl EbsArgs {
    pub fn shape(&self) -> Option<EbsShape> {
        Some(EbsShape {
            iops: self.ebs_iops?,
            mibps: self.ebs_mibps,
            boot_files: self.boot_files,
        })
    }
}

impl Bench {
    /// Needs root: see [`require_root`].
    pub(super) fn ebs(&self, report: &mut Report, shape: EbsShape) -> anyhow::Result<()> {
        for (program, package) in [("losetup", "mount"), ("mkfs.ext4", "e2fsprogs")] {
            ensure_installed(program, package)?;
        }
        let dir = scratch::default_path("ebs");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        clean_up_after_an_interrupted_run(&dir)?;
        let image = dir.join("ebs.img");
        let kept_open = mode32_files_kept_open();
        eprintln!(
            "ebs: MODE32 on a loop-mounted volume limited to {} reads/s{}",
            shape.iops,
            shape
                .mibps
                .map_or(String::new(), |mibps| format!(" and {mibps} MiB/s"))
        );
        let hot_image = dir.join("hot.img");
        // What the images were prepared for, written once they are complete.
        let stamp = dir.join("prepared");
        let wanted = format!(
            "{} cold keys, {} kept open, {} boot files\n",
            self.args.cold_keys, kept_open, shape.boot_files
        );
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            let started = Instant::now();
            let _ = std::fs::remove_file(&stamp);
            if !image.exists() {
                make_image(&image)?;
            }
            {
                let volume = Volume::attach(&image, &dir.join("ebs"), Access::ReadWrite)?;
                self.mode32_dir_on(&volume, kept_open)?;
                BootFiles::reuse_or_create(&volume.mount.join("boot"), shape.boot_files)?;
            }
            // The hot copy is a copy of the image: only its used blocks are copied.
            let _ = std::fs::remove_file(&hot_image);
            output(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&image)
                    .arg(&hot_image),
            )?;
            std::fs::write(&stamp, wanted)
                .with_context(|| format!("cannot write {}", stamp.display()))?;
            eprintln!(
                "  volumes ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        // Read-only, so the image stays as prepared; the hot copy takes the boot copies.
        let ebs = Volume::attach(&image, &dir.join("ebs"), Access::ReadOnly)?;
        let hot = Volume::attach(&hot_image, &dir.join("hot"), Access::ReadWrite)?;
        let ebs_dir = self.mode32_dir_on(&ebs, kept_open)?;
        let hot_dir = self.mode32_dir_on(&hot, kept_open)?;
        let iops = f64::from(shape.iops);
        // Reads enough for the run's length at the limit, with room to spare.
        let throttled_reads = (2.0 * iops * self.seconds().as_secs_f64()) as usize;
        let throttled = &ebs_dir.cold[..throttled_reads.min(ebs_dir.cold.len())];
        // The planted files are sparse, so ext4 keeps their extents in tree
        // blocks, which a fresh mount reads on first use, one at a time: fio's
        // first pass ran at a tenth of its speed. Real MODE32 files are
        // contiguous (their extent fits in the inode) and a serving host has
        // read its metadata long ago, so one pass before measuring reads them.
        eprintln!("  reading the files' extents (fio, unthrottled)");
        for (dir, messages) in [(&ebs_dir, throttled), (&hot_dir, &hot_dir.cold[..])] {
            dir.fio_random_reads(messages, CONCURRENCY, self.work.path())?;
        }
        let cgroup = Cgroup::create()?;
        cgroup.limit_reads(&ebs.device_numbers()?, shape)?;
        cgroup.enter()?;

        let limit = format!("the throttle's limit: {}", thousands(iops));
        let fio = self.cold_fio(&ebs_dir, throttled, "throttled volume")?;
        if fio.per_second() > 1.25 * iops {
            bail!(
                "fio read {:.0} blocks/s from the volume limited to {}: the throttle does not hold \
                 (do the loop device's reads escape the cgroup?)",
                fio.per_second(),
                shape.iops
            );
        }
        let cold = self.cold_mode32(&ebs_dir, throttled, "throttled volume", iops)?;
        report.row(Row {
            what: format!(
                "EBS-shaped volume: MODE32 cold page cache, requests/s ({CONCURRENCY} connections)"
            ),
            value: thousands(cold.per_second()),
            baseline: limit.clone(),
            goal: Goal::AtLeast {
                ratio: cold.per_second() / iops,
                minimum: 0.9,
                ceiling: None,
            },
        });
        report.row(Row {
            what: "EBS-shaped volume: fio 4 KiB direct on the same blocks (the check)".to_owned(),
            value: thousands(fio.per_second()),
            baseline: limit,
            goal: Goal::Ratio(fio.per_second() / iops),
        });

        let hot_fio = self.cold_fio(&hot_dir, &hot_dir.cold, "hot copy")?;
        let hot_cold =
            self.cold_mode32(&hot_dir, &hot_dir.cold, "hot copy", hot_fio.per_second())?;
        report.row(Row {
            what: format!(
                "hot copy (unthrottled loop device): MODE32 cold, requests/s ({CONCURRENCY} connections)"
            ),
            value: thousands(hot_cold.per_second()),
            baseline: format!("fio on it: {}", thousands(hot_fio.per_second())),
            goal: Goal::Ratio(hot_cold.per_second() / hot_fio.per_second()),
        });

        let boot = BootFiles::reuse_or_create(&ebs.mount.join("boot"), shape.boot_files)?;
        let hot_boot = BootFiles::reuse_or_create(&hot.mount.join("boot"), shape.boot_files)?;
        let from_ebs = boot.copy_and_check(&hot.mount.join("boot-copy"))?;
        let unthrottled = hot_boot.copy_and_check(&hot.mount.join("boot-copy"))?;
        let gib128 = (128u64 << 30) as f64;
        let volume_limit = shape.mibps.map_or(String::new(), |mibps| {
            format!("the volume's limit: {mibps} MiB/s")
        });
        for (what, rate) in [
            ("from the throttled volume", from_ebs),
            (
                "within the unthrottled one (this machine's bound)",
                unthrottled,
            ),
        ] {
            report.row(Row {
                what: format!(
                    "hot copy at boot, {} x 2 MiB files copied + SHA-256 checked, {what}",
                    shape.boot_files
                ),
                value: format!(
                    "{} MiB/s (128 GiB in {:.1} min)",
                    thousands(rate / MIB),
                    gib128 / rate / 60.0
                ),
                baseline: volume_limit.clone(),
                goal: match shape.mibps {
                    Some(mibps) => Goal::Ratio(rate / MIB / f64::from(mibps)),
                    None => Goal::None,
                },
            });
        }
        Ok(())
    }

    /// The planted MODE32 directory on `volume`, made there on first use.
    fn mode32_dir_on(&self, volume: &Volume, kept_open: usize) -> anyhow::Result<Mode32Dir> {
        Mode32Dir::reuse_or_create(
            &volume.mount.join("mode32"),
            self.args.cold_keys,
            super::server::MESSAGES,
            kept_open,
        )
    }

    fn cold_fio(&self, dir: &Mode32Dir, messages: &[Message], on: &str) -> anyhow::Result<IoRate> {
        dir.evict()?;
        let fio = dir.fio_random_reads(messages, CONCURRENCY, self.work.path())?;
        eprintln!("  fio, {on}: {:.0} reads/s", fio.per_second());
        Ok(fio)
    }

    /// A cold run of the MODE32 server on `dir` with `messages`, lasting the
    /// run's seconds, or less where the messages would run out at 1.5 times `rate`.
    fn cold_mode32(
        &self,
        dir: &Mode32Dir,
        messages: &[Message],
        on: &str,
        rate: f64,
    ) -> anyhow::Result<LoadResult> {
        let cold_file = self.work.write_file("ebs-cold.bin", &messages.concat())?;
        let warm_up_file = self
            .work
            .write_file("ebs-warm-up.bin", &dir.warm_up.concat())?;
        let (server, _) = self.start_server(Mode::Mode32, &dir.path)?;
        self.post_hmac(&server, &warm_up_file, WARM_UP)?;
        dir.evict()?;
        let duration = self.seconds().min(Duration::from_secs_f64(
            messages.len() as f64 / (1.5 * rate),
        ));
        let cold = self.post_hmac(&server, &cold_file, duration)?;
        if cold.repeated > 0 {
            bail!("the cold run on the {on} reused keys it had already read; raise --cold-keys");
        }
        eprintln!(
            "  cryptoserver, {on}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            cold.per_second(),
            cold.p50.as_secs_f64() * 1e3,
            cold.p99.as_secs_f64() * 1e3
        );
        Ok(cold)
    }
}

const MIB: f64 = (1 << 20) as f64;

/// Fails unless this process runs as root with cgroup v1's blkio controller,
/// saying what for; checked before anything is built or made.
pub fn require_root() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if effective_uid != "0" {
        bail!(
            "the EBS-shaped benchmark (--ebs-iops) needs root: it attaches loop devices, \
             mounts them and limits reads with a blkio cgroup; run it as root, or leave out --ebs-iops"
        );
    }
    if !Path::new(BLKIO)
        .join("blkio.throttle.read_iops_device")
        .exists()
    {
        bail!(
            "{BLKIO}/blkio.throttle.read_iops_device does not exist: --ebs-iops needs the cgroup v1 \
             blkio controller mounted there"
        );
    }
    Ok(())
}

/// A sparse file of IMAGE_BYTES with an empty ext4 filesystem.
fn make_image(image: &Path) -> anyhow::Result<()> {
    let file = File::create(image).with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(IMAGE_BYTES)
        .with_context(|| format!("cannot size {}", image.display()))?;
    let made = output(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(image),
    );
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made.map(drop)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

/// An ext4 image attached as a loop device and mounted; unmounted and
/// detached when dropped.
struct Volume {
    device: String,
    mount: PathBuf,
}

impl Volume {
    /// Direct I/O to the backing file, so the image's blocks are cached once,
    /// above the loop device, and evicting the files evicts them.
    fn attach(image: &Path, mount: &Path, access: Access) -> anyhow::Result<Volume> {
        let read_only = access == Access::ReadOnly;
        let device = output(
            Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .args(read_only.then_some("--read-only"))
                .arg(image),
        )
        .with_context(|| format!("cannot attach {} as a loop device", image.display()))?
        .trim()
        .to_owned();
        let mut volume = Volume {
            device,
            mount: PathBuf::new(),
        };
        std::fs::create_dir_all(mount)
            .with_context(|| format!("cannot create {}", mount.display()))?;
        output(
            Command::new("mount")
                .args(["-o", if read_only { "ro,noatime" } else { "noatime" }])
                .arg(&volume.device)
                .arg(mount),
        )?;
        volume.mount = mount.to_owned();
        Ok(volume)
    }

    /// The loop device's `MAJ:MIN`, as the blkio files name devices.
    fn device_numbers(&self) -> anyhow::Result<String> {
        let name = Path::new(&self.device)
            .file_name()
            .context("a loop device has a name")?;
        let path = Path::new("/sys/block").join(name).join("dev");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_owned())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if !self.mount.as_os_str().is_empty() {
            if let Err(error) = output(Command::new("umount").arg(&self.mount)) {
                eprintln!("warning: {error:#}");
            }
        }
        if let Err(error) = output(Command::new("losetup").arg("--detach").arg(&self.device)) {
            eprintln!("warning: {error:#}");
        }
    }
}

/// The benchmark's own blkio cgroup, under the one this process is in. Once
/// entered, this process and everything it starts is in it; dropping it moves
/// this process back and removes it.
struct Cgroup {
    path: PathBuf,
    parent: PathBuf,
}

impl Cgroup {
    fn create() -> anyhow::Result<Cgroup> {
        let parent = own_blkio_cgroup()?;
        let path = parent.join(format!("{CGROUP_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create the cgroup {}", path.display()))?;
        Ok(Cgroup { path, parent })
    }

    fn limit_reads(&self, device: &str, shape: EbsShape) -> anyhow::Result<()> {
        self.write(
            "blkio.throttle.read_iops_device",
            &format!("{device} {}", shape.iops),
        )?;
        if let Some(mibps) = shape.mibps {
            let bytes = u64::from(mibps) << 20;
            self.write(
                "blkio.throttle.read_bps_device",
                &format!("{device} {bytes}"),
            )?;
        }
        Ok(())
    }

    fn enter(&self) -> anyhow::Result<()> {
        self.write("cgroup.procs", &std::process::id().to_string())
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        write_control(&self.path.join(file), value)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let left = write_control(
            &self.parent.join("cgroup.procs"),
            &std::process::id().to_string(),
        )
        .and_then(|()| remove_cgroup(&self.path));
        if let Err(error) = left {
            eprintln!("warning: {error:#}");
        }
    }
}

fn write_control(path: &Path, value: &str) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .with_context(|| format!("cannot write '{value}' to {}", path.display()))
}

/// Removes an empty cgroup; processes that just left it may take a moment.
fn remove_cgroup(path: &Path) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot remove the cgroup {}", path.display()))
            }
        }
    }
}

/// The directory of this process's blkio cgroup.
fn own_blkio_cgroup() -> anyhow::Result<PathBuf> {
    let cgroups =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    let relative = parse_blkio_cgroup(&cgroups)
        .context("/proc/self/cgroup names no blkio cgroup: --ebs-iops needs cgroup v1's blkio")?;
    Ok(Path::new(BLKIO).join(relative.trim_start_matches('/')))
}

/// The path of the `blkio` line of `/proc/PID/cgroup` (`7:blkio:/some/path`).
fn parse_blkio_cgroup(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == "blkio").then_some(path)
    })
}

/// Unmounts, detaches and removes what a run that was killed left in `dir`
/// and in the cgroup tree.
fn clean_up_after_an_interrupted_run(dir: &Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    for mount in mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
    {
        if Path::new(mount).starts_with(dir) {
            eprintln!("  unmounting {mount}, left by an interrupted run");
            output(Command::new("umount").arg(mount))?;
        }
    }
    for image in ["ebs.img", "hot.img"].map(|name| dir.join(name)) {
        if !image.exists() {
            continue;
        }
        let attached = output(Command::new("losetup").arg("--associated").arg(&image))?;
        for device in attached.lines().filter_map(|line| line.split(':').next()) {
            eprintln!("  detaching {device}, left by an interrupted run");
            output(Command::new("losetup").arg("--detach").arg(device))?;
        }
    }
    let parent = own_blkio_cgroup()?;
    for entry in
        std::fs::read_dir(&parent).with_context(|| format!("cannot list {}", parent.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        if name.is_some_and(|name| name.starts_with(CGROUP_PREFIX)) {
            eprintln!(
                "  removing the cgroup {}, left by an interrupted run",
                path.display()
            );
            remove_cgroup(&path)?;
        }
    }
    Ok(())
}

/// Full 2 MiB files of random data, and their SHA-256, for the copy at boot.
struct BootFiles {
    dir: PathBuf,
    sums: Vec<[u8; 32]>,
}

impl BootFiles {
    /// The files kept in `dir`, or new ones; the list of sums is written last,
    /// so it exists only for a whole set.
    fn reuse_or_create(dir: &Path, count: usize) -> anyhow::Result<BootFiles> {
        let sums_file = dir.join("sha256");
        let kept = scratch::reuse_or_empty(dir, |_| {
            let bytes = std::fs::read(&sums_file).ok()?;
            (bytes.len() == count * 32).then(|| {
                bytes
                    .chunks_exact(32)
                    .map(|sum| sum.try_into().expect("chunks are 32 bytes"))
                    .collect()
            })
        })?;
        let sums = match kept {
            Some(sums) => sums,
            None => {
                let mut data = vec![0u8; KEY_FILE_LEN as usize];
                let mut sums = Vec::with_capacity(count);
                for index in 0..count {
                    fill_secret(&mut data)?;
                    let path = dir.join(Mode::Mode32.file_name(index));
                    std::fs::write(&path, &data)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    sums.push(Sha256::digest(&data).into());
                }
                sys::sync_filesystem(&File::open(dir)?)?;
                std::fs::write(&sums_file, sums.concat())
                    .with_context(|| format!("cannot write {}", sums_file.display()))?;
                sums
            }
        };
        Ok(BootFiles {
            dir: dir.to_owned(),
            sums,
        })
    }

    /// Copies every file into `to` (which must not exist), checking each one's
    /// SHA-256 as it goes, then flushes `to`'s filesystem; returns the bytes per
    /// second, from a cold page cache. Four copies per core run at once, so
    /// reads are in flight while others hash and write. `to` is removed
    /// afterwards.
    fn copy_and_check(&self, to: &Path) -> anyhow::Result<f64> {
        let names: Vec<String> = (0..self.sums.len())
            .map(|i| Mode::Mode32.file_name(i))
            .collect();
        for name in &names {
            sys::advise(&File::open(self.dir.join(name))?, sys::Access::DontNeed)?;
        }
        std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
        let started = Instant::now();
        let copies = jobs::default_jobs().saturating_mul(NonZeroUsize::new(4).expect("4 > 0"));
        jobs::map(
            copies,
            names.len(),
            || vec![0u8; KEY_FILE_LEN as usize],
            |buffer, index| -> anyhow::Result<()> {
                let from = self.dir.join(&names[index]);
                File::open(&from)
                    .and_then(|mut file| file.read_exact(buffer))
                    .with_context(|| format!("cannot read {}", from.display()))?;
                if Sha256::digest(&buffer[..]).as_slice() != self.sums[index] {
                    bail!("{}: SHA-256 does not match", from.display());
                }
                let copy = to.join(&names[index]);
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&copy)
                    .and_then(|mut file| file.write_all(buffer))
                    .with_context(|| format!("cannot write {}", copy.display()))
            },
        )?;
        sys::sync_filesystem(&File::open(to)?)
            .with_context(|| format!("cannot flush {}", to.display()))?;
        let rate = (names.len() as u64 * KEY_FILE_LEN) as f64 / started.elapsed().as_secs_f64();
        std::fs::remove_dir_all(to).with_context(|| format!("cannot remove {}", to.display()))?;
        Ok(rate)
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    #[test]
    fn finds_the_blkio_cgroup() {
        let v1 = "9:name=systemd:/\n7:blkio:/a/b\n4:memory:/x\n0::/\n";
        assert_eq!(parse_blkio_cgroup(v1), Some("/a/b"));
        assert_eq!(parse_blkio_cgroup("3:cpu,blkio:/\n"), Some("/"));
        assert_eq!(parse_blkio_cgroup("0::/user.slice\n"), None);
    }

    #[test]
    fn the_volume_needs_a_limit_to_be_asked_for() {
        let args = |line: &[&str]| {
            let command = EbsArgs::augment_args(clap::Command::new("bench"));
            EbsArgs::from_arg_matches(&command.try_get_matches_from(line)?)
        };
        assert_eq!(args(&["bench"]).unwrap().shape(), None);
        let shape = args(&["bench", "--ebs-iops", "3000", "--ebs-mibps", "125"])
            .unwrap()
            .shape();
        assert_eq!(
            shape,
            Some(EbsShape {
                iops: 3000,
                mibps: Some(125),
                boot_files: 256
            })
        );
        assert!(args(&["bench", "--ebs-mibps", "125"]).is_err());
    }
}
