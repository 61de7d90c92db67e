//! kxend's ends of `kxl migrate` and `kxl migrate-receive` (issue 17),
//! live: the source writes the domain as xl's savefile (header, config,
//! libxl stream) to its kxl while it runs, its memory by iterative
//! pre-copy (`precopy.rs`) until a last pass with the domain paused, then
//! its state; kxl passes the stream
//! over the transport (`ssh HOST kxl migrate-receive`); the destination's
//! kxl forwards it raw to its kxend, which builds the domain paused.
//! Then each kxl speaks xl's handshake with the other and tells its
//! kxend how it ended ([`MigrateVerdict`]).
//!
//! Either end treats a dropped connection as "abort": the source domain
//! is resumed unless kxl said `go` (the destination runs the domain), and
//! the destination's copy is destroyed unless kxl said `go` (the source
//! gave permission to start it). The exception is xl's point of no
//! return: once the sending kxl has said it is about to give the
//! destination permission to start (`Committing`), nothing tells kxend
//! whether the destination runs the domain, so a dropped connection
//! leaves the source paused with its backends quiesced, as xl leaves it
//! when its final handshake fails; `kxl unpause` resumes both, `kxl
//! destroy` ends it.

use std::cell::RefCell;
use std::rc::Rc;

use kxen_toolstack::protocol::{MigrateFrame, MigrateVerdict};
use kxen_toolstack::savefile;

use super::clients::send;
use super::lifecycle::Restored;
use super::precopy::{precopy, PreCopyReport};
use super::saverestore::{load_image, write_stream_with};
use super::*;

/// How long either end waits on its kxl for stream bytes (or for kxl to
/// take them) before it gives the migration up.
const MIGRATE_IO_LIMIT: Duration = Duration::from_secs(60);
/// Stream bytes gathered into one data frame.
const DATA_FRAME: usize = 1 << 20;

/// The migration stream on kxl's connection: data frames, with progress
/// frames between them.
struct FrameWriter {
    conn: UnixStream,
    pending: Vec<u8>,
    bytes_sent: u64,
}

