//! The xenstore wire protocol and its ring page
//! (`struct xenstore_domain_interface`).
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const RING_SIZE: usize = 1024;
pub const OFFSET_REQ: usize = 0x000;
pub const OFFSET_RSP: usize = 0x400;
pub const OFFSET_REQ_CONS: usize = 0x800;
pub const OFFSET_REQ_PROD: usize = 0x804;
pub const OFFSET_RSP_CONS: usize = 0x808;
pub const OFFSET_RSP_PROD: usize = 0x80c;
pub const OFFSET_SERVER_FEATURES: usize = 0x810;
pub const OFFSET_CONNECTION: usize = 0x814;
pub const OFFSET_ERROR: usize = 0x818;

/// Largest payload of one message.
pub const PAYLOAD_MAX: usize = 4096;

/// `struct xsd_sockmsg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageHeader {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

pub const XS_CONTROL: u32 = 0;
pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_GET_PERMS: u32 = 3;
pub const XS_WATCH: u32 = 4;
pub const XS_UNWATCH: u32 = 5;
pub const XS_TRANSACTION_START: u32 = 6;
pub const XS_TRANSACTION_END: u32 = 7;
pub const XS_INTRODUCE: u32 = 8;
pub const XS_RELEASE: u32 = 9;
pub const XS_GET_DOMAIN_PATH: u32 = 10;
pub const XS_WRITE: u32 = 11;
pub const XS_MKDIR: u32 = 12;
pub const XS_RM: u32 = 13;
pub const XS_SET_PERMS: u32 = 14;
pub const XS_WATCH_EVENT: u32 = 15;
pub const XS_ERROR: u32 = 16;
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
pub const XS_RESUME: u32 = 18;
pub const XS_SET_TARGET: u32 = 19;
pub const XS_RESET_WATCHES: u32 = 21;
pub const XS_DIRECTORY_PART: u32 = 22;

/// Number of message types (`XS_TYPE_COUNT`): one past [`XS_DIRECTORY_PART`].
pub const XS_TYPE_COUNT: u32 = 23;

/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest path relative to a domain's home (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

/// `server_features`: the ring can be reset through `connection`.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features`: the server reports why it stopped in `error`.
pub const SERVER_FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state.
pub const CONNECTED: u32 = 0;
/// `connection`: the guest asked for a reset; the server answers with
/// [`CONNECTED`].
pub const RECONNECT: u32 = 1;

/// `error`: no error.
pub const ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const ERROR_COMM: u32 = 1;
/// `error`: inconsistent producer or consumer index.
pub const ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long).
pub const ERROR_PROTO: u32 = 3;
