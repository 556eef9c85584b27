//! A minimal etcd v3 client: the generated gRPC stubs of `proto/etcd.proto` and the few calls the
//! benchmark makes (compare-and-swap transactions, puts, ranges, watches, member status).

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Generated from `proto/etcd.proto` (etcd's own package name and field numbers).
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use pb::request_op::Request;
use pb::watch_client::WatchClient;
use pb::watch_request::RequestUnion;

/// Largest message accepted: a re-list after compaction can be large.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// One HTTP/2 connection to one etcd member. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct EtcdConn {
    endpoint: String,
    channel: Channel,
}

impl EtcdConn {
    /// Connects to `endpoint` (`host:port` or `http://host:port`).
    pub async fn connect(endpoint: &str) -> anyhow::Result<Self> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(uri)
            .with_context(|| format!("bad etcd endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to etcd at {endpoint}"))?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            channel,
        })
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Puts `value` at `key`; returns the revision of the put (the key's new mod revision).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<i64> {
        let answer = self
            .kv()
            .put(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("etcd put on {}", self.endpoint))?
            .into_inner();
        revision(answer.header.as_ref())
    }

    /// Puts `value` at `key` only if the key's mod revision is still `mod_revision` (one txn);
    /// returns the new mod revision, or `None` on a conflict.
    pub async fn cas(
        &self,
        key: &[u8],
        mod_revision: i64,
        value: &[u8],
    ) -> anyhow::Result<Option<i64>> {
        let answer = self
            .kv()
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.to_vec(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                    range_end: Vec::new(),
                }],
                success: vec![pb::RequestOp {
                    request: Some(Request::RequestPut(pb::PutRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            })
            .await
            .with_context(|| format!("etcd txn on {}", self.endpoint))?
            .into_inner();
        if !answer.succeeded {
            return Ok(None);
        }
        // A txn whose success branch is one put produces exactly one revision: the header's.
        revision(answer.header.as_ref()).map(Some)
    }

    /// Puts every `(key, mod_revision, value)` in one txn, if every key's mod revision is still
    /// the one given; returns the txn's revision (every key's new mod revision), or `None` when
    /// a compare failed (then nothing was put).
    pub async fn cas_all(&self, writes: &[(&[u8], i64, &[u8])]) -> anyhow::Result<Option<i64>> {
        let compare = writes
            .iter()
            .map(|&(key, mod_revision, _)| pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.to_vec(),
                target_union: Some(TargetUnion::ModRevision(mod_revision)),
                range_end: Vec::new(),
            })
            .collect();
        let success = writes
            .iter()
            .map(|&(key, _, value)| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        let answer = self
            .kv()
            .txn(pb::TxnRequest {
                compare,
                success,
                failure: Vec::new(),
            })
            .await
            .with_context(|| format!("etcd txn on {}", self.endpoint))?
            .into_inner();
        if !answer.succeeded {
            return Ok(None);
        }
        // One txn is one revision: every key it put has it as its mod revision.
        revision(answer.header.as_ref()).map(Some)
    }

    /// Every key with `prefix` (linearizable); returns the keys and values and the revision
    /// the read saw.
    pub async fn list_prefix(&self, prefix: &[u8]) -> anyhow::Result<(Vec<pb::KeyValue>, i64)> {
        let answer = self
            .kv()
            .range(pb::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                ..Default::default()
            })
            .await
            .with_context(|| format!("etcd range on {}", self.endpoint))?
            .into_inner();
        let rev = revision(answer.header.as_ref())?;
        Ok((answer.kvs, rev))
    }

    /// This member's status: (its id, the leader's id, its applied raft index).
    pub async fn status(&self) -> anyhow::Result<(u64, u64, u64)> {
        let answer = MaintenanceClient::new(self.channel.clone())
            .status(pb::StatusRequest {})
            .await
            .with_context(|| format!("etcd status of {}", self.endpoint))?
            .into_inner();
        let member = answer.header.map(|h| h.member_id).unwrap_or_default();
        Ok((member, answer.leader, answer.raft_applied_index))
    }

    /// Opens one watch stream with a watcher per `(key, prefix, start_revision)` (see
    /// [`WatchStream::watch`]); the watchers go out with the call.
    pub async fn watch(&self, watchers: &[(&[u8], bool, i64)]) -> anyhow::Result<WatchStream> {
        let (requests, rx) = mpsc::unbounded_channel();
        // etcd (grpc-go) sends a stream's response headers only with its first message, so the
        // call completes only once a request is in: the first watchers go out with it.
        for &(key, prefix, start) in watchers {
            let _ = requests.send(create_request(key, prefix, start));
        }
        let responses = WatchClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .watch(UnboundedReceiverStream::new(rx))
            .await
            .with_context(|| format!("etcd watch on {}", self.endpoint))?
            .into_inner();
        Ok(WatchStream {
            _requests: requests,
            responses,
        })
    }
}

fn create_request(key: &[u8], prefix: bool, start_revision: i64) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.to_vec(),
            range_end: if prefix { prefix_end(key) } else { Vec::new() },
            start_revision,
            ..Default::default()
        })),
    }
}

/// The end of the key range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn revision(header: Option<&pb::ResponseHeader>) -> anyhow::Result<i64> {
    header
        .map(|h| h.revision)
        .context("etcd answered without a response header")
}

/// One bidirectional watch stream carrying any number of watchers.
#[derive(Debug)]
pub struct WatchStream {
    /// Held open: etcd ends the watch when the request side closes.
    _requests: mpsc::UnboundedSender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl WatchStream {
    /// The next response; fails when the stream ends or breaks.
    pub async fn next(&mut self) -> anyhow::Result<pb::WatchResponse> {
        match self.responses.message().await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => bail!("the etcd watch stream ended"),
            Err(status) => Err(status).context("the etcd watch stream broke"),
        }
    }

    /// Waits until `n` watchers were created on this stream; events that arrive meanwhile are
    /// returned for the caller to account for.
    pub async fn created(&mut self, n: usize) -> anyhow::Result<Vec<pb::WatchResponse>> {
        let mut created = 0;
        let mut early = Vec::new();
        while created < n {
            let response = self.next().await?;
            if response.canceled {
                bail!(
                    "etcd refused a watch: {} (compacted to revision {})",
                    response.cancel_reason,
                    response.compact_revision
                );
            }
            if response.created {
                created += 1;
            }
            if !response.events.is_empty() {
                early.push(response);
            }
        }
        Ok(early)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end(b"bench/"), b"bench0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
