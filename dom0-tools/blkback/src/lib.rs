//! kxen's blkback (under construction).
