//! Who may call the server: the clients file (CRYPTOSERVER_TOKENS_FILE, alias
//! CRYPTOSERVER_CLIENTS_FILE), one line per bearer token, `DIGEST [NAME [OPTION...]]`.
//!
//! - `DIGEST`: the token's SHA-256 in hex; the file never holds a token in clear.
//! - `NAME`: `[a-z0-9][a-z0-9._-]{0,62}`; lines may share a name (a client's old
//!   and new token while it rotates), with identical options.
//! - Options: `namespace=N` (same syntax as names), `routes=` a comma list of
//!   `hmac`, `batch`, `verify`, `rate=RATE[:BURST]`.
//!
//! A line with a digest alone is an unnamed client with no option. `#` starts a
//! comment line; blank lines are ignored. [`LiveClients`] holds the set in
//! force, which a new reading of the file replaces whole.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::access::TokenDigest;
use crate::limits::{ClientId, RateLimit, RateLimiter};
use crate::metrics::ClientCounters;

/// Longest name or namespace, in bytes.
const MAX_NAME_LEN: usize = 63;
/// Hex digits of the digest that label an unnamed client's metrics.
const DIGEST_LABEL_LEN: usize = 8;

/// A route a client may be allowed or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Hmac,
    Batch,
    Verify,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Hmac, Route::Batch, Route::Verify];

    /// As `routes=` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Route::Hmac => "hmac",
            Route::Batch => "batch",
            Route::Verify => "verify",
        }
    }

    /// The route a request path is served by, if it is one a client may be
    /// refused. Vault's transit paths are `hmac` and `verify` (a `batch_input`
    /// to `hmac` is also `batch`, which only its body tells).
    pub fn of_path(path: &str) -> Option<Route> {
        match path {
            "/hmac" => Some(Route::Hmac),
            "/hmac/batch" => Some(Route::Batch),
            "/verify" => Some(Route::Verify),
            _ if path.starts_with("/v1/transit/hmac/") => Some(Route::Hmac),
            _ if path.starts_with("/v1/transit/verify/") => Some(Route::Verify),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The routes a client may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes(u8);

impl Routes {
    pub const ALL: Routes = Routes(0b111);

    pub fn allows(self, route: Route) -> bool {
        self.0 & route.bit() != 0
    }

    /// The allowed routes' names, in [`Route::ALL`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Route::ALL
            .into_iter()
            .filter(move |route| self.allows(*route))
            .map(Route::name)
    }

    /// A non-empty comma list of route names.
    fn parse(text: &str) -> Option<Routes> {
        text.split(',').try_fold(Routes(0), |routes, name| {
            let route = Route::ALL.into_iter().find(|route| route.name() == name)?;
            Some(Routes(routes.0 | route.bit()))
        })
    }
}

/// One client: every line of its name, or one unnamed line.
#[derive(Debug)]
pub struct Client {
    /// Its name in the file, else the first 8 hex digits of its digest: the
    /// only values its metrics labels and log lines take.
    pub label: String,
    pub named: bool,
    pub namespace: Option<String>,
    pub routes: Routes,
    /// Its own rate limit, instead of CRYPTOSERVER_RATE_LIMIT.
    pub rate: Option<RateLimit>,
    /// The bucket of its own rate limit, shared by its tokens.
    pub limiter: Option<Arc<RateLimiter>>,
    /// What its rate limit and its batches' share of key reads count by: its
    /// first token, so that the tokens of a client that rotates share them.
    pub id: ClientId,
    pub counters: Arc<ClientCounters>,
}

/// Why the clients file cannot be used; the server does not start then.
#[derive(Debug)]
pub enum ClientsError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    /// What is wrong with line `line` (numbered from 1).
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
    /// No digest at all: nobody could call the server.
    Empty {
        path: PathBuf,
    },
}

