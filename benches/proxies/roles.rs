//! The processes a benchmark run is made of, each a plain blocking program so that its
//! own cost is small and the same for every proxy: servers (sink, echo, hold), clients
//! (throughput, round trips, connection setups, idle connections) and the `relay`
//! path's proxy, the least a proxy in user space can do. The
//! orchestrator starts them as child processes (`proxies --role NAME ...`), pinned to a
//! CPU when it asks.

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

/// Runs the role named in `args` (after `--role`).
pub fn run(args: &[String]) -> io::Result<()> {
    let arg = |name: &str| -> String {
        let at = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        args[at + 1].clone()
    };
    match arg("--role").as_str() {
        "sink" => serve(sink),
        "echo" => serve(echo),
        "hold" => hold(),
        "throughput" => throughput(
            arg("--addr").parse().unwrap(),
            arg("--streams").parse().unwrap(),
            arg("--bytes").parse().unwrap(),
        ),
        "rr" => round_trips(
            arg("--addr").parse().unwrap(),
            arg("--count").parse().unwrap(),
        ),
        "setup" => setups(
            arg("--addr").parse().unwrap(),
            arg("--count").parse().unwrap(),
        ),
        "idle" => idle(
            arg("--addr").parse().unwrap(),
            arg("--count").parse().unwrap(),
        ),
        "hog" => hog(),
        "relay" => relay(
            arg("--listen-port").parse().unwrap(),
            arg("--to").parse().unwrap(),
        ),
        other => panic!("unknown role {other}"),
    }
}

/// The caller's half of a dist handshake (distgate forwards nothing else); every
/// client plays it, through every proxy and directly, so all pay the same.
fn as_caller(stream: &mut TcpStream) -> io::Result<()> {
    use distgate::handshake::{OTP25_FLAGS, encode_send_name, frames};
    stream.write_all(&encode_send_name("bench@bench.invalid", OTP25_FLAGS, 1))?;
    let answer = frames::status_ok().len() + frames::challenge(NODE).len();
    stream.read_exact(&mut vec![0u8; answer])?;
    stream.write_all(&frames::reply())?;
    stream.read_exact(&mut vec![0u8; frames::ack().len()])
}

/// The node's half, played by every server before it serves.
fn as_node(stream: &mut TcpStream) -> io::Result<()> {
    use distgate::handshake::frames;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length)?;
    stream.read_exact(&mut vec![0u8; usize::from(u16::from_be_bytes(length))])?;
    let mut answer = frames::status_ok();
    answer.extend(frames::challenge(NODE));
    stream.write_all(&answer)?;
    stream.read_exact(&mut vec![0u8; frames::reply().len()])?;
    stream.write_all(&frames::ack())
}

/// The name the servers' challenge gives.
const NODE: &str = "node@bench.invalid";

/// Listens on an ephemeral loopback port, prints it, and serves each connection on
/// its own thread, after the handshake.
fn serve(handler: fn(TcpStream) -> io::Result<()>) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("PORT {}", listener.local_addr()?.port());
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            as_node(&mut stream)?;
            handler(stream)
        });
    }
    Ok(())
}

/// Reads to EOF, then answers the byte count (8 bytes) and closes.
fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    stream.write_all(&total.to_be_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// Echoes 64-byte messages until EOF.
fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    while stream.read_exact(&mut buf).is_ok() {
        stream.write_all(&buf)?;
    }
    Ok(())
}

/// A blocking TCP relay: listens on loopback `port` (0: any free one), prints `PORT n`,
/// and for each connection it accepts connects to `to`, both sockets with
/// `TCP_NODELAY`, and forwards on two threads of its own, one per direction, each
/// reading into a 64 KiB buffer and writing what it read; EOF is passed on as a
/// shutdown of writing, and the connection is closed when both directions have ended.
/// No readiness polling, no allocation per message; the handshake passes through as
/// any other bytes.
fn relay(port: u16, to: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    println!("PORT {}", listener.local_addr()?.port());
    io::stdout().flush()?;
    for client in listener.incoming() {
        let client = client?;
        std::thread::spawn(move || -> io::Result<()> {
            client.set_nodelay(true)?;
            let server = TcpStream::connect(to)?;
            server.set_nodelay(true)?;
            let (client_out, server_in) = (client.try_clone()?, server.try_clone()?);
            let back = std::thread::spawn(move || relay_one_way(server_in, client_out));
            relay_one_way(client, server);
            let _ = back.join();
            Ok(())
        });
    }
    Ok(())
}

