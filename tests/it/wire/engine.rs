//! Every forwarding mode (auto, splice, copy) carries identical bytes and counts them
//! exactly: sizes from 0 to 1 GiB, many streams at once, random chunk sizes,
//! half-close each way with data still flowing back, resets, and a reader that does
//! not keep up.

use crate::support;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use distgate::forward::{Engine, Mode, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MODES: [Mode; 3] = [Mode::Auto, Mode::Splice, Mode::Copy];

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    (a.unwrap(), b.unwrap().0)
}

/// A stream forwarded by `engine`: (client end, server end, the proxy's outcome).
async fn forwarded(engine: &Arc<Engine>) -> (TcpStream, TcpStream, JoinHandle<Outcome>) {
    let (client, proxy_in) = pair().await;
    let (proxy_out, server) = pair().await;
    let engine = Arc::clone(engine);
    let task = tokio::spawn(async move { engine.proxy(proxy_in, proxy_out).await });
    (client, server, task)
}

fn engine(mode: Mode) -> Arc<Engine> {
    Arc::new(Engine::new(mode, 256 * 1024))
}

/// Word `i` of the stream with `seed`, as bytes.
fn word(seed: u64, i: u64) -> [u8; 8] {
    support::bytes::word(seed, i).to_le_bytes()
}

/// Writes `total` bytes of the `seed` stream in chunks from `chunk`, then half-closes.
async fn send(
    mut w: impl AsyncWriteExt + Unpin,
    seed: u64,
    total: u64,
    mut chunk: impl FnMut() -> usize,
) {
    let mut buf = Vec::new();
    let mut sent = 0u64;
    while sent < total {
        let n = (chunk() as u64).min(total - sent) as usize;
        buf.clear();
        for at in sent..sent + n as u64 {
            buf.push(word(seed, at / 8)[(at % 8) as usize]);
        }
        w.write_all(&buf).await.unwrap();
        sent += n as u64;
    }
    w.shutdown().await.unwrap();
}

/// Faster than [`send`] for big streams: whole words, fixed 64 KiB writes.
async fn send_bulk(mut w: impl AsyncWriteExt + Unpin, seed: u64, total: u64) {
    assert!(total.is_multiple_of(8));
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = (buf.len() as u64).min(total - sent) as usize;
        for (k, chunk) in buf[..n].chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&word(seed, sent / 8 + k as u64));
        }
        w.write_all(&buf[..n]).await.unwrap();
        sent += n as u64;
    }
    w.shutdown().await.unwrap();
}

/// Reads to EOF checking every byte against the `seed` stream; returns the count.
async fn receive(mut r: impl AsyncReadExt + Unpin, seed: u64) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        let mut at = got;
        let mut bytes = &buf[..n];
        // Unaligned head, whole words, tail.
        while !at.is_multiple_of(8) && !bytes.is_empty() {
            assert_eq!(bytes[0], word(seed, at / 8)[(at % 8) as usize], "byte {at}");
            bytes = &bytes[1..];
            at += 1;
        }
        let words = bytes.len() / 8;
        for (k, chunk) in bytes[..words * 8].chunks_exact(8).enumerate() {
            assert_eq!(
                chunk,
                word(seed, at / 8 + k as u64),
                "word at byte {}",
                at + 8 * k as u64
            );
        }
        at += 8 * words as u64;
        for &b in &bytes[words * 8..] {
            assert_eq!(b, word(seed, at / 8)[(at % 8) as usize], "byte {at}");
            at += 1;
        }
        got += n as u64;
    }
}

