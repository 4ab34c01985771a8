//! Conformance: the same EPMD conversations sent to OTP's real `epmd` (started by the
//! test on a free port) and to distgate, with replies and closes compared byte for
//! byte. Creation values and descriptor numbers are masked; nothing else is.
//!
//! distgate runs with an empty public port pool here, so it answers real ports just as
//! epmd does; public ports are tested elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};

use crate::support::*;
use distgate::epmd::message::{self, Alive2Req, encode_alive2_req, frame};
use distgate::epmd::{NodeInfo, NodeType};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One conformance case: a conversation with the EPMD at the address, and what it saw.
type Case = fn(SocketAddr) -> Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// A table of cases, each named once: its function's name.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), |addr| Box::pin($case(addr)))),*]
    };
}

/// Every case; each runs against a fresh epmd and a fresh distgate.
const CASES: &[(&str, Case)] = cases![
    names_empty,
    names_newest_first,
    names_split_byte_by_byte,
    names_half_close_after_request,
    names_long_payload_ignored,
    alive2_v6_reply,
    alive2_v5_reply,
    alive2_split_byte_by_byte,
    alive2_port_zero_type_protocol_echoed,
    alive2_duplicate_keeps_owner,
    alive2_bad_utf8,
    alive2_255_chars,
    alive2_256_chars,
    alive2_255_four_byte_chars,
    alive2_1021_byte_name,
    alive2_extra_too_long,
    alive2_empty_name,
    alive2_empty_name_with_extra,
    alive2_nul_in_name,
    alive2_name_len_overflow,
    alive2_extra_len_overflow,
    alive2_too_short,
    alive2_bytes_after_extra,
    registration_ends_on_close,
    registration_ends_on_half_close,
    registration_ends_on_stray_byte,
    registration_ends_on_second_alive2,
    port_please_found_with_extra,
    port_please_v5_node,
    port_please_unknown,
    port_please_trailing_nul,
    port_please_two_trailing_nuls,
    port_please_inner_nul,
    port_please_bad_utf8,
    port_please_254_chars,
    port_please_255_chars,
    port_please_empty,
    zero_length,
    length_3057,
    length_3058,
    unknown_command,
    reply_command_as_request,
    trailing_junk_same_write,
    pipelined_requests,
    half_close_mid_frame,
    close_mid_header,
    dump_active_and_old,
    kill_with_nodes,
    stop_not_relaxed,
];

/// Cases that need `-relaxed_command_check` on both sides.
const RELAXED_CASES: &[(&str, Case)] = cases![
    stop_found,
    stop_unknown,
    stop_empty,
    kill_relaxed_with_nodes,
];

struct RealEpmd {
    process: Process,
    addr: SocketAddr,
}

async fn start_epmd(relaxed: bool) -> RealEpmd {
    for _ in 0..20 {
        let port = free_port();
        let mut command = Command::new("epmd");
        command
            .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
            .env_remove("ERL_EPMD_RELAXED_COMMAND_CHECK")
            .env_remove("ERL_EPMD_PORT")
            .env_remove("ERL_EPMD_ADDRESS")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if relaxed {
            command.arg("-relaxed_command_check");
        }
        let mut process = Process::spawn("epmd", &mut command);
        let addr = loopback(port);
        let ready = eventually("epmd to listen", || {
            let exited = process.exited().is_some();
            async move {
                if exited {
                    return Some(false);
                }
                let stream = TcpStream::connect(addr).await.ok()?;
                drop(stream);
                Some(true)
            }
        })
        .await;
        if ready && names(addr).await.0 == port {
            return RealEpmd { process, addr };
        }
    }
    panic!("could not start epmd");
}

struct Target {
    addr: SocketAddr,
    _epmd: Option<RealEpmd>,
    _distgate: Option<InProcess>,
}

async fn real_epmd(relaxed: bool) -> Target {
    let epmd = start_epmd(relaxed).await;
    Target {
        addr: epmd.addr,
        _epmd: Some(epmd),
        _distgate: None,
    }
}

async fn distgate(relaxed: bool, allow_kill: bool) -> Target {
    let mut options = Options {
        pool: 0,
        ..Options::default()
    };
    options.config.epmd.relaxed_command_check = relaxed;
    options.config.epmd.allow_kill = allow_kill;
    let sidecar = InProcess::start(options).await;
    Target {
        addr: sidecar.epmd,
        _epmd: None,
        _distgate: Some(sidecar),
    }
}

