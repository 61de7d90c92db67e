//! The parts of the test guest that touch no hardware and no hypercall:
//! xenstore message framing and parsing, the console line editor of
//! service mode, its device commands, CRC-32, the packet formats of
//! netfront and the frontend side of a shared ring. They live in this
//! library (used by the kernel binary) so that `cargo test --lib` can run
//! their unit tests on the host.
#![no_std]

pub mod cmd;
pub mod crc32;
pub mod lineedit;
pub mod net;
pub mod ring;
pub mod xswire;
