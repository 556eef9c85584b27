//! The host's client endpoint: the `ca.v1` gRPC service (DESIGN.md §9.9), with token checks.
//!
//! Every request names the app and CA it calls; it is served by the host holding the CA's
//! partition, so any other host forwards it there (once: a forwarded request is never forwarded
//! again). Sessions, acknowledgements and exactly-once instances are turns of the CA
//! (runtime methods `@listen`, `@ack`, `@begin`, `@end`), authorized like method calls. The
//! wire-independent parts (who the caller is, what a notification looks like) are in
//! [`crate::clients`], shared with the WebSocket endpoint.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use authz_aggregate::Verifier;
use futures::Stream;
use spine_proto::ca_v1 as pb;
use tonic::{Request, Response, Status};

use crate::CaError;
use crate::clients::Front;
use crate::host::{Host, parse_names};
use crate::placement::Route;
use crate::plugins::session::Listeners;

/// The metadata key tokens travel in.
pub const TOKEN_KEY: &str = "authorization";
/// The metadata key marking a call one host forwarded to another (never forwarded again).
pub const FORWARDED_KEY: &str = "ca-forwarded";

/// Serves `ca.v1` for a host.
#[derive(Clone, Debug)]
pub struct CaService {
    front: Front,
    peers: Arc<std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>>,
}

type ListenStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

impl CaService {
    /// A service for `host`; with a verifier every call must present a token admitting the app
    /// and the CA it calls; without one (`--no-auth`), every call is allowed.
    pub fn new(host: Host, verifier: Option<Arc<Verifier>>) -> Self {
        Self::with_listeners(host, verifier, None)
    }

    /// Like [`new`](Self::new), serving `Listen` from the session plugin's `listeners`.
    pub fn with_listeners(
        host: Host,
        verifier: Option<Arc<Verifier>>,
        listeners: Option<Arc<Listeners>>,
    ) -> Self {
        Self {
            front: Front::new(host, verifier, listeners),
            peers: Arc::default(),
        }
    }

