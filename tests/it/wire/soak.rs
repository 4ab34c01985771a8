//! Integrity soak: many concurrent streams through distgate's public port to a node,
//! each carrying pseudo-random bytes both ways in random chunk sizes, ending cleanly
//! (half-close each way), or with one side resetting mid-stream. Every byte that
//! arrives is checked against what was sent; a clean stream must arrive whole, a reset
//! one must end promptly on the other side with an intact prefix. Run for each
//! forwarding mode.
//!
//! CI runs rounds for 2 s per mode. By hand, for as long as you like:
//!
//! ```sh
//! SOAK_SECONDS=600 SOAK_STREAMS=256 cargo nextest run -E 'test(/^wire::soak::/)' --no-capture
//! ```

use crate::support;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::bytes::Rng;
use crate::support::*;
use distgate::forward::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The bytes of one direction of one stream, produced and checked in any chunking.
struct Content {
    rng: Rng,
    pending: Vec<u8>,
}

impl Content {
    fn new(seed: u64) -> Content {
        Content {
            rng: Rng::new(seed),
            pending: vec![],
        }
    }

    /// The next `n` bytes of the content.
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            let mut word = [0u8; 8];
            self.rng.fill(&mut word);
            self.pending.extend_from_slice(&word);
        }
        self.pending.drain(..n).collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// Both sides send everything and half-close; everything arrives.
    Clean,
    /// The client resets after sending this many bytes.
    ClientResets(usize),
    /// The node resets after sending this many bytes.
    NodeResets(usize),
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    up: usize,
    down: usize,
    end: End,
    seed: u64,
}

impl Plan {
    fn random(rng: &mut Rng) -> Plan {
        let size = |rng: &mut Rng| match rng.below(4) {
            0 => rng.below(64) as usize,
            1 => rng.below(64 * 1024) as usize,
            _ => rng.below(2 * 1024 * 1024) as usize,
        };
        let (up, down) = (size(rng), size(rng));
        let end = match rng.below(8) {
            0 => End::ClientResets(rng.below(up as u64 + 1) as usize),
            1 => End::NodeResets(rng.below(down as u64 + 1) as usize),
            _ => End::Clean,
        };
        Plan {
            up,
            down,
            end,
            seed: rng.next(),
        }
    }
}

const UP: u64 = 0x5550;
const DOWN: u64 = 0x444f;

/// Sends `limit` bytes of `content` in random chunks; then half-closes, or resets when
/// `reset` (the whole socket goes, with SO_LINGER 0).
async fn send(
    mut write: OwnedWriteHalf,
    mut content: Content,
    limit: usize,
    mut chunks: Rng,
) -> Option<OwnedWriteHalf> {
    let mut sent = 0;
    while sent < limit {
        let n = (1 + chunks.below(65_536) as usize).min(limit - sent);
        if write.write_all(&content.take(n)).await.is_err() {
            return None;
        }
        sent += n;
        if chunks.below(16) == 0 {
            tokio::task::yield_now().await;
        }
    }
    Some(write)
}

/// Reads to the end, checking every byte against `content`; the count of good bytes.
/// A byte that differs fails the test at once.
async fn receive(mut read: OwnedReadHalf, mut content: Content, what: &str) -> usize {
    let mut buf = vec![0u8; 96 * 1024];
    let mut good = 0;
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return good,
            Ok(n) => {
                let expected = content.take(n);
                if let Some(at) = buf[..n].iter().zip(&expected).position(|(a, b)| a != b) {
                    panic!("{what}: byte {} differs", good + at);
                }
                good += n;
            }
        }
    }
}

/// One side of a stream: sends its direction, checks the other, ends as planned.
async fn side(
    stream: TcpStream,
    send_seed: u64,
    send_len: usize,
    recv_seed: u64,
    resets_after: Option<usize>,
    chunks: Rng,
    what: String,
) -> usize {
    if resets_after.is_some() {
        stream.set_zero_linger().unwrap();
    }
    let (read, write) = stream.into_split();
    let receiver = tokio::spawn(async move { receive(read, Content::new(recv_seed), &what).await });
    let limit = resets_after.unwrap_or(send_len);
    let write = send(write, Content::new(send_seed), limit, chunks).await;
    match (resets_after, write) {
        (Some(_), write) => {
            // Reset: both halves go at once, unread data and all.
            receiver.abort();
            let _ = receiver.await;
            drop(write);
            0
        }
        (None, Some(mut write)) => {
            let _ = write.shutdown().await;
            let got = tokio::time::timeout(DEADLINE * 3, receiver)
                .await
                .expect("a stream never ended")
                .expect("receiver");
            drop(write);
            got
        }
        (None, None) => tokio::time::timeout(DEADLINE * 3, receiver)
            .await
            .expect("a stream never ended")
            .expect("receiver"),
    }
}

