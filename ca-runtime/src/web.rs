//! The browser side of the client API (DESIGN.md §9.9): a WebSocket endpoint with JSON
//! messages carrying the operations of `ca.v1`, and a small web page using it, both served on
//! the host's HTTP port (component `web`, a [`RoutesPart`](crate::assembly::RoutesPart) of the
//! `http` component).
//!
//! `GET /` is the page (plain HTML and JavaScript, no build step); `GET /ws` upgrades to the
//! WebSocket. Each text frame is one JSON request with an `id` the answer repeats:
//!
//! ```text
//!  {"id":1,"op":"login","token":"<base64 token>","from":"bob-phone"?}  → {"id":1,"result":"ok"}
//!  {"id":2,"op":"call","app","ca","session"?,"calls":[{"method":"notify","args":["hi"]}]}
//!                                                         → {"id":2,"result":...,"version":N}
//!  {"id":3,"op":"listen","app","ca","session"?,"after"?}  → {"id":3,"result":"listening"}, then
//!        {"listen":3,"notification":{"seq","session","args"}} for each, until
//!        {"listen":3,"error":{...}} (the CA moved: listen again) or {"op":"unlisten","listen":3}
//!  {"id":4,"op":"ack","app","ca","session"?,"seq":7}      → {"id":4,"result":null,"version":N}
//!  {"id":5,"op":"begin",...} → {"nonce","memento"};  {"id":6,"op":"end",...,"nonce"} → true|false
//!  failures: {"id":..,"error":{"code":"invalid"|"not_authorized"|...,"message":"..."}}
//! ```
//!
//! Every operation goes through the host's [`CaService`] in-process, with the login's token, so
//! it is authorized, forwarded to the CA's holder and answered exactly as over gRPC, with the
//! same error codes. A frame that is not JSON, not text, too large, or not a known operation
//! gets an `invalid` error and changes nothing; the connection goes on.

use std::collections::HashMap;

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::{Html, IntoResponse};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use spine_proto::ca_v1 as pb;
use spine_proto::ca_v1::ca_server::Ca;
use tokio::sync::mpsc;
use tonic::Request;

use crate::CaError;
use crate::service::{CaService, TOKEN_KEY};

/// The page, served at `/`.
pub const PAGE: &str = include_str!("web/index.html");

/// The largest frame answered; larger ones get an `invalid` error (the arguments of a call are
/// limited to 256 KiB anyway).
pub const MAX_FRAME: usize = 512 * 1024;
/// Frames beyond this end the connection (the WebSocket layer refuses to buffer them).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The routes: `/` (the page) and `/ws` (the WebSocket), over `service`.
pub fn routes(service: CaService) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { Html(PAGE) }))
        .route("/ws", axum::routing::get(upgrade))
        .with_state(service)
}

async fn upgrade(ws: WebSocketUpgrade, State(service): State<CaService>) -> impl IntoResponse {
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| connection(socket, service))
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Frame {
    Login {
        token: String,
        #[serde(default)]
        from: String,
    },
    Call {
        app: String,
        ca: String,
        #[serde(default)]
        session: String,
        calls: Vec<FrameCall>,
    },
    Listen {
        app: String,
        ca: String,
        #[serde(default)]
        session: String,
        #[serde(default)]
        after: u64,
    },
    Unlisten {
        listen: u64,
    },
    Ack {
        app: String,
        ca: String,
        #[serde(default)]
        session: String,
        seq: u64,
    },
    Begin {
        app: String,
        ca: String,
        #[serde(default)]
        session: String,
    },
    End {
        app: String,
        ca: String,
        #[serde(default)]
        session: String,
        nonce: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameCall {
    method: String,
    #[serde(default)]
    args: Vec<Value>,
}

/// Who the connection speaks as, once logged in.
#[derive(Clone, Default)]
struct Login {
    token: Option<String>,
    from: String,
}

impl Login {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert(TOKEN_KEY, value);
        }
        request
    }
}

fn error_json(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message})
}

