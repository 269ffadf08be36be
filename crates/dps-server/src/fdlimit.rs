//! The open-file limit (RLIMIT_NOFILE), raised for processes that hold many sockets.
//!
//! Why: every TLS connection is a file descriptor, and the usual soft limit (1024, or whatever
//! the login shell set) is far below what `dps serve` must accept under a device storm or what
//! `dps bench hold` opens. The hard limit is the administrator's ceiling; raising the soft limit
//! up to it needs no privilege, so both processes do it at start-up (as nginx and the Go runtime
//! do) instead of failing later with EMFILE in the middle of a run.

use std::io;

/// Raises the soft limit to the hard limit and returns the new soft limit. When `wanted` is
/// above the hard limit, also tries to raise the hard limit to `wanted` (allowed for root, i.e.
/// CAP_SYS_RESOURCE, up to `fs.nr_open`); a refusal is not an error — the caller compares the
/// returned limit with what it needs and says what to do.
pub fn raise(wanted: u64) -> io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if wanted > hard && rlimit::Resource::NOFILE.set(wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// The soft open-file limit of another process (from /proc; `u64::MAX` when unlimited), if
/// readable.
pub fn of_process(pid: u32) -> Option<u64> {
    let limits = rlimit::ProcLimits::read_process(i32::try_from(pid).ok()?).ok()?;
    Some(limits.max_open_files?.soft_limit.unwrap_or(u64::MAX))
}
