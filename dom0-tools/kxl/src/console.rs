//! `kxl console`: a raw terminal wired to the domain's PV console.
//! Ctrl-] detaches, as with xl; the command ends when the domain dies.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

/// Ctrl-]
const ESCAPE: u8 = 0x1d;

/// Restores the terminal on every exit path.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode(None); // not a terminal
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Copy between the terminal and the console until detach or EOF.
/// `early` is console output that arrived with kxend's reply.
pub fn attach((mut stream, early): (UnixStream, Vec<u8>)) -> std::io::Result<()> {
    let _raw = RawMode::enter();
    let mut stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    stdout.write_all(&early)?;
    stdout.flush()?;
    let mut stdin_open = true;
    let mut buf = [0u8; 4096];
    loop {
        let (sock_ready, in_ready) = {
            let mut fds = vec![PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| {
                f.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            };
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if sock_ready {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(()); // the domain is gone
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
        if in_ready {
            let n = stdin.read(&mut buf)?;
            if n == 0 {
                stdin_open = false;
                continue;
            }
            if let Some(pos) = buf[..n].iter().position(|&b| b == ESCAPE) {
                stream.write_all(&buf[..pos])?;
                return Ok(());
            }
            stream.write_all(&buf[..n])?;
        }
    }
}
