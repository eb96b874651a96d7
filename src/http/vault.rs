//! Vault's transit HMAC API, so that Vault and OpenBao clients (hvac, the
//! `vault`/`bao` CLI, spring-vault, vaultrs) switch by changing an address and
//! a token: `POST`/`PUT /v1/transit/hmac/:name[/:algorithm]`,
//! `/v1/transit/verify/:name[/:algorithm]` and `GET /v1/sys/health`, in Vault's
//! JSON, base64, `vault:v1:` prefix, batches and `{"errors": [...]}` shape.
//!
//! The key name is the caller's namespace; the MACs are exactly those `/hmac`
//! gives that client, through the same [`KeyStore`](crate::keystore::KeyStore)
//! calls. Status codes and messages follow what OpenBao 2.7 answers for the
//! same mistakes (docs/vault.md lists where cryptoserver differs).

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::body::read_message;
use super::error::{routes_under, ApiError};
use super::guard::{admit, Dialect};
use super::handlers::{batch_macs, mac_of, Caller};
use super::state::AppState;
use crate::access::{presented_digest, token_digest, TokenDigest};
use crate::batch::MAX_FRAMES;
use crate::clients::{Client, Route};
use crate::limits::ClientId;
use crate::mac::{macs_equal, Mac, BASE64};

/// Vault's token header; `Authorization: Bearer` works as well.
const TOKEN_HEADER: &str = "x-vault-token";
/// The only algorithm served: the MACs are HMAC-SHA256.
const ALGORITHM: &str = "sha2-256";
/// Every MAC is of key version 1: the keys never rotate.
const PREFIX: &str = "vault:v1:";
const LATEST_VERSION: i64 = 1;

/// Base64 as Go's `encoding/base64.StdEncoding` reads it, which Vault uses:
/// padding required, stray bits in the last symbol allowed (line breaks are
/// dropped before, as Go does).
const GO_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
);

/// How the Vault routes present their token and word their refusals.
pub(super) struct Vault;

impl Dialect for Vault {
    fn presented(request: &Request) -> Option<TokenDigest> {
        let headers = request.headers();
        match headers.get(TOKEN_HEADER) {
            Some(token) => token_digest(token.as_bytes()),
            None => presented_digest(headers.get(AUTHORIZATION)?.as_bytes()),
        }
    }

    fn refuse(error: ApiError) -> Response {
        VaultError::from(error).into_response()
    }
}

/// The guard of the Vault routes: [`admit`] with Vault's token and errors.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    admit::<Vault>(state, request, next).await
}