/// Renders a reply with creations and descriptors masked.
fn show(addr: SocketAddr, reply: &Reply) -> String {
    let end = if reply.closed { "closed" } else { "open" };
    let b = &reply.bytes;
    let body = match b.as_slice() {
        [b'v', 0, _, _, _, _] => "v 00 <creation>".to_owned(),
        [b'y', 0, _, _] => "y 00 <creation 1..3>".to_owned(),
        // NAMES and DUMP start with the port the client dialled.
        [a, b, c, d, rest @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) == u32::from(addr.port()) =>
        {
            format!("<dialled port>{}", mask_fds(&escape(rest)))
        }
        _ => mask_fds(&escape(b)),
    };
    format!("{body} | {end}")
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn mask_fds(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("fd = ") {
        out.push_str(&rest[..at + 5]);
        rest = rest[at + 5..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out.push_str(rest);
    out
}

/// Opens a connection, sends `chunks` one write each, optionally half-closes, and
/// returns the connection with what it saw.
async fn exchange(addr: SocketAddr, chunks: &[&[u8]], half_close: bool) -> (TcpStream, Reply) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for chunk in chunks {
        stream.write_all(chunk).await.unwrap();
        tokio::task::yield_now().await;
    }
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let reply = read_reply(&mut stream).await;
    (stream, reply)
}

async fn send(addr: SocketAddr, wire: &[u8]) -> String {
    show(addr, &exchange(addr, &[wire], false).await.1)
}

async fn names_of(addr: SocketAddr) -> String {
    format!("names: {:?}", names(addr).await.1)
}

/// Waits until `name` has left NAMES.
async fn gone(addr: SocketAddr, name: &str) -> String {
    let line = format!("name {name} at port");
    eventually("the registration to end", || {
        let line = line.clone();
        async move {
            let (_, lines) = names(addr).await;
            (!lines.iter().any(|l| l.starts_with(&line))).then_some(())
        }
    })
    .await;
    format!("{name} gone")
}

fn req(name: &[u8], port: u16) -> Alive2Req {
    Alive2Req {
        name: name.to_vec(),
        ..alive2("", port)
    }
}

fn alive2_wire(name: &[u8]) -> Vec<u8> {
    encode_alive2_req(&req(name, 50001))
}

// The cases: each sends its conversation to `addr` and returns what it observed, in
// order.

async fn names_empty(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"n")).await]
}

async fn names_newest_first(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    for (name, port) in [("first", 50001), ("second", 50002), ("third", 50003)] {
        let (stream, reply) = exchange(
            addr,
            &[&encode_alive2_req(&req(name.as_bytes(), port))],
            false,
        )
        .await;
        seen.push(show(addr, &reply));
        keep.push(stream);
    }
    seen.push(send(addr, &frame(b"n")).await);
    drop(keep);
    seen
}

async fn names_split_byte_by_byte(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(b"split")], false).await;
    keep.push(stream);
    let wire = frame(b"n");
    let chunks: Vec<&[u8]> = wire.chunks(1).collect();
    seen.push(show(addr, &exchange(addr, &chunks, false).await.1));
    drop(keep);
    seen
}

async fn names_half_close_after_request(addr: SocketAddr) -> Vec<String> {
    vec![show(addr, &exchange(addr, &[&frame(b"n")], true).await.1)]
}

async fn names_long_payload_ignored(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut payload = vec![b'n'];
    payload.extend([b'q'; 3056]);
    seen.push(send(addr, &frame(&payload)).await);
    seen
}

