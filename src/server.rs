//! Process lifecycle: harden the process, load the secrets and every other input
//! (fail closed), bind, serve HTTP/1.1 (over TLS when configured), and drain on
//! SIGTERM/SIGINT.

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::clients::{Clients, ClientsError, LiveClients};
use crate::config::Config;
use crate::http::{metrics_router, watch_body, App, AppState, BodyLimits, Settled};
use crate::keystore::{descriptors_left, KeyStore, LoadError};
use crate::limits::{
    BatchReadsError, ConcurrencyLimit, ConnectionLimit, ConnectionPermit, RateLimiter, ReadBudget,
    ReadLimits,
};
use crate::metrics::Metrics;
use crate::signed_clients::{SignedUpdates, SignerError};
use crate::sys;
use crate::tls::TlsError;

/// Pause after an accept that failed for want of memory before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Threads for blocking work (MODE32 key reads without io_uring, batches). Each
/// may hold a descriptor of its own: a key file opened per read, or reopened.
const BLOCKING_THREADS: usize = 512;
/// Connections the metrics listener serves at once.
const METRICS_CONNECTIONS: usize = 16;
/// Descriptors for the rest: the runtime, the listeners and their spare descriptors, logging.
const OTHER_DESCRIPTORS: u64 = 64;
/// The default connection limit never goes below this, however few descriptors are left.
const MIN_CONNECTIONS: usize = 16;
/// The default connection limit where the open descriptors cannot be counted.
const CONNECTIONS_UNCOUNTED: usize = 1024;
/// The default per-client connection limit never goes above this.
const MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Nor below this (unless the connection limit is lower): a client's connection
/// pool, and its reconnections while the server has yet to see the old
/// connections close, must fit even on a server of few places.
const MIN_CONNECTIONS_PER_CLIENT: usize = 8;
/// Client addresses that, each at its default connection limit, hold every
/// concurrency slot: a connection serves one request at a time, so this many
/// addresses at least are needed to refuse everyone else's requests.
const CLIENTS_TO_FILL_THE_SLOTS: usize = 16;

/// Why the server did not start; each names what to fix.
#[derive(Debug)]
pub enum ServerError {
    BatchReads(BatchReadsError),
    Secrets(LoadError),
    Clients(ClientsError),
    Signer(SignerError),
    Tls(TlsError),
    Runtime(io::Error),
    /// The address cannot be listened on; `variable` is the setting that named it.
    Bind {
        address: SocketAddr,
        variable: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::BatchReads(error) => error.fmt(f),
            ServerError::Secrets(error) => error.fmt(f),
            ServerError::Clients(error) => error.fmt(f),
            ServerError::Signer(error) => error.fmt(f),
            ServerError::Tls(error) => error.fmt(f),
            ServerError::Runtime(error) => write!(f, "cannot start the async runtime: {error}"),
            ServerError::Bind {
                address,
                variable,
                source,
            } => write!(f, "cannot listen on {address} ({variable}): {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::BatchReads(error) => Some(error),
            ServerError::Secrets(error) => Some(error),
            ServerError::Clients(error) => Some(error),
            ServerError::Signer(error) => Some(error),
            ServerError::Tls(error) => Some(error),
            ServerError::Runtime(error) => Some(error),
            ServerError::Bind { source, .. } => Some(source),
        }
    }
}

impl From<LoadError> for ServerError {
    fn from(error: LoadError) -> Self {
        ServerError::Secrets(error)
    }
}

impl From<ClientsError> for ServerError {
    fn from(error: ClientsError) -> Self {
        ServerError::Clients(error)
    }
}

impl From<SignerError> for ServerError {
    fn from(error: SignerError) -> Self {
        ServerError::Signer(error)
    }
}

impl From<TlsError> for ServerError {
    fn from(error: TlsError) -> Self {
        ServerError::Tls(error)
    }
}