/// A failed Vault request: Vault's status and `{"errors": [message]}`.
#[derive(Debug)]
pub(super) enum VaultError {
    /// A failure every route shares (limits, keys, routing), in Vault's shape;
    /// a missing or unknown token is Vault's 403.
    Api(ApiError),
    /// 400: what is wrong with the request, never its data.
    BadRequest(String),
    /// 403: the key name is not the caller's to use.
    Denied(&'static str),
}

impl From<ApiError> for VaultError {
    fn from(error: ApiError) -> Self {
        VaultError::Api(error)
    }
}

impl VaultError {
    fn bad(message: impl fmt::Display) -> VaultError {
        VaultError::BadRequest(message.to_string())
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let (status, message, header) = match self {
            VaultError::Api(ApiError::Unauthorized) => (
                StatusCode::FORBIDDEN,
                "permission denied: missing or unknown token; send X-Vault-Token: <token> \
                 or Authorization: Bearer <token>"
                    .to_owned(),
                None,
            ),
            VaultError::Api(ApiError::NotFound) => (
                StatusCode::NOT_FOUND,
                format!(
                    "unsupported path: cryptoserver serves Vault's {}",
                    routes_under("/v1/")
                ),
                None,
            ),
            VaultError::Api(ApiError::MethodNotAllowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported operation: the transit routes take POST or PUT, /v1/sys/health GET"
                    .to_owned(),
                None,
            ),
            VaultError::Api(error) => (error.status(), error.message(), error.header()),
            VaultError::BadRequest(message) => (StatusCode::BAD_REQUEST, message, None),
            VaultError::Denied(why) => (
                StatusCode::FORBIDDEN,
                format!("permission denied: {why}"),
                None,
            ),
        };
        let mut response =
            (status, json(&serde_json::json!({ "errors": [message] }))).into_response();
        if let Some((name, value)) = header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

fn json(value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("Vault's responses serialize");
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

/// The `:name` and optional `:algorithm` of a transit path.
#[derive(Deserialize)]
pub(super) struct KeyPath {
    name: String,
    algorithm: Option<String>,
}

/// A transit request body; Vault's fields of both `hmac` and `verify`. Unknown
/// fields are ignored, as Vault ignores them. Every field is optional and
/// borrows from the body where it can.
#[derive(Deserialize, Default)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct TransitRequest<'a> {
    /// Absent is not null: Vault MACs a null input as the empty message.
    #[serde(deserialize_with = "present")]
    input: Option<Option<Text<'a>>>,
    hmac: Option<Text<'a>>,
    signature: Option<Text<'a>>,
    algorithm: Option<Text<'a>>,
    key_version: Option<Text<'a>>,
    batch_input: Option<Vec<BatchItem<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct BatchItem<'a> {
    input: Option<Text<'a>>,
    hmac: Option<Text<'a>>,
    signature: Option<Text<'a>>,
    reference: Option<Text<'a>>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A field Vault reads as a string: a JSON string, or a number or boolean as
/// its text (Vault's weak typing; `"input": 5` is bad base64, not bad JSON).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_string())))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_string())))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_string())))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_string())))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// Vault's answer: the data in its usual envelope.
#[derive(Serialize)]
struct Envelope<D> {
    request_id: String,
    lease_id: &'static str,
    renewable: bool,
    lease_duration: u64,
    data: D,
    wrap_info: Option<()>,
    warnings: Option<()>,
    auth: Option<()>,
}

fn answer<D: Serialize>(data: D) -> Response {
    json(&Envelope {
        request_id: request_id(),
        lease_id: "",
        renewable: false,
        lease_duration: 0,
        data,
        wrap_info: None,
        warnings: None,
        auth: None,
    })
}

/// A random UUID, as Vault's `request_id`; a failing random source leaves it
/// nil rather than failing the request.
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        return uuid::Uuid::nil().to_string();
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[derive(Serialize)]
struct MacData {
    hmac: String,
}

#[derive(Serialize)]
struct ValidData {
    valid: bool,
}

#[derive(Serialize)]
struct BatchData<'a> {
    batch_results: Vec<ItemResult<'a>>,
}

/// One `batch_results` entry, with Vault's keys: `hmac` or `valid` (omitted
/// when false, as Vault does) or `error`, and the item's `reference`.
#[derive(Serialize, Default)]
struct ItemResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hmac: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    reference: Cow<'a, str>,
}

/// What the handlers of both transit routes work with: the state and who calls.
pub(super) struct Transit {
    state: Arc<AppState>,
    caller: Caller,
    client: Option<Extension<ClientId>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
}

impl FromRequestParts<Arc<AppState>> for Transit {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Transit, Infallible> {
        let extensions = &parts.extensions;
        Ok(Transit {
            state: Arc::clone(state),
            caller: extensions.get::<Arc<Client>>().cloned().map(Extension),
            client: extensions.get::<ClientId>().copied().map(Extension),
            peer: extensions
                .get::<ConnectInfo<SocketAddr>>()
                .copied()
                .map(Extension),
        })
    }
}

impl Transit {
    /// Refuses a key name other than the caller's namespace, before the body is read.
    fn check_name(&self, name: &str) -> Result<(), VaultError> {
        if self.state.clients.is_none() {
            return Err(VaultError::Denied(
                "the Vault routes need named clients: the key name is the client's namespace, and \
                 this server has no clients file (CRYPTOSERVER_TOKENS_FILE) to give one",
            ));
        }
        let namespace = self
            .caller
            .as_ref()
            .and_then(|Extension(client)| client.namespace.as_deref());
        match namespace {
            None => Err(VaultError::Denied(
                "this client has no namespace: give its line in the clients file namespace=NAME, \
                 and use NAME as the key name",
            )),
            Some(namespace) if namespace != name => Err(VaultError::Denied(
                "the key name in the path is not this client's namespace (GET /whoami tells it)",
            )),
            Some(_) => Ok(()),
        }
    }

    fn allows(&self, route: Route) -> Result<(), VaultError> {
        match &self.caller {
            Some(Extension(client)) if !client.routes.allows(route) => {
                Err(ApiError::RouteNotAllowed(route).into())
            }
            _ => Ok(()),
        }
    }

