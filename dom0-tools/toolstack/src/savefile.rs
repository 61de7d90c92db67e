//! xl's savefile header, shared by `kxl save`/`restore` (kxend writes and
//! reads files) and `kxl migrate` (the same header starts the stream).
//!
//! Layout (xl's): the 32-byte magic "Xen saved domain, xl format\n \0 \r",
//! then four native-endian u32s: byte-order marker 0x01020304, mandatory
//! flags, optional flags, the config's length; then the config. kxen
//! writes mandatory flags JSON | STREAMv2 and a JSON config (its parsed
//! xl.cfg, where xl puts libxl's domain config). libxl's migration stream
//! follows.
//!
//! A restore or a migration reads this from a file or a pipe it cannot
//! trust: [`read_header`] bounds the config's length before it allocates
//! and refuses any flag it does not know.

use std::io::{Read, Write};

use crate::config::DomainConfig;

/// xl's savefile magic.
pub const MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
pub const BYTEORDER: u32 = 0x0102_0304;
/// Mandatory flag: the config is JSON.
pub const FLAG_JSON: u32 = 1;
/// Mandatory flag: libxl's migration stream v2 follows.
pub const FLAG_STREAM_V2: u32 = 2;
/// The only mandatory flags kxen writes and reads.
pub const FLAGS: u32 = FLAG_JSON | FLAG_STREAM_V2;
/// The most config bytes a restore reads.
pub const MAX_CONFIG: u32 = 1 << 20;
/// Bytes before the config.
pub const HEADER_LEN: usize = 48;

/// Why a savefile's header or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum SavefileError {
    #[error("truncated savefile header")]
    TruncatedHeader,
    #[error("not an xl savefile (bad magic)")]
    BadMagic,
    #[error("savefile has the other byte order")]
    ByteOrder,
    #[error(
        "savefile has mandatory flags {0:#x}; kxen reads only {FLAGS:#x} (JSON config, stream v2)"
    )]
    Flags(u32),
    #[error("savefile config of {0} bytes is too large")]
    ConfigTooLarge(u32),
    #[error("truncated savefile config")]
    TruncatedConfig,
    #[error("savefile config: {0}")]
    Config(#[from] serde_json::Error),
    #[error("savefile config of {0} bytes does not fit the header")]
    ConfigLength(usize),
    #[error("writing the savefile header: {0}")]
    Write(#[from] std::io::Error),
}

/// Write xl's header and `config` (as JSON) to `out`; returns the bytes
/// written.
pub fn write_header(out: &mut impl Write, config: &DomainConfig) -> Result<u64, SavefileError> {
    let json = serde_json::to_vec(config)?;
    if json.len() > MAX_CONFIG as usize {
        return Err(SavefileError::ConfigLength(json.len()));
    }
    let mut header = Vec::with_capacity(HEADER_LEN + json.len());
    header.extend_from_slice(MAGIC);
    for word in [BYTEORDER, FLAGS, 0, json.len() as u32] {
        header.extend_from_slice(&word.to_ne_bytes());
    }
    header.extend_from_slice(&json);
    out.write_all(&header)?;
    Ok(header.len() as u64)
}

/// Read xl's header and the config it carries from `input`, which stops
/// right after the config (where libxl's stream begins).
pub fn read_header(input: &mut impl Read) -> Result<DomainConfig, SavefileError> {
    let mut head = [0u8; HEADER_LEN];
    input
        .read_exact(&mut head)
        .map_err(|_| SavefileError::TruncatedHeader)?;
    if &head[..32] != MAGIC {
        return Err(SavefileError::BadMagic);
    }
    let word = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(32) != BYTEORDER {
        return Err(SavefileError::ByteOrder);
    }
    let mandatory = word(36);
    if mandatory != FLAGS {
        return Err(SavefileError::Flags(mandatory));
    }
    // Optional flags (word 40) are the ones a reader may ignore.
    let len = word(44);
    if len > MAX_CONFIG {
        return Err(SavefileError::ConfigTooLarge(len));
    }
    let mut config = vec![0u8; len as usize];
    input
        .read_exact(&mut config)
        .map_err(|_| SavefileError::TruncatedConfig)?;
    Ok(serde_json::from_slice(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DomainConfig {
        crate::config::parse_str("name=\"guest\"\nmemory=64\nkernel=\"/k\"\n", "t.cfg")
            .unwrap()
            .0
    }

    #[test]
    fn header_round_trips_and_stops_at_the_stream() {
        let mut bytes = Vec::new();
        let n = write_header(&mut bytes, &config()).unwrap();
        assert_eq!(n as usize, bytes.len());
        bytes.extend_from_slice(b"STREAM");
        let mut input = bytes.as_slice();
        assert_eq!(read_header(&mut input).unwrap(), config());
        assert_eq!(input, b"STREAM");
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut good = Vec::new();
        write_header(&mut good, &config()).unwrap();
        for cut in 0..good.len() {
            assert!(read_header(&mut &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[44..48].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            read_header(&mut huge.as_slice()),
            Err(SavefileError::ConfigTooLarge(_))
        ));
        let mut flags = good.clone();
        flags[36] |= 4;
        assert!(matches!(
            read_header(&mut flags.as_slice()),
            Err(SavefileError::Flags(_))
        ));
        let mut magic = good;
        magic[0] = b'x';
        assert!(matches!(
            read_header(&mut magic.as_slice()),
            Err(SavefileError::BadMagic)
        ));
    }
}
