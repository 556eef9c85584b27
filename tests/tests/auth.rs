//! Authentication and authorization against real nodes: without a token every call but health
//! is refused; a CA's token writes only that CA's maps and reads only its app; admin calls need
//! an admin token; expired, tampered and foreign tokens are refused; refused requests change
//! nothing.

use std::time::{Duration, SystemTime};

use authz_aggregate::{Constraints, RootKey, Token, TokenError, attenuate, issue};
use sharing_map::{AppName, CaName};
use spine_proto::v1 as pb;
use spine_tests::{Cluster, ClusterOpts, RawClient, reflection, req};
use tonic::Code;

fn root_key(cluster: &Cluster) -> anyhow::Result<RootKey> {
    let hex = std::fs::read_to_string(cluster.credentials().root_key())?;
    Ok(RootKey::from_private_hex(hex.trim())?)
}

/// The code of every client-API call made with `c` (none of them may succeed).
async fn every_call(c: &mut RawClient) -> Vec<(&'static str, Code)> {
    fn code<T>(r: Result<T, tonic::Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
    let sub = tokio_stream::iter(vec![pb::SubscribeRequest {
        op: Some(pb::subscribe_request::Op::Add(pb::Subscription {
            app: "acme-shop".into(),
            map: "alice-phone-x".into(),
            prefix: false,
            from_version: None,
        })),
    }]);
    let subscribe = match c.subscribe(sub).await {
        Ok(stream) => code(stream.into_inner().message().await),
        Err(s) => s.code(),
    };
    vec![
        (
            "CreateMap",
            code(
                c.create_map(req::create("acme-shop", "alice-phone-x"))
                    .await,
            ),
        ),
        (
            "Update",
            code(
                c.update(req::update(
                    "acme-shop",
                    "alice-phone-x",
                    0,
                    "u1",
                    vec![req::put("k", "1")],
                ))
                .await,
            ),
        ),
        (
            "UpdateBatch",
            code(
                c.update_batch(pb::UpdateBatchRequest {
                    updates: vec![req::update(
                        "acme-shop",
                        "alice-phone-x",
                        0,
                        "u1",
                        vec![req::put("k", "1")],
                    )],
                })
                .await,
            ),
        ),
        (
            "GetMap",
            code(
                c.get_map(pb::GetMapRequest {
                    app: "acme-shop".into(),
                    map: "alice-phone-x".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ListMaps",
            code(
                c.list_maps(pb::ListMapsRequest {
                    app: "acme-shop".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "History",
            code(
                c.history(pb::HistoryRequest {
                    app: "acme-shop".into(),
                    map: "alice-phone-x".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        ("Subscribe", subscribe),
        (
            "ClusterStatus",
            code(c.cluster_status(pb::ClusterStatusRequest {}).await),
        ),
        (
            "AddLearner",
            code(
                c.add_learner(pb::AddLearnerRequest {
                    id: 9,
                    addr: "127.0.0.1:1".into(),
                })
                .await,
            ),
        ),
        (
            "Promote",
            code(c.promote(pb::PromoteRequest { id: 9 }).await),
        ),
        (
            "RemoveNode",
            code(c.remove_node(pb::RemoveNodeRequest { id: 9 }).await),
        ),
        (
            "TransferLeader",
            code(c.transfer_leader(pb::TransferLeaderRequest { id: 1 }).await),
        ),
        ("Digest", code(c.digest(pb::DigestRequest {}).await)),
    ]
}

#[tokio::test]
async fn without_a_valid_token_every_call_but_health_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let root = root_key(&cluster)?;
    let admin = issue(&root, &Constraints::any())?;
    let mut flipped = admin.as_bytes().to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let expired = issue(
        &root,
        &Constraints::any().expires_at(SystemTime::now() - Duration::from_secs(60)),
    )?;
    let foreign = issue(&RootKey::generate(), &Constraints::any())?;
    let bad_tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not base64", Some("%%%".into())),
        (
            "one flipped byte",
            Some(Token::from_bytes(flipped).to_base64()),
        ),
        ("expired", Some(expired.to_base64())),
        ("another root key", Some(foreign.to_base64())),
    ];
    for (what, token) in &bad_tokens {
        let mut c = cluster.raw_with(1, token.as_deref()).await?;
        for (call, code) in every_call(&mut c).await {
            assert_eq!(code, Code::Unauthenticated, "{what}: {call}");
        }
        // Peer traffic and reflection are behind the same door.
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.endpoint(1)))?
                .connect()
                .await?;
        let mut peer = pb::raft_peer_client::RaftPeerClient::new(ch.clone());
        let mut send = tonic::Request::new(pb::RaftBatch {
            from: 2,
            messages: vec![],
        });
        if let Some(t) = token {
            send.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let refused = peer.send(send).await.err().map(|s| s.code());
        assert_eq!(
            refused,
            Some(Code::Unauthenticated),
            "{what}: RaftPeer.Send"
        );
        if token.is_none() {
            for (version, listed) in [
                ("v1", reflection::services_v1(ch.clone(), None).await),
                (
                    "v1alpha",
                    reflection::services_v1alpha(ch.clone(), None).await,
                ),
            ] {
                let code = listed
                    .err()
                    .and_then(|e| e.downcast_ref::<tonic::Status>().map(|s| s.code()));
                assert_eq!(code, Some(Code::Unauthenticated), "reflection {version}");
            }
            // Health needs no token.
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner()
                .status;
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
        }
    }
    // With a token, both reflection versions describe the API.
    let ch = cluster.grpc_endpoint(1)?.connect().await?;
    let v1 = reflection::services_v1(ch.clone(), Some(&cluster.token())).await?;
    let v1alpha = reflection::services_v1alpha(ch, Some(&cluster.token())).await?;
    for (version, listed) in [("v1", v1), ("v1alpha", v1alpha)] {
        assert!(
            listed.iter().any(|s| s == "spine.v1.Spine"),
            "reflection {version} lists {listed:?}"
        );
    }
    // Nothing was created by any of the refused calls; the admin token works.
    let digest = cluster.raw(1).await?.digest(pb::DigestRequest {}).await?;
    assert_eq!(digest.into_inner().maps, 0);
    Ok(())
}

#[tokio::test]
async fn a_ca_token_writes_only_its_own_maps_and_reads_only_its_app() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let root = root_key(&cluster)?;
    let shop = AppName::parse("acme-shop")?;
    let alice_phone = CaName::parse("alice-phone")?;
    let alice = issue(&root, &Constraints::any().app(&shop).ca(&alice_phone))?;
    let mut c = cluster.raw_with(2, Some(&alice.to_base64())).await?;
    let mut admin = cluster.raw(1).await?;

    // Its own map: create and write.
    c.create_map(req::create("acme-shop", "alice-phone-x"))
        .await?;
    c.update(req::update(
        "acme-shop",
        "alice-phone-x",
        0,
        "a1",
        vec![req::put("k", "1")],
    ))
    .await?;
    // Another owner's or another CA's maps: refused, and nothing changes.
    admin
        .create_map(req::create("acme-shop", "bob-phone-x"))
        .await?;
    for map in ["bob-phone-x", "alice-tablet-x"] {
        let e = c
            .create_map(req::create("acme-shop", map))
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(e, Some(Code::PermissionDenied), "create {map}");
        let e = c
            .update(req::update(
                "acme-shop",
                map,
                0,
                "evil",
                vec![req::put("k", "2")],
            ))
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(e, Some(Code::PermissionDenied), "update {map}");
    }
    // In a batch, authorization is per update: the foreign one is refused, its own applies.
    let batch = c
        .update_batch(pb::UpdateBatchRequest {
            updates: vec![
                req::update(
                    "acme-shop",
                    "bob-phone-x",
                    0,
                    "evil2",
                    vec![req::put("k", "3")],
                ),
                req::update(
                    "acme-shop",
                    "alice-phone-x",
                    1,
                    "a2",
                    vec![req::put("k", "2")],
                ),
            ],
        })
        .await?
        .into_inner();
    let codes: Vec<Code> = batch
        .results
        .iter()
        .map(|r| Code::from_i32(r.code))
        .collect();
    assert_eq!(codes, vec![Code::PermissionDenied, Code::Ok], "{batch:?}");
    // Its own map in another app: refused too.
    let e = c
        .create_map(req::create("acme-mail", "alice-phone-x"))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(e, Some(Code::PermissionDenied));
    let listed = admin
        .list_maps(pb::ListMapsRequest {
            app: "acme-shop".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .maps;
    let versions: Vec<(String, u64)> = listed.into_iter().map(|m| (m.map, m.version)).collect();
    assert_eq!(
        versions,
        [
            // 1 by its update, 2 by its update in the batch.
            ("alice-phone-x".to_string(), 2),
            ("bob-phone-x".to_string(), 0)
        ]
    );

    // Reads: any map of its app, none of another app.
    c.get_map(pb::GetMapRequest {
        app: "acme-shop".into(),
        map: "bob-phone-x".into(),
        ..Default::default()
    })
    .await?;
    let e = c
        .list_maps(pb::ListMapsRequest {
            app: "acme-mail".into(),
            ..Default::default()
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(e, Some(Code::PermissionDenied));
    let sub = tokio_stream::iter(vec![pb::SubscribeRequest {
        op: Some(pb::subscribe_request::Op::Add(pb::Subscription {
            app: "acme-mail".into(),
            map: "bob-".into(),
            prefix: true,
            from_version: None,
        })),
    }]);
    let code = match c.subscribe(sub).await {
        Ok(s) => s.into_inner().message().await.err().map(|s| s.code()),
        Err(s) => Some(s.code()),
    };
    assert_eq!(code, Some(Code::PermissionDenied));

    // Admin calls: not with a CA's token.
    c.cluster_status(pb::ClusterStatusRequest {}).await?;
    for code in [
        c.digest(pb::DigestRequest {}).await.err().map(|s| s.code()),
        c.transfer_leader(pb::TransferLeaderRequest { id: 2 })
            .await
            .err()
            .map(|s| s.code()),
        c.remove_node(pb::RemoveNodeRequest { id: 3 })
            .await
            .err()
            .map(|s| s.code()),
    ] {
        assert_eq!(code, Some(Code::PermissionDenied));
    }
    assert_eq!(cluster.status(1).await?.nodes.len(), 3);

    // Attenuation narrows only; the narrowed token still writes alice-phone's maps.
    let pubkey = root.public();
    assert!(matches!(
        attenuate(&pubkey, &alice, &Constraints::any().ca_owner("bob")),
        Err(TokenError::Broader { .. })
    ));
    let short = attenuate(
        &pubkey,
        &alice,
        &Constraints::any().expires_at(SystemTime::now() + Duration::from_secs(600)),
    )?;
    let mut narrowed = cluster.raw_with(3, Some(&short.to_base64())).await?;
    narrowed
        .update(req::update(
            "acme-shop",
            "alice-phone-x",
            1,
            "a2",
            vec![req::put("k", "3")],
        ))
        .await?;
    let e = narrowed
        .create_map(req::create("acme-shop", "bob-phone-y"))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(e, Some(Code::PermissionDenied));
    cluster.wait_converged(Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test]
async fn with_tls_nodes_talk_mutual_tls_and_clients_need_the_ca() -> anyhow::Result<()> {
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            tls: true,
            ..ClusterOpts::default()
        },
    )
    .await?;
    // Replication works over mutual TLS between the nodes.
    let client = cluster.client()?;
    let app = AppName::parse("acme-shop")?;
    let map = sharing_map::MapName::parse("alice-phone-tls")?;
    client.create_map(&app, &map, vec![]).await?;
    for i in 0..5u32 {
        client
            .put(
                &app,
                &map,
                vec![(
                    std::sync::Arc::from("k"),
                    Some(sharing_map::Entry::value(serde_json::json!(i))),
                )],
                sharing_map::UpdateId::parse(&format!("t{i}"))?,
            )
            .await?;
    }
    let digest = cluster.wait_converged(Duration::from_secs(20)).await?;
    assert_eq!(digest.maps, 1);

    // A plaintext client gets no answer from a TLS port.
    let plain = spine_client::Client::builder(vec![cluster.endpoint(1)])
        .token(cluster.token())
        .timeout(Duration::from_secs(2))
        .build()?;
    assert!(plain.get_map(&app, &map, false).await.is_err());

    // A client that trusts the CA but presents no certificate may not pose as a peer, even
    // with the admin token.
    let ch = cluster.grpc_endpoint(1)?.connect().await?;
    let mut peer = pb::raft_peer_client::RaftPeerClient::new(ch);
    let mut send = tonic::Request::new(pb::RaftBatch {
        from: 2,
        messages: vec![],
    });
    send.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", cluster.token()).parse()?,
    );
    let code = peer.send(send).await.err().map(|s| s.code());
    assert_eq!(code, Some(Code::PermissionDenied));
    Ok(())
}
