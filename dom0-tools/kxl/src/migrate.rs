//! `kxl migrate` and `kxl migrate-receive`, as xl: the sender runs
//! `sh -c "exec SSHCOMMAND HOST kxl migrate-receive"` (or HOST itself
//! when SSHCOMMAND is empty) and speaks xl's protocol over its stdin and
//! stdout; kxend does the saving and the building (see kxend's
//! `daemon/migrate.rs`), each kxl passes the stream on and tells its
//! kxend how the handshake ended.
//!
//! The handshake, from the receiver's point of view: send the banner;
//! receive the stream; build the domain paused; send "ready" (with its
//! NUL); wait for "go" (with its NUL); unpause; send the report (with its
//! NUL) and one status byte, 0 for success; on failure destroy our copy
//! and send "go" back, which gives the sender permission to resume.
//!
//! The sender tells its kxend before it sends "go" (xl's point of no
//! return): if the handshake breaks after that, as when xl's does, nobody
//! knows whether the destination runs the domain, so the source stays
//! paused with its backends quiesced, even if this kxl dies, until the
//! user unpauses or destroys it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kxen_toolstack::config::DomainConfig;
use kxen_toolstack::protocol::{MigrateFrame, MigrateProgress, MigrateVerdict, Reply, Request};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::client::Client;
use crate::{fail, fail_own, format};

const RECEIVER_BANNER: &[u8] = b"xl migration receiver ready, send binary domain data.\n";
const RECEIVER_READY: &[u8] = b"domain received, ready to unpause\0";
const PERMISSION_TO_GO: &[u8] = b"domain is yours, you are cleared to unpause\0";
const REPORT: &[u8] = b"my copy unpause results are as follows\0";
/// libxl's ERROR_FAIL, the status a failed start reports (negated, as xl
/// sends it).
const ERROR_FAIL: i8 = -3;
/// How long the sender waits for its transport to exit at the end.
const CHILD_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Read `msg` exactly from `input`; xl's messages when it is not there.
fn read_fixed(input: &mut impl Read, msg: &[u8], what: &str, rune: Option<&str>) -> bool {
    let stream = if rune.is_some() {
        "migration receiver stream"
    } else {
        "migration stream"
    };
    let mut buf = vec![0u8; msg.len()];
    if input.read_exact(&mut buf).is_err() {
        eprintln!("xl: error: file/stream truncated reading {what} from {stream}");
        return false;
    }
    if buf != msg {
        eprintln!("{stream} contained unexpected data instead of {what}");
        if let Some(rune) = rune {
            eprintln!("(command run was: {rune} )");
        }
        return false;
    }
    true
}

/// Send `verdict` to kxend on a migration connection.
fn send_verdict(conn: &mut UnixStream, verdict: MigrateVerdict) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&verdict)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// Send `verdict` to kxend on a migration connection and read its reply.
fn tell(conn: &mut UnixStream, verdict: MigrateVerdict) -> Option<Reply> {
    send_verdict(conn, verdict).ok()?;
    read_reply(conn)
}

/// kxend's reply line on a migration connection.
fn read_reply(conn: &mut UnixStream) -> Option<Reply> {
    let mut reply = String::new();
    BufReader::new(conn.try_clone().ok()?)
        .read_line(&mut reply)
        .ok()?;
    serde_json::from_str(&reply).ok()
}

/// Wait a little for the transport to exit and report a failure, as xl.
fn reap(child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < CHILD_EXIT_WAIT {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    eprintln!("xl: info: migration transport process: {status}");
                }
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    }
    eprintln!(
        "migration child [{}] not exiting, no longer waiting (exit status will be unreported)",
        child.id()
    );
}

/// What the sender's options say.
pub struct SendOptions<'a> {
    pub domain: &'a str,
    pub host: &'a str,
    pub ssh_command: &'a str,
    pub config: Option<DomainConfig>,
    pub debug: bool,
    pub pause_after: bool,
}

/// Progress on stderr, as libxc's: within each pre-copy iteration a line
/// per tenth of its pages and its last; iteration, pages sent, bytes and
/// the dirty rate.
struct ProgressLine {
    started: Instant,
    iteration: u32,
    iteration_started: Instant,
    shown_tenths: u64,
    /// When the previous progress frame came: the current iteration
    /// began then (its first frame comes after its first batch).
    last_frame: Instant,
}

