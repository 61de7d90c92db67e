//! Split-driver I/O protocols (`xen/include/public/io`): the generic shared
//! ring and the per-device request/response layouts that travel on it.

pub mod blkif;
pub mod netif;
pub mod ring;
