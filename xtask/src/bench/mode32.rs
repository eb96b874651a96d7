//! A MODE32 directory that fits this disk, and the disk's own speed on it.
//!
//! All 65,536 files have their full 2 MiB size but are sparse, except for the
//! 4 KiB blocks that hold the keys of the benchmark's "cold" messages: those are
//! real random data on disk, one block per key, so every cold request costs one
//! device read (eight for MODE32X's cold messages, one per probe) once the files
//! are evicted from the page cache. fio then reads exactly MODE32's cold blocks,
//! with direct I/O, at the same concurrency. MODE32X serves the same directory.
//!
//! The cold keys lie in the files the server keeps open, as on a host whose
//! RLIMIT_NOFILE lets it keep all of them open (the systemd unit's does);
//! where the hard limit is lower, the other files cost an `open` per read,
//! which is not what the benchmark is about.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cryptoserver::keystore::{KeyReads, KeyStore};
use cryptoserver::layout::{KeyLocation, Mode, Probes, KEY_FILE_LEN, MODE32_FILE_COUNT};
use cryptoserver::secrets::generate::fill_secret;
use cryptoserver::sys::{self, Access};

use super::scratch::reuse_or_empty;
use super::tools::busy_cpu_seconds;
use crate::process::{ensure_installed, output};

/// The unit the disk reads: the page a 32-byte key read pulls in.
pub const BLOCK_LEN: u64 = 4096;
/// Length of every benchmark message.
pub const MESSAGE_LEN: usize = 64;
pub type Message = [u8; MESSAGE_LEN];
/// Files one fio job opens at once. fio fails when a job opens more files than
/// RLIMIT_NOFILE allows, so this stays below common hard limits; fewer files per
/// job would mean more jobs, and each job leaves its last reads uncounted.
const FILES_PER_FIO_JOB: usize = 12_000;

/// The benchmark's MODE32 directory.
pub struct Mode32Dir {
    pub path: PathBuf,
    /// Messages whose key blocks hold data on disk, each in its own block, all
    /// in the first `kept_open` files.
    pub cold: Vec<Message>,
    /// As `cold`, for MODE32X: each of the 8 probes in its own planted block,
    /// in any file (the probes of a message land anywhere).
    pub cold_x: Vec<Message>,
    /// Messages whose keys, in either mode, fall into holes of the sparse files:
    /// reading them costs no device read, so they warm the server up without
    /// warming `cold`.
    pub warm_up: Vec<Message>,
}

impl Mode32Dir {
    /// The directory kept in `cache` by an earlier run with as many messages, or
    /// else a new one written there. It is kept because deleting 65,536 files can
    /// take minutes where the filesystem discards every freed block as they go.
    pub fn reuse_or_create(
        cache: &Path,
        cold: usize,
        warm_up: usize,
        kept_open: usize,
    ) -> anyhow::Result<Mode32Dir> {
        let path = cache.join("secrets");
        let (cold_file, warm_up_file) = (cache.join("cold.bin"), cache.join("warm-up.bin"));
        let cold_x_file = cache.join("cold-mode32x.bin");
        // As many MODE32X cold reads as MODE32 ones.
        let cold_x = cold / Mode::Mode32x.keys_per_mac();
        let read_messages = |file: &Path, count: usize| -> Option<Vec<Message>> {
            let bytes = std::fs::read(file).ok()?;
            (bytes.len() == count * MESSAGE_LEN).then(|| {
                bytes
                    .chunks_exact(MESSAGE_LEN)
                    .map(|m| m.try_into().expect("chunks are MESSAGE_LEN long"))
                    .collect()
            })
        };
        let kept = reuse_or_empty(cache, |_| {
            let cold = read_messages(&cold_file, cold).filter(|cold| {
                cold.iter()
                    .all(|m| blocks_of(Mode::Mode32, m)[0].file < kept_open)
            })?;
            let cold_x = read_messages(&cold_x_file, cold_x)?;
            Some([cold, cold_x, read_messages(&warm_up_file, warm_up)?])
        })?;
        let [cold, cold_x, warm_up] = match kept {
            Some(messages) => messages,
            None => {
                let groups = [
                    (cold, &[Mode::Mode32][..]),
                    (cold_x, &[Mode::Mode32x][..]),
                    (warm_up, &[Mode::Mode32, Mode::Mode32x][..]),
                ];
                let [cold, cold_x, warm_up] = distinct_block_messages(groups, kept_open)?;
                let planted = (cold.iter().flat_map(|m| blocks_of(Mode::Mode32, m)))
                    .chain(cold_x.iter().flat_map(|m| blocks_of(Mode::Mode32x, m)));
                write_secrets(&path, planted.collect())?;
                // The message files are written last, so they exist only for a whole directory.
                std::fs::write(&warm_up_file, warm_up.concat())
                    .and_then(|()| std::fs::write(&cold_x_file, cold_x.concat()))
                    .and_then(|()| std::fs::write(&cold_file, cold.concat()))
                    .with_context(|| {
                        format!("cannot write the messages into {}", cache.display())
                    })?;
                [cold, cold_x, warm_up]
            }
        };
        Ok(Mode32Dir {
            path,
            cold,
            cold_x,
            warm_up,
        })
    }

