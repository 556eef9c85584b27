//! The host's client endpoint: the `ca.v1` gRPC service (DESIGN.md §9.9), with token checks.

use std::sync::Arc;
use std::time::SystemTime;

use authz_aggregate::{Token, Verifier};
use spine_proto::ca_v1 as pb;
use tonic::{Request, Response, Status};

use crate::CaError;
use crate::host::{Host, parse_names};

/// The metadata key tokens travel in.
pub const TOKEN_KEY: &str = "authorization";

/// Serves `ca.v1` for a host.
#[derive(Clone, Debug)]
pub struct CaService {
    host: Host,
    verifier: Option<Arc<Verifier>>,
}

impl CaService {
    /// A service for `host`; with a verifier every call must present a token admitting the app
    /// and the CA it calls; without one (`--no-auth`), every call is allowed.
    pub fn new(host: Host, verifier: Option<Arc<Verifier>>) -> Self {
        Self { host, verifier }
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
        let calls = request
            .calls
            .into_iter()
            .map(|c| (c.method, c.args_json))
            .collect();
        let reply = self
            .host
            .call(app.as_str(), ca.as_str(), calls)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::CallResponse {
            result_json: reply.result.to_string(),
            version: reply.version,
        }))
    }
}