    fn peer(&self, addr: &str) -> Result<tonic::transport::Channel, CaError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| CaError::exception(format!("the holder's address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        peers.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn forwarded<T>(&self, metadata: &tonic::metadata::MetadataMap, message: T) -> Request<T> {
        let mut forwarded = Request::new(message);
        if let Some(token) = metadata.get(TOKEN_KEY) {
            forwarded.metadata_mut().insert(TOKEN_KEY, token.clone());
        }
        forwarded.metadata_mut().insert(
            FORWARDED_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        forwarded
    }

    /// Where a request for CA `ca` is served: `None` here, or the holder's address. A request
    /// already forwarded once that still does not land here is `moved`.
    async fn route(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        app: &sharing_map::AppName,
        ca: &sharing_map::CaName,
    ) -> Result<Option<String>, Status> {
        match self
            .front
            .host()
            .route(app, ca)
            .await
            .map_err(|e| e.to_status())?
        {
            Route::Local => Ok(None),
            Route::Remote(addr) if metadata.get(FORWARDED_KEY).is_some() => {
                Err(CaError::moved(format!(
                    "CA {ca} is served by {addr}, not by the host it was forwarded to; call again"
                ))
                .to_status())
            }
            Route::Remote(addr) => Ok(Some(addr)),
        }
    }

    /// The holder's failure, as the caller's: its own CA error, or `moved` if it did not answer.
    fn holder_failed(&self, addr: &str, status: Status) -> Status {
        if status.metadata().get(ca_client::ERROR_CODE_KEY).is_some() {
            return status;
        }
        CaError::moved(format!(
            "the host {addr} holding this CA's partition did not answer ({}); call again",
            status.message()
        ))
        .to_status()
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> pb::ca_server::CaServer<Self> {
        pb::ca_server::CaServer::new(self)
    }

    /// The token of a request (`authorization: Bearer <token>`), if it has one.
    fn token(metadata: &tonic::metadata::MetadataMap) -> Result<Option<&str>, CaError> {
        let Some(value) = metadata.get(TOKEN_KEY) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .map_err(|_| CaError::not_authorized("the authorization metadata is not text"))?;
        text.strip_prefix("Bearer ").map(Some).ok_or_else(|| {
            CaError::not_authorized("the authorization metadata must be `Bearer <token>`")
        })
    }

    async fn call_inner(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        request: pb::CallRequest,
    ) -> Result<pb::CallResponse, Status> {
        let (app, ca) = parse_names(&request.app, &request.ca).map_err(|e| e.to_status())?;
        let caller = self
            .front
            .caller(
                Self::token(metadata).map_err(|e| e.to_status())?,
                &app,
                &ca,
                &request.from,
            )
            .map_err(|e| e.to_status())?;
        if let Some(addr) = self.route(metadata, &app, &ca).await? {
            let channel = self.peer(&addr).map_err(|e| e.to_status())?;
            let mut client = pb::ca_client::CaClient::new(channel);
            return match client.call(self.forwarded(metadata, request)).await {
                Ok(answer) => Ok(answer.into_inner()),
                Err(status) => {
                    self.front.host().forget_route(&app, &ca);
                    Err(self.holder_failed(&addr, status))
                }
            };
        }
        let calls = request
            .calls
            .into_iter()
            .map(|c| (c.method, c.args_json))
            .collect();
        let reply = self
            .front
            .host()
            .call_as(
                app.as_str(),
                ca.as_str(),
                calls,
                Some(request.session.as_str()),
                &caller,
            )
            .await
            .map_err(|e| e.to_status())?;
        Ok(pb::CallResponse {
            result_json: reply.result.to_string(),
            version: reply.version,
        })
    }

    async fn runtime_call(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        (app, ca, session, from): (String, String, String, String),
        method: &str,
        args: serde_json::Value,
    ) -> Result<pb::CallResponse, Status> {
        let request = pb::CallRequest {
            app,
            ca,
            calls: vec![pb::MethodCall {
                method: method.to_string(),
                args_json: args.to_string(),
            }],
            session,
            from,
        };
        self.call_inner(metadata, request).await
    }
}

fn json_of(text: &str) -> Result<serde_json::Value, Status> {
    serde_json::from_str(text).map_err(|e| {
        CaError::exception(format!(
            "a runtime method answered with bad JSON ({e}): {text}"
        ))
        .to_status()
    })
}

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.call_inner(&metadata, request).await.map(Response::new)
    }

    type ListenStream = ListenStream;

    async fn listen(
        &self,
        request: Request<pb::ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (app, ca) = parse_names(&request.app, &request.ca).map_err(|e| e.to_status())?;
        let token = Self::token(&metadata).map_err(|e| e.to_status())?;
        let caller = self
            .front
            .caller(token, &app, &ca, &request.from)
            .map_err(|e| e.to_status())?;
        if let Some(addr) = self.route(&metadata, &app, &ca).await? {
            let channel = self.peer(&addr).map_err(|e| e.to_status())?;
            let mut client = pb::ca_client::CaClient::new(channel);
            let upstream = match client.listen(self.forwarded(&metadata, request)).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    self.front.host().forget_route(&app, &ca);
                    return Err(self.holder_failed(&addr, status));
                }
            };
            return Ok(Response::new(Box::pin(upstream)));
        }
        let stream = self
            .front
            .listen(app, ca, &request.session, caller, request.after)
            .await
            .map_err(|e| e.to_status())?;
        let stream = futures::StreamExt::map(stream, |item| {
            item.map(|p| pb::Notification {
                seq: p.notification.seq,
                session: p.notification.session,
                args_json: p.notification.args.to_string(),
                pushed_unix_us: p
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64),
            })
            .map_err(|e| e.to_status())
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let target = (r.app, r.ca, r.session, r.from);
        self.runtime_call(&metadata, target, "@ack", serde_json::json!([r.seq]))
            .await
            .map(Response::new)
    }

    async fn begin(
        &self,
        request: Request<pb::SessionRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let target = (r.app, r.ca, r.session, r.from);
        let answer = self
            .runtime_call(&metadata, target, "@begin", serde_json::json!([]))
            .await?;
        let begun = json_of(&answer.result_json)?;
        Ok(Response::new(pb::BeginResponse {
            nonce: begun["nonce"].as_str().unwrap_or_default().to_string(),
            memento_json: begun["memento"].to_string(),
            version: answer.version,
        }))
    }

    async fn end(
        &self,
        request: Request<pb::EndRequest>,
    ) -> Result<Response<pb::EndResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let target = (r.app, r.ca, r.session, r.from);
        let answer = self
            .runtime_call(&metadata, target, "@end", serde_json::json!([r.nonce]))
            .await?;
        Ok(Response::new(pb::EndResponse {
            ended: json_of(&answer.result_json)? == serde_json::json!(true),
            version: answer.version,
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (app, ca) = parse_names(&request.app, &request.ca).map_err(|e| e.to_status())?;
        let token = Self::token(&metadata).map_err(|e| e.to_status())?;
        let view = self
            .front
            .inspect(token, &app, &ca)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::InspectResponse {
            json: view.to_string(),
        }))
    }
}