/// What is wrong with one line of the clients file. No variant holds the
/// line's first field: a token pasted there by mistake must not reach a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    NotADigest,
    BadName(String),
    /// Not `key=value`, or a key other than namespace, routes and rate.
    UnknownOption(String),
    BadValue {
        option: &'static str,
        value: String,
    },
    DuplicateOption(&'static str),
    /// A digest an earlier line gave.
    DuplicateDigest {
        first_line: usize,
    },
    /// A name whose lines disagree on their options.
    DifferentOptions {
        name: String,
        first_line: usize,
    },
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::NotADigest => f.write_str(
                "not a SHA-256 hex digest (64 hex digits); the file holds token digests, \
                 never tokens: `cargo xtask gen-token` prints both",
            ),
            LineProblem::BadName(name) => write!(
                f,
                "bad client name '{name}': names are 1 to 63 of a-z, 0-9, '.', '_', '-', \
                 starting with a letter or digit"
            ),
            LineProblem::UnknownOption(option) => write!(
                f,
                "unknown option '{option}': options are namespace=NAME, routes=hmac,batch,verify \
                 and rate=RATE[:BURST]"
            ),
            LineProblem::BadValue { option, value } => {
                let expected = match *option {
                    "namespace" => "a name: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit".to_owned(),
                    "routes" => "a comma list of hmac, batch and verify".to_owned(),
                    _ => format!(
                        "RATE or RATE:BURST with RATE from {} to {} requests per second and BURST \
                         from {} to {}",
                        RateLimit::RATES.start(),
                        RateLimit::RATES.end(),
                        RateLimit::BURSTS.start(),
                        RateLimit::BURSTS.end()
                    ),
                };
                write!(
                    f,
                    "bad value '{value}' of option {option}: expected {expected}"
                )
            }
            LineProblem::DuplicateOption(option) => write!(f, "option {option} given twice"),
            LineProblem::DuplicateDigest { first_line } => {
                write!(
                    f,
                    "the same digest as line {first_line}: one line per token"
                )
            }
            LineProblem::DifferentOptions { name, first_line } => write!(
                f,
                "client '{name}' has other options on line {first_line}: the lines of one client \
                 (its tokens while it rotates) must have identical options"
            ),
        }
    }
}

impl fmt::Display for ClientsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientsError::Read { path, source } => write!(
                f,
                "{}: cannot read the clients file (CRYPTOSERVER_TOKENS_FILE): {source}",
                path.display()
            ),
            ClientsError::Line {
                path,
                line,
                problem,
            } => write!(f, "{}:{line}: {problem}", path.display()),
            ClientsError::Empty { path } => write!(
                f,
                "{}: holds no token digest, so nobody could call the server; add one with `cargo xtask gen-token`",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClientsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientsError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The clients allowed to call, found by the digest of the token presented.
#[derive(Debug)]
pub struct Clients {
    /// Every allowed digest and the index of its client.
    digests: Vec<(TokenDigest, u32)>,
    clients: Vec<Arc<Client>>,
}

impl Clients {
    /// Reads and checks the whole file.
    pub fn load(path: &Path) -> Result<Clients, ClientsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Clients::parse(&text).map_err(|(line, problem)| match problem {
            Some(problem) => ClientsError::Line {
                path: path.to_owned(),
                line,
                problem,
            },
            None => ClientsError::Empty {
                path: path.to_owned(),
            },
        })
    }

    /// The clients of a file's text, or the line (numbered from 1) and what
    /// is wrong with it; `None` for a file without any digest.
    pub fn parse(text: &str) -> Result<Clients, (usize, Option<LineProblem>)> {
        let mut digests: Vec<(TokenDigest, u32)> = Vec::new();
        let mut clients: Vec<Arc<Client>> = Vec::new();
        let mut digest_lines: HashMap<TokenDigest, usize> = HashMap::new();
        // A name's client index and the line that first gave it.
        let mut names: HashMap<String, (u32, usize)> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |problem| (number, Some(problem));
            let mut fields = line.split_ascii_whitespace();
            let digest = fields
                .next()
                .and_then(|field| hex::decode(field).ok())
                .and_then(|bytes| TokenDigest::try_from(bytes).ok())
                .ok_or(fail(LineProblem::NotADigest))?;
            if let Some(&first_line) = digest_lines.get(&digest) {
                return Err(fail(LineProblem::DuplicateDigest { first_line }));
            }
            digest_lines.insert(digest, number);
            let client = match fields.next() {
                None => Client {
                    label: hex::encode(&digest[..DIGEST_LABEL_LEN / 2]),
                    named: false,
                    namespace: None,
                    routes: Routes::ALL,
                    rate: None,
                    limiter: None,
                    id: ClientId::Token(digest),
                    counters: Arc::default(),
                },
                Some(name) => {
                    if !is_name(name) {
                        return Err(fail(LineProblem::BadName(name.to_owned())));
                    }
                    let (namespace, routes, rate) = options(fields).map_err(fail)?;
                    Client {
                        label: name.to_owned(),
                        named: true,
                        namespace,
                        routes,
                        rate,
                        limiter: rate.map(|rate| Arc::new(RateLimiter::new(rate))),
                        id: ClientId::Token(digest),
                        counters: Arc::default(),
                    }
                }
            };
            let index = match names.get(&client.label).filter(|_| client.named) {
                Some(&(index, first_line)) => {
                    let first = &clients[index as usize];
                    if (&first.namespace, first.routes, first.rate)
                        != (&client.namespace, client.routes, client.rate)
                    {
                        return Err(fail(LineProblem::DifferentOptions {
                            name: client.label,
                            first_line,
                        }));
                    }
                    index
                }
                None => {
                    let index = u32::try_from(clients.len()).expect("fewer than 2^32 lines");
                    if client.named {
                        names.insert(client.label.clone(), (index, number));
                    }
                    clients.push(Arc::new(client));
                    index
                }
            };
            digests.push((digest, index));
        }
        if digests.is_empty() {
            return Err((0, None));
        }
        Ok(Clients { digests, clients })
    }

    /// The client whose token has this SHA-256. Every allowed digest is
    /// compared, in constant time, whatever matches.
    pub fn check_digest(&self, presented: TokenDigest) -> Option<&Arc<Client>> {
        let mut matched = subtle::Choice::from(0);
        let mut found = 0u32;
        for (allowed, index) in &self.digests {
            let equal = allowed.ct_eq(&presented);
            found.conditional_assign(index, equal);
            matched |= equal;
        }
        bool::from(matched).then(|| &self.clients[found as usize])
    }

    /// Every client, in the order of its first line.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.iter()
    }

    /// The namespaces of the clients, each once, in the order of their first client.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut namespaces: Vec<&str> = Vec::new();
        for namespace in self.clients.iter().filter_map(|c| c.namespace.as_deref()) {
            if !namespaces.contains(&namespace) {
                namespaces.push(namespace);
            }
        }
        namespaces
    }
}

