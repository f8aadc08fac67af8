//! A throwaway PKI (CA, server and client certificates) made with openssl, for etcd with TLS.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::netns::sh;

/// TLS material for an etcd started with client certificate auth.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    sh(Command::new("openssl").current_dir(dir).args(args))
        .map(|_| ())
        .context("openssl (is it installed?)")
}

/// Creates `ca`, `server` (valid for 127.0.0.1 and the testbed's etcd addresses: its own and
/// further clusters') and `client`
/// key pairs under `dir`.
pub fn generate(dir: &Path) -> Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=netdp-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    )?;
    let sans = format!(
        "subjectAltName=IP:{},IP:192.168.10.2,IP:192.168.20.2,IP:192.168.30.2,DNS:localhost",
        Ipv4Addr::LOCALHOST
    );
    for (name, ext) in [
        ("server", sans.as_str()),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=netdp-{name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n"))?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        )?;
    }
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    })
}