async fn alive2_v6_reply(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, reply) = exchange(addr, &[&alive2_wire(b"six")], false).await;
    seen.push(show(addr, &reply));
    seen.push(names_of(addr).await);
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_v5_reply(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let old = Alive2Req {
        info: NodeInfo {
            highest_version: 5,
            lowest_version: 5,
            ..NodeInfo::OTP23
        },
        ..req(b"five", 50001)
    };
    let (stream, reply) = exchange(addr, &[&encode_alive2_req(&old)], false).await;
    seen.push(show(addr, &reply));
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_split_byte_by_byte(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let wire = alive2_wire(b"bytes");
    let chunks: Vec<&[u8]> = wire.chunks(1).collect();
    let (stream, reply) = exchange(addr, &chunks, false).await;
    seen.push(show(addr, &reply));
    seen.push(names_of(addr).await);
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_port_zero_type_protocol_echoed(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let odd = Alive2Req {
        port: 0,
        info: NodeInfo {
            node_type: NodeType::Hidden,
            protocol: 7,
            highest_version: 9,
            lowest_version: 1,
            ..NodeInfo::OTP23
        },
        ..req(b"odd", 0)
    };
    let (stream, reply) = exchange(addr, &[&encode_alive2_req(&odd)], false).await;
    seen.push(show(addr, &reply));
    seen.push(send(addr, &frame(b"zodd")).await);
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_duplicate_keeps_owner(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (owner, first) = exchange(addr, &[&alive2_wire(b"dup")], false).await;
    seen.push(show(addr, &first));
    let dup = encode_alive2_req(&req(b"dup", 50002));
    let (mut second, reply) = exchange(addr, &[&dup], false).await;
    seen.push(show(addr, &reply));
    seen.push(send(addr, &frame(b"zdup")).await);
    // The refused connection ends on its next byte; the owner stays.
    second.write_all(b"x").await.unwrap();
    seen.push(format!(
        "refused socket after a byte: {}",
        show(addr, &read_reply(&mut second).await)
    ));
    seen.push(names_of(addr).await);
    keep.push(owner);
    drop(keep);
    seen
}

async fn alive2_bad_utf8(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &alive2_wire(b"\xff\xfe")).await]
}

async fn alive2_255_chars(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, reply) = exchange(addr, &[&alive2_wire(&[b'a'; 255])], false).await;
    seen.push(show(addr, &reply));
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_256_chars(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &alive2_wire(&[b'a'; 256])).await]
}

async fn alive2_255_four_byte_chars(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let name = "😀".repeat(255);
    let (stream, reply) = exchange(addr, &[&alive2_wire(name.as_bytes())], false).await;
    seen.push(show(addr, &reply));
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_1021_byte_name(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut name = "😀".repeat(255).into_bytes();
    name.push(b'a');
    seen.push(send(addr, &alive2_wire(&name)).await);
    seen
}

async fn alive2_extra_too_long(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let long = Alive2Req {
        info: NodeInfo {
            extra: vec![7; 1021],
            ..NodeInfo::OTP23
        },
        ..req(b"extra", 50001)
    };
    seen.push(send(addr, &encode_alive2_req(&long)).await);
    seen
}

async fn alive2_empty_name(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &alive2_wire(b"")).await]
}

async fn alive2_empty_name_with_extra(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let empty = Alive2Req {
        info: NodeInfo {
            extra: vec![1],
            ..NodeInfo::OTP23
        },
        ..req(b"", 50001)
    };
    let (stream, reply) = exchange(addr, &[&encode_alive2_req(&empty)], false).await;
    seen.push(show(addr, &reply));
    keep.push(stream);
    drop(keep);
    seen
}

async fn alive2_nul_in_name(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &alive2_wire(b"nu\0l")).await]
}

async fn alive2_name_len_overflow(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = alive2_wire(b"node");
    wire[12] = 5;
    seen.push(send(addr, &wire).await);
    seen
}

async fn alive2_extra_len_overflow(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = alive2_wire(b"node");
    wire[17] = 1;
    seen.push(send(addr, &wire).await);
    seen
}

async fn alive2_too_short(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"x\x00\x01M\x00")).await]
}

async fn alive2_bytes_after_extra(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let mut payload = alive2_wire(b"tail")[2..].to_vec();
    payload.extend_from_slice(b"more");
    let (stream, reply) = exchange(addr, &[&frame(&payload)], false).await;
    seen.push(show(addr, &reply));
    seen.push(names_of(addr).await);
    keep.push(stream);
    drop(keep);
    seen
}

async fn registration_ends_on_close(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let (stream, reply) = exchange(addr, &[&alive2_wire(b"bye")], false).await;
    seen.push(show(addr, &reply));
    drop(stream);
    seen.push(gone(addr, "bye").await);
    seen
}

async fn registration_ends_on_half_close(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let (mut stream, reply) = exchange(addr, &[&alive2_wire(b"half")], false).await;
    seen.push(show(addr, &reply));
    stream.shutdown().await.unwrap();
    seen.push(gone(addr, "half").await);
    seen.push(format!(
        "socket: {}",
        show(addr, &read_reply(&mut stream).await)
    ));
    seen
}