/// Runs the server until a termination signal; an `Err` means it never served.
pub fn run(config: Config) -> Result<(), ServerError> {
    harden_process();
    // Everything that can be wrong with the inputs is found before the port is bound.
    let batch_reads = config.batch_reads().map_err(ServerError::BatchReads)?;
    let updates = config
        .clients_signer()?
        .map(|signer| SignedUpdates::new(signer, &config.state_dir))
        .transpose()?;
    let clients = match config.clients_file() {
        Some(path) => {
            let in_force = newest(updates.as_ref(), Clients::load(path)?);
            tracing::info!(
                clients = in_force.iter().count(),
                serial = in_force.serial(),
                signed_updates = updates.is_some(),
                "clients in force"
            );
            Some(LiveClients::new(path, in_force))
        }
        None => None,
    };
    let current = clients.as_ref().map(LiveClients::current);
    let namespaces = current.as_deref().map_or(Vec::new(), Clients::namespaces);
    let concurrency = Arc::new(ConcurrencyLimit::new(config.max_concurrent));
    let keys = KeyStore::load(
        config.mode,
        &config.secret_dir,
        config.key_reads,
        &namespaces,
    )?
    .with_limits(ReadLimits {
        timeout: Duration::from_secs(config.key_read_timeout),
        batches: Arc::new(ReadBudget::new(
            batch_reads,
            batch_reads.waiting_under(config.max_concurrent),
        )),
        concurrency: Arc::clone(&concurrency),
    });
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::acceptor(
            cert,
            key,
            config.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let connections = connection_limit(&config);
    tracing::info!(
        max_connections = connections.max(),
        max_connections_per_client = connections.per_client(),
        "connection limits"
    );
    tracing::info!(
        batch_reads = %batch_reads,
        key_read_timeout_seconds = config.key_read_timeout,
        "key read limits"
    );
    let state = Arc::new(AppState {
        keys,
        max_body: config.max_body,
        body_timeout: config.body_timeout,
        clients,
        updates,
        rate_limiter: config.rate_limit.map(RateLimiter::new),
        concurrency,
        connections: Arc::new(connections),
        metrics: Metrics::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(serve(config, state, tls))
}

/// The connection limits as configured, or by default as many connections as
/// the descriptors left allow once what the server needs for itself is set
/// aside, so that no connection can take a descriptor a key read needs.
fn connection_limit(config: &Config) -> ConnectionLimit {
    let reserved = (BLOCKING_THREADS + METRICS_CONNECTIONS) as u64 + OTHER_DESCRIPTORS;
    let left = descriptors_left();
    let max = match (config.max_connections, left) {
        (Some(max), Some(left)) => {
            if max as u64 + reserved > left {
                tracing::warn!(
                    max_connections = max,
                    descriptors_left = left,
                    reserved,
                    "CRYPTOSERVER_MAX_CONNECTIONS leaves too few file descriptors for key reads: \
                     lower it or raise RLIMIT_NOFILE"
                );
            }
            max
        }
        (Some(max), None) => max,
        (None, Some(left)) => {
            let budget = left.saturating_sub(reserved) as usize;
            if budget < MIN_CONNECTIONS {
                tracing::warn!(
                    descriptors_left = left,
                    reserved,
                    max_connections = MIN_CONNECTIONS,
                    "RLIMIT_NOFILE leaves almost no file descriptors for connections: raise it \
                     (systemd: LimitNOFILE=69632 for MODE32)"
                );
            }
            budget.max(MIN_CONNECTIONS)
        }
        (None, None) => {
            let max = CONNECTIONS_UNCOUNTED;
            tracing::warn!(
                max_connections = max,
                "cannot count the open file descriptors (/proc/self/fd); \
                 set CRYPTOSERVER_MAX_CONNECTIONS"
            );
            max
        }
    };
    let per_client = config
        .max_connections_per_client
        .unwrap_or(
            (max / 4)
                .min(config.max_concurrent / CLIENTS_TO_FILL_THE_SLOTS)
                .clamp(MIN_CONNECTIONS_PER_CLIENT, MAX_CONNECTIONS_PER_CLIENT),
        )
        .min(max);
    ConnectionLimit::new(max, per_client)
}

/// No core dumps and no ptrace by other processes of the same user: either
/// would hand out the keys held in memory.
fn harden_process() {
    if let Err(error) = sys::forbid_core_dumps() {
        tracing::warn!(%error, "cannot turn core dumps off");
    }
}

async fn serve(
    config: Config,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
) -> Result<(), ServerError> {
    let listener = bind(config.bind, "CRYPTOSERVER_BIND").await?;
    let metrics_listener = match config.metrics_bind {
        Some(address) => Some(bind(address, "CRYPTOSERVER_METRICS_BIND").await?),
        None => None,
    };
    // With port 0 the kernel picks one: log the port really bound.
    let address = listener.local_addr().unwrap_or(config.bind);
    tracing::info!(
        mode = %state.keys.mode(),
        dir = %config.secret_dir.display(),
        fingerprint = state.keys.fingerprint().map(|fingerprint| fingerprint.to_string()),
        addr = %address,
        tls = tls.is_some(),
        "cryptoserver started"
    );

    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(config.max_header)
        // Responses are small: one copy into one buffer costs less than
        // queueing the head and the body for a vectored write.
        .writev(false)
        .keep_alive(true);
    let body_limits = BodyLimits {
        max: state.max_body,
        timeout: state.body_timeout,
    };
    let (stopping_tx, stopping) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let main = accept_loop(
        Listener {
            listener,
            limit: Arc::clone(&state.connections),
            state: Arc::clone(&state),
        },
        tls,
        (http.clone(), config.header_timeout),
        ConnectionService::new(
            App::new(Arc::clone(&state)),
            state.limits_clients_by_address(),
            body_limits,
        ),
        Arc::clone(&graceful),
        stopping.clone(),
    );
    let metrics = metrics_listener.map(|listener| {
        tokio::spawn(accept_loop(
            Listener {
                listener,
                limit: Arc::new(ConnectionLimit::new(
                    METRICS_CONNECTIONS,
                    METRICS_CONNECTIONS,
                )),
                state: Arc::clone(&state),
            },
            None,
            (http, config.header_timeout),
            ConnectionService::new(metrics_router(Arc::clone(&state)), false, body_limits),
            Arc::clone(&graceful),
            stopping,
        ))
    });
    // Installed before anything can send it: SIGHUP's default action ends the process.
    let hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    let reloads = tokio::spawn(reload_clients_on(hangup, Arc::clone(&state)));
    tokio::select! {
        () = main => {}
        () = termination_signal() => {}
    }
    reloads.abort();
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stopping_tx.send(true);
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let graceful = Arc::into_inner(graceful).expect("the accept loops have ended");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "in-flight requests outlived the shutdown grace; exiting");
    }
    tracing::info!("cryptoserver stopped");
    Ok(())
}

async fn bind(address: SocketAddr, variable: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            address,
            variable,
            source,
        })
}

