//! Properties of the HTTP API, driven in process through the real application
//! (`cryptoserver::http::App`) over keys loaded by the real key store from a
//! secrets directory this test writes:
//!
//! - the MAC of any message equals an HMAC-SHA256 written out here from RFC 2104,
//!   under the key the README's layout rule picks, in MODE0, MODE16 and MODE32X
//!   (its derived key from 8 probes, with io_uring and with threads), through
//!   `/hmac` (every encoding), `/hmac/batch` and `/verify`;
//! - no request (any method, path, query, `X-Cryptoserver-Mac`, `Authorization`
//!   and body bytes) panics a handler or gets a 5xx, every error is a JSON body
//!   that does not echo the message, and every 200 from `/hmac` or `/hmac/batch`
//!   carries the right MACs.
//! - no body sent to `PUT /admin/clients` without the signer's signature (any
//!   bytes, or minisign's lines in their shapes over any file) changes the
//!   clients or keeps anything, panics or gets a 5xx.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::{Arc, LazyLock, Mutex};

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use base64::Engine as _;
use cryptoserver::batch::{encode_frames, parse_frames};
use cryptoserver::clients::{Clients, LiveClients};
use cryptoserver::http::{App, AppState, MAC_HEADER};
use cryptoserver::keystore::{KeyReads, KeyStore};
use cryptoserver::layout::Mode;
use cryptoserver::limits::{ConcurrencyLimit, ConnectionLimit, RateLimit, RateLimiter};
use cryptoserver::metrics::Metrics;
use cryptoserver::signed_clients::{SignedUpdates, Signer};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestRunner;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

const KEY_LEN: usize = 32;
/// Small, so that generated bodies cross it often.
const MAX_BODY: usize = 4096;
const TOKEN: &str = "property-test-token";
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Keys as the server loads them, and the secret bytes for the reference.
struct Secrets {
    mode: Mode,
    keys: KeyStore,
    reference: Reference,
}

enum Reference {
    /// MODE0 and MODE16: the one secret file's bytes.
    File(Vec<u8>),
    /// MODE32X: sparse files (all zeros) with random keys planted at the probes
    /// of each message before it is sent.
    Planted(Arc<Planted>),
}

struct Planted {
    dir: tempfile::TempDir,
    /// The keys planted so far, by key index.
    keys: Mutex<HashMap<u32, [u8; KEY_LEN]>>,
}