/// One direction of a [`relay`]d connection: `from` to `to` until EOF, passed on as a
/// shutdown of `to`'s writing. An error shuts both sockets down both ways, so the
/// other direction's blocked read returns too.
fn relay_one_way(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Accepts and keeps every connection, printing `HELD <n>` after each accept. A line
/// on standard input drops the connections whose peer has closed and prints
/// `OPEN <n>`.
fn hold() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("PORT {}", listener.local_addr()?.port());
    io::stdout().flush()?;
    let held = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
    let accepted = Arc::clone(&held);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            if as_node(&mut stream).is_err() {
                continue;
            }
            let _ = stream.set_nonblocking(true);
            let mut held = accepted.lock().unwrap();
            held.push(stream);
            println!("HELD {}", held.len());
        }
    });
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        let mut held = held.lock().unwrap();
        held.retain(|mut s| {
            let mut buf = [0u8; 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
                }
            }
        });
        println!("OPEN {}", held.len());
        io::stdout().flush()?;
        line.clear();
    }
    Ok(())
}

/// Another process of the same UID on the node: takes 1 MiB pipes until the pipe
/// quota refuses one, prints `HELD <pipes>` and holds them until its stdin closes.
fn hog() -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let mut held = vec![];
    loop {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let grown = fcntl(&write, FcntlArg::F_SETPIPE_SZ(1 << 20)).is_ok();
        held.push((read, write));
        if !grown || held.len() >= 4096 {
            break;
        }
    }
    println!("HELD {}", held.len());
    io::stdout().flush()?;
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {}
    Ok(())
}

/// `streams` connections send `bytes` in all, each waits for the sink's count; prints
/// `SECONDS <s>` from the common start to the last answer.
fn throughput(addr: SocketAddr, streams: usize, bytes: u64) -> io::Result<()> {
    let each = bytes / streams as u64;
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut workers = Vec::new();
    for _ in 0..streams {
        let barrier = Arc::clone(&barrier);
        workers.push(std::thread::spawn(move || -> io::Result<u64> {
            let mut stream = TcpStream::connect(addr)?;
            as_caller(&mut stream)?;
            let buf = vec![7u8; 256 * 1024];
            barrier.wait();
            let mut sent = 0u64;
            while sent < each {
                let n = (buf.len() as u64).min(each - sent) as usize;
                stream.write_all(&buf[..n])?;
                sent += n as u64;
            }
            stream.shutdown(Shutdown::Write)?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count)?;
            Ok(u64::from_be_bytes(count))
        }));
    }
    barrier.wait();
    let start = Instant::now();
    for worker in workers {
        let got = worker.join().expect("worker panicked")?;
        assert_eq!(got, each, "the sink counted {got} of {each} bytes");
    }
    println!("SECONDS {}", start.elapsed().as_secs_f64());
    Ok(())
}

/// `count` 64-byte round trips on one connection after a warm-up; prints `RTT` and the
/// p50, p99, p99.9 and maximum in microseconds (p50 and p99 first, as before the other
/// two were added).
fn round_trips(addr: SocketAddr, count: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    as_caller(&mut stream)?;
    let mut buf = [42u8; 64];
    for _ in 0..count / 10 {
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        samples.push(start.elapsed().as_nanos() as f64 / 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "RTT {} {} {} {}",
        at(0.50),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
    Ok(())
}

/// `count` dist connections one after another after a warm-up, each timed from the
/// start of its connect to the node's ack (the end of the handshake), then closed;
/// prints the p50 and p99 in microseconds.
fn setups(addr: SocketAddr, count: usize) -> io::Result<()> {
    let setup = || -> io::Result<f64> {
        let start = Instant::now();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        as_caller(&mut stream)?;
        Ok(start.elapsed().as_nanos() as f64 / 1000.0)
    };
    for _ in 0..count / 10 {
        setup()?;
    }
    let mut samples = (0..count)
        .map(|_| setup())
        .collect::<io::Result<Vec<_>>>()?;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!("SETUP {} {}", at(0.50), at(0.99));
    Ok(())
}

/// Opens `count` connections, plays the caller's handshake on each (an idle dist
/// link), prints `READY`, and holds them until its standard input closes.
fn idle(addr: SocketAddr, count: usize) -> io::Result<()> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr)?;
        as_caller(&mut stream)?;
        held.push(stream);
    }
    println!("READY");
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(())
}