    /// The key path and the body, once the key name is the caller's to use.
    async fn read(
        &self,
        key: Result<Path<KeyPath>, PathRejection>,
        body: Body,
    ) -> Result<(KeyPath, Bytes), VaultError> {
        let Path(key) = key.map_err(|_| {
            VaultError::bad("the key name or algorithm in the path is not valid UTF-8")
        })?;
        self.check_name(&key.name)?;
        Ok((key, read_message(body, &self.state).await?))
    }

    /// The MACs of `messages` (ranges of `buffer`), through the batch path.
    async fn macs(
        &self,
        buffer: Vec<u8>,
        messages: Vec<Range<usize>>,
    ) -> Result<Vec<Mac>, VaultError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let macs = batch_macs(
            &self.state,
            &self.caller,
            (self.client, self.peer),
            buffer.into(),
            messages,
        )
        .await?;
        Ok(macs
            .chunks_exact(size_of::<Mac>())
            .map(|mac| mac.try_into().expect("chunks of a MAC's length"))
            .collect())
    }
}

/// `POST`/`PUT /v1/transit/hmac/:name[/:algorithm]`.
pub(super) async fn hmac(
    transit: Transit,
    key: Result<Path<KeyPath>, PathRejection>,
    body: Body,
) -> Result<Response, VaultError> {
    let (key, body) = transit.read(key, body).await?;
    let request = parse(&body)?;
    check_algorithm(&key, &request)?;
    check_key_version(request.key_version.as_ref())?;
    let Some(items) = request.batch_input else {
        let input = match request.input {
            None => return Err(VaultError::bad("missing input for HMAC")),
            Some(input) => input,
        };
        let message = decode_input(input.as_ref()).map_err(VaultError::BadRequest)?;
        let mac = mac_of(&transit.state, &transit.caller, &message).await?;
        return Ok(answer(MacData {
            hmac: prefixed(&mac),
        }));
    };
    check_batch_size(&items)?;
    transit.allows(Route::Batch)?;
    let checked = Checked::of(&items, |item| match &item.input {
        None => Err("missing input for HMAC".to_owned()),
        Some(input) => Ok((decode_input(Some(input))?, ())),
    });
    checked
        .finish(&transit, |result, mac, ()| {
            result.hmac = Some(prefixed(mac))
        })
        .await
}

/// `POST`/`PUT /v1/transit/verify/:name[/:algorithm]`: compared in constant time.
pub(super) async fn verify(
    transit: Transit,
    key: Result<Path<KeyPath>, PathRejection>,
    body: Body,
) -> Result<Response, VaultError> {
    let (key, body) = transit.read(key, body).await?;
    let request = parse(&body)?;
    check_algorithm(&key, &request)?;
    let Some(items) = request.batch_input else {
        if request.signature.is_some() {
            return Err(signatures_unsupported());
        }
        let Some(presented) = &request.hmac else {
            return Err(VaultError::bad(
                "neither a 'signature' nor an 'hmac' were given to verify: send the MAC as 'hmac'",
            ));
        };
        // Vault checks a missing input as the empty message.
        let message = decode_input(request.input.as_ref().and_then(Option::as_ref))
            .map_err(VaultError::BadRequest)?;
        let presented = parse_prefixed(presented).map_err(VaultError::BadRequest)?;
        let expected = mac_of(&transit.state, &transit.caller, &message).await?;
        return Ok(answer(ValidData {
            valid: same_mac(&expected, &presented),
        }));
    };
    check_batch_size(&items)?;
    if items.iter().any(|item| item.signature.is_some()) {
        return Err(signatures_unsupported());
    }
    if items.iter().any(|item| item.hmac.is_none()) {
        return Err(VaultError::bad(
            "some elements of batch_input are missing 'hmac': give every item its MAC",
        ));
    }
    let checked = Checked::of(&items, |item| match (&item.input, &item.hmac) {
        (Some(input), Some(presented)) => {
            Ok((decode_input(Some(input))?, parse_prefixed(presented)?))
        }
        _ => Err("missing input".to_owned()),
    });
    checked
        .finish(&transit, |result, expected, presented| {
            result.valid = same_mac(expected, &presented)
        })
        .await
}

/// A batch's items once checked: a result for each, and the messages of the
/// good ones in one buffer, each with what its MAC is to meet (`T`).
struct Checked<'a, T> {
    results: Vec<ItemResult<'a>>,
    buffer: Vec<u8>,
    messages: Vec<Range<usize>>,
    presented: Vec<T>,
}