impl Planted {
    /// 65,536 sparse MODE32X files of 2 MiB.
    fn new() -> Planted {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        for file in 0..65_536 {
            let path = dir.path().join(format!("{file:04x}"));
            fs::File::create(&path)
                .and_then(|created| created.set_len(65_536 * KEY_LEN as u64))
                .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Planted {
            dir,
            keys: Mutex::default(),
        }
    }

    /// The key at `index`, planted now if it is not yet.
    fn key_at(&self, index: u32) -> [u8; KEY_LEN] {
        *self.keys.lock().unwrap().entry(index).or_insert_with(|| {
            let mut key = [0; KEY_LEN];
            getrandom::fill(&mut key).unwrap();
            let path = self.dir.path().join(format!("{:04x}", index >> 16));
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            file.write_at(&key, u64::from(index & 0xffff) * KEY_LEN as u64)
                .unwrap();
            key
        })
    }
}

static MODE0: LazyLock<Secrets> = LazyLock::new(|| Secrets::generate(Mode::Mode0));
static MODE16: LazyLock<Secrets> = LazyLock::new(|| Secrets::generate(Mode::Mode16));

impl Secrets {
    /// Random keys in a private temporary directory laid out as the README says;
    /// the directory is gone once the key store has loaded it.
    fn generate(mode: Mode) -> Secrets {
        let (name, len) = match mode {
            Mode::Mode0 => ("secret", KEY_LEN),
            Mode::Mode16 => ("0000", 65_536 * KEY_LEN),
            Mode::Mode32 | Mode::Mode32x => unreachable!("tested on sparse files"),
        };
        let mut file = vec![0; len];
        getrandom::fill(&mut file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join(name);
        fs::write(&path, &file).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let keys = KeyStore::load(mode, dir.path(), KeyReads::Auto, &[]).unwrap();
        Secrets {
            mode,
            keys,
            reference: Reference::File(file),
        }
    }

    /// The planted MODE32X directory, served with `reads`.
    fn mode32x(planted: &Arc<Planted>, reads: KeyReads) -> Secrets {
        Secrets {
            mode: Mode::Mode32x,
            keys: KeyStore::load(Mode::Mode32x, planted.dir.path(), reads, &[]).unwrap(),
            reference: Reference::Planted(Arc::clone(planted)),
        }
    }

    /// The README's rule, written out again: MODE0 uses the whole file; MODE16
    /// the slot named by the first two bytes of SHA-256(message), big-endian;
    /// MODE32X derives its key from the keys at 8 probes (see [`mode32x_key`]).
    fn key_for(&self, message: &[u8]) -> [u8; KEY_LEN] {
        match &self.reference {
            Reference::File(file) => {
                let slot = match self.mode {
                    Mode::Mode0 => 0,
                    _ => {
                        let digest = Sha256::digest(message);
                        usize::from(u16::from_be_bytes([digest[0], digest[1]]))
                    }
                };
                file[slot * KEY_LEN..][..KEY_LEN].try_into().unwrap()
            }
            Reference::Planted(planted) => mode32x_key(message, |index| planted.key_at(index)),
        }
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        reference_hmac(&self.key_for(message), message)
    }
}

/// MODE32X as the README states it: R = SHA-256("cryptoserver MODE32X v1" || m);
/// SHA-256(R || 0x00) gives 8 big-endian u32 indices; K' = SHA-256(R || 0x01 ||
/// the 8 keys at those indices, in order).
fn mode32x_key(message: &[u8], mut key_at: impl FnMut(u32) -> [u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let r = Sha256::new()
        .chain_update(b"cryptoserver MODE32X v1")
        .chain_update(message)
        .finalize();
    let indices = Sha256::new().chain_update(r).chain_update([0]).finalize();
    let mut derived = Sha256::new().chain_update(r).chain_update([1]);
    for index in indices.chunks_exact(4) {
        derived.update(key_at(u32::from_be_bytes(index.try_into().unwrap())));
    }
    derived.finalize().into()
}

/// HMAC-SHA256 as RFC 2104 defines it, independent of the server's HMAC code:
/// SHA-256((K ^ opad) || SHA-256((K ^ ipad) || message)), K zero-padded to 64 bytes.
fn reference_hmac(key: &[u8; KEY_LEN], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let padded = |pad: u8| block.map(|byte| byte ^ pad);
    let inner = Sha256::new()
        .chain_update(padded(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(padded(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn open_state(secrets: &Secrets) -> AppState {
    AppState {
        keys: secrets.keys.clone(),
        max_body: MAX_BODY,
        body_timeout: std::time::Duration::from_secs(30),
        clients: None,
        updates: None,
        rate_limiter: None,
        concurrency: Arc::new(ConcurrencyLimit::new(usize::MAX)),
        connections: Arc::new(ConnectionLimit::new(usize::MAX, usize::MAX)),
        metrics: Metrics::default(),
    }
}

/// With bearer tokens and a tight rate limit, so 401 and 429 happen too.
fn guarded_state(secrets: &Secrets) -> AppState {
    let tokens_file = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        tokens_file.path(),
        hex::encode(Sha256::digest(TOKEN.as_bytes())),
    )
    .unwrap();
    AppState {
        clients: Some(LiveClients::new(
            tokens_file.path(),
            Clients::load(tokens_file.path()).unwrap(),
        )),
        rate_limiter: Some(RateLimiter::new(RateLimit {
            per_second: 50.0,
            burst: 20.0,
        })),
        ..open_state(secrets)
    }
}

/// A minisign public key (made with `minisign -G`; its secret key was not
/// kept): nothing the tests send is signed by it.
const SIGNER: &str = "RWRgWJPvorhPZTm6sw6UC3T/1lJz5MajAUCIqXCqj2DwCH8ft7HWaAGo";

/// The real application on its own runtime, called without a socket.
struct Server {
    runtime: tokio::runtime::Runtime,
    app: App,
    /// Where a server with a signer keeps documents, while it lives.
    state_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// As the original design runs it: open to all, no limit but the body size.
    fn open(secrets: &Secrets) -> Server {
        Server::new(open_state(secrets))
    }

    /// With bearer tokens and a tight rate limit, so 401 and 429 happen too.
    fn guarded(secrets: &Secrets) -> Server {
        Server::new(guarded_state(secrets))
    }

    /// Guarded, and with a signer: `PUT /admin/clients` is served.
    fn with_signer(secrets: &Secrets) -> Server {
        let state_dir = tempfile::tempdir().unwrap();
        let updates = SignedUpdates::new(Signer::parse(SIGNER).unwrap(), state_dir.path());
        Server {
            state_dir: Some(state_dir),
            ..Server::new(AppState {
                updates: Some(updates.unwrap()),
                ..guarded_state(secrets)
            })
        }
    }

    fn new(state: AppState) -> Server {
        Server {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            app: App::new(Arc::new(state)),
            state_dir: None,
        }
    }

    /// Status and body of one request; a handler panic fails the test here.
    fn call(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            (
                status,
                to_bytes(response.into_body(), usize::MAX).await.unwrap(),
            )
        })
    }

    fn post(&self, uri: &str, body: impl Into<Body>) -> (StatusCode, Bytes) {
        self.call(
            Request::post(uri)
                .body(body.into())
                .expect("a valid request"),
        )
    }
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

/// Batches within the body limit.
fn batch() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12)
}

fn check_macs(server: &Server, secrets: &Secrets, message: &[u8]) -> Result<(), TestCaseError> {
    let expected = secrets.mac(message);
    let (status, body) = server.post("/hmac", message.to_vec());
    prop_assert_eq!(status, StatusCode::OK);
    prop_assert_eq!(&body[..], &expected[..]);
    let (status, body) = server.post("/hmac?encoding=hex", message.to_vec());
    prop_assert_eq!(status, StatusCode::OK);
    prop_assert_eq!(body, hex::encode(expected));
    let (status, body) = server.post("/hmac?encoding=base64", message.to_vec());
    prop_assert_eq!(status, StatusCode::OK);
    prop_assert_eq!(body, BASE64.encode(expected));

    let mut wrong = expected;
    wrong[message.len() % 32] ^= 1;
    for (presented, valid) in [(expected, true), (wrong, false)] {
        let (status, body) = server.call(
            Request::post("/verify")
                .header(MAC_HEADER, hex::encode(presented))
                .body(Body::from(message.to_vec()))
                .unwrap(),
        );
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({ "valid": valid })
        );
    }
    Ok(())
}

fn check_batch(
    server: &Server,
    secrets: &Secrets,
    messages: &[Vec<u8>],
) -> Result<(), TestCaseError> {
    let expected: Vec<u8> = messages.iter().flat_map(|m| secrets.mac(m)).collect();
    let (status, body) = server.post("/hmac/batch", encode_frames(messages));
    prop_assert_eq!(status, StatusCode::OK);
    prop_assert_eq!(&body[..], &expected[..]);
    Ok(())
}

/// Runs `test` on `cases` values of `strategy`; a failure reports the smallest
/// failing value proptest finds and records its seed in
/// `tests/properties.proptest-regressions`, so later runs try it first.
fn check_cases<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("{failure}");
    }
}

#[test]
fn mode0_macs_equal_the_reference() {
    let server = Server::open(&MODE0);
    check_cases(256, message(), |message| {
        check_macs(&server, &MODE0, &message)
    });
}

#[test]
fn mode16_macs_equal_the_reference() {
    let server = Server::open(&MODE16);
    check_cases(256, message(), |message| {
        check_macs(&server, &MODE16, &message)
    });
}

#[test]
fn mode0_batches_equal_the_reference() {
    let server = Server::open(&MODE0);
    check_cases(128, batch(), |messages| {
        check_batch(&server, &MODE0, &messages)
    });
}

#[test]
fn mode16_batches_equal_the_reference() {
    let server = Server::open(&MODE16);
    check_cases(128, batch(), |messages| {
        check_batch(&server, &MODE16, &messages)
    });
}

/// One sparse directory (65,536 files take seconds to make), served with
/// io_uring, then with the thread pool.
#[test]
fn mode32x_macs_and_batches_equal_the_rule_written_out() {
    let planted = Arc::new(Planted::new());
    for reads in [KeyReads::IoUring, KeyReads::Threads] {
        let secrets = Secrets::mode32x(&planted, reads);
        let server = Server::open(&secrets);
        check_cases(64, message(), |message| {
            check_macs(&server, &secrets, &message)
        });
        check_cases(32, batch(), |messages| {
            check_batch(&server, &secrets, &messages)
        });
    }
}

/// Any request a client could send.
#[derive(Debug)]
struct AnyRequest {
    method: Method,
    path: &'static str,
    query: Option<String>,
    mac_header: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl AnyRequest {
    fn build(&self) -> Request<Body> {
        let uri = match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.to_owned(),
        };
        let uri: Uri = uri
            .parse()
            .unwrap_or_else(|error| panic!("{uri:?}: {error}"));
        let mut request = Request::builder().method(self.method.clone()).uri(uri);
        for (name, value) in [
            (MAC_HEADER, &self.mac_header),
            ("authorization", &self.authorization),
        ] {
            if let Some(value) = value {
                request = request.header(name, HeaderValue::from_bytes(value).unwrap());
            }
        }
        request.body(Body::from(self.body.clone())).unwrap()
    }
}

fn any_request() -> impl Strategy<Value = AnyRequest> {
    // Mostly requests the API serves, so that most cases reach a handler.
    let method = prop_oneof![
        6 => Just(Method::POST),
        1 => select(vec![
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::PATCH,
        ]),
    ];
    let path = prop_oneof![
        6 => select(vec!["/hmac", "/hmac/batch", "/verify"]),
        1 => select(vec![
            "/healthz",
            "/readyz",
            "/metrics",
            "/",
            "/hmac/",
            "/HMAC",
            "/hmac/batch/x",
            "/%00",
        ]),
    ];
    (
        method,
        path,
        prop::option::of(query()),
        prop::option::weighted(0.7, mac_header()),
        prop::option::weighted(0.8, authorization()),
        body(),
    )
        .prop_map(
            |(method, path, query, mac_header, authorization, body)| AnyRequest {
                method,
                path,
                query,
                mac_header,
                authorization,
                body,
            },
        )
}

/// Queries built from the pieces that matter (`encoding`, its values, `=`, `&`,
/// percent escapes, broken or not) and any other character a request line can
/// carry there (the `http` crate's rule: printable ASCII but `"#<>`, and UTF-8).
fn query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "encoding",
            "encoding=",
            "=",
            "&",
            "hex",
            "base64",
            "raw",
            "HEX",
            "%",
            "+",
            "[]"
        ])
        .prop_map(str::to_owned),
        any::<u8>().prop_map(|byte| format!("%{byte:02x}")),
        prop::char::range('!', '~')
            .prop_filter("allowed in a query", |c| !"\"#<>".contains(*c))
            .prop_map(String::from),
        prop::char::range('\u{80}', char::MAX).prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Anything a header value can hold, and MACs in every form, some damaged.
