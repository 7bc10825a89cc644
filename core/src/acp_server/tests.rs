//! Unit tests of the /acp edge.
