//! Error codes. Hypercalls return `-errno` in RAX with Linux's numbering,
//! which is also Xen's public `errno.h` numbering on x86.

pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const ESRCH: i64 = 3;
pub const EINTR: i64 = 4;
/// map_vcpu_info: vcpu_info offset out of range or misaligned.
pub const ENXIO: i64 = 6;
pub const E2BIG: i64 = 7;
pub const EBADF: i64 = 9;
pub const EAGAIN: i64 = 11;
pub const ENOMEM: i64 = 12;
pub const EACCES: i64 = 13;
pub const EFAULT: i64 = 14;
pub const EBUSY: i64 = 16;
pub const EEXIST: i64 = 17;
pub const EINVAL: i64 = 22;
pub const ENOSPC: i64 = 28;
pub const ERANGE: i64 = 34;
pub const ENOSYS: i64 = 38;
pub const ENOTEMPTY: i64 = 39;
pub const ENODATA: i64 = 61;
pub const EOPNOTSUPP: i64 = 95;
pub const EISCONN: i64 = 106;
pub const EALREADY: i64 = 114;