fn status_json(status: &tonic::Status) -> Value {
    let code = status
        .metadata()
        .get(ca_client::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("transport");
    error_json(code, status.message())
}

fn invalid(id: &Value, message: impl Into<String>) -> Value {
    let e = CaError::invalid(message);
    json!({"id": id, "error": error_json(e.code.as_str(), &e.message)})
}

async fn connection(socket: WebSocket, service: CaService) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<Value>(256);
    let writer = tokio::spawn(async move {
        while let Some(v) = outgoing.recv().await {
            if sink
                .send(WsMessage::Text(v.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut login = Login::default();
    let mut listens: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(Ok(message)) = stream.next().await {
        let text = match message {
            WsMessage::Text(t) => t,
            WsMessage::Binary(_) => {
                let _ = out
                    .send(invalid(&Value::Null, "frames are JSON text, not binary"))
                    .await;
                continue;
            }
            WsMessage::Close(_) => break,
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
        };
        if text.len() > MAX_FRAME {
            let _ = out
                .send(invalid(
                    &Value::Null,
                    format!(
                        "a frame of {} bytes; at most {MAX_FRAME} are allowed",
                        text.len()
                    ),
                ))
                .await;
            continue;
        }
        let value: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                let _ = out
                    .send(invalid(
                        &Value::Null,
                        format!("a frame that is not JSON: {e}"),
                    ))
                    .await;
                continue;
            }
        };
        let mut value = value;
        let id = value
            .as_object_mut()
            .and_then(|o| o.remove("id"))
            .unwrap_or(Value::Null);
        let frame: Frame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                let _ = out
                    .send(invalid(
                        &id,
                        format!("not a request (ops: login, call, listen, unlisten, ack, begin, end): {e}"),
                    ))
                    .await;
                continue;
            }
        };
        match frame {
            Frame::Login { token, from } => {
                login = Login {
                    token: Some(token).filter(|t| !t.is_empty()),
                    from,
                };
                let _ = out.send(json!({"id": id, "result": "ok"})).await;
            }
            Frame::Unlisten { listen } => {
                if let Some(task) = listens.remove(&listen) {
                    task.abort();
                }
                let _ = out.send(json!({"id": id, "result": null})).await;
            }
            Frame::Listen {
                app,
                ca,
                session,
                after,
            } => {
                let listen = id.as_u64().unwrap_or(0);
                let request = login.request(pb::ListenRequest {
                    app,
                    ca,
                    session,
                    from: login.from.clone(),
                    after,
                });
                let (service, out) = (service.clone(), out.clone());
                let task = tokio::spawn(async move {
                    let mut stream = match service.listen(request).await {
                        Ok(s) => s.into_inner(),
                        Err(status) => {
                            let _ = out
                                .send(json!({"id": id, "error": status_json(&status)}))
                                .await;
                            return;
                        }
                    };
                    let _ = out.send(json!({"id": id, "result": "listening"})).await;
                    while let Some(item) = stream.next().await {
                        let frame = match item {
                            Ok(n) => json!({"listen": listen, "notification": {
                                "seq": n.seq,
                                "session": n.session,
                                "args": serde_json::from_str::<Value>(&n.args_json).unwrap_or(Value::Null),
                            }}),
                            Err(status) => {
                                let _ = out
                                    .send(json!({"listen": listen, "error": status_json(&status)}))
                                    .await;
                                return;
                            }
                        };
                        if out.send(frame).await.is_err() {
                            return;
                        }
                    }
                });
                if let Some(old) = listens.insert(listen, task) {
                    old.abort();
                }
            }
            other => {
                let (service, out, login) = (service.clone(), out.clone(), login.clone());
                tokio::spawn(async move {
                    let answer = match unary(&service, &login, other).await {
                        Ok((result, version)) => {
                            json!({"id": id, "result": result, "version": version})
                        }
                        Err(status) => json!({"id": id, "error": status_json(&status)}),
                    };
                    let _ = out.send(answer).await;
                });
            }
        }
    }
    for (_, task) in listens {
        task.abort();
    }
    drop(out);
    let _ = writer.await;
}

/// Runs a request that has one answer: its result and the checkpoint version holding it.
async fn unary(
    service: &CaService,
    login: &Login,
    frame: Frame,
) -> Result<(Value, u64), tonic::Status> {
    let from = login.from.clone();
    let parse = |text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| {
            CaError::exception(format!("an answer that is not JSON ({e})")).to_status()
        })
    };
    match frame {
        Frame::Call {
            app,
            ca,
            session,
            calls,
        } => {
            let calls = calls
                .into_iter()
                .map(|c| pb::MethodCall {
                    method: c.method,
                    args_json: Value::Array(c.args).to_string(),
                })
                .collect();
            let r = service
                .call(login.request(pb::CallRequest {
                    app,
                    ca,
                    calls,
                    session,
                    from,
                }))
                .await?
                .into_inner();
            Ok((parse(&r.result_json)?, r.version))
        }
        Frame::Ack {
            app,
            ca,
            session,
            seq,
        } => {
            let r = service
                .ack(login.request(pb::AckRequest {
                    app,
                    ca,
                    session,
                    from,
                    seq,
                }))
                .await?
                .into_inner();
            Ok((parse(&r.result_json)?, r.version))
        }
        Frame::Begin { app, ca, session } => {
            let r = service
                .begin(login.request(pb::SessionRequest {
                    app,
                    ca,
                    session,
                    from,
                }))
                .await?
                .into_inner();
            let memento = parse(&r.memento_json)?;
            Ok((json!({"nonce": r.nonce, "memento": memento}), r.version))
        }
        Frame::End {
            app,
            ca,
            session,
            nonce,
        } => {
            let r = service
                .end(login.request(pb::EndRequest {
                    app,
                    ca,
                    session,
                    from,
                    nonce,
                }))
                .await?
                .into_inner();
            Ok((json!(r.ended), r.version))
        }
        Frame::Login { .. } | Frame::Listen { .. } | Frame::Unlisten { .. } => {
            Err(CaError::invalid("not a request with one answer").to_status())
        }
    }
}

/// The `web` component (`ca-runtime#web`, env `endpoint`: the client endpoint's name): the
/// routes above, for the `http` component.
pub(crate) fn register(r: &mut components::Registry) -> Result<(), components::Error> {
    use components::{BoxError, FactoryArgs};
    r.register("ca-runtime#web", |a: FactoryArgs| async move {
        let name = crate::assembly::str_of(&a.env, "endpoint")?;
        let endpoint = a
            .context
            .get::<crate::assembly::EndpointPart>(&name)
            .ok_or_else(|| {
                format!(
                    "env endpoint: no client endpoint {name:?} before {}",
                    a.name()
                )
            })?;
        Ok::<_, BoxError>(crate::assembly::RoutesPart(routes(
            endpoint.service.clone(),
        )))
    })?;
    Ok(())
}
