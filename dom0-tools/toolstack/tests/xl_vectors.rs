//! The cases of Xen's own parser checks (tools/xl/check-xl-disk-parse and
//! check-xl-vif-parse, which run `xl -N block-attach 0 ...` and
//! `xl -N network-attach 0 ...`), with the JSON xl prints for each, or
//! the failure it reports.

use kxen_toolstack::{
    disk::DiskSpec,
    vif::VifSpec,
    xl::{block_attach_dryrun, network_attach_dryrun},
};

/// Each argument is one disk-spec component, as on xl's command line.
fn disk(args: &[&str]) -> Option<String> {
    DiskSpec::parse_components(args)
        .ok()
        .map(|d| block_attach_dryrun(&d))
}

fn vif(args: &[&str]) -> Option<String> {
    VifSpec::parse_tokens(args.iter().copied())
        .ok()
        .map(|(v, _)| network_attach_dryrun(&v))
}

fn json(prefix: &str, fields: &[&str]) -> String {
    format!("{prefix}: {{\n    {}\n}}\n", fields.join(",\n    "))
}

#[test]
fn disk_vectors() {
    assert_eq!(disk(&["foo"]), None);

    let guest_volume = json(
        "disk",
        &[
            r#""pdev_path": "/dev/vg/guest-volume""#,
            r#""vdev": "hda""#,
            r#""format": "raw""#,
            r#""readwrite": 1"#,
        ],
    );
    for args in [
        &["/dev/vg/guest-volume,,hda"][..],
        &["/dev/vg/guest-volume,raw,hda,rw"],
        &["format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume"],
        &[
            "format=raw",
            "vdev=hda",
            "access=rw",
            "target=/dev/vg/guest-volume",
        ],
        &["raw:/dev/vg/guest-volume,hda,w"],
    ] {
        assert_eq!(
            disk(args).as_deref(),
            Some(guest_volume.as_str()),
            "{args:?}"
        );
    }

    let iso = json(
        "disk",
        &[
            r#""pdev_path": "/root/image.iso""#,
            r#""vdev": "hdc""#,
            r#""format": "raw""#,
            r#""removable": 1"#,
            r#""is_cdrom": 1"#,
        ],
    );
    for args in [
        &["/root/image.iso,,hdc,cdrom"][..],
        &["/root/image.iso,,hdc,,cdrom"],
        &["/root/image.iso,raw,hdc,devtype=cdrom"],
        &["format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso"],
        &[
            "format=raw",
            "vdev=hdc",
            "access=ro",
            "devtype=cdrom",
            "target=/root/image.iso",
        ],
        &["raw:/root/image.iso,hdc:cdrom,ro"],
    ] {
        assert_eq!(disk(args).as_deref(), Some(iso.as_str()), "{args:?}");
    }

    assert_eq!(
        disk(&["backendtype=phy,vdev=xvdb,access=w,target=/dev/vg/guest-volume"]),
        Some(json(
            "disk",
            &[
                r#""pdev_path": "/dev/vg/guest-volume""#,
                r#""vdev": "xvdb""#,
                r#""backend": "phy""#,
                r#""format": "raw""#,
                r#""readwrite": 1"#,
            ]
        ))
    );

    let empty_cdrom = json(
        "disk",
        &[
            r#""pdev_path": """#,
            r#""vdev": "hdc""#,
            r#""format": "empty""#,
            r#""removable": 1"#,
            r#""is_cdrom": 1"#,
        ],
    );
    for args in [
        "devtype=cdrom,,,hdc",
        ",,hdc:cdrom,r",
        ",hdc:cdrom,r",
        "vdev=hdc,access=r,devtype=cdrom,target=",
        ",empty,hdc:cdrom,r",
    ] {
        assert_eq!(
            disk(&[args]).as_deref(),
            Some(empty_cdrom.as_str()),
            "{args}"
        );
    }
    let no_target_cdrom = json(
        "disk",
        &[
            r#""vdev": "hdc""#,
            r#""format": "empty""#,
            r#""removable": 1"#,
            r#""is_cdrom": 1"#,
        ],
    );
    for args in [
        "vdev=hdc,access=r,devtype=cdrom,format=empty",
        "vdev=hdc,access=r,devtype=cdrom",
    ] {
        assert_eq!(
            disk(&[args]).as_deref(),
            Some(no_target_cdrom.as_str()),
            "{args}"
        );
    }

    let iscsi = json(
        "disk",
        &[
            r#""pdev_path": "iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost""#,
            r#""vdev": "xvda""#,
            r#""format": "raw""#,
            r#""script": "block-iscsi""#,
            r#""readwrite": 1"#,
        ],
    );
    for args in [
        "iscsi:iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost,xvda,w",
        "vdev=xvda,access=w,script=block-iscsi,target=iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost",
    ] {
        assert_eq!(disk(&[args]).as_deref(), Some(iscsi.as_str()), "{args}");
    }

    assert_eq!(
        disk(&["drbd:app01,hda,w"]),
        Some(json(
            "disk",
            &[
                r#""pdev_path": "app01""#,
                r#""vdev": "hda""#,
                r#""format": "raw""#,
                r#""script": "block-drbd""#,
                r#""readwrite": 1"#,
            ]
        ))
    );

    assert_eq!(
        disk(&["discard", "vdev=hda", "target=/some/disk/image.raw"]),
        Some(json(
            "disk",
            &[
                r#""pdev_path": "/some/disk/image.raw""#,
                r#""vdev": "hda""#,
                r#""format": "raw""#,
                r#""readwrite": 1"#,
                r#""discard_enable": "True""#,
            ]
        ))
    );
    assert_eq!(
        disk(&[
            "cdrom",
            "no-discard",
            "vdev=hda",
            "target=/some/disk/image.iso"
        ]),
        Some(json(
            "disk",
            &[
                r#""pdev_path": "/some/disk/image.iso""#,
                r#""vdev": "hda""#,
                r#""format": "raw""#,
                r#""removable": 1"#,
                r#""is_cdrom": 1"#,
                r#""discard_enable": "False""#,
            ]
        ))
    );
    for (flag, value) in [("trusted", "True"), ("untrusted", "False")] {
        assert_eq!(
            disk(&[flag, "vdev=hda", "target=/some/disk/image.raw"]),
            Some(json(
                "disk",
                &[
                    r#""pdev_path": "/some/disk/image.raw""#,
                    r#""vdev": "hda""#,
                    r#""format": "raw""#,
                    r#""readwrite": 1"#,
                    &format!(r#""trusted": "{value}""#),
                ]
            ))
        );
    }
}

#[test]
fn vif_vectors() {
    for bad in [
        "foo",
        "rate=foo",
        "rate=10MB",
        "rate=10MB/m",
        "rate=10ZB",
        "rate=10ZB/s",
        "rate=10ZB/m",
        "rate=4294967296b/s",
        "rate=4294967296Kb/s",
        "rate=4294967296Mb/s",
        "rate=4294967296Gb/s",
        "rate=0B/s",
        "rate=10Mb/s@foo",
        "rate=10Mb/s@10h",
        "rate=10MB/s@foo",
        "rate=10MB/s@10h",
        "rate=1B/s@4294967296us",
        "rate=1B/s@4294968ms",
        "rate=1B/s@4295s",
        "rate=1B/s@0us",
        "rate=4294967295GB/s@5us",
        "rate=4296MB/s@4294s",
        "rate=@",
    ] {
        assert_eq!(vif(&[bad]), None, "{bad}");
    }

    let rate = |bytes: u64, usecs: u32| {
        json(
            "vif",
            &[
                &format!(r#""rate_bytes_per_interval": {bytes}"#),
                &format!(r#""rate_interval_usecs": {usecs}"#),
            ],
        )
    };
    for (args, bytes, usecs) in [
        ("rate=16000000b/s", 100_000, 50_000),
        ("rate=16000000b/s@50ms", 100_000, 50_000),
        ("rate=2000000B/s", 100_000, 50_000),
        ("rate=2000000B/s@50ms", 100_000, 50_000),
        ("rate=16Kb/s", 100, 50_000),
        ("rate=16Kb/s@50ms", 100, 50_000),
        ("rate=2KB/s", 100, 50_000),
        ("rate=2KB/s@50ms", 100, 50_000),
        ("rate=16Mb/s", 100_000, 50_000),
        ("rate=16Mb/s@50ms", 100_000, 50_000),
        ("rate=2MB/s", 100_000, 50_000),
        ("rate=2MB/s@50ms", 100_000, 50_000),
        ("rate=8Gb/s", 50_000_000, 50_000),
        ("rate=8Gb/s@50ms", 50_000_000, 50_000),
        ("rate=1GB/s", 50_000_000, 50_000),
        ("rate=1GB/s@50ms", 50_000_000, 50_000),
        ("rate=80Mb/s@1s", 10_000_000, 1_000_000),
        ("rate=10MB/s@1s", 10_000_000, 1_000_000),
    ] {
        assert_eq!(vif(&[args]), Some(rate(bytes, usecs)), "{args}");
    }

    assert_eq!(
        vif(&["trusted"]),
        Some(json("vif", &[r#""trusted": "True""#]))
    );
    assert_eq!(
        vif(&["untrusted"]),
        Some(json("vif", &[r#""trusted": "False""#]))
    );
}
