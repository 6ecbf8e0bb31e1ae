//! Running a child process and measuring it: wall time, user+system CPU time and peak RSS of
//! that child alone (`wait4` returns the child's own `rusage`, unlike
//! `getrusage(RUSAGE_CHILDREN)`, whose `ru_maxrss` is a maximum over every child so far), plus
//! the size and object count of a repository directory.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Resource use of one finished child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub max_rss: u64,
    /// Exit code (`128 + signal` when killed by a signal).
    pub exit_code: i32,
}

/// First argument of the harness re-executed as [`run_isolated`]'s measuring parent.
pub const MEASURE_CHILD_ARG: &str = "--measure-child";

/// Runs `cmd` under a fresh copy of the current executable, which measures it with
/// [`run`] and reports the figures back through a file.
///
/// Why: Linux counts a process's peak RSS from before its `exec`, i.e. the peak of the
/// process it was forked from. A harness that has held megabytes (the S3 proxy buffers whole
/// request bodies) would otherwise lend its own peak to every child measured after it. The
/// fresh parent is small, so the figure is the tool's own.
pub fn run_isolated(
    cmd: &Command,
    stdout: std::fs::File,
    stderr: std::fs::File,
) -> io::Result<Usage> {
    let report = tempfile::NamedTempFile::new()?;
    let mut w = Command::new(std::env::current_exe()?);
    w.arg(MEASURE_CHILD_ARG)
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        w.current_dir(dir);
    }
    let status = w.status()?;
    let text = std::fs::read_to_string(report.path())?;
    let f: Vec<i64> = text
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    match (status.success(), f.as_slice()) {
        (true, [wall, cpu, rss, code]) => Ok(Usage {
            wall: Duration::from_nanos(*wall as u64),
            cpu: Duration::from_nanos(*cpu as u64),
            max_rss: *rss as u64,
            exit_code: *code as i32,
        }),
        _ => Err(io::Error::other(format!(
            "the measuring parent failed ({status}): {text:?}"
        ))),
    }
}

/// When the process was started by [`run_isolated`]: runs and measures the command given
/// after the report path, writes the figures there, and returns the exit code to use.
pub fn child_main() -> Option<i32> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) != Some(MEASURE_CHILD_ARG.as_ref()) || args.len() < 4 {
        return None;
    }
    let mut cmd = Command::new(&args[3]);
    cmd.args(&args[4..]);
    let code = match run(&mut cmd) {
        Ok(u) => {
            let line = format!(
                "{} {} {} {}\n",
                u.wall.as_nanos(),
                u.cpu.as_nanos(),
                u.max_rss,
                u.exit_code
            );
            match std::fs::write(&args[2], line) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Err(e) => {
            eprintln!("measuring {:?}: {e}", args[3]);
            1
        }
    };
    Some(code)
}

/// Spawns `cmd`, waits for it with `wait4` and returns its resource use.
pub fn run(cmd: &mut Command) -> io::Result<Usage> {
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let (status, ru) = wait4(pid)?;
    let wall = start.elapsed();
    // The child is reaped; dropping the handle neither waits nor kills.
    drop(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok(Usage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss: ru.ru_maxrss as u64 * 1024,
        exit_code,
    })
}

#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct of integers, for which all-zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers refer to live, writable locals of the right types; `pid` is our
        // own un-reaped child, so no other waiter can race us for it.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Bytes and number of files under `dir` (0, 0 when it does not exist).
pub fn dir_usage(dir: &Path) -> io::Result<(u64, u64)> {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in rd {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                bytes += entry.metadata()?.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}
