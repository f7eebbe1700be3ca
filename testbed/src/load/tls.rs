//! `ws-load --tls-ca`: WebSocket over TLS on the kernel stack (rustls, ring). A connection's
//! bytes go through [`Transport`]: plain, or a rustls client session over the socket, driven
//! without blocking (what the session wants to send goes out as the socket takes it, and the
//! socket is watched for writability while anything waits).

use std::io::{self, Read, Write};
use std::sync::Arc;

use anyhow::Context;
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

/// What a load process needs to speak TLS (sent to it in its plan).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TlsPlan {
    /// The PEM of the certificate authority the server's certificate must chain to.
    pub ca_pem: String,
    /// The name checked against the certificate (a DNS name or an IP address).
    pub server_name: String,
}

/// A client configuration trusting only `plan`'s CA, and the server name to present.
pub fn client_config(plan: &TlsPlan) -> anyhow::Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(plan.ca_pem.as_bytes()) {
        roots.add(cert.context("reading a certificate of the CA file")?)?;
        found += 1;
    }
    anyhow::ensure!(found > 0, "the CA file holds no PEM certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(plan.server_name.clone()).with_context(|| {
        format!(
            "--tls-server-name {:?} is neither a DNS name nor an IP address",
            plan.server_name
        )
    })?;
    Ok((Arc::new(config), name))
}

/// A connection's byte stream: the socket itself, or a TLS session over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    sock: TcpStream,
    session: rustls::ClientConnection,
}

impl Transport {
    /// `sock` as is, or with a new client session (its ClientHello waits for the connect).
    pub fn new(
        sock: TcpStream,
        tls: Option<&(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ) -> io::Result<Transport> {
        let Some((config, name)) = tls else {
            return Ok(Transport::Plain(sock));
        };
        let session = rustls::ClientConnection::new(config.clone(), name.clone()).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(TlsStream { sock, session })))
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Whether TLS records wait for the socket to take them.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.session.wants_write(),
        }
    }

    /// Send what the TLS session has ready, as far as the socket takes it.
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush_records().map(|_| ()),
        }
    }
}

impl TlsStream {
    /// Records out until none is left (`Ok(false)`) or the socket would block (`Ok(true)`: its
    /// writability is then worth waiting for).
    fn flush_records(&mut self) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.read(buf),
            Transport::Tls(t) => t,
        };
        loop {
            match t.session.reader().read(buf) {
                // Plaintext, or the server's close_notify (0).
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext yet: read records from the socket (WouldBlock ends the call).
            if t.session.read_tls(&mut t.sock)? == 0 {
                return Ok(0);
            }
            // A bad record or handshake failure: the session has queued an alert for the peer.
            let processed = t.session.process_new_packets();
            let _ = t.flush_records();
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for Transport {
    /// Plaintext into the session (kept until the handshake is done), then its records out as far
    /// as the socket takes them; the rest goes when the socket is writable again.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Transport::Plain(s) => return s.write(buf),
            Transport::Tls(t) => t,
        };
        // A full session (rustls keeps at most 64 KiB of plaintext) takes nothing until its
        // records have gone: once they have (the socket took them all, so no writable event
        // would come), it is offered the bytes again. Still nothing (plaintext held until the
        // handshake ends): WouldBlock, and the handshake's reads move it on.
        let mut n = t.session.writer().write(buf)?;
        let blocked = t.flush_records()?;
        if n == 0 && !buf.is_empty() && !blocked {
            n = t.session.writer().write(buf)?;
            t.flush_records()?;
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}
