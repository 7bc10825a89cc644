//! Incremental UTF-8 validation across chunk and fragment boundaries.
