//! kxl's side: kxend.sock accepted from the event loop, each client's
//! requests read and answered on the client pool, and the request table.

use super::*;

impl Daemon {
    /// Wait (in the event loop, owning no thread) for a client's next
    /// request, then serve it on the client pool.
    pub(super) fn watch_client(self: &Arc<Self>, conn: BufReader<UnixStream>) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(conn.get_ref());
        let me = self.clone();
        let conn = Mutex::new(Some(conn));
        let added = reactor::reactor().add_with(fd, reactor::IN, |token| {
            Arc::new(move |_| {
                reactor::reactor().remove(token);
                if let Some(conn) = conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let me = me.clone();
                    reactor::CLIENTS.spawn(move || me.serve(conn));
                }
                reactor::Next::Remove
            })
        });
        if let Err(e) = added {
            warn!("kxl client: {e}");
        }
    }

    /// Serve a client's requests while they are there to read; then wait
    /// for more in the event loop.
    pub(super) fn serve(self: &Arc<Self>, mut reader: BufReader<UnixStream>) {
        // A client that stops halfway through a line or stops reading its
        // reply does not hold a worker for long.
        let _ = reader.get_ref().set_read_timeout(Some(CLIENT_IO_LIMIT));
        let _ = reader.get_ref().set_write_timeout(Some(CLIENT_IO_LIMIT));
        let Ok(mut writer) = reader.get_ref().try_clone() else {
            return;
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_REQUEST as u64)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let request = serde_json::from_slice::<Request>(&line);
            if let Ok(Request::Console { domain, kind }) = &request {
                let Some(id) = self.resolve(domain) else {
                    let _ = send(&mut writer, &Reply::unknown_domain(domain));
                    return;
                };
                let Some(d) = self.live(id) else {
                    let _ = send(
                        &mut writer,
                        &Reply::error(format!("domain {domain} is not running")),
                    );
                    return;
                };
                let Some(console) = d.console_for(*kind) else {
                    let _ = send(
                        &mut writer,
                        &Reply::error(format!("domain {domain} has no such console")),
                    );
                    return;
                };
                if send(&mut writer, &Reply::ok()).is_ok() {
                    let typed = reader.buffer().to_vec();
                    let stream = reader.into_inner();
                    let _ = stream.set_read_timeout(None);
                    let _ = stream.set_write_timeout(None);
                    console.attach(stream, &typed);
                }
                return;
            }
            // A migration has the connection to itself, and ends it.
            match request {
                Ok(Request::MigrateSend { domain, config }) => {
                    self.migrate_send(&domain, config.map(|c| *c), reader, writer);
                    return;
                }
                Ok(Request::MigrateReceive) => {
                    self.migrate_receive(reader, writer);
                    return;
                }
                _ => {}
            }
            let reply = match request {
                Ok(req) => self.handle(req),
                Err(e) => Reply::error(format!("bad request: {e}")),
            };
            if send(&mut writer, &reply).is_err() {
                return;
            }
            if reader.buffer().is_empty() {
                break;
            }
        }
        self.watch_client(reader);
    }

    pub(super) fn handle(self: &Arc<Self>, req: Request) -> Reply {
        let unknown = Reply::unknown_domain;
        match req {
            Request::Ping => Reply::ok(),
            Request::Create { config, paused, .. } => {
                let name = config.name.clone();
                match self.create(*config, paused) {
                    Ok(domid) => Reply {
                        domid: Some(domid),
                        ..Reply::ok()
                    },
                    // libxl names the domain its errors are about; kxl
                    // prints this as one line.
                    Err(e) => Reply::error(one_line(&format!("domain {name}: {e}"))),
                }
            }
            Request::Destroy { domain } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(0) => Reply::error(xl::NOT_DESTROYING_DOM0.trim_end()),
                Some(id) => {
                    if let Some(p) = self
                        .preserved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id)
                    {
                        self.log(&format!(
                            "preserved domain {id} ({}) destroyed",
                            p.record.name
                        ));
                        return Reply::ok();
                    }
                    match self.live(id).map(|d| d.destroy()) {
                        Some(Ok(_)) => {
                            self.wait_gone(id, Duration::from_secs(10));
                            Reply::ok()
                        }
                        Some(Err(e)) => Reply::error(e.to_string()),
                        None => unknown(&domain),
                    }
                }
            },
            Request::Shutdown { domain } => self.control_shutdown(&domain, "poweroff"),
            Request::Reboot { domain } => self.control_shutdown(&domain, "reboot"),
            Request::Save {
                domain,
                path,
                checkpoint,
                leave_paused,
                config,
            } => self.save(&domain, &path, checkpoint, leave_paused, config.map(|c| *c)),
            Request::Restore {
                path,
                paused,
                config,
            } => self.restore(&path, paused, config.map(|c| *c)),
            Request::MigrateSend { .. } | Request::MigrateReceive => {
                Reply::error("a migration is served on a kxl connection of its own")
            }
            Request::Pause { domain } => self.pause(&domain, true),
            Request::Unpause { domain } => self.pause(&domain, false),
            Request::WaitGone { domain, timeout_s } => match self.resolve(&domain) {
                None => Reply::ok(),
                Some(id) => {
                    if self.wait_gone(id, Duration::from_secs(timeout_s)) {
                        Reply::ok()
                    } else {
                        Reply::error(format!("domain {domain} did not go away"))
                    }
                }
            },
            Request::List => Reply {
                domains: Some(self.list()),
                ..Reply::ok()
            },
            Request::Resolve { domain } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(id) => Reply {
                    domid: Some(id),
                    domains: Some(
                        self.list()
                            .into_iter()
                            .filter(|d| d.info.domid == id)
                            .collect(),
                    ),
                    ..Reply::ok()
                },
            },
            Request::Info => Reply {
                host: Some(host_info()),
                ..Reply::ok()
            },
            Request::Dmesg { clear } => {
                let text = std::fs::read_to_string(self.state_dir.join("hypervisor.log"))
                    .unwrap_or_default();
                if clear {
                    let _ = self
                        .hvlog
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .set_len(0);
                }
                Reply {
                    text: Some(text),
                    ..Reply::ok()
                }
            }
            Request::MemSet { domain, target_kib } => match self.resolve(&domain) {
                None => unknown(&domain),
                Some(0) => Reply::error("Domain-0 memory is the host's"),
                Some(id) => {
                    let max = self.live(id).map_or(0, |d| d.record.max_memory_kib);
                    if target_kib > max {
                        return Reply::error(format!(
                            "memory_dynamic_max must be less than or equal to memory_static_max ({max} KiB)"
                        ));
                    }
                    self.store.write(
                        &format!("/local/domain/{id}/memory/target"),
                        target_kib.to_string().as_bytes(),
                    );
                    Reply::ok()
                }
            },
            Request::Console { domain, .. } => unknown(&domain),
            Request::SchedCredit {
                domain,
                weight,
                cap,
            } => self.sched_credit(&domain, weight, cap),
            Request::VcpuPin {
                domain,
                vcpu,
                hard,
                soft,
            } => self.vcpu_pin(&domain, &vcpu, &hard, soft.as_deref()),
            Request::BlockAttach { domain, disk } => self.with_devices(&domain, |devs| {
                if let Err(missing) = preflight::disk_present(&disk) {
                    return Ok(Reply::error(missing.to_string()));
                }
                devs.attach(DeviceSpec::Disk((*disk).clone()), disk.devid())
                    .map(|_| Reply::ok())
            }),
            Request::BlockDetach {
                domain,
                device,
                force,
            } => self.with_devices(&domain, |devs| {
                let devid = device
                    .parse::<u32>()
                    .ok()
                    .or_else(|| kxen_toolstack::disk::vdev_to_devid(&device));
                match devid.map(|id| devs.detach("vbd", id, force)) {
                    Some(Ok(())) => Ok(Reply::ok()),
                    Some(Err(DeviceError::NotFound(_))) | None => {
                        Ok(Reply::error(xl::device_not_connected(&device)))
                    }
                    Some(Err(e)) => Err(e),
                }
            }),
            Request::BlockList { domain } => self.with_devices(&domain, |devs| {
                let stats: BTreeMap<u32, BTreeMap<String, u64>> =
                    devs.block_stats().into_iter().collect();
                let entries = devs
                    .block_list()
                    .into_iter()
                    .map(|b| DeviceEntry {
                        stats: stats.get(&b.devid).cloned().unwrap_or_default(),
                        block: Some(b),
                        nic: None,
                    })
                    .collect();
                Ok(Reply {
                    devices: Some(entries),
                    ..Reply::ok()
                })
            }),
            Request::NetworkAttach { domain, vif } => self.with_devices(&domain, |devs| {
                let mut vif = *vif;
                vif.fill_defaults(kxen_toolstack::config::DomainType::Pvh)
                    .map_err(|e| DeviceError::Backend(e.to_string()))?;
                let devid = vif.devid.unwrap_or_else(|| devs.next_vif_devid());
                vif.devid = Some(devid);
                devs.attach(DeviceSpec::Vif(vif), devid)
                    .map(|_| Reply::ok())
            }),
            Request::NetworkDetach { domain, device } => self.with_devices(&domain, |devs| {
                let by_mac = device.parse::<kxen_toolstack::vif::MacAddr>().ok();
                let devid = devs
                    .network_list()
                    .into_iter()
                    .map(|(n, _)| n)
                    .find(|n| device.parse::<u32>().ok() == Some(n.devid) || by_mac == Some(n.mac))
                    .map(|n| n.devid);
                match devid.map(|id| devs.detach("vif", id, false)) {
                    Some(Ok(())) => Ok(Reply::ok()),
                    Some(Err(DeviceError::NotFound(_))) | None => {
                        Ok(Reply::error(xl::unknown_device(&device)))
                    }
                    Some(Err(e)) => Err(e),
                }
            }),
            Request::NetworkList { domain } => self.with_devices(&domain, |devs| {
                let entries = devs
                    .network_list()
                    .into_iter()
                    .map(|(n, stats)| DeviceEntry {
                        block: None,
                        nic: Some(n),
                        stats,
                    })
                    .collect();
                Ok(Reply {
                    devices: Some(entries),
                    ..Reply::ok()
                })
            }),
        }
    }

    /// Run a device request against a live domain's device set.
    pub(super) fn with_devices(
        &self,
        domain: &str,
        f: impl FnOnce(&Arc<DomainDevices>) -> Result<Reply, DeviceError>,
    ) -> Reply {
        let Some(id) = self.resolve(domain).filter(|id| *id != 0) else {
            return Reply::unknown_domain(domain);
        };
        if self.live(id).is_none() {
            return Reply::unknown_domain(domain);
        }
        match f(&self.devices_of(id)) {
            Ok(reply) => reply,
            Err(e) => Reply::error(e.to_string()),
        }
    }

    /// Accept clients from the event loop until the process ends; the
    /// calling thread saves the store when it changed.
    pub fn serve_forever(self: &Arc<Self>, listener: UnixListener) {
        if let Err(e) = listener.set_nonblocking(true) {
            error!("kxend.sock: {e}");
            return;
        }
        let me = self.clone();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let on_accept = move |_| {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if !crate::peer::is_trusted(&stream, "kxend.sock") {
                            continue;
                        }
                        if stream.set_nonblocking(false).is_ok() {
                            me.watch_client(BufReader::new(stream));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!("accept: {e}");
                        break;
                    }
                }
            }
            reactor::Next::Keep
        };
        if let Err(e) = reactor::reactor().add(fd, reactor::IN, Arc::new(on_accept)) {
            error!("kxend.sock: {e}");
            return;
        }
        let xs = self.store.xenstored();
        loop {
            xs.wait_dirty();
            // Coalesce a burst of changes (a domain's creation writes
            // dozens of nodes) into one write of the state file.
            std::thread::sleep(SAVE_COALESCE);
            self.store.save();
        }
    }
}

pub(super) fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

/// Remove a stale socket, or refuse if another kxend answers on it.
pub fn claim_socket(path: &Path) -> std::io::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another kxend is serving {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}
