//! CRC-32 (IEEE 802.3, the zlib/`crc32` one: reflected polynomial
//! 0xEDB88320, initial value and final XOR all ones), so that a host-side
//! test computes the same value for the bytes the guest wrote or read with
//! any ordinary CRC-32 library.

const POLY: u32 = 0xedb8_8320;

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static TABLE: [u32; 256] = table();

/// A running CRC-32: feed bytes with [`Crc32::update`], read [`Crc32::value`].
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub const fn new() -> Self {
        Crc32(!0)
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.value()
}

/// The deterministic test pattern of `blk write`: byte `i` of 512-byte
/// sector `sector` for seed `seed`. Every sector differs (the sector number
/// is mixed in), so a write landing at the wrong offset is caught.
pub fn pattern_byte(seed: u64, sector: u64, i: usize) -> u8 {
    // A cheap 64-bit mix (splitmix64's finaliser) of seed, sector and the
    // 8-byte word index; the byte is taken from the mixed word.
    let mut x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add((i / 8) as u64);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((i % 8) * 8)) as u8
}

/// Fill `buf` (whole 512-byte sectors, starting at `sector`) with the pattern.
pub fn fill_pattern(buf: &mut [u8], seed: u64, sector: u64) {
    for (s, chunk) in buf.chunks_mut(512).enumerate() {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = pattern_byte(seed, sector + s as u64, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(&[0u8; 512]), 0xb2aa_7578);
    }

    #[test]
    fn incremental_equals_whole() {
        let data: [u8; 100] = core::array::from_fn(|i| (i * 7) as u8);
        let mut c = Crc32::new();
        c.update(&data[..33]);
        c.update(&data[33..]);
        assert_eq!(c.value(), crc32(&data));
    }

    #[test]
    fn pattern_differs_per_sector_and_seed() {
        let mut a = [0u8; 1024];
        fill_pattern(&mut a, 1, 0);
        assert_ne!(a[..512], a[512..]);
        let mut b = [0u8; 512];
        fill_pattern(&mut b, 1, 1);
        assert_eq!(a[512..], b[..]);
        let mut c = [0u8; 512];
        fill_pattern(&mut c, 2, 0);
        assert_ne!(a[..512], c[..]);
    }
}
