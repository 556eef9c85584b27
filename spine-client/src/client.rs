//! The client handle: endpoints, lazy connections, and the retry loop every call goes through.
//!
//! Any Spine node accepts any request (followers forward writes), so the client never looks for
//! the leader: it talks to its current endpoint and moves to the next one, round robin, when that
//! node is down, unreachable, without quorum or too slow. Every other answer is final.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spine_proto::v1::spine_client::SpineClient;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;
use crate::error::is_retryable;

/// Default overall deadline of one call, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time one attempt on one endpoint may take.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time a broken subscription keeps trying to resume before reporting `Unavailable`.
pub const DEFAULT_RESUME_DEADLINE: Duration = Duration::from_secs(30);

/// Largest message the client accepts: a full map snapshot can be large.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// First pause after a failed attempt; it doubles after each full round of endpoints.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A handle to a Spine cluster. Cheap to clone; clones share connections.
///
/// Connections are made lazily, on first use of each endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    /// Index (modulo the number of nodes) of the endpoint calls start with.
    current: AtomicUsize,
    settings: Settings,
    credentials: Credentials,
    tls: Option<ClientTlsConfig>,
}

/// The metadata name tokens travel in.
pub const TOKEN_METADATA: &str = "authorization";

/// Adds the client's token to every request (`authorization: Bearer <token>`).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    header: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// Credentials presenting `token` (URL-safe base64, as `spinectl token issue` prints it).
    pub fn token(token: &str) -> Result<Self, ClientError> {
        let token = token.trim();
        let invalid = |reason: &str| ClientError::InvalidToken {
            reason: reason.to_string(),
        };
        if token.is_empty() {
            return Err(invalid("the token is empty"));
        }
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| invalid("a token is base64 text; this contains other characters"))?;
        Ok(Self {
            header: Some(header),
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert(TOKEN_METADATA, header.clone());
        }
        Ok(request)
    }
}

/// Where `spine dev` (run in the current directory) writes its admin token.
pub const DEV_TOKEN_FILE: &str = "spine-data/admin.token";

/// The token a command-line tool should use: `token` if given, else the contents of
/// `token_file` if given, else `spine dev`'s admin token if the current directory has one, else
/// none. A token file that cannot be read is an error rather than a silent fallback.
pub fn resolve_token(
    token: Option<String>,
    token_file: Option<&std::path::Path>,
) -> Result<Option<String>, ClientError> {
    if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| ClientError::InvalidToken {
                reason: format!("cannot read token file {}: {e}", path.display()),
            })
    };
    if let Some(path) = token_file {
        return read(path);
    }
    let dev = std::path::Path::new(DEV_TOKEN_FILE);
    if dev.exists() {
        return read(dev);
    }
    Ok(None)
}

/// A gRPC client of one node that presents the client's token.
pub(crate) type Rpc = SpineClient<InterceptedService<Channel, Credentials>>;

#[derive(Debug)]
pub(crate) struct Node {
    /// The endpoint as the user gave it, for messages.
    pub(crate) addr: String,
    channel: Channel,
    credentials: Credentials,
}

impl Node {
    pub(crate) fn rpc(&self) -> Rpc {
        SpineClient::with_interceptor(self.channel.clone(), self.credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) resume_deadline: Duration,
}

/// Builds a [`Client`] with non-default timeouts.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    settings: Settings,
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
}

impl ClientBuilder {
    /// Connects with TLS, trusting servers whose certificates chain to `ca_pem` (`spine init
    /// --tls` writes DIR/tls/ca.pem). Bare `host:port` endpoints then mean `https://`.
    pub fn tls_ca(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.ca_certificate(Certificate::from_pem(ca_pem)));
        self
    }
    /// Presents a client certificate (mutual TLS); needs [`Self::tls_ca`].
    pub fn tls_identity(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.identity(Identity::from_pem(cert_pem, key_pem)));
        self
    }
    /// Presents `token` (URL-safe base64) with every request. Without one, only health checks
    /// succeed against a Spine with authentication on.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Overall deadline of one call, retries on other endpoints included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }
    /// Time one attempt on one endpoint may take before the next endpoint is tried (default 3 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = timeout;
        self
    }
    /// Time to establish a TCP/HTTP2 connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }
    /// How long a broken subscription keeps trying to resume on other endpoints (default 30 s).
    pub fn resume_deadline(mut self, deadline: Duration) -> Self {
        self.settings.resume_deadline = deadline;
        self
    }
    /// Validates the endpoints and builds the client; nothing is connected yet.
    pub fn build(self) -> Result<Client, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let credentials = match &self.token {
            Some(t) => Credentials::token(t)?,
            None => Credentials::default(),
        };
        let nodes = self
            .endpoints
            .iter()
            .map(|addr| {
                Ok(Node {
                    addr: addr.clone(),
                    channel: lazy_channel(addr, &self.settings, self.tls.as_ref())?,
                    credentials: credentials.clone(),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                nodes,
                current: AtomicUsize::new(0),
                settings: self.settings,
                credentials,
                tls: self.tls,
            }),
        })
    }
}

