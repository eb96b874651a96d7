//! Microbenchmarks of the core, without a server (`cargo bench`): key selection
//! and the MAC per mode, the key store's whole path per mode, and the
//! `/hmac/batch` frame parser. A regression here shows before any HTTP run.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryptoserver::batch::{encode_frames, parse_frames};
use cryptoserver::keystore::{KeyReads, KeyStore};
use cryptoserver::layout::{Mode, Probes, KEY_FILE_LEN, KEY_LEN, MODE32X_PROBES};
use cryptoserver::mac::{self, PrecomputedKey};
use cryptoserver::secrets::generate::{fill_secret, generate, GenerateOptions};
use cryptoserver::secrets::progress::ProgressOutput;
use zeroize::Zeroizing;

const MESSAGE_LEN: usize = 64;
const BATCH_LEN: usize = 4096;

fn message() -> [u8; MESSAGE_LEN] {
    let mut message = [0u8; MESSAGE_LEN];
    fill_secret(&mut message).expect("the OS random generator works");
    message
}

fn key_selection(c: &mut Criterion) {
    let message = message();
    let mut group = c.benchmark_group("key selection (64 B message)");
    for mode in Mode::ALL {
        group.bench_function(mode.name(), |b| match mode {
            Mode::Mode32x => b.iter(|| Probes::of(black_box(&message)).locations()),
            _ => b.iter(|| black_box(mode).locate(black_box(&message))),
        });
    }
    group.finish();
}

fn mac_computation(c: &mut Criterion) {
    let message = message();
    let mut key = [0u8; KEY_LEN];
    fill_secret(&mut key).expect("the OS random generator works");
    let precomputed = PrecomputedKey::new(&key);
    let mut group = c.benchmark_group("HMAC-SHA256 (64 B message)");
    group.throughput(Throughput::Bytes(MESSAGE_LEN as u64));
    group.bench_function("MODE0/MODE16: precomputed pads", |b| {
        b.iter(|| precomputed.mac(black_box(&message)))
    });
    group.bench_function("MODE32: key read per request", |b| {
        b.iter(|| mac::mac(black_box(&key), black_box(&message)))
    });
    let probes = Probes::of(&message);
    let keys = vec![Zeroizing::new(key); MODE32X_PROBES];
    group.bench_function("MODE32X: K' from 8 keys, then the MAC", |b| {
        b.iter(|| mac::mac(&probes.derive_key(black_box(&keys)), black_box(&message)))
    });
    group.finish();
}

/// `KeyStore::mac` as a request runs it: selection, key (MODE32: a read from
/// the warm page cache on the blocking pool), MAC. MODE32 keeps the first files
/// open and opens the others per read when RLIMIT_NOFILE is below 69,632 (the
/// hard limit may not allow more), so it is measured in a low and a high file.
/// MODE32X reads 8 keys in any files, from the same sparse directory.
fn key_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("KeyStore::mac (64 B message)");
    for mode in Mode::ALL {
        let secrets = dir.path().join(match mode {
            Mode::Mode32 | Mode::Mode32x => "MODE32",
            _ => mode.name(),
        });
        match mode {
            Mode::Mode32 => write_sparse_mode32(&secrets),
            Mode::Mode32x => {}
            _ => generate_secrets(mode, &secrets),
        }
        let store = KeyStore::load(mode, &secrets, KeyReads::Auto, &[]).expect("the secrets load");
        let cases = match mode {
            Mode::Mode32 => vec![
                (
                    "MODE32, file 0000..03ff (kept open)",
                    message_in_files(0..0x400),
                ),
                (
                    "MODE32, file fc00..ffff (opened per read at RLIMIT_NOFILE 20000)",
                    message_in_files(0xfc00..0x10000),
                ),
            ],
            Mode::Mode32x => vec![("MODE32X, 8 probes in any files", message())],
            _ => vec![(mode.name(), message())],
        };
        for (name, message) in cases {
            group.bench_function(name, |b| {
                b.iter(|| runtime.block_on(store.mac(None, black_box(&message))))
            });
        }
    }
    group.finish();
}

/// A random message whose MODE32 key lies in one of `files`.
fn message_in_files(files: std::ops::Range<usize>) -> [u8; MESSAGE_LEN] {
    loop {
        let candidate = message();
        if files.contains(&Mode::Mode32.locate(&candidate).file) {
            return candidate;
        }
    }
}

fn batch_frames(c: &mut Criterion) {
    let mut messages = vec![0u8; BATCH_LEN * MESSAGE_LEN];
    fill_secret(&mut messages).expect("the OS random generator works");
    let messages: Vec<&[u8]> = messages.chunks_exact(MESSAGE_LEN).collect();
    let body = encode_frames(&messages);
    let mut group = c.benchmark_group("batch frames");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse 4096 x 64 B", |b| {
        b.iter(|| parse_frames(black_box(&body)))
    });
    group.finish();
}

fn generate_secrets(mode: Mode, dir: &Path) {
    let args = GenerateOptions {
        mode,
        dir: dir.to_owned(),
        jobs: None,
        owner: None,
    };
    generate(&args, ProgressOutput::Hidden).expect("development secrets are written");
}

/// 65,536 full-size sparse files: the key store opens them all, and a key read
/// costs the same page-cache lookup whatever the key bytes are.
fn write_sparse_mode32(dir: &Path) {
    std::fs::create_dir(dir).expect("the MODE32 directory is created");
    for name in Mode::Mode32.file_names() {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(dir.join(name))
            .and_then(|file| file.set_len(KEY_FILE_LEN))
            .expect("a sparse MODE32 file is created");
    }
}

criterion_group!(
    benches,
    key_selection,
    mac_computation,
    key_store,
    batch_frames
);
criterion_main!(benches);