/// A listening socket and the limit on the connections it accepts.
struct Listener {
    listener: TcpListener,
    limit: Arc<ConnectionLimit>,
    state: Arc<AppState>,
}

impl Listener {
    /// The next connection within the limits. One over a limit is closed at
    /// once and counted. Out of descriptors, the spare one is given up to take
    /// the waiting connection off the queue and close it, so the loop neither
    /// spins on the same error nor leaves clients waiting in the queue.
    async fn accept(
        &self,
        spare: &mut Option<OwnedFd>,
    ) -> Option<(TcpStream, SocketAddr, ConnectionPermit)> {
        match self.listener.accept().await {
            Ok((tcp, peer)) => match self.limit.admit(peer.ip()) {
                Ok(permit) => Some((tcp, peer, permit)),
                Err(refusal) => {
                    tracing::debug!(%peer, ?refusal, "connection refused: over the connection limit");
                    self.refused();
                    None
                }
            },
            Err(error) if sys::is_out_of_descriptors(&error) => {
                tracing::warn!(%error, "out of file descriptors: closing a waiting connection");
                drop(spare.take());
                if let Some(Ok(_)) = self.listener.accept().now_or_never() {
                    self.refused();
                }
                *spare = sys::event_fd().ok();
                None
            }
            Err(error) if sys::is_out_of_memory(&error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                None
            }
            // The connection went away before it was accepted: nothing to wait for.
            Err(error) => {
                tracing::debug!(%error, "cannot accept a connection");
                None
            }
        }
    }