impl ProgressLine {
    fn new() -> Self {
        let now = Instant::now();
        ProgressLine {
            started: now,
            iteration: 0,
            iteration_started: now,
            shown_tenths: 0,
            last_frame: now,
        }
    }

    fn show(&mut self, p: &MigrateProgress, bytes: u64) {
        let previous_frame = std::mem::replace(&mut self.last_frame, Instant::now());
        if p.iteration != self.iteration {
            self.iteration = p.iteration;
            self.iteration_started = previous_frame;
            self.shown_tenths = 0;
            if p.iteration > 1 || p.final_pass {
                eprintln!(
                    "xc: info: Iteration {}{}: {} dirty pages to send, dirty rate {} pages/s",
                    p.iteration,
                    if p.final_pass {
                        " (final, domain paused)"
                    } else {
                        ""
                    },
                    p.pages_total,
                    p.dirty_rate
                );
            }
        }
        let tenths = (p.pages_sent * 10).checked_div(p.pages_total).unwrap_or(10);
        if tenths <= self.shown_tenths && p.pages_sent != p.pages_total {
            return;
        }
        self.shown_tenths = tenths;
        let secs = self.iteration_started.elapsed().as_secs_f64().max(1e-6);
        eprintln!(
            "xc: info: Saving memory: iteration {}: {}/{} pages {}%, {bytes} bytes sent, {:.0} pages/s",
            p.iteration.max(1),
            p.pages_sent,
            p.pages_total,
            (p.pages_sent * 100).checked_div(p.pages_total).unwrap_or(100),
            p.pages_sent as f64 / secs
        );
    }
}

