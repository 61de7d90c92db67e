//! kxen's toolstack library, shared by `kxl` and `kxend`.
//!
//! * [`bootloader`]: xl.cfg's `bootloader` (pygrub): its command line
//!   and its answer;
//! * [`config`]: xl.cfg files, parsed with serde into a domain config;
//! * [`disk`] and [`vif`]: xl's disk and network device specifications;
//! * [`xl`]: xl's output formats and messages;
//! * [`protocol`]: requests and replies between kxl and kxend;
//! * [`savefile`]: xl's savefile header (save, restore, migrate).

pub mod bootloader;
pub mod config;
pub mod disk;
pub mod protocol;
pub mod savefile;
pub mod vif;
pub mod xl;