/// The clients in force: the file's, replaced whole when it is read again.
#[derive(Debug)]
pub struct LiveClients {
    path: PathBuf,
    current: RwLock<Arc<Clients>>,
}

impl LiveClients {
    pub fn load(path: &Path) -> Result<LiveClients, ClientsError> {
        Ok(LiveClients {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Clients::load(path)?)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set in force now; a request keeps the one it started with.
    pub fn current(&self) -> Arc<Clients> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `new` in force for every request from now on. A client of both
    /// sets (by label) keeps its counters, so its metrics never go back, and,
    /// at an unchanged rate, its bucket, so a reload never refills it.
    pub fn replace(&self, mut new: Clients) {
        let old = self.current();
        for client in &mut new.clients {
            let client = Arc::get_mut(client).expect("a set not yet in force is not shared");
            if let Some(previous) = old.clients.iter().find(|c| c.label == client.label) {
                client.counters = Arc::clone(&previous.counters);
                if previous.rate == client.rate {
                    client.limiter.clone_from(&previous.limiter);
                }
            }
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
    }
}

/// `[a-z0-9][a-z0-9._-]{0,62}`: client names and namespaces.
pub fn is_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && text.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

type Options = (Option<String>, Routes, Option<RateLimit>);

fn options<'a>(fields: impl Iterator<Item = &'a str>) -> Result<Options, LineProblem> {
    let (mut namespace, mut routes, mut rate) = (None, None, None);
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(LineProblem::UnknownOption(field.to_owned()));
        };
        let bad = |option| LineProblem::BadValue {
            option,
            value: value.to_owned(),
        };
        let option = match key {
            "namespace" => "namespace",
            "routes" => "routes",
            "rate" => "rate",
            _ => return Err(LineProblem::UnknownOption(field.to_owned())),
        };
        let taken = match option {
            "namespace" => namespace
                .replace(
                    is_name(value)
                        .then(|| value.to_owned())
                        .ok_or(bad(option))?,
                )
                .is_some(),
            "routes" => routes
                .replace(Routes::parse(value).ok_or(bad(option))?)
                .is_some(),
            _ => rate
                .replace(RateLimit::parse(value).ok_or(bad(option))?)
                .is_some(),
        };
        if taken {
            return Err(LineProblem::DuplicateOption(option));
        }
    }
    Ok((namespace, routes.unwrap_or(Routes::ALL), rate))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::access::presented_digest;