/// `kxl migrate`.
pub fn send(opts: SendOptions<'_>) -> ExitCode {
    let rune = if opts.ssh_command.is_empty() {
        opts.host.to_string()
    } else {
        format!(
            "exec {} {} kxl migrate-receive{}{}",
            opts.ssh_command,
            opts.host,
            if opts.debug { " -d" } else { "" },
            if opts.pause_after { " -p" } else { "" }
        )
    };
    // The domain must exist before anything is started.
    let mut probe = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail_own(e),
    };
    match probe.call(&Request::Resolve {
        domain: opts.domain.into(),
    }) {
        Ok(r) if r.ok => {}
        Ok(_) => return fail(format::unknown_domain(opts.domain)),
        Err(e) => return fail_own(e),
    }
    drop(probe);

    let mut child = match Command::new("sh")
        .args(["-c", &rune])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("failed to exec sh: {e}")),
    };
    let (Some(mut to_target), Some(mut from_target)) = (child.stdin.take(), child.stdout.take())
    else {
        return fail("migration transport has no pipes");
    };
    if !read_fixed(&mut from_target, RECEIVER_BANNER, "banner", Some(&rune)) {
        drop(to_target);
        reap(&mut child);
        return ExitCode::FAILURE;
    }

    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail_own(e),
    };
    let reply = match client.call(&Request::MigrateSend {
        domain: opts.domain.into(),
        config: opts.config.map(Box::new),
    }) {
        Ok(r) => r,
        Err(e) => return fail_own(e),
    };
    if !reply.ok {
        drop(to_target);
        reap(&mut child);
        return fail(format::error_message(&reply));
    }
    eprintln!("Saving to migration stream new xl format");
    let (mut conn, early) = client.into_stream();
    let mut frames = std::io::Cursor::new(early).chain(match conn.try_clone() {
        Ok(c) => c,
        Err(e) => return fail_own(e),
    });
    let mut progress = ProgressLine::new();
    let mut bytes: u64 = 0;
    let mut cut: Option<String> = None;
    // Until kxend's last frame: a cut transport stops the copying, and
    // kxl's `Abort`, sent at once, stops kxend's (which sees it before
    // its next data frame) and resumes the domain; its last frame (the
    // failure) follows, then its answer to the `Abort`.
    let saved = loop {
        match MigrateFrame::read(&mut frames) {
            Ok(MigrateFrame::Data(data)) => {
                if cut.is_some() {
                    continue;
                }
                match to_target.write_all(&data) {
                    Ok(()) => bytes += data.len() as u64,
                    Err(e) => {
                        cut = Some(e.to_string());
                        if send_verdict(&mut conn, MigrateVerdict::Abort).is_err() {
                            break None;
                        }
                    }
                }
            }
            Ok(MigrateFrame::Progress(p)) => {
                if cut.is_none() {
                    progress.show(&p, bytes)
                }
            }
            Ok(MigrateFrame::Done(reply)) if cut.is_none() => break Some(*reply),
            Ok(MigrateFrame::Done(_)) => break None,
            Err(e) => {
                cut.get_or_insert(format!("kxend: {e}"));
                break None;
            }
        }
    };
    let abort_sent = cut.is_some();
    let failed_resume = |conn: &mut UnixStream, child: &mut Child, to_target| {
        drop(to_target);
        reap(child);
        eprintln!("Migration failed, resuming at sender.");
        let confirmed = if abort_sent {
            read_reply(conn)
        } else {
            tell(conn, MigrateVerdict::Abort)
        };
        if !confirmed.is_some_and(|r| r.ok) {
            eprintln!("migration sender: kxend did not confirm the resume");
        }
        ExitCode::FAILURE
    };
    match saved {
        Some(r) if r.ok => {
            if let Some(text) = &r.text {
                eprintln!("migration sender: stream sent: {text}");
            }
        }
        Some(r) => {
            eprintln!(
                "migration sender: libxl_domain_suspend failed: {}",
                format::error_message(&r)
            );
            return failed_resume(&mut conn, &mut child, to_target);
        }
        None => {
            eprintln!(
                "migration sender: the stream was cut after {bytes} bytes: {}",
                cut.unwrap_or_default()
            );
            return failed_resume(&mut conn, &mut child, to_target);
        }
    }
    if let Err(e) = to_target.flush() {
        eprintln!("migration sender: {e}");
        return failed_resume(&mut conn, &mut child, to_target);
    }
    if !read_fixed(
        &mut from_target,
        RECEIVER_READY,
        "ready message",
        Some(&rune),
    ) {
        return failed_resume(&mut conn, &mut child, to_target);
    }
    eprintln!("migration sender: Target has acknowledged transfer.");
    // xl's point of no return: once "go" may have reached the
    // destination, nothing here can tell whether it runs the domain, and
    // kxend must keep ours paused even if we die. Unless kxend has taken
    // that in, "go" is not sent and the domain resumes here.
    if !tell(&mut conn, MigrateVerdict::Committing).is_some_and(|r| r.ok) {
        eprintln!("migration sender: kxend did not take the point of no return");
        return failed_resume(&mut conn, &mut child, to_target);
    }
    eprintln!("migration sender: Giving target permission to start.");
    let failed_badly = |conn: &mut UnixStream, child: &mut Child, to_target| {
        eprint!(
            "** Migration failed during final handshake **\n\
             Domain state is now undefined !\n\
             Please CHECK AT BOTH ENDS for running instances, before renaming and\n \
             resuming at most one instance.  Two simultaneous instances of the domain\n \
             would probably result in SEVERE DATA LOSS and it is now your\n \
             responsibility to avoid that.  Sorry.\n"
        );
        if !tell(conn, MigrateVerdict::KeepPaused).is_some_and(|r| r.ok) {
            eprintln!("migration sender: kxend did not confirm keeping the domain paused");
        }
        drop(to_target);
        reap(child);
        ExitCode::FAILURE
    };
    if to_target
        .write_all(PERMISSION_TO_GO)
        .and_then(|()| to_target.flush())
        .is_err()
    {
        return failed_badly(&mut conn, &mut child, to_target);
    }
    if !read_fixed(
        &mut from_target,
        REPORT,
        "success/failure report message",
        Some(&rune),
    ) {
        return failed_badly(&mut conn, &mut child, to_target);
    }
    let mut status = [0u8; 1];
    if from_target.read_exact(&mut status).is_err() {
        eprintln!("xl: error: file/stream truncated reading success/failure status from migration ack stream");
        return failed_badly(&mut conn, &mut child, to_target);
    }
    if status[0] != 0 {
        eprintln!(
            "migration sender: Target reports startup failure (status code {}).",
            status[0] as i8
        );
        if !read_fixed(
            &mut from_target,
            PERMISSION_TO_GO,
            "permission for sender to resume",
            Some(&rune),
        ) {
            return failed_badly(&mut conn, &mut child, to_target);
        }
        eprintln!("migration sender: Trying to resume at our end.");
        if tell(&mut conn, MigrateVerdict::Abort).is_some_and(|r| r.ok) {
            eprintln!("migration sender: Resumed OK.");
        }
        eprintln!("Migration failed due to problems at target.");
        drop(to_target);
        reap(&mut child);
        return ExitCode::FAILURE;
    }
    eprintln!("migration sender: Target reports successful startup.");
    let total = progress.started.elapsed();
    match tell(&mut conn, MigrateVerdict::Go) {
        Some(r) if r.ok => {
            // kxend's account of the downtime, from its pause.
            if let Some(text) = &r.text {
                eprintln!(
                    "migration sender: {text}, total time {:.1} ms",
                    total.as_secs_f64() * 1e3
                );
            }
        }
        Some(r) => eprintln!("migration sender: {}", format::error_message(&r)),
        None => eprintln!("migration sender: kxend did not confirm destroying the domain"),
    }
    eprintln!("Migration successful.");
    drop(to_target);
    reap(&mut child);
    ExitCode::SUCCESS
}