async fn both_ways(engine: &Arc<Engine>, up: u64, down: u64) -> Outcome {
    let (client, server, task) = forwarded(engine).await;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let (_, _, at_server, at_client) = tokio::join!(
        send_bulk(client_w, 1, up),
        send_bulk(server_w, 2, down),
        receive(server_r, 1),
        receive(client_r, 2),
    );
    assert_eq!((at_server, at_client), (up, down));
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_from_nothing_to_a_mebibyte_arrive_intact_and_counted() {
    for mode in MODES {
        let engine = engine(mode);
        for size in [0u64, 8, 4096, 65_536, 65_544, 262_144, 1 << 20] {
            let outcome = both_ways(&engine, size, size / 2 / 8 * 8).await;
            assert!(
                outcome.result.is_ok(),
                "{mode:?} {size}: {:?}",
                outcome.result
            );
            assert_eq!(
                (outcome.bytes.from_peer, outcome.bytes.to_peer),
                (size, size / 2 / 8 * 8),
                "{mode:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gibibyte_arrives_intact_and_counted() {
    const GIB: u64 = 1 << 30;
    for mode in MODES {
        let outcome = both_ways(&engine(mode), GIB, 8).await;
        assert!(outcome.result.is_ok(), "{mode:?}");
        assert_eq!(
            (outcome.bytes.from_peer, outcome.bytes.to_peer),
            (GIB, 8),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_stay_apart() {
    for mode in MODES {
        let engine = engine(mode);
        let mut streams = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let engine = Arc::clone(&engine);
            streams.spawn(async move {
                let (client, server, task) = forwarded(&engine).await;
                let (client_r, client_w) = client.into_split();
                let (server_r, server_w) = server.into_split();
                let size = (i + 1) * 8 * 1024;
                let (_, _, up, down) = tokio::join!(
                    send_bulk(client_w, 100 + i, size),
                    send_bulk(server_w, 200 + i, size / 2),
                    receive(server_r, 100 + i),
                    receive(client_r, 200 + i),
                );
                let outcome = task.await.unwrap();
                assert_eq!((up, down), (size, size / 2));
                assert_eq!(
                    (outcome.bytes.from_peer, outcome.bytes.to_peer),
                    (size, size / 2)
                );
            });
        }
        while let Some(done) = streams.join_next().await {
            done.unwrap();
        }
        // Every pipe came back to the pool (up to its cap): none was lost with data.
        let pipes = engine.pipes();
        assert_eq!(
            pipes.idle(),
            pipes.created().min(distgate::forward::MAX_IDLE_PIPES),
            "{mode:?}"
        );
    }
}

/// A small deterministic generator for chunk sizes.
fn chunks(mut state: u64, max: u64) -> impl FnMut() -> usize {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % max + 1) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_chunk_sizes_arrive_intact() {
    for mode in MODES {
        let (client, server, task) = forwarded(&engine(mode)).await;
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        let (up, down) = (3_000_017, 1_999_993);
        let (_, _, at_server, at_client) = tokio::join!(
            send(client_w, 7, up, chunks(1, 70_000)),
            send(server_w, 8, down, chunks(2, 3_000)),
            receive(server_r, 7),
            receive(client_r, 8),
        );
        assert_eq!((at_server, at_client), (up, down));
        let outcome = task.await.unwrap();
        assert_eq!(
            (outcome.bytes.from_peer, outcome.bytes.to_peer),
            (up, down),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_while_the_server_keeps_sending() {
    for mode in MODES {
        let (client, server, task) = forwarded(&engine(mode)).await;
        let (client_r, client_w) = client.into_split();
        let (mut server_r, server_w) = server.into_split();
        send_bulk(client_w, 3, 4096).await;
        // The server sees EOF, then answers with 8 MiB.
        let mut request = vec![];
        server_r.read_to_end(&mut request).await.unwrap();
        assert_eq!(request.len(), 4096);
        let (_, got) = tokio::join!(send_bulk(server_w, 4, 8 << 20), receive(client_r, 4));
        assert_eq!(got, 8 << 20);
        let outcome = task.await.unwrap();
        assert_eq!(
            (outcome.bytes.from_peer, outcome.bytes.to_peer),
            (4096, 8 << 20),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_while_the_client_keeps_sending() {
    for mode in MODES {
        let (client, server, task) = forwarded(&engine(mode)).await;
        let (mut client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        send_bulk(server_w, 5, 8).await;
        let mut first = vec![];
        client_r.read_to_end(&mut first).await.unwrap();
        assert_eq!(first, word(5, 0));
        let (_, got) = tokio::join!(send_bulk(client_w, 6, 8 << 20), receive(server_r, 6));
        assert_eq!(got, 8 << 20);
        let outcome = task.await.unwrap();
        assert_eq!(
            (outcome.bytes.from_peer, outcome.bytes.to_peer),
            (8 << 20, 8),
            "{mode:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_stream_ends_both_sides() {
    for mode in MODES {
        let (client, server, task) = forwarded(&engine(mode)).await;
        let (mut client_r, mut client_w) = client.into_split();
        let mut server = server;
        let mut buf = vec![0u8; 1 << 20];
        client_w.write_all(&buf).await.unwrap();
        server.read_exact(&mut buf[..1000]).await.unwrap();
        server.set_zero_linger().unwrap();
        drop(server);
        let outcome = tokio::time::timeout(support::DEADLINE, task)
            .await
            .expect("proxy did not end after a reset")
            .unwrap();
        assert!(outcome.result.is_err(), "{mode:?}: reset not reported");
        // The client is closed too: reads end, writes fail.
        let end = tokio::time::timeout(support::DEADLINE, client_r.read(&mut buf)).await;
        assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{mode:?}: {end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_writer_back() {
    for mode in MODES {
        let (client, server, task) = forwarded(&engine(mode)).await;
        // Write without reading until the writes stop being taken: what is in flight
        // is bounded by socket buffers and one pipe or buffer, not by the stream.
        let mut accepted = 0usize;
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_millis(300), client.writable()).await {
                Err(_) => break,
                Ok(ready) => ready.unwrap(),
            }
            match client.try_write(&chunk) {
                Ok(n) => accepted += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                accepted < 256 << 20,
                "{mode:?}: 256 MiB taken with no reader"
            );
        }
        assert!(accepted > 0);
        // Now the reader drains everything, and the count is exact.
        let (mut client_r, mut client_w) = client.into_split();
        client_w.shutdown().await.unwrap();
        let mut server = server;
        let mut all = vec![];
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), accepted, "{mode:?}");
        server.shutdown().await.unwrap();
        let mut rest = vec![];
        client_r.read_to_end(&mut rest).await.unwrap();
        let outcome = task.await.unwrap();
        assert_eq!(outcome.bytes.from_peer, accepted as u64, "{mode:?}");
        eprintln!(
            "{mode:?}: {} KiB in flight with a stalled reader",
            accepted / 1024
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_copies_small_messages_and_splices_bulk() {
    let engine = engine(Mode::Auto);
    let (mut client, mut server, task) = forwarded(&engine).await;
    let mut buf = [0u8; 64];
    for i in 0..200u8 {
        client.write_all(&[i; 64]).await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(&buf).await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i; 64]);
    }
    assert_eq!(engine.pipes().created(), 0, "small messages took a pipe");
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let (_, _, up, down) = tokio::join!(
        send_bulk(client_w, 9, 32 << 20),
        send_bulk(server_w, 10, 8),
        receive(server_r, 9),
        receive(client_r, 10),
    );
    assert_eq!((up, down), (32 << 20, 8));
    assert!(engine.pipes().created() >= 1, "bulk never used splice");
    let outcome = task.await.unwrap();
    assert_eq!(outcome.bytes.from_peer, 200 * 64 + (32 << 20));
    // Every pipe is back in the pool, empty.
    assert_eq!(engine.pipes().idle(), engine.pipes().created());
}
