//! kxen's netback (under construction).
