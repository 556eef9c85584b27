//! The browser client (issue 14): the host's web page in headless Chromium (Debian's
//! `chromium`, installed by `tests/browser/setup.sh` when missing), driven over the DevTools
//! protocol; and the WebSocket endpoint's answers to bad frames.

use std::time::{Duration, SystemTime};

use authz_aggregate::{Constraints, RootKey, attenuate, issue};
use ca_client::{MethodCall, Target};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sharing_map::{AppName, CaName};
use spine_tests::ca::CaHost;
use spine_tests::{Cluster, ClusterOpts, eventually};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

const APP: &str = "demo-counter";
const CA: &str = "alice-phone";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The path of Debian's chromium, installing it with the project's setup script if missing.
async fn chromium() -> anyhow::Result<std::path::PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("chromium"))
                .find(|p| p.is_file())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/setup.sh");
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "{} failed: {status}", script.display());
    find().ok_or_else(|| anyhow::anyhow!("chromium is still missing after {}", script.display()))
}

/// Headless Chromium with its DevTools endpoint, killed when dropped.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    next_id: u64,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(chromium().await?)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_string());
                }
            }
            anyhow::bail!("chromium exited without a DevTools endpoint")
        })
        .await
        .map_err(|_| anyhow::anyhow!("chromium did not start its DevTools endpoint in time"))??;
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        Ok(Self {
            _child: child,
            _profile: profile,
            socket,
            next_id: 1,
        })
    }

    /// Sends a DevTools command (to a page's `session`, if given) and returns its result.
    async fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            command["sessionId"] = json!(s);
        }
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .map_err(|_| anyhow::anyhow!("no answer to {method}"))?
                .ok_or_else(|| anyhow::anyhow!("DevTools closed"))??;
            let Message::Text(text) = message else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str())?;
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    anyhow::bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Opens `url` in a new tab; returns the tab's DevTools session.
    async fn open(&mut self, url: &str) -> anyhow::Result<String> {
        let target = self
            .send("Target.createTarget", json!({"url": url}), None)
            .await?;
        let attached = self
            .send(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                None,
            )
            .await?;
        attached["sessionId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no session in {attached}"))
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, session: &str, expression: &str) -> anyhow::Result<Value> {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
                Some(session),
            )
            .await?;
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page.
    async fn until(&mut self, session: &str, what: &str, expression: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(session, expression).await? == json!(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let page = self
                    .eval(session, "document.body.innerText")
                    .await
                    .unwrap_or_default();
                anyhow::bail!("the page never showed {what}; it shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn host_dir(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster.credentials().dir.join("..").join(name)
}

/// Alice's token, narrowed for the browser to a short expiry (as `spinectl token attenuate`
/// would).
fn browser_token(cluster: &Cluster) -> anyhow::Result<String> {
    let root = RootKey::from_private_hex(
        std::fs::read_to_string(cluster.credentials().root_key())?.trim(),
    )?;
    let alice = issue(
        &root,
        &Constraints::any()
            .app(&AppName::parse(APP)?)
            .ca(&CaName::parse(CA)?),
    )?;
    let short = attenuate(
        &root.public(),
        &alice,
        &Constraints::any().expires_at(SystemTime::now() + Duration::from_secs(600)),
    )?;
    Ok(short.to_base64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_calls_a_method_and_shows_notifications_pushed_by_another_client()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let token = browser_token(&cluster)?;
    let mut browser = Browser::start().await?;
    let url = format!(
        "http://{}/#token={token}&app={APP}&ca={CA}&session=browser",
        host.http_endpoint()
    );
    let page = browser.open(&url).await?;
    browser
        .until(
            &page,
            "that it listens",
            "document.getElementById('status').textContent.startsWith('listening')",
        )
        .await?;
    // The page calls a method: it notifies the session the page listens to.
    browser
        .eval(
            &page,
            r#"document.getElementById('method').value = 'notify';
               document.getElementById('args').value = '["from the page", "browser"]';
               document.getElementById('send').click(); true"#,
        )
        .await?;
    browser
        .until(
            &page,
            "the call's result",
            "document.getElementById('result').textContent.includes('from the page')",
        )
        .await?;
    let shows = |text: &str| {
        format!(
            "[...document.querySelectorAll('#notifications li')].some(li => li.textContent.includes({}))",
            json!(text)
        )
    };
    browser
        .until(&page, "its own notification", &shows("from the page"))
        .await?;
    // Another client notifies the session: the page shows it as it commits.
    let other = host.client(&cluster.token()).await?;
    other
        .call_as(
            &Target::new(APP, CA),
            vec![MethodCall::new(
                "notify",
                vec![json!("pushed by another client"), json!("browser")],
            )],
        )
        .await?;
    browser
        .until(
            &page,
            "the pushed notification",
            &shows("pushed by another client"),
        )
        .await?;
    // The page acknowledged both: they left the session's queue.
    eventually("the page's acks", Duration::from_secs(20), || {
        let other = other.clone();
        async move {
            let view = other.inspect(APP, CA).await.ok()?;
            view["sessions"]
                .get("browser")
                .is_none_or(|s| s["queue"].as_array().is_none_or(|q| q.is_empty()))
                .then_some(())
        }
    })
    .await?;
    // A method error shows as such.
    browser
        .eval(
            &page,
            r#"document.getElementById('method').value = 'fail';
               document.getElementById('args').value = '["no stock"]';
               document.getElementById('send').click(); true"#,
        )
        .await?;
    browser
        .until(
            &page,
            "the app error",
            "document.getElementById('result').textContent === 'app_error: no stock'",
        )
        .await?;
    Ok(())
}

async fn ws_request(socket: &mut Socket, frame: Value) -> anyhow::Result<Value> {
    socket.send(Message::Text(frame.to_string().into())).await?;
    ws_answer(socket).await
}

async fn ws_answer(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .map_err(|_| anyhow::anyhow!("no answer"))?
            .ok_or_else(|| anyhow::anyhow!("the connection closed"))??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(text.as_str())?);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_frames_get_a_clear_error_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), vec![]).await?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", host.http_endpoint())).await?;
    // Without a login: refused with the same code as over gRPC.
    let r = ws_request(
        &mut ws,
        json!({"id": 1, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "get"}]}),
    )
    .await?;
    assert_eq!(r["error"]["code"], json!("not_authorized"), "{r}");
    let r = ws_request(
        &mut ws,
        json!({"id": 2, "op": "login", "token": browser_token(&cluster)?}),
    )
    .await?;
    assert_eq!(r, json!({"id": 2, "result": "ok"}));
    let r = ws_request(
        &mut ws,
        json!({"id": 3, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "increment", "args": [2]}]}),
    )
    .await?;
    assert_eq!(r["result"], json!(2), "{r}");
    let version = r["version"].clone();

    let bad: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "not JSON"),
        (Message::Text("[1, 2]".into()), "not a request"),
        (Message::Text(json!({"id": 4, "op": "explode"}).to_string().into()), "not a request"),
        (
            Message::Text(json!({"id": 5, "op": "call", "app": APP, "ca": CA}).to_string().into()),
            "calls",
        ),
        (
            Message::Text(
                json!({"id": 6, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "nope"}]})
                    .to_string()
                    .into(),
            ),
            "no method \"nope\"",
        ),
        (
            Message::Text(
                json!({"id": 7, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "increment", "args": ["x"]}]})
                    .to_string()
                    .into(),
            ),
            "argument 1 (n)",
        ),
        (
            Message::Text(
                json!({"id": 8, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "increment", "args": [1], "extra": true}]})
                    .to_string()
                    .into(),
            ),
            "unknown field",
        ),
        (
            Message::Text(
                json!({"id": 9, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "increment", "args": ["z".repeat(600 * 1024)]}]})
                    .to_string()
                    .into(),
            ),
            "at most 524288 are allowed",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "not binary"),
        (
            Message::Text(
                json!({"id": 10, "op": "listen", "app": APP, "ca": CA, "session": "no good"})
                    .to_string()
                    .into(),
            ),
            "session name",
        ),
    ];
    for (frame, says) in bad {
        ws.send(frame).await?;
        let r = ws_answer(&mut ws).await?;
        assert_eq!(r["error"]["code"], json!("invalid"), "{r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message} should say {says}");
    }
    // The connection goes on, and nothing changed.
    let r = ws_request(
        &mut ws,
        json!({"id": 11, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "get"}]}),
    )
    .await?;
    assert_eq!(r["result"], json!(2), "{r}");
    assert_eq!(r["version"], version, "a bad frame committed something");
    // Listening and acknowledging over the WebSocket.
    let r = ws_request(
        &mut ws,
        json!({"id": 12, "op": "listen", "app": APP, "ca": CA, "session": "ws"}),
    )
    .await?;
    assert_eq!(r, json!({"id": 12, "result": "listening"}));
    ws.send(Message::Text(
        json!({"id": 13, "op": "call", "app": APP, "ca": CA, "calls": [{"method": "notify", "args": ["hi", "ws"]}]})
            .to_string()
            .into(),
    ))
    .await?;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(ws_answer(&mut ws).await?);
    }
    let n = got
        .iter()
        .find(|m| m.get("notification").is_some())
        .ok_or_else(|| anyhow::anyhow!("no notification in {got:?}"))?;
    assert_eq!(n["listen"], json!(12));
    assert_eq!(n["notification"]["args"], json!(["hi"]));
    let seq = n["notification"]["seq"].clone();
    let r = ws_request(
        &mut ws,
        json!({"id": 14, "op": "ack", "app": APP, "ca": CA, "session": "ws", "seq": seq}),
    )
    .await?;
    assert!(r.get("error").is_none(), "{r}");
    let r = ws_request(
        &mut ws,
        json!({"id": 15, "op": "call", "app": APP, "ca": CA, "session": "ws", "calls": [{"method": "outq"}]}),
    )
    .await?;
    assert_eq!(r["result"], json!([]), "{r}");
    Ok(())
}
