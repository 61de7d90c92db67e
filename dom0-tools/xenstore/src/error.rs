//! Errors: the errno names xenstore sends on the wire, and the library's own.

use std::path::PathBuf;

/// Why a xenstore request failed. On the wire an `XS_ERROR` reply carries the
/// name (`"ENOENT\0"`); the set is Xen's `xsd_errors` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum XsError {
    #[error("EINVAL")]
    Inval,
    #[error("EACCES")]
    Acces,
    #[error("EEXIST")]
    Exist,
    #[error("EISDIR")]
    IsDir,
    #[error("ENOENT")]
    NoEnt,
    #[error("ENOMEM")]
    NoMem,
    #[error("ENOSPC")]
    NoSpc,
    #[error("EIO")]
    Io,
    #[error("ENOTEMPTY")]
    NotEmpty,
    #[error("ENOSYS")]
    NoSys,
    #[error("EROFS")]
    RoFs,
    #[error("EBUSY")]
    Busy,
    #[error("EAGAIN")]
    Again,
    #[error("EISCONN")]
    IsConn,
    #[error("E2BIG")]
    TooBig,
    #[error("EPERM")]
    Perm,
}

impl XsError {
    /// The name sent on the wire (without the NUL).
    pub fn name(self) -> &'static str {
        match self {
            XsError::Inval => "EINVAL",
            XsError::Acces => "EACCES",
            XsError::Exist => "EEXIST",
            XsError::IsDir => "EISDIR",
            XsError::NoEnt => "ENOENT",
            XsError::NoMem => "ENOMEM",
            XsError::NoSpc => "ENOSPC",
            XsError::Io => "EIO",
            XsError::NotEmpty => "ENOTEMPTY",
            XsError::NoSys => "ENOSYS",
            XsError::RoFs => "EROFS",
            XsError::Busy => "EBUSY",
            XsError::Again => "EAGAIN",
            XsError::IsConn => "EISCONN",
            XsError::TooBig => "E2BIG",
            XsError::Perm => "EPERM",
        }
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        match self {
            XsError::Inval => libc::EINVAL,
            XsError::Acces => libc::EACCES,
            XsError::Exist => libc::EEXIST,
            XsError::IsDir => libc::EISDIR,
            XsError::NoEnt => libc::ENOENT,
            XsError::NoMem => libc::ENOMEM,
            XsError::NoSpc => libc::ENOSPC,
            XsError::Io => libc::EIO,
            XsError::NotEmpty => libc::ENOTEMPTY,
            XsError::NoSys => libc::ENOSYS,
            XsError::RoFs => libc::EROFS,
            XsError::Busy => libc::EBUSY,
            XsError::Again => libc::EAGAIN,
            XsError::IsConn => libc::EISCONN,
            XsError::TooBig => libc::E2BIG,
            XsError::Perm => libc::EPERM,
        }
    }

    /// Parse an error name as found in an `XS_ERROR` payload.
    pub fn from_name(name: &str) -> Option<XsError> {
        ALL.iter().copied().find(|e| e.name() == name)
    }
}

const ALL: [XsError; 16] = [
    XsError::Inval,
    XsError::Acces,
    XsError::Exist,
    XsError::IsDir,
    XsError::NoEnt,
    XsError::NoMem,
    XsError::NoSpc,
    XsError::Io,
    XsError::NotEmpty,
    XsError::NoSys,
    XsError::RoFs,
    XsError::Busy,
    XsError::Again,
    XsError::IsConn,
    XsError::TooBig,
    XsError::Perm,
];

/// Errors of the daemon itself (start-up, sockets, the state file).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Xs(#[from] XsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error("the daemon has been shut down")]
    ShutDown,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