fn mac_header() -> impl Strategy<Value = Vec<u8>> {
    let mac = prop::array::uniform32(any::<u8>());
    prop_oneof![
        header_bytes(),
        mac.prop_map(|mac| hex::encode(mac).into_bytes()),
        mac.prop_map(|mac| BASE64.encode(mac).into_bytes()),
        (mac, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mac, at, byte)| {
            let mut text = BASE64.encode(mac).into_bytes();
            let at = at.index(text.len());
            text[at] = byte;
            text.retain(|&byte| header_byte(byte));
            text
        }),
    ]
}

fn authorization() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(format!("Bearer {TOKEN}").into_bytes()),
        1 => Just(format!("bearer   {TOKEN}  ").into_bytes()),
        1 => header_bytes().prop_map(|bytes| [b"Bearer ".as_slice(), &bytes].concat()),
        1 => header_bytes(),
    ]
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..100).prop_map(|mut bytes| {
        bytes.retain(|&byte| header_byte(byte));
        bytes
    })
}

/// What an HTTP header value may contain.
fn header_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= 0x20 && byte != 0x7f)
}

/// Arbitrary bytes up to twice the body limit, and batches framed well, cut short
/// or with bytes left over.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let framed = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)
        .prop_map(|messages| encode_frames(&messages));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2 * MAX_BODY),
        framed.clone(),
        (framed.clone(), any::<prop::sample::Index>())
            .prop_map(|(body, cut)| body[..cut.index(body.len() + 1)].to_vec()),
        (framed, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(body, extra)| [body, extra].concat()),
    ]
}

