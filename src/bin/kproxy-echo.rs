//! `kproxy-echo`: the small TCP/UDP/SCTP endpoint and client of kproxy's packet tests (and a
//! handy demo tool inside a network namespace).
//!
//! Owns: answering "who am I and whom did I see" over real sockets, and reporting what a
//! client's connection attempt ended in, in one line, so a test can read it.
//!
//! Must not: depend on anything but std, libc and socket2, or talk to any address it was
//! not given on the command line.
//!
//! ```text
//! kproxy-echo serve [--tcp PORT[,PORT…]] [--udp PORT[,PORT…]]
//! kproxy-echo client tcp|udp ADDR:PORT [--timeout-ms N] [--hold-ms N] [--from ADDR] [--count N] [--interval-ms N]
//! kproxy-echo sctp-listen [--port P] [--count N] [--timeout-ms N]
//! kproxy-echo sctp-init ADDR:PORT [--from-port P] [--from ADDR]
//! ```
//!
//! - `serve` listens on every IPv4 and IPv6 address (one socket per family and port). Each
//!   line received on a TCP connection and each UDP datagram is answered with one line
//!   `<local-ip> <local-port> <peer-ip> <peer-port>`: the address the client reached (after
//!   any DNAT) and the source the server saw (after any masquerade). TCP connections stay
//!   open until the client closes them. `ready` is written to stderr once every socket is
//!   bound.
//! - `client` sends one request and prints the server's line, or exactly `refused`,
//!   `timeout` or `unreachable`; it exits 0 in all those cases. `--hold-ms` keeps the TCP
//!   connection open that long, then sends a second request on it and prints a second line
//!   (the answer, or `timeout`, `reset`, `closed`). `--count` repeats the whole attempt
//!   with a new socket (a new connection) each time, one output line per attempt;
//!   `--interval-ms` starts an attempt at most every N ms (a steady stream of new
//!   connections; an attempt that takes longer delays the next one).
//! - `sctp-listen` reads SCTP packets with raw sockets (this works without kernel SCTP
//!   support) and prints `<src-ip> <dst-ip> <dst-port>` for each INIT chunk to port `P`
//!   (any port without `--port`), until `--count` INITs or `--timeout-ms` have passed.
//!   `ready` is written to stderr once both sockets are open.
//! - `sctp-init` crafts one SCTP packet holding an INIT chunk (verification tag 0, a correct
//!   CRC32c) and sends it with a raw socket; no association is set up.
//!
//! IPv6 addresses are printed bare (no brackets). Usage errors exit 64, runtime errors 1.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::exit;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const IPPROTO_SCTP: i32 = 132;
const SCTP_INIT: u8 = 1;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(rest),
        Some("client") => client(rest),
        Some("sctp-listen") => sctp_listen(rest),
        Some("sctp-init") => sctp_init(rest),
        _ => Err(Error::Usage("expected a subcommand".into())),
    };
    match result {
        Ok(()) => {}
        Err(Error::Usage(msg)) => {
            eprintln!("kproxy-echo: {msg}");
            eprintln!(
                "usage: kproxy-echo serve [--tcp PORTS] [--udp PORTS]\n       \
                 kproxy-echo client tcp|udp ADDR:PORT [--timeout-ms N] [--hold-ms N] [--from ADDR] [--count N] [--interval-ms N]\n       \
                 kproxy-echo sctp-listen [--port P] [--count N] [--timeout-ms N]\n       \
                 kproxy-echo sctp-init ADDR:PORT [--from-port P] [--from ADDR]"
            );
            exit(64);
        }
        Err(Error::Io(what, e)) => {
            eprintln!("kproxy-echo: {what}: {e}");
            exit(1);
        }
    }
}