    fn digest_of(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn check<'a>(clients: &'a Clients, authorization: Option<&[u8]>) -> Option<&'a Arc<Client>> {
        clients.check_digest(presented_digest(authorization?)?)
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    fn problem(text: &str) -> (usize, LineProblem) {
        match Clients::parse(text) {
            Err((line, Some(problem))) => (line, problem),
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn a_tokens_file_of_digests_alone_keeps_working() {
        let digest = digest_of("s3cret-token");
        let clients = Clients::parse(&format!("# ops team\n\n{digest}\n")).unwrap();
        let client = check(&clients, Some(&bearer("s3cret-token"))).unwrap();
        assert_eq!(client.label, digest[..8]);
        assert!(!client.named);
        assert_eq!(
            (&client.namespace, client.routes, client.rate),
            (&None, Routes::ALL, None)
        );
        assert!(check(&clients, Some(b"bearer s3cret-token")).is_some());
        assert!(check(&clients, Some(&bearer("s3cret-tokem"))).is_none());
        assert!(check(&clients, Some(b"Basic czNjcmV0LXRva2Vu")).is_none());
        assert!(check(&clients, Some(b"Bearer ")).is_none());
        assert!(check(&clients, None).is_none());
        assert!(clients.namespaces().is_empty());
    }

    #[test]
    fn named_clients_with_options() {
        let text = format!(
            "{} billing namespace=billing routes=hmac,verify rate=10:20\n\
             {} auth namespace=auth\n\
             {} billing routes=verify,hmac namespace=billing rate=10:20\n",
            digest_of("old"),
            digest_of("a"),
            digest_of("new"),
        );
        let clients = Clients::parse(&text).unwrap();
        let old = check(&clients, Some(&bearer("old"))).unwrap();
        let new = check(&clients, Some(&bearer("new"))).unwrap();
        assert!(Arc::ptr_eq(old, new), "a rotating client is one client");
        assert_eq!(old.label, "billing");
        assert_eq!(old.namespace.as_deref(), Some("billing"));
        assert_eq!(old.routes.names().collect::<Vec<_>>(), ["hmac", "verify"]);
        assert!(!old.routes.allows(Route::Batch));
        assert_eq!(
            old.rate,
            Some(RateLimit {
                per_second: 10.0,
                burst: 20.0
            })
        );
        let auth = check(&clients, Some(&bearer("a"))).unwrap();
        assert_eq!((auth.routes, auth.rate), (Routes::ALL, None));
        assert_eq!(clients.namespaces(), ["billing", "auth"]);
        assert_eq!(clients.iter().count(), 2);
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line_and_option() {
        let d = digest_of("a");
        let e = digest_of("b");
        let cases = [
            ("# first\nabc\n".to_string(), 2, LineProblem::NotADigest),
            (
                format!("{d} Billing"),
                1,
                LineProblem::BadName("Billing".into()),
            ),
            (
                format!("{d} app colour=red"),
                1,
                LineProblem::UnknownOption("colour=red".into()),
            ),
            (
                format!("{d} app namespace"),
                1,
                LineProblem::UnknownOption("namespace".into()),
            ),
            (
                format!("{d} app routes=hmac,admin"),
                1,
                LineProblem::BadValue {
                    option: "routes",
                    value: "hmac,admin".into(),
                },
            ),
            (
                format!("{d} app routes="),
                1,
                LineProblem::BadValue {
                    option: "routes",
                    value: String::new(),
                },
            ),
            (
                format!("{d} app rate=0"),
                1,
                LineProblem::BadValue {
                    option: "rate",
                    value: "0".into(),
                },
            ),
            (
                format!("{d} app namespace=-x"),
                1,
                LineProblem::BadValue {
                    option: "namespace",
                    value: "-x".into(),
                },
            ),
            (
                format!("{d} app rate=1 rate=2"),
                1,
                LineProblem::DuplicateOption("rate"),
            ),
            (
                format!("{d}\n\n{d} app"),
                3,
                LineProblem::DuplicateDigest { first_line: 1 },
            ),
            (
                format!("{d} app routes=hmac\n{e} app"),
                2,
                LineProblem::DifferentOptions {
                    name: "app".into(),
                    first_line: 1,
                },
            ),
        ];
        for (text, line, expected) in cases {
            assert_eq!(problem(&text), (line, expected), "{text}");
        }
        assert!(matches!(Clients::parse("# nothing\n"), Err((_, None))));
    }

    #[test]
    fn a_replaced_set_keeps_the_counters_and_buckets_of_the_clients_it_shares() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let line = |token: &str, rest: &str| format!("{} {rest}\n", digest_of(token));
        std::fs::write(file.path(), line("a", "app rate=1:1") + &line("b", "gone")).unwrap();
        let live = LiveClients::load(file.path()).unwrap();
        let app = Arc::clone(check(&live.current(), Some(&bearer("a"))).unwrap());
        app.counters
            .macs
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        app.limiter.as_ref().unwrap().take(app.id, 1).unwrap();
        live.replace(Clients::parse(&(line("a2", "app rate=1:1") + &line("c", "new"))).unwrap());
        let current = live.current();
        assert!(check(&current, Some(&bearer("b"))).is_none());
        assert!(check(&current, Some(&bearer("a"))).is_none());
        let renewed = check(&current, Some(&bearer("a2"))).unwrap();
        assert!(Arc::ptr_eq(&renewed.counters, &app.counters));
        assert!(renewed.limiter.as_ref().unwrap().take(app.id, 1).is_err());
        live.replace(Clients::parse(&line("a2", "app rate=2:2")).unwrap());
        let faster = Arc::clone(check(&live.current(), Some(&bearer("a2"))).unwrap());
        assert!(Arc::ptr_eq(&faster.counters, &app.counters));
        assert!(faster.limiter.as_ref().unwrap().take(app.id, 1).is_ok());
    }

    #[test]
    fn errors_name_the_file_line_and_option_but_never_the_first_field() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "# x\nmy-secret-token app\n").unwrap();
        let error = Clients::load(file.path()).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}:2: ", file.path().display())),
            "{error}"
        );
        assert!(!error.contains("my-secret-token"), "{error}");
        std::fs::write(file.path(), format!("{} app rate=x\n", digest_of("a"))).unwrap();
        let error = Clients::load(file.path()).unwrap_err().to_string();
        assert!(
            error.contains(":1: bad value 'x' of option rate"),
            "{error}"
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,62}"
    }

    proptest! {
        #[test]
        fn names_follow_their_pattern(text in "[ -~]{0,70}") {
            let expected = text.len() <= 63
                && text.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            prop_assert_eq!(is_name(&text), expected);
        }

        #[test]
        fn every_valid_line_parses_back(
            name in name(),
            namespace in proptest::option::of(name()),
            routes in 1u8..8,
            rate in proptest::option::of((1u32..1000, 1u32..1000)),
            reversed: bool,
        ) {
            let mut options = Vec::new();
            if let Some(namespace) = &namespace {
                options.push(format!("namespace={namespace}"));
            }
            let routes = Routes(routes);
            options.push(format!("routes={}", routes.names().collect::<Vec<_>>().join(",")));
            if let Some((per_second, burst)) = rate {
                options.push(format!("rate={per_second}:{burst}"));
            }
            if reversed {
                options.reverse();
            }
            let text = format!("{} {name} {}\n", digest_of("t"), options.join(" "));
            let clients = Clients::parse(&text).unwrap();
            let client = check(&clients, Some(&bearer("t"))).unwrap();
            prop_assert_eq!(&client.label, &name);
            prop_assert_eq!(&client.namespace, &namespace);
            prop_assert_eq!(client.routes, routes);
            prop_assert_eq!(
                client.rate,
                rate.map(|(per_second, burst)| RateLimit {
                    per_second: per_second.into(),
                    burst: burst.into(),
                })
            );
        }

        #[test]
        fn any_text_parses_or_names_a_line_of_it(text in "[ -~\n]{0,300}") {
            match Clients::parse(&text) {
                Ok(clients) => prop_assert!(clients.iter().count() > 0),
                Err((line, Some(_))) => prop_assert!((1..=text.lines().count()).contains(&line)),
                Err((_, None)) => {
                    let no_digest = text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#'));
                    prop_assert!(no_digest);
                }
            }
        }

        #[test]
        fn only_the_allowed_tokens_pass(tokens in proptest::collection::hash_set("[a-z]{1,8}", 1..6), other in "[A-Z]{1,8}") {
            let text: String = tokens.iter().map(|token| digest_of(token) + "\n").collect();
            let clients = Clients::parse(&text).unwrap();
            for token in &tokens {
                let client = check(&clients, Some(&bearer(token))).unwrap();
                prop_assert_eq!(&client.label, &digest_of(token)[..8]);
            }
            prop_assert!(check(&clients, Some(&bearer(&other))).is_none());
        }
    }
}