    /// Drops every file's pages from the page cache (they are clean: the
    /// directory was flushed), so the next key reads go to the device.
    pub fn evict(&self) -> anyhow::Result<()> {
        for file in Mode::Mode32.file_names() {
            let path = self.path.join(file);
            let handle =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            sys::advise(&handle, Access::DontNeed)
                .with_context(|| format!("cannot evict {}", path.display()))?;
        }
        Ok(())
    }

    /// fio reading the MODE32 key block of each of `messages` once, 4 KiB direct
    /// reads with `concurrency` in flight (libaio), in their order.
    pub fn fio_random_reads(
        &self,
        messages: &[Message],
        concurrency: usize,
        work: &Path,
    ) -> anyhow::Result<IoRate> {
        ensure_installed("fio", "fio")?;
        // One job per range of files, run one after another, so no job opens
        // more files than RLIMIT_NOFILE allows.
        let mut job_file =
            format!("[global]\ndirect=1\nioengine=libaio\niodepth={concurrency}\nstonewall\n");
        let mut first_file = 0;
        while first_file < MODE32_FILE_COUNT {
            let files = first_file..(first_file + FILES_PER_FIO_JOB).min(MODE32_FILE_COUNT);
            first_file = files.end;
            let reads: Vec<String> = messages
                .iter()
                .flat_map(|m| blocks_of(Mode::Mode32, m))
                .filter(|block| files.contains(&block.file))
                .map(|block| {
                    format!(
                        "{} read {} {BLOCK_LEN}\n",
                        Mode::Mode32.file_name(block.file),
                        block.offset
                    )
                })
                .collect();
            // fio refuses an iolog without reads.
            if reads.is_empty() {
                continue;
            }
            let log = work.join(format!("reads-{:04x}.iolog", files.start));
            let mut text = String::from("fio version 2 iolog\n");
            let names: Vec<String> = files
                .clone()
                .map(|file| Mode::Mode32.file_name(file))
                .collect();
            for action in ["add", "open"] {
                for name in &names {
                    text.push_str(&format!("{name} {action}\n"));
                }
            }
            text.push_str(&reads.concat());
            std::fs::write(&log, text)
                .with_context(|| format!("cannot write {}", log.display()))?;
            job_file.push_str(&format!(
                "[files-{:04x}]\nread_iolog={}\n",
                files.start,
                log.display()
            ));
        }
        let job_path = work.join("cold-reads.fio");
        std::fs::write(&job_path, job_file)
            .with_context(|| format!("cannot write {}", job_path.display()))?;
        let stdout = output(
            Command::new("fio")
                .args(["--output-format=terse", "--terse-version=3"])
                .arg(&job_path)
                .current_dir(&self.path),
        )?;
        let (rate, jobs) = parse_fio_terse(&stdout)?;
        // fio's replay leaves the last reads in flight of each job uncounted.
        let uncounted = jobs * (concurrency as u64 - 1);
        if rate.reads + uncounted < messages.len() as u64 {
            bail!(
                "fio read {} blocks, but was given {}",
                rate.reads,
                messages.len()
            );
        }
        Ok(rate)
    }
}

