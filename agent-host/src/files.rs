//! The client file system (ACP `fs/read_text_file`, `fs/write_text_file`) for agents of a type
//! with `fs = true`: the gateway, not the agent, reads and writes, so every access is confined
//! to the session's workspace here, whatever the agent's own sandbox.
//!
//! - The path must be absolute and lie in the workspace (the directory the agent was given, or
//!   its canonical form); a `..` component, anything outside, or the workspace itself is
//!   refused before any file is touched.
//! - The file is opened with `openat2(2)` relative to the workspace directory with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel resolves every component, symbolic
//!   links included, and fails (`EXDEV`) as soon as a step would leave the workspace, so a
//!   symlink leading out is refused, and a symlink swapped in after any check of ours cannot
//!   race us out of it (there is no check to race).
//! - Only regular files with one link (a hard link could name a file outside) are read or
//!   written; reads and writes are bounded (`max_bytes`, 4 MiB by default: the answer must fit
//!   in a line an agent reads); text must be UTF-8.
//! - A write respects the workspace quota (`limits.workspace_bytes`): the workspace is scanned
//!   (as `quota` does) and the write refused if its growth would pass the limit.
//! - Missing parent directories are not created (the answer is "not found").
//!
//! The work runs on one thread per host (`agent-files`, started with the first request), never
//! on the adapter's event loop: `execute` hands the job over, and the answer comes back through
//! `drain` as `AgentReport::FileRead` / `FileWritten`, woken like the poller's reports.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use diminuendo_core::{AgentId, FileError, FileErrorKind};

use crate::quota::{usage, Usage, MAX_ENTRIES};
use crate::reports::{lock, Reports};
use crate::AgentReport;

/// The largest file read or written by default (`AgentHostConfig::max_file_bytes`).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

const OUTSIDE: &str = "the path is outside the session's workspace";

fn refused(message: impl Into<String>) -> FileError {
    FileError::new(FileErrorKind::Refused, message)
}

/// The path's components below the workspace, checked lexically: only plain names.
fn below(workspace: &Path, path: &Path) -> Result<PathBuf, FileError> {
    if !path.is_absolute() {
        return Err(refused("the path must be absolute"));
    }
    let canonical = std::fs::canonicalize(workspace).ok();
    let relative = [Some(workspace), canonical.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|base| path.strip_prefix(base).ok())
        .ok_or_else(|| refused(OUTSIDE))?;
    let mut clean = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            _ => return Err(refused(OUTSIDE)),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(refused("the path names the workspace itself, not a file"));
    }
    Ok(clean)
}

/// Opens `relative` beneath `workspace` (see the module documentation).
fn open_beneath(
    workspace: &Path,
    relative: &Path,
    flags: libc::c_int,
    mode: u32,
) -> Result<File, FileError> {
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(workspace)
        .map_err(|error| {
            FileError::new(
                FileErrorKind::Failed,
                format!("the workspace cannot be opened: {}", error.kind()),
            )
        })?;
    let name = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| refused("the path contains a NUL byte"))?;
    // SAFETY: `open_how` is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the descriptor, the NUL-terminated name and `how` are valid for the call; the
    // size passed is `how`'s.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => refused(OUTSIDE),
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                FileError::new(FileErrorKind::NotFound, "no such file")
            }
            Some(libc::EISDIR) | Some(libc::ENXIO) => refused("not a regular file"),
            Some(libc::ENOSYS) => FileError::new(
                FileErrorKind::Failed,
                "the kernel has no openat2 (Linux 5.6 or later)",
            ),
            _ => FileError::new(
                FileErrorKind::Failed,
                format!("the file cannot be opened: {}", error.kind()),
            ),
        });
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe {
        OwnedFd::from_raw_fd(fd as libc::c_int)
    }))
}

/// A regular file with one link, and its size.
fn check_regular(file: &File) -> Result<u64, FileError> {
    let meta = file.metadata().map_err(|error| {
        FileError::new(
            FileErrorKind::Failed,
            format!("the file cannot be read: {}", error.kind()),
        )
    })?;
    if !meta.file_type().is_file() {
        return Err(refused("not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(refused("the file has more than one hard link"));
    }
    Ok(meta.len())
}

/// `fs/read_text_file`: the file's text, from line `line` (1-based) for at most `limit` lines.
pub fn read_text_file(
    workspace: &Path,
    path: &Path,
    line: Option<u32>,
    limit: Option<u32>,
    max_bytes: u64,
) -> Result<String, FileError> {
    let relative = below(workspace, path)?;
    let file = open_beneath(workspace, &relative, libc::O_RDONLY, 0)?;
    let size = check_regular(&file)?;
    let too_large = |size: u64| {
        refused(format!(
            "the file is {size} bytes or more, the limit is {max_bytes}"
        ))
    };
    if size > max_bytes {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    // Bounded even if the file grows meanwhile.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| {
            FileError::new(
                FileErrorKind::Failed,
                format!("the file cannot be read: {}", error.kind()),
            )
        })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|_| refused("the file is not UTF-8 text"))?;
    if line.is_none() && limit.is_none() {
        return Ok(text);
    }
    let skip = line.map_or(0, |line| line.saturating_sub(1)) as usize;
    let take = limit.map_or(usize::MAX, |limit| limit as usize);
    Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
}

