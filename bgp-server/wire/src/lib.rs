//! BGP-4 wire codec (in progress).