impl Mode32Dir {
    /// Key reads through the server's own key store in this process, without
    /// HTTP: `concurrency` MACs at a time on a runtime like the server's, over
    /// `messages` (each read once), until they run out or `duration` passes.
    /// Also returns the CPU seconds all processes spent while the reads ran
    /// (loading the store not included).
    pub fn key_store_reads(
        &self,
        messages: &[Message],
        concurrency: usize,
        duration: Duration,
    ) -> anyhow::Result<(IoRate, f64)> {
        let store = KeyStore::load(Mode::Mode32, &self.path, KeyReads::Auto, &[])
            .map_err(|error| anyhow::anyhow!("cannot load the MODE32 secrets: {error}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_time()
            .build()
            .context("cannot start a tokio runtime")?;
        let messages = Arc::new(messages.to_vec());
        let cpu_before = busy_cpu_seconds()?;
        let started = Instant::now();
        let deadline = started + duration;
        let reads = runtime.block_on(async {
            let tasks: Vec<_> = (0..concurrency)
                .map(|first| {
                    let (store, messages) = (store.clone(), Arc::clone(&messages));
                    tokio::spawn(async move {
                        let mut reads = 0u64;
                        for message in messages.iter().skip(first).step_by(concurrency) {
                            if Instant::now() >= deadline {
                                break;
                            }
                            store.mac(None, message).await.map_err(anyhow::Error::new)?;
                            reads += 1;
                        }
                        anyhow::Ok(reads)
                    })
                })
                .collect();
            let mut reads = 0;
            for task in tasks {
                reads += task.await.context("a key-reading task panicked")??;
            }
            anyhow::Ok(reads)
        })?;
        let rate = IoRate {
            reads,
            elapsed: started.elapsed(),
        };
        Ok((rate, busy_cpu_seconds()? - cpu_before))
    }
}

/// Random reads done in a time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IoRate {
    pub reads: u64,
    pub elapsed: Duration,
}

impl IoRate {
    pub fn per_second(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64()
    }
}

/// Writes the MODE32 directory at `path` (which must not exist): sparse files,
/// but for the `planted` blocks, which hold random data. Then flushes it to disk.
fn write_secrets(path: &Path, mut planted: Vec<KeyLocation>) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    planted.sort_by_key(|location| (location.file, location.offset));
    let mut data = vec![0u8; BLOCK_LEN as usize];
    let mut blocks = planted.iter().peekable();
    for file in 0..MODE32_FILE_COUNT {
        let name = path.join(Mode::Mode32.file_name(file));
        let handle = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&name)
            .with_context(|| format!("cannot create {}", name.display()))?;
        handle.set_len(KEY_FILE_LEN)?;
        while let Some(block) = blocks.next_if(|block| block.file == file) {
            fill_secret(&mut data)?;
            handle
                .write_all_at(&data, block.offset)
                .with_context(|| format!("cannot write {}", name.display()))?;
        }
        handle.set_permissions(std::fs::Permissions::from_mode(0o400))?;
    }
    let dir = File::open(path)?;
    sys::sync_filesystem(&dir)
        .with_context(|| format!("cannot flush {} to disk", path.display()))?;
    Ok(())
}

/// The 4 KiB blocks holding the keys `message` reads in `mode` (MODE32 or MODE32X).
fn blocks_of(mode: Mode, message: &[u8]) -> Vec<KeyLocation> {
    let keys = match mode {
        Mode::Mode32x => Probes::of(message).locations().to_vec(),
        _ => vec![mode.locate(message)],
    };
    keys.into_iter()
        .map(|key| KeyLocation {
            file: key.file,
            offset: key.offset / BLOCK_LEN * BLOCK_LEN,
        })
        .collect()
}