async fn registration_ends_on_stray_byte(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let (mut stream, reply) = exchange(addr, &[&alive2_wire(b"stray")], false).await;
    seen.push(show(addr, &reply));
    stream.write_all(b"?").await.unwrap();
    seen.push(format!(
        "socket: {}",
        show(addr, &read_reply(&mut stream).await)
    ));
    seen.push(gone(addr, "stray").await);
    seen
}

async fn registration_ends_on_second_alive2(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let (mut stream, reply) = exchange(addr, &[&alive2_wire(b"twice")], false).await;
    seen.push(show(addr, &reply));
    stream.write_all(&alive2_wire(b"again")).await.unwrap();
    seen.push(format!(
        "socket: {}",
        show(addr, &read_reply(&mut stream).await)
    ));
    seen.push(gone(addr, "twice").await);
    seen.push(names_of(addr).await);
    seen
}

async fn port_please_found_with_extra(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let with_extra = Alive2Req {
        info: NodeInfo {
            extra: b"EXT\0\x01".to_vec(),
            ..NodeInfo::OTP23
        },
        ..req(b"alpha", 50001)
    };
    let (stream, _) = exchange(addr, &[&encode_alive2_req(&with_extra)], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"zalpha")).await);
    drop(keep);
    seen
}

async fn port_please_v5_node(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let old = Alive2Req {
        info: NodeInfo {
            highest_version: 5,
            lowest_version: 5,
            ..NodeInfo::OTP23
        },
        ..req(b"old", 50009)
    };
    let (stream, _) = exchange(addr, &[&encode_alive2_req(&old)], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"zold")).await);
    drop(keep);
    seen
}

async fn port_please_unknown(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"znobody")).await]
}

async fn port_please_trailing_nul(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(b"nul")], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"znul\0")).await);
    drop(keep);
    seen
}

async fn port_please_two_trailing_nuls(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"znul\0\0")).await]
}

async fn port_please_inner_nul(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"zn\0ul")).await]
}

async fn port_please_bad_utf8(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"z\xff\xfe")).await]
}

async fn port_please_254_chars(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = vec![b'z'];
    wire.extend([b'a'; 254]);
    seen.push(send(addr, &frame(&wire)).await);
    seen
}

async fn port_please_255_chars(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(&[b'a'; 255])], false).await;
    keep.push(stream);
    let mut wire = vec![b'z'];
    wire.extend([b'a'; 255]);
    seen.push(send(addr, &frame(&wire)).await);
    drop(keep);
    seen
}

async fn port_please_empty(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"z")).await]
}

async fn zero_length(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &[0, 0]).await]
}

async fn length_3057(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = vec![0x0b, 0xf1, b'z'];
    wire.extend([b'a'; 3056]);
    seen.push(send(addr, &wire).await);
    seen
}

async fn length_3058(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = vec![0x0b, 0xf2, b'n'];
    wire.extend([b'a'; 3057]);
    seen.push(send(addr, &wire).await);
    seen
}

async fn unknown_command(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"qhello")).await]
}

async fn reply_command_as_request(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"w")).await]
}

async fn trailing_junk_same_write(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = frame(b"n");
    wire.push(b'!');
    seen.push(send(addr, &wire).await);
    seen
}

async fn pipelined_requests(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let mut wire = frame(b"znobody");
    wire.extend(frame(b"n"));
    seen.push(send(addr, &wire).await);
    seen
}

async fn half_close_mid_frame(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    seen.push(show(
        addr,
        &exchange(addr, &[&frame(b"znobody")[..4]], true).await.1,
    ));
    seen
}

async fn close_mid_header(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(b"alive")], false).await;
    keep.push(stream);
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&[0]).await.unwrap();
    drop(partial);
    seen.push(names_of(addr).await);
    drop(keep);
    seen
}

async fn dump_active_and_old(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (gone_stream, _) = exchange(addr, &[&encode_alive2_req(&req(b"left", 50007))], false).await;
    drop(gone_stream);
    seen.push(gone(addr, "left").await);
    let (stream, _) = exchange(addr, &[&alive2_wire(b"here")], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"d")).await);
    drop(keep);
    seen
}

async fn kill_with_nodes(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(b"alive")], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"k")).await);
    seen.push(names_of(addr).await);
    drop(keep);
    seen
}

async fn stop_not_relaxed(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    let (stream, _) = exchange(addr, &[&alive2_wire(b"victim")], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"svictim")).await);
    seen.push(names_of(addr).await);
    drop(keep);
    seen
}

