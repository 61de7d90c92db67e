//! The parts of the test guest that touch no hardware and no hypercall:
//! xenstore message framing and parsing, and the console line editor of
//! service mode. They live in this library (used by the kernel binary) so
//! that `cargo test --lib` can run their unit tests on the host.
#![no_std]

pub mod lineedit;
pub mod xswire;
