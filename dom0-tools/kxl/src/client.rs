//! The connection to kxend, started on demand.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxen_toolstack::protocol::{self, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach kxend: {0}")]
    Connect(std::io::Error),
    #[error("cannot start kxend ({0}): {1}")]
    Start(String, std::io::Error),
    #[error("kxend did not start (see {0}/kxend.log)")]
    NoDaemon(String),
    #[error("kxend connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("kxend sent a bad reply: {0}")]
    BadReply(String),
}

pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

fn kxend_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kxend")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "kxend".into())
}

impl Client {
    /// Connect to kxend, starting it if nothing answers.
    pub fn connect() -> Result<Self, ClientError> {
        let socket = protocol::socket_path();
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(_) => {
                let kxend = kxend_path();
                let status = Command::new(&kxend)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| ClientError::Start(kxend.display().to_string(), e))?;
                if !status.success() {
                    return Err(ClientError::NoDaemon(
                        protocol::state_dir().display().to_string(),
                    ));
                }
                let start = Instant::now();
                loop {
                    match UnixStream::connect(&socket) {
                        Ok(s) => break s,
                        Err(e) if start.elapsed() > Duration::from_secs(10) => {
                            return Err(ClientError::Connect(e))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        };
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::BadReply(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::BadReply("connection closed".into()));
        }
        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))
    }

    /// After a successful console request: the raw stream, and the bytes
    /// kxend sent right behind its reply that the reply's reader already
    /// took in (the start of the console's replayed log). Dropping those
    /// lost the history an attach shows first.
    pub fn into_stream(self) -> (UnixStream, Vec<u8>) {
        let early = self.reader.buffer().to_vec();
        (self.stream, early)
    }
}
