//! kxen's Dom0 network backend (netback).
pub mod offload;
pub mod tx;
pub mod vnet;
