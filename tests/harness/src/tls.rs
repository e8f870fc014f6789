//! A throwaway certificate authority for tests of TLS with verification: a CA and the
//! certificates it issues, made with the `openssl` command line, valid for two days.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{HarnessError, io, run, scratch_dir};

/// A test CA: `ca.crt` and `ca.key` in a scratch directory.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

/// A certificate a [`TestCa`] issued, and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (unencrypted).
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let dir = scratch_dir(&format!("ca-{name}"), None)?;
        openssl(
            "creating a test CA",
            &dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
                "-out", "ca.crt", "-subj",
            ],
            &format!("/CN=kyma test CA {name}"),
        )?;
        Ok(Self { dir })
    }

    /// The CA certificate as PEM text.
    pub fn pem(&self) -> Result<String, HarnessError> {
        std::fs::read_to_string(self.dir.join("ca.crt")).map_err(io("reading the test CA"))
    }

    /// Issues a server certificate named `name` for `sans` (e.g. `DNS:localhost`,
    /// `IP:127.0.0.1`).
    pub fn issue(&self, name: &str, sans: &[&str]) -> Result<Issued, HarnessError> {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let cert = format!("{name}.crt");
        openssl(
            "creating a certificate request",
            &self.dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            ],
            &format!("/CN={name}"),
        )?;
        let extensions = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&extensions),
            format!("subjectAltName={}\n", sans.join(",")),
        )
        .map_err(io("writing the certificate's extensions"))?;
        openssl(
            "signing a certificate",
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
            ],
            &extensions,
        )?;
        Ok(Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        })
    }
}

fn openssl(what: &str, dir: &Path, args: &[&str], last: &str) -> Result<(), HarnessError> {
    run(
        what,
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .arg(last),
        None,
    )
    .map(|_| ())
}
