//! The PV console ring page (`struct xencons_interface`).

pub const IN_SIZE: usize = 1024;
pub const OUT_SIZE: usize = 2048;
pub const OFFSET_IN: usize = 0x000;
pub const OFFSET_OUT: usize = 0x400;
pub const OFFSET_IN_CONS: usize = 0xc00;
pub const OFFSET_IN_PROD: usize = 0xc04;
pub const OFFSET_OUT_CONS: usize = 0xc08;
pub const OFFSET_OUT_PROD: usize = 0xc0c;
