//! PROXY protocol v2 (HAProxy's `send-proxy-v2`, spec at
//! haproxy.org/download/2.6/doc/proxy-protocol.txt §2.2): when enabled on
//! the c2s listeners, every connection starts with a binary header that
//! names the real client, which the throttle and the logs then use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol v2 header")]
    BadSignature,
    #[error("unsupported PROXY version or command {0:#x}")]
    BadVersion(u8),
    #[error("PROXY address block too short")]
    Short,
}

/// Read the header; returns the client address it names, or `None` for a
/// LOCAL connection (the proxy's own health check) or an unknown family.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 16];
    tcp.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        return Err(ProxyError::BadSignature);
    }
    let ver_cmd = head[12];
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0F > 1 {
        return Err(ProxyError::BadVersion(ver_cmd));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await?;
    if ver_cmd & 0x0F == 0 {
        return Ok(None); // LOCAL
    }
    parse_addresses(head[13], &body)
}

fn parse_addresses(family: u8, b: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    match family >> 4 {
        // AF_INET: src 4, dst 4, src port 2, dst port 2.
        0x1 => {
            let a: [u8; 12] = b
                .get(..12)
                .ok_or(ProxyError::Short)?
                .try_into()
                .map_err(|_| ProxyError::Short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        // AF_INET6: src 16, dst 16, src port 2, dst port 2.
        0x2 => {
            let a = b.get(..36).ok_or(ProxyError::Short)?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(src)),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        _ => Ok(None),
    }
}

/// Build a v2 PROXY header (for tests and tools).
pub fn encode_v4(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_rejects_short() {
        let h = encode_v4(
            "10.1.2.3:4444".parse().unwrap(),
            "127.0.0.1:5222".parse().unwrap(),
        );
        let addr = parse_addresses(h[13], &h[16..]).unwrap();
        assert_eq!(addr, Some("10.1.2.3:4444".parse().unwrap()));
        assert!(parse_addresses(0x11, &[1, 2, 3]).is_err());
        assert_eq!(parse_addresses(0x00, &[]).unwrap(), None);
    }
}
