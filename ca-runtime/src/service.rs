//! The host's client endpoint: the `ca.v1` gRPC service (DESIGN.md §9.9), with token checks.

use std::sync::Arc;
use std::time::SystemTime;

use authz_aggregate::{Token, Verifier};
use spine_proto::ca_v1 as pb;
use tonic::{Request, Response, Status};

use crate::CaError;
use crate::host::{Host, parse_names};
use crate::placement::Route;

/// The metadata key tokens travel in.
pub const TOKEN_KEY: &str = "authorization";
/// The metadata key marking a call one host forwarded to another (never forwarded again).
pub const FORWARDED_KEY: &str = "ca-forwarded";

/// Serves `ca.v1` for a host.
#[derive(Clone, Debug)]
pub struct CaService {
    host: Host,
    verifier: Option<Arc<Verifier>>,
    peers: Arc<std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>>,
}

impl CaService {
    /// A service for `host`; with a verifier every call must present a token admitting the app
    /// and the CA it calls; without one (`--no-auth`), every call is allowed.
    pub fn new(host: Host, verifier: Option<Arc<Verifier>>) -> Self {
        Self {
            host,
            verifier,
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
            .connect_timeout(std::time::Duration::from_secs(2))
            .connect_lazy();
        peers.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends a call on to the host holding the CA's partition.
    async fn forward(
        &self,
        addr: &str,
        metadata: &tonic::metadata::MetadataMap,
        request: pb::CallRequest,
    ) -> Result<pb::CallResponse, Status> {
        let mut forwarded = Request::new(request);
        if let Some(token) = metadata.get(TOKEN_KEY) {
            forwarded.metadata_mut().insert(TOKEN_KEY, token.clone());
        }
        forwarded.metadata_mut().insert(
            FORWARDED_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let channel = self.peer(addr).map_err(|e| e.to_status())?;
        let mut client = pb::ca_client::CaClient::new(channel);
        match client.call(forwarded).await {
            Ok(answer) => Ok(answer.into_inner()),
            // The holder answered: its answer, CA error code and all, is the caller's.
            Err(status) if status.metadata().get(ca_client::ERROR_CODE_KEY).is_some() => {
                Err(status)
            }
            Err(status) => Err(CaError::moved(format!(
                "the host {addr} holding this CA's partition did not answer ({}); call again",
                status.message()
            ))
            .to_status()),
        }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> pb::ca_server::CaServer<Self> {
        pb::ca_server::CaServer::new(self)
    }

    fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        app: &sharing_map::AppName,
        ca: &sharing_map::CaName,
    ) -> Result<(), CaError> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let text = metadata
            .get(TOKEN_KEY)
            .ok_or_else(|| {
                CaError::not_authorized(
                    "this call needs a token: send `authorization: Bearer <token>` (ca: --token or --token-file)",
                )
            })?
            .to_str()
            .map_err(|_| CaError::not_authorized("the authorization metadata is not text"))?;
        let encoded = text.strip_prefix("Bearer ").ok_or_else(|| {
            CaError::not_authorized("the authorization metadata must be `Bearer <token>`")
        })?;
        let token = Token::from_base64(encoded)
            .map_err(|e| CaError::not_authorized(format!("bad token: {e}")))?;
        let found = verifier
            .authenticate(&token)
            .map_err(|e| CaError::not_authorized(format!("bad token: {e}")))?;
        found
            .admits(Some(app), Some(ca), SystemTime::now())
            .map_err(|e| {
                CaError::not_authorized(format!(
                    "this token does not admit CA {ca} of app {app}: {e}"
                ))
            })
    }
}

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (app, ca) = parse_names(&request.app, &request.ca).map_err(|e| e.to_status())?;
        self.authorize(&metadata, &app, &ca)
            .map_err(|e| e.to_status())?;
        match self
            .host
            .route(&app, &ca)
            .await
            .map_err(|e| e.to_status())?
        {
            Route::Local => {}
            Route::Remote(addr) if metadata.get(FORWARDED_KEY).is_some() => {
                return Err(CaError::moved(format!(
                    "CA {ca} is served by {addr}, not by the host it was forwarded to; call again"
                ))
                .to_status());
            }
            Route::Remote(addr) => {
                let answer = self.forward(&addr, &metadata, request).await;
                if answer.is_err() {
                    self.host.forget_route(&app, &ca);
                }
                return answer.map(Response::new);
            }
        }
        let calls = request
            .calls
            .into_iter()
            .map(|c| (c.method, c.args_json))
            .collect();
        let reply = self
            .host
            .call(app.as_str(), ca.as_str(), calls, None)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::CallResponse {
            result_json: reply.result.to_string(),
            version: reply.version,
        }))
    }
}