/// Forward stdin to kxend until kxend answers on `conn` (the stream is
/// complete, or was refused); returns kxend's reply.
fn forward_stream(conn: &mut UnixStream, stdin: &mut std::fs::File) -> Option<Reply> {
    let mut buf = vec![0u8; 1 << 16];
    let mut line = Vec::new();
    let mut stdin_open = true;
    let mut forwarding = true;
    loop {
        let (sock_ready, in_ready) = {
            let mut fds = vec![PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if sock_ready {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            line.extend_from_slice(&buf[..n]);
            if line.ends_with(b"\n") {
                return serde_json::from_slice(&line).ok();
            }
            continue;
        }
        if in_ready {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The sender went away: kxend sees the stream end.
                    stdin_open = false;
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                }
                Ok(n) if forwarding => {
                    // kxend stopped reading (it refused the stream): its
                    // reply follows.
                    forwarding = conn.write_all(&buf[..n]).is_ok();
                }
                Ok(_) => {}
            }
        }
    }
}

/// `kxl migrate-receive`.
pub fn receive(pause_after: bool) -> ExitCode {
    eprintln!("migration target: Ready to receive domain.");
    let mut stdout = std::io::stdout();
    if stdout
        .write_all(RECEIVER_BANNER)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return fail("xl: error: writing banner to migration ack stream failed");
    }
    // Unbuffered: poll says when there is something, and nothing past
    // the stream may be taken before the handshake reads it.
    let mut stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return fail_own(e),
    };
    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail_own(e),
    };
    match client.call(&Request::MigrateReceive) {
        Ok(r) if r.ok => {}
        Ok(r) => return fail(format::error_message(&r)),
        Err(e) => return fail_own(e),
    }
    let (mut conn, _) = client.into_stream();
    let received = forward_stream(&mut conn, &mut stdin);
    let domid = match received {
        Some(Reply {
            ok: true,
            domid: Some(domid),
            ..
        }) => domid,
        other => {
            if let Some(r) = &other {
                eprintln!("{}", format::error_message(r));
            }
            eprintln!("migration target: Domain creation failed (code {ERROR_FAIL}).");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("migration target: Transfer complete, requesting permission to start domain.");
    if stdout
        .write_all(RECEIVER_READY)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Our copy goes when the connection closes.
        return ExitCode::FAILURE;
    }
    let mut status: i8 = 0;
    let mut destroyed = false;
    if read_fixed(&mut stdin, PERMISSION_TO_GO, "GO message", None) {
        eprintln!("migration target: Got permission, starting domain.");
        let verdict = if pause_after {
            MigrateVerdict::GoPaused
        } else {
            MigrateVerdict::Go
        };
        match tell(&mut conn, verdict) {
            Some(r) if r.ok => {
                eprintln!("migration target: Domain started successsfully.");
            }
            other => {
                if let Some(r) = other {
                    eprintln!("{}", format::error_message(&r));
                }
                // kxend destroyed the copy it could not start.
                destroyed = true;
                status = ERROR_FAIL;
            }
        }
    } else {
        status = ERROR_FAIL;
    }
    let mut report = REPORT.to_vec();
    report.push(status.unsigned_abs());
    if stdout
        .write_all(&report)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if status != 0 {
        eprintln!("migration target: Failure, destroying our copy.");
        if !destroyed && !tell(&mut conn, MigrateVerdict::Abort).is_some_and(|r| r.ok) {
            eprintln!("migration target: Failed to destroy our copy of domain {domid}.");
            return ExitCode::FAILURE;
        }
        eprintln!("migration target: Cleanup OK, granting sender permission to resume.");
        let _ = stdout
            .write_all(PERMISSION_TO_GO)
            .and_then(|()| stdout.flush());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