/// Whether kxl has given the migration up while kxend streams: it sent
/// something (its `Abort`, once the transport was cut) or closed the
/// connection (it died). kxl says nothing else until the last frame.
fn sender_gave_up(conn: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match recv(
        conn.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(_) => true,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

impl FrameWriter {
    fn flush_data(&mut self) -> std::io::Result<()> {
        if sender_gave_up(&self.conn) {
            // Without this kxend would send the whole stream, and pause the
            // domain for its final pass, into a transport that is gone.
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "kxl gave the migration up (its transport was cut, or it ended)",
            ));
        }
        if !self.pending.is_empty() {
            MigrateFrame::write_data(&mut self.conn, &self.pending)?;
            self.bytes_sent += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    /// A non-data frame, after the data before it.
    fn frame(&mut self, frame: &MigrateFrame) -> std::io::Result<()> {
        self.flush_data()?;
        frame.write(&mut self.conn)
    }
}

/// [`FrameWriter`] as the `Write` the stream writer owns, shared with the
/// progress callback (both on this one thread, never at the same time).
struct SharedFrames(Rc<RefCell<FrameWriter>>);

impl Write for SharedFrames {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.borrow_mut();
        w.pending.extend_from_slice(buf);
        if w.pending.len() >= DATA_FRAME {
            w.flush_data()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush_data()
    }
}

/// kxl's verdict line; `None` for a closed connection or anything
/// unreadable.
fn read_verdict(reader: &mut BufReader<UnixStream>) -> Option<MigrateVerdict> {
    let _ = reader.get_ref().set_read_timeout(None);
    let mut line = Vec::new();
    match reader.by_ref().take(256).read_until(b'\n', &mut line) {
        Ok(n) if n > 0 => serde_json::from_slice(&line).ok(),
        _ => None,
    }
}

/// The sender's verdict: `Committing` is answered and the next one read;
/// a connection lost before it is `Abort` (kxl never told the destination
/// to start), after it `KeepPaused` (kxl may have, and the destination may
/// run the domain).
fn read_sender_verdict(
    reader: &mut BufReader<UnixStream>,
    writer: &mut UnixStream,
) -> MigrateVerdict {
    let mut committed = false;
    loop {
        match read_verdict(reader) {
            Some(MigrateVerdict::Committing) if !committed => {
                committed = true;
                if send(writer, &Reply::ok()).is_err() {
                    return MigrateVerdict::KeepPaused;
                }
            }
            Some(MigrateVerdict::Committing) => return MigrateVerdict::KeepPaused,
            Some(verdict) => return verdict,
            None if committed => return MigrateVerdict::KeepPaused,
            None => return MigrateVerdict::Abort,
        }
    }
}

impl Daemon {
    /// The sending end (`Request::MigrateSend`), on a connection of its
    /// own.
    pub(super) fn migrate_send(
        self: &Arc<Self>,
        domain: &str,
        config: Option<DomainConfig>,
        mut reader: BufReader<UnixStream>,
        mut writer: UnixStream,
    ) {
        let Some(d) = self.resolve(domain).and_then(|id| self.live(id)) else {
            let _ = send(&mut writer, &Reply::unknown_domain(domain));
            return;
        };
        let id = d.record.domid;
        if id == 0 {
            let _ = send(&mut writer, &Reply::error("Domain-0 cannot be migrated"));
            return;
        }
        if send(&mut writer, &Reply::ok()).is_err() {
            return;
        }
        let _ = writer.set_write_timeout(Some(MIGRATE_IO_LIMIT));
        let was_paused = d.paused.load(std::sync::atomic::Ordering::SeqCst);
        let devices = self.devices_of(id);
        // How the last pass stopped the domain, once it has.
        let stopped = std::cell::Cell::new(None);
        let resume = |why: &str| {
            // The backends first, so the guest finds its rings served.
            devices.resume();
            let resumed = match stopped.get() {
                Some(how) => self.resume_after_image(&d, how, was_paused),
                None if was_paused => Ok(()),
                None => d.unpause().map_err(|e| e.to_string()),
            };
            match resumed {
                Ok(()) => self.log(&format!(
                    "domain {id} ({}): migration {why}; domain resumed",
                    d.record.name
                )),
                Err(e) => self.log(&format!(
                    "domain {id} ({}): migration {why}; resuming it failed: {e}",
                    d.record.name
                )),
            }
        };
        let Ok(conn) = writer.try_clone() else {
            resume("failed (no connection)");
            return;
        };
        let frames = Rc::new(RefCell::new(FrameWriter {
            conn,
            pending: Vec::with_capacity(DATA_FRAME),
            bytes_sent: 0,
        }));
        let config = config.unwrap_or_else(|| d.record.config.clone());
        let pv = config.domain_type == kxen_toolstack::config::DomainType::Pv;
        let mut report = PreCopyReport::default();
        // The domain runs while its memory is sent; precopy pauses it for
        // the last pass, before the state is read.
        let written = write_stream_with(
            &d,
            &config,
            &self.store.xenstored(),
            SharedFrames(frames.clone()),
            &mut |libxc, link, guest| {
                let mut quiesce = |deadline| devices.quiesce(deadline).map_err(|e| e.to_string());
                let mut stop = || {
                    stopped.set(Some(self.stop_for_image(&d)?));
                    Ok(())
                };
                report = precopy(&mut stop, libxc, link, guest, pv, &mut quiesce, &mut |p| {
                    // A failed write here fails the stream's next write.
                    let _ = frames.borrow_mut().frame(&MigrateFrame::Progress(p));
                })?;
                Ok(report.pages_sent)
            },
        )
        .and_then(|(pages, _)| {
            frames
                .borrow_mut()
                .flush_data()
                .map(|()| pages)
                .map_err(|e| format!("sending the stream: {e}"))
        });
        let bytes = frames.borrow().bytes_sent;
        let stream_sent = Instant::now();
        let pages = match written {
            Ok(pages) => pages,
            Err(e) => {
                resume(&format!("failed after {bytes} bytes ({e})"));
                let reply = Reply::error(format!("Failed to save domain {id}: {e}"));
                if MigrateFrame::Done(Box::new(reply))
                    .write(&mut writer)
                    .is_ok()
                {
                    // kxl's verdict (its `Abort`, maybe sent already) is
                    // answered: the domain is resumed.
                    let _ = read_verdict(&mut reader);
                    let _ = send(&mut writer, &Reply::ok());
                }
                return;
            }
        };
        let done = Reply {
            text: Some(format!(
                "{pages} pages in {} iterations ({} in the final one, {} of them changed behind the dirty logs), {bytes} bytes",
                report.passes, report.final_pages, report.unlogged_pages
            )),
            ..Reply::ok()
        };
        if MigrateFrame::Done(Box::new(done))
            .write(&mut writer)
            .is_err()
        {
            resume("cut after the stream");
            return;
        }
        match read_sender_verdict(&mut reader, &mut writer) {
            MigrateVerdict::Go => {
                // The destination runs the domain: the downtime ends.
                let downtime = report.paused_at.map(|at| at.elapsed());
                let stream_to_start = stream_sent.elapsed();
                let reply = match d.destroy() {
                    Ok(()) => {
                        self.wait_gone(id, Duration::from_secs(10));
                        self.log(&format!(
                            "domain {id} ({}) migrated away: {pages} pages in {} iterations, {bytes} bytes, paused for {downtime:.2?} until the destination ran it (final pass: backends quiesced in {:.2?}, content check {:.2?}, {} pages sent in {:.2?}; stream end to the destination's start {stream_to_start:.2?})",
                            d.record.name, report.passes, report.quiesce, report.content_check, report.final_pages, report.final_send
                        ));
                        Reply {
                            text: downtime.map(|t| {
                                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                                format!(
                                    "downtime {:.1} ms (content check {:.1} ms, {} final pages sent in {:.1} ms, stream end to the target's startup {:.1} ms)",
                                    ms(t),
                                    ms(report.content_check),
                                    report.final_pages,
                                    ms(report.final_send),
                                    ms(stream_to_start)
                                )
                            }),
                            ..Reply::ok()
                        }
                    }
                    Err(e) => Reply::error(format!("destroying migrated domain {id}: {e}")),
                };
                let _ = send(&mut writer, &reply);
            }
            MigrateVerdict::KeepPaused | MigrateVerdict::Committing => {
                // The destination may run the domain: ours stays paused
                // and its backends quiesced (a request left on a ring must
                // not be served here too, onto shared storage) until the
                // user unpauses it (which resumes them) or destroys it.
                self.log(&format!(
                    "domain {id} ({}): migration handshake broke after the destination was told to start; it may run there; left paused with its backends quiesced",
                    d.record.name
                ));
                let _ = send(&mut writer, &Reply::ok());
            }
            MigrateVerdict::Abort | MigrateVerdict::GoPaused => {
                resume("aborted");
                let _ = send(&mut writer, &Reply::ok());
            }
        }
    }

    /// The receiving end (`Request::MigrateReceive`), on a connection of
    /// its own.
    pub(super) fn migrate_receive(
        self: &Arc<Self>,
        mut reader: BufReader<UnixStream>,
        mut writer: UnixStream,
    ) {
        if send(&mut writer, &Reply::ok()).is_err() {
            return;
        }
        // A sender that stops sending gives the migration up; so does
        // one whose kxl goes away (the connection closes).
        let _ = reader.get_ref().set_read_timeout(Some(MIGRATE_IO_LIMIT));
        let config = match savefile::read_header(&mut reader) {
            Ok(c) => c,
            Err(e) => {
                let _ = send(&mut writer, &Reply::error(format!("migration stream: {e}")));
                return;
            }
        };
        let name = config.name.clone();
        let Ok(verdict_conn) = writer.try_clone() else {
            return;
        };
        // The stream is read once, by the loader, while the new VMM waits.
        let input = Mutex::new(Some(reader));
        let load = |control: &Path| -> Result<Restored, String> {
            let input = input
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or("the stream was already read")?;
            load_image(input, control).map_err(|e| format!("migration stream: {e}"))
        };
        let domid = match self.create_with(config, true, Some(&load)) {
            Ok(domid) => domid,
            Err(e) => {
                self.log(&format!("incoming migration of {name} failed: {e}"));
                let _ = send(
                    &mut writer,
                    &Reply::error(one_line(&format!("domain {name}: {e}"))),
                );
                return;
            }
        };
        self.log(&format!(
            "domain {domid} ({name}) received by migration, paused"
        ));
        let received = Reply {
            domid: Some(domid),
            ..Reply::ok()
        };
        let verdict = if send(&mut writer, &received.clone()).is_ok() {
            read_verdict(&mut BufReader::new(verdict_conn)).unwrap_or(MigrateVerdict::Abort)
        } else {
            MigrateVerdict::Abort
        };
        let destroy = |why: &str| {
            if let Some(d) = self.live(domid) {
                let _ = d.destroy();
                self.wait_gone(domid, Duration::from_secs(10));
            }
            self.log(&format!(
                "domain {domid} ({name}): incoming migration {why}; our copy destroyed"
            ));
        };
        let reply = match verdict {
            MigrateVerdict::GoPaused => {
                self.log(&format!("domain {domid} ({name}) migrated, left paused"));
                received
            }
            MigrateVerdict::Go => match self.live(domid).map(|d| d.unpause()) {
                Some(Ok(())) => {
                    self.log(&format!("domain {domid} ({name}) started after migration"));
                    Reply {
                        domid: Some(domid),
                        ..Reply::ok()
                    }
                }
                Some(Err(e)) => {
                    destroy("could not unpause");
                    Reply::error(format!("unpausing domain {domid}: {e}"))
                }
                None => Reply::error(format!("domain {domid} is gone")),
            },
            MigrateVerdict::Abort | MigrateVerdict::KeepPaused | MigrateVerdict::Committing => {
                destroy("aborted");
                Reply::ok()
            }
        };
        let _ = send(&mut writer, &reply);
    }
}
