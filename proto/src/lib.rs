//! Spine's wire protocol: the `.proto` files and the code tonic/prost generate from them.
//!
//! - [`spine::v1::spine_client`] / [`spine::v1::spine_server`]: the client API (maps, subscribe,
//!   cluster status and membership).
//! - [`spine::v1::raft_peer_client`] / [`spine::v1::raft_peer_server`]: node-to-node Raft
//!   transport.
//!
//! Conversions to domain types live at the edge of each user of this crate, not here.

#![allow(missing_debug_implementations, clippy::all)]

/// Generated code, by protobuf package.
pub mod spine {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("spine.v1");
    }
}

pub use spine::v1;

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("spine_descriptor");
