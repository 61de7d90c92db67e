//! xenstored for kxen (being written).
