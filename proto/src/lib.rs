//! Spine's wire protocol: the `.proto` files and the code tonic/prost generate from them.
//!
//! - [`spine::v1::spine_client`] / [`spine::v1::spine_server`]: the client API (maps, subscribe,
//!   cluster status and membership).
//! - [`spine::v1::raft_peer_client`] / [`spine::v1::raft_peer_server`]: node-to-node Raft
//!   transport.
//! - [`agent_v1::node_agent_client`] / [`agent_v1::node_agent_server`]: the node agent's local API
//!   (pin, get, invoke, release, watch, status), served by `spine-agent` on a Unix socket.
//! - [`ca_v1::ca_client`] / [`ca_v1::ca_server`]: the CA host's client API (call methods of CAs).
//!
//! Conversions to domain types live at the edge of each user of this crate, not here.

#![allow(missing_debug_implementations, clippy::all)]

/// Generated code, by protobuf package.
pub mod spine {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("spine.v1");
    }

    /// The node agent's local API.
    pub mod agent {
        /// Version 1 of the agent API.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/agent/spine.agent.v1.rs"));
        }
    }
}

/// The CA host's client API.
pub mod ca {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/ca/ca.v1.rs"));
    }
}

pub use ca::v1 as ca_v1;
pub use spine::agent::v1 as agent_v1;
pub use spine::v1;

/// The encoded file descriptor set of `spine.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spine_descriptor");

/// The encoded file descriptor set of `ca.proto`, for the CA host's gRPC reflection.
pub const CA_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ca_descriptor");

/// The encoded file descriptor set of `agent.proto` (with `spine.proto`, which it imports).
pub const AGENT_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("agent_descriptor");