/// One round: `streams` concurrent streams through a sidecar in `mode`; the bytes
/// checked.
async fn round(mode: Mode, streams: usize, rng: &mut Rng) -> u64 {
    let mut options = Options::default();
    options.config.forward.mode = mode;
    // Half-closed streams here run as long as their plan says; `linger` has its own test.
    options.config.dist.linger = Duration::from_secs(600);
    let sidecar = InProcess::start(options).await;
    let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_registration, _) = register(
        sidecar.epmd,
        &alive2("soak", node.local_addr().unwrap().port()),
    )
    .await;
    let plans: Vec<Plan> = (0..streams).map(|_| Plan::random(rng)).collect();
    let plans = Arc::new(plans);
    let node_results = Arc::new(Mutex::new(HashMap::new()));

    // The node: plays its half of the handshake, reads each stream's id, then plays
    // its side.
    let node_side = {
        let (plans, results) = (Arc::clone(&plans), Arc::clone(&node_results));
        tokio::spawn(async move {
            let mut tasks = vec![];
            for _ in 0..plans.len() {
                let (mut stream, _) = node.accept().await.unwrap();
                let (plans, results) = (Arc::clone(&plans), Arc::clone(&results));
                tasks.push(tokio::spawn(async move {
                    support::dist::as_node(&mut stream).await;
                    let mut header = [0u8; 10];
                    if stream.read_exact(&mut header).await.is_err() {
                        // A client that reset at once: its header may never come.
                        return;
                    }
                    let id = u64::from_be_bytes(header[2..].try_into().unwrap()) as usize;
                    let plan = plans[id];
                    let resets = match plan.end {
                        End::NodeResets(after) => Some(after),
                        _ => None,
                    };
                    let got = side(
                        stream,
                        plan.seed ^ DOWN,
                        plan.down,
                        plan.seed ^ UP,
                        resets,
                        Rng::new(plan.seed.rotate_left(7)),
                        format!("stream {id} at the node"),
                    )
                    .await;
                    results.lock().unwrap().insert(id, got);
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };

    let mut clients = vec![];
    for (id, plan) in plans.iter().copied().enumerate() {
        let addr = sidecar.public_addr(0);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            support::dist::as_caller(&mut stream, &format!("soak-{id}@127.0.0.1")).await;
            let mut header = vec![0, 0];
            header.extend_from_slice(&(id as u64).to_be_bytes());
            stream.write_all(&header).await.unwrap();
            let resets = match plan.end {
                End::ClientResets(after) => Some(after),
                _ => None,
            };
            side(
                stream,
                plan.seed ^ UP,
                plan.up,
                plan.seed ^ DOWN,
                resets,
                Rng::new(plan.seed.rotate_left(13)),
                format!("stream {id} at the client"),
            )
            .await
        }));
    }
    let mut checked = 0u64;
    let mut client_got = vec![];
    for client in clients {
        client_got.push(client.await.unwrap());
    }
    tokio::time::timeout(DEADLINE * 3, node_side)
        .await
        .expect("the node side never finished")
        .unwrap();
    let node_got = node_results.lock().unwrap().clone();
    for (id, plan) in plans.iter().enumerate() {
        let at_client = client_got[id];
        let at_node = match (plan.end, node_got.get(&id)) {
            (_, Some(&got)) => got,
            (End::ClientResets(_), None) => 0,
            (_, None) => panic!("stream {id} never reached the node"),
        };
        if let End::Clean = plan.end {
            assert_eq!(at_node, plan.up, "stream {id}: bytes up");
            assert_eq!(at_client, plan.down, "stream {id}: bytes down");
        } else {
            assert!(at_node <= plan.up && at_client <= plan.down, "stream {id}");
        }
        checked += (at_client + at_node) as u64;
    }
    sidecar.shutdown.cancel();
    checked
}

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn soak(mode: Mode) {
    let seconds = env_number("SOAK_SECONDS", 2);
    let streams = env_number("SOAK_STREAMS", 48) as usize;
    let seed = env_number("SOAK_SEED", 0x5eed ^ mode as u64);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut rounds, mut checked) = (0u64, 0u64);
    loop {
        checked += round(mode, streams, &mut rng).await;
        rounds += 1;
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    eprintln!(
        "soak {mode:?}: {rounds} rounds × {streams} streams, {checked} bytes checked in {:?} (seed {seed:#x})",
        started.elapsed()
    );
    assert!(checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_arrives_intact_by_splice() {
    soak(Mode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_arrives_intact_by_copy() {
    soak(Mode::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_arrives_intact_in_auto_mode() {
    soak(Mode::Auto).await;
}
