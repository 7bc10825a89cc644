//! The gateway under test: spawned by the load generator (so that its pid is known for `/proc`
//! figures) or an address of one already running. A spawned gateway is stopped by its pid.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// The flags every spawned gateway gets: dev mode (no tokens), no per-connection rate limit (the
/// sequential subcommands send thousands of messages on one connection), and room for the idle
/// connections, which all come from the one loopback address.
pub fn base_flags() -> Vec<String> {
    [
        "--dev",
        "--rate-limit",
        "0",
        "--max-connections",
        "30000",
        "--max-connections-per-ip",
        "30000",
    ]
    .iter()
    .map(|flag| flag.to_string())
    .collect()
}

/// A spawned gateway, stopped (SIGTERM, a bounded wait, SIGKILL) and reaped when dropped.
pub struct Spawned {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// When the process was spawned.
    pub started: Instant,
    /// The time from `spawn` to the `listening on` line.
    pub until_listening: Duration,
}

impl Spawned {
    /// Starts `binary` with `--listen 127.0.0.1:0 --data-dir <fresh dir>` and `flags`, and waits
    /// for its `listening on ADDR` line.
    pub fn start(binary: &Path, flags: &[String]) -> io::Result<Spawned> {
        let dir = std::env::temp_dir().join(format!(
            "diminuendo-bench-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        // The gateway runs in `dir`: a relative binary path must not be resolved from there.
        let binary = &std::fs::canonicalize(binary).map_err(|error| {
            io::Error::new(error.kind(), format!("{}: {error}", binary.display()))
        })?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(flags)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // Settings have environment fallbacks: ours must not change the gateway under test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DIMINUENDO_") {
                command.env_remove(key);
            }
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot start {}: {error}", binary.display()),
            )
        })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, first_line) = mpsc::channel();
        // Reads the first line, then drains stdout so that the gateway never blocks on it.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() {
                let _ = lines.send(line);
            }
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink), Ok(read) if read > 0) {}
        });
        let mut spawned = Spawned {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            started,
            until_listening: Duration::ZERO,
        };
        let line = first_line.recv_timeout(START_TIMEOUT).unwrap_or_default();
        spawned.until_listening = started.elapsed();
        let Some(addr) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
        else {
            let log = std::fs::read_to_string(spawned.dir.join("gateway.log")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "{} printed no `listening on` line (got {line:?}); log:\n{log}",
                binary.display()
            )));
        };
        spawned.addr = addr;
        Ok(spawned)
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("running");
        i32::try_from(child.id()).expect("a pid fits in pid_t")
    }

    /// Stops the process by its pid and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = i32::try_from(child.id()).expect("a pid fits in pid_t");
            // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet,
            // so the pid still names it.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the load goes: a gateway this process started, or an address.
pub struct Target {
    pub spawned: Option<Spawned>,
    pub addr: SocketAddr,
    /// The gateway flags the figures were taken with (`None` for an external gateway).
    pub flags: Option<Vec<String>>,
}

impl Target {
    pub fn new(
        binary: Option<&Path>,
        addr: Option<SocketAddr>,
        extra: &[String],
    ) -> io::Result<Target> {
        match (binary, addr) {
            (Some(binary), _) => {
                let mut flags = base_flags();
                flags.extend_from_slice(extra);
                let spawned = Spawned::start(binary, &flags)?;
                Ok(Target {
                    addr: spawned.addr,
                    spawned: Some(spawned),
                    flags: Some(flags),
                })
            }
            (None, Some(addr)) => Ok(Target {
                spawned: None,
                addr,
                flags: None,
            }),
            (None, None) => Err(io::Error::other("give --binary PATH or --addr HOST:PORT")),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.spawned.as_ref().map(Spawned::pid)
    }

    pub fn flags_text(&self) -> String {
        match &self.flags {
            Some(flags) => format!("--listen 127.0.0.1:0 --data-dir <tmp> {}", flags.join(" ")),
            None => "external gateway: flags unknown".to_owned(),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// utime + stime of a process (every thread), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command's `)`: field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The pids whose parent is `pid` (the gateway's agent processes).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// Raises this process's soft open-file limit to the hard one; returns (soft, hard) after.
/// Spawned gateways inherit it.
pub fn raise_nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// Busy clock ticks of the whole machine (every CPU): user, nice, system, irq, softirq, steal.
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Some(
        fields.first()?
            + fields.get(1)?
            + fields.get(2)?
            + fields.get(5)?
            + fields.get(6)?
            + fields.get(7)?,
    )
}

/// The 1-minute load average: how busy the machine was around a measurement.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
