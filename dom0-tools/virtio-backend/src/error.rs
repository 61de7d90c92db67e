//! What can go wrong: setting a device up ([`VirtioError`]), and a guest
//! queue the device refuses to serve ([`Fault`]).

/// Setting up or attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("kxen-vmm: {0}")]
    Control(String),
    #[error("virtio-attach: {0}")]
    Attach(String),
    #[error("disk: {0}")]
    Disk(#[from] kxen_blkback::BlkError),
    #[error("vif: {0}")]
    Net(#[from] kxen_netback::NetError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A guest queue or descriptor chain that breaks the virtio rules. The
/// device stops serving and reports it through the error eventfd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("empty descriptor chain (bad head index or unreadable table)")]
    EmptyChain,
    #[error("descriptor chain does not end (loop, bad next index or over 4 GiB)")]
    Unterminated,
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(usize),
    #[error("buffer {addr:#x}+{len:#x} outside guest RAM")]
    OutOfRam { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    #[error("request header too short ({0} bytes)")]
    ShortHeader(usize),
    #[error("no device-writable status byte")]
    NoStatus,
    #[error("device-writable descriptor in a transmit chain")]
    WritableTx,
    #[error("queue: {0}")]
    Queue(String),
}