/// `host:port` or `http://host:port` to a URI tonic accepts; bare addresses mean `https://`
/// with TLS.
pub(crate) fn endpoint_uri(endpoint: &str, tls: bool) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

fn lazy_channel(
    endpoint: &str,
    settings: &Settings,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    if endpoint.trim().is_empty() {
        return Err(invalid("empty address".into()));
    }
    let uri = endpoint_uri(endpoint, tls.is_some());
    let mut parsed = Endpoint::from_shared(uri).map_err(|e| invalid(e.to_string()))?;
    if let Some(tls) = tls {
        parsed = parsed
            .tls_config(tls.clone())
            .map_err(|e| invalid(format!("TLS settings: {e}")))?;
    }
    if parsed.uri().host().is_none() {
        return Err(invalid("no host; expected host:port".into()));
    }
    Ok(parsed
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        // Keep-alive pings notice a node that vanished without closing its connections, so an
        // idle subscription moves on instead of waiting forever.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Pause after the `attempt`-th failure (from 0) among `nodes` endpoints: short while other
/// endpoints remain to be tried, doubling after each full round.
pub(crate) fn backoff(attempt: u32, nodes: usize) -> Duration {
    let round = attempt / u32::try_from(nodes.max(1)).unwrap_or(u32::MAX);
    FIRST_BACKOFF
        .saturating_mul(1u32 << round.min(8))
        .min(MAX_BACKOFF)
}

impl Client {
    /// A client for these endpoints (`host:port` or `http://host:port`), with default timeouts.
    pub fn new(endpoints: Vec<String>) -> Result<Client, ClientError> {
        Self::builder(endpoints).build()
    }

    /// A client whose calls give up after `timeout` (retries on other endpoints included).
    pub fn with_timeout(endpoints: Vec<String>, timeout: Duration) -> Result<Client, ClientError> {
        Self::builder(endpoints).timeout(timeout).build()
    }

    /// A builder, to set timeouts.
    pub fn builder(endpoints: Vec<String>) -> ClientBuilder {
        ClientBuilder {
            endpoints,
            settings: Settings {
                timeout: DEFAULT_TIMEOUT,
                attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                resume_deadline: DEFAULT_RESUME_DEADLINE,
            },
            token: None,
            tls: None,
        }
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub(crate) fn settings(&self) -> Settings {
        self.inner.settings
    }

    /// Index of the endpoint to try first.
    pub(crate) fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.nodes.len()
    }

    /// Moves past endpoint `failed`, unless another call already did.
    pub(crate) fn advance_from(&self, failed: usize) {
        let n = self.inner.nodes.len();
        let _ = self
            .inner
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c % n == failed).then_some((failed + 1) % n)
            });
    }

    /// Runs one unary call, moving round robin through the endpoints on transient failures until
    /// the call's deadline.
    pub(crate) async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.settings.timeout;
        let (_, response) = self.round_robin(deadline, is_retryable, attempt).await?;
        Ok(response.into_inner())
    }

    /// The retry loop of every call and every subscription stream: `attempt` on the current
    /// endpoint, each attempt within the attempt timeout; an error `retry` accepts (or no answer
    /// in time) moves to the next endpoint after a backoff, any other answer is final. Returns
    /// the index of the endpoint that answered, or [`ClientError::Unavailable`] with every
    /// endpoint tried once `deadline` would pass.
    pub(crate) async fn round_robin<R, F, Fut>(
        &self,
        deadline: Instant,
        retry: fn(&tonic::Status) -> bool,
        mut attempt: F,
    ) -> Result<(usize, R), ClientError>
    where
        F: FnMut(Rpc) -> Fut,
        Fut: Future<Output = Result<R, tonic::Status>>,
    {
        let settings = self.inner.settings;
        let mut tried: Vec<String> = Vec::new();
        let mut failures = 0u32;
        loop {
            let index = self.current();
            let node = &self.inner.nodes[index];
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(settings.attempt_timeout);
            let last = match tokio::time::timeout(budget, attempt(node.rpc())).await {
                Ok(Ok(answer)) => return Ok((index, answer)),
                Ok(Err(status)) if !retry(&status) => return Err(status.into()),
                Ok(Err(status)) => format!("{}: {}", node.addr, describe(&status)),
                Err(_) => format!("{}: no answer within {budget:?}", node.addr),
            };
            tracing::debug!(error = %last, "attempt failed; trying the next endpoint");
            if !tried.contains(&node.addr) {
                tried.push(node.addr.clone());
            }
            self.advance_from(index);
            let pause = backoff(failures, self.inner.nodes.len());
            failures = failures.saturating_add(1);
            if Instant::now() + pause >= deadline {
                return Err(ClientError::Unavailable { tried, last });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs one unary call against one given endpoint, once, within `budget` (at most the
    /// call's deadline).
    pub(crate) async fn call_on<T, F, Fut>(
        &self,
        endpoint: &str,
        budget: Duration,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(Rpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let settings = self.inner.settings;
        let known = self.inner.nodes.iter().find(|n| {
            let tls = self.inner.tls.is_some();
            n.addr == endpoint || endpoint_uri(&n.addr, tls) == endpoint_uri(endpoint, tls)
        });
        let rpc = match known {
            Some(node) => node.rpc(),
            None => Node {
                addr: endpoint.to_string(),
                channel: lazy_channel(endpoint, &settings, self.inner.tls.as_ref())?,
                credentials: self.inner.credentials.clone(),
            }
            .rpc(),
        };
        let budget = budget.min(settings.timeout);
        let last = match tokio::time::timeout(budget, attempt(rpc)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) if !is_retryable(&status) => return Err(status.into()),
            Ok(Err(status)) => format!("{endpoint}: {}", describe(&status)),
            Err(_) => format!("{endpoint}: no answer within {budget:?}"),
        };
        Err(ClientError::Unavailable {
            tried: vec![endpoint.to_string()],
            last,
        })
    }
}

/// A transient failure in words: the status message and, for transport failures, their root
/// cause (tonic's own message is often just "transport error").
pub(crate) fn describe(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut root = None;
    let mut source = status.source();
    while let Some(err) = source {
        root = Some(err.to_string());
        source = err.source();
    }
    let message = status.message();
    match root {
        Some(cause) if !message.contains(&cause) && message.is_empty() => cause,
        Some(cause) if !message.contains(&cause) => format!("{message}: {cause}"),
        _ if message.is_empty() => status.code().description().to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_bare_addresses_and_uris() {
        assert_eq!(
            endpoint_uri("127.0.0.1:7401", false),
            "http://127.0.0.1:7401"
        );
        assert_eq!(
            endpoint_uri("127.0.0.1:7401", true),
            "https://127.0.0.1:7401"
        );
        assert_eq!(endpoint_uri(" http://h:1 ", true), "http://h:1");
        let s = Client::builder(vec![]).settings;
        assert!(lazy_channel("", &s, None).is_err());
        assert!(matches!(
            lazy_channel("bad host:1", &s, None),
            Err(ClientError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            Client::new(vec![]),
            Err(ClientError::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn backoff_is_short_within_a_round_and_grows_after() {
        assert_eq!(backoff(0, 3), FIRST_BACKOFF);
        assert_eq!(backoff(2, 3), FIRST_BACKOFF);
        assert_eq!(backoff(3, 3), FIRST_BACKOFF * 2);
        assert_eq!(backoff(6, 3), FIRST_BACKOFF * 4);
        assert_eq!(backoff(1000, 3), MAX_BACKOFF);
        assert_eq!(backoff(5, 0), MAX_BACKOFF);
    }
}