impl<'a, T> Checked<'a, T> {
    /// `check` gives an item's message, or the error its result carries.
    fn of(
        items: &[BatchItem<'a>],
        check: impl Fn(&BatchItem<'a>) -> Result<(Vec<u8>, T), String>,
    ) -> Checked<'a, T> {
        let mut checked = Checked {
            results: Vec::with_capacity(items.len()),
            buffer: Vec::new(),
            messages: Vec::with_capacity(items.len()),
            presented: Vec::with_capacity(items.len()),
        };
        for item in items {
            let mut result = ItemResult {
                reference: reference(item),
                ..ItemResult::default()
            };
            match check(item) {
                Ok((message, presented)) => {
                    let start = checked.buffer.len();
                    checked.buffer.extend_from_slice(&message);
                    checked.messages.push(start..checked.buffer.len());
                    checked.presented.push(presented);
                }
                Err(error) => result.error = Some(error),
            }
            checked.results.push(result);
        }
        checked
    }

    /// Computes the good items' MACs in one batch and lets `fill` write each
    /// into its result.
    async fn finish(
        self,
        transit: &Transit,
        mut fill: impl FnMut(&mut ItemResult<'a>, &Mac, T),
    ) -> Result<Response, VaultError> {
        let Checked {
            mut results,
            buffer,
            messages,
            presented,
        } = self;
        let macs = transit.macs(buffer, messages).await?;
        let good = results.iter_mut().filter(|result| result.error.is_none());
        for ((result, mac), presented) in good.zip(&macs).zip(presented) {
            fill(result, mac, presented);
        }
        Ok(answer(BatchData {
            batch_results: results,
        }))
    }
}

fn reference<'a>(item: &BatchItem<'a>) -> Cow<'a, str> {
    item.reference
        .as_ref()
        .map_or(Cow::Borrowed(""), |Text(text)| text.clone())
}

fn signatures_unsupported() -> VaultError {
    VaultError::bad(
        "key type hmac does not support verification of a 'signature': send the MAC as 'hmac'",
    )
}

/// The body as JSON; an empty body is an empty request, as in Vault. The
/// error names where the JSON went wrong, never what it holds.
fn parse(body: &[u8]) -> Result<TransitRequest<'_>, VaultError> {
    if body.trim_ascii().is_empty() {
        return Ok(TransitRequest::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        let what = match error.classify() {
            serde_json::error::Category::Eof => "the JSON ends early",
            serde_json::error::Category::Syntax => "not valid JSON",
            _ => {
                "a field has the wrong type (expected an object whose input, hmac and reference \
                 are strings and batch_input a list of such objects)"
            }
        };
        VaultError::bad(format!(
            "failed to decode JSON input: {what} at line {} column {}",
            error.line(),
            error.column()
        ))
    })
}

/// `sha2-256` from the path, else the body, else by default; any other is refused.
fn check_algorithm(key: &KeyPath, request: &TransitRequest) -> Result<(), VaultError> {
    let algorithm = key
        .algorithm
        .as_deref()
        .or(request.algorithm.as_ref().map(|Text(text)| &**text))
        .unwrap_or(ALGORITHM);
    if algorithm == ALGORITHM {
        return Ok(());
    }
    Err(VaultError::bad(
        "unsupported algorithm: cryptoserver computes HMAC-SHA256 only; use sha2-256 (the default)",
    ))
}

/// Absent, 0 or 1: every MAC is of version 1, as the keys never change.
fn check_key_version(version: Option<&Text>) -> Result<(), VaultError> {
    let Some(Text(text)) = version else {
        return Ok(());
    };
    match text.parse::<i64>() {
        Err(_) => Err(VaultError::bad(
            "Field validation failed: key_version must be an integer (0 or 1)",
        )),
        Ok(version) if version < 0 => Err(VaultError::bad(
            "key version does not exist (cannot be negative)",
        )),
        Ok(version) if version > LATEST_VERSION => Err(VaultError::bad(
            "key version does not exist; latest key version is 1",
        )),
        Ok(_) => Ok(()),
    }
}