enum Error {
    Usage(String),
    Io(String, io::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

// ---------------------------------------------------------------------------------------
// Argument parsing (flags `--name value`, positionals in order).

struct Args {
    positional: Vec<String>,
    flags: Vec<(String, String)>,
}

impl Args {
    fn parse(raw: &[String], known: &[&str]) -> Result<Args, Error> {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let (name, value) = match name.split_once('=') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => {
                        let v = it
                            .next()
                            .ok_or_else(|| Error::Usage(format!("--{name} needs a value")))?;
                        (name.to_string(), v.clone())
                    }
                };
                if !known.contains(&name.as_str()) {
                    return Err(Error::Usage(format!("unknown flag --{name}")));
                }
                flags.push((name, value));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { positional, flags })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Error> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::Usage(format!("--{name}: not a number: {v}")))
            })
            .transpose()
    }

    fn ports(&self, name: &str) -> Result<Vec<u16>, Error> {
        let mut out = Vec::new();
        for (n, v) in &self.flags {
            if n != name {
                continue;
            }
            for p in v.split(',').filter(|p| !p.is_empty()) {
                out.push(
                    p.parse()
                        .map_err(|_| Error::Usage(format!("--{name}: not a port: {p}")))?,
                );
            }
        }
        Ok(out)
    }

    fn ip(&self, name: &str) -> Result<Option<IpAddr>, Error> {
        self.get(name)
            .map(|v| {
                v.trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .map_err(|_| Error::Usage(format!("--{name}: not an address: {v}")))
            })
            .transpose()
    }
}

fn parse_target(s: &str) -> Result<SocketAddr, Error> {
    s.parse()
        .map_err(|_| Error::Usage(format!("not ADDR:PORT (IPv6 as [ADDR]:PORT): {s}")))
}

/// An address as printed in output lines: IPv4-mapped IPv6 addresses as IPv4, IPv6 bare.
fn show(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn reply_line(local: SocketAddr, peer: SocketAddr) -> String {
    format!(
        "{} {} {} {}\n",
        show(local.ip()),
        local.port(),
        show(peer.ip()),
        peer.port()
    )
}

// ---------------------------------------------------------------------------------------
// serve

fn wildcard(domain: Domain, port: u16) -> SockAddr {
    if domain == Domain::IPV6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into()
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into()
    }
}

fn bound_socket(domain: Domain, ty: Type, port: u16) -> io::Result<Socket> {
    let s = Socket::new(domain, ty, None)?;
    s.set_reuse_address(true)?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    s.bind(&wildcard(domain, port))?;
    Ok(s)
}