fn check_any_request(
    server: &Server,
    secrets: &Secrets,
    request: &AnyRequest,
) -> Result<(), TestCaseError> {
    let (status, body) = server.call(request.build());
    prop_assert!(!status.is_server_error(), "{status} for {request:?}");
    if status.is_client_error() && request.method != Method::HEAD {
        let error: serde_json::Value = serde_json::from_slice(&body).map_err(|error| {
            TestCaseError::fail(format!("{status}: not JSON ({error}): {body:?}"))
        })?;
        prop_assert!(error["error"].is_string(), "{status}: {error}");
        if request.body.len() >= 16 {
            prop_assert!(
                !body
                    .windows(request.body.len())
                    .any(|window| window == request.body),
                "{status} echoes the message"
            );
        }
    }
    if status == StatusCode::OK && request.method == Method::POST {
        match request.path {
            "/hmac" => {
                let mac = secrets.mac(&request.body);
                let forms = [
                    mac.to_vec(),
                    hex::encode(mac).into_bytes(),
                    BASE64.encode(mac).into_bytes(),
                ];
                prop_assert!(
                    forms.contains(&body.to_vec()),
                    "a wrong MAC for {request:?}"
                );
            }
            "/hmac/batch" => {
                let frames =
                    parse_frames(&request.body).expect("a batch that got 200 frames correctly");
                let expected: Vec<u8> = frames
                    .into_iter()
                    .flat_map(|frame| secrets.mac(&request.body[frame]))
                    .collect();
                prop_assert_eq!(&body[..], &expected[..], "wrong MACs for {:?}", request);
            }
            _ => {}
        }
    }
    Ok(())
}