async fn stop_found(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    let (mut stream, _) = exchange(addr, &[&alive2_wire(b"victim")], false).await;
    seen.push(send(addr, &frame(b"svictim")).await);
    seen.push(format!(
        "node socket: {}",
        show(addr, &read_reply(&mut stream).await)
    ));
    seen.push(gone(addr, "victim").await);
    seen
}

async fn stop_unknown(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"snobody")).await]
}

async fn stop_empty(addr: SocketAddr) -> Vec<String> {
    vec![send(addr, &frame(b"s")).await]
}

async fn kill_relaxed_with_nodes(addr: SocketAddr) -> Vec<String> {
    let mut seen = vec![];
    // Connections that must stay open until the case ends.
    let mut keep = vec![];
    // Last step of its target: a relaxed epmd exits here.
    let (stream, _) = exchange(addr, &[&alive2_wire(b"alive")], false).await;
    keep.push(stream);
    seen.push(send(addr, &frame(b"k")).await);
    drop(keep);
    seen
}

async fn compare(cases: &[(&str, Case)], relaxed: bool, allow_kill: bool) -> Vec<String> {
    let mut mismatches = vec![];
    for (case, run) in cases {
        let epmd = real_epmd(relaxed).await;
        let expected = run(epmd.addr).await;
        let ours = distgate(relaxed, allow_kill).await;
        let actual = run(ours.addr).await;
        if expected == actual {
            eprintln!("ok   {case}: {expected:?}");
        } else {
            mismatches.push(format!(
                "{case}:\n  epmd:     {expected:?}\n  distgate: {actual:?}"
            ));
        }
    }
    mismatches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distgate_answers_like_epmd() {
    if !require(&["epmd"]) {
        return;
    }
    assert!(CASES.len() + RELAXED_CASES.len() >= 30);
    let mut mismatches = compare(CASES, false, false).await;
    // A relaxed epmd lets KILL through with nodes; distgate does so only when allowed.
    mismatches.extend(compare(RELAXED_CASES, true, true).await);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_without_nodes_stops_both_when_allowed() {
    if !require(&["epmd"]) {
        return;
    }
    let mut epmd = start_epmd(false).await;
    let epmd_reply = request(epmd.addr, &frame(b"k")).await;
    let status = eventually("epmd to exit after KILL", || {
        let status = epmd.process.exited();
        async move { status }
    })
    .await;
    assert!(status.success());

    let ours = distgate(false, true).await;
    let sidecar = ours._distgate.as_ref().unwrap();
    let reply = request(ours.addr, &frame(b"k")).await;
    assert_eq!(reply, epmd_reply);
    assert_eq!(reply, message::KILL_OK);
    assert!(
        sidecar.shutdown.is_cancelled(),
        "KILL did not stop distgate"
    );

    // distgate's default: KILL never stops it.
    let guarded = distgate(false, false).await;
    assert_eq!(request(guarded.addr, &frame(b"k")).await, message::KILL_NO);
    assert!(!guarded._distgate.as_ref().unwrap().shutdown.is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_like_epmd() {
    if !require(&["epmd"]) {
        return;
    }
    // epmd -packet_timeout 2 closes idle connections after about 3 s; distgate after
    // its configured packet_timeout. Both close silently.
    let port = free_port();
    let mut command = Command::new("epmd");
    command
        .args([
            "-port",
            &port.to_string(),
            "-address",
            "127.0.0.1",
            "-packet_timeout",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _epmd = Process::spawn("epmd", &mut command);
    let addr = loopback(port);
    eventually("epmd to listen", || async move {
        TcpStream::connect(addr).await.ok()
    })
    .await;
    let mut options = Options::default();
    options.config.epmd.packet_timeout = std::time::Duration::from_secs(2);
    let ours = InProcess::start(options).await;
    let mut idle = tokio::task::JoinSet::new();
    for target in [addr, ours.epmd] {
        for partial in [&b""[..], &[0x00], &[0x00, 0x05, b'z']] {
            idle.spawn(async move {
                let mut stream = TcpStream::connect(target).await.unwrap();
                stream.write_all(partial).await.unwrap();
                assert_eq!(
                    read_to_close(&mut stream).await,
                    b"",
                    "{target} {partial:?}"
                );
            });
        }
    }
    while let Some(done) = idle.join_next().await {
        done.unwrap();
    }
}
