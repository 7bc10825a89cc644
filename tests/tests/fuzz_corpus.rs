//! Replays every seed and every saved input of the fuzz targets (`fuzz/corpus/<target>/`) through
//! the very functions the targets call, on the stable toolchain: a crash once found stays fixed.

use std::path::{Path, PathBuf};

use diminuendo_core::fuzzing;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("corpus directory {} missing: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    files
}

fn replay(target: &str, body: fn(&[u8])) {
    for path in corpus(target) {
        let input = std::fs::read(&path).expect("read a corpus file");
        let outcome = std::panic::catch_unwind(|| body(&input));
        assert!(
            outcome.is_ok(),
            "{target} panics on {} (run `cargo fuzz run {target} {}` in fuzz/)",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", fuzzing::frame_decoder);
}

#[test]
fn http_request_corpus() {
    replay("http_request", fuzzing::http_request);
}

#[test]
fn connection_corpus() {
    replay("connection", |data| {
        fuzzing::connection(data, std::time::Instant::now())
    });
}

#[test]
fn acp_messages_corpus() {
    replay("acp_messages", |data| {
        fuzzing::acp_messages(data, std::time::Instant::now())
    });
}