/// What anyone may send `PUT /admin/clients`: any body, and minisign's four
/// lines in their shapes (some naming the signer's key, so the signature is
/// checked) over any file.
fn document() -> impl Strategy<Value = Vec<u8>> {
    let key_id = BASE64.decode(SIGNER).unwrap()[2..10].to_vec();
    let signature = (
        select(vec![b"ED".to_vec(), b"Ed".to_vec(), b"XX".to_vec()]),
        prop_oneof![Just(key_id), prop::collection::vec(any::<u8>(), 8)],
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(algorithm, key_id, signature)| [algorithm, key_id, signature].concat());
    let signed = (
        signature,
        "[ -~]{0,40}",
        prop::collection::vec(any::<u8>(), 64),
        prop_oneof![
            body(),
            "(serial=[0-9]{1,3}\n)?([0-9a-f]{64}( [a-z]{1,5})?\n){0,3}".prop_map(String::into_bytes),
        ],
    )
        .prop_map(|(signature, comment, global, file)| {
            let lines = format!(
                "untrusted comment: signature from minisign secret key\n{}\ntrusted comment: {comment}\n{}\n",
                BASE64.encode(signature),
                BASE64.encode(global)
            );
            [lines.into_bytes(), file].concat()
        });
    prop_oneof![body(), signed]
}

/// No document changes the clients, panics or gets a 5xx; each refusal is
/// a JSON error that does not echo it.
#[test]
fn no_document_without_the_signers_signature_changes_anything() {
    let server = Server::with_signer(&MODE16);
    let state_dir = server.state_dir.as_ref().unwrap().path().to_owned();
    check_cases(512, document(), |document| {
        let (status, body) = server.call(
            Request::put("/admin/clients")
                .body(Body::from(document.clone()))
                .unwrap(),
        );
        prop_assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::FORBIDDEN,
                StatusCode::PAYLOAD_TOO_LARGE
            ]
            .contains(&status),
            "{status}: {body:?}"
        );
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert!(error["error"].is_string(), "{error}");
        if document.len() >= 16 {
            prop_assert!(!body.windows(document.len()).any(|w| w == &document[..]));
        }
        prop_assert_eq!(fs::read_dir(&state_dir).unwrap().count(), 0);
        let (status, ready) = server.call(Request::get("/readyz").body(Body::empty()).unwrap());
        prop_assert_eq!(status, StatusCode::OK);
        let ready: serde_json::Value = serde_json::from_slice(&ready).unwrap();
        prop_assert_eq!(&ready["clients_serial"], &serde_json::json!(0));
        Ok(())
    });
}

#[test]
fn no_request_panics_or_gets_a_5xx_from_an_open_server() {
    let server = Server::open(&MODE16);
    check_cases(1024, any_request(), |request| {
        check_any_request(&server, &MODE16, &request)
    });
}

/// Tokens and a rate limit put 401 and 429 in the mix.
#[test]
fn no_request_panics_or_gets_a_5xx_from_a_guarded_server() {
    let server = Server::guarded(&MODE16);
    check_cases(1024, any_request(), |request| {
        check_any_request(&server, &MODE16, &request)
    });
}
