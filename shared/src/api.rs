//! REST API types (filled in below).