fn check_batch_size<T>(items: &[T]) -> Result<(), VaultError> {
    if items.is_empty() {
        return Err(VaultError::bad("missing batch input to process"));
    }
    if items.len() > MAX_FRAMES {
        return Err(VaultError::bad(format!(
            "batch_input has more than {MAX_FRAMES} items: split it"
        )));
    }
    Ok(())
}

/// An `input`: standard base64, as Vault reads it; absent is the empty message.
fn decode_input(input: Option<&Text>) -> Result<Vec<u8>, String> {
    let Some(Text(text)) = input else {
        return Ok(Vec::new());
    };
    decode_base64(text).map_err(|why| format!("unable to decode input as base64: {why}"))
}

/// Go's standard base64, which skips line breaks. The error gives the offset,
/// never the bytes.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let text: Cow<str> = if text.contains(['\r', '\n']) {
        Cow::Owned(text.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(text)
    };
    GO_BASE64
        .decode(text.as_bytes())
        .map_err(|error| match error {
            base64::DecodeError::InvalidByte(offset, _)
            | base64::DecodeError::InvalidLastSymbol(offset, _) => {
                format!("illegal base64 data at input byte {offset}")
            }
            base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
                "its length or '=' padding is wrong (standard base64 with padding expected)"
                    .to_owned()
            }
        })
}

/// `vault:v1:` and the MAC in base64.
fn prefixed(mac: &Mac) -> String {
    let mut text = String::with_capacity(PREFIX.len() + 44);
    text.push_str(PREFIX);
    BASE64.encode_string(mac, &mut text);
    text
}

/// The MAC bytes of a `vault:vN:BASE64` string, with Vault's answer to each
/// way it can be wrong; a MAC of the wrong length is decoded, and not equal.
fn parse_prefixed(Text(text): &Text) -> Result<Vec<u8>, String> {
    let Some(rest) = text.strip_prefix("vault:").filter(|rest| !rest.is_empty()) else {
        return Err("invalid HMAC to verify: no prefix (expected vault:v1:BASE64)".to_owned());
    };
    let Some((version, mac)) = rest.split_once(':') else {
        return Err("invalid HMAC: wrong number of fields (expected vault:v1:BASE64)".to_owned());
    };
    let Ok(version) = version.strip_prefix('v').unwrap_or(version).parse::<i64>() else {
        return Err(
            "invalid HMAC: version number could not be decoded (expected vault:v1:BASE64)"
                .to_owned(),
        );
    };
    if version > LATEST_VERSION {
        return Err(
            "invalid HMAC: version is too new (cryptoserver's MACs are all of version 1)"
                .to_owned(),
        );
    }
    if version < LATEST_VERSION {
        return Err("cannot verify HMAC: version is too old (disallowed by policy; cryptoserver's MACs are all of version 1)".to_owned());
    }
    decode_base64(mac).map_err(|why| format!("unable to decode verification HMAC as base64: {why}"))
}

/// Constant time for a MAC of the right length; one of another length is
/// never equal, and its length is no secret.
fn same_mac(expected: &Mac, presented: &[u8]) -> bool {
    Mac::try_from(presented).is_ok_and(|presented| macs_equal(expected, &presented))
}

/// The query of `GET /v1/sys/health`: the status codes Vault lets tools choose.
/// cryptoserver is never a standby nor uninitialized, so only these two apply.
#[derive(Deserialize)]
pub(super) struct HealthQuery {
    #[serde(default = "default_active_code")]
    activecode: u16,
    #[serde(default = "default_sealed_code")]
    sealedcode: u16,
}

fn default_active_code() -> u16 {
    200
}

fn default_sealed_code() -> u16 {
    503
}

#[derive(Serialize)]
struct Health {
    initialized: bool,
    sealed: bool,
    standby: bool,
    replication_performance_mode: &'static str,
    replication_dr_mode: &'static str,
    server_time_utc: u64,
    version: &'static str,
    cluster_name: &'static str,
    cluster_id: String,
}