fn serve(raw: &[String]) -> Result<(), Error> {
    let args = Args::parse(raw, &["tcp", "udp"])?;
    if !args.positional.is_empty() {
        return Err(Error::Usage(format!(
            "serve: unexpected {:?}",
            args.positional
        )));
    }
    let tcp = args.ports("tcp")?;
    let udp = args.ports("udp")?;
    if tcp.is_empty() && udp.is_empty() {
        return Err(Error::Usage("serve: give --tcp and/or --udp ports".into()));
    }
    let mut handles = Vec::new();
    for &port in &tcp {
        for domain in [Domain::IPV4, Domain::IPV6] {
            let s = bound_socket(domain, Type::STREAM, port)
                .and_then(|s| s.listen(128).map(|()| s))
                .map_err(io_err(format!("tcp listen on port {port}")))?;
            let listener: TcpListener = s.into();
            handles.push(thread::spawn(move || tcp_accept_loop(listener)));
        }
    }
    for &port in &udp {
        for domain in [Domain::IPV4, Domain::IPV6] {
            let s = bound_socket(domain, Type::DGRAM, port)
                .map_err(io_err(format!("udp bind on port {port}")))?;
            enable_pktinfo(&s, domain).map_err(io_err("enable packet info"))?;
            let sock: UdpSocket = s.into();
            handles.push(thread::spawn(move || udp_loop(sock)));
        }
    }
    eprintln!("ready");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn tcp_accept_loop(listener: TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                thread::spawn(move || {
                    let _ = tcp_conn(stream, peer);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("kproxy-echo: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn tcp_conn(stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let local = stream.local_addr()?;
    let line = reply_line(local, peer);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            return Ok(());
        }
        writer.write_all(line.as_bytes())?;
    }
}

fn udp_loop(sock: UdpSocket) {
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut buf = vec![0u8; 65536];
    loop {
        match recv_with_dst(sock.as_raw_fd(), &mut buf) {
            Ok((_, peer, dst)) => {
                let Some(dst) = dst else {
                    eprintln!("kproxy-echo: udp: datagram without destination info");
                    continue;
                };
                let line = reply_line(SocketAddr::new(dst, port), peer);
                if let Err(e) = send_from(sock.as_raw_fd(), line.as_bytes(), dst, peer) {
                    eprintln!("kproxy-echo: udp reply to {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("kproxy-echo: udp receive: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// client

fn client(raw: &[String]) -> Result<(), Error> {
    let args = Args::parse(
        raw,
        &["timeout-ms", "hold-ms", "from", "count", "interval-ms"],
    )?;
    let [proto, target] = args.positional.as_slice() else {
        return Err(Error::Usage("client: expected tcp|udp ADDR:PORT".into()));
    };
    let target = parse_target(target)?;
    let timeout = Duration::from_millis(args.num("timeout-ms")?.unwrap_or(2000));
    let hold = args.num::<u64>("hold-ms")?.map(Duration::from_millis);
    let from = args.ip("from")?;
    let count: u32 = args.num("count")?.unwrap_or(1);
    let interval = Duration::from_millis(args.num("interval-ms")?.unwrap_or(0));
    if timeout.is_zero() {
        return Err(Error::Usage("--timeout-ms must be positive".into()));
    }
    let out = io::stdout();
    let mut next = Instant::now();
    for _ in 0..count {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        next = Instant::now() + interval;
        let lines = match proto.as_str() {
            "tcp" => tcp_attempt(target, from, timeout, hold)?,
            "udp" => {
                if hold.is_some() {
                    return Err(Error::Usage("--hold-ms is for tcp".into()));
                }
                vec![udp_attempt(target, from, timeout)?]
            }
            p => return Err(Error::Usage(format!("client: unknown protocol {p}"))),
        };
        let mut out = out.lock();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }
    Ok(())
}

/// The one-word outcome of a failed attempt, or `None` for an unexpected error.
fn outcome_word(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Some("refused"),
        Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) => Some("timeout"),
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => Some("unreachable"),
        Some(libc::ECONNRESET) => Some("reset"),
        _ => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Some("timeout"),
            io::ErrorKind::ConnectionRefused => Some("refused"),
            _ => None,
        },
    }
}

fn new_client_socket(target: SocketAddr, from: Option<IpAddr>, ty: Type) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(target), ty, None)?;
    if let Some(from) = from {
        s.bind(&SocketAddr::new(from, 0).into())?;
    }
    Ok(s)
}

/// Sends one request line on `stream` and reads the answer, within `deadline`.
fn tcp_request(reader: &mut BufReader<TcpStream>, deadline: Instant) -> Result<String, io::Error> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
    reader.get_ref().set_read_timeout(Some(left))?;
    reader.get_mut().write_all(b"?\n")?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok("closed".into());
    }
    Ok(line.trim_end().to_string())
}

fn tcp_attempt(
    target: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
    hold: Option<Duration>,
) -> Result<Vec<String>, Error> {
    let deadline = Instant::now() + timeout;
    let sock =
        new_client_socket(target, from, Type::STREAM).map_err(io_err("tcp socket / bind"))?;
    if let Err(e) = sock.connect_timeout(&target.into(), timeout) {
        return match outcome_word(&e) {
            Some(w) => Ok(vec![w.into()]),
            None => Err(Error::Io(format!("connect {target}"), e)),
        };
    }
    let mut reader = BufReader::new(TcpStream::from(sock));
    let first = match tcp_request(&mut reader, deadline) {
        Ok(l) => l,
        Err(e) => match outcome_word(&e) {
            Some(w) => w.into(),
            None => return Err(Error::Io(format!("tcp request to {target}"), e)),
        },
    };
    let mut lines = vec![first];
    if let Some(hold) = hold {
        // The first answer goes out before the wait, so a test can see the connection is up.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{}", lines.remove(0));
        let _ = out.flush();
        drop(out);
        thread::sleep(hold);
        let second = match tcp_request(&mut reader, Instant::now() + timeout) {
            Ok(l) => l,
            Err(e) => outcome_word(&e).unwrap_or("reset").to_string(),
        };
        lines.push(second);
    }
    Ok(lines)
}

fn udp_attempt(
    target: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> Result<String, Error> {
    let sock = new_client_socket(target, from, Type::DGRAM).map_err(io_err("udp socket / bind"))?;
    // Connected, so ICMP errors (port unreachable → ECONNREFUSED) reach this socket.
    sock.connect(&target.into())
        .map_err(io_err(format!("udp connect {target}")))?;
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(timeout))
        .map_err(io_err("set timeout"))?;
    if let Err(e) = sock.send(b"?\n") {
        return match outcome_word(&e) {
            Some(w) => Ok(w.into()),
            None => Err(Error::Io(format!("udp send to {target}"), e)),
        };
    }
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string()),
        Err(e) => match outcome_word(&e) {
            Some(w) => Ok(w.into()),
            None => Err(Error::Io(format!("udp receive from {target}"), e)),
        },
    }
}

