//! gRPC reflection as its clients see it, in both protocol versions: `v1` (grpcurl, current
//! clients) and `v1alpha` (Python's grpcio-reflection, older grpcurl, several GUI clients).

use anyhow::{Context, bail};
use tonic::transport::Channel;

fn credentials(token: Option<&str>) -> anyhow::Result<spine_client::Credentials> {
    Ok(match token {
        Some(t) => spine_client::Credentials::token(t)?,
        None => spine_client::Credentials::default(),
    })
}

/// The two versions are the same messages in two protobuf packages.
macro_rules! list_services {
    ($(#[$doc:meta])* $name:ident, $version:ident) => {
        $(#[$doc])*
        pub async fn $name(ch: Channel, token: Option<&str>) -> anyhow::Result<Vec<String>> {
            use tonic_reflection::pb::$version as r;
            let mut client = r::server_reflection_client::ServerReflectionClient::with_interceptor(
                ch,
                credentials(token)?,
            );
            let ask = tokio_stream::iter(vec![r::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    r::server_reflection_request::MessageRequest::ListServices(String::new()),
                ),
            }]);
            let answer = client
                .server_reflection_info(ask)
                .await?
                .into_inner()
                .message()
                .await?
                .context(concat!("reflection ", stringify!($version), " closed without an answer"))?;
            match answer.message_response {
                Some(r::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
                    Ok(list.service.into_iter().map(|s| s.name).collect())
                }
                other => bail!("reflection {} answered {other:?}", stringify!($version)),
            }
        }
    };
}

list_services!(
    /// The services a server lists through reflection `v1`.
    services_v1,
    v1
);
list_services!(
    /// The services a server lists through reflection `v1alpha`.
    services_v1alpha,
    v1alpha
);