/// `GET /v1/sys/health`, in Vault's shape: ready is active (200 by default),
/// not ready (a key file failing) is sealed (503 by default). The secrets'
/// fingerprint is the cluster id: replicas serving the same secrets share it.
pub(super) async fn health(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HealthQuery>, QueryRejection>,
) -> Result<Response, VaultError> {
    let Ok(Query(query)) = query else {
        return Err(VaultError::bad(
            "bad query: activecode and sealedcode are HTTP status codes (standbyok and the other codes are accepted and never apply)",
        ));
    };
    // A 1xx status cannot end a response.
    let code = |code: u16| {
        StatusCode::from_u16(code)
            .ok()
            .filter(|code| (200..600).contains(&code.as_u16()))
            .ok_or_else(|| {
                VaultError::bad(
                    "activecode and sealedcode must be HTTP status codes from 200 to 599",
                )
            })
    };
    let (active, sealed) = (code(query.activecode)?, code(query.sealedcode)?);
    let ready = state.keys.is_ready().await;
    let health = Health {
        initialized: true,
        sealed: !ready,
        standby: false,
        replication_performance_mode: "disabled",
        replication_dr_mode: "disabled",
        server_time_utc: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        version: env!("CARGO_PKG_VERSION"),
        cluster_name: "cryptoserver",
        cluster_id: state
            .keys
            .fingerprint()
            .map_or_else(String::new, |fingerprint| fingerprint.to_string()),
    };
    let mut response = json(&health);
    *response.status_mut() = if ready { active } else { sealed };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Text<'_> {
        Text(Cow::Borrowed(text))
    }

    #[test]
    fn base64_is_read_as_go_reads_it() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        // Go skips line breaks and allows stray bits in the last symbol.
        assert_eq!(decode_base64("aGVs\r\nbG8=\n").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG9=").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("aGVsbG8").is_err(), "padding is required");
        assert!(decode_base64("aGVsbA===").is_err());
        assert_eq!(
            decode_base64("aGVs_G8=").unwrap_err(),
            "illegal base64 data at input byte 4"
        );
    }

    #[test]
    fn prefixed_macs_get_vaults_answer_for_each_mistake() {
        let mac: Mac = std::array::from_fn(|i| i as u8);
        let written = prefixed(&mac);
        assert!(written.starts_with("vault:v1:"));
        assert_eq!(parse_prefixed(&text(&written)).unwrap(), mac);
        assert_eq!(parse_prefixed(&text("vault:v1:")).unwrap(), b"");
        let bare = written.trim_start_matches("vault:v1:").to_owned();
        for (hmac, error) in [
            (bare.clone(), "no prefix"),
            ("vault:".to_owned(), "no prefix"),
            (format!("foo:v1:{bare}"), "no prefix"),
            ("vault:v1".to_owned(), "wrong number of fields"),
            (format!("vault:vx:{bare}"), "could not be decoded"),
            (format!("vault:v2:{bare}"), "too new"),
            (format!("vault:v0:{bare}"), "too old"),
            ("vault:v1:!!".to_owned(), "verification HMAC as base64"),
        ] {
            let answer = parse_prefixed(&text(&hmac)).unwrap_err();
            assert!(answer.contains(error), "{hmac}: {answer}");
            assert!(!answer.contains(&bare), "the MAC is never echoed");
        }
        assert!(same_mac(&mac, &mac));
        assert!(!same_mac(&mac, &mac[..31]));
        assert!(!same_mac(&mac, &[0; 32]));
    }

    #[test]
    fn key_versions_zero_and_one_only() {
        for ok in [None, Some("0"), Some("1")] {
            assert!(check_key_version(ok.map(text).as_ref()).is_ok(), "{ok:?}");
        }
        for bad in ["2", "-1", "x", "1.5"] {
            assert!(check_key_version(Some(&text(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_errors_say_where_never_what() {
        let secret = "c2VjcmV0LWlucHV0";
        for body in [
            format!(r#"{{"input": "{secret}""#),
            format!(r#"{{"batch_input": "{secret}"}}"#),
            format!(r#"{{"input": ["{secret}"]}}"#),
        ] {
            let Err(VaultError::BadRequest(message)) = parse(body.as_bytes()) else {
                panic!("{body} parsed");
            };
            assert!(
                message.starts_with("failed to decode JSON input"),
                "{message}"
            );
            assert!(message.contains("line 1 column"), "{message}");
            assert!(!message.contains(secret), "{message}");
        }
        let request = parse(br#"{"input": 5, "key_version": "1", "reference": true}"#).unwrap();
        assert_eq!(request.input.unwrap().unwrap().0, "5");
        assert!(parse(b" ").unwrap().input.is_none());
    }
}