// ---------------------------------------------------------------------------------------
// SCTP over raw sockets

/// CRC32c (Castagnoli), as SCTP uses it (RFC 9260 appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet: common header (verification tag 0) and one INIT chunk, checksummed.
fn init_packet(src_port: u16, dst_port: u16, init_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in a packet with INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled in below
    p.push(SCTP_INIT);
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&init_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // advertised receiver window
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&init_tag.wrapping_mul(7).to_be_bytes()); // initial TSN
                                                                  // The CRC goes on the wire least significant byte first (as Linux's
                                                                  // `sctp_compute_cksum` stores it).
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

fn sctp_init(raw: &[String]) -> Result<(), Error> {
    let args = Args::parse(raw, &["from-port", "from"])?;
    let [target] = args.positional.as_slice() else {
        return Err(Error::Usage("sctp-init: expected ADDR:PORT".into()));
    };
    let target = parse_target(target)?;
    let pid = std::process::id();
    let src_port: u16 = args
        .num("from-port")?
        .unwrap_or(40000 + (pid % 20000) as u16);
    let from = args.ip("from")?;
    let tag = pid.wrapping_mul(2_654_435_761).max(1);
    let packet = init_packet(src_port, target.port(), tag);
    let sock = Socket::new(
        Domain::for_address(target),
        Type::RAW,
        Some(Protocol::from(IPPROTO_SCTP)),
    )
    .map_err(io_err("raw sctp socket"))?;
    if let Some(from) = from {
        sock.bind(&SocketAddr::new(from, 0).into())
            .map_err(io_err(format!("bind {from}")))?;
    }
    // Raw sockets take no port: the address's port field must be 0 for IPv6.
    let dst = SocketAddr::new(target.ip(), 0);
    sock.send_to(&packet, &dst.into())
        .map_err(io_err(format!("send INIT to {target}")))?;
    Ok(())
}

/// Parses an SCTP packet (without IP header): `(dst_port, first chunk is INIT)`.
fn sctp_init_port(sctp: &[u8]) -> Option<u16> {
    if sctp.len() < 16 || sctp[12] != SCTP_INIT {
        return None;
    }
    Some(u16::from_be_bytes([sctp[2], sctp[3]]))
}