/// Random messages in groups of `(count, modes)`: each message's key blocks in
/// every one of its group's modes are read by no other key of all the messages,
/// and its MODE32 key lies in the first `files` files (MODE32X's 8 probes land
/// in any file).
fn distinct_block_messages<const N: usize>(
    groups: [(usize, &[Mode]); N],
    files: usize,
) -> anyhow::Result<[Vec<Message>; N]> {
    let mut seen = HashSet::new();
    let mut random = vec![0u8; 4096 * MESSAGE_LEN];
    let mut chosen = groups.map(|(count, _)| Vec::with_capacity(count));
    for ((count, modes), messages) in groups.into_iter().zip(&mut chosen) {
        while messages.len() < count {
            fill_secret(&mut random)?;
            for chunk in random.chunks_exact(MESSAGE_LEN) {
                let mode32_in_files = !modes.contains(&Mode::Mode32)
                    || blocks_of(Mode::Mode32, chunk)[0].file < files;
                let blocks: Vec<_> = modes
                    .iter()
                    .flat_map(|&mode| blocks_of(mode, chunk))
                    .map(|block| (block.file, block.offset))
                    .collect();
                let distinct: HashSet<_> = blocks.iter().collect();
                if messages.len() < count
                    && mode32_in_files
                    && distinct.len() == blocks.len()
                    && !blocks.iter().any(|block| seen.contains(block))
                {
                    seen.extend(blocks);
                    messages.push(chunk.try_into().expect("chunks are MESSAGE_LEN long"));
                }
            }
        }
    }
    Ok(chosen)
}

/// Sums the reads and run times of the jobs in fio's terse (version 3) output
/// (field 6 is the KiB read, field 9 the run time in milliseconds); also returns
/// the number of jobs.
fn parse_fio_terse(output: &str) -> anyhow::Result<(IoRate, u64)> {
    let mut kib = 0u64;
    let mut millis = 0u64;
    let mut jobs = 0;
    for line in output.lines().filter(|line| line.starts_with("3;")) {
        let fields: Vec<&str> = line.split(';').collect();
        let number = |index: usize| -> anyhow::Result<u64> {
            fields
                .get(index)
                .and_then(|field| field.parse().ok())
                .with_context(|| {
                    format!(
                        "fio's terse line has no number in field {}: {line}",
                        index + 1
                    )
                })
        };
        kib += number(5)?;
        millis += number(8)?;
        jobs += 1;
    }
    if jobs == 0 {
        bail!("fio printed no terse result line: {output}");
    }
    let rate = IoRate {
        reads: kib * 1024 / BLOCK_LEN,
        elapsed: Duration::from_millis(millis.max(1)),
    };
    Ok((rate, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_fio_jobs() {
        let output = "3;fio-3.33;files-0000;0;0;48000;192000;48000;1000;4;29201;8.9\n\
                      3;fio-3.33;files-2ee0;0;0;16000;160000;40000;100;4;29201;8.9\n";
        assert_eq!(
            parse_fio_terse(output).unwrap(),
            (
                IoRate {
                    reads: 16_000,
                    elapsed: Duration::from_millis(1100)
                },
                2
            )
        );
        assert!(parse_fio_terse("fio: some error").is_err());
        assert!(parse_fio_terse("3;fio-3.33;x;0;0;many").is_err());
    }

    #[test]
    fn messages_land_in_distinct_blocks() {
        let both = [Mode::Mode32, Mode::Mode32x];
        let [cold, cold_x, warm_up] = distinct_block_messages(
            [(300, &both[..1]), (40, &both[1..]), (100, &both[..])],
            1000,
        )
        .unwrap();
        assert_eq!((cold.len(), cold_x.len(), warm_up.len()), (300, 40, 100));
        let blocks: Vec<_> = (cold.iter().flat_map(|m| blocks_of(Mode::Mode32, m)))
            .chain(cold_x.iter().flat_map(|m| blocks_of(Mode::Mode32x, m)))
            .chain(
                warm_up
                    .iter()
                    .flat_map(|m| both.iter().flat_map(|&mode| blocks_of(mode, m))),
            )
            .map(|block| (block.file, block.offset))
            .collect();
        assert_eq!(blocks.len(), 300 + 40 * 8 + 100 * 9);
        assert_eq!(blocks.iter().collect::<HashSet<_>>().len(), blocks.len());
        assert!((cold.iter().chain(&warm_up)).all(|m| blocks_of(Mode::Mode32, m)[0].file < 1000));
        let key = Mode::Mode32.locate(&cold[0]);
        let block = blocks_of(Mode::Mode32, &cold[0])[0];
        assert!(key.offset - block.offset < BLOCK_LEN && block.offset.is_multiple_of(BLOCK_LEN));
        let probe = Probes::of(&cold_x[0]).locations()[5];
        let block = blocks_of(Mode::Mode32x, &cold_x[0])[5];
        assert_eq!(probe.file, block.file);
        assert!(probe.offset - block.offset < BLOCK_LEN);
    }
}
