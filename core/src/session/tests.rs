//! Unit tests that drive one Session alone.