fn sctp_listen(raw: &[String]) -> Result<(), Error> {
    let args = Args::parse(raw, &["port", "count", "timeout-ms"])?;
    if !args.positional.is_empty() {
        return Err(Error::Usage(format!(
            "sctp-listen: unexpected {:?}",
            args.positional
        )));
    }
    let port: Option<u16> = args.num("port")?;
    let count: Option<u64> = args.num("count")?;
    let deadline = args
        .num::<u64>("timeout-ms")?
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let (tx, rx) = mpsc::channel::<String>();
    for domain in [Domain::IPV4, Domain::IPV6] {
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_SCTP)))
            .map_err(io_err("raw sctp socket"))?;
        if domain == Domain::IPV6 {
            enable_pktinfo(&sock, domain).map_err(io_err("enable packet info"))?;
        }
        let tx = tx.clone();
        thread::spawn(move || sctp_receive_loop(sock, domain, port, tx));
    }
    drop(tx);
    eprintln!("ready");
    let mut seen = 0u64;
    let out = io::stdout();
    while count.is_none_or(|c| seen < c) {
        let line = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(l) => l,
                Err(_) => break,
            },
            None => match rx.recv() {
                Ok(l) => l,
                Err(_) => break,
            },
        };
        let mut out = out.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        seen += 1;
    }
    Ok(())
}

fn sctp_receive_loop(sock: Socket, domain: Domain, port: Option<u16>, tx: mpsc::Sender<String>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer, dst) = match recv_with_dst(sock.as_raw_fd(), &mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("kproxy-echo: raw receive: {e}");
                return;
            }
        };
        let pkt = &buf[..n];
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not (the destination comes
        // from IPV6_PKTINFO instead).
        let (src, dst, sctp) = if domain == Domain::IPV4 {
            if pkt.len() < 20 {
                continue;
            }
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if pkt.len() < ihl {
                continue;
            }
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), &pkt[ihl..])
        } else {
            let Some(dst) = dst else { continue };
            (peer.ip(), dst, pkt)
        };
        let Some(dport) = sctp_init_port(sctp) else {
            continue;
        };
        if port.is_some_and(|p| p != dport) {
            continue;
        }
        if tx.send(format!("{src} {dst} {dport}")).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The few socket calls std and socket2 do not offer: packet info (the destination address
// of a datagram on a wildcard socket) and sending from a chosen source address.

fn set_int_opt(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn enable_pktinfo(sock: &Socket, domain: Domain) -> io::Result<()> {
    if domain == Domain::IPV6 {
        set_int_opt(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        set_int_opt(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// `recvmsg`: (bytes, source, destination address from the packet-info control message).
fn recv_with_dst(
    fd: libc::c_int,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16]; // 128 bytes, aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = sockaddr_to_std(&ss)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
    let mut dst = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
    // `msg_controllen`; the data of each pktinfo message is at least the struct's size.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && ty == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            } else if level == libc::IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, peer, dst))
}

/// `sendmsg` to `peer` with `src` as the source address (a packet-info control message),
/// so a datagram's answer comes from the address it was sent to.
fn send_from(fd: libc::c_int, data: &[u8], src: IpAddr, peer: SocketAddr) -> io::Result<()> {
    let peer_sa = SockAddr::from(peer);
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = peer_sa.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = peer_sa.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the one control message written
    // fits the 64-byte buffer (CMSG_SPACE of either pktinfo struct is at most 40), and
    // `msg` only points to live buffers during `sendmsg`.
    let rc = unsafe {
        let (level, ty, len) = match src {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                std::mem::size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                std::mem::size_of::<libc::in6_pktinfo>(),
            ),
        };
        msg.msg_controllen = libc::CMSG_SPACE(len as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(len as u32) as usize;
        match src {
            IpAddr::V4(a) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
            }
            IpAddr::V6(a) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
            }
        }
        libc::sendmsg(fd, &msg, 0)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_packet_is_well_formed() {
        let p = init_packet(40000, 2905, 0x1234_5678);
        assert_eq!(p.len(), 32);
        assert_eq!(sctp_init_port(&p), Some(2905));
        let mut zeroed = p.clone();
        zeroed[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(crc32c(&zeroed).to_le_bytes(), p[8..12]);
    }

    #[test]
    fn mapped_addresses_print_as_ipv4() {
        let a: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let b: SocketAddr = "[fd00::1]:81".parse().unwrap();
        assert_eq!(reply_line(a, b), "10.0.0.1 80 fd00::1 81\n");
    }
}