/// `fs/write_text_file`: replaces the file's content (creating the file, not its directories);
/// `quota` is the workspace's limit in bytes, if it has one. Answers the path relative to the
/// workspace, `/`-separated.
pub fn write_text_file(
    workspace: &Path,
    path: &Path,
    content: &str,
    max_bytes: u64,
    quota: Option<u64>,
) -> Result<String, FileError> {
    let relative = below(workspace, path)?;
    let length = content.len() as u64;
    if length > max_bytes {
        return Err(refused(format!(
            "the content is {length} bytes, the limit is {max_bytes}"
        )));
    }
    // An existing file first (its size counts against the growth); a new one is created only
    // once the quota allows it, so a refused write leaves nothing behind.
    let existing = match open_beneath(workspace, &relative, libc::O_WRONLY, 0) {
        Ok(file) => Some(file),
        Err(error) if error.kind == FileErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let old = match &existing {
        Some(file) => check_regular(file)?,
        None => 0,
    };
    if let Some(limit) = quota {
        let growth = length.saturating_sub(old);
        let over = match usage(workspace, limit, MAX_ENTRIES) {
            Usage::Within(used) => used.saturating_add(growth) > limit,
            Usage::Over(_) | Usage::TooManyEntries => growth > 0,
        };
        if over {
            return Err(refused(format!(
                "the write would put the workspace over its quota ({limit} bytes)"
            )));
        }
    }
    let failed = |error: std::io::Error| {
        FileError::new(
            FileErrorKind::Failed,
            format!("the file cannot be written: {}", error.kind()),
        )
    };
    let mut file = match existing {
        Some(file) => file,
        None => {
            let file = open_beneath(workspace, &relative, libc::O_WRONLY | libc::O_CREAT, 0o644)?;
            check_regular(&file)?;
            file
        }
    };
    file.set_len(0).map_err(failed)?;
    file.write_all(content.as_bytes()).map_err(failed)?;
    Ok(relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

/// One request for the `agent-files` thread.
pub(crate) struct Job {
    pub agent: AgentId,
    pub request: u64,
    pub workspace: PathBuf,
    pub path: PathBuf,
    pub kind: JobKind,
}

pub(crate) enum JobKind {
    Read {
        line: Option<u32>,
        limit: Option<u32>,
    },
    Write {
        content: String,
        quota: Option<u64>,
    },
}

/// The `agent-files` thread and the answers it finished.
pub(crate) struct Files {
    max_bytes: u64,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    finished: Arc<Mutex<Vec<AgentReport>>>,
    reports: Arc<Reports>,
}

impl Files {
    pub(crate) fn new(reports: Arc<Reports>, max_bytes: u64) -> Files {
        Files {
            max_bytes,
            jobs: None,
            thread: None,
            finished: Arc::default(),
            reports,
        }
    }

    /// Hands a job to the thread (started with the first one); its answer comes back through
    /// [`Files::finished`].
    pub(crate) fn submit(&mut self, job: Job) {
        if self.jobs.is_none() {
            let (sender, inbox) = channel::<Job>();
            let finished = Arc::clone(&self.finished);
            let reports = Arc::clone(&self.reports);
            let max_bytes = self.max_bytes;
            let spawned = std::thread::Builder::new()
                .name("agent-files".to_owned())
                .spawn(move || {
                    for job in inbox {
                        let report = run(job, max_bytes);
                        lock(&finished).push(report);
                        reports.wake_adapter();
                    }
                });
            match spawned {
                Ok(thread) => {
                    self.jobs = Some(sender);
                    self.thread = Some(thread);
                }
                Err(error) => {
                    tracing::error!(target: "agent", %error, "cannot start the file thread");
                }
            }
        }
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(returned) => returned.0,
            },
            None => job,
        };
        // No thread: the request is still answered, once.
        let error = FileError::new(FileErrorKind::Failed, "the gateway cannot serve files now");
        let report = match job.kind {
            JobKind::Read { .. } => AgentReport::FileRead {
                agent: job.agent,
                request: job.request,
                result: Err(error),
            },
            JobKind::Write { .. } => AgentReport::FileWritten {
                agent: job.agent,
                request: job.request,
                result: Err(error),
            },
        };
        lock(&self.finished).push(report);
        self.reports.wake_adapter();
    }

    /// The answers finished since the last call.
    pub(crate) fn finished(&mut self) -> Vec<AgentReport> {
        std::mem::take(&mut *lock(&self.finished))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the job it runs.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(job: Job, max_bytes: u64) -> AgentReport {
    let Job {
        agent,
        request,
        workspace,
        path,
        kind,
    } = job;
    match kind {
        JobKind::Read { line, limit } => AgentReport::FileRead {
            agent,
            request,
            result: read_text_file(&workspace, &path, line, limit, max_bytes),
        },
        JobKind::Write { content, quota } => AgentReport::FileWritten {
            agent,
            request,
            result: write_text_file(&workspace, &path, &content, max_bytes, quota),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const MAX: u64 = 1024;

    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).expect("the workspace");
        (dir, workspace)
    }

    fn kind<T: std::fmt::Debug>(result: Result<T, FileError>) -> (FileErrorKind, String) {
        let error = result.expect_err("refused");
        (error.kind, error.message)
    }

    #[test]
    fn reads_a_file_of_the_workspace_whole_or_by_lines() {
        let (_dir, ws) = workspace();
        std::fs::create_dir(ws.join("src")).expect("a directory");
        std::fs::write(ws.join("src/a.txt"), "one\ntwo\nthree").expect("a file");
        let path = ws.join("src/a.txt");
        assert_eq!(
            read_text_file(&ws, &path, None, None, MAX).expect("read"),
            "one\ntwo\nthree"
        );
        assert_eq!(
            read_text_file(&ws, &path, Some(2), None, MAX).expect("read"),
            "two\nthree"
        );
        assert_eq!(
            read_text_file(&ws, &path, Some(1), Some(2), MAX).expect("read"),
            "one\ntwo\n"
        );
        assert_eq!(
            read_text_file(&ws, &path, Some(9), None, MAX).expect("read"),
            ""
        );
        // `.` components are harmless; a symlink that stays inside is followed.
        symlink("src/a.txt", ws.join("link")).expect("a symlink");
        assert_eq!(
            read_text_file(&ws, &ws.join("./link"), Some(3), None, MAX).expect("read"),
            "three"
        );
    }

    #[test]
    fn an_absolute_path_elsewhere_a_relative_one_and_dot_dot_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(dir.path().join("secret"), "s").expect("a file outside");
        std::fs::write(ws.join("inside"), "i").expect("a file inside");
        for path in [
            dir.path().join("secret"),
            PathBuf::from("/etc/passwd"),
            ws.join("../secret"),
            // `..` is refused even when it would come back inside.
            ws.join("sub/../inside"),
        ] {
            assert_eq!(
                kind(read_text_file(&ws, &path, None, None, MAX)),
                (FileErrorKind::Refused, OUTSIDE.to_owned()),
                "{path:?}"
            );
            assert_eq!(
                kind(write_text_file(&ws, &path, "x", MAX, None)).0,
                FileErrorKind::Refused,
                "{path:?}"
            );
        }
        assert_eq!(
            kind(read_text_file(&ws, Path::new("inside"), None, None, MAX)),
            (
                FileErrorKind::Refused,
                "the path must be absolute".to_owned()
            )
        );
        assert_eq!(
            kind(read_text_file(&ws, &ws, None, None, MAX)).0,
            FileErrorKind::Refused
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("secret")).expect("read"),
            "s"
        );
    }

    #[test]
    fn a_symlink_leading_out_is_refused_for_reads_and_writes() {
        let (dir, ws) = workspace();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("a directory outside");
        std::fs::write(outside.join("secret"), "secret").expect("a file outside");
        symlink(outside.join("secret"), ws.join("file-link")).expect("a symlink");
        symlink(&outside, ws.join("dir-link")).expect("a symlink");
        symlink("../outside/secret", ws.join("relative-link")).expect("a symlink");
        symlink(outside.join("new"), ws.join("dangling-link")).expect("a symlink");
        for name in [
            "file-link",
            "dir-link/secret",
            "relative-link",
            "dangling-link",
        ] {
            let path = ws.join(name);
            assert_eq!(
                kind(read_text_file(&ws, &path, None, None, MAX)),
                (FileErrorKind::Refused, OUTSIDE.to_owned()),
                "{name}"
            );
            assert_eq!(
                kind(write_text_file(&ws, &path, "pwned", MAX, None)),
                (FileErrorKind::Refused, OUTSIDE.to_owned()),
                "{name}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).expect("read"),
            "secret"
        );
        assert!(!outside.join("new").exists());
    }

    #[test]
    fn too_large_not_text_not_regular_and_hard_links_are_refused() {
        let (dir, ws) = workspace();
        std::fs::write(ws.join("big"), vec![b'a'; MAX as usize + 1]).expect("a file");
        assert_eq!(
            kind(read_text_file(&ws, &ws.join("big"), None, None, MAX)),
            (
                FileErrorKind::Refused,
                format!("the file is {} bytes or more, the limit is {MAX}", MAX + 1)
            )
        );
        let content = "a".repeat(MAX as usize + 1);
        assert_eq!(
            kind(write_text_file(&ws, &ws.join("new"), &content, MAX, None)).0,
            FileErrorKind::Refused
        );
        assert!(!ws.join("new").exists());
        std::fs::write(ws.join("binary"), [0xff, 0xfe]).expect("a file");
        assert_eq!(
            kind(read_text_file(&ws, &ws.join("binary"), None, None, MAX)),
            (
                FileErrorKind::Refused,
                "the file is not UTF-8 text".to_owned()
            )
        );
        std::fs::create_dir(ws.join("dir")).expect("a directory");
        assert_eq!(
            kind(read_text_file(&ws, &ws.join("dir"), None, None, MAX)),
            (FileErrorKind::Refused, "not a regular file".to_owned())
        );
        let fifo = CString::new(ws.join("fifo").as_os_str().as_bytes()).expect("a path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "a fifo");
        // Neither blocks: a FIFO is refused for both.
        assert_eq!(
            kind(read_text_file(&ws, &ws.join("fifo"), None, None, MAX)).0,
            FileErrorKind::Refused
        );
        assert_eq!(
            kind(write_text_file(&ws, &ws.join("fifo"), "x", MAX, None)).0,
            FileErrorKind::Refused
        );
        std::fs::write(dir.path().join("outside"), "keep").expect("a file outside");
        std::fs::hard_link(dir.path().join("outside"), ws.join("hard")).expect("a hard link");
        assert_eq!(
            kind(write_text_file(&ws, &ws.join("hard"), "x", MAX, None)),
            (
                FileErrorKind::Refused,
                "the file has more than one hard link".to_owned()
            )
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("outside")).expect("read"),
            "keep"
        );
        assert_eq!(
            kind(read_text_file(&ws, &ws.join("missing"), None, None, MAX)).0,
            FileErrorKind::NotFound
        );
        assert_eq!(
            kind(write_text_file(
                &ws,
                &ws.join("no/dir/file"),
                "x",
                MAX,
                None
            ))
            .0,
            FileErrorKind::NotFound
        );
    }

    #[test]
    fn writes_create_or_replace_and_respect_the_quota() {
        let (_dir, ws) = workspace();
        std::fs::create_dir(ws.join("src")).expect("a directory");
        assert_eq!(
            write_text_file(&ws, &ws.join("src/new.txt"), "hello", MAX, None).expect("write"),
            "src/new.txt"
        );
        write_text_file(&ws, &ws.join("src/new.txt"), "hi", MAX, None).expect("write");
        assert_eq!(
            std::fs::read_to_string(ws.join("src/new.txt")).expect("read"),
            "hi"
        );
        // A quota of 64 KiB: what the workspace holds (blocks) plus the growth must fit.
        let quota = Some(64 * 1024);
        let big = "b".repeat(100 * 1024);
        assert_eq!(
            kind(write_text_file(
                &ws,
                &ws.join("big.txt"),
                &big,
                1024 * 1024,
                quota
            )),
            (
                FileErrorKind::Refused,
                "the write would put the workspace over its quota (65536 bytes)".to_owned()
            )
        );
        assert!(
            !ws.join("big.txt").exists(),
            "a refused write leaves nothing"
        );
        write_text_file(&ws, &ws.join("small.txt"), "small", MAX, quota).expect("write");
    }

    #[test]
    fn the_thread_answers_each_job_once() {
        let (_dir, ws) = workspace();
        struct NoWake;
        impl diminuendo_core::Wake for NoWake {
            fn wake(&self) {}
        }
        let reports = Arc::new(Reports::new(4, Arc::new(NoWake)));
        let mut files = Files::new(reports, MAX);
        files.submit(Job {
            agent: AgentId(1),
            request: 1,
            workspace: ws.clone(),
            path: ws.join("a.txt"),
            kind: JobKind::Write {
                content: "text".to_owned(),
                quota: None,
            },
        });
        files.submit(Job {
            agent: AgentId(1),
            request: 2,
            workspace: ws.clone(),
            path: ws.join("a.txt"),
            kind: JobKind::Read {
                line: None,
                limit: None,
            },
        });
        let mut answers = Vec::new();
        for _ in 0..1000 {
            answers.extend(files.finished());
            if answers.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(files);
        assert_eq!(
            answers,
            vec![
                AgentReport::FileWritten {
                    agent: AgentId(1),
                    request: 1,
                    result: Ok("a.txt".to_owned())
                },
                AgentReport::FileRead {
                    agent: AgentId(1),
                    request: 2,
                    result: Ok("text".to_owned())
                },
            ]
        );
    }
}