    fn refused(&self) {
        self.state
            .metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stopping` turns true; each connection runs in its
/// own task, watched by `graceful` for the shutdown.
async fn accept_loop<S: AppService>(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    (http, header_timeout): (http1::Builder, Duration),
    service: ConnectionService<S>,
    graceful: Arc<GracefulShutdown>,
    mut stopping: watch::Receiver<bool>,
) {
    // Kept for the moment descriptors run out; see `Listener::accept`.
    let mut spare = sys::event_fd().ok();
    loop {
        let (tcp, peer, permit) = tokio::select! {
            accepted = listener.accept(&mut spare) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
            () = async { let _ = stopping.wait_for(|&stopping| stopping).await; } => return,
        };
        // Responses are one small write: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            http: http.clone(),
            header_timeout,
            service: service.for_peer(peer),
            peer,
            // Taken before the task starts, so the shutdown waits for this
            // connection even while it is still in its TLS handshake.
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            // Held until the connection has ended.
            let _permit = permit;
            match tls {
                None => connection.serve(tcp).await,
                Some(tls) => connection.serve_tls(tls, tcp).await,
            }
        });
    }
}

/// What a connection serves: the app, or the metrics listener's router.
trait AppService:
    Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin>
    + Clone
    + Send
    + 'static
{
}

impl<S> AppService for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin>
        + Clone
        + Send
        + 'static
{
}

struct Connection<S> {
    http: http1::Builder,
    header_timeout: Duration,
    service: ConnectionService<S>,
    peer: SocketAddr,
    watcher: Watcher,
}

/// One connection's copy of the app. Each request borrows it instead of
/// cloning it: a clone would change reference counts that every core shares.
struct ConnectionService<S> {
    app: RefCell<S>,
    pass_peer: bool,
    /// Set only when the rate limit needs it: inserting it costs an allocation.
    peer: Option<SocketAddr>,
    /// For the rest of a body the app leaves unread.
    body_limits: BodyLimits,
}

impl<S: AppService> ConnectionService<S> {
    fn new(app: S, pass_peer: bool, body_limits: BodyLimits) -> Self {
        ConnectionService {
            app: RefCell::new(app),
            pass_peer,
            peer: None,
            body_limits,
        }
    }

    fn for_peer(&self, peer: SocketAddr) -> Self {
        ConnectionService {
            app: self.app.clone(),
            pass_peer: self.pass_peer,
            peer: self.pass_peer.then_some(peer),
            body_limits: self.body_limits,
        }
    }
}

impl<S: AppService> hyper::service::Service<hyper::Request<Incoming>> for ConnectionService<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Settled<S::Future>;

    /// The response waits for the rest of a body the app left unread, so that
    /// the connection can serve the next request (see `crate::http::leftover`).
    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let (request, leftover) = watch_body(request);
        Settled::new(
            self.app.borrow_mut().call(request),
            leftover,
            self.body_limits,
        )
    }
}

impl<S: AppService> Connection<S> {
    async fn serve_tls(self, tls: TlsAcceptor, tcp: TcpStream) {
        // The handshake gets the same time as a request head.
        match tokio::time::timeout(self.header_timeout, tls.accept(tcp)).await {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(error)) => tracing::debug!(peer = %self.peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            http,
            service,
            peer,
            watcher,
            ..
        } = self;
        let connection = watcher.watch(http.serve_connection(TokioIo::new(io), service));
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

/// Each SIGHUP reads the clients file again: a file without error is in force
/// for every request from then on (with a signer, unless the kept signed
/// document is newer); one with any error leaves the set in force as it was,
/// and is logged and counted.
async fn reload_clients_on(mut hangup: Signal, state: Arc<AppState>) {
    while hangup.recv().await.is_some() {
        let Some(clients) = &state.clients else {
            tracing::info!("SIGHUP: no clients file (CRYPTOSERVER_TOKENS_FILE) to read again");
            continue;
        };
        let _no_signed_update_meanwhile = state.updates.as_ref().map(SignedUpdates::changing);
        match read_clients_again(&state, clients) {
            Ok(new) => {
                let (count, serial) = (new.iter().count(), new.serial());
                clients.replace(new);
                tracing::info!(
                    clients = count,
                    serial,
                    "SIGHUP: clients file read again; the new set is in force"
                );
            }
            Err(error) => {
                state
                    .metrics
                    .clients_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %error,
                    "SIGHUP: the clients file has an error; the clients in force are unchanged"
                );
            }
        }
    }
}

/// The clients file as it is now (or the kept signed document, if newer), if
/// it has no error and the keys serve every namespace it names.
fn read_clients_again(state: &AppState, clients: &LiveClients) -> Result<Clients, String> {
    let file = Clients::load(clients.path()).map_err(|error| error.to_string())?;
    let new = newest(state.updates.as_ref(), file);
    if let Some(namespace) = state.namespace_not_served(&new) {
        return Err(format!(
            "{}: namespace '{namespace}' is new, and {} derives the namespaces' keys at startup: \
             restart the server to add it",
            clients.path().display(),
            state.keys.mode()
        ));
    }
    Ok(new)
}

/// The clients file's set, or with a signer the kept signed document's when it is newer.
fn newest(updates: Option<&SignedUpdates>, file: Clients) -> Clients {
    match updates {
        Some(updates) => updates.newest(file),
        None => file,
    }
}

async fn termination_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
